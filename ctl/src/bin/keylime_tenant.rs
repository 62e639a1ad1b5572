//! `keylime_tenant`: accepts the commands of the Keylime guide and runs them with kctl.
//!
//! ```text
//! keylime_tenant -v VERIFIER -t AGENT -u UUID --cert default -c add [--include ZIP|DIR]
//!                [--allowlist FILE [--exclude FILE] | --runtime-policy FILE] [--mb-policy FILE]
//! keylime_tenant -c reglist | regstatus | regdelete | status | cvlist | bulkinfo | delete
//!                | update | reactivate ...
//! keylime_tenant -c addruntimepolicy --runtime-policy-name NAME --runtime-policy FILE
//! keylime_tenant -c addmbpolicy --mb-policy-name NAME --mb-policy FILE
//! ```
//!
//! Keylime's option names are accepted as Keylime 7 spells them, short (`-v`, `-vp`, `-tp`, `-rp`,
//! `-vi`, `-nvc`) and long (`--cv`, `--cvport`, `--targetport`, `--registrarhost`, ...). Config
//! comes from `/etc/keylime/tenant.conf` (and `/usr/etc`, drop-ins, `KEYLIME_TENANT_*`), as for
//! kctl; exit codes are kctl's. Keylime options with no equivalent here are accepted by the
//! parser only to be refused with what to use instead (see [`UNSUPPORTED`]).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use kl_svc::config::{Component, ComponentConfig, TenantConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TenantCommand {
    Add,
    Update,
    Delete,
    Status,
    Cvstatus,
    Cvlist,
    Bulkinfo,
    Reactivate,
    Reglist,
    Regstatus,
    Regdelete,
    #[value(alias = "addallowlist")]
    Addruntimepolicy,
    #[value(alias = "showallowlist")]
    Showruntimepolicy,
    #[value(alias = "updateallowlist")]
    Updateruntimepolicy,
    #[value(alias = "deleteallowlist")]
    Deleteruntimepolicy,
    #[value(alias = "listallowlist")]
    Listruntimepolicy,
    Addmbpolicy,
    Showmbpolicy,
    Updatembpolicy,
    Deletembpolicy,
    Listmbpolicy,
}

/// Keylime tenant options that have no equivalent here, and what to use instead. They are parsed
/// so that the refusal can say so, rather than clap's bare "unexpected argument".
const UNSUPPORTED: &[(&str, &str)] = &[
    ("--push-model", "agents are attested in pull mode only; leave it out"),
    ("--runtime-policy-url", "download the policy and give it with --runtime-policy FILE"),
    (
        "--runtime-policy-checksum",
        "check the file before use; `kctl policies runtime digest -f FILE` prints the digest the \
         verifier stores",
    ),
    (
        "--supported-version",
        "leave it out: the agent is reached over gRPC, there is no REST API version to pin",
    ),
    (
        "--cv_targethost",
        "the verifier polls the agent at the contact address the agent registered (the agent's \
         contact_ip); set it there, and give -t for this command's own connection",
    ),
    ("--allowlist-url", "download the allowlist and give it with --allowlist FILE"),
    (
        "--signature-verification-key",
        "put the IMA signing keys in the runtime policy (its verification-keys) and give it with \
         --runtime-policy FILE",
    ),
    ("-k/--key and -p/--payload", "give the plain payload with -f FILE or --include ZIP|DIR"),
];

const AFTER_HELP: &str = "\
Commands and their kctl equivalents:
  add, update           kctl policies runtime|mb apply; kctl agents enroll [--replace-payload]
  delete                kctl agents unenroll UUID
  status, cvstatus      kctl agents show UUID
  cvlist, bulkinfo      kctl agents list (every agent with its state)
  reactivate            kctl agents resume UUID
  reglist, regstatus,   kctl registrar list | show | delete
  regdelete
  add|show|update|delete|listruntimepolicy
                        kctl policies runtime apply --if-absent | show |
                        apply --must-exist | delete | list
  add|show|update|delete|listmbpolicy
                        kctl policies mb (the same)
  (add* refuses a name in use, exit 5; update* an absent one, exit 3)
  (the *allowlist spellings are accepted for the runtime policy commands)

