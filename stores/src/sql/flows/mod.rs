//! The task flows, written once for both backends. Each runs inside a transaction the
//! connector opened, decides which statements to run and in what order, and reports counts;
//! the statements themselves come from [`super::queries`].

pub(crate) mod collect;
pub(crate) mod erase;
pub(crate) mod erase_batch;
pub(crate) mod flags;
pub(crate) mod rectify;
pub(crate) mod resolve;
pub(crate) mod verify;
