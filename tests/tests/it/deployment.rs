//! The deployment files (compose.yaml, Dockerfile).
