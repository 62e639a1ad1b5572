//! PCR selections (`TPML_PCR_SELECTION`), sets of PCR values, and the PCR dump tpm2-tools
//! writes with `tpm2_quote -o` (a little-endian in-memory image, not TPM marshalling).

use std::fmt;

use super::Error;
use super::wire::{Reader, Writer};
use crate::alg::{Digest, HashAlg};

/// A set of PCR indices in `0..32`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PcrSet(pub u32);

impl PcrSet {
    /// The highest PCR index a set can hold, plus one.
    pub const LIMIT: u32 = 32;

    /// The set of `indices`, or `None` if one is 32 or more.
    pub fn from_indices(indices: impl IntoIterator<Item = u32>) -> Option<PcrSet> {
        let mut set = PcrSet::default();
        for i in indices {
            if !set.insert(i) {
                return None;
            }
        }
        Some(set)
    }

    /// Adds `index`; false if it is out of range.
    pub fn insert(&mut self, index: u32) -> bool {
        if index >= Self::LIMIT {
            return false;
        }
        self.0 |= 1 << index;
        true
    }

    pub fn contains(self, index: u32) -> bool {
        index < Self::LIMIT && self.0 & (1 << index) != 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Indices in `self` but not in `other`.
    pub fn difference(self, other: PcrSet) -> PcrSet {
        PcrSet(self.0 & !other.0)
    }

    /// The indices in ascending order.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..Self::LIMIT).filter(move |&i| self.contains(i))
    }

    /// The `pcrSelect` bytes of a TPMS_PCR_SELECTION with `size` bytes.
    fn select_bytes(self, size: u8) -> impl Iterator<Item = u8> {
        let le = self.0.to_le_bytes();
        (0..usize::from(size)).map(move |i| le.get(i).copied().unwrap_or(0))
    }

    /// The smallest `sizeofSelect` able to hold the set; TPMs use at least 3 (24 PCRs).
    fn min_select_size(self) -> u8 {
        if self.0 >> 24 != 0 { 4 } else { 3 }
    }
}

impl fmt::Display for PcrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for i in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            write!(f, "{i}")?;
            first = false;
        }
        Ok(())
    }
}

impl fmt::Debug for PcrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PcrSet[{self}]")
    }
}

/// `TPMS_PCR_SELECTION`: the PCRs selected in one bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcrBankSelection {
    /// The bank's TPM_ALG_ID (kept raw: an unknown bank must still be reported, not dropped).
    pub hash_alg: u16,
    /// `sizeofSelect`, kept so the structure marshals back byte for byte.
    pub size_of_select: u8,
    pub pcrs: PcrSet,
}

impl PcrBankSelection {
    pub fn new(bank: HashAlg, pcrs: PcrSet) -> PcrBankSelection {
        PcrBankSelection {
            hash_alg: bank.tpm_alg_id(),
            size_of_select: pcrs.min_select_size(),
            pcrs,
        }
    }

    pub fn bank(&self) -> Option<HashAlg> {
        HashAlg::from_tpm_alg_id(self.hash_alg)
    }
}

/// `TPML_PCR_SELECTION`: the selected PCRs of every bank, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PcrSelection {
    pub banks: Vec<PcrBankSelection>,
}

/// TPM2_NUM_PCR_BANKS in the TPM software stack.
const MAX_BANKS: u32 = 16;
/// The largest `sizeofSelect` a [`PcrSet`] can represent.
const MAX_SELECT: u8 = 4;

