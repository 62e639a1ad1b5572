//! The gRPC API as integrators and load balancers see it, through grpcio (Python) clients built
//! from the repository's proto files: the standard health and reflection services of all three
//! daemons with an admin and a viewer certificate, health going NOT_SERVING at shutdown and
//! while the verifier's state store cannot be written (a full tmpfs), the example client of
//! docs/examples/python, and `kctl health` (with an agent that loses its TPM).
//!
//! grpcio lives in a virtual environment that scripts/install-deps.sh creates;
//! scripts/test.sh names it in `KEYLIME_GRPC_VENV`. Without it the Python parts pass vacuously,
//! except when `CI` is set: then they fail, so CI never skips them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kl_tests::daemon::{self, KCTL};
use kl_tests::deployment::{Deployment, TestAgent};
use kl_tests::{Result, err};
use serde_json::Value;

use crate::attestation::{System, check};

const VERIFIER_SERVICE: &str = "keylime.verifier.v1.Verifier";
const REGISTRAR_SERVICE: &str = "keylime.registrar.v1.Registrar";
const AGENT_SERVICE: &str = "keylime.agent.v1.Agent";
/// What every daemon serves beside its own API.
const STANDARD: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];
/// How long health may take to follow the daemon's state (it looks every second or two).
const HEALTH_DEADLINE: Duration = Duration::from_secs(30);

