use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use tempfile::TempDir;

use super::*;
use crate::tls::TlsDir;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Temp dirs standing in for `/usr/etc` and `/etc`.
struct Roots {
    dir: TempDir,
}

impl Roots {
    fn new() -> Result<Self, std::io::Error> {
        Ok(Roots { dir: tempfile::tempdir()? })
    }

    /// Writes `text` at `rel` below the temp dir and returns the full path.
    fn write(&self, rel: &str, text: &str) -> Result<PathBuf, std::io::Error> {
        let path = self.dir.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn sources(&self) -> Sources {
        Sources { roots: vec![self.path("usr/etc"), self.path("etc")], ..Sources::new() }
    }
}

fn with_env(mut sources: Sources, vars: &[(&str, &str)]) -> Sources {
    sources.env.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    sources
}

fn error_of<T: ComponentConfig + std::fmt::Debug>(sources: &Sources) -> String {
    match load::<T>(sources) {
        Ok(loaded) => format!("unexpectedly loaded: {:?}", loaded.config),
        Err(e) => e.to_string(),
    }
}

#[test]
fn built_in_defaults_follow_the_design() -> TestResult {
    let roots = Roots::new()?;
    let agent = load::<AgentConfig>(&roots.sources())?.config;
    assert_eq!(agent.port, 9002);
    assert_eq!(agent.registrar_port, 8891);
    assert_eq!(agent.uuid, AgentUuid::HashEk);
    assert_eq!(agent.tcti, "device:/dev/tpmrm0");
    assert_eq!(agent.trusted_client_ca, Path::new("/var/lib/keylime/cv_ca/cacert.crt"));
    assert_eq!(agent.payload_script, "autorun.sh");
    assert_eq!(agent.contact_ip, None);
    assert_eq!(agent.log_format, LogFormat::Text);

    let registrar = load::<RegistrarConfig>(&roots.sources())?.config;
    assert_eq!(registrar.port, 8891);
    assert_eq!(registrar.tls_dir, TlsDir::Default);
    assert_eq!(registrar.tpm_cert_store, Path::new("/var/lib/keylime/tpm_cert_store"));
    assert!(registrar.require_ek_cert);

    let verifier = load::<VerifierConfig>(&roots.sources())?.config;
    assert_eq!(verifier.port, 8881);
    assert_eq!(verifier.tls_dir, TlsDir::Generate);
    assert_eq!(verifier.quote_interval, Duration::from_secs(2));
    assert!(!verifier.accept_tpm_hash_algs.iter().any(|a| a == "sha1"));
    assert_eq!(verifier.webhook_url, None);

    let tenant = load::<TenantConfig>(&roots.sources())?.config;
    assert_eq!((tenant.verifier_port, tenant.registrar_port), (8881, 8891));
    Ok(())
}

#[test]
fn shared_options_come_first_in_every_table() {
    // The default config files and man pages list options in table order: the options every
    // program has, then those every daemon has, then the component's own.
    let names = |options: Vec<OptionSpec>| -> Vec<&'static str> {
        options.iter().map(|s| s.name).collect()
    };
    let daemon = ["ip", "port", "keylime_dir", "tls_dir", "log_format", "log_level"];
    assert_eq!(names(AgentConfig::options())[..7], [&daemon[..], &["uuid"]].concat()[..]);
    assert_eq!(
        names(RegistrarConfig::options())[..7],
        [&daemon[..], &["tpm_cert_store"]].concat()[..]
    );
    assert_eq!(
        names(VerifierConfig::options())[..7],
        [&daemon[..], &["registrar_ip"]].concat()[..]
    );
    assert_eq!(
        names(TenantConfig::options()),
        [
            "keylime_dir",
            "tls_dir",
            "log_format",
            "log_level",
            "verifier_ip",
            "verifier_port",
            "registrar_ip",
            "registrar_port",
            "request_timeout"
        ]
    );
    let port =
        |options: Vec<OptionSpec>| options.iter().find(|s| s.name == "port").map(|s| s.default);
    assert_eq!(port(AgentConfig::options()), Some(Default::Value("9002")));
    assert_eq!(port(VerifierConfig::options()), Some(Default::Value("8881")));
}

