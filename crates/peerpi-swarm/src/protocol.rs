//! The blob transfer protocol, `/peerpi/blob/1`, spoken on a libp2p stream
//! (see specs/p2p-protocol.md).
//!
//! Request (41 bytes): version `1` (u8), sha256 digest (32 bytes), byte
//! offset (u64, big-endian). Response: a status byte; on `OK` the number of
//! bytes that follow (u64, big-endian), then exactly that many bytes of the
//! blob from the offset, then the stream is closed.

use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use peerpi_core::Sha256Digest;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/peerpi/blob/1");
pub const VERSION: u8 = 1;

/// Response status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    Busy = 2,
    BadRequest = 3,
}

impl Status {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Status::Ok),
            1 => Some(Status::NotFound),
            2 => Some(Status::Busy),
            3 => Some(Status::BadRequest),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub digest: Sha256Digest,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown status byte {0}")]
    UnknownStatus(u8),
}

pub async fn write_request<S: AsyncWrite + Unpin>(
    stream: &mut S,
    request: &Request,
) -> Result<(), ProtocolError> {
    let mut buf = [0u8; 41];
    buf[0] = VERSION;
    buf[1..33].copy_from_slice(request.digest.as_bytes());
    buf[33..41].copy_from_slice(&request.offset.to_be_bytes());
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok(())
}

pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, ProtocolError> {
    let mut buf = [0u8; 41];
    stream.read_exact(&mut buf).await?;
    if buf[0] != VERSION {
        return Err(ProtocolError::Version(buf[0]));
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&buf[1..33]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&buf[33..41]);
    Ok(Request {
        digest: Sha256Digest::from_bytes(digest),
        offset: u64::from_be_bytes(offset),
    })
}

/// Writes a status; for `Status::Ok`, also the length that follows.
pub async fn write_status<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: Status,
    remaining: u64,
) -> Result<(), ProtocolError> {
    stream.write_all(&[status as u8]).await?;
    if status == Status::Ok {
        stream.write_all(&remaining.to_be_bytes()).await?;
    }
    stream.flush().await?;
    Ok(())
}

/// Reads a status; for `Status::Ok`, also the length that follows.
pub async fn read_status<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Status, u64), ProtocolError> {
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).await?;
    let status = Status::from_byte(b[0]).ok_or(ProtocolError::UnknownStatus(b[0]))?;
    if status != Status::Ok {
        return Ok((status, 0));
    }
    let mut len = [0u8; 8];
    stream.read_exact(&mut len).await?;
    Ok((status, u64::from_be_bytes(len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;

    #[tokio::test]
    async fn request_and_status_round_trip() {
        let request = Request {
            digest: Sha256Digest::from_bytes([7; 32]),
            offset: 1 << 40,
        };
        let mut buf = Cursor::new(Vec::new());
        write_request(&mut buf, &request).await.unwrap();
        assert_eq!(buf.get_ref().len(), 41);
        buf.set_position(0);
        assert_eq!(read_request(&mut buf).await.unwrap(), request);

        let mut buf = Cursor::new(Vec::new());
        write_status(&mut buf, Status::Ok, 12345).await.unwrap();
        write_status(&mut buf, Status::Busy, 0).await.unwrap();
        buf.set_position(0);
        assert_eq!(read_status(&mut buf).await.unwrap(), (Status::Ok, 12345));
        assert_eq!(read_status(&mut buf).await.unwrap(), (Status::Busy, 0));
    }

    #[tokio::test]
    async fn rejects_bad_versions_and_statuses() {
        let mut buf = Cursor::new(vec![9u8; 41]);
        assert!(matches!(
            read_request(&mut buf).await,
            Err(ProtocolError::Version(9))
        ));
        let mut buf = Cursor::new(vec![200u8]);
        assert!(matches!(
            read_status(&mut buf).await,
            Err(ProtocolError::UnknownStatus(200))
        ));
        let mut short = Cursor::new(vec![1u8; 10]);
        assert!(matches!(
            read_request(&mut short).await,
            Err(ProtocolError::Io(_))
        ));
    }
}
