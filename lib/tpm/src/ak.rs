//! The attestation key: created once under the EK, kept as two blob files (`ak.pub`, the
//! marshalled TPMT_PUBLIC, and `ak.priv`, the TPM-encrypted private area), and loaded again
//! from them on every start, so the AK and its name survive agent and TPM restarts.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tss_esapi::Context;
use tss_esapi::abstraction::{DefaultKey, ak};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::ek::KeyAlg;
use crate::error::TpmError;

/// File name of the AK public area in the AK directory.
pub const AK_PUBLIC_FILE: &str = "ak.pub";
/// File name of the AK private blob in the AK directory.
pub const AK_PRIVATE_FILE: &str = "ak.priv";

/// The AK as the TPM handed it out at creation: enough to load it again under the same EK.
#[derive(Debug, Clone)]
pub(crate) struct AkBlobs {
    pub(crate) public: Public,
    pub(crate) private: Private,
    pub(crate) alg: KeyAlg,
}

fn alg_of(public: &Public) -> Option<KeyAlg> {
    match public {
        Public::Rsa { .. } => Some(KeyAlg::Rsa2048),
        Public::Ecc { .. } => Some(KeyAlg::EccP256),
        _ => None,
    }
}

/// Creates a new AK under `ek` (the EK policy session is run by tss-esapi).
pub(crate) fn create(ctx: &mut Context, ek: KeyHandle, alg: KeyAlg) -> tss_esapi::Result<AkBlobs> {
    let scheme = match alg {
        KeyAlg::Rsa2048 => SignatureSchemeAlgorithm::RsaSsa,
        KeyAlg::EccP256 => SignatureSchemeAlgorithm::EcDsa,
    };
    let created = ak::create_ak_2(
        ctx,
        ek,
        HashingAlgorithm::Sha256,
        alg.selection(),
        scheme,
        None,
        DefaultKey,
    )?;
    Ok(AkBlobs { public: created.out_public, private: created.out_private, alg })
}

/// Loads the AK under `ek`; the returned handle must be flushed by the caller when replaced.
pub(crate) fn load(
    ctx: &mut Context,
    ek: KeyHandle,
    blobs: &AkBlobs,
) -> tss_esapi::Result<KeyHandle> {
    ak::load_ak(ctx, ek, None, blobs.private.clone(), blobs.public.clone())
}

/// Reads the AK blobs from `dir`; `None` when neither file exists (no AK was created yet).
pub(crate) fn read(dir: &Path) -> Result<Option<AkBlobs>, TpmError> {
    let pub_path = dir.join(AK_PUBLIC_FILE);
    let priv_path = dir.join(AK_PRIVATE_FILE);
    let public_bytes = read_optional(&pub_path)?;
    let private_bytes = read_optional(&priv_path)?;
    let (public_bytes, private_bytes) = match (public_bytes, private_bytes) {
        (None, None) => return Ok(None),
        (Some(p), Some(s)) => (p, s),
        (None, Some(_)) => {
            return Err(TpmError::AkBlob {
                path: pub_path,
                reason: format!("missing, but {AK_PRIVATE_FILE} exists beside it"),
            });
        }
        (Some(_), None) => {
            return Err(TpmError::AkBlob {
                path: priv_path,
                reason: format!("missing, but {AK_PUBLIC_FILE} exists beside it"),
            });
        }
    };
    let public = Public::unmarshall(&public_bytes).map_err(|e| TpmError::AkBlob {
        path: pub_path.clone(),
        reason: format!("not a marshalled TPMT_PUBLIC ({} bytes): {e}", public_bytes.len()),
    })?;
    let alg = alg_of(&public).ok_or_else(|| TpmError::AkBlob {
        path: pub_path,
        reason: "holds neither an RSA nor an ECC key".to_owned(),
    })?;
    let private = Private::try_from(private_bytes).map_err(|e| TpmError::AkBlob {
        path: priv_path,
        reason: format!("not a TPM private blob: {e}"),
    })?;
    Ok(Some(AkBlobs { public, private, alg }))
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, TpmError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TpmError::AkFile { path: path.to_owned(), source }),
    }
}

/// The marshalled TPMT_PUBLIC of the AK.
pub(crate) fn public_bytes(blobs: &AkBlobs) -> tss_esapi::Result<Vec<u8>> {
    blobs.public.marshall()
}

/// Writes both blobs into `dir` (created 0700 if absent), each atomically with mode 0600. The
/// private blob goes first: a crash between the two leaves `ak.pub` absent, which `read`
/// reports instead of pairing a new private blob with an old public area.
pub(crate) fn save(dir: &Path, blobs: &AkBlobs) -> Result<(), TpmError> {
    let file_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TpmError::AkFile { path, source }
    };
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(file_err(dir))?;
    }
    let public = public_bytes(blobs).map_err(|e| TpmError::AkBlob {
        path: dir.join(AK_PUBLIC_FILE),
        reason: format!("cannot marshal the AK public area: {e}"),
    })?;
    let pub_path = dir.join(AK_PUBLIC_FILE);
    match fs::remove_file(&pub_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_err(&pub_path)(e)),
    }
    write_atomic(&dir.join(AK_PRIVATE_FILE), blobs.private.value())?;
    write_atomic(&pub_path, &public)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(file_err(dir))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TpmError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        TpmError::AkFile { path: path.to_owned(), source }
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn no_files_means_no_ak() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read(dir.path()).expect("read").is_none());
    }

    #[test]
    fn a_lone_file_is_reported_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(AK_PRIVATE_FILE), [1, 2, 3]).expect("write");
        let err = read(dir.path()).expect_err("lone private blob").to_string();
        assert!(err.contains("ak.pub") && err.contains("missing"), "{err}");
    }

    #[test]
    fn garbage_public_file_is_reported_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(AK_PRIVATE_FILE), [1, 2, 3]).expect("write");
        fs::write(dir.path().join(AK_PUBLIC_FILE), [0xff; 7]).expect("write");
        let err = read(dir.path()).expect_err("garbage").to_string();
        assert!(err.contains("ak.pub") && err.contains("TPMT_PUBLIC"), "{err}");
    }

    #[test]
    fn atomic_write_leaves_private_mode_and_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        write_atomic(&path, b"first").expect("write");
        write_atomic(&path, b"second").expect("overwrite");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!temp_path(&path).exists());
    }
}
