//! The blob transfer protocol, `/peerpi/blob/2`, spoken on a libp2p stream
//! (see specs/p2p-protocol.md).
//!
//! Request (42 bytes): version `2` (u8), sha256 digest (32 bytes), byte
//! offset (u64, big-endian), flags (u8; bit 0: the requester can take a
//! redirect to the bulk channel). Response: a status byte; on `OK` the number
//! of bytes that follow (u64, big-endian), then exactly that many bytes of the
//! blob from the offset, then the stream is closed; on `REDIRECT` the number
//! of bytes, the bulk channel's TCP port (u16) and a one-time ticket (32
//! bytes) to present there. `OK_IN_FLIGHT` and `REDIRECT_IN_FLIGHT` are the
//! same answers for a blob the server is still fetching (request flag bit 1):
//! its bytes follow as they arrive, unverified by the server until the last
//! byte.

use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use peerpi_core::Sha256Digest;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/peerpi/blob/2");
pub const VERSION: u8 = 2;
const REQUEST_LEN: usize = 42;
/// Request flag: the requester can fetch over the bulk channel.
pub const FLAG_CAN_REDIRECT: u8 = 1;
/// Request flag: the requester takes the bytes of a blob the server is
/// still fetching, as they arrive.
pub const FLAG_ACCEPTS_IN_FLIGHT: u8 = 2;

/// Response status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    Busy = 2,
    BadRequest = 3,
    Redirect = 4,
    /// Not held yet: this node is fetching it from upstream now (it
    /// announced an intent); ask again shortly.
    Pending = 5,
    /// `OK` for a blob the server is still fetching.
    OkInFlight = 6,
    /// `REDIRECT` for a blob the server is still fetching.
    RedirectInFlight = 7,
    /// Not held, not fetched: this node waits for another peer fetching it
    /// (sent only to requesters that set `ACCEPTS_IN_FLIGHT`; older ones
    /// get `NotFound`).
    Waiting = 8,
}

impl Status {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Status::Ok),
            1 => Some(Status::NotFound),
            2 => Some(Status::Busy),
            3 => Some(Status::BadRequest),
            4 => Some(Status::Redirect),
            5 => Some(Status::Pending),
            6 => Some(Status::OkInFlight),
            7 => Some(Status::RedirectInFlight),
            8 => Some(Status::Waiting),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub digest: Sha256Digest,
    pub offset: u64,
    pub can_redirect: bool,
    /// The requester takes bytes still arriving at the server.
    pub accepts_in_flight: bool,
}

/// A one-time permission to fetch one blob range over the bulk channel.
pub type Ticket = [u8; 32];

/// A server's answer to a request. `in_flight`: the server is still
/// fetching the blob and sends its bytes as they arrive; it sends the last
/// one only once it verified the whole blob itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// `remaining` bytes follow on this stream.
    Data { remaining: u64, in_flight: bool },
    /// Fetch the `remaining` bytes from the bulk channel on `port` with `ticket`.
    Redirect {
        remaining: u64,
        port: u16,
        ticket: Ticket,
        in_flight: bool,
    },
    /// No data: not found, busy or a bad request.
    Refused(Status),
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
    let mut buf = [0u8; REQUEST_LEN];
    buf[0] = VERSION;
    buf[1..33].copy_from_slice(request.digest.as_bytes());
    buf[33..41].copy_from_slice(&request.offset.to_be_bytes());
    if request.can_redirect {
        buf[41] |= FLAG_CAN_REDIRECT;
    }
    if request.accepts_in_flight {
        buf[41] |= FLAG_ACCEPTS_IN_FLIGHT;
    }
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok(())
}

pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, ProtocolError> {
    // The version byte first, so that an old requester's shorter request is
    // answered BAD_REQUEST rather than left waiting for bytes that never come.
    let mut buf = [0u8; REQUEST_LEN];
    stream.read_exact(&mut buf[..1]).await?;
    if buf[0] != VERSION {
        return Err(ProtocolError::Version(buf[0]));
    }
    stream.read_exact(&mut buf[1..]).await?;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&buf[1..33]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&buf[33..41]);
    Ok(Request {
        digest: Sha256Digest::from_bytes(digest),
        offset: u64::from_be_bytes(offset),
        can_redirect: buf[41] & FLAG_CAN_REDIRECT != 0,
        accepts_in_flight: buf[41] & FLAG_ACCEPTS_IN_FLIGHT != 0,
    })
}

pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
) -> Result<(), ProtocolError> {
    let mut buf = Vec::with_capacity(43);
    match response {
        Response::Data {
            remaining,
            in_flight,
        } => {
            buf.push(if *in_flight {
                Status::OkInFlight
            } else {
                Status::Ok
            } as u8);
            buf.extend_from_slice(&remaining.to_be_bytes());
        }
        Response::Redirect {
            remaining,
            port,
            ticket,
            in_flight,
        } => {
            buf.push(if *in_flight {
                Status::RedirectInFlight
            } else {
                Status::Redirect
            } as u8);
            buf.extend_from_slice(&remaining.to_be_bytes());
            buf.extend_from_slice(&port.to_be_bytes());
            buf.extend_from_slice(ticket);
        }
        Response::Refused(status) => buf.push(*status as u8),
    }
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok(())
}

pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Response, ProtocolError> {
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).await?;
    let status = Status::from_byte(b[0]).ok_or(ProtocolError::UnknownStatus(b[0]))?;
    let (redirect, in_flight) = match status {
        Status::Ok => (false, false),
        Status::OkInFlight => (false, true),
        Status::Redirect => (true, false),
        Status::RedirectInFlight => (true, true),
        refused => return Ok(Response::Refused(refused)),
    };
    let mut len = [0u8; 8];
    stream.read_exact(&mut len).await?;
    let remaining = u64::from_be_bytes(len);
    if !redirect {
        return Ok(Response::Data {
            remaining,
            in_flight,
        });
    }
    let mut port = [0u8; 2];
    stream.read_exact(&mut port).await?;
    let mut ticket = [0u8; 32];
    stream.read_exact(&mut ticket).await?;
    Ok(Response::Redirect {
        remaining,
        port: u16::from_be_bytes(port),
        ticket,
        in_flight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;

    /// Found by fuzzing (`blob_protocol`): flag bits this version does not
    /// know are ignored (a later version may add some), never an error.
    #[tokio::test]
    async fn unknown_request_flags_are_ignored() {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&[b'x'; 32]);
        bytes.extend_from_slice(&7u64.to_be_bytes());
        bytes.push(0x78); // CAN_REDIRECT and ACCEPTS_IN_FLIGHT clear, unknown bits set
        let request = read_request(&mut Cursor::new(bytes)).await.unwrap();
        assert_eq!(request.offset, 7);
        assert!(!request.can_redirect);
        assert!(!request.accepts_in_flight);
    }

    #[tokio::test]
    async fn request_and_status_round_trip() {
        for (can_redirect, accepts_in_flight) in
            [(false, false), (true, false), (false, true), (true, true)]
        {
            let request = Request {
                digest: Sha256Digest::from_bytes([7; 32]),
                offset: 1 << 40,
                can_redirect,
                accepts_in_flight,
            };
            let mut buf = Cursor::new(Vec::new());
            write_request(&mut buf, &request).await.unwrap();
            assert_eq!(buf.get_ref().len(), REQUEST_LEN);
            buf.set_position(0);
            assert_eq!(read_request(&mut buf).await.unwrap(), request);
        }

        let responses = [
            Response::Data {
                remaining: 12345,
                in_flight: false,
            },
            Response::Data {
                remaining: 99,
                in_flight: true,
            },
            Response::Refused(Status::Busy),
            Response::Redirect {
                remaining: 1 << 33,
                port: 7505,
                ticket: [9; 32],
                in_flight: false,
            },
            Response::Redirect {
                remaining: 5,
                port: 7505,
                ticket: [8; 32],
                in_flight: true,
            },
            Response::Refused(Status::Pending),
            Response::Refused(Status::Waiting),
            Response::Refused(Status::NotFound),
        ];
        let mut buf = Cursor::new(Vec::new());
        for r in &responses {
            write_response(&mut buf, r).await.unwrap();
        }
        buf.set_position(0);
        for r in &responses {
            assert_eq!(&read_response(&mut buf).await.unwrap(), r);
        }
    }

    #[tokio::test]
    async fn rejects_bad_versions_and_statuses() {
        let mut buf = Cursor::new(vec![9u8; REQUEST_LEN]);
        assert!(matches!(
            read_request(&mut buf).await,
            Err(ProtocolError::Version(9))
        ));
        let mut buf = Cursor::new(vec![200u8]);
        assert!(matches!(
            read_response(&mut buf).await,
            Err(ProtocolError::UnknownStatus(200))
        ));
        let mut short = Cursor::new(vec![VERSION; 10]);
        assert!(matches!(
            read_request(&mut short).await,
            Err(ProtocolError::Io(_))
        ));
        // A version 1 request (41 bytes) is refused, not waited on.
        let mut old = Cursor::new(vec![1u8; 41]);
        assert!(matches!(
            read_request(&mut old).await,
            Err(ProtocolError::Version(1))
        ));
    }
}
