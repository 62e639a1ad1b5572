//! Where TLS files live and how they are read and written.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::TlsError;

/// The `tls_dir` setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum TlsDir {
    /// `<keylime_dir>/cv_ca/`, created with a new CA on first start when absent.
    Generate,
    /// `<keylime_dir>/cv_ca/`, which must exist.
    Default,
    /// A directory holding the files.
    Dir(PathBuf),
}

impl TlsDir {
    /// The directory holding the files.
    pub fn path(&self, keylime_dir: &Path) -> PathBuf {
        match self {
            TlsDir::Generate | TlsDir::Default => keylime_dir.join("cv_ca"),
            TlsDir::Dir(dir) => dir.clone(),
        }
    }
}

impl From<String> for TlsDir {
    fn from(s: String) -> Self {
        match s.as_str() {
            "generate" => TlsDir::Generate,
            "default" => TlsDir::Default,
            _ => TlsDir::Dir(PathBuf::from(s)),
        }
    }
}

impl From<TlsDir> for String {
    fn from(d: TlsDir) -> String {
        d.to_string()
    }
}

impl fmt::Display for TlsDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsDir::Generate => f.write_str("generate"),
            TlsDir::Default => f.write_str("default"),
            TlsDir::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// The paths of the six files in a TLS directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub dir: PathBuf,
}

impl TlsFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TlsFiles { dir: dir.into() }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("cacert.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("cakey.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server-cert.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-private.pem")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client-cert.crt")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-private.pem")
    }

    /// The CA certificates (`cacert.crt`) peers must chain to.
    pub fn ca_certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        read_certificates(&self.ca_cert())
    }

    /// The server certificate and key.
    pub fn server_identity(&self) -> Result<TlsIdentity, TlsError> {
        TlsIdentity::read(&self.server_cert(), &self.server_key())
    }

    /// The generated admin client certificate and key.
    pub fn client_identity(&self) -> Result<TlsIdentity, TlsError> {
        TlsIdentity::read(&self.client_cert(), &self.client_key())
    }
}

/// A certificate chain (leaf first) and its private key, ready for rustls.
#[derive(Debug)]
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub fn read(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let chain = read_certificates(cert_path)?;
        let key_pem = read(key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Malformed {
            path: key_path.to_owned(),
            what: format!("no usable PEM private key: {e}"),
        })?;
        Ok(TlsIdentity { chain, key })
    }

    /// From PEM text already in memory (`origin` names it in errors).
    pub fn from_pem(cert_pem: &str, key_pem: &str, origin: &str) -> Result<Self, TlsError> {
        let path = PathBuf::from(origin);
        let chain = certificates_from_pem(cert_pem.as_bytes(), &path)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            TlsError::Malformed { path, what: format!("no usable PEM private key: {e}") }
        })?;
        Ok(TlsIdentity { chain, key })
    }
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

/// Reads every certificate in a PEM file; at least one is required.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certificates_from_pem(&read(path)?, path)
}

fn certificates_from_pem(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
            TlsError::Malformed { path: path.to_owned(), what: format!("bad PEM certificate: {e}") }
        })?;
    if certs.is_empty() {
        return Err(TlsError::Malformed {
            path: path.to_owned(),
            what: "no PEM certificate in the file".to_owned(),
        });
    }
    Ok(certs)
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written key; the file gets `mode` from its creation on.
pub(super) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::Write { path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