Not supported here:
  --push-model                 pull mode only
  --runtime-policy-url         download the policy, give it with --runtime-policy FILE
  --runtime-policy-checksum    compare with `kctl policies runtime digest -f FILE`
  --supported-version          not needed (gRPC); leave it out
  --cv_targethost              the verifier polls the agent's registered contact address
  --allowlist-url              download the allowlist, give it with --allowlist FILE
  --signature-verification-key put the keys in the runtime policy's verification-keys
  -k/--key, -p/--payload       give the plain payload with -f FILE or --include
  --cert DIR                   only `--cert default` (the deployment CA)
  -vi/--cvid (verifier id),    accepted and ignored: one verifier fleet per deployment, so
  -nvc/--no-verifier-check     there is no other verifier to check against";

#[derive(Debug, Parser)]
#[command(
    name = "keylime_tenant",
    version,
    about = "Keylime tenant commands, run by kctl",
    after_help = AFTER_HELP
)]
struct Tenant {
    /// The command to run.
    #[arg(short = 'c', long = "command", value_enum, default_value = "add")]
    command: TenantCommand,
    /// Agent UUID.
    #[arg(short = 'u', long = "uuid")]
    uuid: Option<String>,
    /// Verifier IP address or host name.
    #[arg(short = 'v', long = "cv", alias = "verifier")]
    verifier: Option<String>,
    /// Verifier port (`-vp`).
    #[arg(long = "cvport", alias = "verifier-port")]
    verifier_port: Option<u16>,
    /// Verifier id (`-vi`; accepted, one verifier per deployment here).
    #[arg(long = "cvid", alias = "verifier-id")]
    verifier_id: Option<String>,
    /// `-nvc`: accepted; there is no other verifier whose ownership of the agent to check.
    #[arg(long = "no-verifier-check")]
    no_verifier_check: bool,
    /// Agent IP address, for this command's own connection to it (key delivery).
    #[arg(short = 't', long = "targethost")]
    agent: Option<String>,
    /// Agent port (`-tp`).
    #[arg(long = "targetport", alias = "agent-port")]
    agent_port: Option<u16>,
    /// Registrar IP address or host name.
    #[arg(short = 'r', long = "registrarhost", alias = "registrar")]
    registrar: Option<String>,
    /// Registrar port (`-rp`).
    #[arg(long = "registrarport", alias = "registrar-port")]
    registrar_port: Option<u16>,
    /// `default`: put a certificate for the agent, issued by the CA, into the payload.
    #[arg(long)]
    cert: Option<String>,
    /// A zip file or directory to deliver with the certificate; `autorun.sh` in it runs on the
    /// agent once it is attested.
    #[arg(long)]
    include: Option<PathBuf>,
    /// A payload file to deliver (`-f`).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Keylime flat allowlist.
    #[arg(long)]
    allowlist: Option<PathBuf>,
    /// Keylime exclude list (with --allowlist or --runtime-policy).
    #[arg(long)]
    exclude: Option<PathBuf>,
    /// Runtime policy file (Keylime JSON, DSSE-signed, or this project's format).
    #[arg(long = "runtime-policy")]
    runtime_policy: Option<PathBuf>,
    /// Print the manual page and exit (for packaging).
    #[arg(long, value_enum, hide = true)]
    render: Option<kl_svc::manual::Render>,
    /// Name to store the runtime policy under (default: the agent UUID); `--allowlist-name`
    /// is Keylime's deprecated spelling.
    #[arg(long = "runtime-policy-name", alias = "allowlist-name")]
    runtime_policy_name: Option<String>,
    /// PEM key a signed runtime policy must verify with.
    #[arg(long = "runtime-policy-sig-key")]
    runtime_policy_key: Option<PathBuf>,
    /// Measured-boot policy file (Keylime reference state or this project's format).
    #[arg(long = "mb-policy", alias = "mb_refstate")]
    mb_policy: Option<PathBuf>,
    /// Name to store the measured-boot policy under (default: the agent UUID).
    #[arg(long = "mb-policy-name")]
    mb_policy_name: Option<String>,
    /// Keylime `tpm_policy` JSON.
    #[arg(long = "tpm_policy")]
    tpm_policy: Option<String>,
    /// Wait for the agent to pass after `add`.
    #[arg(long = "verify")]
    verify: bool,
    /// Config file instead of /etc/keylime/tenant.conf and friends.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long = "push-model", hide = true)]
    push_model: bool,
    #[arg(long = "runtime-policy-url", hide = true)]
    runtime_policy_url: Option<String>,
    #[arg(long = "runtime-policy-checksum", hide = true)]
    runtime_policy_checksum: Option<String>,
    #[arg(long = "supported-version", hide = true)]
    supported_version: Option<String>,
    #[arg(long = "cv_targethost", hide = true)]
    cv_targethost: Option<String>,
    #[arg(long = "allowlist-url", hide = true)]
    allowlist_url: Option<String>,
    #[arg(long = "signature-verification-key", alias = "sign_verification_key", hide = true)]
    signature_verification_key: Vec<PathBuf>,
    #[arg(short = 'k', long = "key", hide = true)]
    key: Option<PathBuf>,
    #[arg(short = 'p', long = "payload", hide = true)]
    payload: Option<PathBuf>,
}

