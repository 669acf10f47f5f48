//! `lethe-eraser datamap suggest` and `datamap check`: a data-map draft from the live stores,
//! and a data map checked against them.
//!
//! | module | job |
//! | --- | --- |
//! | `stores` | the `--store NAME=URL` arguments, connected and read |
//! | `classify` | which columns hold personal data, by name and by sampled values |
//! | `templates` | Redis key and S3 prefix templates from sampled keys |
//! | `draft` | the commented data-map draft |
//! | `check` | the check of a data map against the live stores, and its coverage |
//!
//! Sampled values stay in this process: the draft and every report hold names and counts.

mod check;
mod classify;
mod draft;
mod stores;
mod templates;

pub use check::{Report, check};
pub use draft::{Discovered, Suggestion, suggest};
pub use stores::{StoreArg, discover};
