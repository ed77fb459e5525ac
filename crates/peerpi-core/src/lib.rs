//! The vocabulary of peerpi: project names (PEP 503 normalisation), distribution
//! filenames, digests and CIDs, and the Simple Repository API model with its
//! HTML (PEP 503) and JSON (PEP 691) parsing and rendering, and the byte
//! ranges a client may ask of a file. No I/O lives here.

pub mod accept;
pub mod car;
pub mod digest;
pub mod filename;
pub mod html;
pub mod json;
pub mod name;
pub mod range;
pub mod simple;

pub use accept::{negotiate, NotAcceptable, PageFormat};
pub use digest::{Cid, DigestError, Sha256Digest};
pub use filename::{DistFilename, DistKind, FilenameError};
pub use name::{NameError, ProjectName};
pub use simple::{CoreMetadata, DistFile, ProjectPage, Yanked};
