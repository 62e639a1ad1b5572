//! PCR replay of a measurement list, from zero or incrementally from stored state.
//!
//! Each entry extends PCR 10 of every bank: the SHA-1 bank (or whichever bank the template hash
//! column's algorithm is) with the template hash itself, other banks with the bank's hash of the
//! template data. A violation (all-zero template hash) extends every bank with all-ones.
//!
//! The agent reads the log and quotes PCR 10 separately, so the quote may cover any prefix of
//! the entries it sends. Incremental replay therefore accepts the quoted value before the first
//! new entry and after each one; the state kept for the next round is the running value and
//! entry count at the last match, and the entries after it are sent again next round.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::entry::Entry;
use super::{Entries, IMA_PCR, ImaError};
use crate::alg::{Digest, HashAlg, MAX_DIGEST_LEN};

/// What a verifier keeps per agent between IMA rounds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImaState {
    /// Entries of the full list covered by the last matching quote; the next round starts here.
    pub entries_processed: u64,
    /// The running PCR value per bank after those entries (lowercase hex in JSON).
    #[serde(with = "pcr_hex")]
    pub pcrs: BTreeMap<HashAlg, Digest>,
    /// Keys learned from keyring measurements (`ima-buf`) among the covered entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned_keys: Vec<LearnedKey>,
}

/// A key measured into a kernel keyring, kept for verifying later `ima-sig` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedKey {
    /// The keyring, e.g. `.ima`.
    pub keyring: String,
    /// The measured buffer (X.509 certificate or public key, DER or PEM), base64 in JSON.
    #[serde(with = "b64")]
    pub der: Vec<u8>,
}

impl ImaState {
    /// The running PCR value of `bank`: zero at the start of the list, an error when the state
    /// has covered entries but was kept for other banks (the caller must replay from zero).
    pub fn running_pcr(&self, bank: HashAlg) -> Result<Digest, ImaError> {
        match self.pcrs.get(&bank) {
            Some(d) if d.alg() == bank => Ok(*d),
            Some(d) => Err(ImaError::State(format!("pcrs.{bank} holds a {} digest", d.alg()))),
            None if self.entries_processed == 0 => Ok(bank.zero()),
            None => Err(ImaError::State(format!(
                "no running {bank} PCR value after {} entries; replay from entry 0",
                self.entries_processed
            ))),
        }
    }
}

/// The value entry `entry` extends into PCR 10 of `bank`, given its template data.
pub(crate) fn extend_value(entry: &Entry<'_>, bank: HashAlg, template_data: &[u8]) -> Digest {
    if entry.is_violation() {
        Digest::filled(bank, 0xff)
    } else if entry.template_hash.alg() == bank {
        entry.template_hash
    } else {
        bank.digest(template_data)
    }
}

/// The result of a full replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Entries read (including those for other PCRs, which are not extended).
    pub entries: u64,
    /// The final PCR value per requested bank, in the order requested.
    pub pcrs: Vec<Digest>,
}

/// Replays `entries` from a reset PCR into each of `banks`, extending only entries whose PCR is
/// `pcr_index`.
pub fn replay<'a>(
    entries: impl IntoIterator<Item = Result<Entry<'a>, ImaError>>,
    banks: &[HashAlg],
    pcr_index: u32,
) -> Result<Replayed, ImaError> {
    let mut pcrs: Vec<Digest> = banks.iter().map(|b| b.zero()).collect();
    let mut data = Vec::new();
    let mut count = 0;
    for entry in entries {
        let entry = entry?;
        count += 1;
        if entry.pcr != pcr_index {
            continue;
        }
        let data = entry.template_data(&mut data);
        for pcr in &mut pcrs {
            let value = extend_value(&entry, pcr.alg(), data);
            extend(pcr, value.as_bytes());
        }
    }
    Ok(Replayed { entries: count, pcrs })
}

/// `pcr = H(pcr || value)`, as [`Digest::extend`], hashed in one call from a stack buffer,
/// which is measurably cheaper than two incremental updates on the hot path.
fn extend(pcr: &mut Digest, value: &[u8]) {
    let mut buf = [0u8; 2 * MAX_DIGEST_LEN];
    let n = pcr.as_bytes().len();
    match buf.get_mut(n..n + value.len()) {
        Some(tail) => {
            tail.copy_from_slice(value);
            buf[..n].copy_from_slice(pcr.as_bytes());
            *pcr = pcr.alg().digest(&buf[..n + value.len()]);
        }
        None => pcr.extend(value),
    }
}

/// `a == b`, deciding most unequal pairs on their first eight bytes without a `memcmp` call:
/// the running PCR is compared with the quoted value after every entry.
#[inline]
pub(crate) fn same_digest(a: &Digest, b: &Digest) -> bool {
    match (a.as_bytes().first_chunk::<8>(), b.as_bytes().first_chunk::<8>()) {
        (Some(x), Some(y)) if x != y => false,
        _ => a == b,
    }
}

/// Replays a whole log (ASCII or binary, detected) into PCR 10 of each of `banks`.
pub fn replay_log(log: &[u8], banks: &[HashAlg]) -> Result<Replayed, ImaError> {
    replay(Entries::parse(log, 0), banks, IMA_PCR)
}

