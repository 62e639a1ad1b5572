//! The Ansible collection keylime.attest (ansible/) driving a real deployment: playbooks run by
//! ansible-playbook against localhost, the modules calling the real kctl.
//!
//! ansible-core lives in a virtual environment that scripts/install-deps.sh creates;
//! scripts/test.sh names it in `KEYLIME_ANSIBLE_VENV`. Without it the test passes vacuously,
//! except when `CI` is set: then it fails, so CI never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kl_tests::daemon::{self, KCTL};
use kl_tests::{Result, err};

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

/// A playbook run: its output and the counters of the localhost line of the PLAY RECAP.
struct Run {
    out: Output,
    text: String,
}

impl Run {
    fn recap(&self, counter: &str) -> Result<u64> {
        self.recap_of("localhost", counter)
    }

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
    fn playbook(&self, name: &str, extra: &[(&str, &str)], flags: &[&str]) -> Result<Run> {
        self.run(&["-i", "localhost,", "-c", "local"], name, extra, flags)
    }

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
            .arg(format!("tenant={}", self.sys.tenant.display()))
            .arg("-e")
            .arg(format!("agent_uuid={}", self.sys.agent_id));
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

const DEFAULTS: &str = "  module_defaults:
    group/keylime.attest.all:
      kctl: \"{{ kctl }}\"
      config: \"{{ tenant }}\"
";

fn enrol_playbook() -> String {
    format!(
        "- hosts: localhost
  gather_facts: false
{DEFAULTS}  tasks:
    - name: The runtime policy
      keylime.attest.runtime_policy:
        name: base
        src: \"{{{{ policy_file }}}}\"
    - name: The agent, with a payload
      keylime.attest.agent:
        uuid: \"{{{{ agent_uuid }}}}\"
        runtime_policy: base
        payload: \"{{{{ payload }}}}\"
        wait: true
        timeout: 60
    - name: Its state
      keylime.attest.agent_info:
        uuid: \"{{{{ agent_uuid }}}}\"
      register: info
    - name: It passes
      ansible.builtin.assert:
        that:
          - info.agents | length == 1
          - info.agents[0].state == 'passed'
          - info.agents[0].runtime_policy == 'base'
"
    )
}

fn absent_playbook() -> String {
    format!(
        "- hosts: localhost
  gather_facts: false
{DEFAULTS}  tasks:
    - keylime.attest.agent:
        uuid: \"{{{{ agent_uuid }}}}\"
        state: absent
    - keylime.attest.runtime_policy:
        name: base
        state: absent
"
    )
}

fn unreachable_playbook() -> String {
    format!(
        "- hosts: localhost
  gather_facts: false
{DEFAULTS}  tasks:
    - keylime.attest.agent_info:
        verifier: \"{{{{ verifier }}}}\"
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playbook_enrols_idempotently_checks_without_changing_and_removes() -> Result<()> {
    let Some(venv) = venv()? else { return Ok(()) };
    let Some(sys) = System::start()? else { return Ok(()) };
    let dir = sys.deployment.keylime_dir().join("ansible");
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(dir.join("enrol.yml"), enrol_playbook())?;
    std::fs::write(dir.join("absent.yml"), absent_playbook())?;
    std::fs::write(dir.join("unreachable.yml"), unreachable_playbook())?;
    let ansible = Ansible { venv, sys: &sys, dir: dir.clone() };

    // A policy of what the agent measured, and a payload whose autorun.sh leaves a marker.
    let policy = dir.join("base.json");
    let log = sys.agent.ima_log.display().to_string();
    let policy_s = policy.display().to_string();
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
    let payload_s = payload.display().to_string();
    let vars = [("policy_file", policy_s.as_str()), ("payload", payload_s.as_str())];

    let first = ansible.playbook("enrol.yml", &vars, &[])?;
    first.ok()?;
    assert_eq!(first.recap("changed")?, 2, "the policy and the enrolment:\n{}", first.text);
    let marker = sys.agent.dir.join("secure").join("unzipped").join("marker");
    sys.wait(|_| Ok(marker.exists()), "the payload's autorun.sh")?;
    assert_eq!(std::fs::read_to_string(&marker)?, "from-ansible\n");

    // The digest the module compares (kctl's offline digest) is the one the verifier stored.
    let (_, stored) = sys.kctl_json(&["policies", "runtime", "show", "base"])?;
    let (_, offline) = sys.kctl_json(&["policies", "runtime", "digest", "--file", &policy_s])?;
    assert_eq!(stored["digest"], offline["digest"]);
    assert!(stored["digest"].as_str().is_some_and(|d| d.len() == 64), "{stored}");

    let second = ansible.playbook("enrol.yml", &vars, &[])?;
    second.ok()?;
    assert_eq!(second.recap("changed")?, 0, "a second run changes nothing:\n{}", second.text);

    // A changed policy in check mode: a change is reported and shown, the verifier keeps the old.
    let changed = dir.join("changed.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&policy)?)?;
    doc["files"]["/usr/bin/added-by-ansible"] =
        serde_json::json!([format!("sha256:{}", "ab".repeat(32))]);
    std::fs::write(&changed, serde_json::to_vec_pretty(&doc)?)?;
    let changed_s = changed.display().to_string();
    let check_run = ansible.playbook(
        "enrol.yml",
        &[("policy_file", &changed_s), ("payload", &payload_s)],
        &["--check", "--diff"],
    )?;
    check_run.ok()?;
    assert_eq!(check_run.recap("changed")?, 1, "{}", check_run.text);
    assert!(check_run.text.contains("added 1: /usr/bin/added-by-ansible"), "{}", check_run.text);
    let (_, after) = sys.kctl_json(&["policies", "runtime", "show", "base"])?;
    assert_eq!(after["digest"], stored["digest"], "check mode left the verifier's policy alone");

    // A missing policy file and an unreachable verifier fail, naming the file and the address.
    let missing = dir.join("missing-policy.json").display().to_string();
    let run = ansible.playbook(
        "enrol.yml",
        &[("policy_file", &missing), ("payload", &payload_s)],
        &[],
    )?;
    assert!(!run.out.status.success());
    assert_eq!(run.recap("failed")?, 1);
    assert!(run.text.contains("missing-policy.json"), "{}", run.text);
    let closed = format!("127.0.0.1:{}", daemon::free_port()?);
    let run = ansible.playbook("unreachable.yml", &[("verifier", &closed)], &[])?;
    assert!(!run.out.status.success());
    assert!(run.text.contains(&closed), "the message names the address:\n{}", run.text);

    // state: absent removes the enrolment and the policy, once.
    let removed = ansible.playbook("absent.yml", &[], &[])?;
    removed.ok()?;
    assert_eq!(removed.recap("changed")?, 2, "{}", removed.text);
    assert_eq!(sys.kctl_json(&["agents", "show", &sys.agent_id])?.0, 3);
    assert_eq!(sys.kctl_json(&["policies", "runtime", "show", "base"])?.0, 3);
    let again = ansible.playbook("absent.yml", &[], &[])?;
    again.ok()?;
    assert_eq!(again.recap("changed")?, 0, "{}", again.text);
    Ok(())
}

/// The first YAML block of the README's "Ansible" section.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_playbook_runs_as_written() -> Result<()> {
    let Some(venv) = venv()? else { return Ok(()) };
    let Some(sys) = System::start()? else { return Ok(()) };
    let dir = sys.deployment.keylime_dir().join("readme");
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(dir.join("enrol.yml"), readme_playbook()?)?;
    let log = sys.agent.ima_log.display().to_string();
    let policy = dir.join("fleet-policy.json").display().to_string();
    check(
        &sys.run(KCTL, &["policies", "runtime", "generate", "--ima-log", &log, "--out", &policy])?,
        "policies runtime generate",
    )?;
    let inventory = dir.join("inventory");
    std::fs::write(
        &inventory,
        format!("[agents]\nagent1 ansible_connection=local keylime_agent_uuid={}\n", sys.agent_id),
    )?;
    let ansible = Ansible { venv, sys: &sys, dir };
    let tenant = sys.tenant.display().to_string();
    let inventory = inventory.display().to_string();
    let vars = [("keylime_tenant_config", tenant.as_str())];
    let first = ansible.run(&["-i", &inventory], "enrol.yml", &vars, &[])?;
    first.ok()?;
    assert_eq!(first.recap_of("agent1", "changed")?, 2, "{}", first.text);
    assert_eq!(sys.show()?["state"], "passed", "wait: true returned after the first verdict");
    let second = ansible.run(&["-i", &inventory], "enrol.yml", &vars, &[])?;
    second.ok()?;
    assert_eq!(second.recap_of("agent1", "changed")?, 0, "{}", second.text);
    Ok(())
}