#[test]
fn layers_apply_in_order_and_record_their_source() -> TestResult {
    let roots = Roots::new()?;
    let sources = with_env(roots.sources(), &[("KEYLIME_AGENT_CONTACT_PORT", "6")]);
    let mut sources = sources;
    sources.flags.push(Flag::new("registrar_ip", "10.0.0.7"));
    // Each layer sets `port` (the last one wins) and one option of its own.
    let usr = roots.write("usr/etc/keylime/agent.conf", "port = 1\ntcti = \"swtpm:port=1\"\n")?;
    let usr_d =
        roots.write("usr/etc/keylime/agent.conf.d/50.conf", "port = 2\nip = \"0.0.0.0\"")?;
    let etc = roots.write("etc/keylime/agent.conf", "port = 3\ncontact_ip = \"10.1.1.1\"\n")?;
    let etc_d = roots.write("etc/keylime/agent.conf.d/00.conf", "port = 4\nuuid = \"generate\"")?;
    let loaded = load::<AgentConfig>(&sources)?;
    let agent = &loaded.config;
    assert_eq!(agent.port, 4);
    assert_eq!(agent.tcti, "swtpm:port=1");
    assert_eq!(agent.ip.to_string(), "0.0.0.0");
    assert_eq!(agent.contact_ip.as_deref(), Some("10.1.1.1"));
    assert_eq!(agent.uuid, AgentUuid::Generate);
    assert_eq!(agent.contact_port, Some(6));
    assert_eq!(agent.registrar_ip, "10.0.0.7");
    let origin = |key: &str| loaded.origins.get(key).cloned();
    assert_eq!(origin("tcti"), Some(Source::File(usr)));
    assert_eq!(origin("ip"), Some(Source::File(usr_d)));
    assert_eq!(origin("contact_ip"), Some(Source::File(etc)));
    assert_eq!(origin("port"), Some(Source::File(etc_d)));
    assert_eq!(origin("contact_port"), Some(Source::Env("KEYLIME_AGENT_CONTACT_PORT".into())));
    assert_eq!(origin("registrar_ip"), Some(Source::Flag("--registrar-ip".into())));
    assert_eq!(origin("payload_script"), Some(Source::Default));

    // The environment beats every file, and a flag beats the environment.
    let sources = with_env(sources, &[("KEYLIME_AGENT_PORT", "5")]);
    assert_eq!(load::<AgentConfig>(&sources)?.config.port, 5);
    let mut sources = sources;
    sources.flags.push(Flag::new("port", "7"));
    assert_eq!(load::<AgentConfig>(&sources)?.config.port, 7);
    Ok(())
}

#[test]
fn drop_ins_are_read_in_name_order_and_only_dot_conf() -> TestResult {
    let roots = Roots::new()?;
    roots.write("etc/keylime/verifier.conf.d/20-late.conf", "quote_interval = 1.5")?;
    roots.write("etc/keylime/verifier.conf.d/10-early.conf", "quote_interval = 9")?;
    roots.write("etc/keylime/verifier.conf.d/30-off.conf.rpmsave", "quote_interval = 7")?;
    roots.write("etc/keylime/verifier.conf.d/README", "not toml at all [")?;
    let verifier = load::<VerifierConfig>(&roots.sources())?.config;
    assert_eq!(verifier.quote_interval, Duration::from_millis(1500));
    Ok(())
}

#[test]
fn keys_may_sit_under_the_component_section() -> TestResult {
    let roots = Roots::new()?;
    roots.write(
        "etc/keylime/agent.conf",
        "uuid = \"D432FBB3-D2F1-4A97-9EF7-75BD81C00000\"\n[agent]\nregistrar_ip = \"registrar.lan\"\nregistrar_port = 8899\n",
    )?;
    let agent = load::<AgentConfig>(&roots.sources())?.config;
    assert_eq!(agent.registrar_ip, "registrar.lan");
    assert_eq!(agent.registrar_port, 8899);
    assert_eq!(agent.uuid, AgentUuid::Fixed("d432fbb3-d2f1-4a97-9ef7-75bd81c00000".into()));
    Ok(())
}

#[test]
fn foreign_sections_and_doubly_set_keys_are_errors() -> TestResult {
    let roots = Roots::new()?;
    let path = roots.write("etc/keylime/agent.conf", "[registrar]\nport = 1\n")?;
    assert_eq!(
        error_of::<AgentConfig>(&roots.sources()),
        format!("{}: [registrar] is not a section of the agent config", path.display())
    );
    roots.write("etc/keylime/agent.conf", "port = 1\n[agent]\nport = 2\n")?;
    assert_eq!(
        error_of::<AgentConfig>(&roots.sources()),
        format!("{}: port is set both at top level and in [agent]", path.display())
    );
    Ok(())
}

