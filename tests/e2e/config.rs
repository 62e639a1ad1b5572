//! Configuration an operator got wrong: files and directories that exist but that the daemon's
//! user cannot read are errors naming them, never "absent" (which would run a daemon on
//! built-in defaults, or have it create a new CA beside the unreadable one).
//!
//! The daemons run as `nobody` (root reads everything); the guide's `chmod -R 600 /etc/keylime`
//! is played in a private mount namespace over a tmpfs `/etc`, so the machine's own `/etc` is
//! untouched.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use kl_tests::daemon::{self, AGENT, Program, REGISTRAR, VERIFIER};
use kl_tests::deployment::Deployment;
use kl_tests::{Result, err};

const NOBODY: &str = "65534";

/// Runs `program` as `nobody` after `setup` (shell commands run as root in a private mount
/// namespace), with `args`.
fn run_as_nobody(program: Program, setup: &str, args: &[&str]) -> Result<Output> {
    let binary = daemon::binary(program)?;
    let script = format!(
        "set -e; {setup}; exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups \"$0\" \"$@\""
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(&binary)
        .args(args)
        .output()?;
    if out.status.code() == Some(127) || String::from_utf8_lossy(&out.stderr).contains("unshare:") {
        return Err(err(format!(
            "cannot set up the test (unshare, setpriv): {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

#[test]
fn an_untraversable_config_directory_is_an_error_naming_the_file() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    for (program, component) in [(VERIFIER, "verifier"), (REGISTRAR, "registrar"), (AGENT, "agent")]
    {
        let setup = format!(
            "mount -t tmpfs none /etc; mkdir -p /etc/keylime/{component}.conf.d; \
             echo 'log_level = \"info\"' > /etc/keylime/{component}.conf; \
             echo 'log_level = \"debug\"' > /etc/keylime/{component}.conf.d/10-log.conf; \
             chmod -R 600 /etc/keylime"
        );
        let out = run_as_nobody(program, &setup, &["--print-config"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{component}: ran on defaults: {}", stdout(&out));
        assert!(
            stderr.contains(&format!("/etc/keylime/{component}.conf"))
                && stderr.contains("Permission denied"),
            "{component}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{component}: no configuration is printed");
    }
    Ok(())
}

#[test]
fn an_unreadable_tls_directory_is_an_error_not_a_missing_ca() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let deployment = Deployment::new()?;
    // The config is readable by nobody; the keylime_dir holding cv_ca/ is root's alone.
    let config_dir = tempfile::Builder::new().prefix("keylime-conf-").tempdir()?;
    std::fs::set_permissions(config_dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let mut table = deployment.registrar_config(
        daemon::free_port()?,
        &deployment.keylime_dir().join("tpm_cert_store"),
        false,
    );
    table.insert("tls_dir".into(), "default".into());
    let config = config_dir.path().join("registrar.conf");
    std::fs::write(&config, toml::to_string(&table)?)?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
    std::fs::set_permissions(deployment.keylime_dir(), std::fs::Permissions::from_mode(0o700))?;

    let config = config.display().to_string();
    let out = run_as_nobody(REGISTRAR, "true", &["--config", &config])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cacert.crt") && stderr.contains("Permission denied"),
        "names the file and the reason: {stderr}"
    );
    assert!(!stderr.contains("start the verifier once"), "not reported as missing: {stderr}");
    Ok(())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether this process runs as root (the tests need it to change users); CI runs as root.
fn is_root() -> bool {
    let root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    if root.as_ref().is_ok_and(|r| !r) && std::env::var_os("CI").is_some() {
        panic!("these tests run as root in CI");
    }
    root.unwrap_or(false)
}
