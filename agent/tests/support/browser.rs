//! Headless Chromium driven over the W3C WebDriver protocol (Debian's `chromedriver`), with
//! just what the web client's tests need: find by CSS selector, click, type, run a
//! script, take a screenshot, read the browser's console log. Every wait polls with a
//! generous deadline, as the CI machine is small and busy.

#![allow(dead_code)] // not every test uses every helper

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use system_tests::free_port;
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long any wait for the page lasts before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser at a time per test binary: two cores do not run several Chromiums well.
static BROWSERS: Semaphore = Semaphore::const_new(1);

/// Keys as WebDriver spells them.
pub mod keys {
    pub const TAB: &str = "\u{E004}";
    pub const ENTER: &str = "\u{E007}";
    pub const ESCAPE: &str = "\u{E00C}";
}

/// The screen the page is shown on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewport {
    Desktop,
    Phone,
}

impl Viewport {
    pub fn name(self) -> &'static str {
        match self {
            Viewport::Desktop => "desktop",
            Viewport::Phone => "phone",
        }
    }

    /// CSS pixels of the page's viewport.
    pub fn size(self) -> (u32, u32) {
        match self {
            Viewport::Desktop => (1280, 900),
            Viewport::Phone => (390, 844),
        }
    }
}

/// A console message of the page.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub level: String,
    pub source: String,
    pub message: String,
}

/// A Chromium session; the browser and its driver end when it is dropped.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    driver_port: u16,
    _permit: SemaphorePermit<'static>,
}

