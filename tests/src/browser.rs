//! A real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`) for the frontends' end-to-end tests: the driver process, a browser
//! session, console errors, polling JavaScript expressions and screenshots for a person
//! to check in `artifacts/screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::survey::{Process, PATIENCE};
use crate::{free_port, wait_for};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// `chromedriver` on a free port, with the browsers it starts in its process group.
pub struct Driver {
    _process: Process,
    pub url: String,
}

pub async fn chromedriver() -> Driver {
    let port = free_port();
    let mut command = Command::new(CHROMEDRIVER);
    command
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let process = Process::spawn_group("chromedriver", &mut command);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("chromedriver to be ready", PATIENCE, || {
        let request = http.get(format!("{url}/status")).send();
        async move {
            let status: Value = request.await.ok()?.json().await.ok()?;
            (status["value"]["ready"] == true).then_some(())
        }
    })
    .await;
    Driver {
        _process: process,
        url,
    }
}

/// A browser session with its own profile directory, a 1280×1700 window and the console
/// log kept; `extra_args` are added to Chromium's command line.
pub async fn browser(driver: &Driver, profile: &Path, extra_args: &[String]) -> Client {
    let mut args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--disable-extensions".into(),
        "--no-first-run".into(),
        "--window-size=1280,1700".into(),
        "--lang=en-GB".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    args.extend(extra_args.iter().cloned());
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        "goog:loggingPrefs": {"browser": "ALL"},
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(capabilities);
    // Chromium takes its time to start on a busy machine: retry the session briefly.
    let mut last_error = None;
    for _ in 0..3 {
        match builder.connect(&driver.url).await {
            Ok(client) => return client,
            Err(e) => last_error = Some(e),
        }
    }
    panic!("no browser session: {last_error:?}");
}

/// Chromium's command-line flag that trusts exactly the key of the server certificate at
/// `cert_pem` (its SPKI's SHA-256), so a page is loaded over real TLS from a server with a
/// certificate of the test's own CA, without trusting anything else.
pub fn trust_server_key(cert_pem: &Path) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let pem = std::fs::read(cert_pem).expect("server certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM certificate");
    let cert = pem.parse_x509().expect("X.509 certificate");
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    format!(
        "--ignore-certificate-errors-spki-list={}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

pub fn screenshots_dir() -> PathBuf {
    let dir = crate::docker::repo_root().join("artifacts/screenshots");
    std::fs::create_dir_all(&dir).expect("artifacts/screenshots");
    dir
}

/// Saves the visible page as `artifacts/screenshots/<name>.png`.
pub async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

/// Saves the whole page, however long, as `artifacts/screenshots/<name>.png`: the window
/// is stretched to the document's height for the picture and restored afterwards.
pub async fn full_page_screenshot(client: &Client, name: &str) {
    let (width, height) = client.get_window_size().await.expect("window size");
    let document: Value = client
        .execute(
            "return Math.ceil(document.documentElement.scrollHeight);",
            vec![],
        )
        .await
        .expect("document height");
    let wanted = document.as_u64().unwrap_or(height).max(height) + 140;
    client
        .set_window_size(width as u32, wanted as u32)
        .await
        .expect("stretch the window");
    screenshot(client, name).await;
    client
        .set_window_size(width as u32, height as u32)
        .await
        .expect("restore the window");
}

/// The browser's console messages of level SEVERE (errors), from chromedriver's log
/// endpoint. Reading them empties the log.
pub async fn console_errors(client: &Client, driver: &Driver) -> Vec<Value> {
    let session = client
        .session_id()
        .await
        .expect("session id")
        .expect("a session");
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/session/{session}/se/log", driver.url))
        .json(&json!({"type": "browser"}))
        .send()
        .await
        .expect("browser log")
        .json()
        .await
        .expect("browser log JSON");
    answer["value"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .collect()
}

/// Polls a JavaScript expression until it is truthy; returns its value.
pub async fn wait_js(client: &Client, what: &str, expression: &str) -> Value {
    let script = format!("return ({expression});");
    wait_for(what, PATIENCE, || {
        let answer = client.execute(&script, vec![]);
        async move {
            match answer.await {
                Ok(Value::Null) | Ok(Value::Bool(false)) => None,
                Ok(Value::Number(n)) if n.as_f64() == Some(0.0) => None,
                Ok(Value::String(s)) if s.is_empty() => None,
                Ok(value) => Some(value),
                Err(_) => None,
            }
        }
    })
    .await
}

/// The visible text of the first element matching `css`.
pub async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}
