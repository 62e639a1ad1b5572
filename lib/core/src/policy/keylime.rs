//! Keylime's runtime policy JSON (`meta.version` 1): import into a [`RuntimePolicy`] and
//! export from one.
//!
//! Import accepts what Keylime's schema accepts: digests as bare hex (the algorithm implied by
//! the length) or `alg:hex`; every section optional. Unknown top-level fields are errors, as
//! in Keylime's schema. `ima.dm_policy` must be `null` (device-mapper policies are not
//! supported, and Keylime's schema pins it to `null` too).

use std::fmt;

use base64::Engine;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::native::{DigestMapSeed, Sink, parse_keys, put_digest_map, put_str, put_strings};
use super::{DigestSyntax, PolicyError, RuntimePolicy, RuntimePolicyBuilder, Str, keys};

const FIELDS: &[&str] =
    &["meta", "release", "digests", "excludes", "keyrings", "ima", "ima-buf", "verification-keys"];

/// Parses a Keylime runtime policy (not wrapped in a DSSE envelope; see [`super::load`]).
pub fn parse(bytes: &[u8]) -> Result<RuntimePolicy, PolicyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let builder =
        de.deserialize_map(KeylimeVisitor).map_err(|e| PolicyError::json("Keylime policy", &e))?;
    de.end().map_err(|e| PolicyError::json("Keylime policy", &e))?;
    builder.build()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ima {
    #[serde(default)]
    ignored_keyrings: Vec<String>,
    #[serde(default)]
    log_hash_alg: Option<String>,
    #[serde(default)]
    dm_policy: Option<Value>,
}

struct KeylimeVisitor;

impl<'de> Visitor<'de> for KeylimeVisitor {
    type Value = RuntimePolicyBuilder;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Keylime runtime policy object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RuntimePolicyBuilder, A::Error> {
        let mut b = RuntimePolicyBuilder::rejecting_duplicates();
        let mut seen = [false; FIELDS.len()];
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let index = super::field_index(&key.0, FIELDS, &mut seen)?;
            match FIELDS[index] {
                "meta" => {
                    let meta: serde_json::Map<String, Value> = map.next_value()?;
                    match meta.get("version") {
                        Some(v) if v.as_u64() == Some(1) => {}
                        Some(v) => {
                            return Err(de::Error::custom(format!(
                                "meta.version {v} is not supported (expected 1)"
                            )));
                        }
                        None => return Err(de::Error::custom("meta has no version")),
                    }
                }
                "release" => {
                    map.next_value::<de::IgnoredAny>()?;
                }
                "digests" => map.next_value_seed(DigestMapSeed {
                    table: &mut b.files,
                    syntax: DigestSyntax::OptionalPrefix,
                })?,
                "keyrings" => map.next_value_seed(DigestMapSeed {
                    table: &mut b.keyrings,
                    syntax: DigestSyntax::OptionalPrefix,
                })?,
                "ima-buf" => map.next_value_seed(DigestMapSeed {
                    table: &mut b.buffers,
                    syntax: DigestSyntax::OptionalPrefix,
                })?,
                "excludes" => {
                    for p in map.next_value::<Vec<Str<'de>>>()? {
                        b.add_exclude(&p.0);
                    }
                }
                "ima" => {
                    let ima: Ima = map.next_value()?;
                    for k in &ima.ignored_keyrings {
                        b.ignore_keyring(k);
                    }
                    if let Some(alg) = ima.log_hash_alg {
                        b.log_hash_alg(alg.parse().map_err(de::Error::custom)?);
                    }
                    if ima.dm_policy.is_some_and(|v| !v.is_null()) {
                        return Err(de::Error::custom(
                            "ima.dm_policy: device-mapper policies are not supported (must be null)",
                        ));
                    }
                }
                _ => {
                    let text: Str<'de> = map.next_value()?;
                    let texts = verification_keys(&text.0).map_err(de::Error::custom)?;
                    let texts: Vec<Str<'_>> = texts.into_iter().map(|t| Str(t.into())).collect();
                    parse_keys(&mut b, "verification-keys", &texts)?;
                }
            }
        }
        Ok(b)
    }
}

