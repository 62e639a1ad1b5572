//! The verifier under test: the real `keylime_verifier` binary as a child process (one per
//! replica), so that its CPU time and memory are read from `/proc/<pid>` apart from the
//! simulator's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::BoxError;

/// A running `keylime_verifier`.
pub struct VerifierProcess {
    child: Child,
    program: PathBuf,
    port: u16,
}

/// What a verifier is started with.
pub struct Settings<'a> {
    /// The deployment's keylime_dir: the configuration file and the verifier's own
    /// keylime_dir are written in it under `name`.
    pub dir: &'a Path,
    /// `verifier` for a verifier of its own, `replica-N` for a replica.
    pub name: &'a str,
    pub tls_dir: &'a Path,
    pub port: u16,
    pub registrar_port: u16,
    pub quote_interval: f64,
    /// More configuration lines (the database and the replica's `id`), TOML.
    pub extra: &'a str,
}

/// Runs this verifier binary instead of the one built with the benchmark (to compare builds).
pub const PROGRAM_ENV: &str = "KL_FLEET_VERIFIER";

/// CPU time and memory of one process.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// utime + stime.
    pub cpu: Duration,
    /// utime + stime of its store writer thread (`verifier-writer`), part of `cpu`.
    pub writer: Duration,
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS), bytes.
    pub hwm: u64,
}

impl VerifierProcess {
    /// Writes `<name>.conf` into the deployment's directory and starts the verifier with it.
    pub fn start(settings: &Settings<'_>) -> Result<VerifierProcess, BoxError> {
        let Settings { dir, name, tls_dir, port, registrar_port, quote_interval, extra } =
            *settings;
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
             request_timeout = 30\n\
             {extra}",
            keylime_dir = dir.join(name).display().to_string(),
            tls_dir = tls_dir.display().to_string(),
        );
        std::fs::create_dir_all(dir.join(name))?;
        let path = dir.join(format!("{name}.conf"));
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
        Ok(VerifierProcess { child, program, port })
    }

    pub fn port(&self) -> u16 {
        self.port
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
            Some(status) => {
                Err(format!("keylime_verifier on port {} exited: {status}", self.port).into())
            }
            None => Ok(()),
        }
    }

    /// SIGKILL, as a crash would, and wait.
    pub fn kill(&mut self) -> Result<(), BoxError> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then wait (nothing if it has exited).
    pub fn stop(mut self) -> Result<(), BoxError> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
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

/// What the benchmark reads of `/proc/<pid>/stat`.
struct Stat {
    ppid: u32,
    /// utime + stime, clock ticks.
    own: u64,
    /// cutime + cstime: the children this process has waited for, clock ticks.
    children: u64,
}

fn stat(proc_dir: &str) -> Result<Stat, BoxError> {
    let stat = std::fs::read_to_string(format!("{proc_dir}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("no ')' in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields n of stat are n - 2 of `rest`, 0-based n - 3: ppid (4), utime and stime (14,
    // 15), cutime and cstime (16, 17).
    let field = |i: usize| -> Result<u64, BoxError> {
        Ok(fields.get(i).ok_or("short stat")?.parse::<u64>()?)
    };
    Ok(Stat {
        ppid: u32::try_from(field(1)?)?,
        own: field(11)? + field(12)?,
        children: field(13)? + field(14)?,
    })
}

fn ticks(count: u64) -> Duration {
    Duration::from_micros(count * 1_000_000 / clock_ticks())
}

/// CPU time of process `pid` and of its children, those running and those it has waited for
/// (a PostgreSQL server: the postmaster, its backends and its workers).
pub fn tree_cpu(pid: u32) -> Result<Duration, BoxError> {
    let parent = stat(&format!("/proc/{pid}"))?;
    let mut total = parent.own + parent.children;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A process that exits between the listing and the read is counted by its parent.
        if let Ok(child) = stat(&format!("/proc/{child}"))
            && child.ppid == pid
        {
            total += child.own;
        }
    }
    Ok(ticks(total))
}

/// Usage of the process at `/proc/<pid>` or `/proc/self`.
pub fn usage(proc_dir: &str) -> Result<Usage, BoxError> {
    let cpu = ticks(stat(proc_dir)?.own);
    let writer = ticks(threads_cpu(proc_dir, WRITER_THREAD));
    let status = std::fs::read_to_string(format!("{proc_dir}/status"))?;
    let kib = |key: &str| -> Result<u64, BoxError> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .ok_or_else(|| format!("no {key} in {proc_dir}/status"))?;
        let value = line[key.len()..].trim().trim_end_matches("kB").trim();
        Ok(value.parse::<u64>()? * 1024)
    };
    Ok(Usage { cpu, writer, rss: kib("VmRSS:")?, hwm: kib("VmHWM:")? })
}

/// The name of the verifier's store writer thread.
const WRITER_THREAD: &str = "verifier-writer";

/// utime + stime (clock ticks) of the threads of the process at `proc_dir` named `name`;
/// 0 for a process without them (the benchmark's own).
fn threads_cpu(proc_dir: &str, name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("{proc_dir}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|task| {
            let dir = task.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            // A thread that ends between the listing and the read is left out.
            stat(dir.to_str()?).ok().map(|s| s.own)
        })
        .sum()
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

/// The usage of each of `verifiers`.
pub fn each_usage(verifiers: &[VerifierProcess]) -> Result<Vec<Usage>, BoxError> {
    verifiers.iter().map(VerifierProcess::usage).collect()
}

/// The sum of `usages` (of the peaks too, which need not have come at the same time).
pub fn sum(usages: &[Usage]) -> Usage {
    let zero = Usage { cpu: Duration::ZERO, writer: Duration::ZERO, rss: 0, hwm: 0 };
    usages.iter().fold(zero, |a, b| Usage {
        cpu: a.cpu + b.cpu,
        writer: a.writer + b.writer,
        rss: a.rss + b.rss,
        hwm: a.hwm + b.hwm,
    })
}

/// The usage of `verifiers` together.
pub fn total_usage(verifiers: &[VerifierProcess]) -> Result<Usage, BoxError> {
    Ok(sum(&each_usage(verifiers)?))
}

/// Fails if any of `verifiers` has exited.
pub fn check_running(verifiers: &mut [VerifierProcess]) -> Result<(), BoxError> {
    verifiers.iter_mut().try_for_each(VerifierProcess::check_running)
}
