//! The metering survey as real processes: the `data-api`, `meter-reader` and `meter-sim`
//! binaries, a survey PKI made by `data-api pki`, HTTPS clients for researchers (bearer
//! token) and participants (device certificate), and the logs and status files the tests
//! observe.
//!
//! **Finding the binaries.** A test of this crate cannot name another package's binaries
//! (`CARGO_BIN_EXE_*` only covers its own), and artifact dependencies are not stable
//! Cargo. The first test in a test binary that needs them looks, in this order:
//!
//! 1. `SURVEY_BIN_DIR=<dir>`: prebuilt binaries from that directory;
//! 2. the running test's own profile directory (`target/debug/`), if all three binaries
//!    are there and newer than every file of the two crates, `Cargo.toml` and
//!    `Cargo.lock`. A workspace test run (CI: `cargo nextest run --workspace`) has just
//!    built them there for the crates' own tests, so nothing is built twice;
//! 3. otherwise it runs `cargo build -p meter-reader -p data-api --bins` with the profile
//!    and target directory of the running test and takes the executables' paths from
//!    Cargo's JSON messages rather than guessing the layout (concurrent test binaries
//!    wait on Cargo's own lock). That is what a developer gets who changed a crate and
//!    runs only `cargo test -p system-tests`.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

use crate::{free_port, wait_for};

/// How long any single awaited event of the survey may take on a busy machine.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The survey's executables.
#[derive(Debug, Clone)]
pub struct SurveyBinaries {
    pub data_api: PathBuf,
    pub meter_reader: PathBuf,
    pub meter_sim: PathBuf,
}

/// The survey's executables, built once per test binary (see the module documentation).
pub fn survey_binaries() -> &'static SurveyBinaries {
    static BINARIES: OnceLock<SurveyBinaries> = OnceLock::new();
    BINARIES.get_or_init(|| match std::env::var_os("SURVEY_BIN_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let binaries = SurveyBinaries {
                data_api: dir.join("data-api"),
                meter_reader: dir.join("meter-reader"),
                meter_sim: dir.join("meter-sim"),
            };
            for path in [
                &binaries.data_api,
                &binaries.meter_reader,
                &binaries.meter_sim,
            ] {
                assert!(path.is_file(), "SURVEY_BIN_DIR: {} missing", path.display());
            }
            binaries
        }
        None => fresh_binaries().unwrap_or_else(build_survey_binaries),
    })
}

/// The binaries beside the running test, if they are newer than the sources they are
/// built from (see the module documentation).
fn fresh_binaries() -> Option<SurveyBinaries> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let binaries = SurveyBinaries {
        data_api: profile_dir.join("data-api"),
        meter_reader: profile_dir.join("meter-reader"),
        meter_sim: profile_dir.join("meter-sim"),
    };
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let built = [
        &binaries.data_api,
        &binaries.meter_reader,
        &binaries.meter_sim,
    ]
    .into_iter()
    .map(|p| modified(p))
    .collect::<Option<Vec<_>>>()?
    .into_iter()
    .min()?;
    let root = crate::docker::repo_root();
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for file in [root.join("Cargo.toml"), root.join("Cargo.lock")] {
        newest = newest.max(modified(&file)?);
    }
    for dir in ["workloads/meter-reader", "workloads/data-api"] {
        newest = newest.max(newest_in(&root.join(dir))?);
    }
    (built > newest).then_some(binaries)
}

/// The latest modification time of the files under `dir` (build output skipped).
fn newest_in(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        let metadata = entry.metadata().ok()?;
        let time = if metadata.is_dir() {
            newest_in(&entry.path())?
        } else {
            metadata.modified().ok()?
        };
        newest = newest.max(time);
    }
    Some(newest)
}

/// Where the running test executable was built: `<target dir>[/<triple>]/<profile>/deps/`.
struct BuildLayout {
    target_dir: Option<PathBuf>,
    triple: Option<String>,
    profile: String,
}

