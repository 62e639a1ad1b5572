//! The one table from Keylime 7.x option names to this project's: for each Keylime option of
//! each component, the option that means the same here, or why there is none and what to do
//! instead. `kctl config convert` applies it and docs/migrating-from-keylime.md shows it (a test
//! checks the document against [`markdown`]).

use kl_svc::config::Component;

/// What becomes of one Keylime option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The same setting under this option name; the value is checked against the option's kind
    /// here. Keylime's `default` keeps this project's default.
    Option(&'static str),
    /// A size with an optional `k`/`m`/`g` suffix (Keylime's agent `secure_size`), as bytes.
    Bytes(&'static str),
    /// This project always behaves as Keylime does with one of these values, so there is nothing
    /// to write; any other value has no equivalent, for the reason given.
    Fixed(&'static [&'static str], &'static str),
    /// No equivalent: why, and what to do instead.
    Absent(&'static str),
    /// Meaningless here whatever its value (the version of Keylime's file format): kept out
    /// of the drop-in without a warning.
    Ignored(&'static str),
    /// The verifier's `retry_interval`: the same option, but with `exponential_backoff`
    /// (Keylime's default) Keylime waits `retry_interval ** n` before retry n and this verifier
    /// `retry_interval * 2^(n-1)`. They agree only at 2 (or without backoff); any other value is
    /// reported, not carried over.
    Backoff(&'static str),
    /// Read by Keylime only while the boolean option `flag` (default `default`) is true: nothing
    /// to carry over while it is false; while it is true, no equivalent for the reason given.
    WhenEnabled { flag: &'static str, default: bool, why: &'static str },
}

/// One Keylime option: the section it sits in (Keylime 7.x names; 6.x's `cloud_verifier` and
/// `cloud_agent` read as `verifier` and `agent`) and what it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub component: Component,
    pub section: &'static str,
    pub option: &'static str,
    pub target: Target,
}

/// The Keylime sections each component reads, with the 7.x name they stand for.
pub fn sections(component: Component) -> &'static [(&'static str, &'static str)] {
    match component {
        Component::Verifier => &[
            ("verifier", "verifier"),
            ("cloud_verifier", "verifier"),
            ("revocations", "revocations"),
        ],
        Component::Registrar => &[("registrar", "registrar")],
        Component::Agent => &[("agent", "agent"), ("cloud_agent", "agent")],
        Component::Tenant => &[("tenant", "tenant")],
    }
}

const TLS_FILE: &str = "TLS files have fixed names in tls_dir (cacert.crt, server-cert.crt, \
                        server-private.pem, client-cert.crt, client-private.pem): put yours in a \
                        directory under those names and set tls_dir to it";
const KEY_PASSWORD: &str = "private keys are read unencrypted (mode 0600); decrypt the key into \
                            tls_dir";
const FORMAT_VERSION: &str = "the version of Keylime's file format; TOML needs none";
const DURABLE: &str = "durable attestation is not implemented; attestation history is kept in \
                       the state file (history_max_age, history_max_entries) and streamed by \
                       `kctl events watch` and webhooks";
const PUSH: &str = "push mode is not implemented; agents are attested in pull mode";
const WORKERS: &str = "the daemon is one async process; no worker setting";
const MTLS: &str = "mTLS between verifier, kctl and agent is always on and cannot be turned off";
const SQL: &str = "Keylime's SQL tables are not read: state is kept in redb files under \
    keylime_dir, or in this project's own tables in a PostgreSQL database (database_url = \
    \"postgresql://user@host:port/db\" with database_password_file; see docs/operations.md), \
    where agents are enrolled again";
const SQL_POOL: &str = "the daemon pools its own database connections (at most 16); no setting";
const AGENT_CERT: &str = "the agent generates its own identity key and certificate under \
                          agent_data_path; the registrar records it";

use Component::{Agent, Registrar, Tenant, Verifier};
use Target::{Absent, Backoff, Bytes, Fixed, Ignored, Option as To, WhenEnabled};

const fn rule(
    component: Component,
    section: &'static str,
    option: &'static str,
    target: Target,
) -> Rule {
    Rule { component, section, option, target }
}

/// Every Keylime option this project knows of. An option found in a file but not here is
/// reported as unknown, never dropped.
pub const RULES: &[Rule] = &[
    // verifier.conf [verifier]
    rule(Verifier, "verifier", "version", Ignored(FORMAT_VERSION)),
    rule(Verifier, "verifier", "uuid", To("id")),
    rule(Verifier, "verifier", "cloudverifier_id", To("id")),
    rule(Verifier, "verifier", "ip", To("ip")),
    rule(Verifier, "verifier", "cloudverifier_ip", To("ip")),
    rule(Verifier, "verifier", "port", To("port")),
    rule(Verifier, "verifier", "cloudverifier_port", To("port")),
    rule(Verifier, "verifier", "registrar_ip", To("registrar_ip")),
    rule(Verifier, "verifier", "registrar_port", To("registrar_port")),
    rule(Verifier, "verifier", "enable_agent_mtls", Fixed(&["true"], MTLS)),
    rule(Verifier, "verifier", "tls_dir", To("tls_dir")),
    rule(Verifier, "verifier", "server_key", Fixed(&["default"], TLS_FILE)),
    rule(Verifier, "verifier", "server_key_password", Fixed(&[""], KEY_PASSWORD)),
    rule(Verifier, "verifier", "server_cert", Fixed(&["default"], TLS_FILE)),
    rule(Verifier, "verifier", "trusted_client_ca", Fixed(&["default"], TLS_FILE)),
    rule(Verifier, "verifier", "client_key", Fixed(&["default"], TLS_FILE)),
    rule(Verifier, "verifier", "client_key_password", Fixed(&[""], KEY_PASSWORD)),
    rule(Verifier, "verifier", "client_cert", Fixed(&["default"], TLS_FILE)),
    rule(Verifier, "verifier", "trusted_server_ca", Fixed(&["default"], TLS_FILE)),
    rule(Verifier, "verifier", "database_url", Fixed(&["sqlite"], SQL)),
    rule(Verifier, "verifier", "database_pool_sz_ovfl", Fixed(&["5,10"], SQL_POOL)),
    rule(
        Verifier,
        "verifier",
        "auto_migrate_db",
        Fixed(
            &["true"],
            "the state file's schema is migrated on start; a file newer than the binary is refused (docs/operations.md)",
        ),
    ),
    rule(Verifier, "verifier", "num_workers", Fixed(&["0"], WORKERS)),
    rule(Verifier, "verifier", "max_workers", Fixed(&["16"], WORKERS)),
    rule(Verifier, "verifier", "exponential_backoff", To("exponential_backoff")),
    rule(Verifier, "verifier", "retry_interval", Backoff("retry_interval")),
    rule(Verifier, "verifier", "max_retries", To("max_retries")),
    rule(Verifier, "verifier", "quote_interval", To("quote_interval")),
    rule(Verifier, "verifier", "request_timeout", To("request_timeout")),
    rule(
        Verifier,
        "verifier",
        "max_upload_size",
        Fixed(
            &["104857600"],
            "gRPC message sizes are bounded by the daemons (IMA entries per quote reply: the agent's ima_max_entries)",
        ),
    ),
    rule(
        Verifier,
        "verifier",
        "measured_boot_policy_name",
        Fixed(
            &["accept-all"],
            "measured-boot policies are per agent here: store one with `kctl policies mb apply` and enroll with --mb-policy NAME (docs/measured-boot-policy.md)",
        ),
    ),
    rule(
        Verifier,
        "verifier",
        "measured_boot_imports",
        Fixed(
            &["[]", ""],
            "no policy modules are loaded; measured-boot policies are documents (docs/measured-boot-policy.md)",
        ),
    ),
    rule(
        Verifier,
        "verifier",
        "measured_boot_evaluate",
        Fixed(&["once", "always"], "the event log is replayed whenever the agent's boot changes"),
    ),
    rule(
        Verifier,
        "verifier",
        "severity_labels",
        Absent(
            "failures are not graded; every failing finding fails the agent and is an event with its rule id",
        ),
    ),
    rule(
        Verifier,
        "verifier",
        "severity_policy",
        Absent("failures are not graded; filter events by rule id in webhook receivers"),
    ),
    rule(
        Verifier,
        "verifier",
        "ignore_tomtou_errors",
        Fixed(&["false"], "ToMToU and violation entries are judged by the runtime policy"),
    ),
    rule(
        Verifier,
        "verifier",
        "require_allow_list_signatures",
        Fixed(
            &["false"],
            "the signature of a DSSE-signed runtime policy is checked when it is stored: `kctl policies runtime apply --signing-key KEY`",
        ),
    ),
    rule(Verifier, "verifier", "durable_attestation_import", Fixed(&[""], DURABLE)),
    rule(Verifier, "verifier", "persistent_store_url", Fixed(&[""], DURABLE)),
    rule(Verifier, "verifier", "transparency_log_url", Fixed(&[""], DURABLE)),
    rule(Verifier, "verifier", "time_stamp_authority_url", Fixed(&[""], DURABLE)),
    rule(Verifier, "verifier", "time_stamp_authority_certs_path", Fixed(&[""], DURABLE)),
    rule(Verifier, "verifier", "persistent_store_format", Fixed(&["json", ""], DURABLE)),
    rule(Verifier, "verifier", "persistent_store_encoding", Fixed(&[""], DURABLE)),
    rule(Verifier, "verifier", "transparency_log_sign_algo", Fixed(&["sha256", ""], DURABLE)),
    rule(Verifier, "verifier", "signed_attributes", Fixed(&[""], DURABLE)),
    rule(Verifier, "verifier", "mode", Fixed(&["pull"], PUSH)),
    rule(Verifier, "verifier", "challenge_lifetime", Fixed(&["1800"], PUSH)),
    rule(Verifier, "verifier", "verification_timeout", Fixed(&["0"], PUSH)),
    rule(Verifier, "verifier", "session_create_rate_limit_per_ip", Fixed(&["50"], PUSH)),
    rule(Verifier, "verifier", "session_create_rate_limit_window_ip", Fixed(&["60"], PUSH)),
    rule(Verifier, "verifier", "session_create_rate_limit_per_agent", Fixed(&["15"], PUSH)),
    rule(Verifier, "verifier", "session_create_rate_limit_window_agent", Fixed(&["60"], PUSH)),
    rule(Verifier, "verifier", "session_lifetime", Fixed(&["180"], PUSH)),
    rule(Verifier, "verifier", "extend_token_on_attestation", Fixed(&["true"], PUSH)),
    rule(
        Verifier,
        "verifier",
        "authorization_provider",
        Fixed(
            &["simple"],
            "access is by role in the client certificate (admin, viewer, verifier): `kctl ca issue --role`",
        ),
    ),
    rule(
        Verifier,
        "verifier",
        "shutdown_drain_timeout",
        Fixed(
            &["10"],
            "on SIGTERM the verifier finishes the quotes in flight and writes their results; no setting",
        ),
    ),
    rule(
        Verifier,
        "verifier",
        "auto_recover_attestation_failures",
        Fixed(
            &["false"],
            "a failed agent stays failed until `kctl agents resume` (keylime_tenant -c reactivate)",
        ),
    ),
    // verifier.conf [revocations]
    rule(
        Verifier,
        "revocations",
        "enabled_revocation_notifications",
        Fixed(
            &["['agent']", "[\"agent\"]", "agent"],
            "revocation notices always go to the agents; events also go to webhook_url when it is set and to `kctl events watch`",
        ),
    ),
    rule(
        Verifier,
        "revocations",
        "zmq_ip",
        Fixed(&["127.0.0.1"], "no ZeroMQ broker; use webhook_url or `kctl events watch`"),
    ),
    rule(
        Verifier,
        "revocations",
        "zmq_port",
        Fixed(&["8992"], "no ZeroMQ broker; use webhook_url or `kctl events watch`"),
    ),
    rule(Verifier, "revocations", "webhook_url", To("webhook_url")),
    // registrar.conf [registrar]
    rule(Registrar, "registrar", "version", Ignored(FORMAT_VERSION)),
    rule(Registrar, "registrar", "ip", To("ip")),
    rule(
        Registrar,
        "registrar",
        "port",
        Absent(
            "agents register over TLS on the registrar's one port; Keylime's plain-HTTP registration port has no equivalent (tls_port becomes port)",
        ),
    ),
    rule(Registrar, "registrar", "tls_port", To("port")),
    rule(Registrar, "registrar", "registrar_ip", To("ip")),
    rule(
        Registrar,
        "registrar",
        "registrar_port",
        Absent(
            "agents register over TLS on the registrar's one port; Keylime's plain-HTTP registration port has no equivalent (registrar_tls_port becomes port)",
        ),
    ),
    rule(Registrar, "registrar", "registrar_tls_port", To("port")),
    rule(Registrar, "registrar", "tls_dir", To("tls_dir")),
    rule(Registrar, "registrar", "server_key", Fixed(&["default"], TLS_FILE)),
    rule(Registrar, "registrar", "server_key_password", Fixed(&[""], KEY_PASSWORD)),
    rule(Registrar, "registrar", "server_cert", Fixed(&["default"], TLS_FILE)),
    rule(Registrar, "registrar", "trusted_client_ca", Fixed(&["default"], TLS_FILE)),
    rule(Registrar, "registrar", "database_url", Fixed(&["sqlite"], SQL)),
    rule(Registrar, "registrar", "database_pool_sz_ovfl", Fixed(&["5,10"], SQL_POOL)),
    rule(
        Registrar,
        "registrar",
        "auto_migrate_db",
        Fixed(
            &["true"],
            "the state file's schema is migrated on start; a file newer than the binary is refused",
        ),
    ),
    rule(Registrar, "registrar", "max_workers", Fixed(&["16"], WORKERS)),
    rule(Registrar, "registrar", "durable_attestation_import", Fixed(&[""], DURABLE)),
    rule(Registrar, "registrar", "persistent_store_url", Fixed(&[""], DURABLE)),
    rule(Registrar, "registrar", "transparency_log_url", Fixed(&[""], DURABLE)),
    rule(Registrar, "registrar", "time_stamp_authority_url", Fixed(&[""], DURABLE)),
    rule(Registrar, "registrar", "time_stamp_authority_certs_path", Fixed(&[""], DURABLE)),
    rule(Registrar, "registrar", "persistent_store_format", Fixed(&["json", ""], DURABLE)),
    rule(Registrar, "registrar", "persistent_store_encoding", Fixed(&[""], DURABLE)),
    rule(Registrar, "registrar", "transparency_log_sign_algo", Fixed(&["sha256", ""], DURABLE)),
    rule(
        Registrar,
        "registrar",
        "signed_attributes",
        Fixed(&["", "ek_tpm,aik_tpm,ekcert"], DURABLE),
    ),
    rule(
        Registrar,
        "registrar",
        "tpm_identity",
        Fixed(
            &["default", "ek_cert"],
            "the EK (and its certificate, checked against tpm_cert_store) is the identity; IAK/IDevID are not supported",
        ),
    ),
    rule(
        Registrar,
        "registrar",
        "malformed_cert_action",
        Fixed(
            &["warn"],
            "EK certificates with non-canonical DER that vendors ship are parsed leniently; an unparsable one is refused (require_ek_cert) or ignored",
        ),
    ),
    // tenant.conf [tenant]
    rule(Tenant, "tenant", "version", Ignored(FORMAT_VERSION)),
    rule(Tenant, "tenant", "verifier_ip", To("verifier_ip")),
    rule(Tenant, "tenant", "verifier_port", To("verifier_port")),
    rule(Tenant, "tenant", "registrar_ip", To("registrar_ip")),
    rule(Tenant, "tenant", "registrar_port", To("registrar_port")),
    rule(Tenant, "tenant", "tls_dir", To("tls_dir")),
    rule(Tenant, "tenant", "enable_agent_mtls", Fixed(&["true"], MTLS)),
    rule(Tenant, "tenant", "client_key", Fixed(&["default"], TLS_FILE)),
    rule(Tenant, "tenant", "client_key_password", Fixed(&[""], KEY_PASSWORD)),
    rule(Tenant, "tenant", "client_cert", Fixed(&["default"], TLS_FILE)),
    rule(Tenant, "tenant", "trusted_server_ca", Fixed(&["default"], TLS_FILE)),
    rule(
        Tenant,
        "tenant",
        "tpm_cert_store",
        Absent(
            "EK certificates are checked by the registrar: set tpm_cert_store in registrar.conf",
        ),
    ),
    rule(
        Tenant,
        "tenant",
        "require_ek_cert",
        Absent(
            "EK certificates are checked by the registrar: set require_ek_cert in registrar.conf",
        ),
    ),
    rule(
        Tenant,
        "tenant",
        "ek_check_script",
        Absent("no EK check script; the registrar checks EK certificates against tpm_cert_store"),
    ),
    rule(
        Tenant,
        "tenant",
        "max_payload_size",
        Absent("payload size is bounded by the agent (secure_size)"),
    ),
    rule(
        Tenant,
        "tenant",
        "accept_tpm_hash_algs",
        Absent("the verifier enforces it: set accept_tpm_hash_algs in verifier.conf"),
    ),
    rule(
        Tenant,
        "tenant",
        "accept_tpm_signing_algs",
        Absent("the verifier enforces it: set accept_tpm_signing_algs in verifier.conf"),
    ),
    rule(
        Tenant,
        "tenant",
        "accept_tpm_encryption_algs",
        Absent(
            "the EK algorithm is not restricted; the registrar checks the EK certificate instead",
        ),
    ),
    rule(
        Tenant,
        "tenant",
        "exponential_backoff",
        Absent("kctl does not retry; the verifier retries agents (its exponential_backoff)"),
    ),
    rule(
        Tenant,
        "tenant",
        "retry_interval",
        Absent("kctl does not retry; the verifier retries agents (its retry_interval)"),
    ),
    rule(
        Tenant,
        "tenant",
        "max_retries",
        Absent("kctl does not retry; the verifier retries agents (its max_retries)"),
    ),
    rule(Tenant, "tenant", "request_timeout", To("request_timeout")),
    rule(
        Tenant,
        "tenant",
        "mb_refstate",
        Absent(
            "store the reference state with `kctl policies mb apply NAME -f FILE` and enroll with --mb-policy NAME",
        ),
    ),
    // agent.conf [agent] (the Rust agent's TOML)
    rule(Agent, "agent", "version", Ignored(FORMAT_VERSION)),
    rule(
        Agent,
        "agent",
        "api_versions",
        Fixed(&["default"], "the agent speaks gRPC (keylime.agent.v1); no REST API versions"),
    ),
    rule(Agent, "agent", "uuid", To("uuid")),
    rule(Agent, "agent", "agent_uuid", To("uuid")),
    rule(Agent, "agent", "ip", To("ip")),
    rule(Agent, "agent", "cloudagent_ip", To("ip")),
    rule(Agent, "agent", "port", To("port")),
    rule(Agent, "agent", "cloudagent_port", To("port")),
    rule(Agent, "agent", "contact_ip", To("contact_ip")),
    rule(Agent, "agent", "agent_contact_ip", To("contact_ip")),
    rule(Agent, "agent", "contact_port", To("contact_port")),
    rule(Agent, "agent", "agent_contact_port", To("contact_port")),
    rule(Agent, "agent", "registrar_ip", To("registrar_ip")),
    rule(
        Agent,
        "agent",
        "registrar_port",
        Absent(
            "Keylime's agent registers over plain HTTP (8890); here it registers over TLS on the registrar's port: registrar_tls_port becomes registrar_port (default 8891)",
        ),
    ),
    rule(Agent, "agent", "registrar_tls_port", To("registrar_port")),
    rule(
        Agent,
        "agent",
        "registrar_tls_enabled",
        Fixed(
            &["true", "false"],
            "registration always uses TLS, the registrar authenticated by trusted_client_ca's CA",
        ),
    ),
    rule(
        Agent,
        "agent",
        "registrar_tls_ca_cert",
        Fixed(
            &["default"],
            "the registrar is authenticated by the deployment CA (trusted_client_ca)",
        ),
    ),
    rule(Agent, "agent", "enable_agent_mtls", Fixed(&["true"], MTLS)),
    rule(Agent, "agent", "tls_dir", To("tls_dir")),
    rule(Agent, "agent", "server_key", Fixed(&["default"], AGENT_CERT)),
    rule(Agent, "agent", "server_key_password", Fixed(&[""], AGENT_CERT)),
    rule(Agent, "agent", "server_cert", Fixed(&["default"], AGENT_CERT)),
    rule(Agent, "agent", "trusted_client_ca", To("trusted_client_ca")),
    rule(Agent, "agent", "keylime_dir", To("keylime_dir")),
    rule(
        Agent,
        "agent",
        "agent_data_path",
        Fixed(
            &["default"],
            "in Keylime's Rust agent a JSON file holding the AK; here a directory (default \
             keylime_dir/agent) holding the agent's identity key, certificate and AK, which \
             are created anew here: set agent_data_path to a directory if not the default",
        ),
    ),
    rule(
        Agent,
        "agent",
        "enc_keyname",
        Fixed(
            &["derived_tci_key"],
            "the bootstrap key is held in memory and the payload extracted into secure_dir; no file names to set",
        ),
    ),
    rule(
        Agent,
        "agent",
        "dec_payload_file",
        Fixed(
            &["decrypted_payload"],
            "the bootstrap key is held in memory and the payload extracted into secure_dir; no file names to set",
        ),
    ),
    rule(Agent, "agent", "secure_size", Bytes("secure_size")),
    rule(
        Agent,
        "agent",
        "tpm_ownerpassword",
        Fixed(
            &[""],
            "owner hierarchy authorization is not supported; the EK is created under an empty owner auth",
        ),
    ),
    rule(
        Agent,
        "agent",
        "extract_payload_zip",
        Fixed(&["true"], "payloads are zip files and are always extracted"),
    ),
    rule(
        Agent,
        "agent",
        "enable_revocation_notifications",
        Fixed(
            &["true", "false"],
            "revocation notices come over the agent's gRPC API; they are always accepted from revocation_notification_ip, signature-checked",
        ),
    ),
    rule(
        Agent,
        "agent",
        "revocation_notification_ip",
        WhenEnabled {
            flag: "enable_revocation_notifications",
            default: false,
            why: "in Keylime the ZeroMQ broker the agent subscribes to; here \
                  revocation_notification_ip lists the verifier addresses whose notices the \
                  agent accepts: set it to your verifiers' addresses",
        },
    ),
    rule(
        Agent,
        "agent",
        "revocation_notification_port",
        Fixed(&["8992"], "no ZeroMQ: notices come over the agent's own port"),
    ),
    rule(
        Agent,
        "agent",
        "revocation_cert",
        Fixed(&["default"], "notices are checked against the deployment CA (trusted_client_ca)"),
    ),
    rule(Agent, "agent", "revocation_actions", To("revocation_actions")),
    rule(Agent, "agent", "revocation_actions_dir", To("revocation_actions_dir")),
    rule(
        Agent,
        "agent",
        "allow_payload_revocation_actions",
        To("allow_payload_revocation_actions"),
    ),
    rule(Agent, "agent", "payload_script", To("payload_script")),
    rule(
        Agent,
        "agent",
        "enable_insecure_payload",
        Fixed(&["false"], "a payload runs only on an agent that passed attestation"),
    ),
    rule(Agent, "agent", "tpm_hash_alg", To("tpm_hash_alg")),
    rule(Agent, "agent", "tpm_encryption_alg", To("tpm_encryption_alg")),
    rule(Agent, "agent", "tpm_signing_alg", To("tpm_signing_alg")),
    rule(
        Agent,
        "agent",
        "ek_handle",
        Fixed(
            &["generate", ""],
            "the EK is created from the TCG template at each start; a persistent EK handle is not supported",
        ),
    ),
    rule(Agent, "agent", "enable_iak_idevid", Fixed(&["false"], "IAK/IDevID are not supported")),
    rule(Agent, "agent", "iak_idevid_template", Absent("IAK/IDevID are not supported")),
    rule(Agent, "agent", "iak_idevid_asymmetric_alg", Absent("IAK/IDevID are not supported")),
    rule(Agent, "agent", "iak_idevid_name_alg", Absent("IAK/IDevID are not supported")),
    rule(Agent, "agent", "idevid_password", Absent("IAK/IDevID are not supported")),
    rule(Agent, "agent", "iak_password", Absent("IAK/IDevID are not supported")),
    rule(Agent, "agent", "idevid_handle", Absent("IAK/IDevID are not supported")),
    rule(Agent, "agent", "iak_handle", Absent("IAK/IDevID are not supported")),
    rule(Agent, "agent", "idevid_cert", Absent("IAK/IDevID are not supported")),
    rule(Agent, "agent", "iak_cert", Absent("IAK/IDevID are not supported")),
    rule(Agent, "agent", "run_as", Absent("set User= and Group= in keylime_agent.service")),
    rule(Agent, "agent", "ima_ml_path", To("ima_ml_path")),
    rule(Agent, "agent", "measuredboot_ml_path", To("measuredboot_ml_path")),
    rule(Agent, "agent", "verifier_url", Absent(PUSH)),
    rule(Agent, "agent", "verifier_tls_ca_cert", Absent(PUSH)),
    rule(Agent, "agent", "attestation_interval_seconds", Absent(PUSH)),
    rule(Agent, "agent", "exponential_backoff_initial_delay", Absent(PUSH)),
    rule(Agent, "agent", "exponential_backoff_max_retries", Absent(PUSH)),
    rule(Agent, "agent", "exponential_backoff_max_delay", Absent(PUSH)),
    rule(Agent, "agent", "certification_keys_server_identifier", Absent(PUSH)),
    rule(Agent, "agent", "uefi_logs_evidence_version", Absent(PUSH)),
];

/// The rule for `option` in Keylime section `section` (a 7.x name), if there is one.
pub fn find(component: Component, section: &str, option: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.component == component && r.section == section && r.option == option)
}

/// The file each component's options come from in Keylime, for headings.
#[cfg(test)]
fn keylime_file(component: Component) -> &'static str {
    match component {
        Component::Verifier => "verifier.conf",
        Component::Registrar => "registrar.conf",
        Component::Agent => "agent.conf (the Rust agent)",
        Component::Tenant => "tenant.conf",
    }
}

