//! Layered TOML configuration for the agent, registrar, verifier and tenant.
//!
//! Layers, later ones winning: built-in defaults; `/usr/etc/keylime/<c>.conf`;
//! `/usr/etc/keylime/<c>.conf.d/*.conf` (sorted by name); `/etc/keylime/<c>.conf`;
//! `/etc/keylime/<c>.conf.d/*.conf`; the environment (`KEYLIME_DIR`, then
//! `KEYLIME_<C>_<OPTION>`); command-line flags. A config file given with `--config` (or
//! `KEYLIME_<C>_CONFIG`) replaces all the layered files. Keys sit at top level or under `[<c>]`.
//!
//! Every option is declared once, in one list per component (`components.rs`): its name,
//! Rust type, [`Kind`], default and description make both the typed struct's field and the
//! [`OptionSpec`] that drives parsing, `--print-config`, the default config files, the man pages
//! and `kctl config convert`. The loader checks each value where it is read, so an error names
//! the file, variable or flag it came from, the key and the value. The checked values then
//! deserialize into the typed config struct. The file roots and the environment are inputs ([`Sources`]), never read implicitly
//! except by [`Sources::system`].

mod args;
mod components;
mod sample;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

pub use args::ConfigArgs;
pub use components::{
    AgentConfig, AgentUuid, LogFormat, RegistrarConfig, TenantConfig, VerifierConfig,
};
pub use sample::sample;
pub use value::{Default, Kind, OptionSpec, is_uuid, parse_str};

/// The variable naming a directory that stands in for `/` when looking up `/usr/etc/keylime`
/// and `/etc/keylime` (as the daemons' `--config-root`).
pub const CONFIG_ROOT_VAR: &str = "KEYLIME_CONFIG_ROOT";

/// The four configurable programs; each has its own file, drop-in directory and env prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Agent,
    Registrar,
    Verifier,
    Tenant,
}

impl Component {
    /// The lowercase name used in file names and section headers.
    pub fn name(self) -> &'static str {
        match self {
            Component::Agent => "agent",
            Component::Registrar => "registrar",
            Component::Verifier => "verifier",
            Component::Tenant => "tenant",
        }
    }

    /// The environment prefix, `KEYLIME_AGENT_` and so on.
    pub fn env_prefix(self) -> String {
        format!("KEYLIME_{}_", self.name().to_ascii_uppercase())
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the effective value of an option came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("built-in default"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag(flag) => f.write_str(flag),
        }
    }
}

/// Errors from reading and checking configuration. Each names its source and the offending key
/// and value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: cannot list the drop-in directory: {source}", path.display())]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("{}: not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{origin}: unknown option \"{key}\" for the {component}{}", did_you_mean(suggestion))]
    UnknownOption {
        origin: Source,
        key: String,
        component: Component,
        suggestion: Option<&'static str>,
    },
    #[error("{origin}: [{section}] is not a section of the {component} config")]
    UnknownSection { origin: Source, section: String, component: Component },
    #[error("{}: {key} is set both at top level and in [{section}]", path.display())]
    Duplicate { path: PathBuf, key: String, section: String },
    #[error("{origin}: {key} = {value}: {reason}")]
    InvalidValue { origin: Source, key: String, value: String, reason: String },
    #[error("{flag}: expected OPTION=VALUE, got \"{arg}\"")]
    MalformedFlag { flag: String, arg: String },
    #[error("cannot render the config as JSON: {message}")]
    Render { message: String },
    #[error("{component} config: {message}")]
    Build { component: Component, message: String },
}

/// A command-line setting of one option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// The option name, as in the config file (`registrar_port`).
    pub option: String,
    pub value: String,
    /// How errors name it (`--registrar-port`, `--set`).
    pub name: String,
}

impl Flag {
    /// A dedicated flag: `Flag::new("tls_dir", d)` is named `--tls-dir` in errors.
    pub fn new(option: &str, value: impl Into<String>) -> Self {
        Flag {
            option: option.to_owned(),
            value: value.into(),
            name: format!("--{}", option.replace('_', "-")),
        }
    }

