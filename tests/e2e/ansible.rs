//! The Ansible collection keylime.attest (ansible/) driving a real deployment: the README's fleet
//! playbook run by ansible-playbook against three local "hosts", each with its own agent on its
//! own swtpm, the modules calling the real kctl; then the collection's integration targets
//! (`ansible-test integration`) against the same daemons.
//!
//! ansible-core lives in a virtual environment that scripts/install-deps.sh creates;
//! scripts/test.sh names it in `KEYLIME_ANSIBLE_VENV`. Without it the test passes vacuously,
//! except when `CI` is set: then it fails, so CI never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kl_tests::daemon::{self, KCTL};
use kl_tests::swtpm::Swtpm;
use kl_tests::{Result, err};
use serde_json::{Value, json};

use crate::attestation::{System, check};

/// The virtual environment holding ansible-playbook, or `None` when the test cannot run.
pub(crate) fn venv() -> Result<Option<PathBuf>> {
    let found = std::env::var_os("KEYLIME_ANSIBLE_VENV")
        .map(PathBuf::from)
        .filter(|v| v.join("bin").join("ansible-playbook").is_file());
    match (found, std::env::var_os("CI")) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(_)) => Err(err(
            "CI is set, but KEYLIME_ANSIBLE_VENV does not name a virtual environment with \
             ansible-playbook (scripts/install-deps.sh creates it, scripts/test.sh sets it)",
        )),
        (None, None) => Ok(None),
    }
}

/// A playbook run: its output, with the counters of each host's line of the PLAY RECAP.
struct Run {
    out: Output,
    text: String,
}

impl Run {
    fn recap_of(&self, host: &str, counter: &str) -> Result<u64> {
        let line = self
            .text
            .lines()
            .rev()
            .find(|l| l.starts_with(host) && l.contains(" ok="))
            .ok_or_else(|| err(format!("no PLAY RECAP in:\n{}", self.text)))?;
        let prefix = format!("{counter}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&prefix))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| err(format!("no {counter} in the recap line {line:?}")))
    }

    fn ok(&self) -> Result<&Self> {
        // ansible-playbook exits 0 only when no task failed and every host was reached.
        if self.out.status.success() {
            Ok(self)
        } else {
            Err(err(format!("the playbook failed ({}):\n{}", self.out.status, self.text)))
        }
    }
}

struct Ansible<'a> {
    venv: PathBuf,
    sys: &'a System,
    dir: PathBuf,
}

impl Ansible<'_> {
    fn run(
        &self,
        inventory: &[&str],
        name: &str,
        extra: &[(&str, &str)],
        flags: &[&str],
    ) -> Result<Run> {
        let collections = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ansible");
        let python = self.venv.join("bin").join("python");
        let kctl = daemon::binary(KCTL)?;
        // The README's playbook finds kctl on PATH.
        let mut path = std::ffi::OsString::from(kctl.parent().unwrap_or(Path::new(".")));
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut cmd = Command::new(self.venv.join("bin").join("ansible-playbook"));
        cmd.args(inventory)
            .env("PATH", path)
            .arg("-e")
            .arg(format!("ansible_python_interpreter={}", python.display()))
            .arg("-e")
            .arg(format!("kctl={}", kctl.display()))
            .arg("-e")
            .arg(format!("keylime_tenant_config={}", self.sys.tenant.display()));
        for (k, v) in extra {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.args(flags)
            .arg(self.dir.join(name))
            .env("ANSIBLE_COLLECTIONS_PATH", collections)
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("ANSIBLE_LOCAL_TEMP", self.dir.join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", self.dir.join("tmp"))
            .env_remove("ANSIBLE_CONFIG");
        let out = cmd.output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Run { out, text })
    }
}

/// The first YAML block of the README's "Ansible" section: the fleet playbook.
fn readme_playbook() -> Result<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))?;
    let section = readme
        .split("\n## Ansible\n")
        .nth(1)
        .ok_or_else(|| err("README.md has no section \"Ansible\""))?;
    let block = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .ok_or_else(|| err("the README's Ansible section has no yaml block"))?;
    Ok(block.to_owned())
}