#[test]
fn unknown_keys_name_the_file_and_key() -> TestResult {
    let roots = Roots::new()?;
    let path =
        roots.write("usr/etc/keylime/registrar.conf", "[registrar]\ntpm_cert_stor = \"/x\"\n")?;
    assert_eq!(
        error_of::<RegistrarConfig>(&roots.sources()),
        format!(
            "{}: unknown option \"tpm_cert_stor\" for the registrar (did you mean \"tpm_cert_store\"?)",
            path.display()
        )
    );
    // An agent option is unknown to the registrar, with nothing close enough to suggest.
    let path = roots.write("usr/etc/keylime/registrar.conf", "revocation_actions = []\n")?;
    assert_eq!(
        error_of::<RegistrarConfig>(&roots.sources()),
        format!("{}: unknown option \"revocation_actions\" for the registrar", path.display())
    );
    Ok(())
}

#[test]
fn a_bad_value_in_a_drop_in_names_the_drop_in() -> TestResult {
    let roots = Roots::new()?;
    roots.write("etc/keylime/agent.conf", "registrar_port = 8891\n")?;
    let dropin =
        roots.write("etc/keylime/agent.conf.d/10-net.conf", "registrar_port = \"80a\"\n")?;
    assert_eq!(
        error_of::<AgentConfig>(&roots.sources()),
        format!("{}: registrar_port = \"80a\": not a port number", dropin.display())
    );
    let dropin = roots.write("etc/keylime/agent.conf.d/10-net.conf", "revocation_actions = 3\n")?;
    assert_eq!(
        error_of::<AgentConfig>(&roots.sources()),
        format!("{}: revocation_actions = 3: expected an array of strings", dropin.display())
    );
    roots.write("etc/keylime/agent.conf.d/10-net.conf", "")?;
    let dropin =
        roots.write("etc/keylime/verifier.conf.d/9.conf", "accept_tpm_hash_algs = [\"md5\"]")?;
    assert_eq!(
        error_of::<VerifierConfig>(&roots.sources()),
        format!(
            "{}: accept_tpm_hash_algs = [\"md5\"]: \"md5\" is not one of sha1, sha256, sha384, sha512, sm3_256",
            dropin.display()
        )
    );
    Ok(())
}

#[test]
fn toml_syntax_errors_name_the_file() -> TestResult {
    let roots = Roots::new()?;
    let path = roots.write("etc/keylime/tenant.conf", "verifier_ip = \n")?;
    let err = error_of::<TenantConfig>(&roots.sources());
    assert!(err.starts_with(&format!("{}: not valid TOML: ", path.display())), "{err}");
    Ok(())
}

#[test]
fn environment_errors_name_the_variable() -> TestResult {
    let roots = Roots::new()?;
    let sources = with_env(roots.sources(), &[("KEYLIME_AGENT_REGISTRAR_PORT", "80a")]);
    assert_eq!(
        error_of::<AgentConfig>(&sources),
        "environment variable KEYLIME_AGENT_REGISTRAR_PORT: registrar_port = \"80a\": not a port number"
    );
    let sources = with_env(roots.sources(), &[("KEYLIME_VERIFIER_QUOTE_INTERVALL", "2")]);
    assert_eq!(
        error_of::<VerifierConfig>(&sources),
        "environment variable KEYLIME_VERIFIER_QUOTE_INTERVALL: unknown option \"quote_intervall\" for the verifier (did you mean \"quote_interval\"?)"
    );
    // Other components' variables are not this component's business.
    let sources = with_env(roots.sources(), &[("KEYLIME_AGENT_BOGUS", "1")]);
    assert!(load::<VerifierConfig>(&sources).is_ok());
    Ok(())
}

#[test]
fn keylime_dir_moves_the_derived_paths() -> TestResult {
    let roots = Roots::new()?;
    let sources = with_env(roots.sources(), &[("KEYLIME_DIR", "/srv/kl")]);
    let loaded = load::<AgentConfig>(&sources)?;
    assert_eq!(loaded.config.keylime_dir, Path::new("/srv/kl"));
    assert_eq!(loaded.config.trusted_client_ca, Path::new("/srv/kl/cv_ca/cacert.crt"));
    assert_eq!(loaded.config.agent_data_path, Path::new("/srv/kl/agent"));
    assert_eq!(loaded.origins.get("keylime_dir"), Some(&Source::Env("KEYLIME_DIR".into())));
    // The component's own variable is more specific than KEYLIME_DIR.
    let sources = with_env(sources, &[("KEYLIME_REGISTRAR_KEYLIME_DIR", "/srv/reg")]);
    let registrar = load::<RegistrarConfig>(&sources)?.config;
    assert_eq!(registrar.tpm_cert_store, Path::new("/srv/reg/tpm_cert_store"));
    // A value set explicitly is not moved.
    roots.write("etc/keylime/registrar.conf", "tpm_cert_store = \"/opt/ekca\"")?;
    let registrar = load::<RegistrarConfig>(&sources)?.config;
    assert_eq!(registrar.tpm_cert_store, Path::new("/opt/ekca"));
    Ok(())
}

