//! `TPMS_ATTEST`: what a TPM signs for a quote (`TPM_ST_ATTEST_QUOTE`) or a certification
//! (`TPM_ST_ATTEST_CERTIFY`).

use super::pcr::PcrSelection;
use super::wire::{Reader, Writer};
use super::{Error, MAX_DATA, MAX_DIGEST, MAX_NAME, st};

/// `TPM_GENERATED_VALUE`, the magic that starts every structure the TPM itself produced.
pub(crate) const TPM_GENERATED_VALUE: u32 = 0xff54_4347;

/// `TPMS_CLOCK_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its last TPM2_Clear.
    pub clock: u64,
    /// TPM Resets (reboots) since the last TPM2_Clear.
    pub reset_count: u32,
    /// TPM Restarts or Resumes since the last TPM Reset.
    pub restart_count: u32,
    /// Whether `clock` is guaranteed never to have been reported before (no unorderly shutdown).
    pub safe: bool,
}

/// The type-specific body of a `TPMS_ATTEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestBody {
    /// `TPMS_QUOTE_INFO`.
    Quote { selection: PcrSelection, pcr_digest: Vec<u8> },
    /// `TPMS_CERTIFY_INFO`.
    Certify { name: Vec<u8>, qualified_name: Vec<u8> },
}

/// A parsed `TPMS_ATTEST` of a quote or a certification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (the nonce), echoed by the TPM.
    pub extra_data: Vec<u8>,
    pub clock_info: ClockInfo,
    pub firmware_version: u64,
    pub body: AttestBody,
}

const TPMS_ATTEST: &str = "TPMS_ATTEST";

impl Attest {
    /// Parses a `TPMS_ATTEST` that fills `bytes` exactly.
    pub fn parse(bytes: &[u8]) -> Result<Attest, Error> {
        let mut r = Reader::new(bytes, TPMS_ATTEST);
        let offset = r.offset();
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(r.invalid("magic", offset, magic.into(), "TPM_GENERATED_VALUE 0xff544347"));
        }
        let offset = r.offset();
        let kind = r.u16("type")?;
        if kind != st::ATTEST_QUOTE && kind != st::ATTEST_CERTIFY {
            return Err(r.invalid(
                "type",
                offset,
                kind.into(),
                "TPM_ST_ATTEST_QUOTE 0x8018 or TPM_ST_ATTEST_CERTIFY 0x8017",
            ));
        }
        let qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME)?.to_vec();
        let extra_data = r.tpm2b("extraData", MAX_DATA)?.to_vec();
        let clock = r.u64("clockInfo.clock")?;
        let reset_count = r.u32("clockInfo.resetCount")?;
        let restart_count = r.u32("clockInfo.restartCount")?;
        let offset = r.offset();
        let safe = match r.u8("clockInfo.safe")? {
            0 => false,
            1 => true,
            other => return Err(r.invalid("clockInfo.safe", offset, other.into(), "0 or 1")),
        };
        let firmware_version = r.u64("firmwareVersion")?;
        let body = if kind == st::ATTEST_QUOTE {
            let selection = PcrSelection::read(&mut r)?;
            let pcr_digest = r.tpm2b("pcrDigest", MAX_DIGEST)?.to_vec();
            AttestBody::Quote { selection, pcr_digest }
        } else {
            let name = r.tpm2b("certify.name", MAX_NAME)?.to_vec();
            let qualified_name = r.tpm2b("certify.qualifiedName", MAX_NAME)?.to_vec();
            AttestBody::Certify { name, qualified_name }
        };
        r.finish()?;
        Ok(Attest {
            qualified_signer,
            extra_data,
            clock_info: ClockInfo { clock, reset_count, restart_count, safe },
            firmware_version,
            body,
        })
    }

    /// Marshals the structure, as a TPM would produce it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(TPM_GENERATED_VALUE);
        w.u16(match self.body {
            AttestBody::Quote { .. } => st::ATTEST_QUOTE,
            AttestBody::Certify { .. } => st::ATTEST_CERTIFY,
        });
        w.tpm2b(&self.qualified_signer);
        w.tpm2b(&self.extra_data);
        w.u64(self.clock_info.clock);
        w.u32(self.clock_info.reset_count);
        w.u32(self.clock_info.restart_count);
        w.u8(u8::from(self.clock_info.safe));
        w.u64(self.firmware_version);
        match &self.body {
            AttestBody::Quote { selection, pcr_digest } => {
                selection.write(&mut w);
                w.tpm2b(pcr_digest);
            }
            AttestBody::Certify { name, qualified_name } => {
                w.tpm2b(name);
                w.tpm2b(qualified_name);
            }
        }
        w.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::HashAlg;
    use crate::tpm2::PcrSet;

    fn quote() -> Attest {
        Attest {
            qualified_signer: vec![0, 0x0b, 1, 2],
            extra_data: vec![9; 32],
            clock_info: ClockInfo { clock: 5, reset_count: 1, restart_count: 2, safe: true },
            firmware_version: 0x2016_0511_0016_2800,
            body: AttestBody::Quote {
                selection: PcrSelection::single(HashAlg::Sha256, PcrSet(0x0041_8000)),
                pcr_digest: vec![7; 32],
            },
        }
    }

    #[test]
    fn quote_and_certify_round_trip() {
        let q = quote();
        assert_eq!(Attest::parse(&q.to_bytes()).expect("parses"), q);
        let c = Attest {
            body: AttestBody::Certify { name: vec![0, 0x0b, 3], qualified_name: vec![0, 0x0b, 4] },
            ..quote()
        };
        assert_eq!(Attest::parse(&c.to_bytes()).expect("parses"), c);
    }

    #[test]
    fn bad_magic_type_and_safe_name_the_field() {
        let good = quote().to_bytes();
        let mut b = good.clone();
        b[0] = 0;
        assert!(
            Attest::parse(&b)
                .expect_err("must fail")
                .to_string()
                .starts_with("TPMS_ATTEST.magic at byte 0")
        );
        let mut b = good.clone();
        b[5] = 0x14;
        assert!(
            Attest::parse(&b)
                .expect_err("must fail")
                .to_string()
                .starts_with("TPMS_ATTEST.type at byte 4")
        );
        let mut b = good.clone();
        // magic 4 + type 2 + signer 2+4 + extra 2+32 + clock 8 + reset 4 + restart 4 = 62
        b[62] = 2;
        let err = Attest::parse(&b).expect_err("must fail");
        assert_eq!(err.offset(), 62, "{err}");
        assert!(err.to_string().contains("clockInfo.safe"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error_naming_a_position() {
        let good = quote().to_bytes();
        for len in 0..good.len() {
            let err = Attest::parse(&good[..len]).expect_err("must fail");
            assert!(err.offset() <= len, "{err}");
        }
    }
}
