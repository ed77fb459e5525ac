//! Deterministic distribution files: wheels (zip with a dist-info directory),
//! sdists (tar.gz with PKG-INFO and an in-tree PEP 517 backend, so building
//! them needs nothing from an index) and large synthetic blobs.

use std::io::{Cursor, Write};

use base64::Engine;
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// What a distribution declares.
#[derive(Debug, Clone, Default)]
pub struct DistSpec {
    pub name: String,
    pub version: String,
    pub requires_dist: Vec<String>,
    pub requires_python: Option<String>,
    /// PEP 592: `Some(reason)` marks the file yanked ("" for no reason).
    pub yanked: Option<String>,
    /// Bytes of filler data in the wheel (a large wheel for transfer tests).
    pub padding: u64,
}

impl DistSpec {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            ..Self::default()
        }
    }

    pub fn requires(mut self, requirement: &str) -> Self {
        self.requires_dist.push(requirement.into());
        self
    }

    pub fn requires_python(mut self, spec: &str) -> Self {
        self.requires_python = Some(spec.into());
        self
    }

    /// Adds `bytes` of incompressible filler to the wheel.
    pub fn padded(mut self, bytes: u64) -> Self {
        self.padding = bytes;
        self
    }

    pub fn yanked(mut self, reason: &str) -> Self {
        self.yanked = Some(reason.into());
        self
    }

    fn module(&self) -> String {
        self.name.replace(['-', '.'], "_").to_lowercase()
    }

    fn metadata(&self) -> String {
        let mut m = format!(
            "Metadata-Version: 2.1\nName: {}\nVersion: {}\nSummary: peerpi test package\n",
            self.name, self.version
        );
        if let Some(rp) = &self.requires_python {
            m.push_str(&format!("Requires-Python: {rp}\n"));
        }
        for r in &self.requires_dist {
            m.push_str(&format!("Requires-Dist: {r}\n"));
        }
        m
    }
}

/// Content of a file the fake index serves.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Bytes),
    /// `len` pseudo-random bytes from `seed`, generated as they are served.
    Synthetic {
        len: u64,
        seed: u64,
    },
}

/// A file on the fake index.
#[derive(Debug, Clone)]
pub struct FakeFile {
    pub project: String,
    pub filename: String,
    pub content: Content,
    pub sha256: String,
    pub len: u64,
    pub requires_python: Option<String>,
    pub yanked: Option<String>,
    /// PEP 658 core metadata served at `<url>.metadata`.
    pub metadata: Option<Bytes>,
}

impl FakeFile {
    fn from_bytes(
        spec: &DistSpec,
        filename: String,
        bytes: Vec<u8>,
        metadata: Option<Bytes>,
    ) -> Self {
        Self {
            project: spec.name.clone(),
            filename,
            sha256: hex::encode(Sha256::digest(&bytes)),
            len: bytes.len() as u64,
            content: Content::Bytes(bytes.into()),
            requires_python: spec.requires_python.clone(),
            yanked: spec.yanked.clone(),
            metadata,
        }
    }

    /// The whole content (synthetic content is generated).
    pub fn bytes(&self) -> Bytes {
        match &self.content {
            Content::Bytes(b) => b.clone(),
            Content::Synthetic { len, seed } => {
                let mut out = Vec::with_capacity(*len as usize);
                let mut gen = SyntheticGen::new(*seed);
                while (out.len() as u64) < *len {
                    let chunk = gen.next_chunk();
                    let take = chunk.len().min((*len - out.len() as u64) as usize);
                    out.extend_from_slice(&chunk[..take]);
                }
                out.into()
            }
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), 64 KiB at a time.
pub struct SyntheticGen {
    state: u64,
}

pub const SYNTHETIC_CHUNK: usize = 64 * 1024;

impl SyntheticGen {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self {
            state: (z ^ (z >> 31)) | 1,
        }
    }

    pub fn next_chunk(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SYNTHETIC_CHUNK);
        while out.len() < SYNTHETIC_CHUNK {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            out.extend_from_slice(&self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out
    }
}

/// A synthetic file of `len` bytes (for benchmarks and large-file tests).
pub fn synthetic(project: &str, filename: &str, len: u64, seed: u64) -> FakeFile {
    let mut hasher = Sha256::new();
    let mut gen = SyntheticGen::new(seed);
    let mut left = len;
    while left > 0 {
        let chunk = gen.next_chunk();
        let take = (chunk.len() as u64).min(left) as usize;
        hasher.update(&chunk[..take]);
        left -= take as u64;
    }
    FakeFile {
        project: project.into(),
        filename: filename.into(),
        content: Content::Synthetic { len, seed },
        sha256: hex::encode(hasher.finalize()),
        len,
        requires_python: None,
        yanked: None,
        metadata: None,
    }
}

fn record_line(path: &str, data: &[u8]) -> String {
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(data));
    format!("{path},sha256={hash},{}\n", data.len())
}

/// A pure-Python `py3-none-any` wheel with a module that records its version.
pub fn wheel(spec: &DistSpec) -> FakeFile {
    let module = spec.module();
    let dist_info = format!("{module}-{}.dist-info", spec.version);
    let metadata = spec.metadata();
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            format!("{module}/__init__.py"),
            format!("__version__ = {:?}\n", spec.version).into_bytes(),
        ),
        (format!("{dist_info}/METADATA"), metadata.clone().into_bytes()),
        (
            format!("{dist_info}/WHEEL"),
            b"Wheel-Version: 1.0\nGenerator: peerpi-testkit\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
        ),
    ];
    if spec.padding > 0 {
        let mut filler = Vec::with_capacity(spec.padding as usize);
        let mut gen = SyntheticGen::new(spec.padding);
        while (filler.len() as u64) < spec.padding {
            filler.extend_from_slice(&gen.next_chunk());
        }
        filler.truncate(spec.padding as usize);
        files.push((format!("{module}/_filler.bin"), filler));
    }
    let mut record = String::new();
    for (path, data) in &files {
        record.push_str(&record_line(path, data));
    }
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    let all = files
        .iter()
        .map(|(p, d)| (p.clone(), d.clone()))
        .chain([(format!("{dist_info}/RECORD"), record.into_bytes())]);
    for (path, data) in all {
        // Writing into an in-memory buffer cannot fail.
        zip.start_file(path, options)
            .unwrap_or_else(|e| panic!("zip entry: {e}"));
        zip.write_all(&data)
            .unwrap_or_else(|e| panic!("zip write: {e}"));
    }
    let bytes = zip
        .finish()
        .unwrap_or_else(|e| panic!("zip finish: {e}"))
        .into_inner();
    let filename = format!("{module}-{}-py3-none-any.whl", spec.version);
    FakeFile::from_bytes(spec, filename, bytes, Some(Bytes::from(metadata)))
}