    /// A generic `--set OPTION=VALUE` argument.
    pub fn parse_set(arg: &str) -> Result<Self, ConfigError> {
        match arg.split_once('=') {
            Some((option, value)) if !option.trim().is_empty() => Ok(Flag {
                option: option.trim().to_owned(),
                value: value.to_owned(),
                name: "--set".to_owned(),
            }),
            _ => Err(ConfigError::MalformedFlag { flag: "--set".to_owned(), arg: arg.to_owned() }),
        }
    }
}

/// Everything the loader reads: file roots, environment, `--config`, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// Directories that hold a `keylime/` directory, lowest precedence first.
    pub roots: Vec<PathBuf>,
    /// Environment variables; only `KEYLIME_*` ones are looked at.
    pub env: BTreeMap<String, String>,
    /// Replaces the layered files when set.
    pub config_file: Option<PathBuf>,
    /// Command-line settings, applied in order.
    pub flags: Vec<Flag>,
}

impl Sources {
    /// The system roots `/usr/etc` and `/etc`, with no environment and no flags.
    pub fn new() -> Self {
        Sources {
            roots: vec![PathBuf::from("/usr/etc"), PathBuf::from("/etc")],
            env: BTreeMap::new(),
            config_file: None,
            flags: Vec::new(),
        }
    }

    /// `/usr/etc` and `/etc` below `root` in place of `/`: an installed tree that is not the
    /// running system (a package build root, a test).
    pub fn rooted(root: &Path) -> Self {
        Sources { roots: vec![root.join("usr/etc"), root.join("etc")], ..Sources::new() }
    }

    /// The system roots (below `KEYLIME_CONFIG_ROOT` when set) and this process's `KEYLIME_*`
    /// environment variables.
    pub fn system() -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.into_string().ok()?;
                k.starts_with("KEYLIME_").then(|| (k, v.to_string_lossy().into_owned()))
            })
            .collect();
        let roots = match std::env::var_os(CONFIG_ROOT_VAR) {
            Some(root) if !root.is_empty() => Sources::rooted(Path::new(&root)).roots,
            _ => Sources::new().roots,
        };
        Sources { env, roots, ..Sources::new() }
    }
}

impl std::default::Default for Sources {
    fn default() -> Self {
        Sources::new()
    }
}

/// A typed component config whose options are described by a table.
pub trait ComponentConfig: DeserializeOwned + Serialize {
    const COMPONENT: Component;
    /// Every option this component accepts, with its kind and default.
    fn options() -> Vec<OptionSpec>;
}

/// A loaded config and the source of each of its values.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub config: T,
    pub origins: BTreeMap<String, Source>,
}

impl<T: Serialize> Loaded<T> {
    /// The effective config as pretty JSON, for `--print-config`.
    pub fn to_json(&self) -> Result<String, ConfigError> {
        print_json(&self.config)
    }
}

/// Options whose values are secrets: `--print-config` shows that they are set, never what
/// they are (its output ends up in bug reports and support tickets).
pub const SECRET_OPTIONS: &[&str] = &["webhook_secret"];

/// URL options whose path or query may carry a token (chat webhooks put one there):
/// `--print-config` shows their scheme and host only.
pub const URLS_WITH_SECRET_PATHS: &[&str] = &["webhook_url"];

/// URL options that may carry a password (`postgresql://user:password@host/db`, or a
/// `password=` query parameter): `--print-config` shows them with the password masked.
pub const URLS_WITH_PASSWORDS: &[&str] = &["database_url"];

/// `url` with the password of its user info and of a `password=` parameter masked. Where the
/// password ends cannot always be told as the client library would tell it, so this masks more
/// rather than less: the user info runs to the last `@`, parameter names are compared
/// percent-decoded, and a `key=value` connection string that mentions a password is not shown.
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.to_ascii_lowercase().contains("password") {
            MASKED.to_owned()
        } else {
            url.to_owned()
        };
    };
    let (user_info, after) = match rest.rsplit_once('@') {
        Some((user_info, after)) => (Some(user_info), after),
        None => (None, rest),
    };
    let user_info = match user_info {
        Some(info) => match info.split_once(':') {
            Some((user, _)) => format!("{user}:{MASKED}@"),
            None => format!("{info}@"),
        },
        None => String::new(),
    };
    let after = match after.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| {
                    let name = param.split_once('=').map_or(param, |(name, _)| name);
                    if percent_decoded(name).eq_ignore_ascii_case("password") {
                        format!("{name}={MASKED}")
                    } else {
                        param.to_owned()
                    }
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => after.to_owned(),
    };
    format!("{scheme}://{user_info}{after}")
}

