//! The commented default config file of a component (`/usr/etc/keylime/<c>.conf`), made from its
//! option table: every option with its description and built-in default, commented out, so the
//! file loads as is and documents what an operator may set in `/etc/keylime`.

use serde_json::Value as Json;

use super::value::{self, Default, OptionSpec};
use super::{Component, ComponentConfig};

/// The default config file of `T`. Prose lines start with `# `, option lines with `#` and the
/// option name (`#port = 8881`), so uncommenting one is removing one character.
pub fn sample<T: ComponentConfig>() -> String {
    render(T::COMPONENT, &T::options())
}

fn render(component: Component, options: &[OptionSpec]) -> String {
    let c = component.name();
    let mut text = format!(
        "# keylime-rs {c} configuration: every option with its built-in default.\n\
         #\n\
         # This file belongs to the package and is replaced on upgrade. Put settings in\n\
         # /etc/keylime/{c}.conf or in drop-ins /etc/keylime/{c}.conf.d/NN-name.conf (read in\n\
         # name order, later files winning). KEYLIME_{upper}_<OPTION> environment variables and\n\
         # --set OPTION=VALUE override the files; --print-config shows the effective values.\n\
         # Durations are seconds (fractions allowed); lists are TOML arrays.\n\
         \n\
         [{c}]\n",
        upper = c.to_ascii_uppercase()
    );
    for spec in options {
        text.push('\n');
        for line in wrap(spec.doc, 92) {
            text.push_str(&format!("# {line}\n"));
        }
        let shown = match spec.default {
            Default::Value(raw) => toml_literal(value::parse_str(spec, raw).ok()),
            Default::UnderKeylimeDir(sub) => {
                text.push_str(&format!("# Default: <keylime_dir>/{sub}.\n"));
                toml_literal(Some(Json::String(format!("/var/lib/keylime/{sub}"))))
            }
            Default::Unset => {
                text.push_str("# Unset by default.\n");
                "\"\"".to_owned()
            }
        };
        text.push_str(&format!("#{} = {shown}\n", spec.name));
    }
    text
}

/// A parsed default as TOML: whole seconds as integers, lists as arrays.
fn toml_literal(value: Option<Json>) -> String {
    let value = match value {
        Some(Json::Bool(b)) => toml::Value::Boolean(b),
        Some(Json::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => toml::Value::Integer(f as i64),
            (None, Some(f)) => toml::Value::Float(f),
            (None, None) => toml::Value::String(n.to_string()),
        },
        Some(Json::String(s)) => toml::Value::String(s),
        Some(Json::Array(items)) => toml::Value::Array(
            items
                .into_iter()
                .map(|v| toml::Value::String(v.as_str().unwrap_or_default().to_owned()))
                .collect(),
        ),
        Some(Json::Null) | Some(Json::Object(_)) | None => toml::Value::String(String::new()),
    };
    value.to_string()
}

/// Splits prose into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        AgentConfig, RegistrarConfig, Sources, TenantConfig, VerifierConfig, defaults, load,
    };

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The file as shipped loads to the built-in defaults, and so does the file with every
    /// option line uncommented: each shown default is the real one, in a form the loader takes.
    fn check<T: ComponentConfig + PartialEq + std::fmt::Debug>() -> TestResult {
        let dir = tempfile::tempdir()?;
        let text = sample::<T>();
        let load_text = |text: &str| -> Result<T, Box<dyn std::error::Error>> {
            let path = dir.path().join("sample.conf");
            std::fs::write(&path, text)?;
            let sources = Sources { roots: Vec::new(), config_file: Some(path), ..Sources::new() };
            Ok(load::<T>(&sources)?.config)
        };
        assert_eq!(load_text(&text)?, defaults::<T>()?);
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
                _ => l,
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        for spec in T::options() {
            assert!(!spec.doc.is_empty(), "{}: no description", spec.name);
            assert!(
                uncommented.lines().any(|l| l.starts_with(&format!("{} = ", spec.name))),
                "{} missing from the sample",
                spec.name
            );
        }
        assert_eq!(load_text(&uncommented)?, defaults::<T>()?);
        Ok(())
    }

    #[test]
    fn every_sample_lists_every_option_and_loads_to_the_defaults() -> TestResult {
        check::<AgentConfig>()?;
        check::<RegistrarConfig>()?;
        check::<VerifierConfig>()?;
        check::<TenantConfig>()
    }
}
