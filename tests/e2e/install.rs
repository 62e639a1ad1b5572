//! `scripts/install.sh` as a package build would run it, into a staging root, and the installed
//! programs run from there as their units run them: the verifier and registrar as the service
//! user with no capabilities (`setpriv` in place of systemd's `User=`/`CapabilityBoundingSet=`),
//! the agent started as root and switching to the service user (`run_as`), all with the
//! installed default configs plus operator drop-ins, found through `--config-root` /
//! `KEYLIME_CONFIG_ROOT`. The guide's tenant commands then enrol the agent on a swtpm.

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kl_core::alg::HashAlg;
use kl_tests::daemon::{self, AGENT, KCTL, REGISTRAR, TENANT, VERIFIER};
use kl_tests::ima::ImaWriter;
use kl_tests::swtpm::Swtpm;
use kl_tests::{Result, err};
use serde_json::Value;

use crate::OUTCOME_TIMEOUT;

/// The service user and group of the test: numeric ids no account uses, so that nothing on
/// this host is touched (the units name `keylime:tss`).
const SERVICE_UID: u32 = 64_917;
const SERVICE_GID: u32 = 64_918;
const AGENT_UUID: &str = "d432fbb3-d2f1-4a97-9ef7-75bd81c00000";

/// Files a package installs, below the staging root.
const LAYOUT: [&str; 28] = [
    "usr/bin/kctl",
    "usr/bin/keylime_tenant",
    "usr/bin/keylime_verifier",
    "usr/bin/keylime_registrar",
    "usr/bin/keylime_agent",
    "usr/lib/systemd/system/keylime_verifier.service",
    "usr/lib/systemd/system/keylime_registrar.service",
    "usr/lib/systemd/system/keylime_agent.service",
    "usr/etc/keylime/verifier.conf",
    "usr/etc/keylime/registrar.conf",
    "usr/etc/keylime/agent.conf",
    "usr/etc/keylime/agent.conf.d/10-run-as.conf",
    "usr/etc/keylime/tenant.conf",
    "usr/lib/sysusers.d/keylime.conf",
    "usr/lib/tmpfiles.d/keylime.conf",
    "usr/share/man/man1/kctl.1",
    "usr/share/man/man1/keylime_tenant.1",
    "usr/share/man/man8/keylime_verifier.8",
    "usr/share/man/man8/keylime_registrar.8",
    "usr/share/man/man8/keylime_agent.8",
    "usr/share/bash-completion/completions/kctl",
    "usr/share/zsh/vendor-completions/_kctl",
    "usr/share/fish/vendor_completions.d/kctl.fish",
    "usr/share/doc/keylime-rs/README.md",
    "usr/share/doc/keylime-rs/docs/agent.md",
    "usr/share/doc/keylime-rs/docs/kctl.md",
    "usr/share/doc/keylime-rs/docs/verifier.md",
    "usr/share/keylime-rs/install-manifest",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `scripts/install.sh` with the binaries this test run built.
fn install_sh(args: &[&str]) -> Result<Output> {
    let bin_dir = daemon::binary(KCTL)?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| err("kctl binary has no directory"))?;
    for program in [VERIFIER, REGISTRAR, AGENT, TENANT] {
        daemon::binary(program)?;
    }
    Ok(Command::new(repo().join("scripts/install.sh"))
        .arg("--bindir-from")
        .arg(bin_dir)
        .args(args)
        .output()?)
}

fn install(dest: &Path) -> Result<()> {
    let dest = dest.to_string_lossy();
    checked(install_sh(&["--destdir", &dest])?, "install.sh")
}

fn checked(out: Output, what: &str) -> Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A command without this process's KEYLIME_* settings: only the staging tree speaks.
fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYLIME_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("TSS2_LOG", "all+NONE").env_remove("NOTIFY_SOCKET");
    cmd
}