impl PcrSelection {
    /// A selection of `pcrs` in the one bank `bank`.
    pub fn single(bank: HashAlg, pcrs: PcrSet) -> PcrSelection {
        PcrSelection { banks: vec![PcrBankSelection::new(bank, pcrs)] }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<PcrSelection, Error> {
        let offset = r.offset();
        let count = r.u32("pcrSelect.count")?;
        if count > MAX_BANKS {
            return Err(r.too_large("pcrSelect.count", offset, count as usize, MAX_BANKS as usize));
        }
        let mut banks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let hash_alg = r.u16("pcrSelect.hash")?;
            let offset = r.offset();
            let size_of_select = r.u8("pcrSelect.sizeofSelect")?;
            if size_of_select > MAX_SELECT {
                return Err(r.too_large(
                    "pcrSelect.sizeofSelect",
                    offset,
                    size_of_select.into(),
                    MAX_SELECT.into(),
                ));
            }
            let mut le = [0u8; 4];
            le[..usize::from(size_of_select)]
                .copy_from_slice(r.bytes(size_of_select.into(), "pcrSelect.pcrSelect")?);
            banks.push(PcrBankSelection {
                hash_alg,
                size_of_select,
                pcrs: PcrSet(u32::from_le_bytes(le)),
            });
        }
        Ok(PcrSelection { banks })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u32(self.banks.len() as u32);
        for bank in &self.banks {
            w.u16(bank.hash_alg);
            w.u8(bank.size_of_select);
            for b in bank.pcrs.select_bytes(bank.size_of_select) {
                w.u8(b);
            }
        }
    }

