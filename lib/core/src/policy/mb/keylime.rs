//! Import of Keylime's measured-boot reference state (the refstate of its `example` policy,
//! as `keylime-policy create measured-boot` writes it).
//!
//! Mapping: `scrtm_and_bios` S-CRTM and platform firmware digests become `firmware`;
//! `has_secureboot: false` allows Secure Boot off; `db` entries become `db_must_contain` and
//! `dbx` entries `dbx_must_include` (x509/sha256 told apart by length: a 32-byte entry is a
//! hash); each `kernels` entry contributes the chain `[shim, grub]`, the kernel's Authenticode
//! and plain digests (PCR 4 and PCR 9), and its `kernel_cmdline` as a regular expression.
//! Not imported: `pk`, `kek`, `vendor_db`, `mokdig`, `mokxdig` and `initrd_plain_sha256`
//! (this policy format has no check for them). Signature owners are dropped because Keylime
//! reference states print GUIDs in either byte order.

use serde::Deserialize;
use serde_json::Value;

use super::{CmdlineRule, MbPolicy, MbPolicyError, SignatureRule, SignatureRuleKind};
use crate::alg::HashAlg;

#[derive(Debug, Deserialize)]
struct RefState {
    #[serde(default = "yes")]
    has_secureboot: bool,
    #[serde(default)]
    scrtm_and_bios: Vec<ScrtmAndBios>,
    #[serde(default)]
    db: Vec<KeylimeSignature>,
    #[serde(default)]
    dbx: Vec<KeylimeSignature>,
    #[serde(default)]
    kernels: Vec<KeylimeKernel>,
}

