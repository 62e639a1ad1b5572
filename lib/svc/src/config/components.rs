//! The typed configs of the agent, registrar, verifier and tenant, and their option tables.
//! Each struct has exactly the fields its table lists (a test checks this).

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

/// Options every daemon has: `keylime_dir`, `ip`, `port`, `tls_dir`, `log_format`, `log_level`.
fn daemon_options(port: &'static str, tls_dir: &'static str) -> Vec<OptionSpec> {
    let mut options = vec![
        OptionSpec::new("ip", Kind::Ip, "127.0.0.1")
.doc("Address to listen on; 0.0.0.0 or :: for every address (the generated server certificate then names this host)."),
        OptionSpec::new("port", Kind::Port, port)
.doc("TCP port to listen on."),
    ];
    options.extend(client_options(tls_dir));
    options
}

/// Options of every program, the tenant included.
fn client_options(tls_dir: &'static str) -> Vec<OptionSpec> {
    vec![
        OptionSpec::new("keylime_dir", Kind::Path, "/var/lib/keylime")
.doc("State directory: databases, the generated CA (cv_ca/), agent key material. The environment variable KEYLIME_DIR overrides it."),
        OptionSpec::new("tls_dir", Kind::TlsDir, tls_dir)
.doc("TLS files: \"generate\" creates a CA and certificates in <keylime_dir>/cv_ca on first start, \"default\" reads them from there, any other value is a directory holding cacert.crt, server-cert.crt, server-private.pem, client-cert.crt and client-private.pem."),
        OptionSpec::new("log_format", Kind::Choice(LOG_FORMATS), "text")
.doc("Log lines as \"text\" or \"json\" (both journald-friendly)."),
        OptionSpec::new("log_level", Kind::Text, "info")
.doc("A tracing filter (\"info\", \"debug\", \"kl_verifier=debug\"); RUST_LOG overrides it."),
    ]
}

/// `keylime_agent` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub keylime_dir: PathBuf,
    pub ip: IpAddr,
    pub port: u16,
    pub tls_dir: TlsDir,
    pub log_format: LogFormat,
    /// A `tracing` filter (`info`, `kl_agent=debug`); `RUST_LOG` overrides it.
    pub log_level: String,
    pub uuid: AgentUuid,
    /// Address the verifier and kctl reach the agent at; `ip` when unset.
    pub contact_ip: Option<String>,
    /// Port the verifier and kctl reach the agent at; `port` when unset.
    pub contact_port: Option<u16>,
    pub registrar_ip: String,
    pub registrar_port: u16,
    pub tcti: String,
    /// CA that client certificates (verifier, kctl) must chain to.
    pub trusted_client_ca: PathBuf,
    /// Agent key material (identity key, certificate, payload).
    pub agent_data_path: PathBuf,
    pub ima_ml_path: PathBuf,
    pub measuredboot_ml_path: PathBuf,
    /// The verifier addresses whose revocation notices are accepted (and signature-checked):
    /// host names or IP addresses, one per verifier replica; `*` accepts any address.
    pub revocation_notification_ip: Vec<String>,
    pub revocation_actions: Vec<String>,
    pub revocation_actions_dir: PathBuf,
    /// Whether revocation actions shipped in a payload may run.
    pub allow_payload_revocation_actions: bool,
    pub payload_script: String,
    /// How long the payload script may run before it is killed.
    #[serde(with = "seconds")]
    pub payload_script_timeout: Duration,
    /// Where payloads are extracted (`<keylime_dir>/secure`).
    pub secure_dir: PathBuf,
    /// Bytes of the tmpfs mounted on `secure_dir` (0: no tmpfs, a 0700 directory).
    pub secure_size: u64,
    pub tpm_hash_alg: String,
    pub tpm_encryption_alg: String,
    pub tpm_signing_alg: String,
    /// Most IMA entries one quote reply carries; the verifier asks again for the rest.
    pub ima_max_entries: u64,
    /// Address and port of the Prometheus endpoint; no port, no endpoint.
    pub metrics_ip: IpAddr,
    pub metrics_port: Option<u16>,
    /// `user:group` to switch to after start-up (TPM open, secure directory mounted).
    pub run_as: Option<String>,
}

impl ComponentConfig for AgentConfig {
    const COMPONENT: Component = Component::Agent;