/// Tracks one bank through an incremental round and where the quoted value matched.
#[derive(Debug)]
pub(crate) struct Tracker {
    pub(crate) pcr: Digest,
    quoted: Digest,
    /// Entries of the full list consumed so far.
    processed: u64,
    /// Entry count and PCR value at the last match.
    matched: Option<(u64, Digest)>,
}

impl Tracker {
    pub(crate) fn new(
        state: &ImaState,
        bank: HashAlg,
        quoted: Digest,
    ) -> Result<Tracker, ImaError> {
        if quoted.alg() != bank {
            return Err(ImaError::State(format!(
                "quoted PCR value is {}, bank is {bank}",
                quoted.alg()
            )));
        }
        let pcr = state.running_pcr(bank)?;
        let mut t = Tracker { pcr, quoted, processed: state.entries_processed, matched: None };
        t.check();
        Ok(t)
    }

    /// Consumes one entry, extending with `value` unless the entry is for another PCR.
    pub(crate) fn advance(&mut self, value: Option<&Digest>) {
        if let Some(v) = value {
            extend(&mut self.pcr, v.as_bytes());
        }
        self.processed += 1;
        self.check();
    }

    fn check(&mut self) {
        if same_digest(&self.pcr, &self.quoted) {
            self.matched = Some((self.processed, self.pcr));
        }
    }

    /// Entry count (of the full list) and running value at the last match.
    pub(crate) fn matched(&self) -> Option<(u64, Digest)> {
        self.matched
    }

    /// The state after this round (learned keys are the caller's business): at the match, or
    /// `prior` when nothing matched.
    pub(crate) fn next_state(&self, prior: &ImaState) -> ImaState {
        match self.matched {
            Some((count, pcr)) => {
                let mut next = ImaState {
                    entries_processed: count,
                    learned_keys: prior.learned_keys.clone(),
                    ..ImaState::default()
                };
                next.pcrs.insert(pcr.alg(), pcr);
                next
            }
            None => prior.clone(),
        }
    }
}

mod pcr_hex {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::alg::{Digest, HashAlg};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<HashAlg, Digest>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(alg, d)| (alg, d.to_hex())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<HashAlg, Digest>, D::Error> {
        let raw = BTreeMap::<HashAlg, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(alg, hex)| {
                Digest::from_hex(alg, &hex).map(|d| (alg, d)).ok_or_else(|| {
                    D::Error::custom(format!("pcrs.{alg}: {hex:?} is not a {alg} digest in hex"))
                })
            })
            .collect()
    }
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text.as_bytes()).map_err(|e| D::Error::custom(format!("learned key: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_digest_is_equality() {
        let banks = [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512];
        for a in banks {
            for b in banks {
                let (x, y) = (a.digest(b"x"), b.digest(b"x"));
                assert_eq!(same_digest(&x, &y), x == y);
                assert_eq!(same_digest(&a.zero(), &b.zero()), a == b);
            }
            let x = a.digest(b"x");
            for i in 0..a.len() {
                let mut bytes = x.as_bytes().to_vec();
                bytes[i] ^= 0x80;
                let y = Digest::from_bytes(a, &bytes).expect("same length");
                assert!(!same_digest(&x, &y), "{a} byte {i}");
            }
        }
    }

    #[test]
    fn one_shot_extend_equals_the_definition() {
        for bank in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
            let mut fast = bank.digest(b"start");
            let mut slow = fast;
            for value in [bank.digest(b"m"), Digest::filled(bank, 0xff), bank.zero()] {
                extend(&mut fast, value.as_bytes());
                slow.extend(value.as_bytes());
                assert_eq!(fast, slow, "{bank}");
            }
            // A value longer than the bank (never produced by appraisal) takes the slow path.
            let long = [7u8; 2 * MAX_DIGEST_LEN];
            extend(&mut fast, &long);
            slow.extend(&long);
            assert_eq!(fast, slow, "{bank}");
        }
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut state = ImaState { entries_processed: 3, ..ImaState::default() };
        state.pcrs.insert(HashAlg::Sha256, HashAlg::Sha256.digest(b"x"));
        state.learned_keys.push(LearnedKey { keyring: ".ima".into(), der: vec![0x30, 0x82] });
        let json = serde_json::to_value(&state).expect("serializes");
        assert_eq!(json["pcrs"]["sha256"], HashAlg::Sha256.digest(b"x").to_hex());
        assert_eq!(json["learned_keys"][0]["der"], "MII=");
        let back: ImaState = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, state);
        let bad = serde_json::json!({"entries_processed": 1, "pcrs": {"sha256": "00"}});
        let err = serde_json::from_value::<ImaState>(bad).expect_err("short digest");
        assert!(err.to_string().contains("pcrs.sha256"), "{err}");
    }

    #[test]
    fn running_pcr_needs_the_bank_after_entries() {
        let state = ImaState::default();
        assert_eq!(state.running_pcr(HashAlg::Sha384).expect("zero"), HashAlg::Sha384.zero());
        let state = ImaState { entries_processed: 5, ..ImaState::default() };
        let err = state.running_pcr(HashAlg::Sha256).expect_err("missing");
        assert!(err.to_string().contains("after 5 entries"), "{err}");
    }
}