#[test]
fn config_file_replaces_the_layered_files() -> TestResult {
    let roots = Roots::new()?;
    roots.write("etc/keylime/agent.conf", "registrar_port = 1\n")?;
    roots.write("etc/keylime/agent.conf.d/10.conf", "no_such_option = 1\n")?;
    let own = roots.write("test/agent.toml", "[agent]\nport = 9100\n")?;
    let mut sources = roots.sources();
    sources.config_file = Some(own.clone());
    let loaded = load::<AgentConfig>(&sources)?;
    assert_eq!(loaded.config.port, 9100);
    assert_eq!(loaded.config.registrar_port, 8891);
    assert_eq!(loaded.origins.get("port"), Some(&Source::File(own.clone())));
    // The environment and flags still apply on top of it.
    let mut sources = with_env(sources, &[("KEYLIME_AGENT_PORT", "9200")]);
    assert_eq!(load::<AgentConfig>(&sources)?.config.port, 9200);
    sources.flags.push(Flag::new("port", "9300"));
    assert_eq!(load::<AgentConfig>(&sources)?.config.port, 9300);

    // KEYLIME_<C>_CONFIG does the same, for Keylime compatibility.
    let own_path = own.to_string_lossy().into_owned();
    let sources = with_env(roots.sources(), &[("KEYLIME_AGENT_CONFIG", own_path.as_str())]);
    assert_eq!(load::<AgentConfig>(&sources)?.config.port, 9100);

    let mut sources = roots.sources();
    let missing = roots.path("test/missing.toml");
    sources.config_file = Some(missing.clone());
    let err = error_of::<AgentConfig>(&sources);
    assert!(err.starts_with(&format!("{}: cannot read: ", missing.display())), "{err}");
    Ok(())
}

#[test]
fn flag_errors_name_the_flag() -> TestResult {
    let roots = Roots::new()?;
    let mut sources = roots.sources();
    sources.flags.push(Flag::new("registrar_port", "80a"));
    assert_eq!(
        error_of::<AgentConfig>(&sources),
        "--registrar-port: registrar_port = \"80a\": not a port number"
    );
    let err = Flag::parse_set("port").err().map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("--set: expected OPTION=VALUE, got \"port\""));
    let mut sources = roots.sources();
    sources.flags.push(Flag::parse_set("quote_interval=soon")?);
    assert_eq!(
        error_of::<VerifierConfig>(&sources),
        "--set: quote_interval = \"soon\": not a number of seconds"
    );
    Ok(())
}

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long)]
    port: Option<u16>,
}

#[test]
fn command_line_flags_and_print_config() -> TestResult {
    let roots = Roots::new()?;
    let own = roots.write("agent.toml", "tcti = \"swtpm:host=127.0.0.1,port=2321\"\n")?;
    let own_arg = own.to_string_lossy().into_owned();
    let cli = Cli::try_parse_from([
        "keylime_agent",
        "--config",
        own_arg.as_str(),
        "--set",
        "uuid=generate",
        "--set",
        "revocation_actions=a.sh, b.sh",
        "--port",
        "9555",
        "--print-config",
    ])?;
    assert!(cli.config.print_config);
    let extra = cli.port.map(|p| Flag::new("port", p.to_string())).into_iter().collect();
    let sources = cli.config.apply(roots.sources(), extra)?;
    let loaded = load::<AgentConfig>(&sources)?;
    let json: serde_json::Value = serde_json::from_str(&loaded.to_json()?)?;
    assert_eq!(json["port"], 9555);
    assert_eq!(json["uuid"], "generate");
    assert_eq!(json["tcti"], "swtpm:host=127.0.0.1,port=2321");
    assert_eq!(json["revocation_actions"], serde_json::json!(["a.sh", "b.sh"]));
    assert_eq!(json["contact_ip"], serde_json::Value::Null);

    let verifier = load::<VerifierConfig>(&roots.sources())?;
    let json: serde_json::Value = serde_json::from_str(&verifier.to_json()?)?;
    assert_eq!(json["quote_interval"], 2.0);
    assert_eq!(json["tls_dir"], "generate");
    assert_eq!(json["webhook_secret"], serde_json::Value::Null, "unset stays null");
    Ok(())
}

