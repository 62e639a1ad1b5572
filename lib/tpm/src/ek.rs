//! The endorsement key: created from the TCG default template (so it is the same key a
//! manufacturer persisted and certified), and the certificates the TPM keeps in NV.

use std::convert::TryFrom;

use tss_esapi::Context;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ek};
use tss_esapi::constants::{CapabilityType, PropertyTag};
use tss_esapi::handles::{KeyHandle, NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::structures::CapabilityData;

/// The key types this crate creates, for the EK and for the AK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlg {
    /// RSA-2048: the EK every TPM is certified for; RSASSA-SHA256 when used as the AK.
    #[default]
    Rsa2048,
    /// NIST P-256: an ECC EK (few TPMs carry a certificate for it); ECDSA-SHA256 as the AK.
    EccP256,
}

impl KeyAlg {
    /// A short lowercase name for messages and configuration.
    pub const fn name(self) -> &'static str {
        match self {
            KeyAlg::Rsa2048 => "rsa2048",
            KeyAlg::EccP256 => "ecc-p256",
        }
    }

    pub(crate) fn selection(self) -> AsymmetricAlgorithmSelection {
        match self {
            KeyAlg::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            KeyAlg::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        }
    }

    /// The NV index of the EK certificate for this key type (TCG EK Credential Profile, low
    /// range).
    pub const fn ek_certificate_index(self) -> u32 {
        match self {
            KeyAlg::Rsa2048 => EK_CERT_RSA2048_INDEX,
            KeyAlg::EccP256 => EK_CERT_ECC_P256_INDEX,
        }
    }
}

impl std::fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// NV index of the RSA-2048 EK certificate.
pub const EK_CERT_RSA2048_INDEX: u32 = 0x01c0_0002;
/// NV index of the ECC NIST P-256 EK certificate.
pub const EK_CERT_ECC_P256_INDEX: u32 = 0x01c0_000a;
/// First and last NV index where TPM vendors store the EK certificate's intermediate CAs.
pub const EK_CHAIN_FIRST_INDEX: u32 = 0x01c0_0100;
pub const EK_CHAIN_LAST_INDEX: u32 = 0x01c0_01ff;

/// Creates the EK in the endorsement hierarchy from the default template.
pub(crate) fn create(ctx: &mut Context, alg: KeyAlg) -> tss_esapi::Result<KeyHandle> {
    ek::create_ek_object_2(ctx, alg.selection(), DefaultKey)
}

/// The NV indices in `first..=last` that exist, ascending. Asking first keeps the C library
/// from logging errors about absent indices.
pub(crate) fn defined_nv_indices(
    ctx: &mut Context,
    first: u32,
    last: u32,
) -> tss_esapi::Result<Vec<u32>> {
    let mut found = Vec::new();
    let mut next = first;
    loop {
        let (data, more) =
            ctx.execute_without_session(|c| c.get_capability(CapabilityType::Handles, next, 64))?;
        let CapabilityData::Handles(handles) = data else {
            return Err(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            ));
        };
        let raw: Vec<u32> = handles.iter().map(|h| u32::from(*h)).collect();
        let Some(&highest) = raw.last() else {
            break;
        };
        found.extend(raw.iter().copied().filter(|h| (first..=last).contains(h)));
        if !more || highest >= last {
            break;
        }
        next = highest + 1;
    }
    Ok(found)
}

/// Reads a whole NV index, authorising with the index itself or with the owner, whichever
/// the index allows.
pub(crate) fn read_nv(ctx: &mut Context, index: u32) -> tss_esapi::Result<Vec<u8>> {
    let nv_index = NvIndexTpmHandle::new(index)?;
    let mut object =
        ctx.execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(nv_index)))?;
    let result = read_nv_object(ctx, NvIndexHandle::from(object));
    let closed = ctx.tr_close(&mut object);
    let bytes = result?;
    closed?;
    Ok(bytes)
}

fn read_nv_object(ctx: &mut Context, handle: NvIndexHandle) -> tss_esapi::Result<Vec<u8>> {
    let (public, _) = ctx.execute_without_session(|c| c.nv_read_public(handle))?;
    let auth =
        if public.attributes().auth_read() { NvAuth::NvIndex(handle) } else { NvAuth::Owner };
    let chunk = ctx
        .get_tpm_property(PropertyTag::NvBufferMax)?
        .and_then(|max| u16::try_from(max).ok())
        .unwrap_or(NV_BUFFER_FALLBACK);
    let size = public.data_size();
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        let offset = u16::try_from(data.len()).map_err(|_| {
            tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongParamSize)
        })?;
        let want = chunk.min(u16::try_from(size - data.len()).unwrap_or(chunk));
        let part = ctx.execute_with_nullauth_session(|c| c.nv_read(auth, handle, want, offset))?;
        if part.is_empty() {
            break;
        }
        data.extend_from_slice(part.value());
    }
    Ok(data)
}

