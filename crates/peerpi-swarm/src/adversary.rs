//! Test support (the `adversary` feature, never in a release build): how a
//! lying peer serves, for the tests that check that a node survives one.

use std::time::Duration;

use bytes::Bytes;

use crate::{Adversary, Shared};

/// The length a lying peer announces for `remaining` bytes.
pub(crate) fn announced(shared: &Shared, remaining: u64) -> u64 {
    match shared.adversary {
        Some(Adversary::HugeSize) => 1 << 40,
        _ => remaining,
    }
}

/// Test support: a lying peer's behaviour after its last chunk. A staller
/// stays silent even when the blob fit in one chunk; a truncator lingers a
/// moment before closing, so that the requester has read the response head
/// and the lie is the short body, not a reset connection.
pub(crate) async fn lie_at_end(shared: &Shared) {
    match shared.adversary {
        Some(Adversary::Stall) => tokio::time::sleep(Duration::from_secs(3600)).await,
        Some(Adversary::Truncate) => tokio::time::sleep(Duration::from_millis(200)).await,
        _ => {}
    }
}

/// Test support: what a lying peer sends instead of `chunk` (`None`: stop).
pub(crate) async fn lie(shared: &Shared, chunk: Bytes, sent: u64, total: u64) -> Option<Bytes> {
    match shared.adversary {
        None => Some(chunk),
        Some(Adversary::WrongBytes) => {
            let mut bad = chunk.to_vec();
            if sent == 0 {
                if let Some(b) = bad.first_mut() {
                    *b ^= 0xff;
                }
            }
            Some(bad.into())
        }
        Some(Adversary::Truncate) => {
            if sent >= total / 2 {
                lie_at_end(shared).await;
                return None;
            }
            Some(chunk.slice(..chunk.len().min((total / 2 - sent) as usize)))
        }
        Some(Adversary::Drip) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some(chunk.slice(..chunk.len().min(1)))
        }
        Some(Adversary::LastByteWrong) => {
            let mut bad = chunk.to_vec();
            if sent + bad.len() as u64 == total {
                if let Some(b) = bad.last_mut() {
                    *b ^= 0xff;
                }
            }
            Some(bad.into())
        }
        Some(Adversary::HugeSize | Adversary::SlowNotFound | Adversary::Pending) => Some(chunk),
        Some(Adversary::EmptyBody) => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
        // Half of the first chunk, then silence.
        Some(Adversary::Stall) => {
            if sent > 0 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Some(chunk.slice(..chunk.len() / 2))
        }
    }
}

/// Test support: the refusal a lying peer answers before looking at its
/// store, after the delay it chose.
pub(crate) async fn refusal(shared: &Shared) -> Option<crate::protocol::Status> {
    match shared.adversary {
        Some(Adversary::SlowNotFound) => {
            tokio::time::sleep(Duration::from_millis(9500)).await;
            Some(crate::protocol::Status::NotFound)
        }
        Some(Adversary::Pending) => Some(crate::protocol::Status::Pending),
        _ => None,
    }
}
