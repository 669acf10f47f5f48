//! OpenPGP keys: the recipients' certificates and the operator's secret keys live in
//! `lethe_common::openpgp`, shared with the api, which encrypts tombstones to the same
//! certificates.

pub use lethe_common::openpgp::{KeyError, Recipients, SecretKeys};