/// The mapping as Markdown tables, one per component: what docs/migrating-from-keylime.md shows
/// between its `mapping` markers.
#[cfg(test)]
pub fn markdown() -> String {
    let mut out = String::new();
    for component in [Verifier, Registrar, Tenant, Agent] {
        out.push_str(&format!(
            "\n#### Keylime {} → keylime-rs {}.conf\n\n| Keylime option | keylime-rs | Notes |\n|---|---|---|\n",
            keylime_file(component),
            component.name()
        ));
        for r in RULES.iter().filter(|r| r.component == component) {
            let (ours, note) = match r.target {
                To(name) => (format!("`{name}`"), String::new()),
                Bytes(name) => (format!("`{name}`"), "bytes (`1m` becomes 1048576)".to_owned()),
                Fixed(values, why) => {
                    let kept: Vec<String> = values
                        .iter()
                        .map(|v| if v.is_empty() { "empty".to_owned() } else { format!("`{v}`") })
                        .collect();
                    (
                        "—".to_owned(),
                        format!("{}: nothing to carry over; otherwise: {why}", kept.join(" or ")),
                    )
                }
                Absent(why) => ("—".to_owned(), why.to_owned()),
                Ignored(why) => ("—".to_owned(), format!("ignored: {why}")),
                Backoff(name) => (
                    format!("`{name}` when it is 2 or `exponential_backoff` is false"),
                    "with backoff Keylime waits retry_interval ** n, this verifier \
                     retry_interval × 2^(n-1): other values are reported, not converted"
                        .to_owned(),
                ),
                WhenEnabled { flag, default, why } => (
                    "—".to_owned(),
                    format!(
                        "unused in Keylime while `{flag}` is false (its default: {default}); \
                         otherwise: {why}"
                    ),
                ),
            };
            out.push_str(&format!("| `[{}] {}` | {ours} | {note} |\n", r.section, r.option));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(component: Component) -> Vec<&'static str> {
        super::super::option_specs(component).iter().map(|s| s.name).collect()
    }
    #[test]
    fn every_target_is_an_option_of_its_component_and_every_rule_is_unique() {
        for (i, r) in RULES.iter().enumerate() {
            if let To(name) | Bytes(name) | Backoff(name) = r.target {
                assert!(options(r.component).contains(&name), "{r:?}: no option {name}");
            }
            assert!(
                sections(r.component).iter().any(|(_, s)| *s == r.section),
                "{r:?}: section not read for {}",
                r.component
            );
            assert!(
                !RULES[..i]
                    .iter()
                    .any(|o| (o.component, o.section, o.option)
                        == (r.component, r.section, r.option)),
                "{r:?} twice"
            );
        }
    }

    #[test]
    fn the_migration_guide_shows_this_table() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/migrating-from-keylime.md"
        ))
        .expect("docs/migrating-from-keylime.md");
        let (begin, end) = ("<!-- mapping:begin -->\n", "<!-- mapping:end -->");
        let start = doc.find(begin).expect("begin marker") + begin.len();
        let stop = doc.find(end).expect("end marker");
        let expected = markdown();
        if doc[start..stop] != expected {
            // Regenerate with `KCTL_UPDATE_DOCS=1 cargo test -p kctl the_migration_guide`.
            if std::env::var_os("KCTL_UPDATE_DOCS").is_some() {
                let updated = format!("{}{expected}{}", &doc[..start], &doc[stop..]);
                std::fs::write(
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/migrating-from-keylime.md"),
                    updated,
                )
                .expect("write the guide");
            } else {
                panic!("docs/migrating-from-keylime.md's option table is not the mapping's");
            }
        }
    }
}
