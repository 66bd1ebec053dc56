//! A private PostgreSQL server for a test: `initdb` into a temporary directory, then
//! `postgres` listening on a free loopback port and a unix socket in that directory. No
//! system service is used; the binaries are Debian's `postgresql` package
//! (`/usr/lib/postgresql/<version>/bin`, or `PG_BIN`).
//!
//! PostgreSQL refuses to run as root. When the tests run as root (CI here does), the
//! server runs as the `postgres` account that the Debian package creates: the data
//! directory is handed to it and the processes are started with its uid and gid
//! (`Command::uid`/`gid`, so no `su` or `runuser` session stands between the test and the
//! server it stops). As any other user, the server runs as that user.
//!
//! `initdb` runs once per machine and PostgreSQL version into a template under the system
//! temp directory (created under a lock by whichever test comes first); every server
//! starts from a copy of it, which takes a fraction of `initdb`'s time.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server, stopped (immediately) and deleted when dropped.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

/// How the server treats durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync` off: for correctness tests, where only a machine crash would lose data.
    Relaxed,
    /// The server's defaults (fsync, synchronous commit): for benchmarks.
    Durable,
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(Durability::Relaxed)
    }

    pub fn start_with(durability: Durability) -> Postgres {
        Postgres::launch(durability, None)
    }

    /// A server that accepts TCP connections only over TLS, with this certificate chain
    /// and key (PEM).
    pub fn start_tls_only(cert_pem: &str, key_pem: &str) -> Postgres {
        Postgres::launch(Durability::Relaxed, Some((cert_pem, key_pem)))
    }

    fn launch(durability: Durability, tls: Option<(&str, &str)>) -> Postgres {
        let bin = bin_dir();
        let owner = server_account();
        let template = template(&bin, owner);
        let dir = tempfile::Builder::new()
            .prefix("motey-pg-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .expect("cp");
        assert!(status.success(), "copying the PostgreSQL template");
        if let Some((cert, key)) = tls {
            std::fs::write(data.join("server.crt"), cert).expect("certificate");
            let key_file = data.join("server.key");
            std::fs::write(&key_file, key).expect("key");
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod key");
            // TCP only with TLS; the unix socket stays for psql.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("pg_hba.conf");
        }
        hand_over(dir.path(), owner);
        let port = crate::free_port();
        let mut command = Command::new(bin.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"])
            .args(["-c", "shared_buffers=128MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).expect("log file"));
        if tls.is_some() {
            command.args(["-c", "ssl=on"]);
        }
        if durability == Durability::Relaxed {
            command.args(["-c", "fsync=off", "-c", "synchronous_commit=off"]);
        }
        as_account(&mut command, owner);
        let child = command.spawn().expect("starting postgres");
        let server = Postgres { port, dir, child };
        server.wait_ready(&bin);
        server
    }

    /// A connection string for the `postgres` database as its superuser.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database and gives its connection string.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url_of(name)
    }

    /// Runs SQL through `psql` and gives its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The server's directory: its data directory (tables, WAL) and its log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `pg_dump --format=custom` of `database` into `file`, as an operator backs it up.
    pub fn dump(&self, database: &str, file: &Path) {
        let mut command = self.client("pg_dump");
        command
            .args(["--format=custom", "--file"])
            .arg(file)
            .arg(database);
        succeed(command, "pg_dump");
    }

    /// `pg_restore` of a [`Postgres::dump`] into `database`, which must exist and be empty.
    pub fn restore(&self, database: &str, file: &Path) {
        let mut command = self.client("pg_restore");
        command.args(["--no-owner", "--dbname", database]).arg(file);
        succeed(command, "pg_restore");
    }

    /// A client program of the server's version, connected through its socket.
    fn client(&self, program: &str) -> Command {
        let mut command = Command::new(bin_dir().join(program));
        command.arg("-h").arg(self.dir.path()).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        command
    }

    /// The postmaster's process id (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn wait_ready(&self, bin: &Path) {
        let started = Instant::now();
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-p", &self.port.to_string(), "-h"])
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!("PostgreSQL did not start:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown, nothing of a test database is worth a checkpoint.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGQUIT,
        );
        let _ = self.child.wait();
    }
}

fn succeed(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The directory with `initdb` and `postgres`: `PG_BIN`, else the newest Debian version.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/setup-deps.sh")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/*/bin/postgres: run scripts/setup-deps.sh")
}

/// uid and gid the server runs as: the `postgres` account when we are root, else none
/// (the current user).
fn server_account() -> Option<(u32, u32)> {
    if id(&["-u"]) != 0 {
        return None;
    }
    Some((id(&["-u", "postgres"]), id(&["-g", "postgres"])))
}

/// `id ARGS` as a number.
fn id(args: &[&str]) -> u32 {
    let output = Command::new("id").args(args).output().expect("id");
    assert!(
        output.status.success(),
        "id {args:?}: running as root needs the postgres account of Debian's postgresql package"
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

fn as_account(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

/// Gives `dir` and everything in it to the server's account (PostgreSQL insists on owning
/// its data directory, mode 0700).
fn hand_over(dir: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {}", dir.display());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

/// The initialised data directory every server is copied from, made on first use.
fn template(bin: &Path, owner: Option<(u32, u32)>) -> PathBuf {
    let version = bin
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("pg")
        .to_owned();
    let user = id(&["-u"]);
    let root = std::env::temp_dir().join(format!("motey-pg-template-{version}-{user}"));
    let data = root.join("data");
    let ready = root.join("ready");
    if ready.exists() {
        return data;
    }
    std::fs::create_dir_all(&root).expect("template dir");
    let lock = std::fs::File::create(root.join("lock")).expect("template lock");
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking the template");
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(&data);
        let staging = tempfile::Builder::new()
            .prefix("motey-pg-initdb-")
            .tempdir()
            .expect("temp dir");
        hand_over(staging.path(), owner);
        let mut command = Command::new(bin.join("initdb"));
        command
            .arg("-D")
            .arg(staging.path().join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C.UTF-8"])
            .stdout(Stdio::null());
        as_account(&mut command, owner);
        let output = command.output().expect("initdb");
        assert!(
            output.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let status = Command::new("cp")
            .arg("-a")
            .arg(staging.path().join("data"))
            .arg(&data)
            .status()
            .expect("cp");
        assert!(status.success(), "saving the PostgreSQL template");
        std::fs::write(&ready, b"").expect("template marker");
    }
    drop(lock);
    data
}