fn build_layout() -> BuildLayout {
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .filter(|deps| deps.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent);
    let Some(profile_dir) = profile_dir else {
        return BuildLayout {
            target_dir: None,
            triple: None,
            profile: "debug".into(),
        };
    };
    let profile = profile_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "debug".into());
    // Cargo marks the root of every target directory with CACHEDIR.TAG; a directory in
    // between is the target triple of a cross build.
    let parent = profile_dir.parent();
    let (target_dir, triple) = match parent {
        Some(p) if p.join("CACHEDIR.TAG").exists() => (Some(p.to_path_buf()), None),
        Some(p) => match p.parent() {
            Some(root) if root.join("CACHEDIR.TAG").exists() => (
                Some(root.to_path_buf()),
                p.file_name().map(|n| n.to_string_lossy().into_owned()),
            ),
            _ => (None, None),
        },
        None => (None, None),
    };
    BuildLayout {
        target_dir,
        triple,
        profile,
    }
}

fn build_survey_binaries() -> SurveyBinaries {
    let found = cargo_build(&["-p", "meter-reader", "-p", "data-api", "--bins"], None);
    let take = |name: &str| {
        found
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("cargo build reported no executable {name}"))
    };
    SurveyBinaries {
        data_api: take("data-api"),
        meter_reader: take("meter-reader"),
        meter_sim: take("meter-sim"),
    }
}

/// Runs `cargo build ARGS` with the profile and target directory of the running test, for
/// `target` (a triple) or the running test's own target; returns the executables built, by
/// name, from Cargo's JSON messages rather than guessing the layout.
pub(crate) fn cargo_build(
    args: &[&str],
    target: Option<&str>,
) -> std::collections::HashMap<String, PathBuf> {
    let layout = build_layout();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(crate::docker::repo_root())
        .arg("build")
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match layout.profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    if let Some(dir) = &layout.target_dir {
        command.arg("--target-dir").arg(dir);
    }
    if let Some(triple) = target.or(layout.triple.as_deref()) {
        command.args(["--target", triple]);
    }
    let output = command.output().expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut found = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(executable)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            found.insert(name.to_owned(), PathBuf::from(executable));
        }
    }
    found
}

/// A child process killed (SIGKILL) and reaped when dropped, so that no failing test
/// leaves a server, reader or simulator behind.
pub struct Process {
    child: std::process::Child,
    name: &'static str,
    /// The process leads its own process group, which is killed as a whole (a WebDriver
    /// and the browser it started).
    group: bool,
}

