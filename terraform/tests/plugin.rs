//! The binary as Terraform sees it: the magic cookie, the handshake line on stdout, AutoMTLS.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use base64::Engine;

const BIN: &str = env!("CARGO_BIN_EXE_terraform-provider-keylime");
const COOKIE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

#[test]
fn without_the_magic_cookie_it_says_what_it_is_and_exits_1() {
    let out = Command::new(BIN).env_remove("TF_PLUGIN_MAGIC_COOKIE").output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "stdout stays clean");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is a Terraform plugin"), "{err}");
    let wrong = Command::new(BIN).env("TF_PLUGIN_MAGIC_COOKIE", "nope").output().expect("run");
    assert_eq!(wrong.status.code(), Some(1));
}

/// Starts the plugin and returns its handshake line; the plugin is killed afterwards.
fn handshake(client_cert: Option<&str>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.env("TF_PLUGIN_MAGIC_COOKIE", COOKIE)
        .env("PLUGIN_MIN_PORT", "0")
        .env_remove("PLUGIN_MAX_PORT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match client_cert {
        Some(pem) => cmd.env("PLUGIN_CLIENT_CERT", pem),
        None => cmd.env_remove("PLUGIN_CLIENT_CERT"),
    };
    let mut child = cmd.spawn().expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    child.kill().expect("kill");
    child.wait().expect("wait");
    line
}

#[test]
fn the_handshake_line_announces_protocol_6_over_grpc() {
    let line = handshake(None);
    let fields: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(fields.len(), 6, "{line}");
    assert_eq!(&fields[..3], ["1", "6", "tcp"]);
    assert!(fields[3].starts_with("127.0.0.1:"), "{line}");
    assert_eq!(fields[4], "grpc");
    assert_eq!(fields[5], "", "no client certificate, no TLS");
}

#[test]
fn with_automtls_the_line_carries_a_fresh_localhost_certificate() {
    let (client, _) = terraform_provider_keylime::plugin::self_signed().expect("client cert");
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(client.as_ref())
    );
    let first = handshake(Some(&pem));
    let second = handshake(Some(&pem));
    let cert_of = |line: &str| {
        let b64 = line.trim_end().rsplit('|').next().expect("field").to_owned();
        assert!(!b64.ends_with('='), "no padding: {b64}");
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64).expect("base64")
    };
    let der = cert_of(&first);
    assert_ne!(der, cert_of(&second), "a fresh certificate each start");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("DER certificate");
    let san = cert.subject_alternative_name().expect("ext").expect("SAN");
    assert!(format!("{:?}", san.value).contains("localhost"));
    assert!(cert.is_ca(), "go-plugin's client adds it to its roots");
}
