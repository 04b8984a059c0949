//! The command's error type: every failure becomes one line on stderr and an exit code.

/// Result alias of the `cairn` command.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Everything a `cairn` command can fail with.
///
/// [`CliError::exit_code`] maps each to the process exit code (2 for usage errors, 1 for
/// everything else) and [`CliError::kind`] to the `kind` field of the `--json` error line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The command line asked for something that cannot be done as asked.
    #[error("{0}")]
    Usage(String),

    /// A thread, namespace or checkpoint does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The database URL names a backend this binary was built without.
    #[error(
        "{backend} support is not compiled into this cairn; rebuild with the `{feature}` \
         feature (cargo build --release -p cairn-cli --features {feature})"
    )]
    FeatureMissing {
        /// The backend (`PostgreSQL`, `Redis`).
        backend: &'static str,
        /// The cargo feature of `cairn-cli` that adds it.
        feature: &'static str,
    },

    /// The database could not be opened.
    #[error("cannot open {target}: {message}")]
    Open {
        /// The database, as the user wrote it (passwords hidden).
        target: String,
        /// Why.
        message: String,
    },

    /// A saver call failed (storage error, corrupt data, ...).
    #[error(transparent)]
    Saver(#[from] cairn_checkpoint::Error),

    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),

    /// The demo job failed.
    #[error("demo failed: {0}")]
    Demo(String),
}

impl CliError {
    /// The process exit code for this error: 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// A short machine-readable name of the error's kind, used in `--json` error lines:
    /// `usage`, `not_found`, `feature_missing`, `open`, `corrupt`, `backend`,
    /// `invalid_argument`, `storage`, `io`, `demo`.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::Usage(_) => "usage",
            CliError::NotFound(_) => "not_found",
            CliError::FeatureMissing { .. } => "feature_missing",
            CliError::Open { .. } => "open",
            CliError::Saver(e) => match e {
                cairn_checkpoint::Error::Corrupt { .. } => "corrupt",
                cairn_checkpoint::Error::Backend { .. } => "backend",
                cairn_checkpoint::Error::InvalidArgument(_) => "invalid_argument",
                _ => "storage",
            },
            CliError::Io(_) => "io",
            CliError::Demo(_) => "demo",
        }
    }

    /// The message as one line (embedded newlines from drivers are folded).
    pub fn one_line(&self) -> String {
        let text = self.to_string();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}
