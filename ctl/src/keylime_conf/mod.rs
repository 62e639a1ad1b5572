//! `kctl config convert`: turns a Keylime config file (verifier.conf, registrar.conf,
//! tenant.conf, the Rust agent's agent.conf, or the old monolithic keylime.conf) into this
//! project's TOML drop-in for one component.
//!
//! Every option read ends up in exactly one list of the report: converted (written to the
//! drop-in), kept (Keylime's value is this project's behaviour or default, nothing to write), or
//! no equivalent (with the reason and what to use instead). Sections of other components are
//! listed too. Nothing is dropped silently. The option names come from [`mapping::RULES`]; each
//! converted value is checked against the option's kind here, so the drop-in loads.

mod ini;
pub mod mapping;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use kl_svc::config::{
    AgentConfig, Component, ComponentConfig, Kind, OptionSpec, RegistrarConfig, TenantConfig,
    VerifierConfig, parse_str,
};
use serde::Serialize;
use serde_json::Value as Json;

use crate::cli::{Cli, ComponentArg, ConfigCommand};
use crate::exit::{CmdResult, Outcome, input};
use crate::output::{self, Format};
use ini::Ini;
use mapping::Target;

/// What became of a Keylime file.
#[derive(Debug, Serialize)]
pub struct Report {
    pub source: PathBuf,
    pub component: String,
    /// The drop-in, for `/etc/keylime/<component>.conf.d/`.
    pub toml: String,
    pub converted: Vec<Converted>,
    pub kept: Vec<Kept>,
    pub no_equivalent: Vec<NoEquivalent>,
    pub other_sections: Vec<OtherSection>,
}

#[derive(Debug, Serialize)]
pub struct Converted {
    /// `[section] option` as in the Keylime file.
    pub keylime: String,
    pub line: usize,
    pub option: String,
    pub value: Json,
}

