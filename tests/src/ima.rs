//! Synthetic IMA measurement lists (template `ima-ng`) whose PCR 10 the harness extends in the
//! test's swtpm exactly as the kernel would: every entry extends PCR 10 of each bank with the
//! bank's hash of the entry's template data.
//!
//! ima-ng template data: `u32le(len(alg) + 2 + len(digest)) || alg || ":" || 0x00 || digest`
//! (the d-ng field), then `u32le(len(path) + 1) || path || 0x00` (the n-ng field). The
//! template-hash column of the ASCII line is the SHA-1 of that data.

use std::io::Write;
use std::path::Path;

use kl_core::alg::{Digest, HashAlg};

use crate::swtpm::Swtpm;
use crate::{Result, err};

/// The ima-ng template data of a file measured with SHA-256.
pub fn ima_ng_template_data(file_digest: &[u8], path: &str) -> Vec<u8> {
    let mut d_ng = b"sha256:\0".to_vec();
    d_ng.extend_from_slice(file_digest);
    let mut data = Vec::new();
    data.extend_from_slice(&(d_ng.len() as u32).to_le_bytes());
    data.extend_from_slice(&d_ng);
    data.extend_from_slice(&(path.len() as u32 + 1).to_le_bytes());
    data.extend_from_slice(path.as_bytes());
    data.push(0);
    data
}

/// The ASCII line of an ima-ng entry, with its newline.
pub fn ima_ng_line(file_digest: &[u8], path: &str) -> String {
    let template_hash = HashAlg::Sha1.digest(&ima_ng_template_data(file_digest, path));
    format!("10 {} ima-ng sha256:{} {path}\n", template_hash.to_hex(), hex::encode(file_digest))
}

/// Replays ASCII ima-ng lines into a PCR 10 value of `bank`, starting from zero.
pub fn replay(lines: &[u8], bank: HashAlg) -> Result<Digest> {
    let mut pcr = bank.zero();
    let text = std::str::from_utf8(lines)?;
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.splitn(5, ' ').collect();
        let [_, _, "ima-ng", digest, path] = fields.as_slice() else {
            return Err(err(format!("IMA line {n}: not an ima-ng entry: {line}")));
        };
        let digest = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| err(format!("IMA line {n}: digest is not sha256: {digest}")))?;
        let data = ima_ng_template_data(&hex::decode(digest)?, path);
        pcr.extend(bank.digest(&data).as_bytes());
    }
    Ok(pcr)
}

/// A measurement list being written, with the PCR 10 values it implies.
#[derive(Debug)]
pub struct ImaWriter {
    pcr10_sha256: Digest,
    entries: usize,
}

impl Default for ImaWriter {
    fn default() -> Self {
        ImaWriter { pcr10_sha256: HashAlg::Sha256.zero(), entries: 0 }
    }
}

impl ImaWriter {
    /// Measures a file: extends PCR 10 of the swtpm (SHA-1 and SHA-256 banks), then appends the
    /// line to `log`, in the kernel's order.
    pub fn measure(&mut self, tpm: &Swtpm, log: &Path, path: &str, contents: &[u8]) -> Result<()> {
        let file_digest = HashAlg::Sha256.digest(contents);
        let data = ima_ng_template_data(file_digest.as_bytes(), path);
        let sha1 = HashAlg::Sha1.digest(&data);
        let sha256 = HashAlg::Sha256.digest(&data);
        tpm.pcr_extend_banks(10, &[("sha1", sha1.as_bytes()), ("sha256", sha256.as_bytes())])?;
        self.pcr10_sha256.extend(sha256.as_bytes());
        let mut file = std::fs::OpenOptions::new().append(true).create(true).open(log)?;
        file.write_all(ima_ng_line(file_digest.as_bytes(), path).as_bytes())?;
        self.entries += 1;
        Ok(())
    }

    /// PCR 10 (SHA-256) after the entries written so far.
    pub fn pcr10_sha256(&self) -> &Digest {
        &self.pcr10_sha256
    }

    pub fn entries(&self) -> usize {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_of_written_lines_matches_the_running_value() -> Result<()> {
        let mut lines = String::new();
        let mut pcr = HashAlg::Sha256.zero();
        for n in 0..3 {
            let digest = HashAlg::Sha256.digest(format!("file {n}").as_bytes());
            let path = format!("/usr/bin/tool{n}");
            lines.push_str(&ima_ng_line(digest.as_bytes(), &path));
            let data = ima_ng_template_data(digest.as_bytes(), &path);
            pcr.extend(HashAlg::Sha256.digest(&data).as_bytes());
        }
        assert_eq!(replay(lines.as_bytes(), HashAlg::Sha256)?, pcr);
        assert_ne!(replay(lines.replace("tool1", "tool9").as_bytes(), HashAlg::Sha256)?, pcr);
        Ok(())
    }

    #[test]
    fn template_data_layout() {
        let data = ima_ng_template_data(&[0xaa; 32], "/a");
        let mut expected = vec![40, 0, 0, 0];
        expected.extend_from_slice(b"sha256:\0");
        expected.extend_from_slice(&[0xaa; 32]);
        expected.extend_from_slice(&[3, 0, 0, 0, b'/', b'a', 0]);
        assert_eq!(data, expected);
    }
}
