//! Policies: runtime (IMA) policies in this project's and Keylime's formats, measured-boot and PCR policies.
//!
//! This module owns the in-memory [`RuntimePolicy`] that IMA appraisal looks entries up in,
//! and every way to get one from bytes:
//! - [`native`]: this project's format (`{"version": 1, "kind": "runtime", ...}`, see
//!   `docs/runtime-policy.md`), with a canonical serialisation whose SHA-256 identifies the
//!   policy ([`RuntimePolicy::content_digest`]);
//! - [`keylime`]: Keylime's runtime policy JSON (`meta.version` 1), import and export;
//! - [`dsse`]: DSSE envelopes around a policy, signed with ECDSA P-256/P-384;
//! - [`allowlist`]: Keylime's flat allowlist (`<digest>  <path>` lines) and exclude list;
//! - [`load`]: format detection over all of the above;
//! - [`mb`]: measured-boot policies for UEFI event logs;
//! - [`PcrPolicy`]: allowed values per PCR (this project's JSON and Keylime's `tpm_policy`).
//!
//! Nothing here reads files: callers hand bytes in. Errors name the input format, the
//! position (line and column, or line) and what is wrong.

pub mod allowlist;
pub mod canonical;
pub mod dsse;
mod ima_rules;
pub mod keylime;
mod keys;
pub mod mb;
pub mod native;
mod pcr;
mod runtime;
mod table;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

pub use dsse::{DsseError, Envelope};
pub use keys::VerificationKey;
pub use pcr::{PcrPolicy, PcrPolicyError};
pub use runtime::{FileLookup, Lookup, RuntimePolicy, RuntimePolicyBuilder, from_file_digests};
pub use table::{DigestIter, DigestList};

use crate::alg::{HashAlg, MAX_DIGEST_LEN};