/// Unenrols every host's agent and removes the policy.
const ABSENT: &str = "- hosts: agents
  gather_facts: false
  module_defaults:
    group/keylime.attest.all:
      config: \"{{ keylime_tenant_config }}\"
  tasks:
    - keylime.attest.agent:
        uuid: \"{{ keylime_agent_uuid }}\"
        state: absent
      delegate_to: localhost
    - keylime.attest.runtime_policy:
        name: fleet
        state: absent
      delegate_to: localhost
      run_once: true
";

/// The inventory: three hosts on local connections, the role's paths under `root/<host>`, the
/// agent role's service left alone (the harness runs the agents), agent2 with a payload.
fn inventory_doc(sys: &System, ids: &[String], root: &Path, payload: &Path) -> Result<Value> {
    let binaries = daemon::binary(daemon::AGENT)?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| err("the agent binary has no directory"))?;
    let mut hosts = serde_json::Map::new();
    for (i, id) in ids.iter().enumerate() {
        let name = format!("agent{}", i + 1);
        let dir = root.join(&name);
        let mut host = json!({
            "ansible_connection": "local",
            "ansible_become": false,
            "keylime_agent_uuid": id,
            "keylime_agent_binaries_dir": binaries,
            "keylime_agent_ca_cert": sys.deployment.tls().ca_cert(),
            "keylime_agent_bin_dir": dir.join("bin"),
            "keylime_agent_unit_dir": dir.join("systemd"),
            "keylime_agent_config_dir": dir.join("etc"),
            "keylime_agent_keylime_dir": dir.join("var"),
            "keylime_agent_manage_service": false,
            "keylime_agent_settings": {"uuid": id, "registrar_port": sys.registrar.port()},
        });
        if i == 1 {
            host["keylime_agent_payload"] = json!(payload);
        }
        hosts.insert(name, host);
    }
    Ok(json!({"agents": {"hosts": hosts}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_playbook_installs_enrols_three_agents_idempotently_and_removes() -> Result<()> {
    let Some(venv) = venv()? else { return Ok(()) };
    let (Some(tpm2), Some(tpm3)) = (Swtpm::manufacture()?, Swtpm::manufacture()?) else {
        return Ok(());
    };
    let Some(sys) =
        System::start_with(toml::Table::new(), &[&tpm2, &tpm3], toml::Table::new(), true)?
    else {
        return Ok(());
    };
    // The swtpms live as long as the test: their agents use them to the end.
    let tpms = [tpm2, tpm3];
    let others = sys.more_agents(&tpms)?;
    let mut ids = vec![sys.agent_id.clone()];
    ids.extend(others.iter().map(|(_, id)| id.clone()));
    let agent2_dir = others[0].0.dir.clone();

    let dir = sys.deployment.keylime_dir().join("ansible");
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(dir.join("site.yml"), readme_playbook()?)?;
    std::fs::write(dir.join("absent.yml"), ABSENT)?;
    // The README's policy file name, next to the playbook; generated from what agent1 measured
    // (the others measured the same).
    let policy = dir.join("fleet-policy.json");
    let policy_s = policy.display().to_string();
    let log = sys.agent.ima_log.display().to_string();
    check(
        &sys.run(
            KCTL,
            &["policies", "runtime", "generate", "--ima-log", &log, "--out", &policy_s],
        )?,
        "policies runtime generate",
    )?;
    let payload = dir.join("payload");
    std::fs::create_dir_all(&payload)?;
    std::fs::write(payload.join("autorun.sh"), "#!/bin/sh\necho from-ansible > marker\n")?;
    // The inventory is JSON, which the YAML inventory plugin reads.
    let inventory = dir.join("inventory.yml");
    std::fs::write(
        &inventory,
        serde_json::to_vec_pretty(&inventory_doc(&sys, &ids, &dir.join("hosts"), &payload)?)?,
    )?;
    let inventory = inventory.display().to_string();
    let ansible = Ansible { venv, sys: &sys, dir: dir.clone() };
    let play = |extra: &[(&str, &str)], flags: &[&str]| {
        ansible.run(&["-i", &inventory], "site.yml", extra, flags)
    };
    let hosts = ["agent1", "agent2", "agent3"];
    let changed = |run: &Run| -> Result<Vec<u64>> {
        hosts.iter().map(|h| run.recap_of(h, "changed")).collect()
    };

    // Installed, the policy stored, all three enrolled and passing.
    let first = play(&[], &[])?;
    first.ok()?;
    for (host, id) in hosts.iter().zip(&ids) {
        assert!(
            first.recap_of(host, "changed")? >= 2,
            "{host}: role and enrolment:\n{}",
            first.text
        );
        assert_eq!(sys.show_agent(id)?["state"], "passed", "{host}: wait returned after a verdict");
        let dropin = dir.join("hosts").join(host).join("etc/agent.conf.d/50-ansible.conf");
        let text = std::fs::read_to_string(&dropin)?;
        assert!(text.contains(&format!("uuid = \"{id}\"")), "{}:\n{text}", dropin.display());
    }
    let marker = agent2_dir.join("secure").join("unzipped").join("marker");
    sys.wait(|_| Ok(marker.exists()), "the payload's autorun.sh")?;
    assert_eq!(std::fs::read_to_string(&marker)?, "from-ansible\n");

    // The digests the modules compare are the ones the verifier stored.
    let (_, stored) = sys.kctl_json(&["policies", "runtime", "show", "fleet"])?;
    let (_, offline) = sys.kctl_json(&["policies", "runtime", "digest", "--file", &policy_s])?;
    assert_eq!(stored["digest"], offline["digest"]);
    assert!(stored["digest"].as_str().is_some_and(|d| d.len() == 64), "{stored}");
    let payload_s = payload.display().to_string();
    let (_, digest) = sys.kctl_json(&["agents", "payload-digest", "--payload", &payload_s])?;
    assert_eq!(sys.show_agent(&ids[1])?["payload_digest"], digest["payload_digest"]);
    assert_eq!(sys.show_agent(&ids[0])?["payload_digest"], Value::Null, "no payload, no digest");

    // Again: nothing changes, the payload (payload_update: true) included.
    let second = play(&[], &[])?;
    second.ok()?;
    assert_eq!(changed(&second)?, [0, 0, 0], "a second run changes nothing:\n{}", second.text);

    // A changed payload is delivered again, to agent2 only, and runs; then nothing changes.
    std::fs::write(payload.join("autorun.sh"), "#!/bin/sh\necho from-ansible-2 > marker\n")?;
    let update = play(&[], &[])?;
    update.ok()?;
    assert_eq!(changed(&update)?, [0, 1, 0], "{}", update.text);
    sys.wait(
        |_| Ok(std::fs::read_to_string(&marker).is_ok_and(|m| m == "from-ansible-2\n")),
        "the changed payload's autorun.sh",
    )?;
    let (_, digest2) = sys.kctl_json(&["agents", "payload-digest", "--payload", &payload_s])?;
    assert_ne!(digest2["payload_digest"], digest["payload_digest"]);
    assert_eq!(sys.show_agent(&ids[1])?["payload_digest"], digest2["payload_digest"]);
    let settled = play(&[], &[])?;
    settled.ok()?;
    assert_eq!(changed(&settled)?, [0, 0, 0], "{}", settled.text);

    // A changed policy in check mode: a change is reported and shown, the verifier keeps the old.
    let changed_policy = dir.join("changed.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&policy)?)?;
    doc["files"]["/usr/bin/added-by-ansible"] = json!([format!("sha256:{}", "ab".repeat(32))]);
    std::fs::write(&changed_policy, serde_json::to_vec_pretty(&doc)?)?;
    let changed_s = changed_policy.display().to_string();
    let check_run = play(&[("keylime_policy_file", &changed_s)], &["--check", "--diff"])?;
    check_run.ok()?;
    assert_eq!(changed(&check_run)?, [1, 0, 0], "{}", check_run.text);
    assert!(check_run.text.contains("added 1: /usr/bin/added-by-ansible"), "{}", check_run.text);
    let (_, after) = sys.kctl_json(&["policies", "runtime", "show", "fleet"])?;
    assert_eq!(after["digest"], stored["digest"], "check mode left the verifier's policy alone");

    // A missing policy file and an unreachable verifier fail, naming the file and the address.
    let missing = dir.join("missing-policy.json").display().to_string();
    let run = play(&[("keylime_policy_file", &missing)], &[])?;
    assert!(!run.out.status.success(), "{}", run.text);
    assert!(run.recap_of("agent1", "failed")? == 1, "{}", run.text);
    assert!(run.text.contains("missing-policy.json: no such file"), "{}", run.text);
    let closed = format!("127.0.0.1:{}", daemon::free_port()?);
    let run = play(&[("keylime_verifier", &closed)], &[])?;
    assert!(!run.out.status.success(), "{}", run.text);
    assert!(run.text.contains(&closed), "the message names the address:\n{}", run.text);

    // state: absent removes the enrolments and the policy, once.
    let removed = ansible.run(&["-i", &inventory], "absent.yml", &[], &[])?;
    removed.ok()?;
    assert_eq!(changed(&removed)?, [2, 1, 1], "{}", removed.text);
    for id in &ids {
        assert_eq!(sys.kctl_json(&["agents", "show", id])?.0, 3, "{id} is unenrolled");
    }
    assert_eq!(sys.kctl_json(&["policies", "runtime", "show", "fleet"])?.0, 3);
    let again = ansible.run(&["-i", &inventory], "absent.yml", &[], &[])?;
    again.ok()?;
    assert_eq!(changed(&again)?, [0, 0, 0], "{}", again.text);

    integration_targets(&ansible, &sys, &dir)?;
    // The module_agent target delivered agent1 a payload with cert: default.
    let unzipped = sys.agent.dir.join("secure").join("unzipped");
    assert_eq!(std::fs::read_to_string(unzipped.join("marker"))?, "from-integration\n");
    assert!(unzipped.join(format!("{}-cert.crt", sys.agent_id)).is_file());
    drop(others);
    drop(tpms);
    Ok(())
}

/// Copies the collection at `from` to `to`, leaving out ansible-test's output and Python caches.
fn copy_collection(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let source = entry.path();
        if name == "__pycache__" || source.ends_with("tests/output") {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_collection(&source, &to.join(&name))?;
        } else {
            std::fs::copy(&source, to.join(&name))?;
        }
    }
    Ok(())
}

/// The targets in tests/integration/targets that run (every one but the hidden setup).
const TARGETS: [&str; 6] = [
    "module_agent",
    "module_agent_info",
    "module_mb_policy",
    "module_registration",
    "module_runtime_policy",
    "role_agent",
];

/// `ansible-test integration` of a copy of the collection, with integration_config.yml naming
/// this deployment: kctl, its tenant configuration, agent1 (registered, not enrolled) and its
/// `keylime_dir` (to find what its payload did), a policy
/// it passes, a payload, the binaries and the CA for the role target, a listening port.
fn integration_targets(ansible: &Ansible<'_>, sys: &System, dir: &Path) -> Result<()> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ansible/ansible_collections");
    let copy = dir.join("collections").join("ansible_collections").join("keylime").join("attest");
    copy_collection(&source.join("keylime").join("attest"), &copy)?;
    let payload = dir.join("it-payload");
    std::fs::create_dir_all(&payload)?;
    std::fs::write(payload.join("autorun.sh"), "#!/bin/sh\necho from-integration > marker\n")?;
    let kctl = daemon::binary(KCTL)?;
    let binaries = kctl.parent().map(Path::to_path_buf).unwrap_or_default();
    let config = json!({
        "kctl": kctl,
        "tenant_config": sys.tenant,
        "agent_uuid": sys.agent_id,
        "agent_dir": sys.agent.dir,
        "policy_file": dir.join("fleet-policy.json"),
        "payload_dir": payload,
        "binaries_dir": binaries,
        "ca_cert": sys.deployment.tls().ca_cert(),
        "listening_port": sys.verifier.port(),
    });
    // JSON is YAML.
    std::fs::write(
        copy.join("tests").join("integration").join("integration_config.yml"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    let mut path = std::ffi::OsString::from(ansible.venv.join("bin"));
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let out = Command::new(ansible.venv.join("bin").join("ansible-test"))
        .args(["integration", "--python", "3.11", "--local", "--color", "no"])
        .current_dir(&copy)
        .env("PATH", path)
        .env_remove("ANSIBLE_CONFIG")
        .env_remove("ANSIBLE_COLLECTIONS_PATH")
        .output()?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(err(format!("ansible-test integration failed ({}):\n{text}", out.status)));
    }
    for target in TARGETS {
        let ran = format!("Running {target} integration test role");
        assert!(text.contains(&ran), "{target} did not run:\n{text}");
    }
    Ok(())
}
