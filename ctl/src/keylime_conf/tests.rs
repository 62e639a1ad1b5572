//! Conversion of Keylime's shipped configs (ctl/tests/data/keylime-conf), each option's fate
//! asserted.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value as Json, json};

use super::*;

fn report(file: &str, component: Option<Component>) -> Report {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keylime-conf").join(file);
    let text = std::fs::read_to_string(&path).expect("fixture");
    let ini = Ini::parse(&path, &text).expect("parses");
    convert(&ini, component).expect("converts")
}

fn converted(r: &Report) -> BTreeMap<String, Json> {
    r.converted.iter().map(|c| (c.option.clone(), c.value.clone())).collect()
}

fn no_equivalent(r: &Report) -> BTreeSet<String> {
    r.no_equivalent.iter().map(|n| n.keylime.clone()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Every option of the file is in exactly one list.
fn accounts_for_every_option(r: &Report, file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keylime-conf").join(file);
    let ini = Ini::parse(&path, &std::fs::read_to_string(&path).expect("fixture")).expect("ini");
    let listed = r.converted.len()
        + r.kept.len()
        + r.no_equivalent.len()
        + r.other_sections.iter().map(|s| s.options.len()).sum::<usize>();
    assert_eq!(listed, ini.entries.len(), "{file}: {r:#?}");
}

/// The drop-in is TOML whose `[component]` table holds exactly the converted values.
fn drop_in(r: &Report) -> toml::Table {
    let doc: toml::Table = toml::from_str(&r.toml).expect("the drop-in is TOML");
    let table = doc[&r.component].as_table().expect("[component]").clone();
    assert_eq!(table.len(), r.converted.len());
    table
}

#[test]
fn verifier_conf() {
    let r = report("verifier.conf", None);
    assert_eq!(r.component, "verifier");
    accounts_for_every_option(&r, "verifier.conf");
    let expected: BTreeMap<String, Json> = [
        ("ip", json!("0.0.0.0")),
        ("port", json!(8881)),
        ("registrar_ip", json!("10.0.0.2")),
        ("registrar_port", json!(8891)),
        ("tls_dir", json!("generate")),
        ("exponential_backoff", json!(true)),
        ("max_retries", json!(8)),
        ("quote_interval", json!(5.0)),
        ("request_timeout", json!(60.0)),
        ("webhook_url", json!("https://hooks.example.com/keylime")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(converted(&r), expected);
    assert_eq!(
        no_equivalent(&r),
        set(&[
            "[verifier] database_url",
            "[verifier] severity_labels",
            "[verifier] severity_policy",
            "[verifier] retry_interval",
            "[revocations] enabled_revocation_notifications",
        ])
    );
    let db = r.no_equivalent.iter().find(|n| n.keylime == "[verifier] database_url").expect("db");
    assert!(db.reason.contains("redb"), "{}", db.reason);
    assert_eq!(db.value, "<not shown>", "the database password stays out of the report");
    let table = drop_in(&r);
    assert_eq!(table["quote_interval"].as_integer(), Some(5));
    assert_eq!(table["ip"].as_str(), Some("0.0.0.0"));
    // Names and reasons only: a database password must not reach the drop-in.
    assert!(!r.toml.contains("secret"), "{}", r.toml);
    assert!(r.toml.contains("#   [verifier] database_url (line 34): "), "{}", r.toml);
}

#[test]
fn registrar_conf() {
    let r = report("registrar.conf", None);
    assert_eq!(r.component, "registrar");
    accounts_for_every_option(&r, "registrar.conf");
    assert_eq!(
        converted(&r),
        [("ip", json!("0.0.0.0")), ("port", json!(8891)), ("tls_dir", json!("default"))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    );
    assert_eq!(no_equivalent(&r), set(&["[registrar] port", "[registrar] tpm_identity"]));
    drop_in(&r);
}

#[test]
fn tenant_conf() {
    let r = report("tenant.conf", None);
    accounts_for_every_option(&r, "tenant.conf");
    assert_eq!(
        converted(&r),
        [
            ("verifier_ip", json!("10.0.0.1")),
            ("verifier_port", json!(8881)),
            ("registrar_ip", json!("10.0.0.2")),
            ("registrar_port", json!(8891)),
            ("tls_dir", json!("/etc/keylime/tenant-tls")),
            ("request_timeout", json!(30.0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    );
    assert_eq!(
        no_equivalent(&r),
        set(&[
            "[tenant] tpm_cert_store",
            "[tenant] max_payload_size",
            "[tenant] accept_tpm_hash_algs",
            "[tenant] accept_tpm_encryption_algs",
            "[tenant] accept_tpm_signing_algs",
            "[tenant] exponential_backoff",
            "[tenant] retry_interval",
            "[tenant] max_retries",
            "[tenant] require_ek_cert",
        ])
    );
    let store = r.no_equivalent.iter().find(|n| n.keylime == "[tenant] tpm_cert_store");
    assert!(store.is_some_and(|n| n.reason.contains("registrar.conf")));
    drop_in(&r);
}

#[test]
fn rust_agent_conf() {
    let r = report("agent.conf", None);
    assert_eq!(r.component, "agent");
    accounts_for_every_option(&r, "agent.conf");
    assert_eq!(
        converted(&r),
        [
            ("uuid", json!("d432fbb3-d2f1-4a97-9ef7-75bd81c00000")),
            ("ip", json!("0.0.0.0")),
            ("port", json!(9002)),
            ("contact_ip", json!("10.0.0.20")),
            ("contact_port", json!(9002)),
            ("registrar_ip", json!("10.0.0.2")),
            ("registrar_port", json!(8891)),
            ("keylime_dir", json!("/var/lib/keylime")),
            ("secure_size", json!(1_048_576)),
            ("revocation_actions_dir", json!("/usr/libexec/keylime")),
            ("revocation_actions", json!(["local_action_rm_ssh", "local_action_stop_service"])),
            ("payload_script", json!("autorun.sh")),
            ("allow_payload_revocation_actions", json!(true)),
            ("tpm_hash_alg", json!("sha256")),
            ("tpm_encryption_alg", json!("rsa")),
            ("tpm_signing_alg", json!("rsassa")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    );
    assert_eq!(
        no_equivalent(&r),
        set(&[
            "[agent] registrar_port",
            "[agent] iak_idevid_template",
            "[agent] iak_idevid_asymmetric_alg",
            "[agent] iak_idevid_name_alg",
            "[agent] idevid_cert",
            "[agent] iak_cert",
            "[agent] run_as",
        ])
    );
    let kept: BTreeSet<&str> = r.kept.iter().map(|k| k.keylime.as_str()).collect();
    for default in ["[agent] trusted_client_ca", "[agent] agent_data_path", "[agent] ima_ml_path"] {
        assert!(kept.contains(default), "{default} keeps this project's default: {kept:?}");
    }
    // enable_revocation_notifications = false: Keylime never reads the broker address.
    let notify = r.kept.iter().find(|k| k.keylime == "[agent] revocation_notification_ip");
    assert!(notify.is_some_and(|k| k.note.starts_with("unused in Keylime")), "{notify:?}");
    drop_in(&r);
}

#[test]
fn the_monolithic_file_needs_a_component_and_lists_the_other_sections() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keylime-conf/keylime.conf");
    let ini = Ini::parse(&path, &std::fs::read_to_string(&path).expect("fixture")).expect("ini");
    let e = convert(&ini, None).expect_err("several components").to_string();
    assert!(
        e.contains("keylime.conf: holds the configs of verifier, registrar, agent, tenant"),
        "{e}"
    );

    let r = report("keylime.conf", Some(Component::Verifier));
    accounts_for_every_option(&r, "keylime.conf");
    assert_eq!(converted(&r)["ip"], json!("0.0.0.0"));
    assert_eq!(converted(&r)["max_retries"], json!(10));
    // database_url (sqlite) is kept: the state is in a file here too. The verifier's id
    // names a replica; Keylime's `default` keeps this project's (host name and port).
    assert!(no_equivalent(&r).is_empty(), "{:?}", no_equivalent(&r));
    assert!(!converted(&r).contains_key("id"));
    let others: Vec<&str> = r.other_sections.iter().map(|s| s.section.as_str()).collect();
    assert_eq!(others, ["general", "cloud_agent", "tenant", "registrar", "ca"]);
    assert!(r.other_sections[1].note.contains("--component agent"));

    let r = report("keylime.conf", Some(Component::Agent));
    assert_eq!(converted(&r)["uuid"], json!("hash_ek"));
    assert_eq!(converted(&r)["contact_ip"], json!("10.0.0.21"));
    let r = report("keylime.conf", Some(Component::Registrar));
    assert_eq!(converted(&r)["port"], json!(8891));
    assert!(no_equivalent(&r).contains("[registrar] registrar_port"));
}

#[test]
fn values_this_project_cannot_take_are_listed_not_written() {
    let ini = Ini::parse(
        Path::new("agent.conf"),
        "[agent]\nuuid = dmidecode\nport = 9002\nip = 0.0.0.0\ncloudagent_ip = 10.0.0.1\n\
         secure_size = lots\nfrobnicate = 1\n",
    )
    .expect("ini");
    let r = convert(&ini, None).expect("converts");
    let reasons: BTreeMap<&str, &str> =
        r.no_equivalent.iter().map(|n| (n.keylime.as_str(), n.reason.as_str())).collect();
    assert!(reasons["[agent] uuid"].contains("not a UUID"), "{reasons:?}");
    assert!(reasons["[agent] cloudagent_ip"].contains("already set from [agent] ip"));
    assert!(reasons["[agent] secure_size"].contains("size"));
    assert!(reasons["[agent] frobnicate"].contains("not a Keylime 7.x agent option"));
    assert_eq!(converted(&r).keys().collect::<Vec<_>>(), ["ip", "port"]);
}

fn parse(name: &str, text: &str) -> Report {
    convert(&Ini::parse(Path::new(name), text).expect("ini"), None).expect("converts")
}

#[test]
fn retry_interval_is_converted_only_where_the_waits_agree() {
    // Keylime: retry_interval ** n with backoff (its default); here retry_interval * 2^(n-1).
    for text in [
        "[verifier]\nretry_interval = 3\n",
        "[verifier]\nexponential_backoff = True\nretry_interval = 3\n",
        "[verifier]\nexponential_backoff = on\nretry_interval = 1\n",
    ] {
        let r = parse("verifier.conf", text);
        assert!(!converted(&r).contains_key("retry_interval"), "{text}: {r:#?}");
        let n = r.no_equivalent.iter().find(|n| n.keylime == "[verifier] retry_interval");
        assert!(n.is_some_and(|n| n.reason.contains("agree only at 2")), "{text}: {n:?}");
    }
    for (text, value) in [
        ("[verifier]\nretry_interval = 2\n", 2.0),
        ("[verifier]\nexponential_backoff = False\nretry_interval = 3\n", 3.0),
    ] {
        let r = parse("verifier.conf", text);
        assert_eq!(converted(&r).get("retry_interval"), Some(&json!(value)), "{text}");
    }
}

#[test]
fn agent_data_path_and_the_notification_broker_are_not_carried_over_blindly() {
    let r = parse(
        "agent.conf",
        "[agent]\nagent_data_path = /var/lib/keylime/agent_data.json\n\
         enable_revocation_notifications = true\nrevocation_notification_ip = 10.0.0.1\n",
    );
    assert!(converted(&r).is_empty(), "{r:#?}");
    let reasons: BTreeMap<&str, &str> =
        r.no_equivalent.iter().map(|n| (n.keylime.as_str(), n.reason.as_str())).collect();
    assert!(reasons["[agent] agent_data_path"].contains("JSON file"), "{reasons:?}");
    let broker = reasons["[agent] revocation_notification_ip"];
    assert!(broker.contains("ZeroMQ broker") && broker.contains("verifier addresses"), "{broker}");
}

#[test]
fn values_of_unknown_and_secret_looking_options_stay_out_of_the_report() {
    let r = parse(
        "verifier.conf",
        "[verifier]\nip = 0.0.0.0\ndb_pass = hunter2\napi_token = tok-123\n\
         client_secret = s3cr3t\nfrobnicate = opaque-value\nseverity_policy = strict\nuuid = 0d8d\n",
    );
    let json = serde_json::to_string(&r).expect("json");
    for value in ["hunter2", "tok-123", "s3cr3t", "opaque-value"] {
        assert!(!json.contains(value), "{value} in the report: {json}");
        assert!(!r.toml.contains(value), "{value} in the drop-in: {}", r.toml);
    }
    let shown: BTreeMap<&str, &str> =
        r.no_equivalent.iter().map(|n| (n.keylime.as_str(), n.value.as_str())).collect();
    assert_eq!(shown["[verifier] db_pass"], "<not shown>");
    assert_eq!(shown["[verifier] frobnicate"], "<not shown>");
    // A known option without a secret-looking name keeps its value, to act on.
    assert_eq!(shown["[verifier] severity_policy"], "strict");
    // The verifier's id names a replica.
    assert_eq!(converted(&r)["id"], json!("0d8d"));
    assert_eq!(converted(&r)["ip"], json!("0.0.0.0"));
}

#[test]
fn a_file_without_the_components_section_is_refused() {
    let ini = Ini::parse(Path::new("ca.conf"), "[ca]\ncert_country = US\n").expect("ini");
    let e = convert(&ini, None).expect_err("no component").to_string();
    assert!(
        e.starts_with("ca.conf: no Keylime verifier, registrar, agent or tenant section"),
        "{e}"
    );
    let ini = Ini::parse(Path::new("tenant.conf"), "[tenant]\nverifier_ip = a\n").expect("ini");
    let e = convert(&ini, Some(Component::Verifier)).expect_err("not a verifier file").to_string();
    assert!(e.contains("no section of the verifier config ([verifier], [cloud_verifier]"), "{e}");
}

#[test]
fn sizes() {
    assert_eq!(bytes("1m"), Ok(1 << 20));
    assert_eq!(bytes("512K"), Ok(512 << 10));
    assert_eq!(bytes("2gb"), Ok(2 << 30));
    assert_eq!(bytes("4096"), Ok(4096));
    assert!(bytes("m").is_err() && bytes("-1k").is_err());
}

/// The tenant has no daemon to print its config: load the drop-in as kctl does.
#[test]
fn the_tenant_drop_in_loads_as_kctls_config() {
    let r = report("tenant.conf", None);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tenant.conf");
    std::fs::write(&file, &r.toml).expect("write");
    let sources = kl_svc::config::Sources { config_file: Some(file), ..Default::default() };
    let loaded = kl_svc::config::load::<TenantConfig>(&sources).expect("kctl loads the drop-in");
    assert_eq!(loaded.config.verifier_ip, "10.0.0.1");
    assert_eq!(loaded.config.registrar_ip, "10.0.0.2");
    assert_eq!(loaded.config.request_timeout, std::time::Duration::from_secs(30));
}
