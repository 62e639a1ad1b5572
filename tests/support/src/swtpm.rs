//! A private software TPM per test, manufactured on its own.
//!
//! [`Swtpm::manufacture`] runs `swtpm_setup` into a fresh state directory with a throwaway
//! local CA (so every test TPM has its own EK, EK certificate and issuing CA), starts
//! `swtpm socket` on a free pair of loopback ports (the swtpm TCTI wants the control port at
//! port + 1) and disables its dictionary-attack lockout, so that unclean stops (crashes played
//! by tests, killed test processes) never lock the EK or AK; [`Swtpm::manufacture_with_lockout`]
//! keeps the protection, for the TPM stack's own tests. The CA's root and intermediate
//! certificates are the test's `tpm_cert_store`. [`Swtpm::start_blank`] skips `swtpm_setup`:
//! swtpm manufactures the TPM itself on first start (no EK, no certificates). The process is
//! killed on drop.
//!
//! When swtpm or tpm2-tools is missing, both return `None` and the test passes vacuously,
//! except when `CI` is set: then they panic, so CI never skips TPM tests.

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::{Result, err};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const SPAWN_ATTEMPTS: u32 = 8;

/// The programs used here, each with an argument that makes it exit at once.
const TOOLS: [(&str, &str); 6] = [
    ("swtpm", "--help"),
    ("swtpm_setup", "--help"),
    ("swtpm_ioctl", "--help"),
    ("tpm2_shutdown", "-v"),
    ("tpm2_dictionarylockout", "-v"),
    ("tpm2_pcrextend", "-v"),
];

/// Whether swtpm tests can run; panics when they cannot and `CI` is set.
pub fn available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    let present = *PRESENT.get_or_init(|| {
        TOOLS.iter().all(|(tool, arg)| {
            Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
        })
    });
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set, but one of {TOOLS:?} is missing (install swtpm, swtpm-tools, tpm2-tools)"
        );
        eprintln!("swtpm or tpm2-tools is not installed: skipping this TPM test");
    }
    present
}

/// Whether a manufactured TPM keeps its dictionary-attack protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lockout {
    Disabled,
    Kept,
}

/// A running swtpm with its own state directory and EK certificate authority.
#[derive(Debug)]
pub struct Swtpm {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Swtpm {
    /// Manufactures a TPM (RSA-2048 EK with a certificate in NV, SHA-1 and SHA-256 banks) and
    /// starts it. `None` when the tools are missing (and `CI` is not set).
    ///
    /// Its dictionary-attack lockout is disabled, for tests that kill the processes using it.
    pub fn manufacture() -> Result<Option<Swtpm>> {
        Swtpm::manufacture_as(Lockout::Disabled)
    }

    /// As [`Swtpm::manufacture`], but the TPM keeps swtpm_setup's dictionary-attack settings,
    /// as a real TPM counts failed authorisations: for tests of the TPM stack itself, which
    /// must notice when its recovery paths cost a lockout.
    pub fn manufacture_with_lockout() -> Result<Option<Swtpm>> {
        Swtpm::manufacture_as(Lockout::Kept)
    }

    fn manufacture_as(lockout: Lockout) -> Result<Option<Swtpm>> {
        if !available() {
            return Ok(None);
        }
        let dir = tempfile::Builder::new().prefix("swtpm-").tempdir()?;
        manufacture_into(dir.path())?;
        let mut tpm = Swtpm::spawn_in(dir)?;
        if lockout == Lockout::Disabled {
            tpm.disable_lockout()?;
        }
        Ok(Some(tpm))
    }

    /// A TPM that swtpm manufactures itself on first start: random EPS, all four PCR banks,
    /// no persistent EK and no certificates. `None` when the tools are missing.
    pub fn start_blank() -> Result<Option<Swtpm>> {
        if !available() {
            return Ok(None);
        }
        let dir = tempfile::Builder::new().prefix("swtpm-").tempdir()?;
        fs::create_dir_all(dir.path().join("state"))?;
        Ok(Some(Swtpm::spawn_in(dir)?))
    }

    fn spawn_in(dir: tempfile::TempDir) -> Result<Swtpm> {
        let mut last_error = String::new();
        for _ in 0..SPAWN_ATTEMPTS {
            let port = next_port_pair();
            match spawn(&dir.path().join("state"), port) {
                Ok(child) => return Ok(Swtpm { dir, port, child: Some(child) }),
                Err(e) => last_error = e,
            }
        }
        Err(err(format!("swtpm did not start after {SPAWN_ATTEMPTS} attempts: {last_error}")))
    }

    /// The TCTI string for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM's TCP port (its control port is the next one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory swtpm keeps the TPM's state in.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The directory of PEM CA certificates (root and intermediate) that issued the EK
    /// certificate: a `tpm_cert_store` that trusts this TPM.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("tpm_cert_store")
    }