/// Keylime's argparse accepts two-letter short options; rewrite them to long ones.
fn normalise(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    args.map(|a| match a.to_str() {
        Some("-vp") => "--cvport".into(),
        Some("-tp") => "--targetport".into(),
        Some("-rp") => "--registrarport".into(),
        Some("-vi") => "--cvid".into(),
        Some("-nvc") => "--no-verifier-check".into(),
        Some("-pf") => "--file".into(),
        _ => a,
    })
    .collect()
}

impl Tenant {
    /// The kctl flags every command shares.
    fn common(&self) -> Vec<String> {
        let mut v = vec!["kctl".to_owned()];
        if let Some(c) = &self.config {
            v.extend(["--config".into(), c.display().to_string()]);
        }
        if let Some(host) = &self.verifier {
            v.push("--verifier".into());
            v.push(addr(host, self.verifier_port));
        }
        if let Some(host) = &self.registrar {
            v.push("--registrar".into());
            v.push(addr(host, self.registrar_port));
        }
        v
    }

    fn uuid(&self) -> Result<&str, String> {
        self.uuid.as_deref().ok_or_else(|| format!("-c {:?} needs -u UUID", self.command))
    }

    /// The first Keylime option given that has no equivalent here, with what to use instead.
    fn unsupported(&self) -> Option<String> {
        // As long as UNSUPPORTED, or this does not compile.
        let given: [bool; UNSUPPORTED.len()] = [
            self.push_model,
            self.runtime_policy_url.is_some(),
            self.runtime_policy_checksum.is_some(),
            self.supported_version.is_some(),
            self.cv_targethost.is_some(),
            self.allowlist_url.is_some(),
            !self.signature_verification_key.is_empty(),
            self.key.is_some() || self.payload.is_some(),
        ];
        given
            .iter()
            .zip(UNSUPPORTED)
            .find(|(set, _)| **set)
            .map(|(_, (option, instead))| format!("{option} is not supported here: {instead}"))
    }

    fn runtime_policy_name(&self) -> Result<&str, String> {
        self.runtime_policy_name
            .as_deref()
            .ok_or_else(|| format!("-c {:?} needs --runtime-policy-name NAME", self.command))
    }

    fn mb_policy_name(&self) -> Result<&str, String> {
        self.mb_policy_name
            .as_deref()
            .ok_or_else(|| format!("-c {:?} needs --mb-policy-name NAME", self.command))
    }

