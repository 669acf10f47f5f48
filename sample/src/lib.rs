#![doc = include_str!("../README.md")]

mod counts;
mod error;
mod generate;
mod png;
mod rng;
mod seed;
mod stores;
mod vocab;

pub use counts::{COLLECTIONS, Counts};
pub use error::{BoxError, Error, Result};
pub use generate::{
    AccessLogEntry, Conversation, DEFAULT_ANCHOR_UNIX, FileKind, FileObject, Generator, Identities,
    Invoice, MAX_SUBJECTS, Message, Session, Subject, User, Visit, default_anchor, expected_counts,
    subject,
};
pub use seed::{
    ACCOUNTS_SQL, CHAT_SQL, Progress, SeedOptions, SeedReport, ensure_bucket, prepare, reset, seed,
    seed_with_progress,
};
pub use stores::{
    ACCOUNTS_TABLES, CHAT_TABLES, ConnectOptions, FILE_FOLDERS, FilesStore, S3Options,
    SESSION_KEY_FAMILIES, SampleStores, SessionsStore, count_in_stores, delete_prefix, escape_glob,
    list_keys, redis_connection, s3_client, scan, unlink_matching,
};