/// The Python of the grpcio virtual environment, or `None` when the test cannot run.
fn python() -> Result<Option<PathBuf>> {
    let found = std::env::var_os("KEYLIME_GRPC_VENV")
        .map(|v| PathBuf::from(v).join("bin").join("python"))
        .filter(|p| p.is_file());
    match (found, std::env::var_os("CI")) {
        (Some(p), _) => Ok(Some(p)),
        (None, Some(_)) => Err(err(
            "CI is set, but KEYLIME_GRPC_VENV does not name a virtual environment with grpcio \
             (scripts/install-deps.sh creates it, scripts/test.sh sets it)",
        )),
        (None, None) => Ok(None),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A client identity: the CA (or pinned certificate) to trust, certificate and key.
#[derive(Clone)]
struct Identity {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Identity {
    fn args(&self) -> Vec<String> {
        let s = |p: &Path| p.display().to_string();
        vec![
            "--ca".into(),
            s(&self.ca),
            "--cert".into(),
            s(&self.cert),
            "--key".into(),
            s(&self.key),
        ]
    }

    /// The same certificate, trusting `ca` for the server (an agent's own certificate).
    fn trusting(&self, ca: &Path) -> Identity {
        Identity { ca: ca.to_owned(), ..self.clone() }
    }
}

fn admin(deployment: &Deployment) -> Identity {
    let tls = deployment.tls();
    Identity { ca: tls.ca_cert(), cert: tls.client_cert(), key: tls.client_key() }
}

/// A viewer certificate issued by the deployment CA with `kctl ca issue`.
fn viewer(sys: &System) -> Result<Identity> {
    let dir = sys.deployment.keylime_dir().join("viewer");
    let out = sys.run(
        KCTL,
        &["ca", "issue", "--role", "viewer", "probe", "--out-dir", &dir.display().to_string()],
    )?;
    check(&out, "kctl ca issue --role viewer")?;
    Ok(Identity {
        ca: sys.deployment.tls().ca_cert(),
        cert: dir.join("probe-cert.crt"),
        key: dir.join("probe-private.pem"),
    })
}

/// An admin certificate issued by a CA other than the deployment's, trusting the deployment CA.
fn foreign_admin(sys: &System) -> Result<Identity> {
    let dir = sys.deployment.keylime_dir().join("foreign");
    std::fs::create_dir_all(&dir)?;
    let issued = kl_svc::tls::CertificateAuthority::generate("another CA")?.issue(
        kl_svc::tls::Role::Admin,
        "admin",
        &[],
    )?;
    let (cert, key) = (dir.join("admin-cert.crt"), dir.join("admin-private.pem"));
    std::fs::write(&cert, &issued.cert_pem)?;
    std::fs::write(&key, &issued.key_pem)?;
    Ok(Identity { ca: sys.deployment.tls().ca_cert(), cert, key })
}

fn probe(python: &Path, args: &[&str], identity: &Identity) -> Result<Value> {
    let out = Command::new(python)
        .arg(repo().join("tests/python/api_probe.py"))
        .args(args)
        .args(identity.args())
        .output()?;
    parse(&out, &format!("api_probe.py {args:?}"))
}

fn parse(out: &Output, what: &str) -> Result<Value> {
    check(out, what)?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        err(format!("{what}: stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    })
}

fn target(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Waits until `check` on `target` reports `status`.
fn wait_status(python: &Path, target: &str, identity: &Identity, status: &str) -> Result<Value> {
    let deadline = Instant::now() + HEALTH_DEADLINE;
    loop {
        let answer = probe(python, &["check", target], identity)?;
        if answer["status"] == status {
            return Ok(answer);
        }
        if Instant::now() > deadline {
            return Err(err(format!("{target}: health stayed {answer}, expected {status}")));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn health_and_reflection_answer_admin_and_viewer_on_all_three_daemons() -> Result<()> {
    let Some(python) = python()? else { return Ok(()) };
    let Some(sys) = System::start()? else { return Ok(()) };
    let agent_cert = sys.agent.dir.join("agent").join("identity-cert.pem");
    let admin = admin(&sys.deployment);
    let viewer = viewer(&sys)?;
    // Each with another daemon's service, which its reflection must not describe.
    let daemons = [
        ("verifier", sys.verifier.port(), VERIFIER_SERVICE, REGISTRAR_SERVICE, None),
        ("registrar", sys.registrar.port(), REGISTRAR_SERVICE, AGENT_SERVICE, None),
        (
            "agent",
            sys.agent.daemon.port(),
            AGENT_SERVICE,
            VERIFIER_SERVICE,
            Some(agent_cert.as_path()),
        ),
    ];
    for (name, port, service, foreign, pinned) in daemons {
        for (role, identity) in [("admin", &admin), ("viewer", &viewer)] {
            let identity = match pinned {
                Some(cert) => identity.trusting(cert),
                None => identity.clone(),
            };
            let at = target(port);
            let what = format!("{name} with the {role} certificate");
            wait_status(&python, &at, &identity, "SERVING")?;
            let survey = probe(
                &python,
                &["survey", &at, "--service", service, "--foreign", foreign],
                &identity,
            )?;
            assert_eq!(
                survey["foreign"], "NOT_FOUND",
                "{what}: reflection describes {foreign}: {survey}"
            );
            assert_eq!(survey["whole"], "SERVING", "{what}: {survey}");
            assert_eq!(survey["named"], "SERVING", "{what}: {service}: {survey}");
            assert_eq!(survey["unknown"], "NOT_FOUND", "{what}: an unknown service: {survey}");
            let listed = &survey["services"];
            let mut expected: Vec<&str> = STANDARD.iter().copied().chain([service]).collect();
            expected.sort_unstable();
            for version in ["v1", "v1alpha"] {
                assert_eq!(listed[version], serde_json::json!(expected), "{what}: {version}");
            }
            let file = format!("keylime/{name}/v1/{name}.proto");
            assert_eq!(listed["files"][service], file.as_str(), "{what}: {listed}");
            assert_eq!(listed["files"]["grpc.health.v1.Health"], "health.proto", "{what}");
        }
    }

    // mTLS stays: the registrar admits clients without a certificate to Register and
    // Activate, but not to health or reflection.
    let out = Command::new(&python)
        .arg(repo().join("tests/python/api_probe.py"))
        .args(["check", &target(sys.registrar.port()), "--ca"])
        .arg(sys.deployment.tls().ca_cert())
        .output()?;
    let anonymous = parse(&out, "registrar health without a client certificate")?;
    assert_eq!(anonymous["error"], "UNAUTHENTICATED", "{anonymous}");
    let out = Command::new(&python)
        .arg(repo().join("tests/python/api_probe.py"))
        .args(["services", &target(sys.registrar.port()), "--ca"])
        .arg(sys.deployment.tls().ca_cert())
        .output()?;
    let anonymous = parse(&out, "registrar reflection without a client certificate")?;
    assert_eq!(anonymous["error"], "UNAUTHENTICATED", "{anonymous}");
    let foreign = foreign_admin(&sys)?;
    let answer = probe(&python, &["services", &target(sys.registrar.port())], &foreign)?;
    assert_eq!(answer["error"], "UNAUTHENTICATED", "another CA's admin: {answer}");
    assert!(
        answer["details"].as_str().is_some_and(|d| d.contains("does not verify against")),
        "{answer}"
    );

    // The example client lists the enrolled agent through the typed stub, as a viewer.
    sys.apply_policy("base")?;
    let (code, enrolled) =
        sys.kctl_json(&["agents", "enroll", &sys.agent_id, "--runtime-policy", "base"])?;
    assert_eq!(code, 0, "{enrolled}");
    let out = Command::new(&python)
        .arg(repo().join("docs/examples/python/list_agents.py"))
        .args(["--verifier", &target(sys.verifier.port())])
        .args(viewer.args())
        .output()?;
    let listed = parse(&out, "docs/examples/python/list_agents.py")?;
    let agents = listed["agents"].as_array().ok_or_else(|| err(format!("{listed}")))?;
    assert_eq!(agents.len(), 1, "{listed}");
    assert_eq!(agents[0]["agent_id"], sys.agent_id.as_str(), "{listed}");
    assert!(agents[0]["state"].as_str().is_some_and(|s| s.starts_with("AGENT_STATE_")), "{listed}");
    Ok(())
}

/// Starts a `watch` of `target`'s health in the background; its lines arrive on the receiver.
fn watch(
    python: &Path,
    target: &str,
    identity: &Identity,
) -> Result<(std::process::Child, std::sync::mpsc::Receiver<Value>)> {
    let mut child = Command::new(python)
        .arg(repo().join("tests/python/api_probe.py"))
        .args(["watch", target])
        .args(identity.args())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| err("watch: no stdout"))?;
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && lines.send(value).is_err()
            {
                return;
            }
        }
    });
    Ok((child, received))
}

fn next_line(received: &std::sync::mpsc::Receiver<Value>, what: &str) -> Result<Value> {
    received
        .recv_timeout(HEALTH_DEADLINE)
        .map_err(|_| err(format!("{what}: no health update within {HEALTH_DEADLINE:?}")))
}

#[test]
fn a_watch_sees_not_serving_when_each_daemon_shuts_down_and_then_ends() -> Result<()> {
    let Some(python) = python()? else { return Ok(()) };
    let Some(mut sys) = System::start()? else { return Ok(()) };
    let admin = admin(&sys.deployment);
    let agent_cert = sys.agent.dir.join("agent").join("identity-cert.pem");
    let watches = [
        ("agent", target(sys.agent.daemon.port()), admin.trusting(&agent_cert)),
        ("verifier", target(sys.verifier.port()), admin.clone()),
        ("registrar", target(sys.registrar.port()), admin.clone()),
    ];
    for (name, at, identity) in watches {
        wait_status(&python, &at, &identity, "SERVING")?;
        let (mut child, received) = watch(&python, &at, &identity)?;
        let first = next_line(&received, name)?;
        assert_eq!(first["status"], "SERVING", "{name}: {first}");
        let started = Instant::now();
        match name {
            "agent" => sys.agent.daemon.signal("TERM")?,
            "verifier" => sys.verifier.signal("TERM")?,
            _ => sys.registrar.signal("TERM")?,
        }
        let update = next_line(&received, name)?;
        assert_eq!(update["status"], "NOT_SERVING", "{name}: {update}");
        let end = next_line(&received, name)?;
        assert_eq!(end["end"], "OK", "{name}: the watch ends cleanly with the daemon: {end}");
        let status = match name {
            "agent" => sys.agent.daemon.wait_exit(HEALTH_DEADLINE)?,
            "verifier" => sys.verifier.wait_exit(HEALTH_DEADLINE)?,
            _ => sys.registrar.wait_exit(HEALTH_DEADLINE)?,
        };
        assert!(status.success(), "{name} exits cleanly with a watch open: {status}");
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "{name}: an open watch does not hold shutdown for the grace period ({:?})",
            started.elapsed()
        );
        let _ = child.wait();
    }
    Ok(())
}

/// `kctl health` with the tenant config of `sys`: exit code and JSON document.
/// kctl with the given tenant configuration.
fn kctl_with(tenant: &Path, args: &[&str]) -> Result<Output> {
    Ok(Command::new(daemon::binary(KCTL)?).arg("--config").arg(tenant).args(args).output()?)
}

/// Waits until the registrar lists the agent; returns its id.
fn wait_registered(tenant: &Path, agent: &TestAgent) -> Result<String> {
    let agent_id = agent.uuid()?;
    let deadline = Instant::now() + HEALTH_DEADLINE;
    while !kctl_with(tenant, &["registrar", "show", &agent_id])?.status.success() {
        assert!(Instant::now() < deadline, "the agent never registered");
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(agent_id)
}

fn kctl_health(sys: &System, args: &[&str]) -> Result<(i32, Value)> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = sys.run(KCTL, &all)?;
    let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((out.status.code().unwrap_or(-1), doc))
}

#[test]
fn kctl_health_probes_each_daemon_and_exits_by_the_contract() -> Result<()> {
    let Some(mut sys) = System::start()? else { return Ok(()) };
    let registrar = target(sys.registrar.port());
    let agent = target(sys.agent.daemon.port());
    let deadline = Instant::now() + HEALTH_DEADLINE;
    while kctl_health(&sys, &["health"])?.0 != 0 {
        assert!(Instant::now() < deadline, "the verifier never became SERVING");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, doc) = kctl_health(&sys, &["health"])?;
    assert_eq!((code, &doc["daemon"], &doc["status"]), (0, &"verifier".into(), &"SERVING".into()));
    assert_eq!(doc["serving"], true);
    let (code, doc) = kctl_health(&sys, &["--registrar", &registrar, "health"])?;
    assert_eq!((code, &doc["daemon"], &doc["status"]), (0, &"registrar".into(), &"SERVING".into()));
    let (code, doc) =
        kctl_health(&sys, &["health", "--agent", &agent, "--service", AGENT_SERVICE])?;
    assert_eq!(
        (code, &doc["daemon"], &doc["service"]),
        (0, &"agent".into(), &AGENT_SERVICE.into())
    );

    // Exit codes: 3 a service the daemon does not serve, 2 two daemons at once, 4 unreachable.
    let (code, _) = kctl_health(&sys, &["health", "--service", REGISTRAR_SERVICE])?;
    assert_eq!(code, 3, "the verifier does not serve the registrar's service");
    let (code, _) = kctl_health(&sys, &["--registrar", &registrar, "health", "--agent", &agent])?;
    assert_eq!(code, 2);
    let (code, _) = kctl_health(&sys, &["--verifier", &target(daemon::free_port()?), "health"])?;
    assert_eq!(code, 4);

    // The agent without its TPM is NOT_SERVING (exit 1), and SERVING again once it is back.
    sys.tpm.stop();
    let deadline = Instant::now() + HEALTH_DEADLINE;
    let doc = loop {
        let (code, doc) = kctl_health(&sys, &["health", "--agent", &agent])?;
        if code == 1 {
            break doc;
        }
        assert_eq!(code, 0, "{doc}");
        assert!(Instant::now() < deadline, "the agent stayed SERVING without its TPM");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!((&doc["status"], &doc["serving"]), (&"NOT_SERVING".into(), &false.into()));
    sys.tpm.restart_unclean()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while kctl_health(&sys, &["health", "--agent", &agent])?.0 != 0 {
        assert!(Instant::now() < deadline, "the agent stayed NOT_SERVING with its TPM back");
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs a shell command inside the mount namespace of process `pid`.
fn in_namespace_of(pid: u32, script: &str) -> Result<Output> {
    Ok(Command::new("nsenter").args(["-t", &pid.to_string(), "-m", "sh", "-c", script]).output()?)
}

/// The EK CA certificates of `tpm`, where a registrar config can name them.
fn ek_cert_store(tpm: &kl_tests::swtpm::Swtpm, deployment: &Deployment) -> Result<PathBuf> {
    let store = deployment.keylime_dir().join("tpm_cert_store");
    std::fs::create_dir_all(&store)?;
    for entry in std::fs::read_dir(tpm.ca_dir())? {
        let entry = entry?;
        std::fs::copy(entry.path(), store.join(entry.file_name()))?;
    }
    Ok(store)
}

/// Starts `program` with `config`, its `keylime_dir` on a 4 MiB tmpfs mounted in a mount
/// namespace of its own (`tls_dir` stays the deployment's); its output goes to
/// `<name>-tmpfs.log`. The process and the state directory.
fn start_on_tmpfs(
    deployment: &Deployment,
    program: kl_tests::daemon::Program,
    name: &str,
    mut config: toml::Table,
) -> Result<(std::process::Child, PathBuf)> {
    let state = deployment.keylime_dir().join(format!("{name}-state"));
    std::fs::create_dir_all(&state)?;
    config.insert("keylime_dir".into(), state.display().to_string().into());
    let cv_ca = deployment.keylime_dir().join("cv_ca");
    config.insert("tls_dir".into(), cv_ca.display().to_string().into());
    let config_path = deployment.write_config(&format!("{name}-tmpfs.conf"), &config)?;
    let log = std::fs::File::create(deployment.keylime_dir().join(format!("{name}-tmpfs.log")))?;
    let script = format!(
        "mount -t tmpfs -o size=4m none '{}' && exec \"$0\" --config '{}'",
        state.display(),
        config_path.display()
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(daemon::binary(program)?)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok((child, state))
}

/// Fills the tmpfs of process `pid` at `state`.
fn fill(pid: u32, state: &Path) -> Result<()> {
    let script = format!("dd if=/dev/zero of='{}/fill' bs=64k 2>/dev/null; true", state.display());
    check(&in_namespace_of(pid, &script)?, "filling the tmpfs")
}

/// Gives the tmpfs that [`fill`] filled its space back.
fn free(pid: u32, state: &Path) -> Result<()> {
    check(&in_namespace_of(pid, &format!("rm -f '{}/fill'", state.display()))?, "freeing")
}

/// Whether a test that needs root and grpcio runs here: `None` when it passes vacuously.
fn tmpfs_test_python() -> Result<Option<PathBuf>> {
    let Some(python) = python()? else { return Ok(None) };
    if !is_root() {
        if std::env::var_os("CI").is_some() {
            return Err(err("CI runs as root; this test mounts a tmpfs in a mount namespace"));
        }
        return Ok(None);
    }
    Ok(Some(python))
}

/// The verifier's state on a small tmpfs of its own mount namespace, filled while an agent
/// attests: health goes NOT_SERVING (grpcio and `kctl health` exit 1), and SERVING again once
/// space returns.
#[test]
fn verifier_health_is_not_serving_while_its_state_store_cannot_be_written() -> Result<()> {
    let Some(python) = tmpfs_test_python()? else { return Ok(()) };
    let Some((tpm, deployment)) = crate::tpm_and_deployment()? else { return Ok(()) };
    let store = ek_cert_store(&tpm, &deployment)?;
    let registrar = deployment.start_registrar(&deployment.registrar_config(
        daemon::free_port()?,
        &store,
        true,
    ))?;
    let agent = deployment.start_agent("agent", &crate::agent_settings(&tpm, registrar.port()))?;
    let mut ima = kl_tests::ima::ImaWriter::default();
    ima.measure(&tpm, &agent.ima_log, "boot_aggregate", b"boot")?;

    let port = daemon::free_port()?;
    let config = deployment.verifier_config(port, registrar.port(), 1.0);
    let (mut verifier, state) =
        start_on_tmpfs(&deployment, kl_tests::daemon::VERIFIER, "verifier", config)?;
    let pid = verifier.id();
    let result = (|| -> Result<()> {
        let admin = admin(&deployment);
        let at = target(port);
        wait_status(&python, &at, &admin, "SERVING")?;
        let tenant = deployment.tenant_config(port, registrar.port())?;
        let kctl = |args: &[&str]| kctl_with(&tenant, args);
        let agent_id = wait_registered(&tenant, &agent)?;
        let (log_s, policy) =
            (agent.ima_log.display().to_string(), deployment.keylime_dir().join("base.json"));
        let policy_s = policy.display().to_string();
        check(
            &kctl(&["policies", "runtime", "generate", "--ima-log", &log_s, "--out", &policy_s])?,
            "kctl policies runtime generate",
        )?;
        check(&kctl(&["policies", "runtime", "apply", "base", "--file", &policy_s])?, "apply")?;
        check(
            &kctl(&["agents", "enroll", &agent_id, "--runtime-policy", "base", "--wait"])?,
            "kctl agents enroll --wait",
        )?;

        fill(pid, &state)?;
        // A policy of a few MiB must grow the file: it fails, and redb refuses the handle's
        // writes from then on, so the next round's commit finds the store unwritable.
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&policy)?)?;
        let files = doc
            .get_mut("files")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| err(format!("{policy_s}: no files object")))?;
        for n in 0..40_000 {
            files.insert(
                format!("/usr/lib/filler/{n}"),
                serde_json::json!([format!("sha256:{n:064x}")]),
            );
        }
        let big = deployment.keylime_dir().join("big.json");
        std::fs::write(&big, serde_json::to_vec(&doc)?)?;
        let put =
            kctl(&["policies", "runtime", "apply", "big", "--file", &big.display().to_string()])?;
        assert!(!put.status.success(), "a policy was stored on a full disk");
        wait_status(&python, &at, &admin, "NOT_SERVING")?;
        let out = kctl(&["health", "-o", "json"])?;
        assert_eq!(out.status.code(), Some(1), "kctl health exits 1 when NOT_SERVING: {out:?}");
        let doc: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(doc["status"], "NOT_SERVING", "{doc}");

        // Space again: the writer opens the store again, commits what it held, health follows.
        free(pid, &state)?;
        wait_status(&python, &at, &admin, "SERVING")?;
        Ok(())
    })();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = verifier.wait();
    result
}

/// The registrar's state on a small tmpfs of its own mount namespace, filled: a DeleteAgent
/// fails, health goes NOT_SERVING, and once space returns the registrar opens its store again
/// and is SERVING (and deletes) again.
#[test]
fn registrar_health_is_not_serving_while_its_state_store_cannot_be_written() -> Result<()> {
    let Some(python) = tmpfs_test_python()? else { return Ok(()) };
    let Some((tpm, deployment)) = crate::tpm_and_deployment()? else { return Ok(()) };
    let store = ek_cert_store(&tpm, &deployment)?;
    let port = daemon::free_port()?;
    let config = deployment.registrar_config(port, &store, true);
    let (mut registrar, state) =
        start_on_tmpfs(&deployment, kl_tests::daemon::REGISTRAR, "registrar", config)?;
    let pid = registrar.id();
    let result = (|| -> Result<()> {
        let admin = admin(&deployment);
        let at = target(port);
        wait_status(&python, &at, &admin, "SERVING")?;
        let agent = deployment.start_agent("agent", &crate::agent_settings(&tpm, port))?;
        let tenant = deployment.tenant_config(daemon::free_port()?, port)?;
        let kctl = |args: &[&str]| kctl_with(&tenant, args);
        let agent_id = wait_registered(&tenant, &agent)?;
        drop(agent);

        fill(pid, &state)?;
        let deleted = kctl(&["registrar", "delete", &agent_id])?;
        assert!(!deleted.status.success(), "an agent was deleted on a full disk: {deleted:?}");
        wait_status(&python, &at, &admin, "NOT_SERVING")?;
        let out = kctl(&["health", "--registrar", &at, "-o", "json"])?;
        assert_eq!(out.status.code(), Some(1), "kctl health exits 1 when NOT_SERVING: {out:?}");

        // Space again: the registrar opens its store again, and health follows.
        free(pid, &state)?;
        wait_status(&python, &at, &admin, "SERVING")?;
        check(&kctl(&["registrar", "delete", &agent_id])?, "kctl registrar delete, space back")?;
        Ok(())
    })();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = registrar.wait();
    result
}
