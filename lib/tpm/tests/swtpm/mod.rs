//! A private software TPM per test.
//!
//! The first test in a process manufactures a template state with `swtpm_setup` (RSA-2048 EK
//! persisted at 0x81010001, EK certificate in NV 0x01c00002, platform certificate) using a local
//! CA in a scratch directory; every [`Swtpm`] then runs `swtpm socket` on a pristine copy of it,
//! on a free pair of loopback ports (the swtpm TCTI needs the control port at port + 1), and is
//! killed when dropped. Copies matter: swtpm counts unclean stops toward dictionary-attack
//! lockout, so a state dir is never reused.
//!
//! When swtpm is not installed, [`Swtpm::start`] returns `None` and the test passes vacuously,
//! except when `CI` is set: then it panics, so CI never skips TPM tests.
//!
//! Self-contained on purpose (std and tempfile only) so that other test crates can take it.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The state file swtpm keeps for a TPM 2.0.
const STATE_FILE: &str = "tpm2-00.permall";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const SPAWN_ATTEMPTS: u32 = 8;

/// A running swtpm with its own state directory.
#[derive(Debug)]
pub struct Swtpm {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// The manufactured template: its state dir and the CA that signed its EK certificate.
#[derive(Debug)]
pub struct Template {
    pub state: PathBuf,
    /// The local CA's root certificate (PEM).
    pub root_ca: PathBuf,
    /// The intermediate CA that signed the EK certificate (PEM).
    pub issuer_ca: PathBuf,
    /// The EK certificate swtpm_setup wrote (DER).
    pub ek_cert: PathBuf,
}

/// The programs the fixture runs, with an argument that makes each exit at once.
const TOOLS: [(&str, &str); 5] = [
    ("swtpm", "--help"),
    ("swtpm_setup", "--help"),
    ("swtpm_ioctl", "--help"),
    ("tpm2_shutdown", "-v"),
    ("tpm2_dictionarylockout", "-v"),
];

fn tools_present() -> bool {
    TOOLS.iter().all(|(tool, arg)| {
        Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    })
}

/// Whether swtpm tests can run; panics when they cannot and `CI` is set.
fn available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    let present = *PRESENT.get_or_init(tools_present);
    if !present {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set, but one of {TOOLS:?} is missing (install swtpm, swtpm-tools, tpm2-tools)"
            );
        }
        eprintln!("swtpm or tpm2-tools is not installed: skipping this TPM test");
    }
    present
}

/// The template, manufactured on first use in this process.
pub fn template() -> Option<&'static Template> {
    static TEMPLATE: OnceLock<Result<Template, String>> = OnceLock::new();
    if !available() {
        return None;
    }
    match TEMPLATE.get_or_init(manufacture) {
        Ok(t) => Some(t),
        Err(e) => panic!("cannot manufacture the swtpm template: {e}"),
    }
}

