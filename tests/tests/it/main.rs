//! End-to-end tests of Lethe against real services (see the crate README for the services and
//! their environment variables). One binary, a module per area.

// A test's helpers fail the test by panicking, like its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod anchors;
mod api;
mod backup;
mod batching;
mod bench;
mod chaos;
mod closure;
mod cluster;
mod config_errors;
mod console;
mod contract;
mod coordinator;
mod daemons;
mod datamap_tools;
mod deployment;
mod drill;
mod e2e;
mod eraser;
mod exporter;
mod footprint;
mod harness;
mod incidents;
mod matching;
mod openapi;
mod privacy;
mod processor;
mod retention;
mod sample;
mod ssrf;
mod support;
mod tenancy;
mod traces;
mod versioned;
mod worker_loop;