    fn options() -> Vec<OptionSpec> {
        let mut options = daemon_options("9002", "default");
        options.extend([
            OptionSpec::new("uuid", Kind::AgentUuid, "hash_ek")
.doc("Agent id: a UUID, \"generate\" (a new random one at each start) or \"hash_ek\" (SHA-256 of the EK public key)."),
            OptionSpec::optional("contact_ip", Kind::Host)
.doc("Address the verifier and kctl reach this agent at; unset: ip."),
            OptionSpec::optional("contact_port", Kind::Port)
.doc("Port the verifier and kctl reach this agent at; unset: port."),
            OptionSpec::new("registrar_ip", Kind::Host, "127.0.0.1")
.doc("Registrar host name or IP address."),
            OptionSpec::new("registrar_port", Kind::Port, "8891")
.doc("Registrar port."),
            OptionSpec::new("tcti", Kind::Tcti, "device:/dev/tpmrm0")
.doc("The TPM: device:/dev/tpmrm0 (the kernel resource manager), swtpm:host=H,port=P, mssim:..., tabrmd:..."),
            OptionSpec::under_keylime_dir("trusted_client_ca", Kind::Path, "cv_ca/cacert.crt")
.doc("CA certificate (PEM) that clients (verifier, kctl) must chain to."),
            OptionSpec::under_keylime_dir("agent_data_path", Kind::Path, "agent")
.doc("Agent key material: AK, identity key and certificate."),
            OptionSpec::new(
                "ima_ml_path",
                Kind::Path,
                "/sys/kernel/security/ima/ascii_runtime_measurements",
            )
.doc("The IMA measurement list."),
            OptionSpec::new(
                "measuredboot_ml_path",
                Kind::Path,
                "/sys/kernel/security/tpm0/binary_bios_measurements",
            )
.doc("The UEFI event log."),
            OptionSpec::new("revocation_notification_ip", Kind::HostList, "127.0.0.1")
.doc("Verifier addresses whose revocation notices are accepted (they are signature-checked as well); \"*\" accepts any."),
            OptionSpec::new("revocation_actions", Kind::TextList, "")
.doc("Executables in revocation_actions_dir to run on a revocation notice, each with the path of the notice JSON."),
            OptionSpec::new("revocation_actions_dir", Kind::Path, "/usr/libexec/keylime")
.doc("Directory of the revocation_actions executables."),
            OptionSpec::new("allow_payload_revocation_actions", Kind::Bool, "true")
.doc("Whether revocation actions shipped in a payload may run."),
            OptionSpec::new("payload_script", Kind::Text, "autorun.sh")
.doc("Script in the payload run once the machine is attested."),
            OptionSpec::new("payload_script_timeout", Kind::Seconds, "300")
.doc("Seconds the payload script may run before it is killed."),
            OptionSpec::under_keylime_dir("secure_dir", Kind::Path, "secure")
.doc("Where payloads are extracted; a tmpfs is mounted on it when secure_size > 0 and the agent starts as root."),
            OptionSpec::new("secure_size", Kind::Count, "67108864")
.doc("Bytes of the tmpfs mounted on secure_dir (0: no tmpfs, a 0700 directory)."),
            OptionSpec::new("tpm_hash_alg", Kind::Choice(HASH_ALGS), "sha256")
.doc("PCR bank and hash algorithm of quotes."),
            OptionSpec::new("tpm_encryption_alg", Kind::Choice(ENCRYPTION_ALGS), "rsa")
.doc("EK algorithm."),
            OptionSpec::new("tpm_signing_alg", Kind::Choice(SIGNING_ALGS), "rsassa")
.doc("AK signing scheme."),
            OptionSpec::new("ima_max_entries", Kind::Count, "10000")
.doc("Most IMA entries one quote reply carries; the verifier asks again for the rest."),
            OptionSpec::new("metrics_ip", Kind::Ip, "127.0.0.1")
.doc("Address of the Prometheus metrics endpoint."),
            OptionSpec::optional("metrics_port", Kind::Port)
.doc("Port of the Prometheus metrics endpoint; unset: no endpoint."),
            OptionSpec::optional("run_as", Kind::Text)
.doc("USER:GROUP the agent switches to once the TPM is open and the secure directory mounted (it must start as root for that); unset: keep the starting user."),
        ]);
        options
    }
}

