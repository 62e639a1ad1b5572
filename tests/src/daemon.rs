//! The daemons as real binaries: found in the build's target directory (built once when
//! missing), started with `--config FILE`, their stderr and stdout kept in a log file, waited
//! for (port open, log line), stopped with SIGTERM and killed on drop.
//!
//! `cargo nextest run --workspace` (and `cargo test --workspace`) build the daemon binaries
//! before running tests, because each daemon package has integration tests of its own. When
//! only one package is tested (`cargo test -p kl-tests`, or `-p kl-verifier`, whose tests run
//! the registrar's binary), a binary that is missing or older than the sources it is built
//! from is built here with `cargo build -p <package> --bins`.

use std::fs::{self, File};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::{Result, err};

/// How long a daemon may take to open its port.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon program of the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    /// The binary, `keylime_agent`.
    pub bin: &'static str,
    /// The package that builds it, `kl-agent`.
    pub package: &'static str,
    /// The package's directory in the workspace.
    pub dir: &'static str,
    /// Other workspace directories it is built from, besides the shared ones.
    pub also: &'static [&'static str],
}

pub const AGENT: Program =
    Program { bin: "keylime_agent", package: "kl-agent", dir: "daemons/agent", also: &[] };
pub const REGISTRAR: Program = Program {
    bin: "keylime_registrar",
    package: "kl-registrar",
    dir: "daemons/registrar",
    also: &[],
};
pub const VERIFIER: Program =
    Program { bin: "keylime_verifier", package: "kl-verifier", dir: "daemons/verifier", also: &[] };
pub const KCTL: Program = Program { bin: "kctl", package: "kctl", dir: "ctl", also: &[] };
/// The Terraform provider, built on kctl's library.
pub const TERRAFORM_PROVIDER: Program = Program {
    bin: "terraform-provider-keylime",
    package: "terraform-provider-keylime",
    dir: "terraform",
    also: &["ctl"],
};
pub const TENANT: Program =
    Program { bin: "keylime_tenant", package: "kctl", dir: "ctl", also: &[] };

/// Directories whose sources go into every daemon, besides the daemon's own.
const SHARED_SOURCES: [&str; 3] = ["lib", "proto", "Cargo.lock"];

/// `target/<profile>/`, the directory of this test binary's parent (`deps/`).
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().ok_or_else(|| err("test binary has no directory"))?;
    let dir =
        if deps.file_name().is_some_and(|n| n == "deps") { deps.parent() } else { Some(deps) };
    dir.map(Path::to_path_buf).ok_or_else(|| err("test binary is not under target/<profile>"))
}

/// The path of `program`'s binary, building it first when it is missing.
pub fn binary(program: Program) -> Result<PathBuf> {
    // One build at a time in this process; cargo's own lock serialises processes.
    static BUILD: Mutex<()> = Mutex::new(());
    let path = profile_dir()?.join(program.bin);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| err("kl-tests has no parent directory"))?;
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if is_fresh(&path, workspace, program) {
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(workspace).args(["build", "-p", program.package, "--bins"]);
    if profile_dir()?.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let output = build.output()?;
    if !output.status.success() || !path.is_file() {
        return Err(err(format!(
            "{} is not built and `cargo build -p {} --bins` failed ({}): {}",
            path.display(),
            program.package,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(path)
}

/// Whether `binary` exists and is newer than every source file it is built from.
fn is_fresh(binary: &Path, workspace: &Path, program: Program) -> bool {
    let Ok(built) = fs::metadata(binary).and_then(|m| m.modified()) else {
        return false;
    };
    let mut roots: Vec<PathBuf> = SHARED_SOURCES.iter().map(|d| workspace.join(d)).collect();
    roots.push(workspace.join(program.dir));
    roots.extend(program.also.iter().map(|d| workspace.join(d)));
    roots.iter().all(|root| newest_modification(root).is_none_or(|newest| newest <= built))
}

/// The latest modification time of a file under `path` (or of `path` itself).
fn newest_modification(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .flatten()
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest_modification(&e.path()))
        .max()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// A running (or stopped) daemon process.
#[derive(Debug)]
pub struct Daemon {
    program: Program,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Log length when the current process started, so waits look at its own lines.
    log_start: u64,
}

impl Daemon {
    /// Starts `program --config config`, appending its output to `log`. `port` is where it
    /// listens (from its config); [`Daemon::wait_listening`] waits for it.
    pub fn start(program: Program, config: &Path, log: &Path, port: u16) -> Result<Daemon> {
        let mut daemon = Daemon {
            program,
            config: config.to_owned(),
            log: log.to_owned(),
            port,
            child: None,
            log_start: 0,
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = binary(self.program)?;
        let out = File::options().create(true).append(true).open(&self.log)?;
        self.log_start = out.metadata()?.len();
        let mut command = Command::new(&bin);
        // Only the config file speaks: no KEYLIME_* settings from the environment of the tests.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KEYLIME_") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("--config")
            .arg(&self.config)
            .env("TSS2_LOG", "all+NONE")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| err(format!("cannot run {}: {e}", bin.display())))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The output of the current process so far.
    pub fn output(&self) -> String {
        let all = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(self.log_start).unwrap_or(0).min(all.len());
        String::from_utf8_lossy(&all[start..]).into_owned()
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until the daemon accepts TCP connections on its port; fails with its output when
    /// it exits first.
    pub fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                return Err(err(format!(
                    "{} exited ({status}) before listening on port {}:\n{}",
                    self.program.bin,
                    self.port,
                    self.output()
                )));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "{} did not listen on port {} within {START_TIMEOUT:?}:\n{}",
                    self.program.bin,
                    self.port,
                    self.output()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the current process has written a line containing `text`.
    pub fn wait_for_output(&mut self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(text) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "{} did not write \"{text}\" within {timeout:?}:\n{}",
                    self.program.bin,
                    self.output()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the process ends by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "{} still runs after {timeout:?}:\n{}",
                    self.program.bin,
                    self.output()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not ended within a few seconds.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        child.wait()?;
        Ok(())
    }

    /// SIGKILL, as a crash or an OOM kill would end it: no graceful shutdown, connections
    /// break mid-stream. [`Daemon::restart`] starts it again.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the ended daemon again with the same config, without waiting for its port (see
    /// [`Daemon::wait_listening`] and [`Daemon::wait_exit`]).
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Err(err(format!("{} is still running", self.program.bin)));
        }
        self.spawn()
    }

    /// The config file the daemon was started with.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Stops the daemon and starts it again with the same config, then waits for its port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()?;
        self.wait_listening()
    }

    /// Sends `signal` (`HUP`, `USR1`, ...) to the running process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let child = self.child.as_ref().ok_or_else(|| err("the daemon is not running"))?;
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status()?;
        if status.success() { Ok(()) } else { Err(err(format!("kill -{signal}: {status}"))) }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