#[test]
fn print_config_masks_secrets() -> TestResult {
    let roots = Roots::new()?;
    roots.write(
        "etc/keylime/verifier.conf",
        "webhook_secret = \"hunter2-hmac-key\"\n\
         webhook_url = \"https://hooks.example:8443/services/T0/B0/tok3n?x=1\"",
    )?;
    let verifier = load::<VerifierConfig>(&roots.sources())?;
    assert_eq!(verifier.config.webhook_secret.as_deref(), Some("hunter2-hmac-key"));
    let printed = verifier.to_json()?;
    assert!(!printed.contains("hunter2"), "{printed}");
    let json: serde_json::Value = serde_json::from_str(&printed)?;
    assert_eq!(json["webhook_secret"], super::MASKED);
    assert_eq!(json["webhook_url"], "https://hooks.example:8443/<path not shown>");
    assert!(!printed.contains("tok3n"), "{printed}");
    Ok(())
}

#[test]
fn print_config_masks_the_database_password() -> TestResult {
    let roots = Roots::new()?;
    roots.write(
        "etc/keylime/registrar.conf",
        "database_url = \"postgresql://keylime:s3cret@127.0.0.1:5432/fleet?connect_timeout=5&password=s3cret\"\n\
         database_password_file = \"/etc/keylime/db-password\"",
    )?;
    let registrar = load::<RegistrarConfig>(&roots.sources())?;
    let printed = registrar.to_json()?;
    assert!(!printed.contains("s3cret"), "{printed}");
    let json: serde_json::Value = serde_json::from_str(&printed)?;
    assert_eq!(
        json["database_url"],
        format!(
            "postgresql://keylime:{m}@127.0.0.1:5432/fleet?connect_timeout=5&password={m}",
            m = super::MASKED
        )
    );
    assert_eq!(json["database_password_file"], "/etc/keylime/db-password");
    let verifier = load::<VerifierConfig>(&Roots::new()?.sources())?;
    let json: serde_json::Value = serde_json::from_str(&verifier.to_json()?)?;
    assert_eq!(json["database_url"], serde_json::Value::Null, "the redb file by default");
    // Shapes the client library reads a password from that a plain split would miss.
    for url in [
        "postgresql://keylime:pa/ss3cret@127.0.0.1/fleet",
        "postgresql://keylime:p@s3cret@127.0.0.1/fleet",
        "postgresql://keylime@127.0.0.1/fleet?pass%77ord=s3cret",
        "postgresql://keylime@127.0.0.1/fleet?PASSWORD=s3cret",
        "host=127.0.0.1 user=keylime password=s3cret",
    ] {
        let roots = Roots::new()?;
        roots.write("etc/keylime/verifier.conf", &format!("database_url = {url:?}"))?;
        let printed = load::<VerifierConfig>(&roots.sources())?.to_json()?;
        assert!(!printed.contains("s3cret"), "{url}: {printed}");
    }
    Ok(())
}

#[test]
fn optional_values_can_be_unset_again() -> TestResult {
    let roots = Roots::new()?;
    roots.write("etc/keylime/verifier.conf", "webhook_url = \"https://hooks.example/keylime\"")?;
    let verifier = load::<VerifierConfig>(&roots.sources())?.config;
    assert_eq!(verifier.webhook_url.as_deref(), Some("https://hooks.example/keylime"));
    let sources = with_env(roots.sources(), &[("KEYLIME_VERIFIER_WEBHOOK_URL", "")]);
    assert_eq!(load::<VerifierConfig>(&sources)?.config.webhook_url, None);
    Ok(())
}

#[test]
fn config_root_stands_in_for_slash() -> TestResult {
    let roots = Roots::new()?;
    roots.write("usr/etc/keylime/verifier.conf", "port = 1111\nquote_interval = 5\n")?;
    let dropin = roots.write("etc/keylime/verifier.conf.d/50-site.conf", "port = 2222\n")?;
    let cli = Cli::try_parse_from([
        "keylime_verifier",
        "--config-root",
        &roots.dir.path().display().to_string(),
    ])?;
    let sources = cli.config.apply(Sources::new(), Vec::new())?;
    assert_eq!(sources.roots, vec![roots.dir.path().join("usr/etc"), roots.dir.path().join("etc")]);
    let loaded = load::<VerifierConfig>(&sources)?;
    assert_eq!(loaded.config.port, 2222);
    assert_eq!(loaded.config.quote_interval, Duration::from_secs(5));
    assert_eq!(loaded.origins.get("port"), Some(&Source::File(dropin)));
    Ok(())
}
