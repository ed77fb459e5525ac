//! The node's errors, each mapping to an HTTP status with a message.

use axum::http::StatusCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    Internal(String),
    /// The node cannot do this now (its store cannot write); a retry later may work.
    #[error("{0}")]
    Unavailable(String),
}

impl NodeError {
    pub fn status(&self) -> StatusCode {
        match self {
            NodeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            NodeError::Upstream(_) => StatusCode::BAD_GATEWAY,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            NodeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<peerpi_store::StoreError> for NodeError {
    fn from(e: peerpi_store::StoreError) -> Self {
        use peerpi_store::StoreError;
        match e {
            StoreError::Db(_) | StoreError::Unavailable(_) | StoreError::Io { .. } => {
                NodeError::Unavailable(format!("the store cannot do this now ({e}); retry later"))
            }
            _ => NodeError::Internal(format!("store: {e}")),
        }
    }
}
