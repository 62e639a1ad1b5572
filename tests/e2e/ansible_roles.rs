//! The roles of the collection keylime.attest (verifier, registrar, agent) applied to localhost
//! with every path in a temporary directory: binaries and units installed, drop-ins rendered,
//! checked by the installed binary before they are put in place, and a second run changing
//! nothing. No systemd here, so the service tasks are skipped, as in CI.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kl_tests::daemon::{self, AGENT, KCTL, Program, REGISTRAR, TENANT, VERIFIER};
use kl_tests::{Result, err};

use crate::ansible::venv;

/// The roles with every path under `{{ root }}`; the verifier's port comes from
/// `verifier_port` so that a run can pass an invalid one.
const PLAYBOOK: &str = r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: The verifier
      ansible.builtin.import_role:
        name: keylime.attest.verifier
      vars:
        keylime_verifier_binaries_dir: "{{ binaries }}"
        keylime_verifier_bin_dir: "{{ root }}/bin"
        keylime_verifier_unit_dir: "{{ root }}/systemd"
        keylime_verifier_config_dir: "{{ root }}/etc"
        keylime_verifier_config_owner: "{{ owner }}"
        keylime_verifier_config_group: "{{ group }}"
        keylime_verifier_manage_user: false
        keylime_verifier_settings:
          port: "{{ verifier_port | default(18881) }}"
          quote_interval: 1.5
          tls_dir: generate
          accept_tpm_hash_algs: [sha256]
    - name: The registrar
      ansible.builtin.import_role:
        name: keylime.attest.registrar
      vars:
        keylime_registrar_binaries_dir: "{{ binaries }}"
        keylime_registrar_bin_dir: "{{ root }}/bin"
        keylime_registrar_unit_dir: "{{ root }}/systemd"
        keylime_registrar_config_dir: "{{ root }}/etc"
        keylime_registrar_config_owner: "{{ owner }}"
        keylime_registrar_config_group: "{{ group }}"
        keylime_registrar_manage_user: false
        keylime_registrar_settings:
          port: 18891
          require_ek_cert: false
    - name: The agent
      ansible.builtin.import_role:
        name: keylime.attest.agent
      vars:
        keylime_agent_binaries_dir: "{{ binaries }}"
        keylime_agent_bin_dir: "{{ root }}/bin"
        keylime_agent_unit_dir: "{{ root }}/systemd"
        keylime_agent_config_dir: "{{ root }}/etc"
        keylime_agent_config_owner: "{{ owner }}"
        keylime_agent_config_group: "{{ group }}"
        keylime_agent_keylime_dir: "{{ root }}/var"
        keylime_agent_ca_cert: "{{ ca_cert }}"
        keylime_agent_settings:
          uuid: generate
          registrar_port: 18891
"#;

/// The deployment CA certificate the agent role copies (its bytes only matter).
const CA_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBdeployment\n-----END CERTIFICATE-----\n";