/// `text` with its `%XX` escapes decoded (others left as they are).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `scheme://host[:port]` of `url`, the rest replaced by a note that it is not shown.
fn mask_url_path(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return MASKED.to_owned() };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Credentials in the authority are secret too.
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.len() == rest.len() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/<path not shown>")
    }
}

/// What `--print-config` shows in place of a secret that is set.
pub const MASKED: &str = "<set; not shown>";

/// A config as pretty JSON, for `--print-config`, with [`SECRET_OPTIONS`] masked.
pub fn print_json<T: Serialize>(config: &T) -> Result<String, ConfigError> {
    let render = |e: serde_json::Error| ConfigError::Render { message: e.to_string() };
    let mut value = serde_json::to_value(config).map_err(render)?;
    if let Some(map) = value.as_object_mut() {
        for key in SECRET_OPTIONS {
            if let Some(v) = map.get_mut(*key).filter(|v| !v.is_null()) {
                *v = Json::String(MASKED.to_owned());
            }
        }
        for key in URLS_WITH_SECRET_PATHS {
            if let Some(Json::String(url)) = map.get_mut(*key) {
                *url = mask_url_path(url);
            }
        }
        for key in URLS_WITH_PASSWORDS {
            if let Some(Json::String(url)) = map.get_mut(*key) {
                *url = mask_url_password(url);
            }
        }
    }
    serde_json::to_string_pretty(&value).map_err(render)
}

struct Setting {
    value: Json,
    origin: Source,
}

/// The settings gathered so far, later layers overwriting earlier ones.
struct Layers {
    component: Component,
    specs: Vec<OptionSpec>,
    settings: BTreeMap<&'static str, Setting>,
}

impl Layers {
    /// Checks and records one value; `shown` is the value as the error message quotes it.
    fn set(
        &mut self,
        key: &str,
        origin: Source,
        shown: impl fmt::Display,
        parse: impl FnOnce(&OptionSpec) -> Result<Json, String>,
    ) -> Result<(), ConfigError> {
        let Some(spec) = self.specs.iter().find(|s| s.name == key) else {
            return Err(unknown(origin, key.to_owned(), self.component, &self.specs));
        };
        let value = parse(spec).map_err(|reason| ConfigError::InvalidValue {
            origin: origin.clone(),
            key: key.to_owned(),
            value: shown.to_string(),
            reason,
        })?;
        self.settings.insert(spec.name, Setting { value, origin });
        Ok(())
    }
}

/// Loads and checks the config of component `T` from `sources`.
/// The built-in defaults of `T`: no files, no environment, no flags (tests and benchmarks start
/// from these and change what they need).
pub fn defaults<T: ComponentConfig>() -> Result<T, ConfigError> {
    let sources = Sources { roots: Vec::new(), ..Sources::new() };
    load::<T>(&sources).map(|loaded| loaded.config)
}