/// `keylime_registrar` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarConfig {
    pub keylime_dir: PathBuf,
    pub ip: IpAddr,
    pub port: u16,
    pub tls_dir: TlsDir,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Vendor CA certificates that EK certificates are checked against.
    pub tpm_cert_store: PathBuf,
    pub require_ek_cert: bool,
    /// Extra DNS names and IPs for a generated server certificate.
    pub cert_subject_alternative_names: Vec<String>,
    /// Registrations (Register and Activate) allowed per source address per minute.
    pub registration_rate_limit: u64,
    /// Address and port of the Prometheus endpoint; no port, no endpoint.
    pub metrics_ip: IpAddr,
    pub metrics_port: Option<u16>,
    /// PostgreSQL URL of the state; unset: the redb file under `keylime_dir`.
    pub database_url: Option<String>,
    /// A file holding the database password, so that the URL need not.
    pub database_password_file: Option<PathBuf>,
}

impl ComponentConfig for RegistrarConfig {
    const COMPONENT: Component = Component::Registrar;

    fn options() -> Vec<OptionSpec> {
        let mut options = daemon_options("8891", "default");
        options.extend([
            OptionSpec::under_keylime_dir("tpm_cert_store", Kind::Path, "tpm_cert_store")
.doc("Directory of TPM vendor CA certificates (PEM or DER) that EK certificates must chain to; SIGHUP reloads it."),
            OptionSpec::new("require_ek_cert", Kind::Bool, "true")
.doc("Refuse agents whose EK has no certificate chaining to tpm_cert_store."),
            OptionSpec::new("cert_subject_alternative_names", Kind::TextList, "")
.doc("Extra DNS names and IP addresses for the generated server certificate (it always names localhost, 127.0.0.1, ::1, this host's name and ip, or this host's addresses when ip is a wildcard)."),
            OptionSpec::new("registration_rate_limit", Kind::Count, "60")
.doc("Registrations (Register and Activate) allowed per source address per minute."),
            OptionSpec::new("metrics_ip", Kind::Ip, "127.0.0.1")
.doc("Address of the Prometheus metrics endpoint."),
            OptionSpec::optional("metrics_port", Kind::Port)
.doc("Port of the Prometheus metrics endpoint; unset: no endpoint."),
            OptionSpec::optional("database_url", Kind::Text)
.doc("PostgreSQL database holding the state, as postgresql://user@host:port/dbname (a Unix socket directory as ?host=/run/postgresql); unset or empty: the redb file under keylime_dir. Connections are not encrypted, so the server must be on a loopback address or a Unix socket."),
            OptionSpec::optional("database_password_file", Kind::Path)
.doc("File holding the password of database_url's user (one line), so that the URL need not carry it; unset: the URL's password, if any."),
        ]);
        options
    }
}

/// `keylime_verifier` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierConfig {
    pub keylime_dir: PathBuf,
    pub ip: IpAddr,
    pub port: u16,
    pub tls_dir: TlsDir,
    pub log_format: LogFormat,
    pub log_level: String,
    pub registrar_ip: String,
    pub registrar_port: u16,
    #[serde(with = "seconds")]
    pub quote_interval: Duration,
    #[serde(with = "seconds")]
    pub retry_interval: Duration,
    pub max_retries: u64,
    pub exponential_backoff: bool,
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// CA certificates (PEM) an `https://` webhook receiver must chain to; unset: the
    /// system's trust store and the deployment CA.
    pub webhook_ca: Option<PathBuf>,
    pub accept_tpm_hash_algs: Vec<String>,
    pub accept_tpm_signing_algs: Vec<String>,
    /// Extra DNS names and IPs for the generated server certificate.
    pub cert_subject_alternative_names: Vec<String>,
    /// Attestation history and events older than this are pruned.
    #[serde(with = "seconds")]
    pub history_max_age: Duration,
    /// At most this many attestation records are kept per agent.
    pub history_max_entries: u64,
    /// Address and port of the Prometheus endpoint; no port, no endpoint.
    pub metrics_ip: IpAddr,
    pub metrics_port: Option<u16>,
    /// PostgreSQL URL of the state; unset: the redb file under `keylime_dir`.
    pub database_url: Option<String>,
    /// A file holding the database password, so that the URL need not.
    pub database_password_file: Option<PathBuf>,
}

impl ComponentConfig for VerifierConfig {
    const COMPONENT: Component = Component::Verifier;