/// The smallest NV buffer a TPM may have (TPM2_PT_NV_BUFFER_MAX is at least this).
const NV_BUFFER_FALLBACK: u16 = 512;

/// Splits concatenated DER certificates (a vendor may store several in one index), ignoring
/// padding after the last one.
pub(crate) fn split_der_certificates(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut certs = Vec::new();
    let mut rest = bytes;
    while let Some(len) = der_sequence_len(rest) {
        let (cert, tail) = rest.split_at(len);
        certs.push(cert.to_vec());
        rest = tail;
    }
    certs
}

/// The total length of the DER SEQUENCE at the start of `bytes`, if one is there whole.
fn der_sequence_len(bytes: &[u8]) -> Option<usize> {
    if bytes.first() != Some(&0x30) {
        return None;
    }
    let first = *bytes.get(1)?;
    let (header, content) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len_bytes = bytes.get(2..2 + n)?;
        let content = len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (2 + n, content)
    };
    let total = header.checked_add(content)?;
    (total <= bytes.len()).then_some(total)
}

/// The EK certificate, or `None` when the TPM holds none for this key type.
pub(crate) fn certificate(ctx: &mut Context, alg: KeyAlg) -> tss_esapi::Result<Option<Vec<u8>>> {
    let index = alg.ek_certificate_index();
    if defined_nv_indices(ctx, index, index)?.is_empty() {
        return Ok(None);
    }
    let bytes = read_nv(ctx, index)?;
    // Some TPMs pad the index; keep only the certificate itself.
    Ok(split_der_certificates(&bytes).into_iter().next().or(Some(bytes)))
}

/// The intermediate CA certificates stored in NV, in index order.
pub(crate) fn intermediate_certificates(ctx: &mut Context) -> tss_esapi::Result<Vec<Vec<u8>>> {
    let mut certs = Vec::new();
    for index in defined_nv_indices(ctx, EK_CHAIN_FIRST_INDEX, EK_CHAIN_LAST_INDEX)? {
        certs.extend(split_der_certificates(&read_nv(ctx, index)?));
    }
    Ok(certs)
}

impl TryFrom<&str> for KeyAlg {
    type Error = crate::error::TpmError;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        match name.to_ascii_lowercase().as_str() {
            "rsa" | "rsa2048" => Ok(KeyAlg::Rsa2048),
            "ecc" | "ecc-p256" | "ecc256" | "p256" => Ok(KeyAlg::EccP256),
            _ => Err(crate::error::TpmError::InvalidInput {
                field: "key algorithm",
                what: "key algorithm (rsa2048 or ecc-p256)",
                reason: format!("{name:?} is unknown"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(content_len: usize) -> Vec<u8> {
        let mut v = vec![0x30];
        if content_len < 0x80 {
            v.push(content_len as u8);
        } else {
            v.extend([0x82, (content_len >> 8) as u8, content_len as u8]);
        }
        v.extend(std::iter::repeat_n(0xab, content_len));
        v
    }

    #[test]
    fn splits_concatenated_certificates_and_drops_padding() {
        let a = der(5);
        let b = der(300);
        let mut stored = [a.clone(), b.clone()].concat();
        stored.extend([0xff; 16]);
        assert_eq!(split_der_certificates(&stored), vec![a, b]);
    }

    #[test]
    fn truncated_or_foreign_data_gives_no_certificate() {
        let mut short = der(300);
        short.truncate(100);
        assert!(split_der_certificates(&short).is_empty());
        assert!(split_der_certificates(&[0xff, 0xff]).is_empty());
        assert!(split_der_certificates(&[]).is_empty());
    }

    #[test]
    fn key_alg_names_round_trip() {
        for alg in [KeyAlg::Rsa2048, KeyAlg::EccP256] {
            assert_eq!(KeyAlg::try_from(alg.name()).ok(), Some(alg));
        }
        assert!(KeyAlg::try_from("dsa").is_err());
    }
}
