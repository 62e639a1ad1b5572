//! `kctl ca`: the deployment CA is created once and reused; role certificates are idempotent.

use std::process::{Command, Output};

fn kctl(keylime_dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kctl"))
        .args(args)
        .env("KEYLIME_DIR", keylime_dir)
        // Keep the host's /etc/keylime out of the test.
        .args(["--config", "/dev/null"])
        .output()
        .expect("kctl runs")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn ca_init_creates_once_and_issue_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = kctl(dir.path(), &["ca", "init", "-o", "json"]);
    assert_eq!(first.status.code(), Some(0), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(json(&first)["changed"], true);
    let ca = std::fs::read(dir.path().join("cv_ca/cacert.crt")).expect("CA written");
    for f in [
        "cakey.pem",
        "server-cert.crt",
        "server-private.pem",
        "client-cert.crt",
        "client-private.pem",
    ] {
        assert!(dir.path().join("cv_ca").join(f).exists(), "{f}");
    }
    let again = kctl(dir.path(), &["ca", "init", "-o", "json"]);
    assert_eq!(json(&again)["changed"], false);
    assert_eq!(std::fs::read(dir.path().join("cv_ca/cacert.crt")).expect("CA"), ca, "CA kept");

    let issued = kctl(dir.path(), &["ca", "issue", "--role", "viewer", "monitoring", "-o", "json"]);
    assert_eq!(issued.status.code(), Some(0));
    let v = json(&issued);
    assert_eq!((v["changed"].clone(), v["role"].clone()), (true.into(), "viewer".into()));
    let cert = std::fs::read(dir.path().join("cv_ca/monitoring-cert.crt")).expect("cert");
    assert!(String::from_utf8_lossy(&cert).contains("BEGIN CERTIFICATE"));
    let again = kctl(dir.path(), &["ca", "issue", "--role", "viewer", "monitoring", "-o", "json"]);
    assert_eq!(json(&again)["changed"], false);
}

#[test]
fn ca_errors_are_input_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_ca = kctl(dir.path(), &["ca", "issue", "--role", "admin", "ops"]);
    assert_eq!(no_ca.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("kctl ca init"));
    kctl(dir.path(), &["ca", "init"]);
    let bad_role = kctl(dir.path(), &["ca", "issue", "--role", "root", "ops"]);
    assert_eq!(bad_role.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("--role"));
}

#[test]
fn an_unreachable_registrar_is_a_transport_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    kctl(dir.path(), &["ca", "init"]);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let out = kctl(
        dir.path(),
        &["--registrar", &format!("127.0.0.1:{port}"), "registrar", "list", "-o", "json"],
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&port.to_string()));
}