    /// `kctl policies runtime apply` for add/updateruntimepolicy: the policy from
    /// --runtime-policy or --allowlist (+ --exclude), stored under --runtime-policy-name.
    fn runtime_policy_apply(&self) -> Result<Vec<String>, String> {
        let name = self.runtime_policy_name()?;
        let file = match (&self.allowlist, &self.runtime_policy) {
            (Some(_), Some(_)) => {
                return Err("give --allowlist or --runtime-policy, not both".into());
            }
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => {
                return Err(format!(
                    "-c {:?} needs --runtime-policy FILE (or --allowlist FILE)",
                    self.command
                ));
            }
        };
        self.policy_options_are_not_for_agents()?;
        let mut apply = self.common();
        apply.extend(["policies", "runtime", "apply", name, "--file"].map(str::to_owned));
        apply.push(file.display().to_string());
        if let Some(e) = &self.exclude {
            apply.extend(["--exclude".into(), e.display().to_string()]);
        }
        if let Some(k) = &self.runtime_policy_key {
            apply.extend(["--signing-key".into(), k.display().to_string()]);
        }
        apply.push(self.put_precondition().into());
        Ok(apply)
    }

    /// Keylime's add*policy refuses a name in use (409) and update*policy an absent one (404);
    /// the verifier checks either in the transaction that writes, so a script that relies on
    /// the refusal never replaces a policy a fleet uses.
    fn put_precondition(&self) -> &'static str {
        match self.command {
            TenantCommand::Addruntimepolicy | TenantCommand::Addmbpolicy => "--if-absent",
            _ => "--must-exist",
        }
    }

    /// `kctl policies mb apply` for add/updatembpolicy.
    fn mb_policy_apply(&self) -> Result<Vec<String>, String> {
        let name = self.mb_policy_name()?;
        let Some(file) = &self.mb_policy else {
            return Err(format!("-c {:?} needs --mb-policy FILE", self.command));
        };
        self.policy_options_are_not_for_agents()?;
        let mut apply = self.common();
        apply.extend(["policies", "mb", "apply", name, "--file"].map(str::to_owned));
        apply.push(file.display().to_string());
        apply.push(self.put_precondition().into());
        Ok(apply)
    }

    /// Keylime stores a `tpm_policy` with a named runtime policy; here a PCR policy belongs to
    /// the agent, so taking it silently would lose it.
    fn policy_options_are_not_for_agents(&self) -> Result<(), String> {
        if self.tpm_policy.is_some() {
            return Err("--tpm_policy belongs to an agent here, not to a stored policy: give it \
                        with -c add or -c update"
                .into());
        }
        Ok(())
    }

    /// The kctl invocations a tenant command stands for, in order.
    fn plan(&self) -> Result<Vec<Vec<String>>, String> {
        if let Some(refusal) = self.unsupported() {
            return Err(refusal);
        }
        let kctl = |rest: &[&str]| {
            let mut v = self.common();
            v.extend(rest.iter().map(|s| (*s).to_owned()));
            v
        };
        Ok(match self.command {
            TenantCommand::Reglist => vec![kctl(&["registrar", "list"])],
            TenantCommand::Regstatus => vec![kctl(&["registrar", "show", self.uuid()?])],
            TenantCommand::Regdelete => vec![kctl(&["registrar", "delete", self.uuid()?])],
            // Keylime's cvlist prints the ids and bulkinfo the status of each: kctl's list has
            // both.
            TenantCommand::Cvlist | TenantCommand::Bulkinfo => vec![kctl(&["agents", "list"])],
            TenantCommand::Reactivate => vec![kctl(&["agents", "resume", self.uuid()?])],
            TenantCommand::Addruntimepolicy | TenantCommand::Updateruntimepolicy => {
                vec![self.runtime_policy_apply()?]
            }
            TenantCommand::Showruntimepolicy => {
                vec![kctl(&["policies", "runtime", "show", self.runtime_policy_name()?])]
            }
            TenantCommand::Deleteruntimepolicy => {
                vec![kctl(&["policies", "runtime", "delete", self.runtime_policy_name()?])]
            }
            TenantCommand::Listruntimepolicy => vec![kctl(&["policies", "runtime", "list"])],
            TenantCommand::Addmbpolicy | TenantCommand::Updatembpolicy => {
                vec![self.mb_policy_apply()?]
            }
            TenantCommand::Showmbpolicy => {
                vec![kctl(&["policies", "mb", "show", self.mb_policy_name()?])]
            }
            TenantCommand::Deletembpolicy => {
                vec![kctl(&["policies", "mb", "delete", self.mb_policy_name()?])]
            }
            TenantCommand::Listmbpolicy => vec![kctl(&["policies", "mb", "list"])],
            TenantCommand::Status | TenantCommand::Cvstatus => {
                vec![kctl(&["agents", "show", self.uuid()?])]
            }
            TenantCommand::Delete => vec![kctl(&["agents", "unenroll", self.uuid()?])],
            TenantCommand::Add => self.add_plan()?,
            // Keylime's update is delete + add with a fresh U and V. Here the enrolment is
            // converged in place with a fresh key instead: the agent is checked (reachable, its
            // identity quote good) before anything changes, and a refused enrolment leaves it
            // enrolled as it was, never unenrolled.
            TenantCommand::Update => {
                let mut plan = self.add_plan()?;
                if let Some(enroll) = plan.last_mut() {
                    enroll.push("--replace-payload".into());
                }
                plan
            }
        })
    }

    fn add_plan(&self) -> Result<Vec<Vec<String>>, String> {
        let uuid = self.uuid()?.to_owned();
        let mut plan = Vec::new();
        let mut enroll = self.common();
        enroll.extend(["agents".into(), "enroll".into(), uuid.clone()]);

        let runtime_source = match (&self.allowlist, &self.runtime_policy) {
            (Some(_), Some(_)) => {
                return Err("give --allowlist or --runtime-policy, not both".into());
            }
            (Some(p), None) | (None, Some(p)) => Some(p),
            (None, None) => None,
        };
        if let Some(file) = runtime_source {
            let name = self.runtime_policy_name.clone().unwrap_or_else(|| uuid.clone());
            let mut apply = self.common();
            apply.extend(["policies".into(), "runtime".into(), "apply".into(), name.clone()]);
            apply.extend(["--file".into(), file.display().to_string()]);
            if let Some(e) = &self.exclude {
                apply.extend(["--exclude".into(), e.display().to_string()]);
            }
            if let Some(k) = &self.runtime_policy_key {
                apply.extend(["--signing-key".into(), k.display().to_string()]);
            }
            plan.push(apply);
            enroll.extend(["--runtime-policy".into(), name]);
        } else if self.exclude.is_some() {
            return Err("--exclude needs --allowlist or --runtime-policy".into());
        }
        if let Some(file) = &self.mb_policy {
            let name = self.mb_policy_name.clone().unwrap_or_else(|| uuid.clone());
            let mut apply = self.common();
            apply.extend(["policies".into(), "mb".into(), "apply".into(), name.clone()]);
            apply.extend(["--file".into(), file.display().to_string()]);
            plan.push(apply);
            enroll.extend(["--mb-policy".into(), name]);
        }
        if let Some(p) = &self.tpm_policy {
            enroll.extend(["--pcr-policy".into(), p.clone()]);
        }
        match self.cert.as_deref() {
            None => {}
            Some("default") => enroll.extend(["--cert".into(), "default".into()]),
            Some(other) => {
                return Err(format!(
                    "--cert {other:?}: only `default` (the deployment CA of the verifier) is supported"
                ));
            }
        }
        match (&self.include, &self.file) {
            (Some(_), Some(_)) => return Err("give --include or -f, not both".into()),
            (Some(p), None) | (None, Some(p)) => {
                enroll.extend(["--payload".into(), p.display().to_string()])
            }
            (None, None) => {}
        }
        if let Some(host) = &self.agent {
            let port = self.agent_port.unwrap_or(9002);
            enroll.extend(["--agent".into(), addr(host, Some(port))]);
        }
        if self.verify {
            enroll.push("--wait".into());
        }
        plan.push(enroll);
        Ok(plan)
    }
}