/// Scratch space for the template: under the build's tmp dir when run by cargo. Templates
/// of earlier processes that are gone are removed.
fn template_root() -> Result<PathBuf, String> {
    let base =
        option_env!("CARGO_TARGET_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let prefix = "swtpm-template-";
    if let Ok(entries) = fs::read_dir(&base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(prefix)
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let root = base.join(format!("{prefix}{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    Ok(root)
}

fn manufacture() -> Result<Template, String> {
    let root = template_root()?;
    let write = |name: &str, text: String| {
        let path = root.join(name);
        fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok::<PathBuf, String>(path)
    };
    let localca = root.join("localca");
    let state = root.join("state");
    let ekcerts = root.join("ekcerts");
    for dir in [&localca, &state, &ekcerts] {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let ca_conf = write(
        "swtpm-localca.conf",
        format!(
            "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\n\
             certserial = {ca}/certserial\n",
            ca = localca.display()
        ),
    )?;
    let ca_options = write(
        "swtpm-localca.options",
        "--platform-manufacturer TestVendor\n--platform-version 2.1\n--platform-model swtpm\n"
            .to_owned(),
    )?;
    let setup_conf = write(
        "swtpm_setup.conf",
        format!(
            "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\n\
             create_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
            ca_conf.display(),
            ca_options.display()
        ),
    )?;
    let output = Command::new("swtpm_setup")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(&state)
        .arg("--config")
        .arg(&setup_conf)
        .args(["--create-ek-cert", "--create-platform-cert"])
        .args(["--pcr-banks", "sha1,sha256"])
        .arg("--write-ek-cert-files")
        .arg(&ekcerts)
        .arg("--overwrite")
        .output()
        .map_err(|e| format!("swtpm_setup: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "swtpm_setup failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let ek_cert = fs::read_dir(&ekcerts)
        .map_err(|e| format!("{}: {e}", ekcerts.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ek-rsa")))
        .ok_or_else(|| format!("no ek-rsa* certificate in {}", ekcerts.display()))?;
    Ok(Template {
        state,
        root_ca: localca.join("swtpm-localca-rootca-cert.pem"),
        issuer_ca: localca.join("issuercert.pem"),
        ek_cert,
    })
}

/// Hands out port pairs so parallel tests in one process do not race for the same ones.
fn next_port_pair() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20000 + (std::process::id() % 2000) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(2, Ordering::SeqCst);
        if p >= 60000 {
            NEXT.store(20000, Ordering::SeqCst);
            continue;
        }
        let free = |port| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(p) && free(p + 1) {
            return p;
        }
    }
}

impl Swtpm {
    /// A TPM manufactured like a real one: persistent RSA EK and its certificate in NV.
    pub fn start() -> Option<Swtpm> {
        let template = template()?;
        let dir = tempfile::tempdir().expect("temp dir for swtpm state");
        fs::copy(template.state.join(STATE_FILE), dir.path().join(STATE_FILE))
            .expect("copy the swtpm template state");
        Some(Swtpm::spawn_in(dir))
    }

    /// A TPM that swtpm manufactures itself on first start: random EPS, all four PCR banks,
    /// no persistent EK and no certificates.
    pub fn start_blank() -> Option<Swtpm> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir for swtpm state");
        Some(Swtpm::spawn_in(dir))
    }

    fn spawn_in(dir: tempfile::TempDir) -> Swtpm {
        let mut last_error = String::new();
        for _ in 0..SPAWN_ATTEMPTS {
            let port = next_port_pair();
            match spawn(dir.path(), port) {
                Ok(child) => {
                    return Swtpm { dir, port, child: Some(child) };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("swtpm did not start after {SPAWN_ATTEMPTS} attempts: {last_error}");
    }

    /// The TCTI string for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills swtpm without warning (like a crash or power loss) and starts it again on the
    /// same state and ports. The TPM comes back with reset PCRs and a higher resetCount.
    pub fn restart_unclean(&mut self) {
        self.kill();
        self.respawn();
    }

    /// Shuts the TPM down in order (TPM2_Shutdown, then swtpm's own stop) and starts it again:
    /// no dictionary-attack penalty, and `safe` stays set.
    pub fn restart_orderly(&mut self) {
        self.stop_orderly();
        self.respawn();
    }

    /// TPM2_Shutdown(CLEAR) through `tpm2_shutdown`, then `swtpm_ioctl -s`, then wait.
    pub fn stop_orderly(&mut self) {
        let status = Command::new("tpm2_shutdown")
            .arg("-c")
            .env("TPM2TOOLS_TCTI", self.tcti())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(status.as_ref().is_ok_and(|s| s.success()), "tpm2_shutdown -c failed: {status:?}");
        let status = Command::new("swtpm_ioctl")
            .arg("--tcp")
            .arg(format!("127.0.0.1:{}", self.port + 1))
            .arg("-s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(status.as_ref().is_ok_and(|s| s.success()), "swtpm_ioctl -s failed: {status:?}");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn respawn(&mut self) {
        // The old process released its ports when it exited; wait for them if the kernel
        // is slow to.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match spawn(self.dir.path(), self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() > deadline => panic!("swtpm did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `swtpm socket` on `port` (server) and `port + 1` (control) and waits until it
/// accepts connections.
fn spawn(state: &Path, port: u16) -> Result<Child, String> {
    let log = state.join("swtpm.log");
    let mut child = Command::new("swtpm")
        .args(["socket", "--tpm2"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .args(["--flags", "not-need-init,startup-clear"])
        .arg("--log")
        .arg(format!("file={},level=1", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run swtpm: {e}"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let log = fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("swtpm on port {port} exited ({status}): {stderr}{log}"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && TcpStream::connect(("127.0.0.1", port + 1)).is_ok()
        {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("swtpm on port {port} did not listen within {START_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