fn id(flag: &str) -> Result<String> {
    let out = Command::new("id").arg(flag).output()?;
    if !out.status.success() {
        return Err(err(format!("id {flag} failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

struct Play {
    venv: PathBuf,
    dir: PathBuf,
    binaries: PathBuf,
    owner: String,
    group: String,
}

impl Play {
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Runs the playbook; returns whether it succeeded and its output.
    fn run(&self, extra: &[&str]) -> Result<(bool, String)> {
        let collections = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ansible");
        let python = self.venv.join("bin").join("python");
        let mut cmd = Command::new(self.venv.join("bin").join("ansible-playbook"));
        cmd.args(["-i", "localhost,", "-c", "local"])
            .arg("-e")
            .arg(format!("ansible_python_interpreter={}", python.display()))
            .arg("-e")
            .arg(format!("root={}", self.root().display()))
            .arg("-e")
            .arg(format!("binaries={}", self.binaries.display()))
            .arg("-e")
            .arg(format!("ca_cert={}", self.dir.join("cacert.crt").display()))
            .arg("-e")
            .arg(format!("owner={}", self.owner))
            .arg("-e")
            .arg(format!("group={}", self.group));
        for e in extra {
            cmd.arg("-e").arg(e);
        }
        let out = cmd
            .arg(self.dir.join("roles.yml"))
            .env("ANSIBLE_COLLECTIONS_PATH", collections)
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("ANSIBLE_LOCAL_TEMP", self.dir.join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", self.dir.join("tmp"))
            .env_remove("ANSIBLE_CONFIG")
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }
}

/// A counter of the localhost line of the PLAY RECAP.
fn recap(text: &str, counter: &str) -> Result<u64> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("localhost") && l.contains(" ok="))
        .ok_or_else(|| err(format!("no PLAY RECAP in:\n{text}")))?;
    let prefix = format!("{counter}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| err(format!("no {counter} in the recap line {line:?}")))
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .permissions()
        .mode()
        & 0o7777)
}

fn toml_file(path: &Path) -> Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    text.parse::<toml::Table>().map_err(|e| err(format!("{}: {e}\n{text}", path.display())))
}

fn unit_shipped(program: Program) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(program.dir)
        .join(format!("{}.service", program.bin));
    Ok(std::fs::read_to_string(path)?)
}

#[test]
fn the_roles_install_render_validate_and_converge() -> Result<()> {
    let Some(venv) = venv()? else { return Ok(()) };
    for program in [VERIFIER, REGISTRAR, AGENT, KCTL, TENANT] {
        daemon::binary(program)?;
    }
    let binaries = daemon::binary(VERIFIER)?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| err("the verifier binary has no directory"))?;
    let dir = tempfile::Builder::new().prefix("keylime-roles-").tempdir()?;
    std::fs::create_dir_all(dir.path().join("tmp"))?;
    std::fs::write(dir.path().join("roles.yml"), PLAYBOOK)?;
    std::fs::write(dir.path().join("cacert.crt"), CA_CERT)?;
    let play = Play {
        venv,
        dir: dir.path().to_path_buf(),
        binaries: binaries.clone(),
        owner: id("-un")?,
        group: id("-gn")?,
    };
    let root = play.root();

    let (ok, text) = play.run(&[])?;
    if !ok {
        return Err(err(format!("the first run failed:\n{text}")));
    }
    if recap(&text, "changed")? == 0 {
        return Err(err(format!("the first run changed nothing:\n{text}")));
    }

    // Binaries: the same bytes count as the build's, executable.
    for bin in ["keylime_verifier", "kctl", "keylime_tenant", "keylime_registrar", "keylime_agent"]
    {
        let installed = root.join("bin").join(bin);
        let want = std::fs::metadata(binaries.join(bin))?.len();
        let got = std::fs::metadata(&installed)
            .map_err(|e| err(format!("{}: {e}", installed.display())))?
            .len();
        if got != want || mode(&installed)? != 0o755 {
            return Err(err(format!(
                "{}: {got} bytes, mode {:o}; want {want} bytes, 0755",
                installed.display(),
                mode(&installed)?
            )));
        }
    }
    // Units: the shipped ones, and a drop-in pointing ExecStart at the bin directory.
    for program in [VERIFIER, REGISTRAR, AGENT] {
        let unit = root.join("systemd").join(format!("{}.service", program.bin));
        if std::fs::read_to_string(&unit)? != unit_shipped(program)? {
            return Err(err(format!("{} differs from the shipped unit", unit.display())));
        }
        let over = root
            .join("systemd")
            .join(format!("{}.service.d", program.bin))
            .join("50-ansible-bin-dir.conf");
        let text = std::fs::read_to_string(&over)?;
        let exec = format!("ExecStart={}", root.join("bin").join(program.bin).display());
        if !text.lines().any(|l| l == exec) {
            return Err(err(format!("{} lacks {exec:?}:\n{text}", over.display())));
        }
    }
    // Drop-ins: the values given, mode 0400.
    let dropin = |c: &str| root.join("etc").join(format!("{c}.conf.d")).join("50-ansible.conf");
    let verifier = toml_file(&dropin("verifier"))?;
    let registrar = toml_file(&dropin("registrar"))?;
    let agent = toml_file(&dropin("agent"))?;
    let expect: [(&toml::Table, &str, toml::Value); 8] = [
        (&verifier, "port", toml::Value::Integer(18881)),
        (&verifier, "quote_interval", toml::Value::Float(1.5)),
        (&verifier, "tls_dir", toml::Value::String("generate".into())),
        (
            &verifier,
            "accept_tpm_hash_algs",
            toml::Value::Array(vec![toml::Value::String("sha256".into())]),
        ),
        (&registrar, "port", toml::Value::Integer(18891)),
        (&registrar, "require_ek_cert", toml::Value::Boolean(false)),
        (&agent, "uuid", toml::Value::String("generate".into())),
        (&agent, "keylime_dir", toml::Value::String(root.join("var").display().to_string())),
    ];
    for (table, key, want) in expect {
        if table.get(key) != Some(&want) {
            return Err(err(format!("drop-in {key}: {:?}, want {want:?}", table.get(key))));
        }
    }
    for c in ["verifier", "registrar", "agent"] {
        let m = mode(&dropin(c))?;
        if m != 0o400 {
            return Err(err(format!("{}: mode {m:o}, want 0400", dropin(c).display())));
        }
        let text = std::fs::read_to_string(dropin(c))?;
        if !text.starts_with("#\n# Ansible managed") {
            return Err(err(format!("{} has no managed header:\n{text}", dropin(c).display())));
        }
    }
    // The agent's deployment CA.
    let ca = std::fs::read_to_string(root.join("var").join("cv_ca").join("cacert.crt"))?;
    if ca != CA_CERT {
        return Err(err(format!("cv_ca/cacert.crt holds {ca:?}")));
    }

    let (ok, text) = play.run(&[])?;
    if !ok || recap(&text, "changed")? != 0 {
        return Err(err(format!("the second run is not a no-op:\n{text}")));
    }

    // An invalid value fails at validation, named by the binary, and the installed drop-in stays.
    let (ok, text) = play.run(&["verifier_port=80a"])?;
    if ok {
        return Err(err(format!("a run with port 80a succeeded:\n{text}")));
    }
    if !text.contains("failed to validate")
        || !text.contains(r#"port = \"80a\": not a port number"#)
    {
        return Err(err(format!("the failure does not name the key and value:\n{text}")));
    }
    if toml_file(&dropin("verifier"))?.get("port") != Some(&toml::Value::Integer(18881)) {
        return Err(err("the invalid drop-in replaced the installed one"));
    }
    Ok(())
}