/// `program` run as the units run the verifier and registrar: the service user and group, no
/// supplementary groups, no capabilities, no new privileges.
fn as_service_user(program: &Path) -> Command {
    let mut cmd = command(Path::new("setpriv"));
    cmd.arg(format!("--reuid={SERVICE_UID}"))
        .arg(format!("--regid={SERVICE_GID}"))
        .args(["--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(program);
    cmd
}

/// Whether this test runs as root (needed to start processes as another user).
fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[test]
fn the_install_layout_man_pages_completions_and_units_check_out_and_uninstall_keeps_etc()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    install(&dest)?;
    for file in LAYOUT {
        assert!(dest.join(file).is_file(), "{file} not installed");
    }

    // Every default config loads as installed, and shows the built-in defaults.
    for (program, component) in [
        ("keylime_verifier", "verifier"),
        ("keylime_registrar", "registrar"),
        ("keylime_agent", "agent"),
    ] {
        let bin = dest.join("usr/bin").join(program);
        let conf = fs::read_to_string(dest.join(format!("usr/etc/keylime/{component}.conf")))?;
        assert!(conf.contains(&format!("[{component}]")) && conf.contains("\n#port = "), "{conf}");
        let out = command(&bin).arg("--config-root").arg(&dest).arg("--print-config").output()?;
        checked(out.clone(), &format!("{program} --print-config"))?;
        let printed: Value = serde_json::from_slice(&out.stdout)?;
        let expected = if component == "agent" { "keylime-agent:tss" } else { "" };
        assert_eq!(printed["run_as"].as_str().unwrap_or_default(), expected, "{program}");
    }
    // The installed tenant.conf loads: kctl gets as far as looking for the TLS files.
    let tenant = command(&dest.join("usr/bin/kctl"))
        .env("KEYLIME_CONFIG_ROOT", &dest)
        .args(["registrar", "list"])
        .output()?;
    let stderr = String::from_utf8_lossy(&tenant.stderr);
    assert!(stderr.contains("TLS files") && !stderr.contains("tenant.conf"), "{stderr}");

    // Man pages: no groff warnings, and kctl's names every subcommand.
    for page in [
        "usr/share/man/man1/kctl.1",
        "usr/share/man/man1/keylime_tenant.1",
        "usr/share/man/man8/keylime_verifier.8",
        "usr/share/man/man8/keylime_registrar.8",
        "usr/share/man/man8/keylime_agent.8",
    ] {
        let out = Command::new("man")
            .args(["--warnings", "-l", "-E", "UTF-8"])
            .arg(dest.join(page))
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_STDERR", "1")
            .output()?;
        checked(out.clone(), &format!("man {page}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.trim().is_empty(), "{page}: {stderr}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SYNOPSIS") && text.contains("SEE ALSO"), "{page}");
        if page.ends_with(".8") {
            for section in ["CONFIGURATION", "FILES", "ENVIRONMENT", "--config-root", "keylime_dir"]
            {
                assert!(text.contains(section), "{page} lacks {section}");
            }
        }
    }
    let kctl_page = man_text(&dest.join("usr/share/man/man1/kctl.1"))?;
    for leaf in leaf_commands()? {
        assert!(kctl_page.contains(&leaf), "kctl.1 lacks \"{leaf}\"");
    }
    assert!(man_text(&dest.join("usr/share/man/man8/keylime_agent.8"))?.contains("run_as"));

    // Completions parse in their shells (those installed here).
    let bash = dest.join("usr/share/bash-completion/completions/kctl");
    checked(Command::new("bash").arg("-n").arg(&bash).output()?, "bash -n")?;
    assert!(fs::read_to_string(&bash)?.contains("policies"));
    for (shell, file) in [
        ("zsh", "usr/share/zsh/vendor-completions/_kctl"),
        ("fish", "usr/share/fish/vendor_completions.d/kctl.fish"),
    ] {
        if Command::new(shell).arg("--version").output().is_ok() {
            checked(Command::new(shell).arg("-n").arg(dest.join(file)).output()?, shell)?;
        }
    }

    // The units pass systemd-analyze verify against the installed tree, with what a host
    // provides beside them (systemd's targets, kill) in a copy of it.
    let verify_root = dir.path().join("verify-root");
    checked(Command::new("cp").arg("-a").arg(&dest).arg(&verify_root).output()?, "cp")?;
    let units = verify_root.join("usr/lib/systemd/system");
    for entry in fs::read_dir("/usr/lib/systemd/system")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "target") {
            fs::copy(&path, units.join(path.file_name().ok_or("no file name")?))?;
        }
    }
    fs::copy("/usr/bin/kill", verify_root.join("usr/bin/kill"))?;
    let unit_paths: Vec<PathBuf> = ["keylime_verifier", "keylime_registrar", "keylime_agent"]
        .iter()
        .map(|u| units.join(format!("{u}.service")))
        .collect();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", verify_root.display()))
        .args(&unit_paths)
        .env("MANPATH", verify_root.join("usr/share/man"))
        .output()?;
    checked(verify.clone(), "systemd-analyze verify")?;
    assert!(verify.stderr.is_empty(), "{}", String::from_utf8_lossy(&verify.stderr));

    // sysusers.d and tmpfiles.d make the service user and the directories the units expect.
    fs::create_dir_all(verify_root.join("etc"))?;
    let root_flag = format!("--root={}", verify_root.display());
    checked(Command::new("systemd-sysusers").arg(&root_flag).output()?, "systemd-sysusers")?;
    let passwd = fs::read_to_string(verify_root.join("etc/passwd"))?;
    let group = fs::read_to_string(verify_root.join("etc/group"))?;
    let tss_gid = group
        .lines()
        .find_map(|l| l.strip_prefix("tss:x:"))
        .and_then(|rest| rest.split(':').next())
        .ok_or_else(|| err(format!("no group tss:\n{group}")))?;
    let keylime: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("keylime:"))
        .ok_or_else(|| err(format!("no user keylime:\n{passwd}")))?
        .split(':')
        .collect();
    assert_eq!(keylime.get(3), Some(&tss_gid), "keylime's group is tss");
    assert_eq!(keylime.get(5), Some(&"/var/lib/keylime"));
    // The agent switches to a user of its own, which cannot read what keylime owns.
    let agent: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("keylime-agent:"))
        .ok_or_else(|| err(format!("no user keylime-agent:\n{passwd}")))?
        .split(':')
        .collect();
    assert_eq!(agent.get(3), Some(&tss_gid), "keylime-agent's group is tss");
    assert_ne!(agent.get(2), keylime.get(2), "the agent's uid is not the verifier's");
    checked(
        Command::new("systemd-tmpfiles").arg(&root_flag).arg("--create").output()?,
        "systemd-tmpfiles --create",
    )?;
    let state = fs::metadata(verify_root.join("var/lib/keylime"))?;
    assert_eq!((state.uid().to_string(), state.mode() & 0o777), (keylime[2].to_owned(), 0o750));
    let etc = fs::metadata(verify_root.join("etc/keylime/verifier.conf.d"))?;
    assert_eq!(
        (etc.uid(), etc.gid().to_string(), etc.mode() & 0o777),
        (0, tss_gid.to_owned(), 0o750)
    );

    // Hardening kept: the network daemons stay at a low exposure (docs/install.md has the
    // scores).
    for unit in &unit_paths[..2] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(unit)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| err(format!("no exposure level:\n{text}")))?;
        assert!(score <= 1.5, "{}: exposure {score}", unit.display());
    }

    // Another prefix: programs, units and pages below it, the units starting the programs
    // there; the default configs stay where the programs look for them.
    let opt = dir.path().join("opt-root");
    let opt_arg = opt.to_string_lossy();
    checked(install_sh(&["--destdir", &opt_arg, "--prefix", "/opt/keylime"])?, "--prefix")?;
    let unit =
        fs::read_to_string(opt.join("opt/keylime/lib/systemd/system/keylime_agent.service"))?;
    assert!(unit.contains("\nExecStart=/opt/keylime/bin/keylime_agent\n"), "{unit}");
    assert!(opt.join("opt/keylime/bin/kctl").is_file());
    assert!(opt.join("usr/etc/keylime/agent.conf").is_file());

    // The operator's edits stay through --uninstall; everything installed goes.
    let dropin = dest.join("etc/keylime/verifier.conf.d/50-site.conf");
    fs::create_dir_all(dropin.parent().ok_or("no parent")?)?;
    fs::write(&dropin, "ip = \"0.0.0.0\"\n")?;
    let dest_arg = dest.to_string_lossy();
    checked(install_sh(&["--destdir", &dest_arg, "--uninstall"])?, "install.sh --uninstall")?;
    let left: Vec<PathBuf> = files_below(&dest)?;
    assert_eq!(left, vec![dropin], "left after --uninstall");
    Ok(())
}

