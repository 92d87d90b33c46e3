//! A throwaway PostgreSQL server for a test: `initdb` into a temporary folder, `pg_ctl start`
//! on a free loopback port, `pg_ctl stop` when dropped.
//!
//! Debian's `postgresql` package (which `make test` installs when `initdb` is missing) puts
//! the binaries under `/usr/lib/postgresql/<version>/bin`, not on `PATH`. PostgreSQL refuses
//! to run as root, so as root the server runs as the package's `postgres` user (or a system
//! user created for it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server; stopped (immediately) and deleted on drop.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    user: Option<String>,
    /// The loopback port it listens on.
    pub port: u16,
}

const SERVICE_USER: &str = "playbook-guard-pg";

impl Postgres {
    /// Starts a server with superuser `postgres` (trust authentication, loopback only).
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let user = run_as_user();
        if let Some(user) = &user {
            run(Command::new("chown").args(["-R", user]).arg(dir.path()));
        }
        let port = free_port();
        let data = dir.path().join("data");
        let pg = Postgres { bin, dir, user, port };
        pg.run("initdb", &["-D", &s(&data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} -c fsync=off",
            s(pg.dir.path())
        );
        let log = pg.dir.path().join("server.log");
        pg.run("pg_ctl", &["-D", &s(&data), "-l", &s(&log), "-o", &options, "-w", "-t", "60", "start"]);
        pg
    }

    /// A connection string for the superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A client connected as the superuser.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }

    fn run(&self, program: &str, args: &[&str]) {
        run(&mut self.command(program, args));
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut command = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        command.args(args).current_dir(self.dir.path());
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // No assert here: a panic while a failed test unwinds would abort the run.
        let data = s(&self.dir.path().join("data"));
        let _ = self.command("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]).output();
    }
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `initdb`'s directory: on `PATH`, else Debian's newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file());
    let debian = || {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    };
    on_path.or_else(debian).unwrap_or_else(|| {
        panic!(
            "PostgreSQL's initdb is neither on PATH nor under /usr/lib/postgresql/*/bin: \
             install Debian's package postgresql (`make test` does, as root)"
        )
    })
}

/// The user to run the server as when this is root: `postgres` if it exists, else a system
/// user created for the purpose.
fn run_as_user() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    let exists = |name: &str| Command::new("id").arg(name).output().is_ok_and(|o| o.status.success());
    if exists("postgres") {
        return Some("postgres".into());
    }
    if !exists(SERVICE_USER) {
        // Two test binaries may race to create it; the loser's failure is fine if it exists.
        let _ = Command::new("useradd").args(["--system", "--no-create-home", SERVICE_USER]).output();
        assert!(exists(SERVICE_USER), "cannot create the user {SERVICE_USER} to run PostgreSQL as");
    }
    Some(SERVICE_USER.into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