impl Browser {
    /// Starts `chromedriver` on a free port and a headless Chromium sized for `viewport`.
    pub async fn open(viewport: Viewport) -> Browser {
        let permit = BROWSERS
            .acquire()
            .await
            .expect("the browser semaphore is never closed");
        let driver_binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let driver_port = free_port();
        let driver = Command::new(&driver_binary)
            .arg(format!("--port={driver_port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that Chromium's processes end with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start {driver_binary} (apt-get install chromium-driver): {error}")
            });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{driver_port}");
        system_tests::wait_for("chromedriver to be ready", PATIENCE, || {
            let http = http.clone();
            let url = format!("{base}/status");
            async move {
                let status: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                status["value"]["ready"].as_bool().filter(|ready| *ready)
            }
        })
        .await;
        let (width, height) = viewport.size();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-gpu".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-search-engine-choice-screen".to_owned(),
            "--password-store=basic".to_owned(),
            format!("--window-size={width},{height}"),
        ];
        if let Ok(extra) = std::env::var("CHROMIUM_ARGS") {
            args.extend(extra.split_whitespace().map(str::to_owned));
        }
        let mut chrome_options = json!({ "args": args });
        if let Ok(binary) = std::env::var("CHROMIUM") {
            chrome_options["binary"] = json!(binary);
        } else if std::path::Path::new("/usr/bin/chromium").exists() {
            chrome_options["binary"] = json!("/usr/bin/chromium");
        }
        if viewport == Viewport::Phone {
            chrome_options["mobileEmulation"] = json!({
                "deviceMetrics": { "width": width, "height": height, "pixelRatio": 2.0, "touch": true, "mobile": true }
            });
        }
        let response: Value = http
            .post(format!("{base}/session"))
            .json(&json!({
                "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": chrome_options,
                    "goog:loggingPrefs": { "browser": "ALL" },
                    "timeouts": { "pageLoad": 120_000, "script": 60_000 },
                }}
            }))
            .send()
            .await
            .expect("ask chromedriver for a session")
            .json()
            .await
            .expect("chromedriver answers JSON");
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused a session: {response:#}"))
            .to_owned();
        let browser = Browser {
            http,
            session,
            driver,
            driver_port,
            _permit: permit,
        };
        if viewport == Viewport::Desktop {
            // The window includes the browser's frame; size the viewport itself.
            let inner: Value = browser
                .execute("return [window.innerWidth, window.innerHeight]", json!([]))
                .await;
            let (inner_width, inner_height) = (
                inner[0].as_u64().unwrap_or(width.into()) as u32,
                inner[1].as_u64().unwrap_or(height.into()) as u32,
            );
            if (inner_width, inner_height) != (width, height) {
                browser
                    .command(
                        reqwest::Method::POST,
                        "/window/rect",
                        json!({
                            "width": width + width.saturating_sub(inner_width),
                            "height": height + height.saturating_sub(inner_height),
                        }),
                    )
                    .await
                    .expect("resize the window");
            }
        }
        browser
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/session/{}{path}",
            self.driver_port, self.session
        )
    }

    /// One WebDriver command; `Err` carries the protocol's error code and message.
    pub async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, WebDriverError> {
        let mut request = self.http.request(method.clone(), self.url(path));
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|error| WebDriverError {
            code: "transport".into(),
            message: error.to_string(),
        })?;
        let ok = response.status().is_success();
        let value: Value = response.json().await.map_err(|error| WebDriverError {
            code: "transport".into(),
            message: error.to_string(),
        })?;
        if ok {
            Ok(value["value"].clone())
        } else {
            Err(WebDriverError {
                code: value["value"]["error"].as_str().unwrap_or("unknown").into(),
                message: value["value"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .into(),
            })
        }
    }

    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await
            .unwrap_or_else(|error| panic!("open {url}: {error}"));
    }

    pub async fn refresh(&self) {
        self.command(reqwest::Method::POST, "/refresh", json!({}))
            .await
            .expect("reload the page");
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
        .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// The element matching `css` now, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await
            .ok()?;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits until `check` gives a value, failing the test with `what` and the page's
    /// text after [`PATIENCE`].
    pub async fn wait_until<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let started = Instant::now();
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if started.elapsed() > PATIENCE {
                let page = self
                    .command(
                        reqwest::Method::POST,
                        "/execute/sync",
                        json!({ "script": "return document.body.innerText", "args": [] }),
                    )
                    .await
                    .unwrap_or_default();
                panic!(
                    "timed out after {PATIENCE:?} waiting for {what}; the page shows:\n{}\nconsole: {:#?}",
                    page.as_str().unwrap_or_default(),
                    self.log().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for a displayed element matching `css`.
    pub async fn wait_for(&self, css: &str) -> String {
        self.wait_until(&format!("a visible {css}"), || async {
            let element = self.find(css).await?;
            let shown = self
                .command(
                    reqwest::Method::GET,
                    &format!("/element/{element}/displayed"),
                    json!({}),
                )
                .await
                .ok()?;
            shown.as_bool().filter(|shown| *shown).map(|_| element)
        })
        .await
    }

    /// Waits until no element matches `css`, or none is displayed.
    pub async fn wait_gone(&self, css: &str) {
        self.wait_until(&format!("{css} to disappear"), || async {
            let shown = self
                .execute(
                    "const e = document.querySelector(arguments[0]); return !!e && e.checkVisibility();",
                    json!([css]),
                )
                .await;
            (!shown.as_bool().unwrap_or(false)).then_some(())
        })
        .await
    }

    /// Waits until the text of the element matching `css` contains `expected`; returns it.
    pub async fn wait_for_text(&self, css: &str, expected: &str) -> String {
        self.wait_until(&format!("{css} to show {expected:?}"), || async {
            let text = self.text(css).await?;
            text.contains(expected).then_some(text)
        })
        .await
    }

    /// The rendered text of the element matching `css`.
    pub async fn text(&self, css: &str) -> Option<String> {
        let value = self
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                json!([css]),
            )
            .await;
        value.as_str().map(str::to_owned)
    }

    /// Clicks the displayed element matching `css` (waiting for it).
    pub async fn click(&self, css: &str) {
        self.wait_until(&format!("a click on {css}"), || async {
            let element = self.find(css).await?;
            self.command(
                reqwest::Method::POST,
                &format!("/element/{element}/click"),
                json!({}),
            )
            .await
            .ok()
        })
        .await;
    }

    /// Types `text` into the element matching `css` (waiting for it), after clearing it
    /// unless it is a file input.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.wait_until(&format!("typing into {css}"), || async {
            let element = self.find(css).await?;
            let _ = self
                .command(
                    reqwest::Method::POST,
                    &format!("/element/{element}/clear"),
                    json!({}),
                )
                .await;
            self.command(
                reqwest::Method::POST,
                &format!("/element/{element}/value"),
                json!({ "text": text }),
            )
            .await
            .ok()
        })
        .await;
    }

    /// Sends `keys` to whatever has the focus, as a keyboard user would.
    pub async fn press(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|key| {
                [
                    json!({ "type": "keyDown", "value": key.to_string() }),
                    json!({ "type": "keyUp", "value": key.to_string() }),
                ]
            })
            .collect();
        self.command(
            reqwest::Method::POST,
            "/actions",
            json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] }),
        )
        .await
        .expect("press keys");
    }

    /// A description of the focused element: `tag#id` plus its text, for assertions.
    pub async fn focused(&self) -> String {
        self.execute(
            "const e = document.activeElement; return e ? `${e.tagName.toLowerCase()}#${e.id} ${(e.innerText || e.value || '').trim()}` : '';",
            json!([]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Saves the whole page as `artifacts/screenshots/<name>.png` at the repository root.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../artifacts/screenshots");
        std::fs::create_dir_all(&dir).expect("create artifacts/screenshots");
        // The whole page, not only what fits the window.
        let metrics = self
            .command(
                reqwest::Method::POST,
                "/goog/cdp/execute",
                json!({ "cmd": "Page.getLayoutMetrics", "params": {} }),
            )
            .await;
        let full = match metrics {
            Ok(metrics) => {
                let size = &metrics["cssContentSize"];
                self.command(
                    reqwest::Method::POST,
                    "/goog/cdp/execute",
                    json!({ "cmd": "Page.captureScreenshot", "params": {
                        "format": "png",
                        "captureBeyondViewport": true,
                        "clip": { "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1 },
                    }}),
                )
                .await
                .ok()
                .and_then(|shot| shot["data"].as_str().map(str::to_owned))
            }
            Err(_) => None,
        };
        let data = match full {
            Some(data) => data,
            None => self
                .command(reqwest::Method::GET, "/screenshot", json!({}))
                .await
                .expect("take a screenshot")
                .as_str()
                .expect("a base64 screenshot")
                .to_owned(),
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshots are base64");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Console messages since the previous call (the browser forgets what it handed out).
    pub async fn log(&self) -> Vec<LogEntry> {
        let entries = self
            .command(
                reqwest::Method::POST,
                "/se/log",
                json!({ "type": "browser" }),
            )
            .await
            .unwrap_or_default();
        entries
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| LogEntry {
                        level: entry["level"].as_str().unwrap_or_default().into(),
                        source: entry["source"].as_str().unwrap_or_default().into(),
                        message: entry["message"].as_str().unwrap_or_default().into(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails the test on any console error or warning since the previous check, except
    /// refusals the test provoked on purpose: network errors whose message contains one of
    /// `expected_refusals` (such as `"/v1/services - Failed to load resource: the server
    /// responded with a status of 400"`).
    pub async fn assert_clean_console(&self, expected_refusals: &[&str]) {
        let unexpected: Vec<LogEntry> = self
            .log()
            .await
            .into_iter()
            .filter(|entry| entry.level == "SEVERE" || entry.level == "WARNING")
            .filter(|entry| {
                !(entry.source == "network"
                    && expected_refusals
                        .iter()
                        .any(|refusal| entry.message.contains(refusal)))
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "the browser console shows errors: {unexpected:#?}"
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session politely (Chromium quits and its profile is removed), then the
        // driver's whole process group.
        let _ = delete_session(self.driver_port, &self.session);
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/{id}` without an async runtime (drop may run outside one).
fn delete_session(port: u16, session: &str) -> std::io::Result<()> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(())
}

/// A refused WebDriver command.
#[derive(Debug)]
pub struct WebDriverError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
