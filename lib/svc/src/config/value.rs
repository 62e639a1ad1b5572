//! Option descriptors: the name, kind and default of each config option, and the parsing of a
//! raw value (a TOML value from a file, or a string from the environment or a flag) into the
//! normalized JSON value the typed config structs deserialize from.

use std::net::IpAddr;

use serde_json::Value as Json;

/// What values an option takes. Parsing is the same for every component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any string; empty only when the option is optional (empty means unset).
    Text,
    /// A host name or an IP address.
    Host,
    /// A list of host names or IP addresses (as [`Kind::TextList`]); `*` stands for any.
    HostList,
    /// An IP address (v4 or v6).
    Ip,
    /// A TCP port, 0-65535.
    Port,
    /// `true` or `false` (`yes`/`no`/`1`/`0` from the environment or flags too).
    Bool,
    /// A non-negative number of seconds; fractions allowed.
    Seconds,
    /// A non-negative integer.
    Count,
    /// A file system path.
    Path,
    /// A list of strings: a TOML array (or, as a string, `a,b` or `["a", "b"]`).
    TextList,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// A list of words, each from a fixed set.
    ChoiceList(&'static [&'static str]),
    /// The agent id setting: a UUID, `generate` or `hash_ek`.
    AgentUuid,
    /// A TPM TCTI: `device:PATH`, `swtpm:host=H,port=P`, `mssim:...` or `tabrmd:...`.
    Tcti,
    /// `generate`, `default`, or a directory holding the TLS files.
    TlsDir,
    /// An `http://` or `https://` URL.
    Url,
}

/// Where an option's value comes from when no file, variable or flag sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// The value, written as it would be in an environment variable.
    Value(&'static str),
    /// A path below the effective `keylime_dir`.
    UnderKeylimeDir(&'static str),
    /// No value (the option is optional).
    Unset,
}

/// One config option of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub default: Default,
    /// An optional option may be left unset; setting it to "" unsets it.
    pub optional: bool,
    /// What the option does, one or two sentences: the commented default config files and
    /// the daemons' man pages are made from it.
    pub doc: &'static str,
}

impl OptionSpec {
    pub const fn new(name: &'static str, kind: Kind, default: &'static str) -> Self {
        OptionSpec { name, kind, default: Default::Value(default), optional: false, doc: "" }
    }

    pub const fn under_keylime_dir(name: &'static str, kind: Kind, sub: &'static str) -> Self {
        OptionSpec { name, kind, default: Default::UnderKeylimeDir(sub), optional: false, doc: "" }
    }

    pub const fn optional(name: &'static str, kind: Kind) -> Self {
        OptionSpec { name, kind, default: Default::Unset, optional: true, doc: "" }
    }

    /// The same option with its description.
    pub const fn doc(self, doc: &'static str) -> Self {
        OptionSpec { doc, ..self }
    }
}

/// Parses a value read from a TOML file. `Err` holds the reason, to be prefixed with source,
/// key and value by the caller.
pub fn parse_toml(spec: &OptionSpec, value: &toml::Value) -> Result<Json, String> {
    match (spec.kind, value) {
        (_, toml::Value::String(s)) => parse_str(spec, s),
        (Kind::Port, toml::Value::Integer(n)) => port(*n),
        (Kind::Count, toml::Value::Integer(n)) => {
            u64::try_from(*n).map(Json::from).map_err(|_| reason_for(Kind::Count))
        }
        (Kind::Seconds, toml::Value::Integer(n)) => seconds(*n as f64),
        (Kind::Seconds, toml::Value::Float(f)) => seconds(*f),
        (Kind::Bool, toml::Value::Boolean(b)) => Ok(Json::Bool(*b)),
        (Kind::TextList | Kind::ChoiceList(_) | Kind::HostList, toml::Value::Array(items)) => {
            let mut words = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    toml::Value::String(s) => words.push(s.clone()),
                    _ => return Err("expected an array of strings".to_owned()),
                }
            }
            list(spec.kind, words)
        }
        (kind, _) => Err(reason_for(kind)),
    }
}

