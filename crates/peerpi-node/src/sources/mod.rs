//! Where a flight's bytes come from: peers first (`peers`), then the
//! upstream index (`upstream`). Both write into a hashing temp file of the
//! store; neither decides what the bytes should be (the digest does).

pub(crate) mod hedge;
pub(crate) mod peers;
pub(crate) mod upstream;