impl Process {
    pub fn spawn(name: &'static str, command: &mut Command) -> Process {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process {
            child,
            name,
            group: false,
        }
    }

    /// Starts `command` as the leader of a new process group; everything it starts is
    /// killed with it.
    pub fn spawn_group(name: &'static str, command: &mut Command) -> Process {
        use std::os::unix::process::CommandExt;
        let mut process = Process::spawn(name, command.process_group(0));
        process.group = true;
        process
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9` (of the whole group for a group leader).
    pub fn kill9(&mut self) {
        if self.group {
            use nix::sys::signal::{killpg, Signal};
            let _ = killpg(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (SIGKILL if it does not end within the patience).
    pub fn terminate(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} ignored SIGTERM; killing it", self.name);
        self.kill9();
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The JSON lines of a log file (lines that are not JSON are skipped).
pub fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub const RESEARCHER_TOKEN: &str = "survey-researcher-token-0123456789";
pub const ADMIN_TOKEN: &str = "survey-admin-token-0123456789abcdef";

/// A survey set-up in a temporary directory: the PKI made by `data-api pki`, the Data
/// API's database and every process's log. On a failing test the logs' last lines are
/// printed, since the directory goes away with the test.
pub struct Survey {
    pub dir: tempfile::TempDir,
    pub binaries: &'static SurveyBinaries,
    logs: std::sync::Mutex<Vec<PathBuf>>,
}

impl Drop for Survey {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in self.logs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                eprintln!(
                    "----- last lines of {} -----\n{}",
                    log.display(),
                    tail(log, 60)
                );
            }
        }
    }
}

/// A device certificate and its key, as `data-api pki issue-device` wrote them.
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    pub email: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Survey {
    /// Creates the survey CA and the Data API's server certificate with the real
    /// `data-api pki` commands.
    pub fn new() -> Survey {
        let survey = Survey {
            dir: tempfile::tempdir().expect("temporary directory"),
            binaries: survey_binaries(),
            logs: std::sync::Mutex::new(Vec::new()),
        };
        survey.pki(&["init"]);
        survey.pki(&["issue-server", "--host", "localhost", "--host", "127.0.0.1"]);
        survey
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub fn ca(&self) -> PathBuf {
        self.pki_dir().join("ca.pem")
    }

    fn pki(&self, args: &[&str]) {
        let output = Command::new(&self.binaries.data_api)
            .arg("pki")
            .arg(args[0])
            .arg("--dir")
            .arg(self.pki_dir())
            .args(&args[1..])
            .output()
            .expect("run data-api pki");
        assert!(
            output.status.success(),
            "data-api pki {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Issues a measurement device's certificate for the participant `email`.
    pub fn issue_device(&self, email: &str, name: &str) -> DeviceIdentity {
        self.issue_device_with_scopes(email, name, None)
    }

    /// Issues a device certificate limited to `scopes` (comma-separated), or with the
    /// default scopes.
    pub fn issue_device_with_scopes(
        &self,
        email: &str,
        name: &str,
        scopes: Option<&str>,
    ) -> DeviceIdentity {
        let mut args = vec!["issue-device", "--email", email, "--out", name];
        if let Some(scopes) = scopes {
            args.extend(["--scopes", scopes]);
        }
        self.pki(&args);
        DeviceIdentity {
            email: email.to_owned(),
            cert: self.pki_dir().join(format!("{name}.pem")),
            key: self.pki_dir().join(format!("{name}-key.pem")),
        }
    }

    /// A log file in the survey's directory, printed if the test fails.
    pub fn log_file(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.clone());
        path
    }

    /// HTTPS client trusting only the survey CA, without a client certificate.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().expect("https client")
    }

    /// HTTPS client presenting `device`'s certificate, as the participant's device does.
    pub fn device_client(&self, device: &DeviceIdentity) -> reqwest::Client {
        let mut pem = std::fs::read(&device.cert).expect("device certificate");
        pem.push(b'\n');
        pem.extend(std::fs::read(&device.key).expect("device key"));
        self.client_builder()
            .identity(reqwest::Identity::from_pem(&pem).expect("device identity"))
            .build()
            .expect("https client with identity")
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca()).expect("ca.pem"))
            .expect("CA certificate");
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(30))
    }

    /// Starts `meter-sim` with `args`; returns it and the pty path (or TCP address) it
    /// printed.
    pub fn start_sim(&self, args: &[&str]) -> (Process, String) {
        let mut command = Command::new(&self.binaries.meter_sim);
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut process = Process::spawn("meter-sim", &mut command);
        let mut line = String::new();
        BufReader::new(process.child.stdout.take().expect("meter-sim stdout"))
            .read_line(&mut line)
            .expect("meter-sim prints its pty");
        assert!(!line.trim().is_empty(), "meter-sim printed no pty path");
        (process, line.trim().to_owned())
    }
}

impl Default for Survey {
    fn default() -> Self {
        Survey::new()
    }
}

/// `data-api serve` as a real process on a fixed loopback port (so that it can be stopped
/// and started again where the reader expects it), JSON logs in a file.
pub struct DataApi {
    process: Option<Process>,
    pub port: u16,
    /// A sled directory or a `postgres://` connection string.
    db: std::ffi::OsString,
    pki: PathBuf,
    log: PathBuf,
    binary: PathBuf,
    extra_args: Vec<String>,
    starts: usize,
}

impl DataApi {
    pub async fn start(survey: &Survey) -> DataApi {
        DataApi::start_with(survey, &[]).await
    }

    /// Starts the server with further `serve` flags, e.g. `--report-interval 2`.
    pub async fn start_with(survey: &Survey, extra_args: &[&str]) -> DataApi {
        let extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        DataApi::start_on(survey, survey.dir.path().join("db").into(), extra_args).await
    }

    /// Starts the server on a PostgreSQL database (`postgres://...`), with its key vault
    /// and revocation ledger in the survey's directory.
    pub async fn start_on_postgres(survey: &Survey, url: &str) -> DataApi {
        let keys = survey.dir.path().join("keys");
        let extra_args = vec![
            "--key-vault".to_owned(),
            keys.join("vault").display().to_string(),
            "--revocation-ledger".to_owned(),
            keys.join("revocations").display().to_string(),
        ];
        DataApi::start_on(survey, url.into(), extra_args).await
    }

