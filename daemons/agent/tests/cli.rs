//! The `keylime_agent` binary's command line: config printing and configuration errors.
//!
//! (Being an integration test, this also makes `cargo test` and `cargo nextest` build the
//! binary that the end-to-end tests in `tests/` run.)

use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn agent() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keylime_agent"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYLIME_") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn print_config_shows_the_effective_values() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.conf");
    std::fs::write(&config, "[agent]\nuuid = \"generate\"\nport = 9100\n")?;
    let output = agent().arg("--config").arg(&config).arg("--print-config").output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let text = json.to_string();
    assert!(text.contains("\"generate\"") && text.contains("9100"), "{text}");
    assert!(text.contains("device:/dev/tpmrm0"), "default tcti missing: {text}");
    Ok(())
}

#[test]
fn a_bad_option_exits_78_naming_file_and_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.conf");
    std::fs::write(&config, "registrar_port = \"80a\"\n")?;
    let output = agent().arg("--config").arg(&config).output()?;
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("agent.conf") && stderr.contains("registrar_port"), "{stderr}");
    Ok(())
}

#[test]
fn a_missing_deployment_ca_exits_78_naming_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.conf");
    let toml = format!(
        "keylime_dir = \"{}\"\ntcti = \"swtpm:host=127.0.0.1,port=1\"\n",
        dir.path().display()
    );
    std::fs::write(&config, toml)?;
    let output = agent().arg("--config").arg(&config).output()?;
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("trusted_client_ca") && stderr.contains("cacert.crt"), "{stderr}");
    Ok(())
}

#[test]
fn listening_on_all_addresses_needs_a_contact_address() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.conf");
    std::fs::write(&config, "ip = \"0.0.0.0\"\n")?;
    let output = agent().arg("--config").arg(&config).output()?;
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("contact_ip") && stderr.contains("0.0.0.0"), "{stderr}");
    Ok(())
}
