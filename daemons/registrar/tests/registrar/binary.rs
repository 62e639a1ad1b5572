//! The `keylime_registrar` binary: `--print-config`, readiness through `NOTIFY_SOCKET`,
//! serving, and a clean exit on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use kl_svc::tls::{TlsFiles, ensure_generated};

use crate::support::{Agent, SoftTpm, TestResult, new_id};

const BINARY: &str = env!("CARGO_BIN_EXE_keylime_registrar");

fn write_config(dir: &std::path::Path, port: u16) -> Result<std::path::PathBuf, std::io::Error> {
    let path = dir.join("registrar.conf");
    std::fs::write(
        &path,
        format!(
            "[registrar]\nkeylime_dir = {:?}\nip = \"127.0.0.1\"\nport = {port}\ntls_dir = \"generate\"\nrequire_ek_cert = false\n",
            dir.display().to_string()
        ),
    )?;
    Ok(path)
}

#[test]
fn print_config_shows_the_effective_settings() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), 18891)?;
    let output =
        Command::new(BINARY).arg("--config").arg(&config).arg("--print-config").output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(json["port"], 18891);
    assert_eq!(json["require_ek_cert"], false);
    assert_eq!(json["registration_rate_limit"], 60);
    Ok(())
}

#[tokio::test]
async fn binary_notifies_readiness_serves_and_stops_on_sigterm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = write_config(dir.path(), port)?;
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut child = Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::null())
        .spawn()?;
    let mut ready = [0u8; 64];
    let received = notify.recv(&mut ready);
    let outcome = async {
        let n = received?;
        // No panics before the child is stopped below: errors only.
        if &ready[..n] != b"READY=1" {
            return Err(format!("notification {:?}", String::from_utf8_lossy(&ready[..n])).into());
        }
        // tls_dir = "generate" created the CA under keylime_dir.
        let tls = TlsFiles::new(dir.path().join("cv_ca"));
        ensure_generated(&tls, &[])?;
        let registrar = crate::support::Registrar::connect_to(&tls, port);
        let agent = Agent::new(&new_id(300), SoftTpm::ecc())?;
        let mut client = registrar.anonymous().await?;
        let count = agent.enroll(&mut client).await??;
        if count != 1 {
            return Err(format!("registration count {count}").into());
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    // Waited for off the runtime, which must keep serving the client side of the connection
    // while the registrar shuts it down.
    let status = tokio::time::timeout(
        crate::support::DEADLINE,
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await???;
    outcome?;
    assert!(killed.success());
    assert!(status.success(), "exit status {status}");
    assert!(dir.path().join("registrar.redb").exists());
    Ok(())
}