    async fn start_on(survey: &Survey, db: std::ffi::OsString, extra_args: Vec<String>) -> DataApi {
        let mut api = DataApi {
            process: None,
            port: free_port(),
            db,
            pki: survey.pki_dir(),
            log: survey.log_file("data-api.log"),
            binary: survey.binaries.data_api.clone(),
            extra_args,
            starts: 0,
        };
        api.restart().await;
        api
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Stops the server with SIGTERM (it drains and flushes).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate();
        }
    }

    /// Stops the server with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// Starts the server (again) on the same port and database; returns once it listens.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "data-api is running already");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("data-api log");
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--db")
            .arg(&self.db)
            .arg("--pki-dir")
            .arg(&self.pki)
            .args(["--log-format", "json", "--cache-mb", "16"])
            .args(&self.extra_args)
            .env("DATA_API_RESEARCHER_TOKEN", RESEARCHER_TOKEN)
            .env("DATA_API_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let mut process = Process::spawn("data-api", &mut command);
        self.starts += 1;
        let wanted = self.starts;
        let log = self.log.clone();
        wait_for("data-api to listen", PATIENCE, || {
            let listening = log_lines(&log)
                .iter()
                .filter(|l| l["fields"]["message"] == "listening")
                .count();
            let exited = !process.running();
            async move {
                assert!(!exited, "data-api serve exited (see its log)");
                (listening >= wanted).then_some(())
            }
        })
        .await;
        self.process = Some(process);
    }

    /// Registers a household (FR-06) as a researcher; returns the Data API's answer.
    pub async fn register(&self, survey: &Survey, registration: &Value) -> Value {
        let response = survey
            .client()
            .post(format!("{}/management/household", self.url()))
            .bearer_auth(RESEARCHER_TOKEN)
            .json(registration)
            .send()
            .await
            .expect("POST /management/household");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON answer");
        assert_eq!(status.as_u16(), 201, "registration refused: {body}");
        body
    }

    /// `GET` a researcher endpoint.
    pub async fn researcher_get(&self, survey: &Survey, path_and_query: &str) -> Value {
        let response = survey
            .client()
            .get(format!("{}{}", self.url(), path_and_query))
            .bearer_auth(RESEARCHER_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        assert!(response.status().is_success(), "GET {path_and_query}");
        response.json().await.expect("JSON answer")
    }

    /// The measurement export (JSON lines) of one household.
    pub async fn export(&self, survey: &Survey, household: &str) -> Vec<Value> {
        let response = survey
            .client()
            .get(format!(
                "{}/management/export/measurements?format=jsonl&household={household}",
                self.url()
            ))
            .bearer_auth(RESEARCHER_TOKEN)
            .send()
            .await
            .expect("GET /management/export/measurements");
        assert!(response.status().is_success(), "export refused");
        response
            .text()
            .await
            .expect("export body")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("export line is JSON"))
            .collect()
    }
}

/// The registration details of a household with an electricity meter (MT681) and a PV
/// system with its generation meter (EHZ), as a researcher enters them.
pub fn registration(email: &str) -> Value {
    json!({
        "user": {"name": "Erika Mustermann", "email": email},
        "address": {"street": "Augustusplatz", "house_number": "10", "postal_code": "04109", "city": "Leipzig", "country": "DE"},
        "location": {"latitude": 51.3397, "longitude": 12.3731},
        "metadata": {"children": 2, "adults": 2, "employed_adults": 1, "ev_charger": true, "heat_pump": false, "home_battery": true},
        "measurement_devices": [{"name": "meter reader in the basement"}],
        "meters": [{"type": "ELECTRICITY", "model": "MT681"}, {"type": "PV-GENERATION", "model": "EHZ"}],
        "pv_systems": [{"nominal_power": 9.62, "azimuth": 180, "tilt": 30, "installation_date": "2019-05-17", "generation_meter": 1}]
    })
}

/// A participant's view of the Data API through the device certificate.
pub struct Participant {
    pub client: reqwest::Client,
    pub base: String,
}

