//! Keylime's legacy flat formats: the allowlist and the exclude list.
//!
//! Allowlist: one `<digest> <path>` per line, separated by whitespace; the digest is hex (the
//! algorithm implied by its length) or `alg:hex`; the path is the rest of the line, so it may
//! contain spaces. A path `%keyring:<name>` is the digest of a key allowed on keyring `<name>`.
//! A path may appear on several lines (several allowed digests). Blank lines and lines starting
//! with `#` are skipped. Exclude list: one regex per line, same comment rules.
//!
//! Keylime logs and skips malformed lines; here they are errors naming the line, since a
//! silently dropped entry makes a policy fail later in a way that is hard to trace back.

use super::runtime::check_exclude;
use super::{DigestSyntax, PolicyError, RuntimePolicy, RuntimePolicyBuilder, parse_digest};
use crate::alg::MAX_DIGEST_LEN;

const KEYRING_PREFIX: &str = "%keyring:";

/// Splits UTF-8 input into trimmed, numbered, non-comment lines.
fn content_lines<'a>(
    bytes: &'a [u8],
    format: &'static str,
) -> Result<impl Iterator<Item = (usize, &'a str)>, PolicyError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        PolicyError::Line { format, line, message: "not valid UTF-8".into() }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Ok(text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#')))
}

/// Adds the entries of a flat allowlist to `builder`.
pub fn add_allowlist(builder: &mut RuntimePolicyBuilder, bytes: &[u8]) -> Result<(), PolicyError> {
    const FORMAT: &str = "allowlist";
    let mut buf = [0u8; MAX_DIGEST_LEN];
    for (line, text) in content_lines(bytes, FORMAT)? {
        let err = |message: String| PolicyError::Line { format: FORMAT, line, message };
        let Some((digest, path)) = text.split_once(|c: char| c.is_whitespace()) else {
            return Err(err(format!("expected `<digest>  <path>`, found {text:?}")));
        };
        let path = path.trim_start();
        let len = parse_digest(digest, DigestSyntax::OptionalPrefix, &mut buf).map_err(err)?;
        let digest = &buf[..len];
        match path.strip_prefix(KEYRING_PREFIX) {
            Some(keyring) => builder.add_keyring_digest(keyring, digest),
            None => builder.add_file(path, digest),
        }
        .map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

/// Reads a flat allowlist as a policy (Keylime's `ima.log_hash_alg` default, sha1).
pub fn parse_allowlist(bytes: &[u8]) -> Result<RuntimePolicy, PolicyError> {
    let mut b = RuntimePolicyBuilder::new();
    add_allowlist(&mut b, bytes)?;
    b.build()
}

/// Reads an exclude list, checking every regex.
pub(crate) fn parse_exclude_list(bytes: &[u8]) -> Result<Vec<String>, PolicyError> {
    const FORMAT: &str = "exclude list";
    let mut out = Vec::new();
    for (line, text) in content_lines(bytes, FORMAT)? {
        check_exclude(text).map_err(|m| PolicyError::Line {
            format: FORMAT,
            line,
            message: format!("regex {text:?}: {m}"),
        })?;
        out.push(text.to_owned());
    }
    Ok(out)
}

/// Adds the regexes of an exclude list to `builder`.
pub fn add_exclude_list(
    builder: &mut RuntimePolicyBuilder,
    bytes: &[u8],
) -> Result<(), PolicyError> {
    for p in parse_exclude_list(bytes)? {
        builder.add_exclude(&p);
    }
    Ok(())
}

impl RuntimePolicy {
    /// The files and keyrings as a Keylime flat allowlist (one digest per line, sorted).
    /// Buffers, excludes and keys have no place in that format; see
    /// [`RuntimePolicy::to_exclude_list`] for the excludes.
    pub fn to_flat_allowlist(&self) -> String {
        let mut out = String::with_capacity(self.files.len() * 110);
        for (path, list) in self.files() {
            for d in list.iter() {
                out.push_str(&hex::encode(d));
                out.push_str("  ");
                out.push_str(path);
                out.push('\n');
            }
        }
        for (keyring, list) in self.keyrings() {
            for d in list.iter() {
                out.push_str(&hex::encode(d));
                out.push_str("  ");
                out.push_str(KEYRING_PREFIX);
                out.push_str(keyring);
                out.push('\n');
            }
        }
        out
    }

    /// The excludes as a Keylime exclude list.
    pub fn to_exclude_list(&self) -> String {
        self.excludes().iter().map(|p| format!("{p}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Lookup;

    #[test]
    fn paths_with_spaces_comments_and_repeats() {
        let sha1 = "aa".repeat(20);
        let sha256 = "bb".repeat(32);
        let text = format!(
            "# generated\n\n{sha1}  /opt/My App/run me\n\
             sha256:{sha256}\t/opt/My App/run me  \r\n{sha256} %keyring:.ima\n"
        );
        let p = parse_allowlist(text.as_bytes()).expect("parses");
        assert_eq!(p.lookup_file("/opt/My App/run me", &[0xaa; 20]), Lookup::Allowed);
        assert_eq!(p.lookup_file("/opt/My App/run me", &[0xbb; 32]), Lookup::Allowed);
        assert_eq!(p.lookup_keyring(".ima", &[0xbb; 32]), Lookup::Allowed);
        assert_eq!(p.file_count(), 1);
        let again = parse_allowlist(p.to_flat_allowlist().as_bytes()).expect("round trip");
        assert_eq!(again, p);
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse_allowlist(b"# c\n0011  /x\n").expect_err("short digest");
        assert_eq!(
            err.to_string().split(':').take(2).collect::<Vec<_>>(),
            ["allowlist", " line 2"]
        );
        let err =
            parse_allowlist(format!("{}\n", "ab".repeat(20)).as_bytes()).expect_err("no path");
        assert!(err.to_string().starts_with("allowlist: line 1: expected"), "{err}");
        let err = parse_allowlist(b"\n\n\xff\xfe").expect_err("utf8");
        assert!(err.to_string().contains("line 3"), "{err}");
        let err = parse_exclude_list(b"^/tmp/\n# c\n(unclosed\n").expect_err("regex");
        assert!(err.to_string().starts_with("exclude list: line 3: regex"), "{err}");
    }

    #[test]
    fn exclude_list_round_trip() {
        let ex = parse_exclude_list(b"^/tmp/\n\n/var/log/.*\n").expect("parses");
        assert_eq!(ex, vec!["^/tmp/", "/var/log/.*"]);
        let mut b = RuntimePolicyBuilder::new();
        add_exclude_list(&mut b, b"^/tmp/\n").expect("adds");
        let p = b.build().expect("builds");
        assert_eq!(p.to_exclude_list(), "^/tmp/\n");
    }
}
