//! Command-line grammar: `kctl [-o table|json] NOUN VERB ...`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(name = "kctl", version, about = "Operate a keylime-rs attestation deployment")]
pub struct Cli {
    /// Read only this config file instead of /usr/etc/keylime/tenant.conf, /etc/keylime/tenant.conf
    /// and their .conf.d drop-ins.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Verifier address, HOST or HOST:PORT (default: verifier_ip/verifier_port of the config).
    #[arg(long, global = true, value_name = "ADDR")]
    pub verifier: Option<String>,
    /// Registrar address, HOST or HOST:PORT (default: registrar_ip/registrar_port of the config).
    #[arg(long, global = true, value_name = "ADDR")]
    pub registrar: Option<String>,
    /// Directory holding cacert.crt and the client certificate (default: <keylime_dir>/cv_ca).
    #[arg(long, global = true, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Output format: a readable table, or one JSON document on stdout.
    #[arg(short = 'o', long = "output", value_enum, global = true, default_value = "table")]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
    /// The name errors and warnings are prefixed with: `kctl`, or the front that runs kctl's
    /// commands (`keylime_tenant`).
    #[arg(skip = String::from("kctl"))]
    pub program: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with IMA measurement lists (offline).
    #[command(subcommand)]
    Ima(ImaCommand),
    /// Policies: generate runtime and measured-boot policies, test logs against them (offline).
    #[command(subcommand)]
    Policies(PoliciesCommand),
    /// Work with UEFI event logs (offline).
    #[command(subcommand)]
    Eventlog(EventlogCommand),
    /// What the registrar knows: agents' TPM identities.
    #[command(subcommand)]
    Registrar(RegistrarCommand),
    /// The deployment CA and role certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Agents at the verifier: enrolment and attestation state.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// The verifier's event stream.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Probe a daemon's gRPC health service: exit 0 when SERVING, 1 when NOT_SERVING. Probes
    /// the verifier unless --registrar or --agent names another daemon.
    Health(HealthArgs),
    /// Keylime configuration files (offline).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print kctl's manual page or the default tenant.conf (for packaging).
    #[command(hide = true)]
    Render {
        #[arg(value_enum)]
        what: kl_svc::manual::Render,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Convert a Keylime config file (verifier.conf, registrar.conf, tenant.conf, agent.conf or
    /// the old keylime.conf) into a TOML drop-in on stdout; options with no equivalent are
    /// listed on stderr (`-o json`: a report with the drop-in and every option's fate).
    Convert {
        /// The Keylime file.
        file: PathBuf,
        /// The component to convert (default: the only one whose section the file has).
        #[arg(long, value_enum)]
        component: Option<ComponentArg>,
    },
}

/// A program whose config file `kctl config convert` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ComponentArg {
    Verifier,
    Registrar,
    Agent,
    Tenant,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Probe the agent at HOST:PORT (default port 9002); its identity certificate is pinned
    /// from the registrar's record of the agent with that contact address.
    #[arg(long, value_name = "ADDR")]
    pub agent: Option<String>,
    /// The service to ask about: a fully qualified name (keylime.verifier.v1.Verifier) or the
    /// empty string for the whole daemon (default).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub service: String,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents known to the verifier or the registrar.
    List,
    /// Show an enrolled agent: state, attestation count, last verdict. Exits 3 when not enrolled.
    Show { uuid: String },
    /// Enroll an agent (or converge an enrolled agent's settings).
    Enroll(EnrollArgs),
    /// Change an agent's policies, keeping its attestation state.
    Update(UpdateArgs),
    /// Stop attesting an agent and forget it; succeeds with `changed: false` when absent.
    Unenroll { uuid: String },
    /// Pause attestation of an agent.
    Stop { uuid: String },
    /// Resume attestation of a stopped or failed agent.
    Resume { uuid: String },
    /// Print the digest `enroll` records for a payload (shown as `payload_digest` by `show`),
    /// without contacting anything: equal digests mean the same payload.
    PayloadDigest {
        /// A zip file, or a directory whose files are packed.
        #[arg(long)]
        payload: Option<PathBuf>,
        /// `default`: the payload gets an agent certificate (`enroll --cert default`).
        #[arg(long, value_parser = ["default"])]
        cert: Option<String>,
    },
    /// An agent's attestation history, newest first.
    Attestations {
        uuid: String,
        /// At most this many.
        #[arg(long, default_value = "20")]
        limit: u32,
    },
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    pub uuid: String,
    /// Name of a runtime policy stored at the verifier.
    #[arg(long)]
    pub runtime_policy: Option<String>,
    /// Name of a measured-boot policy stored at the verifier.
    #[arg(long)]
    pub mb_policy: Option<String>,
    /// PCR policy: a file or inline JSON, this project's format or Keylime's `tpm_policy`.
    #[arg(long)]
    pub pcr_policy: Option<String>,
    /// PCR bank to quote (default sha256).
    #[arg(long)]
    pub hash_alg: Option<String>,
    /// Deliver this payload (a zip file, or a directory whose files are packed): encrypted
    /// under a fresh bootstrap key, U to the agent after its identity quote checks out, V to the
    /// verifier for after the first passing attestation. `autorun.sh` in it runs on the agent.
    #[arg(long)]
    pub payload: Option<PathBuf>,
    /// `default`: add a certificate and key for the agent, issued by the deployment CA, and the
    /// CA certificate to the payload.
    #[arg(long, value_parser = ["default"])]
    pub cert: Option<String>,
    /// The agent's address for the key delivery, HOST:PORT (default: its contact at the registrar).
    #[arg(long)]
    pub agent: Option<String>,
    /// With --payload or --cert: deliver even when the agent is enrolled. A fresh bootstrap key
    /// replaces the previous one (the agent drops the old key; the new payload runs after the
    /// next passing attestation); the enrolment, its history and counters are kept, and when the
    /// new settings are refused the agent stays enrolled as it was.
    #[arg(long)]
    pub replace_payload: bool,
    /// Wait until the agent passed (exit 0) or failed (exit 1), with a spinner on stderr.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 1).
    #[arg(long, default_value = "60")]
    pub timeout: f64,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub uuid: String,
    /// New runtime policy name; an empty string removes it.
    #[arg(long)]
    pub runtime_policy: Option<String>,
    /// New measured-boot policy name; an empty string removes it.
    #[arg(long)]
    pub mb_policy: Option<String>,
    /// New PCR policy (file or inline JSON).
    #[arg(long, conflicts_with = "clear_pcr_policy")]
    pub pcr_policy: Option<String>,
    /// Remove the PCR policy.
    #[arg(long)]
    pub clear_pcr_policy: bool,
    /// Resume attestation if the agent is failed or stopped.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Stream events as NDJSON (with -o json), one per line, until interrupted. Survives a
    /// verifier restart: reconnects and resumes after the last event printed.
    Watch {
        /// Start after this cursor (0: every retained event).
        #[arg(long, default_value = "0")]
        from: u64,
        /// Only this agent's events.
        #[arg(long)]
        uuid: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop (exit 0) once the events that existed when the command started are printed.
        #[arg(long)]
        until_now: bool,
    },
}

/// Verbs on named policies stored at the verifier.
#[derive(Debug, Subcommand)]
pub enum StoredPolicyCommand {
    /// Store a policy under a name; `changed: false` when it already holds the same content.
    Apply {
        name: String,
        /// The policy document; `-` for stdin.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Runtime policies: a Keylime exclude list to merge.
        #[arg(long)]
        exclude: Option<PathBuf>,
        /// Runtime policies: the PEM key a DSSE-signed document must verify with.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Only create: exit 5 when the name already exists, whatever it holds.
        #[arg(long, conflicts_with = "must_exist")]
        if_absent: bool,
        /// Only replace: exit 3 when no policy has the name.
        #[arg(long)]
        must_exist: bool,
    },
    /// Show a stored policy and its canonical document; exits 3 when absent.
    Show { name: String },
    /// List stored policies.
    List,
    /// Delete a stored policy; `changed: false` when absent.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum RegistrarCommand {
    /// List registered (activated) agents.
    List,
    /// Show one agent's record; exits 3 when the registrar does not know it.
    Show { agent_id: String },
    /// Delete an agent, freeing its id; succeeds with `changed: false` when absent.
    Delete { agent_id: String },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA, a server certificate and the admin client certificate in the TLS
    /// directory, keeping whatever is already there.
    Init {
        /// Extra DNS names or IP addresses for the server certificate (repeatable).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
    },
    /// Issue a certificate for a role: `<NAME>-cert.crt` and `<NAME>-private.pem`.
    Issue {
        /// admin, viewer, verifier, server or agent (a client certificate that grants nothing).
        #[arg(long)]
        role: String,
        /// Certificate common name and file name prefix.
        name: String,
        /// DNS names or IP addresses to include (servers).
        #[arg(long = "dns-name")]
        names: Vec<String>,
        /// Where to write the files (default: the TLS directory).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventlogCommand {
    /// Decode a UEFI event log and replay its PCRs in every bank.
    Show {
        /// Raw binary log (`binary_bios_measurements`) or base64 of one; `-` for stdin.
        log: PathBuf,
    },
}

/// A PCR bank / digest algorithm name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HashAlgArg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl From<HashAlgArg> for kl_core::alg::HashAlg {
    fn from(a: HashAlgArg) -> Self {
        use kl_core::alg::HashAlg;
        match a {
            HashAlgArg::Sha1 => HashAlg::Sha1,
            HashAlgArg::Sha256 => HashAlg::Sha256,
            HashAlgArg::Sha384 => HashAlg::Sha384,
            HashAlgArg::Sha512 => HashAlg::Sha512,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ImaCommand {
    /// Replay an IMA log into PCR 10 and print the result.
    Replay {
        /// ASCII (`ascii_runtime_measurements`) or binary IMA log; `-` for stdin.
        log: PathBuf,
        /// PCR bank to replay.
        #[arg(long, value_enum, default_value = "sha256")]
        hash_alg: HashAlgArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoliciesCommand {
    /// Appraise logs against policies offline, as the verifier would.
    Test(TestArgs),
    /// Runtime (IMA) policies.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// Measured-boot policies.
    #[command(subcommand)]
    Mb(MbCommand),
}

#[derive(Debug, Subcommand)]
pub enum MbCommand {
    /// Generate a measured-boot policy from a known-good UEFI event log.
    Generate(MbGenerateArgs),
    /// Print the digest, size and canonical document the verifier would store for a policy,
    /// without contacting it: `apply` of the same file reports this digest.
    Digest {
        /// The policy document; `-` for stdin.
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    #[command(flatten)]
    Stored(StoredPolicyCommand),
}

#[derive(Debug, Args)]
pub struct MbGenerateArgs {
    /// The known-good log: raw binary or base64.
    #[arg(long)]
    pub event_log: PathBuf,
    /// Accept machines with Secure Boot off (otherwise the policy requires it on).
    #[arg(long)]
    pub allow_secureboot_off: bool,
    /// Also pin the replayed values of the covered PCRs.
    #[arg(long)]
    pub pin_pcrs: bool,
    /// Write the policy here instead of stdout.
    #[arg(long = "out")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Runtime policy: this project's format, Keylime's runtime policy JSON (also DSSE-signed)
    /// or Keylime's flat allowlist.
    #[arg(long)]
    pub runtime_policy: Option<PathBuf>,
    /// Keylime exclude list to merge into the runtime policy.
    #[arg(long)]
    pub exclude: Option<PathBuf>,
    /// PEM public key that must have signed a DSSE-enveloped policy.
    #[arg(long)]
    pub policy_key: Option<PathBuf>,
    /// The IMA log to appraise (ASCII or binary).
    #[arg(long)]
    pub ima_log: Option<PathBuf>,
    /// PCR bank to replay.
    #[arg(long, value_enum, default_value = "sha256")]
    pub hash_alg: HashAlgArg,
    /// Quoted PCR 10 value the log must replay to (at any prefix), in hex.
    #[arg(long)]
    pub pcr10: Option<String>,
    /// Measured-boot policy: this project's format or Keylime's reference state JSON.
    #[arg(long)]
    pub mb_policy: Option<PathBuf>,
    /// The UEFI event log to appraise (raw binary or base64).
    #[arg(long)]
    pub event_log: Option<PathBuf>,
    /// Quoted PCR values the event log must replay to: JSON `{"0": "hex", ...}` (optionally
    /// per bank) or `tpm2_pcrread` output.
    #[arg(long)]
    pub pcrs: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Generate a runtime policy from an IMA log, a directory tree or a Keylime allowlist.
    Generate(GenerateArgs),
    /// Print the digest, size, detected format and canonical document the verifier would store
    /// for a policy, without contacting it: `apply` with the same arguments reports this digest.
    Digest {
        /// The policy document; `-` for stdin.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// A Keylime exclude list to merge.
        #[arg(long)]
        exclude: Option<PathBuf>,
        /// The PEM key a DSSE-signed document must verify with.
        #[arg(long)]
        signing_key: Option<PathBuf>,
    },
    #[command(flatten)]
    Stored(StoredPolicyCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyFormat {
    /// This project's runtime policy format.
    Native,
    /// Keylime's runtime policy JSON.
    Keylime,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["ima_log", "dir", "allowlist"])))]
pub struct GenerateArgs {
    /// Take every file measured in this IMA log (ToMToU and violation entries are skipped).
    #[arg(long)]
    pub ima_log: Option<PathBuf>,
    /// Hash every regular file under this directory (in parallel; progress on stderr).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// With --dir: the absolute path the directory will have on the attested machine
    /// (default: the directory's own path; use `/` for a mounted root file system image).
    #[arg(long, requires = "dir")]
    pub root: Option<PathBuf>,
    /// With --dir: skip paths under this prefix (repeatable), e.g. /proc.
    #[arg(long = "skip-path", requires = "dir")]
    pub skip_paths: Vec<PathBuf>,
    /// A Keylime flat allowlist (`<hex digest>  <path>` lines).
    #[arg(long)]
    pub allowlist: Option<PathBuf>,
    /// A Keylime exclude list (one regular expression per line).
    #[arg(long)]
    pub exclude: Option<PathBuf>,
    /// Digest algorithm for hashed files.
    #[arg(long, value_enum, default_value = "sha256")]
    pub hash_alg: HashAlgArg,
    /// Policy format to write.
    #[arg(long, value_enum, default_value = "native")]
    pub format: PolicyFormat,
    /// Write the policy here instead of stdout.
    #[arg(long = "out")]
    pub out: Option<PathBuf>,
}