impl Participant {
    pub fn new(survey: &Survey, api: &DataApi, device: &DeviceIdentity) -> Participant {
        Participant {
            client: survey.device_client(device),
            base: api.url(),
        }
    }

    /// Sends a request; returns the status and the JSON body (Null if none).
    pub async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let response = self
            .client
            .request(method.clone(), format!("{}{}", self.base, path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Every measurement of `meter`, following `next_cursor`.
    pub async fn measurements(&self, meter: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/household/meter/{meter}/measurement?limit=1000");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.call(reqwest::Method::GET, &path).await;
            assert_eq!(status, 200, "GET {path}: {body}");
            all.extend(body["measurements"].as_array().cloned().unwrap_or_default());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return all,
            }
        }
    }
}

/// How a reader is run: its meters (`<meter uuid>=<probe>`), identity and extra settings.
pub struct ReaderSetup {
    pub meters: Vec<(String, String)>,
    pub api_url: String,
    pub device: DeviceIdentity,
    pub ca: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub extra: Vec<(String, String)>,
}

/// `meter-reader run` as a real process with shortened cycles: a measurement every
/// 0.5 s, a report every second, retries at least every second. JSON logs go to a file.
pub struct MeterReader {
    pub process: Process,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl MeterReader {
    pub fn start(survey: &Survey, setup: &ReaderSetup) -> MeterReader {
        MeterReader::start_as(Command::new(&survey.binaries.meter_reader), setup)
    }

    /// Starts the reader through `command`, which runs the `meter-reader` executable (under
    /// an emulator, say); `run` and the settings are added to it.
    pub fn start_as(mut command: Command, setup: &ReaderSetup) -> MeterReader {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&setup.log)
            .expect("reader log");
        let meters: Vec<String> = setup
            .meters
            .iter()
            .map(|(meter, probe)| format!("{meter}={probe}"))
            .collect();
        command
            .arg("run")
            .env_clear()
            .env("METER_READER_METERS", meters.join(","))
            .env("METER_READER_API_URL", &setup.api_url)
            .env("METER_READER_CA_CERT", &setup.ca)
            .env("METER_READER_CLIENT_CERT", &setup.device.cert)
            .env("METER_READER_CLIENT_KEY", &setup.device.key)
            .env("METER_READER_DATA_DIR", &setup.data_dir)
            .env("METER_READER_MEASUREMENT_INTERVAL", "0.5")
            .env("METER_READER_REPORT_INTERVAL", "1")
            .env("METER_READER_RETRY_MAX", "1")
            .env("METER_READER_UI_LISTEN", "off")
            .env("METER_READER_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in &setup.extra {
            command.env(k, v);
        }
        MeterReader {
            process: Process::spawn("meter-reader", &mut command),
            data_dir: setup.data_dir.clone(),
            log: setup.log.clone(),
        }
    }

    /// The reader's log events with this message.
    pub fn events(&self, message: &str) -> Vec<Value> {
        log_lines(&self.log)
            .into_iter()
            .filter(|l| l["message"] == message)
            .collect()
    }

    /// The uuids of the measurements the reader stored (from its log).
    pub fn stored(&self) -> HashSet<String> {
        self.events("measurement stored")
            .iter()
            .filter_map(|e| e["uuid"].as_str().map(str::to_owned))
            .collect()
    }

    /// The status file the reader writes every measurement cycle.
    pub fn status(&self) -> Value {
        std::fs::read_to_string(self.data_dir.join("status.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the reader has written its status file `cycles` more times, i.e. that
    /// many measurement cycles have passed: an observation window made of events, not of
    /// a sleep.
    pub async fn pass_cycles(&self, cycles: usize) {
        let mut seen = HashSet::new();
        wait_for("measurement cycles of the reader", PATIENCE, || {
            if let Some(at) = self.status()["written_at"].as_str() {
                seen.insert(at.to_owned());
            }
            let done = seen.len() > cycles;
            async move { done.then_some(()) }
        })
        .await;
    }
}

/// The value of `code` in a measurement's `data` list.
pub fn obis_value(measurement: &Value, code: &str) -> Option<f64> {
    measurement["data"]
        .as_array()?
        .iter()
        .find_map(|point| point.get(code).and_then(Value::as_f64))
}
