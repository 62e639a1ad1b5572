//! The verifier under test: the real `keylime_verifier` binary as a child process, so that its
//! CPU time and memory are read from `/proc/<pid>` apart from the simulator's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::BoxError;

/// A running `keylime_verifier`.
pub struct VerifierProcess {
    child: Child,
    program: PathBuf,
}

/// Runs this verifier binary instead of the one built with the benchmark (to compare builds).
pub const PROGRAM_ENV: &str = "KL_FLEET_VERIFIER";

/// CPU time and memory of one process.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// utime + stime.
    pub cpu: Duration,
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS), bytes.
    pub hwm: u64,
}

impl VerifierProcess {
    /// Writes `verifier.conf` into `dir` and starts the verifier with it.
    pub fn start(
        dir: &Path,
        tls_dir: &Path,
        port: u16,
        registrar_port: u16,
        quote_interval: f64,
    ) -> Result<VerifierProcess, BoxError> {
        let config = format!(
            "keylime_dir = {keylime_dir:?}\n\
             ip = \"127.0.0.1\"\n\
             port = {port}\n\
             tls_dir = {tls_dir:?}\n\
             log_level = \"warn\"\n\
             registrar_ip = \"127.0.0.1\"\n\
             registrar_port = {registrar_port}\n\
             quote_interval = {quote_interval}\n\
             retry_interval = 2\n\
             max_retries = 5\n\
             request_timeout = 30\n",
            keylime_dir = dir.join("verifier").display().to_string(),
            tls_dir = tls_dir.display().to_string(),
        );
        std::fs::create_dir_all(dir.join("verifier"))?;
        let path = dir.join("verifier.conf");
        std::fs::write(&path, config)?;
        let program = std::env::var_os(PROGRAM_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_keylime_verifier")));
        let child = Command::new(&program)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        Ok(VerifierProcess { child, program })
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The process id, for `perf record -p`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn usage(&self) -> Result<Usage, BoxError> {
        usage(&format!("/proc/{}", self.child.id()))
    }

    /// Fails if the verifier has exited.
    pub fn check_running(&mut self) -> Result<(), BoxError> {
        match self.child.try_wait()? {
            Some(status) => Err(format!("keylime_verifier exited: {status}").into()),
            None => Ok(()),
        }
    }

    /// SIGTERM, then wait.
    pub fn stop(mut self) -> Result<(), BoxError> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        for _ in 0..300 {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for VerifierProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat`.
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Usage of the process at `/proc/<pid>` or `/proc/self`.
pub fn usage(proc_dir: &str) -> Result<Usage, BoxError> {
    let stat = std::fs::read_to_string(format!("{proc_dir}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("no ')' in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 of `rest` (0-based 11, 12).
    let ticks = |i: usize| -> Result<u64, BoxError> {
        Ok(fields.get(i).ok_or("short stat")?.parse::<u64>()?)
    };
    let total = ticks(11)? + ticks(12)?;
    let hz = clock_ticks();
    let cpu = Duration::from_micros(total * 1_000_000 / hz);
    let status = std::fs::read_to_string(format!("{proc_dir}/status"))?;
    let kib = |key: &str| -> Result<u64, BoxError> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .ok_or_else(|| format!("no {key} in {proc_dir}/status"))?;
        let value = line[key.len()..].trim().trim_end_matches("kB").trim();
        Ok(value.parse::<u64>()? * 1024)
    };
    Ok(Usage { cpu, rss: kib("VmRSS:")?, hwm: kib("VmHWM:")? })
}

/// The soft limit on open files of this process.
pub fn open_file_limit() -> Result<u64, BoxError> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or("no 'Max open files' in /proc/self/limits")?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .ok_or("no soft limit in /proc/self/limits")?;
    if soft == "unlimited" {
        return Ok(u64::MAX);
    }
    Ok(soft.parse()?)
}