/// The public keys of Keylime's `verification-keys` string: empty, or a JSON document with
/// `pubkeys` (base64 DER or PEM), either at the top or per keyring under `keyrings`.
fn verification_keys(text: &str) -> Result<Vec<String>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "verification-keys: line {}, column {} of the embedded JSON: {e}",
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(obj) = doc else {
        return Err("verification-keys: the embedded JSON is not an object".into());
    };
    let mut out = Vec::new();
    let mut take = |v: Option<&Value>, at: &str| -> Result<(), String> {
        let Some(v) = v else { return Ok(()) };
        let list = v.as_array().ok_or(format!("verification-keys: {at}pubkeys is not a list"))?;
        for k in list {
            out.push(
                k.as_str()
                    .ok_or(format!("verification-keys: {at}pubkeys holds a non-string"))?
                    .to_owned(),
            );
        }
        Ok(())
    };
    for (key, value) in &obj {
        match key.as_str() {
            "meta" | "keyids" => {}
            "pubkeys" => take(Some(value), "")?,
            "keyrings" => {
                let rings =
                    value.as_object().ok_or("verification-keys: keyrings is not an object")?;
                for (name, ring) in rings {
                    take(ring.get("pubkeys"), &format!("keyrings.{name}."))?;
                }
            }
            other => return Err(format!("verification-keys: unknown field {other:?}")),
        }
    }
    Ok(out)
}

fn write(p: &RuntimePolicy, sink: &mut impl Sink) {
    sink.put(
        b"{\n  \"meta\": {\"version\": 1, \"generator\": 0},\n  \"release\": 0,\n  \"digests\": ",
    );
    put_digest_map(sink, &p.files, false);
    sink.put(b",\n  \"excludes\": ");
    put_strings(sink, p.excludes().iter().map(String::as_str));
    sink.put(b",\n  \"keyrings\": ");
    put_digest_map(sink, &p.keyrings, false);
    sink.put(b",\n  \"ima\": {\"ignored_keyrings\": ");
    let ignored: Vec<Value> = p.ignored_keyrings.iter().map(|k| Value::from(k.as_str())).collect();
    sink.put(Value::Array(ignored).to_string().as_bytes());
    sink.put(b", \"log_hash_alg\": ");
    put_str(sink, p.log_hash_alg.name());
    sink.put(b", \"dm_policy\": null},\n  \"ima-buf\": ");
    put_digest_map(sink, &p.buffers, false);
    sink.put(b",\n  \"verification-keys\": ");
    if p.signing_keys.is_empty() {
        put_str(sink, "");
    } else {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let doc = serde_json::json!({
            "meta": {"version": 1},
            "keyids": p.signing_keys.iter().filter_map(|k| keys::ima_keyid(k)).collect::<Vec<_>>(),
            "pubkeys": p.signing_keys.iter().map(|k| b64.encode(k)).collect::<Vec<_>>(),
        });
        put_str(sink, &doc.to_string());
    }
    sink.put(b"\n}\n");
}

impl RuntimePolicy {
    /// This policy as a Keylime runtime policy (digests as bare hex, `meta.generator` 0).
    pub fn to_keylime_json(&self) -> String {
        let mut out = Vec::with_capacity(self.files.len() * 104 + 512);
        write(self, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_keys_forms() {
        assert!(verification_keys("").expect("empty").is_empty());
        let keys =
            verification_keys(r#"{"meta": {"version": 1}, "keyids": [1], "pubkeys": ["AA=="]}"#)
                .expect("top-level pubkeys");
        assert_eq!(keys, vec!["AA=="]);
        let keys = verification_keys(r#"{"keyrings": {".ima": {"pubkeys": ["AQ=="]}}}"#)
            .expect("per-keyring pubkeys");
        assert_eq!(keys, vec!["AQ=="]);
        let err = verification_keys(r#"{"bogus": 1}"#).expect_err("unknown field");
        assert!(err.contains("bogus"), "{err}");
        let err = verification_keys("{\n\"pubkeys\": [1,").expect_err("truncated");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn rejects_dm_policy_and_bad_meta() {
        let err = parse(br#"{"meta": {"version": 1}, "ima": {"dm_policy": {"x": 1}}}"#)
            .expect_err("dm_policy");
        assert!(err.to_string().contains("dm_policy"), "{err}");
        let err = parse(br#"{"meta": {"version": 2}}"#).expect_err("version 2");
        assert!(err.to_string().contains("meta.version 2"), "{err}");
        let err =
            parse(br#"{"meta": {"version": 1}, "ima": {"log_hash_alg": "md5"}}"#).expect_err("md5");
        assert!(err.to_string().contains("md5"), "{err}");
    }
}
