//! Chaos tests with the real binaries.
