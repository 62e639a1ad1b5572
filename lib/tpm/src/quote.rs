//! Quotes and PCRs: a quote signed by the AK together with PCR values whose digest matches
//! the one inside the quote, plus PCR reads and extends.

use kl_core::alg::{Digest, HashAlg};
use kl_core::tpm2::ClockInfo;
use tss_esapi::Context;
use tss_esapi::abstraction::pcr;
use tss_esapi::handles::{KeyHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{
    AttestInfo, Data, DigestValues, PcrSelectionList, PcrSelectionListBuilder, PcrSlot,
    SignatureScheme,
};
use tss_esapi::traits::Marshall;

use crate::error::{Failure, TpmError};

/// The highest PCR index of a PC-client TPM.
pub const MAX_PCR_INDEX: u32 = 23;
/// The largest nonce (qualifying data) a quote takes.
pub const MAX_NONCE_LEN: usize = 64;
/// How often a quote is retaken when the PCRs change between the quote and the read.
const QUOTE_ATTEMPTS: u32 = 5;
/// The hash of the AK's signing scheme, which is also the hash of the quote's pcrDigest.
const AK_HASH: HashAlg = HashAlg::Sha256;

/// The value of one PCR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrValue {
    pub index: u32,
    pub value: Digest,
}

/// A quote and the PCR values it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Marshalled TPMS_ATTEST, byte for byte what the AK signed.
    pub attest: Vec<u8>,
    /// Marshalled TPMT_SIGNATURE over `attest`.
    pub signature: Vec<u8>,
    /// The bank the PCR values come from.
    pub bank: HashAlg,
    /// The quoted PCRs in ascending index order; their digest equals the quote's pcrDigest.
    pub pcr_values: Vec<PcrValue>,
    /// The clock state from the quote, for logging and reboot detection.
    pub clock_info: ClockInfo,
}

pub(crate) fn hashing_algorithm(bank: HashAlg) -> HashingAlgorithm {
    match bank {
        HashAlg::Sha1 => HashingAlgorithm::Sha1,
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
    }
}

/// The PCR indices, sorted, without duplicates, each checked to exist.
pub(crate) fn sorted_indices(pcrs: &[u32]) -> Result<Vec<u32>, TpmError> {
    let mut indices = pcrs.to_vec();
    indices.sort_unstable();
    indices.dedup();
    if let Some(&index) = indices.iter().find(|&&i| i > MAX_PCR_INDEX) {
        return Err(TpmError::PcrIndex { index });
    }
    if indices.is_empty() {
        return Err(TpmError::InvalidInput {
            field: "pcrs",
            what: "PCR selection",
            reason: "no PCR selected".to_owned(),
        });
    }
    Ok(indices)
}

fn slot(index: u32) -> Result<PcrSlot, TpmError> {
    PcrSlot::try_from(1u32 << index).map_err(|_| TpmError::PcrIndex { index })
}

fn selection(bank: HashAlg, indices: &[u32]) -> Result<PcrSelectionList, Failure> {
    let slots = indices.iter().map(|&i| slot(i)).collect::<Result<Vec<_>, _>>()?;
    Ok(PcrSelectionListBuilder::new().with_selection(hashing_algorithm(bank), &slots).build()?)
}

/// Reads every PCR of `selection`, a TPM2_PCR_Read (at most 8 digests) at a time. A read that
/// returns nothing ends the loop: a TPM answers so for a bank it has not allocated, and
/// tss-esapi's `read_all` would ask again forever. The caller then finds the values missing.
fn read_all(ctx: &mut Context, mut selection: PcrSelectionList) -> Result<pcr::PcrData, Failure> {
    let mut data = pcr::PcrData::new();
    while !selection.is_empty() {
        let (_, read, digests) = ctx.pcr_read(selection.clone())?;
        if read.get_selections().iter().all(|s| s.is_empty()) {
            break;
        }
        data.add(&read, &digests)?;
        selection.subtract(&read)?;
    }
    Ok(data)
}