/// The in-tree PEP 517 backend shipped in every fake sdist: builds a wheel
/// with `zipfile` from PKG-INFO, so installing needs no build dependencies.
const BACKEND_PY: &str = r#"import base64, hashlib, os, zipfile

def _meta():
    with open("PKG-INFO") as f:
        text = f.read()
    fields = dict(l.split(": ", 1) for l in text.splitlines() if ": " in l)
    return text, fields["Name"], fields["Version"]

def get_requires_for_build_wheel(config_settings=None):
    return []

def get_requires_for_build_sdist(config_settings=None):
    return []

def _record(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}\n"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    text, name, version = _meta()
    module = name.replace("-", "_").replace(".", "_").lower()
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"__version__ = {version!r}\n".encode(),
        f"{dist_info}/METADATA": text.encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: peerpi-testkit\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(_record(p, d) for p, d in files.items()) + f"{dist_info}/RECORD,,\n"
    files[f"{dist_info}/RECORD"] = record.encode()
    filename = f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return filename

def build_sdist(sdist_directory, config_settings=None):
    raise NotImplementedError("peerpi-testkit sdists are prebuilt")
"#;

/// An sdist (`.tar.gz`) whose in-tree backend builds a wheel like [`wheel`]'s.
pub fn sdist(spec: &DistSpec) -> FakeFile {
    let module = spec.module();
    let root = format!("{module}-{}", spec.version);
    let pyproject = "[build-system]\nrequires = []\nbuild-backend = \"peerpi_test_backend\"\nbackend-path = [\".\"]\n";
    let entries: Vec<(String, Vec<u8>)> = vec![
        (format!("{root}/PKG-INFO"), spec.metadata().into_bytes()),
        (
            format!("{root}/pyproject.toml"),
            pyproject.as_bytes().to_vec(),
        ),
        (
            format!("{root}/peerpi_test_backend.py"),
            BACKEND_PY.as_bytes().to_vec(),
        ),
    ];
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        // Writing into an in-memory buffer cannot fail.
        tar.append_data(&mut header, path, data.as_slice())
            .unwrap_or_else(|e| panic!("tar entry: {e}"));
    }
    let bytes = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .unwrap_or_else(|e| panic!("tar finish: {e}"));
    FakeFile::from_bytes(spec, format!("{root}.tar.gz"), bytes, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn wheels_are_deterministic_valid_zips_with_metadata() {
        let spec = DistSpec::new("Demo-Pkg", "1.2")
            .requires("other>=1")
            .requires_python(">=3.8");
        let a = wheel(&spec);
        let b = wheel(&spec);
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(a.filename, "demo_pkg-1.2-py3-none-any.whl");
        let mut zip = zip::ZipArchive::new(Cursor::new(a.bytes().to_vec())).unwrap();
        let mut metadata = String::new();
        zip.by_name("demo_pkg-1.2.dist-info/METADATA")
            .unwrap()
            .read_to_string(&mut metadata)
            .unwrap();
        assert!(metadata.contains("Requires-Dist: other>=1"));
        assert_eq!(a.metadata.as_deref(), Some(metadata.as_bytes()));
    }

    #[test]
    fn sdists_are_deterministic_tarballs_with_pkg_info() {
        let spec = DistSpec::new("gamma", "0.1");
        let a = sdist(&spec);
        assert_eq!(a.sha256, sdist(&spec).sha256);
        let bytes = a.bytes();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&"gamma-0.1/PKG-INFO".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn nearby_seeds_give_different_content() {
        let hashes: std::collections::HashSet<String> = (0..8)
            .map(|seed| synthetic("s", "s-1.tar.gz", 1000, seed).sha256)
            .collect();
        assert_eq!(hashes.len(), 8);
    }

    #[test]
    fn synthetic_hash_matches_generated_bytes() {
        let f = synthetic("big", "big-1.0.tar.gz", 200_000, 7);
        let bytes = f.bytes();
        assert_eq!(bytes.len(), 200_000);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), f.sha256);
    }
}
