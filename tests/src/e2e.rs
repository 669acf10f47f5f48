//! Support for the end-to-end and chaos tests (see tests/tests/it/e2e.rs and chaos.rs).
