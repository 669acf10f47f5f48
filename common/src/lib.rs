#![doc = include_str!("../README.md")]

pub mod anchors;
pub mod cli;
pub mod config;
pub mod coverage;
pub mod daemon;
pub mod datamap;
pub mod ids;
pub mod ledger;
pub mod messages;
pub mod nats;
pub mod openpgp;
pub mod ops;
pub mod privacy;
pub mod s3;
pub mod schedule;
pub mod shutdown;
pub mod telemetry;
pub mod tombstone;
pub mod worker;

pub use config::Settings;
