//! DSSE envelopes (Dead Simple Signing Envelope), as Keylime signs runtime policies.
//!
//! An envelope is `{"payload": b64, "payloadType": "...", "signatures": [{"keyid"?, "sig": b64}]}`.
//! Each signature is over the pre-authentication encoding
//! `"DSSEv1" SP len(type) SP type SP len(payload) SP payload` (lengths in ASCII decimal, the
//! payload decoded). The envelope verifies when at least one signature verifies with the key.

use std::borrow::Cow;

use base64::Engine;
use serde::Deserialize;

use super::PolicyError;
use super::keys::VerificationKey;
use crate::pem::BASE64;

/// A signed policy could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DsseError {
    #[error("DSSE envelope: {0}")]
    Malformed(String),
    #[error("DSSE envelope has no signatures")]
    NoSignatures,
    #[error(
        "no signature of the DSSE envelope verifies with the supplied {curve} key \
         (signatures: {tried})"
    )]
    BadSignature { curve: &'static str, tried: String },
    #[error("the policy is signed (DSSE envelope) but no verification key was supplied")]
    NoKey,
    #[error("a signed policy is required, but the policy is not a DSSE envelope")]
    Unsigned,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
    #[serde(rename = "payloadType", borrow)]
    payload_type: Cow<'a, str>,
    signatures: Vec<RawSignature<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature<'a> {
    #[serde(default, borrow)]
    keyid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sig: Cow<'a, str>,
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub keyid: Option<String>,
    pub sig: Vec<u8>,
}

/// A parsed, not yet verified, DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<Signature>,
}

/// The pre-authentication encoding that DSSE signatures cover.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Parses an envelope's JSON; errors name the JSON position or the signature index.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, PolicyError> {
        let raw: RawEnvelope<'_> =
            serde_json::from_slice(bytes).map_err(|e| PolicyError::json("DSSE envelope", &e))?;
        let payload = BASE64
            .decode(raw.payload.as_bytes())
            .map_err(|e| DsseError::Malformed(format!("payload: invalid base64: {e}")))?;
        let mut signatures = Vec::with_capacity(raw.signatures.len());
        for (i, s) in raw.signatures.iter().enumerate() {
            let sig = BASE64.decode(s.sig.as_bytes()).map_err(|e| {
                DsseError::Malformed(format!("signatures[{i}].sig: invalid base64: {e}"))
            })?;
            signatures.push(Signature { keyid: s.keyid.as_deref().map(str::to_owned), sig });
        }
        Ok(Envelope { payload_type: raw.payload_type.into_owned(), payload, signatures })
    }

    /// Checks the signatures with `key` and returns the payload when one verifies.
    pub fn verify(&self, key: &VerificationKey) -> Result<&[u8], DsseError> {
        if self.signatures.is_empty() {
            return Err(DsseError::NoSignatures);
        }
        let message = pae(&self.payload_type, &self.payload);
        if self.signatures.iter().any(|s| key.verify(&message, &s.sig)) {
            return Ok(&self.payload);
        }
        let tried = self
            .signatures
            .iter()
            .enumerate()
            .map(|(i, s)| format!("#{i} keyid {}", s.keyid.as_deref().unwrap_or("(none)")))
            .collect::<Vec<_>>()
            .join(", ");
        let curve = match key.curve() {
            crate::key::Curve::P256 => "ECDSA P-256",
            crate::key::Curve::P384 => "ECDSA P-384",
            crate::key::Curve::Secp256k1 => "ECDSA secp256k1",
        };
        Err(DsseError::BadSignature { curve, tried })
    }

    /// Wraps `payload` in an envelope with one signature (for tools that sign policies).
    pub fn to_json(&self) -> String {
        let b64 = &base64::engine::general_purpose::STANDARD;
        serde_json::json!({
            "payload": b64.encode(&self.payload),
            "payloadType": self.payload_type,
            "signatures": self.signatures.iter().map(|s| {
                let mut o = serde_json::Map::new();
                if let Some(k) = &s.keyid {
                    o.insert("keyid".into(), k.clone().into());
                }
                o.insert("sig".into(), b64.encode(&s.sig).into());
                serde_json::Value::Object(o)
            }).collect::<Vec<_>>(),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_specification_example() {
        // From the DSSE protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn rejects_malformed_envelopes() {
        let err = Envelope::parse(br#"{"payload": "!!", "payloadType": "x", "signatures": []}"#)
            .expect_err("bad base64");
        assert!(err.to_string().contains("payload: invalid base64"), "{err}");
        let err =
            Envelope::parse(b"{\"payload\": \"\",\n \"extra\": 1}").expect_err("unknown field");
        assert!(err.to_string().contains("line 2"), "{err}");
        let e = Envelope::parse(br#"{"payload": "", "payloadType": "x", "signatures": []}"#)
            .expect("parses");
        let key = VerificationKey::from_pem(include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/keylime/policy/runtime-policy-pubkey.pub"
        )))
        .expect("key");
        assert_eq!(e.verify(&key), Err(DsseError::NoSignatures));
    }
}
