//! A private PostgreSQL server per test.
//!
//! [`Postgres::start`] runs `initdb` into a fresh temporary directory and starts the server
//! with `pg_ctl` on a free loopback port, its Unix socket in that directory (so parallel
//! servers never clash). Connections over TCP need the password of the `postgres` role
//! ([`Postgres::password_file`]), as a deployment's would; the harness itself connects
//! through the socket. `initdb` and `postgres` refuse to run as root, so as root they run as
//! the `postgres` user (which the distribution package creates). The server is stopped on drop.
//!
//! The binaries are taken from the newest `/usr/lib/postgresql/<version>/bin` (Debian's
//! layout), else from `PATH`. When they are missing, [`Postgres::start`] returns `None` and the
//! test passes vacuously, except when `CI` is set: then it fails, so CI never skips them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::{Result, err};

const START_ATTEMPTS: u32 = 5;
/// The password of the `postgres` role over TCP.
const PASSWORD: &str = "kl-tests-postgres-password";

/// The directory holding `initdb` and `pg_ctl`, if PostgreSQL is installed.
fn bin_dir() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .max_by_key(|(version, _)| *version)
            .map(|(_, bin)| bin);
        newest.or_else(|| {
            let found = Command::new("pg_ctl")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            found.then(PathBuf::new)
        })
    })
    .clone()
}

/// A running PostgreSQL server with its own data directory.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as when the tests run as root.
    run_as: Option<String>,
    running: bool,
}

impl Postgres {
    /// Creates a cluster and starts it. `None` when PostgreSQL is not installed (and `CI` is
    /// not set).
    pub fn start() -> Result<Option<Postgres>> {
        let Some(bin) = bin_dir() else {
            if std::env::var_os("CI").is_some() {
                return Err(err("CI is set, but PostgreSQL is not installed (initdb and pg_ctl; \
                     scripts/install-deps.sh installs the postgresql package)"));
            }
            eprintln!("PostgreSQL is not installed: skipping this test");
            return Ok(None);
        };
        let dir = tempfile::Builder::new().prefix("postgres-").tempdir()?;
        let run_as = is_root().then(|| "postgres".to_owned());
        if run_as.is_some() {
            chown_to_postgres(dir.path())?;
        }
        let mut server = Postgres { dir, bin, port: 0, run_as, running: false };
        std::fs::write(server.password_file(), format!("{PASSWORD}\n"))?;
        if server.run_as.is_some() {
            chown_to_postgres(&server.password_file())?;
        }
        let data = server.data_dir();
        let pwfile = server.password_file();
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--no-sync".as_ref(),
            ],
        )?;
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = crate::daemon::free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.running = true;
                    return Ok(Some(server));
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(err(format!("PostgreSQL did not start after {START_ATTEMPTS} attempts: {last_error}")))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A file holding the password of the `postgres` role (for `database_password_file`).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` (a fresh one per test or per daemon) and returns its URL,
    /// without the password: `postgresql://postgres@127.0.0.1:<port>/<name>`.
    pub fn create_database(&self, name: &str) -> Result<String> {
        let socket_dir = self.dir.path().as_os_str().to_owned();
        let port = self.port.to_string();
        self.run(
            "createdb",
            &[
                "-h".as_ref(),
                socket_dir.as_os_str(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                name.as_ref(),
            ],
        )?;
        Ok(self.url(name))
    }

    /// Runs `sql` in database `name` with `psql` and returns its unaligned output.
    pub fn psql(&self, name: &str, sql: &str) -> Result<String> {
        let socket_dir = self.dir.path().as_os_str().to_owned();
        let port = self.port.to_string();
        let output = self.output(
            "psql",
            &[
                "-X".as_ref(),
                "-A".as_ref(),
                "-t".as_ref(),
                "-v".as_ref(),
                "ON_ERROR_STOP=1".as_ref(),
                "-h".as_ref(),
                socket_dir.as_os_str(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-d".as_ref(),
                name.as_ref(),
                "-c".as_ref(),
                sql.as_ref(),
            ],
        )?;
        Ok(output.trim().to_owned())
    }

    /// The process id of the server (the postmaster, parent of every backend and of the
    /// server's own workers), from `postmaster.pid` in its data directory.
    pub fn server_pid(&self) -> Result<u32> {
        let file = self.data_dir().join("postmaster.pid");
        let text =
            std::fs::read_to_string(&file).map_err(|e| err(format!("{}: {e}", file.display())))?;
        let first = text.lines().next().unwrap_or_default().trim();
        first.parse().map_err(|e| err(format!("{}: first line {first:?}: {e}", file.display())))
    }

    /// The URL of database `name`, without the password.
    pub fn url(&self, name: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "stop".as_ref(),
            ],
        )
    }

    /// Starts the server again on the same port after [`Postgres::stop`].
    pub fn start_again(&mut self) -> Result<()> {
        self.pg_ctl_start()?;
        self.running = true;
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let started = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "start".as_ref(),
            ],
        );
        started.map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            err(format!("{e}\nserver log:\n{log}"))
        })
    }

    /// Runs `tool` from the PostgreSQL binaries, as the `postgres` user when running as root.
    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
        self.output(tool, args).map(drop)
    }

    /// [`Postgres::run`], returning the tool's standard output.
    fn output(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<String> {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let output =
            command.args(args).current_dir(self.dir.path()).stdin(Stdio::null()).output()?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(err(format!(
                "{} {:?} failed ({}): {}{}",
                program.display(),
                args,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn chown_to_postgres(path: &Path) -> Result<()> {
    let status = Command::new("chown").arg("postgres:").arg(path).status()?;
    if !status.success() {
        return Err(err(format!("chown postgres: {}: {status}", path.display())));
    }
    Ok(())
}