    /// Number of PCRs selected over all banks.
    pub fn len(&self) -> usize {
        self.banks.iter().map(|b| b.pcrs.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a PCR value could not be added to a [`PcrValues`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PcrValuesError {
    #[error("PCR {0} is out of range (0..32)")]
    OutOfRange(u32),
    #[error("PCR {pcr} value is {actual}, the bank is {bank}")]
    WrongBank { pcr: u32, bank: HashAlg, actual: HashAlg },
    #[error("PCR {0} is given twice")]
    Duplicate(u32),
}

/// The values of some PCRs of one bank, ordered by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrValues {
    bank: HashAlg,
    values: Vec<(u32, Digest)>,
}

impl PcrValues {
    pub fn new(bank: HashAlg) -> PcrValues {
        PcrValues { bank, values: Vec::new() }
    }

    pub fn bank(&self) -> HashAlg {
        self.bank
    }

    pub fn insert(&mut self, pcr: u32, value: Digest) -> Result<(), PcrValuesError> {
        if pcr >= PcrSet::LIMIT {
            return Err(PcrValuesError::OutOfRange(pcr));
        }
        if value.alg() != self.bank {
            return Err(PcrValuesError::WrongBank { pcr, bank: self.bank, actual: value.alg() });
        }
        match self.values.binary_search_by_key(&pcr, |(i, _)| *i) {
            Ok(_) => Err(PcrValuesError::Duplicate(pcr)),
            Err(at) => {
                self.values.insert(at, (pcr, value));
                Ok(())
            }
        }
    }

    pub fn get(&self, pcr: u32) -> Option<&Digest> {
        let at = self.values.binary_search_by_key(&pcr, |(i, _)| *i).ok()?;
        Some(&self.values[at].1)
    }

    /// The PCRs that have a value.
    pub fn pcrs(&self) -> PcrSet {
        PcrSet(self.values.iter().fold(0, |acc, (i, _)| acc | (1 << i)))
    }

    /// `(index, value)` in ascending index order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Digest)> {
        self.values.iter().map(|(i, d)| (*i, d))
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

const DUMP: &str = "tpm2-tools PCR dump";
/// Bank slots in the dump's TPML_PCR_SELECTION image (TPM2_NUM_PCR_BANKS).
const DUMP_BANKS: usize = 16;
/// Digest slots in each TPML_DIGEST image.
const DUMP_DIGESTS: usize = 8;
/// `u16 size` + a 64-byte buffer.
const DUMP_DIGEST_SLOT: usize = 2 + 64;

/// The PCR values tpm2-tools writes beside a quote (`tpm2_quote -o FILE`), as Keylime sends
/// them: an in-memory, little-endian image of `TPML_PCR_SELECTION` (16 fixed 8-byte bank
/// slots) followed by a u32 count of `TPML_DIGEST` images (8 fixed 66-byte digest slots each).
/// Values are assigned to the selected PCRs in selection order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrDump {
    pub selection: PcrSelection,
    /// One entry per selected bank, in selection order.
    pub banks: Vec<PcrValues>,
}

fn le_u32(r: &mut Reader<'_>, field: &'static str) -> Result<u32, Error> {
    let mut b = [0u8; 4];
    b.copy_from_slice(r.bytes(4, field)?);
    Ok(u32::from_le_bytes(b))
}

fn le_u16(r: &mut Reader<'_>, field: &'static str) -> Result<u16, Error> {
    let mut b = [0u8; 2];
    b.copy_from_slice(r.bytes(2, field)?);
    Ok(u16::from_le_bytes(b))
}

impl PcrDump {
    pub fn parse(bytes: &[u8]) -> Result<PcrDump, Error> {
        let mut r = Reader::new(bytes, DUMP);
        let offset = r.offset();
        let count = le_u32(&mut r, "pcrSelection.count")?;
        if count as usize > DUMP_BANKS {
            return Err(r.too_large("pcrSelection.count", offset, count as usize, DUMP_BANKS));
        }
        let mut selection = PcrSelection::default();
        let mut banks = Vec::new();
        for slot in 0..DUMP_BANKS {
            let offset = r.offset();
            let hash_alg = le_u16(&mut r, "pcrSelection.hash")?;
            let size_offset = r.offset();
            let size_of_select = r.u8("pcrSelection.sizeofSelect")?;
            let select = r.bytes(4, "pcrSelection.pcrSelect")?;
            r.bytes(1, "pcrSelection.padding")?;
            if slot >= count as usize {
                continue;
            }
            if size_of_select > MAX_SELECT {
                return Err(r.too_large(
                    "pcrSelection.sizeofSelect",
                    size_offset,
                    size_of_select.into(),
                    MAX_SELECT.into(),
                ));
            }
            let mut le = [0u8; 4];
            le[..usize::from(size_of_select)]
                .copy_from_slice(&select[..usize::from(size_of_select)]);
            let bank = HashAlg::from_tpm_alg_id(hash_alg).ok_or_else(|| {
                r.invalid("pcrSelection.hash", offset, hash_alg.into(), "a supported PCR bank")
            })?;
            selection.banks.push(PcrBankSelection {
                hash_alg,
                size_of_select,
                pcrs: PcrSet(u32::from_le_bytes(le)),
            });
            banks.push(PcrValues::new(bank));
        }

        let offset = r.offset();
        let lists = le_u32(&mut r, "digests.count")? as usize;
        // Each list holds at most 8 values and at most 32 PCRs per bank can be selected.
        let max_lists = (DUMP_BANKS * PcrSet::LIMIT as usize).div_ceil(DUMP_DIGESTS);
        if lists > max_lists {
            return Err(r.too_large("digests.count", offset, lists, max_lists));
        }
        let mut targets = selection
            .banks
            .iter()
            .enumerate()
            .flat_map(|(b, sel)| sel.pcrs.iter().map(move |pcr| (b, pcr)));
        for _ in 0..lists {
            let offset = r.offset();
            let n = le_u32(&mut r, "digests.list.count")? as usize;
            if n > DUMP_DIGESTS {
                return Err(r.too_large("digests.list.count", offset, n, DUMP_DIGESTS));
            }
            for slot in 0..DUMP_DIGESTS {
                let offset = r.offset();
                let size = usize::from(le_u16(&mut r, "digests.list.digest.size")?);
                let buffer = r.bytes(64, "digests.list.digest.buffer")?;
                if slot >= n {
                    continue;
                }
                let Some((b, pcr)) = targets.next() else {
                    return Err(r.invalid(
                        "digests.list.count",
                        offset,
                        n as u64,
                        "at most one value per selected PCR",
                    ));
                };
                let values = &mut banks[b];
                let digest = buffer
                    .get(..size)
                    .and_then(|raw| Digest::from_bytes(values.bank(), raw))
                    .ok_or_else(|| {
                        r.invalid(
                            "digests.list.digest.size",
                            offset,
                            size as u64,
                            "the bank's digest size",
                        )
                    })?;
                // Selection order is strictly ascending per bank, so insertion cannot fail.
                values.insert(pcr, digest).map_err(|_| {
                    r.invalid("digests.list.digest", offset, pcr.into(), "a new PCR")
                })?;
            }
        }
        if targets.next().is_some() {
            return Err(r.invalid(
                "digests.count",
                r.offset(),
                banks.iter().map(PcrValues::len).sum::<usize>() as u64,
                "one value per selected PCR",
            ));
        }
        r.finish()?;
        Ok(PcrDump { selection, banks })
    }

    /// Builds a dump of `banks`, in the given order.
    pub fn from_banks(banks: Vec<PcrValues>) -> PcrDump {
        let selection = PcrSelection {
            banks: banks.iter().map(|b| PcrBankSelection::new(b.bank(), b.pcrs())).collect(),
        };
        PcrDump { selection, banks }
    }

    /// The image tpm2-tools would write for this dump.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.selection.banks.len() as u32).to_le_bytes());
        for slot in 0..DUMP_BANKS {
            let mut entry = [0u8; 8];
            if let Some(bank) = self.selection.banks.get(slot) {
                entry[..2].copy_from_slice(&bank.hash_alg.to_le_bytes());
                entry[2] = bank.size_of_select;
                for (i, b) in
                    bank.pcrs.select_bytes(bank.size_of_select.min(MAX_SELECT)).enumerate()
                {
                    entry[3 + i] = b;
                }
            }
            out.extend_from_slice(&entry);
        }
        let digests: Vec<&Digest> =
            self.banks.iter().flat_map(|b| b.iter().map(|(_, d)| d)).collect();
        let chunks: Vec<&[&Digest]> = digests.chunks(DUMP_DIGESTS).collect();
        out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for chunk in chunks {
            out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            for slot in 0..DUMP_DIGESTS {
                let mut entry = [0u8; DUMP_DIGEST_SLOT];
                if let Some(d) = chunk.get(slot) {
                    let raw = d.as_bytes();
                    entry[..2].copy_from_slice(&(raw.len() as u16).to_le_bytes());
                    entry[2..2 + raw.len()].copy_from_slice(raw);
                }
                out.extend_from_slice(&entry);
            }
        }
        out
    }

    /// The values of `bank`, if the dump has that bank.
    pub fn bank(&self, bank: HashAlg) -> Option<&PcrValues> {
        self.banks.iter().find(|b| b.bank() == bank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PcrValues {
        let mut v = PcrValues::new(HashAlg::Sha256);
        for i in [0, 1, 2, 3, 4, 5, 6, 7, 14, 15] {
            v.insert(i, HashAlg::Sha256.digest(&[i as u8])).expect("new pcr");
        }
        v
    }

    #[test]
    fn dump_round_trips_across_several_digest_lists() {
        let dump = PcrDump::from_banks(vec![sample()]);
        let bytes = dump.to_bytes();
        assert_eq!(bytes.len(), 132 + 4 + 2 * 532);
        assert_eq!(PcrDump::parse(&bytes).expect("parses"), dump);
    }

    #[test]
    fn dump_with_too_few_values_is_rejected() {
        let dump = PcrDump::from_banks(vec![sample()]);
        let mut bytes = dump.to_bytes();
        // Claim one list only: the second is then trailing and two PCRs lack a value.
        bytes[132] = 1;
        let err = PcrDump::parse(&bytes).expect_err("must fail");
        assert!(err.to_string().contains("digests.count"), "{err}");
    }

    #[test]
    fn values_reject_wrong_bank_and_duplicates() {
        let mut v = sample();
        assert_eq!(v.insert(15, HashAlg::Sha256.zero()), Err(PcrValuesError::Duplicate(15)));
        assert!(matches!(
            v.insert(16, HashAlg::Sha1.zero()),
            Err(PcrValuesError::WrongBank { .. })
        ));
        assert_eq!(v.insert(32, HashAlg::Sha256.zero()), Err(PcrValuesError::OutOfRange(32)));
        assert_eq!(v.pcrs().to_string(), "0,1,2,3,4,5,6,7,14,15");
    }

    #[test]
    fn pcr_set_basics() {
        let s = PcrSet::from_indices([22, 15, 16]).expect("in range");
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![15, 16, 22]);
        assert_eq!(s.difference(PcrSet::from_indices([15]).expect("ok")).to_string(), "16,22");
        assert!(PcrSet::from_indices([32]).is_none());
        assert!(!s.contains(99));
    }
}
