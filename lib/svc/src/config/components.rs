//! The typed configs of the agent, registrar, verifier and tenant, and their option tables.
//!
//! Each option is declared once, in a `component_config!` list: its name (the struct field),
//! its Rust type, its [`Kind`] and default, and its description. The macro makes the struct
//! field (documented with the description) and the [`OptionSpec`] that parsing,
//! `--print-config`, the default config files, the man pages and `kctl config convert` read.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::value::{Kind, OptionSpec};
use super::{Component, ComponentConfig};
use crate::tls::TlsDir;

const HASH_ALGS: &[&str] = &["sha1", "sha256", "sha384", "sha512", "sm3_256"];
const SIGNING_ALGS: &[&str] = &["rsassa", "rsapss", "ecdsa", "ecschnorr", "sm2"];
const ENCRYPTION_ALGS: &[&str] = &["rsa", "ecc"];
const LOG_FORMATS: &[&str] = &["text", "json"];

/// Log output format (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How the agent picks its id (`uuid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AgentUuid {
    /// A fixed UUID, stored lowercase.
    Fixed(String),
    /// A random UUID at each start.
    Generate,
    /// The lowercase hex SHA-256 of the EK public key.
    HashEk,
}

impl TryFrom<String> for AgentUuid {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "generate" => Ok(AgentUuid::Generate),
            "hash_ek" => Ok(AgentUuid::HashEk),
            _ if super::is_uuid(&s) => Ok(AgentUuid::Fixed(s.to_ascii_lowercase())),
            _ => Err(format!("\"{s}\" is not a UUID, \"generate\" or \"hash_ek\"")),
        }
    }
}

impl From<AgentUuid> for String {
    fn from(u: AgentUuid) -> String {
        match u {
            AgentUuid::Fixed(s) => s,
            AgentUuid::Generate => "generate".to_owned(),
            AgentUuid::HashEk => "hash_ek".to_owned(),
        }
    }
}