#[derive(Debug, Serialize)]
pub struct Kept {
    pub keylime: String,
    pub line: usize,
    pub value: String,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct NoEquivalent {
    pub keylime: String,
    pub line: usize,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct OtherSection {
    pub section: String,
    pub options: Vec<String>,
    pub note: String,
}

pub fn run(cli: &Cli, cmd: &ConfigCommand) -> CmdResult {
    let ConfigCommand::Convert { file, component } = cmd;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read", file.display()))
        .map_err(input)?;
    let ini = Ini::parse(file, &text).map_err(input)?;
    let report = convert(&ini, component.map(Component::from)).map_err(input)?;
    match cli.output {
        Format::Json => output::json(&report).map_err(input)?,
        Format::Table => {
            for n in &report.no_equivalent {
                eprintln!(
                    "{}: {}:{}: {} has no equivalent: {}",
                    cli.program,
                    file.display(),
                    n.line,
                    n.keylime,
                    n.reason
                );
            }
            for s in &report.other_sections {
                eprintln!(
                    "{}: {}: [{}] not converted ({} options): {}",
                    cli.program,
                    file.display(),
                    s.section,
                    s.options.len(),
                    s.note
                );
            }
            output::text(&report.toml).map_err(input)?;
        }
    }
    Ok(Outcome::Ok)
}

impl From<ComponentArg> for Component {
    fn from(c: ComponentArg) -> Component {
        match c {
            ComponentArg::Verifier => Component::Verifier,
            ComponentArg::Registrar => Component::Registrar,
            ComponentArg::Agent => Component::Agent,
            ComponentArg::Tenant => Component::Tenant,
        }
    }
}

const COMPONENTS: [Component; 4] =
    [Component::Verifier, Component::Registrar, Component::Agent, Component::Tenant];

/// The 7.x section name `section` stands for in `component`'s files, if it is one of them.
fn section_of(component: Component, section: &str) -> Option<&'static str> {
    mapping::sections(component).iter().find(|(name, _)| *name == section).map(|(_, s)| *s)
}

/// The component whose sections the file has: the one asked for, or the only one present.
fn pick_component(ini: &Ini, asked: Option<Component>) -> anyhow::Result<Component> {
    let present: Vec<Component> = COMPONENTS
        .into_iter()
        .filter(|c| ini.sections.iter().any(|s| section_of(*c, s).is_some()))
        .collect();
    let file = ini.path.display();
    match (asked, present.as_slice()) {
        (Some(c), _) if present.contains(&c) => Ok(c),
        (Some(c), _) => Err(anyhow!(
            "{file}: no section of the {c} config ({}); sections found: {}",
            expected_sections(c),
            found_sections(ini)
        )),
        (None, [only]) => Ok(*only),
        (None, []) => Err(anyhow!(
            "{file}: no Keylime verifier, registrar, agent or tenant section; sections found: {}",
            found_sections(ini)
        )),
        (None, several) => Err(anyhow!(
            "{file}: holds the configs of {}: name one with --component",
            several.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn expected_sections(c: Component) -> String {
    mapping::sections(c).iter().map(|(s, _)| format!("[{s}]")).collect::<Vec<_>>().join(", ")
}

fn found_sections(ini: &Ini) -> String {
    if ini.sections.is_empty() {
        return "none".to_owned();
    }
    ini.sections.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", ")
}

/// The options of `component`'s config here, for the mapping's targets.
pub(crate) fn option_specs(component: Component) -> Vec<OptionSpec> {
    match component {
        Component::Agent => AgentConfig::options(),
        Component::Registrar => RegistrarConfig::options(),
        Component::Verifier => VerifierConfig::options(),
        Component::Tenant => TenantConfig::options(),
    }
}

/// Why a section of another program is not converted.
fn other_section_note(section: &str) -> String {
    if let Some(c) = COMPONENTS.into_iter().find(|c| section_of(*c, section).is_some()) {
        return format!("belongs to the {c} config: convert it with --component {c}");
    }
    match section {
        "ca" => "the verifier creates the CA (tls_dir = \"generate\"); `kctl ca init` and \
                 `kctl ca issue` make certificates"
            .to_owned(),
        "logging" | "loggers" | "handlers" | "formatters" => {
            "set log_level and log_format (text or json) in each component's config".to_owned()
        }
        s if s.starts_with("logger_")
            || s.starts_with("handler_")
            || s.starts_with("formatter_") =>
        {
            "set log_level and log_format (text or json) in each component's config".to_owned()
        }
        _ => "not a section this converter knows".to_owned(),
    }
}

/// Applies the mapping to the sections of `asked` (or the only component the file has).
pub fn convert(ini: &Ini, asked: Option<Component>) -> anyhow::Result<Report> {
    let component = pick_component(ini, asked)?;
    let specs = option_specs(component);
    let mut report = Report {
        source: ini.path.clone(),
        component: component.name().to_owned(),
        toml: String::new(),
        converted: Vec::new(),
        kept: Vec::new(),
        no_equivalent: Vec::new(),
        other_sections: Vec::new(),
    };
    let mut written: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut table = toml::Table::new();

    for section in &ini.sections {
        let Some(canonical) = section_of(component, section) else {
            let options: Vec<String> = ini
                .entries
                .iter()
                .filter(|e| &e.section == section)
                .map(|e| e.option.clone())
                .collect();
            report.other_sections.push(OtherSection {
                section: section.clone(),
                options,
                note: other_section_note(section),
            });
            continue;
        };
        for entry in ini.entries.iter().filter(|e| &e.section == section) {
            let keylime = format!("[{}] {}", entry.section, entry.option);
            let raw = entry.value.trim();
            let rule = mapping::find(component, canonical, &entry.option);
            // Reports end up in tickets and chat: a password or a database URL with one in it
            // is named, not shown; nor is the value of an option the mapping does not know,
            // whose name cannot tell whether it is a secret (db_pass, api_token, ...).
            let secret = rule.is_none() || looks_secret(&entry.option);
            let shown = if secret && !raw.is_empty() { NOT_SHOWN } else { raw };
            let none = |reason: String| NoEquivalent {
                keylime: keylime.clone(),
                line: entry.line,
                value: shown.to_owned(),
                reason,
            };
            let kept = |note: &str| Kept {
                keylime: keylime.clone(),
                line: entry.line,
                value: shown.to_owned(),
                note: note.to_owned(),
            };
            let Some(rule) = rule else {
                report.no_equivalent.push(none(format!(
                    "not a Keylime 7.x {component} option this converter knows"
                )));
                continue;
            };
            let (name, value) = match rule.target {
                Target::Ignored(why) => {
                    report.kept.push(kept(why));
                    continue;
                }
                Target::Absent(_) if raw.is_empty() => {
                    report.kept.push(kept("empty in Keylime: nothing to carry over"));
                    continue;
                }
                Target::Absent(why) => {
                    report.no_equivalent.push(none(why.to_owned()));
                    continue;
                }
                Target::Fixed(values, why) => {
                    if values.contains(&raw.to_ascii_lowercase().as_str()) {
                        report.kept.push(kept(
                            "Keylime's default or this project's behaviour: nothing to carry over",
                        ));
                    } else {
                        report.no_equivalent.push(none(why.to_owned()));
                    }
                    continue;
                }
                Target::WhenEnabled { flag, default, why } => {
                    if keylime_flag(ini, component, flag).unwrap_or(default) {
                        report.no_equivalent.push(none(why.to_owned()));
                    } else {
                        report.kept.push(kept(&format!(
                            "unused in Keylime while {flag} is false; here: {why}"
                        )));
                    }
                    continue;
                }
                Target::Backoff(name)
                    if keylime_flag(ini, component, "exponential_backoff").unwrap_or(true)
                        && raw.parse::<f64>().is_ok_and(|base| base != 2.0) =>
                {
                    report.no_equivalent.push(none(format!(
                        "with exponential_backoff Keylime waits {name} ** n seconds before retry \
                         n ({raw}, {raw}^2, {raw}^3 ...), this verifier {name} * 2^(n-1) ({raw}, \
                         2*{raw}, 4*{raw} ...): they agree only at 2. Set {name} to the first \
                         wait wanted, or exponential_backoff = false for a fixed {name}"
                    )));
                    continue;
                }
                Target::Option(name) | Target::Bytes(name) | Target::Backoff(name) => {
                    let Some(spec) = specs.iter().find(|s| s.name == name) else {
                        // The mapping's test keeps this from happening; say so rather than panic.
                        report
                            .no_equivalent
                            .push(none(format!("{name} is not a {component} option")));
                        continue;
                    };
                    let keeps_default =
                        raw.eq_ignore_ascii_case("default") && spec.kind != Kind::TlsDir;
                    if keeps_default {
                        report
                            .kept
                            .push(kept("Keylime's `default`: this project's default applies"));
                        continue;
                    }
                    let parsed = match rule.target {
                        Target::Bytes(_) => bytes(raw).map(Json::from),
                        _ => parse_str(spec, raw),
                    };
                    match parsed {
                        Ok(Json::Null) => {
                            report.kept.push(kept("empty in Keylime: left unset"));
                            continue;
                        }
                        Ok(v) => (name, v),
                        Err(reason) => {
                            report.no_equivalent.push(none(format!(
                                "{name} here takes another form of value: {reason}"
                            )));
                            continue;
                        }
                    }
                }
            };
            if let Some(first) = written.get(name) {
                report.no_equivalent.push(none(format!("{name} is already set from {first}")));
                continue;
            }
            written.insert(name, keylime.clone());
            table.insert(name.to_owned(), to_toml(&value));
            report.converted.push(Converted {
                keylime,
                line: entry.line,
                option: name.to_owned(),
                value,
            });
        }
    }
    report.toml = render(&ini.path, component, table, &report)?;
    Ok(report)
}

const NOT_SHOWN: &str = "<not shown>";

/// Whether an option's name says its value may be a secret (or a URL that can carry one).
fn looks_secret(option: &str) -> bool {
    let option = option.to_ascii_lowercase();
    ["password", "pass", "_pw", "token", "secret", "credential"].iter().any(|s| option.contains(s))
        || option.ends_with("_url") && option != "webhook_url"
}

/// A boolean option of `component`'s sections as Keylime reads it (`getboolean`), if set.
fn keylime_flag(ini: &Ini, component: Component, option: &str) -> Option<bool> {
    // The last one wins, as in Keylime's configparser.
    ini.entries
        .iter()
        .rev()
        .find(|e| e.option == option && section_of(component, &e.section).is_some())
        .and_then(|e| match e.value.trim().to_ascii_lowercase().as_str() {
            "1" | "yes" | "true" | "on" => Some(true),
            "0" | "no" | "false" | "off" => Some(false),
            _ => None,
        })
}

/// `1m`, `512k`, `2G`, `1048576` as bytes.
fn bytes(raw: &str) -> Result<u64, String> {
    let s = raw.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, factor) = match s.char_indices().last() {
        Some((i, 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'm')) => (&s[..i], 1 << 20),
        Some((i, 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| "expected a size such as 1m, 512k or a number of bytes".to_owned())
}

fn to_toml(value: &Json) -> toml::Value {
    match value {
        Json::Bool(b) => toml::Value::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                toml::Value::Integer(f as i64)
            }
            (None, Some(f)) => toml::Value::Float(f),
            (None, None) => toml::Value::String(n.to_string()),
        },
        Json::String(s) => toml::Value::String(s.clone()),
        Json::Array(items) => toml::Value::Array(items.iter().map(to_toml).collect()),
        Json::Null | Json::Object(_) => toml::Value::String(value.to_string()),
    }
}

/// The drop-in: a header naming the source, the options under `[<component>]`, and the options
/// left out as comments (names and reasons only: values may be secrets).
fn render(
    source: &Path,
    component: Component,
    table: toml::Table,
    report: &Report,
) -> anyhow::Result<String> {
    let mut out = format!("# Converted from {} by `kctl config convert`.\n", source.display());
    let mut doc = toml::Table::new();
    doc.insert(component.name().to_owned(), toml::Value::Table(table));
    out.push_str(&toml::to_string(&doc).context("rendering the TOML drop-in")?);
    if !report.no_equivalent.is_empty() {
        out.push_str("\n# Keylime options with no equivalent here:\n");
        for n in &report.no_equivalent {
            out.push_str(&format!("#   {} (line {}): {}\n", n.keylime, n.line, n.reason));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
