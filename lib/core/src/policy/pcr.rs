//! Static PCR policies: for some PCRs, the values they may hold.
//!
//! This project's format is `{"hash_alg": "sha256", "pcrs": {"15": ["<hex>", ...]}}`
//! (`hash_alg` optional: without it the bank is not checked, and values of another length
//! simply never match). Keylime's `tpm_policy` is accepted too: `{"15": ["<hex>"] | "<hex>",
//! "mask": "0x..."}`, where `mask` names the PCRs to quote. A policy is parsed once and then
//! evaluated against the attested PCR values of each quote.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::alg::HashAlg;
use crate::tpm2::{PcrSet, PcrValues};
use crate::verdict::{Finding, Verdict, rule};

/// Why a PCR policy document was refused. Each message names the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PcrPolicyError {
    #[error("PCR policy: not JSON: {0}")]
    Json(String),
    #[error("PCR policy: expected a JSON object at the top level")]
    NotAnObject,
    #[error("PCR policy: key {key:?}: {problem}")]
    BadKey { key: String, problem: &'static str },
    #[error("PCR policy: PCR {pcr}: value {value}: {problem}")]
    BadValue { pcr: String, value: String, problem: &'static str },
    #[error("PCR policy: mask {0:?} is not a hex number of PCRs 0..31 like \"0x408000\"")]
    BadMask(String),
    #[error("PCR policy: hash_alg {0:?} is not sha1, sha256, sha384 or sha512")]
    BadHashAlg(String),
}

/// A parsed PCR policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PcrPolicy {
    bank: Option<HashAlg>,
    /// Allowed values per PCR, raw bytes.
    allowed: BTreeMap<u32, Vec<Vec<u8>>>,
    /// Extra PCRs to quote (Keylime's mask), beyond the ones with allowed values.
    mask: PcrSet,
}