/// Parses a value given as a string: an environment variable, a flag, a built-in default, or a
/// string in a TOML file.
pub fn parse_str(spec: &OptionSpec, raw: &str) -> Result<Json, String> {
    let s = raw.trim();
    if s.is_empty() {
        return if spec.optional {
            Ok(Json::Null)
        } else if matches!(spec.kind, Kind::TextList | Kind::ChoiceList(_) | Kind::HostList) {
            Ok(Json::Array(Vec::new()))
        } else {
            Err("must not be empty".to_owned())
        };
    }
    match spec.kind {
        Kind::Text | Kind::Path => Ok(Json::from(s)),
        Kind::Host => {
            if is_host(s) {
                Ok(Json::from(s))
            } else {
                Err(reason_for(Kind::Host))
            }
        }
        Kind::Ip => s.parse::<IpAddr>().map(|_| Json::from(s)).map_err(|_| reason_for(Kind::Ip)),
        Kind::Port => s.parse::<i64>().map_err(|_| reason_for(Kind::Port)).and_then(port),
        Kind::Count => s.parse::<u64>().map(Json::from).map_err(|_| reason_for(Kind::Count)),
        Kind::Seconds => s.parse::<f64>().map_err(|_| reason_for(Kind::Seconds)).and_then(seconds),
        Kind::Bool => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(Json::Bool(true)),
            "false" | "no" | "off" | "0" => Ok(Json::Bool(false)),
            _ => Err(reason_for(Kind::Bool)),
        },
        Kind::TextList | Kind::ChoiceList(_) | Kind::HostList => list(spec.kind, split_list(s)?),
        Kind::Choice(words) => {
            if words.contains(&s) {
                Ok(Json::from(s))
            } else {
                Err(format!("not one of {}", words.join(", ")))
            }
        }
        Kind::AgentUuid => {
            if s == "generate" || s == "hash_ek" || is_uuid(s) {
                Ok(Json::from(s))
            } else {
                Err(reason_for(Kind::AgentUuid))
            }
        }
        Kind::Tcti => {
            let known = ["device", "swtpm", "mssim", "tabrmd"];
            let name = s.split(':').next().unwrap_or_default();
            if known.contains(&name) { Ok(Json::from(s)) } else { Err(reason_for(Kind::Tcti)) }
        }
        Kind::TlsDir => Ok(Json::from(s)),
        Kind::Url => {
            if (s.starts_with("http://") || s.starts_with("https://")) && !s.contains(' ') {
                Ok(Json::from(s))
            } else {
                Err(reason_for(Kind::Url))
            }
        }
    }
}

/// Whether `s` is a UUID in its canonical hyphenated form (any case).
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.chars().all(|c| c.is_ascii_hexdigit()))
}

fn reason_for(kind: Kind) -> String {
    match kind {
        Kind::Text | Kind::Path | Kind::TlsDir => "expected a string".to_owned(),
        Kind::Host => "not a host name or IP address".to_owned(),
        Kind::Ip => "not an IP address".to_owned(),
        Kind::Port => "not a port number".to_owned(),
        Kind::Bool => "not a boolean (true or false)".to_owned(),
        Kind::Seconds => "not a number of seconds".to_owned(),
        Kind::Count => "not a non-negative integer".to_owned(),
        Kind::TextList | Kind::ChoiceList(_) => "expected an array of strings".to_owned(),
        Kind::HostList => "expected an array of host names or IP addresses (or \"*\")".to_owned(),
        Kind::Choice(words) => format!("not one of {}", words.join(", ")),
        Kind::AgentUuid => "not a UUID, \"generate\" or \"hash_ek\"".to_owned(),
        Kind::Tcti => {
            "not a TCTI (device:PATH, swtpm:host=H,port=P, mssim:..., tabrmd:...)".to_owned()
        }
        Kind::Url => "not an http:// or https:// URL".to_owned(),
    }
}

fn port(n: i64) -> Result<Json, String> {
    u16::try_from(n).map(Json::from).map_err(|_| "not a port number (0-65535)".to_owned())
}

fn seconds(f: f64) -> Result<Json, String> {
    if !f.is_finite() || f < 0.0 {
        return Err("not a non-negative number of seconds".to_owned());
    }
    if std::time::Duration::try_from_secs_f64(f).is_err() {
        return Err("too many seconds".to_owned());
    }
    serde_json::Number::from_f64(f).map(Json::Number).ok_or_else(|| reason_for(Kind::Seconds))
}

/// A host name (dot-separated labels of letters, digits and inner hyphens) or an IP address.
fn is_host(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
        || s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
        })
}

fn list(kind: Kind, words: Vec<String>) -> Result<Json, String> {
    if kind == Kind::HostList
        && let Some(bad) = words.iter().find(|w| *w != "*" && !is_host(w))
    {
        return Err(format!("\"{bad}\" is not a host name or an IP address"));
    }
    if let Kind::ChoiceList(allowed) = kind
        && let Some(bad) = words.iter().find(|w| !allowed.contains(&w.as_str()))
    {
        return Err(format!("\"{bad}\" is not one of {}", allowed.join(", ")));
    }
    Ok(Json::Array(words.into_iter().map(Json::String).collect()))
}