/// A runtime policy could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Malformed JSON, a wrong type, an unknown field or a bad value, at a JSON position.
    #[error("{format}: line {line}, column {column}: {message}")]
    Json { format: &'static str, line: usize, column: usize, message: String },
    /// A malformed line of a line-oriented format.
    #[error("{format}: line {line}: {message}")]
    Line { format: &'static str, line: usize, message: String },
    /// An exclude regex that does not compile (index in the order the excludes were given).
    #[error("exclude #{index} {pattern:?}: {message}")]
    Exclude { index: usize, pattern: String, message: String },
    /// A name given twice in one JSON object.
    #[error("{section}: {name:?} appears more than once")]
    Duplicate { section: &'static str, name: String },
    /// A value that is well-formed but not acceptable.
    #[error("{section}: {message}")]
    Invalid { section: &'static str, message: String },
    /// A signed policy whose envelope is malformed or whose signature does not verify.
    #[error("signed policy: {0}")]
    Dsse(#[from] DsseError),
    /// Nothing recognisable.
    #[error("not a runtime policy: {0}")]
    UnknownFormat(String),
}

impl PolicyError {
    pub(crate) fn json(format: &'static str, e: &serde_json::Error) -> PolicyError {
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
        PolicyError::Json { format, line: e.line(), column: e.column(), message }
    }
}

/// The formats [`load`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// This project's JSON format.
    Native,
    /// Keylime's runtime policy JSON.
    Keylime,
    /// A DSSE envelope around either JSON format.
    Signed,
    /// Keylime's flat allowlist.
    FlatAllowlist,
}

/// How [`load`] treats signatures.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// The key a signed policy must verify with. A signed policy without a key is an error.
    pub signing_key: Option<&'a VerificationKey>,
    /// Refuse unsigned policies (Keylime's `require_allow_list_signatures`).
    pub require_signature: bool,
}

/// The position of `key` among a policy object's `fields`, marking it seen: an unknown or a
/// repeated field is an error (serde then adds the JSON position).
fn field_index<E: de::Error>(
    key: &str,
    fields: &'static [&'static str],
    seen: &mut [bool],
) -> Result<usize, E> {
    let index =
        fields.iter().position(|f| *f == key).ok_or_else(|| E::unknown_field(key, fields))?;
    let already = seen.get_mut(index).is_some_and(|seen| std::mem::replace(seen, true));
    if already { Err(E::duplicate_field(fields[index])) } else { Ok(index) }
}

/// Reads a runtime policy in any supported format.
pub fn load(
    bytes: &[u8],
    options: &LoadOptions<'_>,
) -> Result<(RuntimePolicy, Format), PolicyError> {
    let body = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let format = match first {
        None => return Err(PolicyError::UnknownFormat("the input is empty".into())),
        Some(b'{') => detect_json(body)?,
        Some(_) => Format::FlatAllowlist,
    };
    if options.require_signature && format != Format::Signed {
        return Err(PolicyError::Dsse(DsseError::Unsigned));
    }
    let policy = match format {
        Format::Native => native::parse(body)?,
        Format::Keylime => keylime::parse(body)?,
        Format::FlatAllowlist => allowlist::parse_allowlist(body).map_err(|e| match e {
            PolicyError::Line { line, message, .. } => PolicyError::UnknownFormat(format!(
                "the input is not JSON, and as a flat allowlist line {line} fails: {message}"
            )),
            other => other,
        })?,
        Format::Signed => {
            let envelope = Envelope::parse(body)?;
            let key = options.signing_key.ok_or(DsseError::NoKey)?;
            let payload = envelope.verify(key)?;
            match detect_json(payload)? {
                Format::Native => native::parse(payload)?,
                Format::Keylime => keylime::parse(payload)?,
                _ => {
                    return Err(PolicyError::UnknownFormat(
                        "the signed payload is neither a Keylime nor a native runtime policy"
                            .into(),
                    ));
                }
            }
        }
    };
    Ok((policy, format))
}

/// Decides between the JSON formats by the top-level keys, reading the document once
/// without building anything.
fn detect_json(body: &[u8]) -> Result<Format, PolicyError> {
    struct Keys(Vec<String>);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some(k) = map.next_key::<Str<'de>>()? {
                        map.next_value::<de::IgnoredAny>()?;
                        keys.push(k.0.into_owned());
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    let keys = serde_json::from_slice::<Keys>(body).map_err(|e| PolicyError::json("JSON", &e))?.0;
    let has = |k: &str| keys.iter().any(|x| x == k);
    if has("payload") && has("payloadType") {
        Ok(Format::Signed)
    } else if has("kind") || (has("version") && !has("meta")) {
        Ok(Format::Native)
    } else if has("meta") || has("digests") {
        Ok(Format::Keylime)
    } else {
        Err(PolicyError::UnknownFormat(format!(
            "a JSON object with keys {keys:?}; expected this project's format (\"version\", \
             \"kind\"), a Keylime runtime policy (\"meta\", \"digests\") or a DSSE envelope \
             (\"payload\", \"payloadType\", \"signatures\")"
        )))
    }
}

/// A JSON string borrowed from the input when it has no escapes.
pub(crate) struct Str<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// How digests are written in a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DigestSyntax {
    /// `alg:hex`, always (this project's format).
    Prefixed,
    /// `alg:hex` or bare hex, the algorithm implied by the length (Keylime).
    OptionalPrefix,
}

/// Parses a digest into `buf`, returning its length.
pub(crate) fn parse_digest(
    text: &str,
    syntax: DigestSyntax,
    buf: &mut [u8; MAX_DIGEST_LEN],
) -> Result<usize, String> {
    let (alg, hex_part) = match text.split_once(':') {
        Some((name, hex_part)) => {
            let alg: HashAlg = name.parse().map_err(|e| format!("digest {text:?}: {e}"))?;
            (Some(alg), hex_part)
        }
        None if syntax == DigestSyntax::Prefixed => {
            return Err(format!(
                "digest {text:?}: expected <algorithm>:<hex>, e.g. \"sha256:9f86d0...\""
            ));
        }
        None => (None, text),
    };
    let len = hex_part.len() / 2;
    let implied = HashAlg::from_len(len).filter(|_| hex_part.len() % 2 == 0);
    let Some(implied) = implied else {
        return Err(format!(
            "digest {text:?}: {} hex digits match no supported hash algorithm \
             (40 sha1, 64 sha256, 96 sha384, 128 sha512)",
            hex_part.len()
        ));
    };
    if let Some(alg) = alg
        && alg != implied
    {
        return Err(format!(
            "digest {text:?}: {alg} digests have {} hex digits, not {}",
            2 * alg.len(),
            hex_part.len()
        ));
    }
    if crate::ima::decode_hex(hex_part.as_bytes(), &mut buf[..len]).is_none() {
        let (at, c) =
            hex_part.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()).unwrap_or((0, '?'));
        return Err(format!(
            "digest {text:?}: not hexadecimal (invalid character {c:?} at position {at})"
        ));
    }
    Ok(len)
}

#[cfg(test)]
mod tests;
