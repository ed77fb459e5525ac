//! Every way the trust layer refuses metadata or a target, by TUF attack class.

use std::path::PathBuf;

/// Why metadata or a target was not trusted. Each variant names the role and
/// the check, so that an operator reading a log line knows which attack (or
/// which repository mistake) it was.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{role}: not valid TUF metadata: {reason}")]
    Malformed { role: String, reason: String },

    #[error("{role}: {valid} valid signature(s) from distinct keys, threshold is {threshold}")]
    ThresholdNotMet {
        role: String,
        valid: usize,
        threshold: u64,
    },

    #[error("{role}: version {new} is older than the trusted version {trusted} (rollback)")]
    Rollback {
        role: String,
        trusted: u64,
        new: u64,
    },

    #[error("{role}: version {got}, but {by} says {expected} (mix-and-match)")]
    VersionMismatch {
        role: String,
        expected: u64,
        got: u64,
        by: &'static str,
    },

    #[error("{role}: expired at {expires} (freeze), the time is {now}")]
    Expired {
        role: String,
        expires: jiff::Timestamp,
        now: jiff::Timestamp,
    },

    #[error("{what}: length or hash differs from the signed value")]
    LengthOrHash { what: String },

    #[error("{role} is delegated but not listed in snapshot")]
    NotInSnapshot { role: String },

    #[error("snapshot drops {role}, which the trusted snapshot lists")]
    DroppedFromSnapshot { role: String },

    #[error("{what}: more than {limit} bytes (endless data)")]
    TooLarge { what: String, limit: u64 },

    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no trusted root: {path} is missing (run `peerpi tuf client init` or install root.json)"
    )]
    NoRoot { path: PathBuf },

    #[error("refresh first: {0} is not loaded")]
    NotRefreshed(&'static str),

    #[error("{0}")]
    Signer(String),
}

impl TrustError {
    pub(crate) fn malformed(role: &str, reason: impl ToString) -> Self {
        TrustError::Malformed {
            role: role.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrustError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, TrustError>;
