//! Errors of the sample library.

/// Any error a store client returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong while seeding or counting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store already holds sample data and the options did not ask for a reset.
    #[error("the {store} store already holds data ({found}); seed with reset to replace it")]
    NotEmpty {
        /// The store: accounts, chat, sessions or files.
        store: &'static str,
        /// What was found, e.g. "users has rows" (never a value).
        found: String,
    },
    /// A store's client failed.
    #[error("{store} store: {action}")]
    Store {
        /// The store: accounts, chat, sessions or files.
        store: &'static str,
        /// What was being done.
        action: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The options are out of range.
    #[error("invalid seed options: {0}")]
    Options(String),
}

/// The sample library's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the store and action to a client error.
pub(crate) trait StoreContext<T> {
    fn store(self, store: &'static str, action: &'static str) -> Result<T>;
}

impl<T, E: Into<BoxError>> StoreContext<T> for std::result::Result<T, E> {
    fn store(self, store: &'static str, action: &'static str) -> Result<T> {
        self.map_err(|e| Error::Store {
            store,
            action,
            source: e.into(),
        })
    }
}