impl PcrPolicy {
    /// Parses this project's format or Keylime's `tpm_policy`, telling them apart by the
    /// `pcrs` key.
    pub fn from_json(text: &[u8]) -> Result<PcrPolicy, PcrPolicyError> {
        let value: Value =
            serde_json::from_slice(text).map_err(|e| PcrPolicyError::Json(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(PcrPolicyError::NotAnObject);
        };
        if map.contains_key("pcrs") {
            PcrPolicy::from_project_map(&map)
        } else {
            PcrPolicy::from_keylime_map(&map)
        }
    }

    /// Parses Keylime's `tpm_policy` JSON.
    pub fn from_keylime_json(text: &[u8]) -> Result<PcrPolicy, PcrPolicyError> {
        let value: Value =
            serde_json::from_slice(text).map_err(|e| PcrPolicyError::Json(e.to_string()))?;
        match value {
            Value::Object(map) => PcrPolicy::from_keylime_map(&map),
            _ => Err(PcrPolicyError::NotAnObject),
        }
    }

    fn from_project_map(map: &Map<String, Value>) -> Result<PcrPolicy, PcrPolicyError> {
        if let Some(key) = map.keys().find(|k| *k != "pcrs" && *k != "hash_alg") {
            return Err(PcrPolicyError::BadKey { key: key.clone(), problem: "unknown key" });
        }
        let mut policy = PcrPolicy::default();
        // The bank first: it decides which value lengths are acceptable.
        if let Some(value) = map.get("hash_alg") {
            let name = value.as_str().unwrap_or_default();
            policy.bank =
                Some(name.parse().map_err(|_| PcrPolicyError::BadHashAlg(value.to_string()))?);
        }
        let Some(Value::Object(pcrs)) = map.get("pcrs") else {
            return Err(PcrPolicyError::BadKey {
                key: "pcrs".into(),
                problem: "must be an object",
            });
        };
        for (pcr, values) in pcrs {
            policy.add(pcr, values)?;
        }
        Ok(policy)
    }

    fn from_keylime_map(map: &Map<String, Value>) -> Result<PcrPolicy, PcrPolicyError> {
        let mut policy = PcrPolicy::default();
        for (key, value) in map {
            if key == "mask" {
                let text = value.as_str().unwrap_or_default();
                let digits =
                    text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
                policy.mask = u32::from_str_radix(digits, 16)
                    .ok()
                    .filter(|_| !digits.is_empty())
                    .map(PcrSet)
                    .ok_or_else(|| PcrPolicyError::BadMask(value.to_string()))?;
            } else {
                policy.add(key, value)?;
            }
        }
        Ok(policy)
    }

    /// A policy of this project's format from its allowed values per PCR (raw digests), as
    /// an API message carries them; checked as [`PcrPolicy::from_json`] checks a document.
    pub fn from_values(
        values: impl IntoIterator<Item = (u32, Vec<Vec<u8>>)>,
    ) -> Result<PcrPolicy, PcrPolicyError> {
        let mut policy = PcrPolicy::default();
        for (pcr, allowed) in values {
            let key = pcr.to_string();
            if pcr >= PcrSet::LIMIT {
                return Err(PcrPolicyError::BadKey { key, problem: "not a PCR index 0..31" });
            }
            for raw in &allowed {
                policy.check_length(&key, raw, &Value::String(hex::encode(raw)))?;
            }
            policy.allowed.insert(pcr, allowed);
        }
        Ok(policy)
    }

    /// The allowed values (raw digests) of each PCR, in PCR order.
    pub fn allowed(&self) -> impl Iterator<Item = (u32, &[Vec<u8>])> {
        self.allowed.iter().map(|(pcr, values)| (*pcr, values.as_slice()))
    }

    /// Refuses a value that is no digest, or not one of the policy's bank.
    fn check_length(&self, key: &str, raw: &[u8], shown: &Value) -> Result<(), PcrPolicyError> {
        let bad = |problem| PcrPolicyError::BadValue {
            pcr: key.to_owned(),
            value: shown.to_string(),
            problem,
        };
        if HashAlg::from_len(raw.len()).is_none() {
            return Err(bad("not the length of a SHA-1, SHA-256, SHA-384 or SHA-512 digest"));
        }
        if self.bank.is_some_and(|b| b.len() != raw.len()) {
            return Err(bad("not the length of the policy's hash_alg"));
        }
        Ok(())
    }

    fn add(&mut self, key: &str, values: &Value) -> Result<(), PcrPolicyError> {
        let pcr = key
            .parse::<u32>()
            .ok()
            .filter(|p| *p < PcrSet::LIMIT && key.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| PcrPolicyError::BadKey {
                key: key.to_owned(),
                problem: "not a PCR index 0..31",
            })?;
        let list: Vec<&Value> = match values {
            Value::Array(items) => items.iter().collect(),
            single @ Value::String(_) => vec![single],
            other => {
                return Err(PcrPolicyError::BadValue {
                    pcr: key.to_owned(),
                    value: other.to_string(),
                    problem: "expected a hex string or a list of them",
                });
            }
        };
        let bad = |value: &Value, problem| PcrPolicyError::BadValue {
            pcr: key.to_owned(),
            value: value.to_string(),
            problem,
        };
        let mut allowed = Vec::with_capacity(list.len());
        for value in list {
            let text = value.as_str().ok_or_else(|| bad(value, "not a string"))?;
            let raw = hex::decode(text).map_err(|_| bad(value, "not hex"))?;
            self.check_length(key, &raw, value)?;
            allowed.push(raw);
        }
        self.allowed.insert(pcr, allowed);
        Ok(())
    }

    /// The PCRs a quote must cover for this policy: those with allowed values and the mask.
    pub fn pcrs(&self) -> PcrSet {
        self.allowed.keys().fold(self.mask, |mut set, &pcr| {
            set.insert(pcr);
            set
        })
    }

    /// The bank the policy is written for, if it says.
    pub fn bank(&self) -> Option<HashAlg> {
        self.bank
    }

    /// The allowed values of `pcr` as lowercase hex.
    pub fn allowed_hex(&self, pcr: u32) -> Option<Vec<String>> {
        self.allowed.get(&pcr).map(|vals| vals.iter().map(hex::encode).collect())
    }

    /// Checks PCR values, which must be the attested ones: those of a quote that passed
    /// [`crate::quote::verify_quote`]. Findings: `pcr.missing` for a PCR of the policy without a value,
    /// `pcr.mismatch` for a value not in the allowed list, `pcr.bank` for values of a bank
    /// other than the policy's.
    pub fn evaluate(&self, values: &PcrValues) -> Verdict {
        let mut verdict = Verdict::default();
        verdict.checked("pcrs");
        if let Some(bank) = self.bank.filter(|b| *b != values.bank()) {
            verdict.push(
                Finding::new(
                    rule::PCR_BANK,
                    format!(
                        "the PCR policy is for the {bank} bank, the quote's values are {}",
                        values.bank()
                    ),
                )
                .expected(bank.name())
                .actual(values.bank().name()),
            );
            return verdict;
        }
        for (&pcr, allowed) in &self.allowed {
            let expected = || json!(allowed.iter().map(hex::encode).collect::<Vec<_>>());
            match values.get(pcr) {
                None => verdict.push(
                    Finding::new(
                        rule::PCR_MISSING,
                        format!("PCR {pcr} is in the policy but not in the quote"),
                    )
                    .pcr(pcr)
                    .expected(expected()),
                ),
                Some(actual) if !allowed.iter().any(|a| a.as_slice() == actual.as_bytes()) => {
                    verdict.push(
                        Finding::new(
                            rule::PCR_MISMATCH,
                            format!("PCR {pcr} holds a value the policy does not allow"),
                        )
                        .pcr(pcr)
                        .expected(expected())
                        .actual(actual.to_hex()),
                    )
                }
                Some(_) => {}
            }
        }
        verdict
    }

    /// The policy in this project's format (the mask, which only Keylime's format has, is
    /// dropped: this format quotes exactly the PCRs it lists).
    pub fn to_json(&self) -> Value {
        let pcrs: Map<String, Value> = self
            .allowed
            .iter()
            .map(|(pcr, vals)| {
                (pcr.to_string(), json!(vals.iter().map(hex::encode).collect::<Vec<_>>()))
            })
            .collect();
        let mut doc = json!({ "pcrs": pcrs });
        if let Some(bank) = self.bank {
            doc["hash_alg"] = json!(bank.name());
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::Digest;

    fn a() -> String {
        "9dbb22387e019c04da95477333546082ce313152c4a7f8a6e1d5f0c77f4fb6f0".to_owned()
    }

    fn values() -> PcrValues {
        let mut v = PcrValues::new(HashAlg::Sha256);
        v.insert(15, HashAlg::Sha256.zero()).expect("new");
        v.insert(16, Digest::from_hex(HashAlg::Sha256, &a()).expect("hex")).expect("new");
        v
    }

    #[test]
    fn keylime_policy_imports_with_mask_and_single_strings() {
        let text = format!(
            r#"{{"16": "{}", "15": ["{}"], "mask": "0x408000"}}"#,
            a().to_uppercase(),
            "00".repeat(32)
        );
        let p = PcrPolicy::from_json(text.as_bytes()).expect("valid");
        assert_eq!(p.pcrs().to_string(), "15,16,22");
        assert_eq!(p.allowed_hex(16), Some(vec![a()]));
        assert!(p.evaluate(&values()).passed());
    }

    #[test]
    fn mismatch_and_missing_name_the_pcr() {
        let text = format!(
            r#"{{"hash_alg": "sha256", "pcrs": {{"15": ["{a}"], "23": ["{a}"]}}}}"#,
            a = a()
        );
        let p = PcrPolicy::from_json(text.as_bytes()).expect("valid");
        let v = p.evaluate(&values());
        assert_eq!(v.findings.len(), 2);
        let mismatch = &v.findings[0];
        assert_eq!((mismatch.rule.as_str(), mismatch.pcr), (rule::PCR_MISMATCH, Some(15)));
        assert_eq!(mismatch.actual, Some(json!("00".repeat(32))));
        assert_eq!(mismatch.expected, Some(json!([a()])));
        assert_eq!((v.findings[1].rule.as_str(), v.findings[1].pcr), (rule::PCR_MISSING, Some(23)));
        assert_eq!(PcrPolicy::from_json(p.to_json().to_string().as_bytes()), Ok(p));
    }

    #[test]
    fn a_policy_from_values_is_checked_and_written_as_its_document_reads() {
        let raw = hex::decode(a()).expect("hex");
        let p = PcrPolicy::from_values([(16, vec![raw.clone()]), (7, vec![raw])]).expect("valid");
        let doc = format!(r#"{{"pcrs":{{"16":["{a}"],"7":["{a}"]}}}}"#, a = a());
        assert_eq!(p.to_json().to_string(), doc);
        assert_eq!(PcrPolicy::from_json(doc.as_bytes()), Ok(p.clone()));
        assert_eq!(p.allowed().map(|(pcr, _)| pcr).collect::<Vec<_>>(), [7, 16]);
        let short = PcrPolicy::from_values([(8, vec![vec![1; 5]])]).expect_err("short value");
        assert!(short.to_string().contains("PCR 8: value \"0101010101\": not the length"));
        let high = PcrPolicy::from_values([(32, vec![])]).expect_err("PCR 32");
        assert!(high.to_string().contains("key \"32\""), "{high}");
    }

    #[test]
    fn other_bank_is_one_finding() {
        let text = format!(r#"{{"hash_alg": "sha1", "pcrs": {{"15": ["{}"]}}}}"#, "00".repeat(20));
        let p = PcrPolicy::from_json(text.as_bytes()).expect("valid");
        let v = p.evaluate(&values());
        assert_eq!(
            v.findings.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(),
            vec![rule::PCR_BANK]
        );
    }

    #[test]
    fn bad_documents_name_key_and_value() {
        let cases: [(&str, &str); 7] = [
            (r#"{"pcrs": {"x": []}}"#, "key \"x\""),
            (r#"{"pcrs": {"32": []}}"#, "key \"32\""),
            (r#"{"pcrs": {"1": ["zz"]}}"#, "PCR 1: value \"zz\": not hex"),
            (r#"{"pcrs": {"1": ["00"]}}"#, "PCR 1: value \"00\": not the length"),
            (r#"{"1": 5}"#, "PCR 1: value 5"),
            (r#"{"mask": "0xg"}"#, "mask \"\\\"0xg\\\"\""),
            (r#"{"pcrs": {}, "bank": 1}"#, "key \"bank\": unknown key"),
        ];
        for (text, needle) in cases {
            let err = PcrPolicy::from_json(text.as_bytes()).expect_err("must fail").to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert!(matches!(PcrPolicy::from_json(b"[1]"), Err(PcrPolicyError::NotAnObject)));
        assert!(matches!(PcrPolicy::from_json(b"{"), Err(PcrPolicyError::Json(_))));
    }
}
