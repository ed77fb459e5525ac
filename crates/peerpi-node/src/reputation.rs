//! What a peer's misbehaviour costs it: the one place that decides between
//! a block for good and a suspension. Bad bytes are proof of lying; a broken
//! or slow transfer is also what an honest peer does when it crashes or its
//! CI runner is recycled, so it only suspends.

use std::time::Duration;

/// What a peer did wrong in one transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Misdeed {
    /// Its bytes failed verification (alone, or by comparison with a
    /// verified copy).
    BadBytes,
    /// Bytes it relayed while still fetching the blob, and broke off before
    /// its last byte, differ from the verified copy: its own source may
    /// have sent them, so they prove nothing about it.
    RelayedBadBytes,
    /// It announced a size that is not the listed one, or over the cap.
    SizeLie,
    /// It broke off, stalled past the stream timeout, or broke the protocol.
    BrokeOff,
    /// Its transfer fell below the minimum rate.
    TooSlow,
    /// It was transferring when the whole peer phase ran out of time.
    Overran,
    /// Its part of a failed multi-peer transfer is not judged yet.
    Suspect,
    /// It answered after the client's clock allowed, or kept answering
    /// `Pending` past it. An honest peer under load or fetching a large
    /// blob does this too, so it is left alone only for a while.
    Late,
}

/// The longest a late answer keeps a peer suspended.
pub(crate) const LATE_SUSPENSION: Duration = Duration::from_secs(60);

/// What happens to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Connections closed and refused for good.
    Block,
    /// Left alone for this long.
    Suspend(Duration),
    /// A suspension lifted (its bytes proved right); a block stays.
    Acquit,
}

impl Misdeed {
    pub(crate) fn verdict(self, suspension: Duration) -> Verdict {
        match self {
            Misdeed::BadBytes | Misdeed::SizeLie => Verdict::Block,
            Misdeed::BrokeOff
            | Misdeed::TooSlow
            | Misdeed::Overran
            | Misdeed::Suspect
            | Misdeed::RelayedBadBytes => Verdict::Suspend(suspension),
            Misdeed::Late => Verdict::Suspend(suspension.min(LATE_SUSPENSION)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_proof_of_lying_blocks_for_good() {
        let s = Duration::from_secs(600);
        assert_eq!(Misdeed::BadBytes.verdict(s), Verdict::Block);
        assert_eq!(Misdeed::SizeLie.verdict(s), Verdict::Block);
        for honest_looking in [
            Misdeed::BrokeOff,
            Misdeed::TooSlow,
            Misdeed::Overran,
            Misdeed::Suspect,
            Misdeed::RelayedBadBytes,
        ] {
            assert_eq!(honest_looking.verdict(s), Verdict::Suspend(s));
        }
        assert_eq!(Misdeed::Late.verdict(s), Verdict::Suspend(LATE_SUSPENSION));
    }
}