pub fn load<T: ComponentConfig>(sources: &Sources) -> Result<Loaded<T>, ConfigError> {
    let component = T::COMPONENT;
    let mut layers = Layers { component, specs: T::options(), settings: BTreeMap::new() };

    let defaults: Vec<(&'static str, &'static str)> = layers
        .specs
        .iter()
        .filter_map(|spec| match spec.default {
            Default::Value(raw) => Some((spec.name, raw)),
            _ => None,
        })
        .collect();
    for (key, raw) in defaults {
        layers.set(key, Source::Default, Quoted(raw), |spec| value::parse_str(spec, raw))?;
    }

    let prefix = component.env_prefix();
    let config_var = format!("{prefix}CONFIG");
    let config_file =
        sources.config_file.clone().or_else(|| sources.env.get(&config_var).map(PathBuf::from));
    for path in config_files(component, sources, config_file.as_deref())? {
        let table = read_table(&path)?;
        for (key, raw) in file_entries(component, &path, &table)? {
            let origin = Source::File(path.clone());
            layers.set(&key, origin, raw, |spec| value::parse_toml(spec, raw))?;
        }
    }

    // KEYLIME_DIR first, so that the component's own KEYLIME_<C>_KEYLIME_DIR wins over it.
    let general =
        sources.env.get_key_value("KEYLIME_DIR").map(|(var, raw)| (var, "keylime_dir", raw));
    let specific = sources
        .env
        .iter()
        .filter(|(var, _)| **var != config_var)
        .filter_map(|(var, raw)| var.strip_prefix(&prefix).map(|option| (var, option, raw)));
    for (var, option, raw) in general.into_iter().chain(specific) {
        let key = option.to_ascii_lowercase();
        let origin = Source::Env(var.clone());
        layers.set(&key, origin, Quoted(raw), |spec| value::parse_str(spec, raw))?;
    }

    for flag in &sources.flags {
        let origin = Source::Flag(flag.name.clone());
        let raw = flag.value.as_str();
        layers.set(&flag.option, origin, Quoted(raw), |spec| value::parse_str(spec, raw))?;
    }

    let Layers { specs, mut settings, .. } = layers;
    let keylime_dir = settings
        .get("keylime_dir")
        .and_then(|s| s.value.as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/keylime"));
    for spec in &specs {
        if let Default::UnderKeylimeDir(sub) = spec.default
            && !settings.contains_key(spec.name)
        {
            let path = keylime_dir.join(sub).to_string_lossy().into_owned();
            settings
                .insert(spec.name, Setting { value: Json::String(path), origin: Source::Default });
        }
    }

    let origins = settings.iter().map(|(k, s)| ((*k).to_owned(), s.origin.clone())).collect();
    let object: serde_json::Map<String, Json> =
        settings.into_iter().map(|(k, s)| (k.to_owned(), s.value)).collect();
    let config = serde_json::from_value(Json::Object(object))
        .map_err(|e| ConfigError::Build { component, message: e.to_string() })?;
    Ok(Loaded { config, origins })
}

fn did_you_mean(suggestion: &Option<&'static str>) -> String {
    suggestion.map(|s| format!(" (did you mean \"{s}\"?)")).unwrap_or_default()
}

fn unknown(origin: Source, key: String, component: Component, specs: &[OptionSpec]) -> ConfigError {
    let suggestion = specs
        .iter()
        .map(|spec| (edit_distance(&key, spec.name), spec.name))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, name)| name);
    ConfigError::UnknownOption { origin, key, component, suggestion }
}

/// Levenshtein distance, for suggesting the option a typo meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Quotes a raw string the way TOML would show it, for error messages.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The files to read, lowest precedence first.
fn config_files(
    component: Component,
    sources: &Sources,
    config_file: Option<&Path>,
) -> Result<Vec<PathBuf>, ConfigError> {
    if let Some(path) = config_file {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for root in &sources.roots {
        let base = root.join("keylime");
        let main = base.join(format!("{}.conf", component.name()));
        let probe = |path: &Path| {
            crate::fs::probe(path)
                .map_err(|source| ConfigError::Read { path: path.to_owned(), source })
        };
        if probe(&main)?.is_some_and(|m| m.is_file()) {
            files.push(main);
        }
        let dropins = base.join(format!("{}.conf.d", component.name()));
        if !probe(&dropins)?.is_some_and(|m| m.is_dir()) {
            continue;
        }
        let entries = std::fs::read_dir(&dropins)
            .map_err(|source| ConfigError::ReadDir { path: dropins.clone(), source })?;
        let mut found = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|source| ConfigError::ReadDir { path: dropins.clone(), source })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "conf")
                && probe(&path)?.is_some_and(|m| m.is_file())
            {
                found.push(path);
            }
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

/// The key/value pairs of one file: its top-level keys and those under `[<component>]`.
fn file_entries<'t>(
    component: Component,
    path: &Path,
    table: &'t toml::Table,
) -> Result<Vec<(String, &'t toml::Value)>, ConfigError> {
    let mut entries: Vec<(String, &toml::Value)> = Vec::new();
    let mut section = None;
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) if key == component.name() => section = Some(inner),
            toml::Value::Table(_) => {
                return Err(ConfigError::UnknownSection {
                    origin: Source::File(path.to_owned()),
                    section: key.clone(),
                    component,
                });
            }
            _ => entries.push((key.clone(), value)),
        }
    }
    if let Some(inner) = section {
        for (key, value) in inner {
            if entries.iter().any(|(k, _)| k == key) {
                return Err(ConfigError::Duplicate {
                    path: path.to_owned(),
                    key: key.clone(),
                    section: component.name().to_owned(),
                });
            }
            entries.push((key.clone(), value));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests;
