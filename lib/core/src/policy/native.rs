//! This project's runtime policy format (see `docs/runtime-policy.md`): parsing, and the
//! canonical serialisation whose SHA-256 is the policy's content digest.
//!
//! The canonical form has every field, in a fixed order, one path per line with its digests
//! (`alg:hex`, sorted), and every list sorted: regenerating a policy from the same inputs
//! gives the same bytes, and `diff` shows what changed.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::table::{DigestTable, TableBuilder};
use super::{DigestSyntax, PolicyError, RuntimePolicy, RuntimePolicyBuilder, Str, parse_digest};
use crate::alg::{HashAlg, MAX_DIGEST_LEN};

/// The format version this build reads and writes.
pub(crate) const VERSION: u64 = 1;

const FIELDS: &[&str] = &[
    "version",
    "kind",
    "log_hash_alg",
    "files",
    "excludes",
    "keyrings",
    "ignored_keyrings",
    "buffers",
    "signing_keys",
];

/// Parses a policy in this project's format.
pub fn parse(bytes: &[u8]) -> Result<RuntimePolicy, PolicyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let builder = de.deserialize_map(NativeVisitor).map_err(|e| PolicyError::json("policy", &e))?;
    de.end().map_err(|e| PolicyError::json("policy", &e))?;
    builder.build()
}

/// Fills a [`TableBuilder`] from a JSON object `{name: [digest, ...]}` without building an
/// intermediate map.
pub(crate) struct DigestMapSeed<'b> {
    pub(crate) table: &'b mut TableBuilder,
    pub(crate) syntax: DigestSyntax,
}

impl<'de> DeserializeSeed<'de> for DigestMapSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DigestMapSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object mapping names to lists of digests")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<Str<'de>>()? {
            self.table.begin(&name.0);
            map.next_value_seed(DigestListSeed { table: &mut *self.table, syntax: self.syntax })?;
        }
        self.table.end();
        Ok(())
    }
}

struct DigestListSeed<'b> {
    table: &'b mut TableBuilder,
    syntax: DigestSyntax,
}

impl<'de> DeserializeSeed<'de> for DigestListSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for DigestListSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of digests")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut buf = [0u8; MAX_DIGEST_LEN];
        while let Some(text) = seq.next_element::<Str<'de>>()? {
            let len = parse_digest(&text.0, self.syntax, &mut buf).map_err(de::Error::custom)?;
            self.table.push_digest(&buf[..len]);
        }
        Ok(())
    }
}

/// Parses `signing_keys` / `verification-keys` entries (PEM or base64 DER SubjectPublicKeyInfo).
pub(crate) fn parse_keys<E: de::Error>(
    builder: &mut RuntimePolicyBuilder,
    field: &str,
    texts: &[Str<'_>],
) -> Result<(), E> {
    for (i, text) in texts.iter().enumerate() {
        let der = crate::key::spki_from_text(&text.0)
            .map_err(|m| E::custom(format!("{field}[{i}]: not a public key: {m}")))?;
        builder.add_signing_key(&der).map_err(E::custom)?;
    }
    Ok(())
}

struct NativeVisitor;

impl<'de> Visitor<'de> for NativeVisitor {
    type Value = RuntimePolicyBuilder;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a runtime policy object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RuntimePolicyBuilder, A::Error> {
        let mut b = RuntimePolicyBuilder::rejecting_duplicates();
        let mut seen = [false; FIELDS.len()];
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let index = super::field_index(&key.0, FIELDS, &mut seen)?;
            match FIELDS[index] {
                "version" => {
                    let v: u64 = map.next_value()?;
                    if v != VERSION {
                        return Err(de::Error::custom(format!(
                            "version {v} is not supported (this build reads version {VERSION})"
                        )));
                    }
                }
                "kind" => {
                    let k: Str<'de> = map.next_value()?;
                    if k.0 != "runtime" {
                        return Err(de::Error::custom(format!(
                            "kind {:?} is not a runtime policy (expected \"runtime\")",
                            k.0
                        )));
                    }
                }
                "log_hash_alg" => {
                    let s: Str<'de> = map.next_value()?;
                    let alg: HashAlg = s.0.parse().map_err(de::Error::custom)?;
                    b.log_hash_alg(alg);
                }
                "files" => map.next_value_seed(DigestMapSeed {
                    table: &mut b.files,
                    syntax: DigestSyntax::Prefixed,
                })?,
                "keyrings" => map.next_value_seed(DigestMapSeed {
                    table: &mut b.keyrings,
                    syntax: DigestSyntax::Prefixed,
                })?,
                "buffers" => map.next_value_seed(DigestMapSeed {
                    table: &mut b.buffers,
                    syntax: DigestSyntax::Prefixed,
                })?,
                "excludes" => {
                    for p in map.next_value::<Vec<Str<'de>>>()? {
                        b.add_exclude(&p.0);
                    }
                }
                "ignored_keyrings" => {
                    for k in map.next_value::<Vec<Str<'de>>>()? {
                        b.ignore_keyring(&k.0);
                    }
                }
                _ => {
                    let texts = map.next_value::<Vec<Str<'de>>>()?;
                    parse_keys(&mut b, "signing_keys", &texts)?;
                }
            }
        }
        for required in ["version", "kind"] {
            if !FIELDS.iter().zip(seen).any(|(f, s)| *f == required && s) {
                return Err(de::Error::missing_field(required));
            }
        }
        Ok(b)
    }
}