/// `a, b` or a TOML array `["a", "b"]`.
fn split_list(s: &str) -> Result<Vec<String>, String> {
    if s.starts_with('[') {
        let doc: toml::Table = toml::from_str(&format!("v = {s}"))
            .map_err(|_| "expected an array of strings".to_owned())?;
        let Some(toml::Value::Array(items)) = doc.get("v") else {
            return Err("expected an array of strings".to_owned());
        };
        items
            .iter()
            .map(|item| match item {
                toml::Value::String(w) => Ok(w.clone()),
                _ => Err("expected an array of strings".to_owned()),
            })
            .collect()
    } else {
        Ok(s.split(',').map(str::trim).filter(|w| !w.is_empty()).map(str::to_owned).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: Kind) -> OptionSpec {
        OptionSpec::new("x", kind, "")
    }

    #[test]
    fn ports_accept_numbers_and_numeric_strings_only() {
        assert_eq!(parse_str(&spec(Kind::Port), "8891"), Ok(Json::from(8891)));
        assert_eq!(parse_str(&spec(Kind::Port), "80a"), Err("not a port number".to_owned()));
        assert!(parse_str(&spec(Kind::Port), "65536").is_err());
        assert!(parse_toml(&spec(Kind::Port), &toml::Value::Integer(-1)).is_err());
        assert!(parse_toml(&spec(Kind::Port), &toml::Value::Boolean(true)).is_err());
    }

    #[test]
    fn seconds_take_fractions_and_refuse_negatives() {
        assert_eq!(parse_toml(&spec(Kind::Seconds), &toml::Value::Float(1.5)), Ok(Json::from(1.5)));
        assert_eq!(parse_str(&spec(Kind::Seconds), "2"), Ok(Json::from(2.0)));
        assert!(parse_str(&spec(Kind::Seconds), "-1").is_err());
        assert!(parse_str(&spec(Kind::Seconds), "NaN").is_err());
        assert_eq!(parse_str(&spec(Kind::Seconds), "1e300"), Err("too many seconds".to_owned()));
    }

    #[test]
    fn lists_from_strings_and_arrays() {
        let words = Json::from(vec!["a", "b"]);
        assert_eq!(parse_str(&spec(Kind::TextList), "a, b"), Ok(words.clone()));
        assert_eq!(parse_str(&spec(Kind::TextList), r#"["a", "b"]"#), Ok(words));
        assert_eq!(parse_str(&spec(Kind::TextList), ""), Ok(Json::Array(vec![])));
        let algs = spec(Kind::ChoiceList(&["sha256", "sha384"]));
        assert_eq!(
            parse_str(&algs, "sha256,sha1"),
            Err("\"sha1\" is not one of sha256, sha384".to_owned())
        );
    }

    #[test]
    fn host_lists() {
        let hosts = spec(Kind::HostList);
        assert_eq!(parse_str(&hosts, "10.0.0.1"), Ok(Json::from(vec!["10.0.0.1"])));
        assert_eq!(
            parse_str(&hosts, "verifier-a.example, ::1, *"),
            Ok(Json::from(vec!["verifier-a.example", "::1", "*"]))
        );
        let array = toml::Value::Array(vec!["10.0.0.1".into(), "10.0.0.2".into()]);
        assert_eq!(parse_toml(&hosts, &array), Ok(Json::from(vec!["10.0.0.1", "10.0.0.2"])));
        assert_eq!(
            parse_str(&hosts, "10.0.0.1, bad host"),
            Err("\"bad host\" is not a host name or an IP address".to_owned())
        );
    }

    #[test]
    fn agent_uuid_setting() {
        let s = spec(Kind::AgentUuid);
        for ok in ["generate", "hash_ek", "d432fbb3-d2f1-4a97-9ef7-75bd81c00000"] {
            assert!(parse_str(&s, ok).is_ok(), "{ok}");
        }
        for bad in ["d432fbb3-d2f1-4a97-9ef7-75bd81c0000", "agent-1", "hash-ek"] {
            assert!(parse_str(&s, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_ips_and_optional_empties() {
        assert!(parse_str(&spec(Kind::Host), "registrar.example.org").is_ok());
        assert!(parse_str(&spec(Kind::Host), "::1").is_ok());
        assert!(parse_str(&spec(Kind::Host), "bad host").is_err());
        assert!(parse_str(&spec(Kind::Ip), "localhost").is_err());
        assert!(parse_str(&spec(Kind::Text), "").is_err());
        assert_eq!(parse_str(&OptionSpec::optional("x", Kind::Url), ""), Ok(Json::Null));
        assert!(parse_str(&spec(Kind::Url), "ftp://x").is_err());
        assert!(parse_str(&spec(Kind::Tcti), "swtpm:host=127.0.0.1,port=2321").is_ok());
        assert!(parse_str(&spec(Kind::Tcti), "/dev/tpm0").is_err());
    }
}