/// The top-level keys `keylime-policy create measured-boot` writes; a document needs one of them.
const REFSTATE_KEYS: [&str; 10] = [
    "has_secureboot",
    "scrtm_and_bios",
    "pk",
    "kek",
    "db",
    "dbx",
    "mokdig",
    "mokxdig",
    "kernels",
    "vendor_db",
];

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct ScrtmAndBios {
    #[serde(default)]
    scrtm: Option<Value>,
    #[serde(default)]
    platform_firmware: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeylimeSignature {
    signature_data: String,
}

#[derive(Debug, Deserialize)]
struct KeylimeKernel {
    shim_authcode_sha256: Option<String>,
    grub_authcode_sha256: Option<String>,
    kernel_authcode_sha256: Option<String>,
    vmlinuz_plain_sha256: Option<String>,
    kernel_cmdline: Option<String>,
}

/// `0xABCD...` to `abcd...`, checked as a SHA-256 digest.
fn sha256_hex(field: &str, text: &str) -> Result<String, MbPolicyError> {
    let hex = text.strip_prefix("0x").unwrap_or(text).to_ascii_lowercase();
    if super::parse_digest(HashAlg::Sha256, &hex).is_none() {
        return Err(MbPolicyError::invalid(field, format!("{text:?} is not a sha256 digest")));
    }
    Ok(hex)
}

/// `{"sha256": "0x..."}` (other banks are ignored: the imported policy is in sha256).
fn bank_digest(field: &str, v: &Value) -> Result<Option<String>, MbPolicyError> {
    match v.get("sha256") {
        Some(Value::String(s)) => sha256_hex(field, s).map(Some),
        Some(_) => Err(MbPolicyError::invalid(field, "sha256 is not a string")),
        None => Ok(None),
    }
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

impl MbPolicy {
    /// Converts a Keylime measured-boot reference state (JSON) into a policy in sha256.
    pub fn from_keylime_refstate(json: &[u8]) -> Result<MbPolicy, MbPolicyError> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| MbPolicyError::json(&e))?;
        // serde would read an array as the struct's fields in order, and an object without any
        // of its keys as all defaults: both would pass as a policy that allows nothing less.
        let Some(object) = doc.as_object() else {
            return Err(MbPolicyError::invalid("(document)", "a reference state is a JSON object"));
        };
        if !REFSTATE_KEYS.iter().any(|k| object.contains_key(*k)) {
            return Err(MbPolicyError::invalid(
                "(document)",
                format!("none of a Keylime reference state's keys ({})", REFSTATE_KEYS.join(", ")),
            ));
        }
        let rs: RefState = serde_json::from_value(doc)
            .map_err(|e| MbPolicyError::invalid("(document)", e.to_string()))?;
        let mut policy = MbPolicy {
            hash_alg: HashAlg::Sha256,
            allow_secureboot_off: !rs.has_secureboot,
            ..MbPolicy::default()
        };
        let mut firmware = Vec::new();
        for (i, entry) in rs.scrtm_and_bios.iter().enumerate() {
            if let Some(scrtm) = &entry.scrtm
                && let Some(d) = bank_digest(&format!("scrtm_and_bios[{i}].scrtm"), scrtm)?
            {
                push_unique(&mut firmware, d);
            }
            for (j, fw) in entry.platform_firmware.iter().enumerate() {
                if let Some(d) =
                    bank_digest(&format!("scrtm_and_bios[{i}].platform_firmware[{j}]"), fw)?
                {
                    push_unique(&mut firmware, d);
                }
            }
        }
        if !rs.scrtm_and_bios.is_empty() {
            policy.firmware = Some(firmware);
        }
        for (i, sig) in rs.db.iter().enumerate() {
            let data = sig
                .signature_data
                .strip_prefix("0x")
                .unwrap_or(&sig.signature_data)
                .to_ascii_lowercase();
            if hex::decode(&data).map_or(true, |d| d.is_empty()) {
                return Err(MbPolicyError::invalid(format!("db[{i}].SignatureData"), "not hex"));
            }
            let kind =
                if data.len() == 64 { SignatureRuleKind::Sha256 } else { SignatureRuleKind::X509 };
            policy.db_must_contain.push(SignatureRule { kind, data, owner: None });
        }
        for (i, sig) in rs.dbx.iter().enumerate() {
            let field = format!("dbx[{i}].SignatureData");
            let raw = sig.signature_data.strip_prefix("0x").unwrap_or(&sig.signature_data);
            // Only hashes can be required in dbx by this format; certificates are skipped.
            if raw.len() == 64 {
                let hex = sha256_hex(&field, raw)?;
                push_unique(&mut policy.dbx_must_include, hex);
            }
        }
        if !rs.kernels.is_empty() {
            let mut chains: Vec<Vec<String>> = Vec::new();
            let mut kernels = Vec::new();
            let mut cmdlines = Vec::new();
            for (i, k) in rs.kernels.iter().enumerate() {
                let mut chain = Vec::new();
                for (name, d) in [
                    ("shim_authcode_sha256", &k.shim_authcode_sha256),
                    ("grub_authcode_sha256", &k.grub_authcode_sha256),
                ] {
                    if let Some(d) = d {
                        chain.push(sha256_hex(&format!("kernels[{i}].{name}"), d)?);
                    }
                }
                if !chains.contains(&chain) {
                    chains.push(chain);
                }
                for (name, d) in [
                    ("kernel_authcode_sha256", &k.kernel_authcode_sha256),
                    ("vmlinuz_plain_sha256", &k.vmlinuz_plain_sha256),
                ] {
                    if let Some(d) = d {
                        push_unique(&mut kernels, sha256_hex(&format!("kernels[{i}].{name}"), d)?);
                    }
                }
                if let Some(re) = &k.kernel_cmdline {
                    let rule = CmdlineRule::Regex(re.clone());
                    if !cmdlines.contains(&rule) {
                        cmdlines.push(rule);
                    }
                }
            }
            policy.bootloaders = Some(chains);
            policy.kernels = Some(kernels);
            policy.kernel_cmdlines = Some(cmdlines);
        }
        policy.validate()?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refstate() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/keylime/policy/mb_example_reference_state.json"
        );
        std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    #[test]
    fn imports_upstream_example_refstate() {
        let p = MbPolicy::from_keylime_refstate(&refstate()).expect("imports");
        assert!(!p.allow_secureboot_off);
        assert_eq!(
            p.firmware.as_deref().map(<[String]>::len),
            Some(3),
            "one S-CRTM and two firmware digests"
        );
        assert_eq!(
            p.firmware.as_ref().map(|f| f[0].as_str()),
            Some("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7")
        );
        assert_eq!(p.db_must_contain.len(), 2);
        assert!(
            p.db_must_contain
                .iter()
                .all(|r| r.kind == SignatureRuleKind::X509 && r.data.starts_with("3082"))
        );
        assert_eq!(
            p.dbx_must_include,
            vec!["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned()]
        );
        let chains = p.bootloaders.as_ref().expect("chains");
        assert_eq!(chains.len(), 1);
        assert_eq!(
            chains[0][0],
            "0f87dfd530645c0e0197b89938f0659c943e5eceffec74f09fefa135f4ee76e6"
        );
        assert_eq!(p.kernels.as_ref().map(Vec::len), Some(1));
        assert!(
            matches!(&p.kernel_cmdlines.as_ref().expect("cmdlines")[0], CmdlineRule::Regex(r) if r.starts_with("/boot/vmlinuz-5.4.0-81-generic"))
        );
    }

    #[test]
    fn refstate_errors_name_the_field() {
        let err =
            MbPolicy::from_keylime_refstate(br#"{"kernels": [{"shim_authcode_sha256": "0x12"}]}"#)
                .expect_err("short digest");
        assert!(err.to_string().contains("kernels[0].shim_authcode_sha256"), "{err}");
        let err = MbPolicy::from_keylime_refstate(b"[1,").expect_err("bad json");
        assert!(err.to_string().contains("line 1"), "{err}");
        let p = MbPolicy::from_keylime_refstate(br#"{"has_secureboot": false}"#).expect("minimal");
        assert!(p.allow_secureboot_off);
        assert_eq!(p.kernels, None);
    }
}