/// Durations as (possibly fractional) seconds, in config values and in `--print-config`.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// Declares a component's typed config and its option table from one list. Each entry
///
/// ```text
/// name: Type = value(KIND, "default") | under_keylime_dir(KIND, "path") | optional(KIND)
///     [with "serde_module"], "description";
/// ```
///
/// becomes the field `pub name: Type`, documented with the description (and serialized with
/// `serde_module` when given), and the [`OptionSpec`] named `name` with that kind, default and
/// description, in the order of the list.
macro_rules! component_config {
    (@spec value $field:ident ($($arg:expr),*)) => {
        OptionSpec::new(stringify!($field), $($arg),*)
    };
    (@spec $ctor:ident $field:ident ($($arg:expr),*)) => {
        OptionSpec::$ctor(stringify!($field), $($arg),*)
    };
    (
        $(#[$meta:meta])*
        $name:ident: $component:expr;
        $(
            $field:ident: $ty:ty = $ctor:ident($($arg:expr),*) $(with $with:literal)?,
                $doc:literal;
        )*
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(
                #[doc = $doc]
                $(#[serde(with = $with)])?
                pub $field: $ty,
            )*
        }

        impl ComponentConfig for $name {
            const COMPONENT: Component = $component;

            fn options() -> Vec<OptionSpec> {
                vec![$(component_config!(@spec $ctor $field ($($arg),*)).doc($doc)),*]
            }
        }
    };
}

/// [`component_config!`] with the options of every program (the tenant included) first, after
/// the entries in brackets, if any; `tls_dir` is the default of `tls_dir`.
macro_rules! client_config {
    ([$($first:tt)*] $(#[$meta:meta])* $name:ident: $component:expr, tls_dir $tls_dir:literal;
        $($rest:tt)*) => {
        component_config! {
            $(#[$meta])*
            $name: $component;
            $($first)*
            keylime_dir: PathBuf = value(Kind::Path, "/var/lib/keylime"),
                "State directory: databases, the generated CA (cv_ca/), agent key material. The environment variable KEYLIME_DIR overrides it.";
            tls_dir: TlsDir = value(Kind::TlsDir, $tls_dir),
                "TLS files: \"generate\" creates a CA and certificates in <keylime_dir>/cv_ca on first start, \"default\" reads them from there, any other value is a directory holding cacert.crt, server-cert.crt, server-private.pem, client-cert.crt and client-private.pem.";
            log_format: LogFormat = value(Kind::Choice(LOG_FORMATS), "text"),
                "Log lines as \"text\" or \"json\" (both journald-friendly).";
            log_level: String = value(Kind::Text, "info"),
                "A tracing filter (\"info\", \"debug\", \"kl_verifier=debug\"); RUST_LOG overrides it.";
            $($rest)*
        }
    };
    ($(#[$meta:meta])* $name:ident: $component:expr, tls_dir $tls_dir:literal; $($rest:tt)*) => {
        client_config! { [] $(#[$meta])* $name: $component, tls_dir $tls_dir; $($rest)* }
    };
}

/// [`client_config!`] with the options every daemon has first: `ip`, and `port`, whose default
/// is `port`.
macro_rules! daemon_config {
    ($(#[$meta:meta])* $name:ident: $component:expr, port $port:literal, tls_dir $tls_dir:literal;
        $($rest:tt)*) => {
        client_config! {
            [
                ip: IpAddr = value(Kind::Ip, "127.0.0.1"),
                    "Address to listen on; 0.0.0.0 or :: for every address (the generated server certificate then names this host).";
                port: u16 = value(Kind::Port, $port),
                    "TCP port to listen on.";
            ]
            $(#[$meta])*
            $name: $component, tls_dir $tls_dir;
            $($rest)*
        }
    };
}

daemon_config! {
    /// `keylime_agent` settings.
    AgentConfig: Component::Agent, port "9002", tls_dir "default";
    uuid: AgentUuid = value(Kind::AgentUuid, "hash_ek"),
        "Agent id: a UUID, \"generate\" (a new random one at each start) or \"hash_ek\" (SHA-256 of the EK public key).";
    contact_ip: Option<String> = optional(Kind::Host),
        "Address the verifier and kctl reach this agent at; unset: ip.";
    contact_port: Option<u16> = optional(Kind::Port),
        "Port the verifier and kctl reach this agent at; unset: port.";
    registrar_ip: String = value(Kind::Host, "127.0.0.1"),
        "Registrar host name or IP address.";
    registrar_port: u16 = value(Kind::Port, "8891"),
        "Registrar port.";
    tcti: String = value(Kind::Tcti, "device:/dev/tpmrm0"),
        "The TPM: device:/dev/tpmrm0 (the kernel resource manager), swtpm:host=H,port=P, mssim:..., tabrmd:...";
    trusted_client_ca: PathBuf = under_keylime_dir(Kind::Path, "cv_ca/cacert.crt"),
        "CA certificate (PEM) that clients (verifier, kctl) must chain to.";
    agent_data_path: PathBuf = under_keylime_dir(Kind::Path, "agent"),
        "Agent key material: AK, identity key and certificate.";
    ima_ml_path: PathBuf = value(Kind::Path, "/sys/kernel/security/ima/ascii_runtime_measurements"),
        "The IMA measurement list.";
    measuredboot_ml_path: PathBuf = value(Kind::Path, "/sys/kernel/security/tpm0/binary_bios_measurements"),
        "The UEFI event log.";
    revocation_notification_ip: Vec<String> = value(Kind::HostList, "127.0.0.1"),
        "Verifier addresses whose revocation notices are accepted (they are signature-checked as well); \"*\" accepts any.";
    revocation_actions: Vec<String> = value(Kind::TextList, ""),
        "Executables in revocation_actions_dir to run on a revocation notice, each with the path of the notice JSON.";
    revocation_actions_dir: PathBuf = value(Kind::Path, "/usr/libexec/keylime"),
        "Directory of the revocation_actions executables.";
    allow_payload_revocation_actions: bool = value(Kind::Bool, "true"),
        "Whether revocation actions shipped in a payload may run.";
    payload_script: String = value(Kind::Text, "autorun.sh"),
        "Script in the payload run once the machine is attested.";
    payload_script_timeout: Duration = value(Kind::Seconds, "300") with "seconds",
        "Seconds the payload script may run before it is killed.";
    secure_dir: PathBuf = under_keylime_dir(Kind::Path, "secure"),
        "Where payloads are extracted; a tmpfs is mounted on it when secure_size > 0 and the agent starts as root.";
    secure_size: u64 = value(Kind::Count, "67108864"),
        "Bytes of the tmpfs mounted on secure_dir (0: no tmpfs, a 0700 directory).";
    tpm_hash_alg: String = value(Kind::Choice(HASH_ALGS), "sha256"),
        "PCR bank and hash algorithm of quotes.";
    tpm_encryption_alg: String = value(Kind::Choice(ENCRYPTION_ALGS), "rsa"),
        "EK algorithm.";
    tpm_signing_alg: String = value(Kind::Choice(SIGNING_ALGS), "rsassa"),
        "AK signing scheme.";
    ima_max_entries: u64 = value(Kind::Count, "10000"),
        "Most IMA entries one quote reply carries; the verifier asks again for the rest.";
    metrics_ip: IpAddr = value(Kind::Ip, "127.0.0.1"),
        "Address of the Prometheus metrics endpoint.";
    metrics_port: Option<u16> = optional(Kind::Port),
        "Port of the Prometheus metrics endpoint; unset: no endpoint.";
    run_as: Option<String> = optional(Kind::Text),
        "USER:GROUP the agent switches to once the TPM is open and the secure directory mounted (it must start as root for that); unset: keep the starting user.";
}

daemon_config! {
    /// `keylime_registrar` settings.
    RegistrarConfig: Component::Registrar, port "8891", tls_dir "default";
    tpm_cert_store: PathBuf = under_keylime_dir(Kind::Path, "tpm_cert_store"),
        "Directory of TPM vendor CA certificates (PEM or DER) that EK certificates must chain to; SIGHUP reloads it.";
    require_ek_cert: bool = value(Kind::Bool, "true"),
        "Refuse agents whose EK has no certificate chaining to tpm_cert_store.";
    cert_subject_alternative_names: Vec<String> = value(Kind::TextList, ""),
        "Extra DNS names and IP addresses for the generated server certificate (it always names localhost, 127.0.0.1, ::1, this host's name and ip, or this host's addresses when ip is a wildcard).";
    registration_rate_limit: u64 = value(Kind::Count, "60"),
        "Registrations (Register and Activate) allowed per source address per minute.";
    metrics_ip: IpAddr = value(Kind::Ip, "127.0.0.1"),
        "Address of the Prometheus metrics endpoint.";
    metrics_port: Option<u16> = optional(Kind::Port),
        "Port of the Prometheus metrics endpoint; unset: no endpoint.";
    database_url: Option<String> = optional(Kind::Text),
        "PostgreSQL database holding the state, as postgresql://user@host:port/dbname (a Unix socket directory as ?host=/run/postgresql); unset or empty: the redb file under keylime_dir. Connections are not encrypted, so the server must be on a loopback address or a Unix socket.";
    database_password_file: Option<PathBuf> = optional(Kind::Path),
        "File holding the password of database_url's user (one line), so that the URL need not carry it; unset: the URL's password, if any.";
}

daemon_config! {
    /// `keylime_verifier` settings.
    VerifierConfig: Component::Verifier, port "8881", tls_dir "generate";
    registrar_ip: String = value(Kind::Host, "127.0.0.1"),
        "Registrar host name or IP address.";
    registrar_port: u16 = value(Kind::Port, "8891"),
        "Registrar port.";
    quote_interval: Duration = value(Kind::Seconds, "2") with "seconds",
        "Seconds between two quotes of one agent.";
    retry_interval: Duration = value(Kind::Seconds, "2") with "seconds",
        "Seconds before retrying an agent that did not answer (doubled each time with exponential_backoff).";
    max_retries: u64 = value(Kind::Count, "5"),
        "Failed attempts before an agent is marked unreachable.";
    exponential_backoff: bool = value(Kind::Bool, "true"),
        "Double retry_interval after each failed attempt.";
    request_timeout: Duration = value(Kind::Seconds, "60") with "seconds",
        "Seconds a call to another component may take.";
    webhook_url: Option<String> = optional(Kind::Url),
        "http:// or https:// URL that receives each event as JSON; unset: no webhook.";
    webhook_secret: Option<String> = optional(Kind::Text),
        "Key of the X-Keylime-Signature HMAC-SHA256 header of webhook calls.";
    webhook_ca: Option<PathBuf> = optional(Kind::Path),
        "CA certificates (PEM) an https:// webhook receiver must chain to; unset: the system trust store and the deployment CA.";
    accept_tpm_hash_algs: Vec<String> = value(Kind::ChoiceList(HASH_ALGS), "sha512,sha384,sha256"),
        "Hash algorithms accepted in quotes.";
    accept_tpm_signing_algs: Vec<String> = value(Kind::ChoiceList(SIGNING_ALGS), "rsassa,rsapss,ecdsa,ecschnorr"),
        "Signing schemes accepted in quotes.";
    cert_subject_alternative_names: Vec<String> = value(Kind::TextList, ""),
        "Extra DNS names and IP addresses for the generated server certificate (it always names localhost, 127.0.0.1, ::1, this host's name and ip, or this host's addresses when ip is a wildcard).";
    history_max_age: Duration = value(Kind::Seconds, "2592000") with "seconds",
        "Seconds attestation history and events are kept.";
    history_max_entries: u64 = value(Kind::Count, "1000"),
        "Attestation records kept per agent.";
    metrics_ip: IpAddr = value(Kind::Ip, "127.0.0.1"),
        "Address of the Prometheus metrics endpoint.";
    metrics_port: Option<u16> = optional(Kind::Port),
        "Port of the Prometheus metrics endpoint; unset: no endpoint.";
    database_url: Option<String> = optional(Kind::Text),
        "PostgreSQL database holding the state, as postgresql://user@host:port/dbname (a Unix socket directory as ?host=/run/postgresql); unset or empty: the redb file under keylime_dir. Connections are not encrypted, so the server must be on a loopback address or a Unix socket.";
    database_password_file: Option<PathBuf> = optional(Kind::Path),
        "File holding the password of database_url's user (one line), so that the URL need not carry it; unset: the URL's password, if any.";
    id: Option<String> = optional(Kind::Text),
        "This verifier's name among the replicas sharing database_url (the holder of its agent leases); unset: this host's name and port, as host:port.";
    agent_lease_seconds: Duration = value(Kind::Seconds, "10") with "seconds",
        "Seconds an agent stays leased to a replica sharing database_url without a renewal (renewed every sixth of it); a dead replica's agents are attested by another within this time, a sixth of it and two quote intervals.";
}

client_config! {
    /// `kctl` / `keylime_tenant` settings.
    TenantConfig: Component::Tenant, tls_dir "default";
    verifier_ip: String = value(Kind::Host, "127.0.0.1"),
        "Verifier host name or IP address.";
    verifier_port: u16 = value(Kind::Port, "8881"),
        "Verifier port.";
    registrar_ip: String = value(Kind::Host, "127.0.0.1"),
        "Registrar host name or IP address.";
    registrar_port: u16 = value(Kind::Port, "8891"),
        "Registrar port.";
    request_timeout: Duration = value(Kind::Seconds, "60") with "seconds",
        "Seconds a call to another component may take.";
}