    fn options() -> Vec<OptionSpec> {
        let mut options = daemon_options("8881", "generate");
        options.extend([
            OptionSpec::new("registrar_ip", Kind::Host, "127.0.0.1")
.doc("Registrar host name or IP address."),
            OptionSpec::new("registrar_port", Kind::Port, "8891")
.doc("Registrar port."),
            OptionSpec::new("quote_interval", Kind::Seconds, "2")
.doc("Seconds between two quotes of one agent."),
            OptionSpec::new("retry_interval", Kind::Seconds, "2")
.doc("Seconds before retrying an agent that did not answer (doubled each time with exponential_backoff)."),
            OptionSpec::new("max_retries", Kind::Count, "5")
.doc("Failed attempts before an agent is marked unreachable."),
            OptionSpec::new("exponential_backoff", Kind::Bool, "true")
.doc("Double retry_interval after each failed attempt."),
            OptionSpec::new("request_timeout", Kind::Seconds, "60")
.doc("Seconds a call to another component may take."),
            OptionSpec::optional("webhook_url", Kind::Url)
.doc("http:// or https:// URL that receives each event as JSON; unset: no webhook."),
            OptionSpec::optional("webhook_secret", Kind::Text)
.doc("Key of the X-Keylime-Signature HMAC-SHA256 header of webhook calls."),
            OptionSpec::optional("webhook_ca", Kind::Path)
.doc("CA certificates (PEM) an https:// webhook receiver must chain to; unset: the system trust store and the deployment CA."),
            OptionSpec::new(
                "accept_tpm_hash_algs",
                Kind::ChoiceList(HASH_ALGS),
                "sha512,sha384,sha256",
            )
.doc("Hash algorithms accepted in quotes."),
            OptionSpec::new(
                "accept_tpm_signing_algs",
                Kind::ChoiceList(SIGNING_ALGS),
                "rsassa,rsapss,ecdsa,ecschnorr",
            )
.doc("Signing schemes accepted in quotes."),
            OptionSpec::new("cert_subject_alternative_names", Kind::TextList, "")
.doc("Extra DNS names and IP addresses for the generated server certificate (it always names localhost, 127.0.0.1, ::1, this host's name and ip, or this host's addresses when ip is a wildcard)."),
            OptionSpec::new("history_max_age", Kind::Seconds, "2592000")
.doc("Seconds attestation history and events are kept."),
            OptionSpec::new("history_max_entries", Kind::Count, "1000")
.doc("Attestation records kept per agent."),
            OptionSpec::new("metrics_ip", Kind::Ip, "127.0.0.1")
.doc("Address of the Prometheus metrics endpoint."),
            OptionSpec::optional("metrics_port", Kind::Port)
.doc("Port of the Prometheus metrics endpoint; unset: no endpoint."),
            OptionSpec::optional("database_url", Kind::Text)
.doc("PostgreSQL database holding the state, as postgresql://user@host:port/dbname (a Unix socket directory as ?host=/run/postgresql); unset or empty: the redb file under keylime_dir. Connections are not encrypted, so the server must be on a loopback address or a Unix socket."),
            OptionSpec::optional("database_password_file", Kind::Path)
.doc("File holding the password of database_url's user (one line), so that the URL need not carry it; unset: the URL's password, if any."),
        ]);
        options
    }
}

/// `kctl` / `keylime_tenant` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub keylime_dir: PathBuf,
    pub tls_dir: TlsDir,
    pub log_format: LogFormat,
    pub log_level: String,
    pub verifier_ip: String,
    pub verifier_port: u16,
    pub registrar_ip: String,
    pub registrar_port: u16,
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
}

impl ComponentConfig for TenantConfig {
    const COMPONENT: Component = Component::Tenant;

    fn options() -> Vec<OptionSpec> {
        let mut options = client_options("default");
        options.extend([
            OptionSpec::new("verifier_ip", Kind::Host, "127.0.0.1")
                .doc("Verifier host name or IP address."),
            OptionSpec::new("verifier_port", Kind::Port, "8881").doc("Verifier port."),
            OptionSpec::new("registrar_ip", Kind::Host, "127.0.0.1")
                .doc("Registrar host name or IP address."),
            OptionSpec::new("registrar_port", Kind::Port, "8891").doc("Registrar port."),
            OptionSpec::new("request_timeout", Kind::Seconds, "60")
                .doc("Seconds a call to another component may take."),
        ]);
        options
    }
}