/// Where serialised bytes go: a buffer, or a hash for the content digest.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);

    /// Writes `"bytes"`.
    fn put_quoted(&mut self, bytes: &[u8]) {
        self.put(b"\"");
        self.put(bytes);
        self.put(b"\"");
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// SHA-256 of what is written. Serialisation writes a few bytes at a time, so they are
/// gathered in a buffer and hashed in large blocks: a hash update per small piece costs more
/// than the hashing itself.
pub(crate) struct Sha256Sink {
    hasher: sha2::Sha256,
    buf: Vec<u8>,
}

const SINK_BUFFER: usize = 64 << 10;

impl Sha256Sink {
    pub(crate) fn new() -> Sha256Sink {
        Sha256Sink { hasher: sha2::Sha256::default(), buf: Vec::with_capacity(SINK_BUFFER) }
    }

    pub(crate) fn finish(mut self) -> [u8; 32] {
        use sha2::Digest as _;
        self.hasher.update(&self.buf);
        self.hasher.finalize().into()
    }
}

/// Sends what is written in chunks over a channel and takes emptied buffers back, so that
/// another thread hashes while this one serialises.
pub(crate) struct ChunkSink {
    full: std::sync::mpsc::SyncSender<Vec<u8>>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    /// The receiving side went away; nothing more is sent.
    closed: bool,
}

impl ChunkSink {
    pub(crate) fn new(
        full: std::sync::mpsc::SyncSender<Vec<u8>>,
        empty: std::sync::mpsc::Receiver<Vec<u8>>,
    ) -> ChunkSink {
        ChunkSink { full, empty, buf: Vec::with_capacity(SINK_BUFFER), closed: false }
    }

    fn send(&mut self) {
        let next = self.empty.try_recv().unwrap_or_else(|_| Vec::with_capacity(SINK_BUFFER));
        let chunk = std::mem::replace(&mut self.buf, next);
        self.buf.clear();
        if !self.closed && self.full.send(chunk).is_err() {
            self.closed = true;
        }
    }

    /// Sends what is left; whether every byte was sent.
    pub(crate) fn finish(mut self) -> bool {
        if !self.buf.is_empty() {
            self.send();
        }
        !self.closed
    }
}

impl Sink for ChunkSink {
    fn put(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > SINK_BUFFER && !self.buf.is_empty() {
            self.send();
        }
        self.buf.extend_from_slice(bytes);
    }
}

impl Sink for Sha256Sink {
    fn put(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        if self.buf.len() + bytes.len() > SINK_BUFFER {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
        if bytes.len() >= SINK_BUFFER {
            self.hasher.update(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }
}

/// Writes `s` as a JSON string (UTF-8 kept as is; quotes, backslashes and controls escaped).
pub(crate) fn put_str(sink: &mut impl Sink, s: &str) {
    put_str_bytes(sink, s.as_bytes());
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// [`put_str`] of UTF-8 bytes.
fn put_str_bytes(sink: &mut impl Sink, bytes: &[u8]) {
    // Almost every name needs no escape: one test over the bytes (which the compiler
    // vectorises), then one write.
    if !bytes.iter().any(|&b| needs_escape(b)) {
        sink.put_quoted(bytes);
        return;
    }
    sink.put(b"\"");
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        let escaped: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            _ => None,
        };
        sink.put(&bytes[start..i]);
        match escaped {
            Some(e) => sink.put(e),
            None => sink.put(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    sink.put(&bytes[start..]);
    sink.put(b"\"");
}

/// Lowercase hex of every byte value.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    t
};

/// Writes a digest as `"alg:hex"` (`prefixed`) or `"hex"`.
pub(crate) fn put_digest(sink: &mut impl Sink, digest: &[u8], prefixed: bool) {
    // `"sha512:` and 128 digits and `"`.
    let mut out = [0u8; 2 * MAX_DIGEST_LEN + 10];
    if digest.len() > MAX_DIGEST_LEN {
        return;
    }
    out[0] = b'"';
    let mut at = 1;
    if let (true, Some(alg)) = (prefixed, HashAlg::from_len(digest.len())) {
        let name = alg.name().as_bytes();
        out[at..at + name.len()].copy_from_slice(name);
        at += name.len();
        out[at] = b':';
        at += 1;
    }
    for (pair, &b) in out[at..].chunks_exact_mut(2).zip(digest) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
    at += 2 * digest.len();
    out[at] = b'"';
    sink.put(&out[..=at]);
}

/// Writes `{name: [digests]}` with one name per line, in table (sorted) order.
pub(crate) fn put_digest_map(sink: &mut impl Sink, table: &DigestTable, prefixed: bool) {
    if table.is_empty() {
        sink.put(b"{}");
        return;
    }
    let mut first = true;
    for (name, list) in table.iter_raw() {
        sink.put(if first { b"{\n    " } else { b",\n    " });
        first = false;
        put_str_bytes(sink, name);
        sink.put(b": [");
        for (i, d) in list.iter().enumerate() {
            if i > 0 {
                sink.put(b", ");
            }
            put_digest(sink, d, prefixed);
        }
        sink.put(b"]");
    }
    sink.put(b"\n  }");
}

pub(crate) fn put_strings<'a>(sink: &mut impl Sink, items: impl IntoIterator<Item = &'a str>) {
    let mut any = false;
    for s in items {
        sink.put(if any { b",\n    " } else { b"[\n    " });
        put_str(sink, s);
        any = true;
    }
    sink.put(if any { b"\n  ]" } else { b"[]" });
}

/// Writes the canonical form.
pub(crate) fn write(p: &RuntimePolicy, sink: &mut impl Sink) {
    use base64::Engine;
    sink.put(b"{\n  \"version\": 1,\n  \"kind\": \"runtime\",\n  \"log_hash_alg\": ");
    put_str(sink, p.log_hash_alg.name());
    sink.put(b",\n  \"files\": ");
    put_digest_map(sink, &p.files, true);
    sink.put(b",\n  \"excludes\": ");
    put_strings(sink, p.excludes().iter().map(String::as_str));
    sink.put(b",\n  \"keyrings\": ");
    put_digest_map(sink, &p.keyrings, true);
    sink.put(b",\n  \"ignored_keyrings\": ");
    put_strings(sink, p.ignored_keyrings.iter().map(String::as_str));
    sink.put(b",\n  \"buffers\": ");
    put_digest_map(sink, &p.buffers, true);
    sink.put(b",\n  \"signing_keys\": ");
    let keys: Vec<String> = p
        .signing_keys
        .iter()
        .map(|k| base64::engine::general_purpose::STANDARD.encode(k))
        .collect();
    put_strings(sink, keys.iter().map(String::as_str));
    sink.put(b"\n}\n");
}

impl RuntimePolicy {
    /// The canonical JSON of this project's format (what [`RuntimePolicy::content_digest`]
    /// hashes).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.files.len() * 112 + 256);
        write(self, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings_as_json() {
        let mut out = Vec::new();
        put_str(&mut out, "a\"b\\c\n\u{1}é");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text, "\"a\\\"b\\\\c\\n\\u0001é\"");
        let back: String = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(back, "a\"b\\c\n\u{1}é");
    }
}
