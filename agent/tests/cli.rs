//! The `motey` command line: exit codes, daemon mode, configuration errors.

use std::process::Command;
use std::time::Duration;

use system_tests::{free_port, wait_for};

fn motey(data_dir: &std::path::Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_motey"));
    command
        .env("MOTEY_GENERAL_DATA_DIR", data_dir)
        .env("MOTEY_WEBSERVER_IP", "127.0.0.1")
        .env("MOTEY_WEBSERVER_PORT", port.to_string())
        .env("MOTEY_ZEROMQ_PEER_PORT", free_port().to_string())
        .env("MOTEY_MQTT_PORT", free_port().to_string());
    command
}

#[test]
fn version_and_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_motey"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
    let output = Command::new(env!("CARGO_BIN_EXE_motey"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["start", "stop", "restart", "status"] {
        assert!(help.contains(command), "{help}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_motey"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn wrong_configuration_names_section_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let output = motey(dir.path(), free_port())
        .env("MOTEY_WEBSERVER_PORT", "eighty")
        .arg("start")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("[WEBSERVER] port = \"eighty\""), "{stderr}");

    let file = dir.path().join("motey.ini");
    std::fs::write(&file, "[LOGGER]\nlevel = loud\n").unwrap();
    let output = motey(dir.path(), free_port())
        .args(["--config"])
        .arg(&file)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("[LOGGER] level"));
}

#[test]
fn unusable_database_path_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let output = motey(dir.path(), free_port())
        .env("MOTEY_DATABASE_PATH", blocker.join("db"))
        .arg("start")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("database at") && stderr.contains("cannot create the directory"),
        "{stderr}"
    );
}

/// The data directory and the database are the agent user's alone.
fn assert_private(data_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data_dir), 0o700, "{}", data_dir.display());
    let db = data_dir.join("db");
    assert_eq!(mode(&db), 0o700, "{}", db.display());
    for entry in std::fs::read_dir(&db).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

#[tokio::test]
async fn daemon_starts_reports_status_and_stops() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // As an older agent or a careless umask left them: readable by everyone.
    std::fs::create_dir(dir.path().join("db")).unwrap();
    for path in [dir.path().to_path_buf(), dir.path().join("db")] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let port = free_port();
    let status = motey(dir.path(), port).arg("status").output().unwrap();
    assert_eq!(status.status.code(), Some(3));

    let started = motey(dir.path(), port)
        .args(["start", "--daemon"])
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    wait_for("the daemon's API", Duration::from_secs(60), || async move {
        reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .ok()
    })
    .await;
    let status = motey(dir.path(), port).arg("status").output().unwrap();
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("is running"));
    assert_private(dir.path());
    // A second start is refused while the first runs.
    let again = motey(dir.path(), port).args(["start"]).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    let stopped = motey(dir.path(), port).arg("stop").output().unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    let status = motey(dir.path(), port).arg("status").output().unwrap();
    assert_eq!(status.status.code(), Some(3));
    assert!(!dir.path().join("motey.pid").exists());
    // The daemon logged to its data directory, as JSON or text.
    let log = std::fs::read_to_string(dir.path().join("application.log")).unwrap();
    assert!(log.contains("agent started"), "{log}");
}

/// A process that is not an agent, standing in for one that was given a dead agent's pid.
fn stranger() -> std::process::Child {
    Command::new("sleep").arg("600").spawn().unwrap()
}

async fn wait_for_health(port: u16) {
    wait_for("the daemon's API", Duration::from_secs(60), || async move {
        reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .ok()
    })
    .await;
}

/// `motey start --daemon` in `dir`, returning once the agent answers on `port`.
async fn start_daemon(dir: &std::path::Path, port: u16) {
    let started = motey(dir, port)
        .args(["start", "--daemon"])
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    wait_for_health(port).await;
}

#[tokio::test]
async fn a_pid_file_left_by_kill_9_does_not_block_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    start_daemon(dir.path(), port).await;
    let pid_file = dir.path().join("motey.pid");
    let agent: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(
        "the killed agent to be gone",
        Duration::from_secs(30),
        || async {
            let status = motey(dir.path(), port).arg("status").output().unwrap();
            (status.status.code() == Some(3)).then_some(())
        },
    )
    .await;
    // The dead agent's pid now belongs to someone else.
    let mut stranger = stranger();
    std::fs::write(&pid_file, format!("{}\n", stranger.id())).unwrap();

    start_daemon(dir.path(), port).await;
    let stopped = motey(dir.path(), port).arg("stop").output().unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger was signalled"
    );
    stranger.kill().unwrap();
}

#[test]
fn stop_and_status_leave_a_stranger_named_in_an_unlocked_pid_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut stranger = stranger();
    std::fs::write(dir.path().join("motey.pid"), format!("{}\n", stranger.id())).unwrap();
    let status = motey(dir.path(), free_port())
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(3), "{status:?}");
    let stopped = motey(dir.path(), free_port()).arg("stop").output().unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("not running"));
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger was signalled"
    );
    stranger.kill().unwrap();
}