fn man_text(page: &Path) -> Result<String> {
    let out = Command::new("man")
        .args(["-l", "-E", "UTF-8"])
        .arg(page)
        .env("MANWIDTH", "200")
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every leaf command of kctl (`kctl agents enroll`), from its own help output.
fn leaf_commands() -> Result<Vec<String>> {
    fn walk(path: Vec<String>, out: &mut Vec<String>) -> Result<()> {
        let help = Command::new(daemon::binary(KCTL)?).args(&path[1..]).arg("--help").output()?;
        let text = String::from_utf8_lossy(&help.stdout).into_owned();
        let subs: Vec<String> = text
            .split("Commands:\n")
            .nth(1)
            .map(|s| s.split("\n\n").next().unwrap_or_default())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| *name != "help")
            .map(str::to_owned)
            .collect();
        if subs.is_empty() {
            out.push(path.join(" "));
        }
        for sub in subs {
            let mut next = path.clone();
            next.push(sub);
            walk(next, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(vec!["kctl".to_owned()], &mut out)?;
    assert!(out.len() > 20, "kctl has {} leaf commands: {out:?}", out.len());
    Ok(out)
}

fn files_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(files_below(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// A process of the test, killed when dropped; its output goes to a log file.
struct Running {
    name: &'static str,
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Running {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path, port: u16) -> Result<Running> {
        let out = fs::File::create(log)?;
        let child = cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()?;
        let mut running = Running { name, child, log: log.to_owned(), port };
        running.wait_listening()?;
        Ok(running)
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + daemon::START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(err(format!("{} exited ({status}):\n{}", self.name, self.output())));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(err(format!("{} never listened:\n{}", self.name, self.output())));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `Uid:` and `Gid:` of /proc/PID/status (real, effective, saved, filesystem) and `Groups:`.
    fn ids(&self) -> Result<(String, String, String)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        Ok((field("Uid:"), field("Gid:"), field("Groups:")))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::create_dir_all(path.parent().ok_or("no parent")?)?;
    fs::write(path, text)?;
    Ok(())
}

#[test]
fn installed_daemons_run_as_the_service_user_and_the_guides_tenant_commands_work() -> Result<()> {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI is set, but the tests do not run as root");
        return Ok(());
    }
    let Some(tpm) = Swtpm::manufacture()? else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("root");
    install(&dest)?;
    let bin = dest.join("usr/bin");

    // /var/lib/keylime as tmpfiles.d/keylime.conf makes it: the service user's, 0750.
    let state = dest.join("var/lib/keylime");
    fs::create_dir_all(&state)?;
    std::os::unix::fs::chown(&state, Some(SERVICE_UID), Some(SERVICE_GID))?;
    fs::set_permissions(&state, fs::Permissions::from_mode(0o750))?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    let store = state.join("tpm_cert_store");
    fs::create_dir_all(&store)?;
    for entry in fs::read_dir(tpm.ca_dir())? {
        let entry = entry?;
        fs::copy(entry.path(), store.join(entry.file_name()))?;
    }
    // The IMA list as securityfs has it: root's alone. The agent reads it after giving up root.
    let ima_log = state.join("ima/ascii_runtime_measurements");
    write(&ima_log, "")?;
    fs::set_permissions(&ima_log, fs::Permissions::from_mode(0o400))?;
    let event_log_path = state.join("tpm0/binary_bios_measurements");
    let event_log: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    fs::create_dir_all(event_log_path.parent().ok_or("no parent")?)?;
    fs::write(&event_log_path, &event_log)?;
    fs::set_permissions(&event_log_path, fs::Permissions::from_mode(0o400))?;
    let mut ima = ImaWriter::default();
    ima.measure(&tpm, &ima_log, "boot_aggregate", b"boot")?;
    ima.measure(&tpm, &ima_log, "/usr/bin/bash", b"bash")?;

    let (verifier_port, registrar_port, agent_port) =
        (daemon::free_port()?, daemon::free_port()?, daemon::free_port()?);
    let keylime_dir = format!("keylime_dir = {:?}\n", state.display().to_string());
    let etc = dest.join("etc/keylime");
    write(
        &etc.join("verifier.conf.d/50-site.conf"),
        &format!(
            "{keylime_dir}port = {verifier_port}\nregistrar_port = {registrar_port}\nquote_interval = 1\n"
        ),
    )?;
    write(
        &etc.join("registrar.conf.d/50-site.conf"),
        &format!("{keylime_dir}port = {registrar_port}\n"),
    )?;
    write(
        &etc.join("agent.conf.d/50-site.conf"),
        &format!(
            "{keylime_dir}port = {agent_port}\nregistrar_port = {registrar_port}\nuuid = \"{AGENT_UUID}\"\n\
             tcti = \"{}\"\nima_ml_path = {:?}\nmeasuredboot_ml_path = {:?}\nrun_as = \"{SERVICE_UID}:{SERVICE_GID}\"\n\
             # No tmpfs under a test directory: it would outlive a killed agent.\nsecure_size = 0\n",
            tpm.tcti(),
            ima_log.display().to_string(),
            event_log_path.display().to_string()
        ),
    )?;
    write(
        &etc.join("tenant.conf.d/50-site.conf"),
        &format!(
            "{keylime_dir}verifier_port = {verifier_port}\nregistrar_port = {registrar_port}\n"
        ),
    )?;

    let root_arg = |cmd: &mut Command| {
        cmd.arg("--config-root").arg(&dest);
    };
    let mut cmd = as_service_user(&bin.join("keylime_verifier"));
    root_arg(&mut cmd);
    let verifier =
        Running::spawn("verifier", cmd, &dir.path().join("verifier.log"), verifier_port)?;
    let ca_dir = state.join("cv_ca");
    assert_eq!(fs::metadata(&ca_dir)?.uid(), SERVICE_UID);
    let key_mode = fs::metadata(ca_dir.join("server-private.pem"))?.permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);

    // The registrar of the old unit (root without capabilities) cannot look into the CA
    // directory: the error says so and names the path, rather than calling it missing.
    let mut cmd = command(Path::new("setpriv"));
    cmd.args(["--inh-caps=-all", "--bounding-set=-all", "--"]).arg(bin.join("keylime_registrar"));
    root_arg(&mut cmd);
    let refused = cmd.output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&ca_dir.join("cacert.crt").display().to_string())
            && stderr.contains("Permission denied")
            && !stderr.contains("missing"),
        "{stderr}"
    );

    // The registrar as the unit runs it now: the same user as the verifier.
    let mut cmd = as_service_user(&bin.join("keylime_registrar"));
    root_arg(&mut cmd);
    let registrar =
        Running::spawn("registrar", cmd, &dir.path().join("registrar.log"), registrar_port)?;
    // ExecReload: SIGHUP reloads the EK CA store and the registrar keeps serving.
    checked(
        Command::new("kill").args(["-HUP", &registrar.child.id().to_string()]).output()?,
        "kill -HUP",
    )?;

    // The agent starts as root and switches to run_as once the TPM is open.
    let mut cmd = command(&bin.join("keylime_agent"));
    root_arg(&mut cmd);
    let agent = Running::spawn("agent", cmd, &dir.path().join("agent.log"), agent_port)?;
    let (uid, gid, groups) = agent.ids()?;
    let u = SERVICE_UID.to_string();
    let g = SERVICE_GID.to_string();
    assert_eq!(uid, [u.as_str(); 4].join(" "), "agent Uid:\n{}", agent.output());
    assert_eq!(gid, [g.as_str(); 4].join(" "), "agent Gid:");
    assert_eq!(groups, g, "agent Groups:");
    assert_eq!(fs::metadata(state.join("agent"))?.uid(), SERVICE_UID);
    // As the service user it still serves the root-only IMA list and event log it opened.
    let reply = tokio::runtime::Runtime::new()?.block_on(quote_with_logs(&state, agent_port))?;
    assert!(!reply.ima_log_missing, "IMA list served after the switch");
    assert_eq!(reply.ima_entry_count, 2, "IMA entries served after the switch");
    assert_eq!(reply.event_log, event_log, "event log served after the switch");

    // The guide's tenant commands, with the installed tenant.conf and the site drop-in.
    let tenant = |args: &[&str]| -> Result<Output> {
        Ok(command(&bin.join("keylime_tenant"))
            .env("KEYLIME_CONFIG_ROOT", &dest)
            .args(args)
            .output()?)
    };
    let kctl_show = || -> Result<Value> {
        let out = command(&bin.join("kctl"))
            .env("KEYLIME_CONFIG_ROOT", &dest)
            .args(["agents", "show", AGENT_UUID, "-o", "json"])
            .output()?;
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    };
    wait_for("registration", || {
        Ok(command(&bin.join("kctl"))
            .env("KEYLIME_CONFIG_ROOT", &dest)
            .args(["registrar", "show", AGENT_UUID])
            .output()?
            .status
            .success())
    })?;
    let work = dir.path().join("tenant");
    let allowlist = work.join("allowlist.txt");
    let lines: String = [("boot_aggregate", &b"boot"[..]), ("/usr/bin/bash", &b"bash"[..])]
        .iter()
        .map(|(path, contents)| format!("{}  {path}\n", HashAlg::Sha256.digest(contents).to_hex()))
        .collect();
    write(&allowlist, &lines)?;
    let exclude = work.join("exclude.txt");
    write(&exclude, "^/tmp/.*\n")?;
    let payload = work.join("payload");
    write(&payload.join("autorun.sh"), "#!/bin/sh\nid -u > ran-as\n")?;
    let (allowlist, exclude, payload) = (
        allowlist.display().to_string(),
        exclude.display().to_string(),
        payload.display().to_string(),
    );
    let agent_port_arg = agent_port.to_string();
    let add = tenant(&[
        "-v",
        "127.0.0.1",
        "-t",
        "127.0.0.1",
        "-tp",
        &agent_port_arg,
        "-u",
        AGENT_UUID,
        "--cert",
        "default",
        "-c",
        "add",
        "--include",
        &payload,
        "--allowlist",
        &allowlist,
        "--exclude",
        &exclude,
    ])?;
    checked(add, "keylime_tenant -c add")?;
    wait_for("the agent passing", || Ok(kctl_show()?["state"] == "passed"))?;
    let ran_as = state.join("secure/unzipped/ran-as");
    wait_for("the payload's autorun.sh", || Ok(ran_as.exists()))?;
    // The payload ran as the service user, in the secure directory the agent handed to it.
    assert_eq!(fs::read_to_string(&ran_as)?.trim(), u);

    let status = tenant(&["-u", AGENT_UUID, "-c", "status"])?;
    checked(status.clone(), "keylime_tenant -c status")?;
    let reglist = tenant(&["-c", "reglist"])?;
    checked(reglist.clone(), "keylime_tenant -c reglist")?;
    assert!(String::from_utf8_lossy(&reglist.stdout).contains(AGENT_UUID));
    checked(tenant(&["-u", AGENT_UUID, "-c", "delete"])?, "keylime_tenant -c delete")?;
    assert_eq!(kctl_show()?, Value::Null, "the agent is no longer enrolled");

    let mut log = String::new();
    fs::File::open(&registrar.log)?.read_to_string(&mut log)?;
    assert!(log.contains("tpm_cert_store"), "no reload in the registrar's log:\n{log}");
    drop((agent, registrar, verifier));
    Ok(())
}

/// A quote with the IMA list and the event log, asked with the deployment's admin certificate.
async fn quote_with_logs(state: &Path, port: u16) -> Result<kl_proto::agent::v1::GetQuoteResponse> {
    use kl_svc::tls::{ServerTrust, TlsConnector, TlsFiles, client_config};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let tls = TlsFiles::new(state.join("cv_ca"));
    let agent_cert = CertificateDer::from_pem_file(state.join("agent/identity-cert.pem"))
        .map_err(|e| err(format!("agent identity certificate: {e}")))?;
    let config = client_config(&ServerTrust::Pinned(agent_cert), Some(tls.client_identity()?))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .timeout(Duration::from_secs(30))
        .connect_with_connector(TlsConnector::new(std::sync::Arc::new(config)))
        .await?;
    let mut client = kl_proto::agent::v1::agent_client::AgentClient::new(channel)
        .max_decoding_message_size(64 << 20);
    let mut request = crate::quote_request(&crate::nonce(), 0, 0);
    request.include_event_log = true;
    Ok(client.get_quote(request).await?.into_inner())
}

fn wait_for(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + OUTCOME_TIMEOUT;
    while !done()? {
        if Instant::now() > deadline {
            return Err(err(format!("{what} did not happen within {OUTCOME_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