    /// The EK certificate (DER) swtpm_setup wrote into NV.
    pub fn ek_certificate(&self) -> Result<Vec<u8>> {
        let ekcerts = self.dir.path().join("ekcerts");
        let path = fs::read_dir(&ekcerts)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ek-rsa")))
            .ok_or_else(|| err(format!("no ek-rsa* certificate in {}", ekcerts.display())))?;
        Ok(fs::read(path)?)
    }

    /// Sets the dictionary-attack parameters so that nothing ever locks out: recovery time 0
    /// disables the protection.
    fn disable_lockout(&mut self) -> Result<()> {
        run_tool(
            Command::new("tpm2_dictionarylockout")
                .args(["-s", "-n", "4294967295", "-t", "0", "-l", "0"])
                .env("TPM2TOOLS_TCTI", self.tcti()),
        )
    }

    /// Extends PCR `index` in several banks at once (`("sha256", digest)`), as the kernel
    /// does for each measurement.
    pub fn pcr_extend_banks(&self, index: u32, digests: &[(&str, &[u8])]) -> Result<()> {
        let spec: Vec<String> =
            digests.iter().map(|(bank, d)| format!("{bank}={}", hex::encode(d))).collect();
        run_tool(
            Command::new("tpm2_pcrextend")
                .arg(format!("{index}:{}", spec.join(",")))
                .env("TPM2TOOLS_TCTI", self.tcti()),
        )
    }

    /// Kills swtpm without warning, leaving it stopped (a TPM gone away);
    /// [`Swtpm::restart_unclean`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills swtpm without warning (a crash or power loss) and starts it again on the same
    /// state and ports: PCRs are reset and the reset count grows.
    pub fn restart_unclean(&mut self) -> Result<()> {
        self.stop();
        self.respawn()
    }

    /// Shuts the TPM down in order (TPM2_Shutdown, then swtpm's own stop) and starts it again:
    /// no dictionary-attack penalty, and `safe` stays set.
    pub fn restart_orderly(&mut self) -> Result<()> {
        self.stop_orderly()?;
        self.respawn()
    }

    /// TPM2_Shutdown(CLEAR) through `tpm2_shutdown`, then `swtpm_ioctl -s`, then waits for the
    /// process to end.
    pub fn stop_orderly(&mut self) -> Result<()> {
        run_tool(Command::new("tpm2_shutdown").arg("-c").env("TPM2TOOLS_TCTI", self.tcti()))?;
        run_tool(
            Command::new("swtpm_ioctl")
                .arg("--tcp")
                .arg(format!("127.0.0.1:{}", self.port + 1))
                .arg("-s"),
        )?;
        if let Some(mut child) = self.child.take() {
            child.wait()?;
        }
        Ok(())
    }

    /// Starts swtpm again on the same state and ports, waiting for the ports the old process
    /// released if the kernel is slow to free them.
    fn respawn(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match spawn(&self.state_dir(), self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(err(format!("swtpm did not restart: {e}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_tool(command: &mut Command) -> Result<()> {
    let output = command.stdin(Stdio::null()).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "{:?} failed ({}): {}",
            command.get_program(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// `swtpm_setup` with a local CA of its own, all under `root`.
fn manufacture_into(root: &Path) -> Result<()> {
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let path = root.join(name);
        fs::write(&path, text)?;
        Ok(path)
    };
    let (localca, state, ekcerts) =
        (root.join("localca"), root.join("state"), root.join("ekcerts"));
    for dir in [&localca, &state, &ekcerts] {
        fs::create_dir_all(dir)?;
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
        .output()?;
    if !output.status.success() {
        return Err(err(format!(
            "swtpm_setup failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let store = root.join("tpm_cert_store");
    fs::create_dir_all(&store)?;
    fs::copy(localca.join("swtpm-localca-rootca-cert.pem"), store.join("swtpm-root-ca.pem"))?;
    fs::copy(localca.join("issuercert.pem"), store.join("swtpm-issuer-ca.pem"))?;
    Ok(())
}

/// Hands out port pairs, different in each test process, so parallel tests do not race for
/// the same ones.
fn next_port_pair() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20000 + (std::process::id() % 1200) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(2, Ordering::SeqCst);
        if p >= 32000 {
            NEXT.store(20000, Ordering::SeqCst);
            continue;
        }
        let free = |port| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(p) && free(p + 1) {
            return p;
        }
    }
}

/// Starts `swtpm socket` on `port` and `port + 1` and waits until both accept connections.
fn spawn(state: &Path, port: u16) -> std::result::Result<Child, String> {
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