fn addr(host: &str, port: Option<u16>) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// The name errors are printed under: this program's, never kctl's.
const PROGRAM: &str = "keylime_tenant";

fn main() -> ExitCode {
    let tenant = Tenant::parse_from(normalise(std::env::args_os()));
    if tenant.render.is_some() {
        use clap::CommandFactory;
        let config = (Component::Tenant, TenantConfig::options());
        print!("{}", kl_svc::manual::page(Tenant::command(), "1", Some((config.0, &config.1))));
        return ExitCode::SUCCESS;
    }
    let plan = match tenant.plan() {
        Ok(plan) => plan,
        Err(msg) => {
            eprintln!("{PROGRAM}: {msg}");
            return ExitCode::from(2);
        }
    };
    for argv in plan {
        let cli = match kctl::Cli::try_parse_from(&argv) {
            Ok(mut cli) => {
                cli.program = PROGRAM.to_owned();
                cli
            }
            Err(e) => {
                eprintln!("{PROGRAM}: {e}");
                return ExitCode::from(2);
            }
        };
        let code = kctl::execute(&cli);
        if code != 0 {
            return ExitCode::from(code);
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Vec<Vec<String>>, String> {
        let argv =
            std::iter::once("keylime_tenant").chain(args.iter().copied()).map(OsString::from);
        Tenant::try_parse_from(normalise(argv)).map_err(|e| e.to_string())?.plan()
    }

    #[test]
    fn the_guides_add_becomes_policy_apply_and_enroll() {
        let p = plan(&[
            "-v",
            "10.0.0.1",
            "-t",
            "10.0.0.2",
            "-u",
            "d432fbb3-d2f1-4a97-9ef7-75bd81c00000",
            "--cert",
            "default",
            "-c",
            "add",
            "--include",
            "payload.zip",
            "--allowlist",
            "allow.txt",
            "--exclude",
            "excl.txt",
        ])
        .expect("plan");
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            [
                "kctl",
                "--verifier",
                "10.0.0.1",
                "policies",
                "runtime",
                "apply",
                "d432fbb3-d2f1-4a97-9ef7-75bd81c00000",
                "--file",
                "allow.txt",
                "--exclude",
                "excl.txt"
            ]
        );
        let enroll = p[1].join(" ");
        assert!(enroll.starts_with(
            "kctl --verifier 10.0.0.1 agents enroll d432fbb3-d2f1-4a97-9ef7-75bd81c00000"
        ));
        assert!(enroll.contains("--runtime-policy d432fbb3-d2f1-4a97-9ef7-75bd81c00000"));
        assert!(enroll.contains("--cert default") && enroll.contains("--payload payload.zip"));
        assert!(enroll.contains("--agent 10.0.0.2:9002"));
        for argv in &p {
            kctl::Cli::try_parse_from(argv).expect("kctl accepts the translated command");
        }
    }

    #[test]
    fn two_letter_options_and_other_commands() {
        let p = plan(&["-r", "10.0.0.3", "-rp", "9000", "-c", "reglist"]).expect("plan");
        assert_eq!(p, [["kctl", "--registrar", "10.0.0.3:9000", "registrar", "list"]]);
        let p = plan(&["-v", "::1", "-vp", "8881", "-u", "a", "-c", "delete"]).expect("plan");
        assert_eq!(p, [["kctl", "--verifier", "[::1]:8881", "agents", "unenroll", "a"]]);
        let p = plan(&["-u", "a", "-c", "update", "--runtime-policy", "p.json"]).expect("plan");
        assert_eq!(p.len(), 2, "no unenrolment: {p:?}");
        assert_eq!(p[0][1..4], ["policies", "runtime", "apply"]);
        assert_eq!(p[1][1..4], ["agents", "enroll", "a"]);
        assert_eq!(p[1].last().map(String::as_str), Some("--replace-payload"));
        for argv in plan(&["-u", "a", "-c", "status"]).expect("plan").iter().chain(&p) {
            kctl::Cli::try_parse_from(argv).expect("kctl accepts it");
        }
    }

    #[test]
    fn missing_or_conflicting_arguments_are_usage_errors() {
        assert!(plan(&["-c", "delete"]).expect_err("no uuid").contains("-u UUID"));
        assert!(plan(&["-u", "a", "--allowlist", "x", "--runtime-policy", "y"]).is_err());
        assert!(plan(&["-u", "a", "--exclude", "x"]).is_err());
        assert!(
            plan(&["-u", "a", "--cert", "/some/ca/dir"]).expect_err("cert dir").contains("default")
        );
        assert!(plan(&["-c", "frobnicate"]).is_err());
    }

    #[test]
    fn policy_commands_take_keylimes_option_names() {
        let p = plan(&[
            "-c",
            "addruntimepolicy",
            "--runtime-policy-name",
            "base",
            "--runtime-policy",
            "p.json",
            "--runtime-policy-sig-key",
            "k.pem",
        ])
        .expect("plan");
        assert_eq!(
            p,
            [[
                "kctl",
                "policies",
                "runtime",
                "apply",
                "base",
                "--file",
                "p.json",
                "--signing-key",
                "k.pem",
                "--if-absent"
            ]]
        );
        let p = plan(&["-c", "addallowlist", "--runtime-policy-name", "a", "--allowlist", "l"])
            .expect("the deprecated spelling");
        assert_eq!(p[0][1..6], ["policies", "runtime", "apply", "a", "--file"]);
        let p = plan(&["-c", "updatembpolicy", "--mb-policy-name", "fw", "--mb-policy", "m.json"])
            .expect("plan");
        assert_eq!(
            p,
            [["kctl", "policies", "mb", "apply", "fw", "--file", "m.json", "--must-exist"]]
        );
        let p = plan(&["-c", "addmbpolicy", "--mb-policy-name", "fw", "--mb-policy", "m.json"])
            .expect("plan");
        assert_eq!(p[0].last().map(String::as_str), Some("--if-absent"));
        let p = plan(&[
            "-c",
            "updateruntimepolicy",
            "--runtime-policy-name",
            "a",
            "--runtime-policy",
            "p.json",
        ])
        .expect("plan");
        assert_eq!(p[0].last().map(String::as_str), Some("--must-exist"));
        for argv in &p {
            kctl::Cli::try_parse_from(argv).expect("kctl accepts the mode flags");
        }
        for (command, verb) in [
            ("showruntimepolicy", "show"),
            ("deleteruntimepolicy", "delete"),
            ("showmbpolicy", "show"),
            ("deletembpolicy", "delete"),
        ] {
            let p = plan(&["-c", command, "--runtime-policy-name", "n", "--mb-policy-name", "n"])
                .expect("plan");
            assert_eq!(p[0][3..], [verb, "n"], "{command}");
            kctl::Cli::try_parse_from(&p[0]).expect("kctl accepts it");
        }
        assert_eq!(
            plan(&["-c", "listruntimepolicy"]).expect("plan")[0][1..],
            ["policies", "runtime", "list"]
        );
        assert_eq!(
            plan(&["-c", "listmbpolicy"]).expect("plan")[0][1..],
            ["policies", "mb", "list"]
        );
        assert_eq!(plan(&["-c", "bulkinfo"]).expect("plan")[0][1..], ["agents", "list"]);
        assert_eq!(
            plan(&["-u", "a", "-c", "reactivate"]).expect("plan")[0][1..],
            ["agents", "resume", "a"]
        );
    }

    #[test]
    fn policy_commands_name_what_they_miss() {
        let e = plan(&["-c", "showruntimepolicy"]).expect_err("no name");
        assert!(e.contains("--runtime-policy-name"), "{e}");
        let e = plan(&["-c", "addmbpolicy", "--mb-policy-name", "x"]).expect_err("no file");
        assert!(e.contains("--mb-policy FILE"), "{e}");
        let e =
            plan(&["-c", "addruntimepolicy", "--runtime-policy-name", "x"]).expect_err("no file");
        assert!(e.contains("--runtime-policy FILE"), "{e}");
        let e = plan(&[
            "-c",
            "addruntimepolicy",
            "--runtime-policy-name",
            "x",
            "--runtime-policy",
            "p",
            "--tpm_policy",
            "{}",
        ])
        .expect_err("tpm_policy with a stored policy");
        assert!(e.contains("--tpm_policy"), "{e}");
        assert!(plan(&["-u", "a", "-c", "reactivate", "-c", "reactivate"]).is_err());
    }

    #[test]
    fn keylime_7_long_option_names_are_accepted() {
        let short = plan(&[
            "-v", "10.0.0.1", "-vp", "8881", "-vi", "default", "-nvc", "-r", "10.0.0.3", "-rp",
            "8891", "-t", "10.0.0.2", "-tp", "9003", "-u", "a", "-c", "add",
        ])
        .expect("short forms");
        let long = plan(&[
            "--cv",
            "10.0.0.1",
            "--cvport",
            "8881",
            "--cvid",
            "default",
            "--no-verifier-check",
            "--registrarhost",
            "10.0.0.3",
            "--registrarport",
            "8891",
            "--targethost",
            "10.0.0.2",
            "--targetport",
            "9003",
            "--uuid",
            "a",
            "--command",
            "add",
        ])
        .expect("Keylime's long forms");
        assert_eq!(short, long);
        assert_eq!(
            long,
            [[
                "kctl",
                "--verifier",
                "10.0.0.1:8881",
                "--registrar",
                "10.0.0.3:8891",
                "agents",
                "enroll",
                "a",
                "--agent",
                "10.0.0.2:9003"
            ]]
        );
        let p = plan(&["-u", "a", "-nvc", "-c", "delete"]).expect("-nvc with delete");
        assert_eq!(p, [["kctl", "agents", "unenroll", "a"]]);
        // --allowlist-name: Keylime's deprecated name for --runtime-policy-name.
        let p = plan(&["-c", "showallowlist", "--allowlist-name", "old"]).expect("allowlist-name");
        assert_eq!(p, [["kctl", "policies", "runtime", "show", "old"]]);
        let p = plan(&["-c", "addallowlist", "--allowlist-name", "n", "--allowlist", "l"])
            .expect("allowlist-name with add");
        assert_eq!(p[0][3..7], ["apply", "n", "--file", "l"]);
    }

    #[test]
    fn keylime_options_without_an_equivalent_here_say_what_to_do() {
        let e = plan(&["-u", "a", "--supported-version", "2.1"]).expect_err("version");
        assert!(e.starts_with("--supported-version is not supported here: leave it out"), "{e}");
        // In Keylime --cv_targethost is the agent address the verifier uses, not the verifier's.
        let e = plan(&["-u", "a", "-t", "10.0.0.2", "--cv_targethost", "192.168.0.2"])
            .expect_err("cv_targethost");
        assert!(e.starts_with("--cv_targethost is not supported here: "), "{e}");
        assert!(e.contains("contact_ip"), "{e}");
        let e = plan(&["-u", "a", "--allowlist-url", "https://x/l"]).expect_err("url");
        assert!(e.contains("--allowlist FILE"), "{e}");
        let e = plan(&["-u", "a", "--sign_verification_key", "k.pem"]).expect_err("keys");
        assert!(e.starts_with("--signature-verification-key is not supported here"), "{e}");
        // Not a Keylime option: clap's own refusal.
        assert!(plan(&["-u", "a", "--agent-api-version", "2.1"]).is_err());
    }

    #[test]
    fn keylime_options_without_an_equivalent_are_refused_with_an_alternative() {
        let e = plan(&["-u", "a", "--push-model"]).expect_err("push");
        assert!(e.starts_with("--push-model is not supported here: "), "{e}");
        let e = plan(&["-u", "a", "--runtime-policy-url", "https://x/p.json"]).expect_err("url");
        assert!(e.contains("--runtime-policy FILE"), "{e}");
        let e = plan(&["-u", "a", "-k", "key", "-p", "payload"]).expect_err("key");
        assert!(e.contains("-f FILE"), "{e}");
        let help =
            Tenant::try_parse_from(["keylime_tenant", "--help"]).expect_err("help").to_string();
        for (option, _) in UNSUPPORTED {
            let first = option.split_whitespace().next().unwrap_or(option);
            let first = first.split('/').next().unwrap_or(first);
            assert!(help.contains(first), "help names {first}: {help}");
        }
        assert!(help.contains("bulkinfo") && help.contains("listmbpolicy"));
    }
}