/// Reads the PCRs `indices` (sorted) of `bank`.
pub(crate) fn read(
    ctx: &mut Context,
    bank: HashAlg,
    indices: &[u32],
) -> Result<Vec<PcrValue>, Failure> {
    let data = read_all(ctx, selection(bank, indices)?)?;
    let values = data.pcr_bank(hashing_algorithm(bank));
    indices
        .iter()
        .map(|&index| {
            let missing = || TpmError::PcrMissing { index, bank };
            let digest = values
                .and_then(|b| slot(index).ok().and_then(|s| b.get_digest(s)))
                .ok_or_else(missing)?;
            let value = Digest::from_bytes(bank, digest.value()).ok_or_else(|| {
                TpmError::UnexpectedResponse {
                    what: "PCR_Read",
                    reason: format!(
                        "PCR {index} of bank {bank} is {} bytes long",
                        digest.value().len()
                    ),
                }
            })?;
            Ok(PcrValue { index, value })
        })
        .collect()
}

/// Extends PCR `index` of `bank` with `digest`.
pub(crate) fn extend(
    ctx: &mut Context,
    bank: HashAlg,
    index: u32,
    digest: &[u8],
) -> Result<(), Failure> {
    if index > MAX_PCR_INDEX {
        return Err(TpmError::PcrIndex { index }.into());
    }
    if digest.len() != bank.len() {
        return Err(TpmError::PcrDigestLength {
            index,
            bank,
            len: digest.len(),
            expected: bank.len(),
        }
        .into());
    }
    let handle = PcrHandle::try_from(index)?;
    let mut values = DigestValues::new();
    values.set(hashing_algorithm(bank), tss_esapi::structures::Digest::try_from(digest)?);
    ctx.execute_with_nullauth_session(|c| c.pcr_extend(handle, values))?;
    Ok(())
}

/// Quotes `indices` (sorted) of `bank` with the AK and reads their values, retaking the quote
/// while the values read do not hash to the quote's pcrDigest (a PCR was extended between the
/// two commands).
pub(crate) fn quote(
    ctx: &mut Context,
    ak: KeyHandle,
    nonce: &[u8],
    bank: HashAlg,
    indices: &[u32],
) -> Result<Quote, Failure> {
    let selection = selection(bank, indices)?;
    for _ in 0..QUOTE_ATTEMPTS {
        let qualifying_data = Data::try_from(nonce.to_vec())?;
        let (attest, signature) = ctx.execute_with_nullauth_session(|c| {
            c.quote(ak, qualifying_data, SignatureScheme::Null, selection.clone())
        })?;
        let pcr_values = read(ctx, bank, indices)?;
        let AttestInfo::Quote { info } = attest.attested() else {
            return Err(TpmError::UnexpectedResponse {
                what: "Quote",
                reason: "the attestation is not a quote".to_owned(),
            }
            .into());
        };
        if pcr_digest(&pcr_values).as_bytes() != info.pcr_digest().value() {
            continue;
        }
        let clock = attest.clock_info();
        return Ok(Quote {
            attest: attest.marshall()?,
            signature: signature.marshall()?,
            bank,
            pcr_values,
            clock_info: ClockInfo {
                clock: clock.clock(),
                reset_count: clock.reset_count(),
                restart_count: clock.restart_count(),
                safe: clock.safe(),
            },
        });
    }
    Err(TpmError::PcrsUnstable { attempts: QUOTE_ATTEMPTS }.into())
}

/// The quote's pcrDigest over these values: the hash of their concatenation in index order.
pub fn pcr_digest(values: &[PcrValue]) -> Digest {
    let mut hasher = AK_HASH.hasher();
    for v in values {
        hasher.update(v.value.as_bytes());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_sorted_deduplicated_and_checked() {
        assert_eq!(sorted_indices(&[10, 0, 10, 7]).expect("ok"), vec![0, 7, 10]);
        let err = sorted_indices(&[1, 24]).expect_err("24 is out of range");
        assert!(err.to_string().contains("PCR 24"), "{err}");
        assert!(sorted_indices(&[]).is_err());
    }

    #[test]
    fn digest_covers_values_in_order() {
        let a = HashAlg::Sha256.digest(b"a");
        let b = HashAlg::Sha256.digest(b"b");
        let values = vec![PcrValue { index: 0, value: a }, PcrValue { index: 1, value: b }];
        let concatenated = [a.as_bytes(), b.as_bytes()].concat();
        assert_eq!(pcr_digest(&values), HashAlg::Sha256.digest(&concatenated));
    }
}
