//! The commands that talk to the local agent's REST API: `update`, `history`, `logs`,
//! `exec` and the request that starts `decommission`. The API token (and, for device access, the admin token) come from the same
//! configuration as the agent's: `[WEBSERVER] token` / `[SECURITY] admin_token`, else the
//! files the agent generated in its data directory.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use motey::api::tls::{self, Trust};
use motey::config::Config;
use serde_json::Value;

/// Which token a request needs.
#[derive(Clone, Copy)]
pub enum Token {
    Api,
    Admin,
}

pub struct RestClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl RestClient {
    pub fn new(config: &Config, token: Token) -> anyhow::Result<RestClient> {
        let ip = config.webserver.ip;
        let host = if ip.is_unspecified() {
            "127.0.0.1".to_owned()
        } else if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let token = match token {
            Token::Api => configured_or_file(
                config.webserver.token.as_deref(),
                &config.general.data_dir.join("api-token"),
                "[WEBSERVER] token",
            )?,
            Token::Admin => configured_or_file(
                config.access.admin_token.as_deref(),
                &config.general.data_dir.join("admin-token"),
                "[SECURITY] admin_token",
            )?,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("motey-cli/", env!("CARGO_PKG_VERSION")));
        let (scheme, http) = if tls::serves_tls(&config.webserver) {
            let trust = trust(config)?;
            (
                "https",
                http.use_preconfigured_tls(tls::client_config(&trust)?),
            )
        } else {
            ("http", http)
        };
        Ok(RestClient {
            base: format!("{scheme}://{host}:{}", config.webserver.port),
            token,
            http: http.build()?,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request.send().await.map_err(|error| {
            // The TLS refusal (a certificate that is not the pinned one) is deep in
            // the chain of sources; name it rather than only "is it running?".
            anyhow!(
                "cannot reach the agent at {} (is it running?): {}",
                self.base,
                error_chain(&error)
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match body["message"].as_str() {
            Some(message) => bail!("{message} ({status})"),
            None => bail!("the agent answered {status}"),
        }
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        Ok(self.send(request).await?.json().await?)
    }
}

/// What the agent's certificate must be: the configured fingerprint or CA, else the
/// certificate the agent serves, read from its files (the CLI runs on the agent's node).
fn trust(config: &Config) -> anyhow::Result<Trust> {
    let webserver = &config.webserver;
    if let Some(pin) = &webserver.tls_fingerprint {
        return Ok(Trust::Pinned(pin.clone()));
    }
    if let Some(ca_file) = &webserver.tls_ca_file {
        return Ok(Trust::Authority(ca_file.clone()));
    }
    let path = tls::certificate_path(config);
    let fingerprint = tls::fingerprint_of_file(&path).with_context(|| {
        "cannot verify the agent's certificate: set [WEBSERVER] tls_fingerprint \
         (--fingerprint) or tls_ca_file (--cacert)"
    })?;
    Ok(Trust::Pinned(fingerprint))
}

fn configured_or_file(configured: Option<&str>, path: &Path, key: &str) -> anyhow::Result<String> {
    if let Some(token) = configured.filter(|t| !t.is_empty()) {
        return Ok(token.to_owned());
    }
    std::fs::read_to_string(path)
        .map(|token| token.trim().to_owned())
        .map_err(|error| {
            anyhow!(
                "no token: set {key} or let the agent generate {} ({error})",
                path.display()
            )
        })
}

/// Runs one client command on a small runtime and turns its outcome into an exit code.
pub fn run<F>(command: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(command));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("motey: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Asks the running agent to drain its images and leave the fog (`motey decommission`
/// then waits for it to stop).
pub async fn decommission(config: &Config, timeout_secs: u64) -> anyhow::Result<ExitCode> {
    let client = RestClient::new(config, Token::Api)?;
    let request = client
        .request(reqwest::Method::POST, "/v1/decommission")
        .json(&serde_json::json!({ "timeout_secs": timeout_secs }))
        .timeout(Duration::from_secs(30));
    let answer = client.send(request).await?.text().await.unwrap_or_default();
    println!("decommissioning: {answer}");
    Ok(ExitCode::SUCCESS)
}

/// `motey update SERVICE_ID FILE [--wait]`: sends the new blueprint version; with
/// `--wait`, follows the update to its end (exit 0 updated, 1 rolled back).
pub async fn update(
    config: Config,
    service: String,
    file: std::path::PathBuf,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let client = RestClient::new(&config, Token::Api)?;
    let yaml = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the blueprint {}", file.display()))?;
    let path = format!("/v1/services/{service}");
    let started = client
        .json(
            client
                .request(reqwest::Method::PUT, &path)
                .header("content-type", "application/x-yaml")
                .body(yaml),
        )
        .await?;
    println!(
        "service {service}: {} ({})",
        started["state"].as_str().unwrap_or("?"),
        started["update"]["message"].as_str().unwrap_or("")
    );
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = String::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let service_view = client
            .json(client.request(reqwest::Method::GET, &path))
            .await?;
        let update = &service_view["update"];
        let message = update["message"].as_str().unwrap_or("").to_owned();
        if message != last {
            println!("{message}");
            last = message;
        }
        match update["phase"].as_str() {
            Some("COMPLETED") => return Ok(ExitCode::SUCCESS),
            Some("ROLLED_BACK") => return Ok(ExitCode::FAILURE),
            _ if service_view["desired"] == "TERMINATED" => {
                bail!("service {service} was terminated during the update")
            }
            _ => {}
        }
    }
}

/// `motey history SERVICE_ID`: one line per entry, oldest first.
pub async fn history(config: Config, service: String) -> anyhow::Result<ExitCode> {
    let client = RestClient::new(&config, Token::Api)?;
    let entries = client
        .json(client.request(
            reqwest::Method::GET,
            &format!("/v1/services/{service}/history"),
        ))
        .await?;
    println!("{:<8} {:<15} {:<26} images", "version", "event", "at");
    for entry in entries.as_array().into_iter().flatten() {
        let images: Vec<String> = entry["images"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|image| {
                format!(
                    "{}={}",
                    image["name"].as_str().unwrap_or(""),
                    image["image"].as_str().unwrap_or("")
                )
            })
            .collect();
        println!(
            "{:<8} {:<15} {:<26} {}{}",
            entry["version"],
            entry["event"].as_str().unwrap_or(""),
            entry["at"].as_str().unwrap_or(""),
            images.join(" "),
            entry["reason"]
                .as_str()
                .map(|reason| format!("  ({reason})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `motey logs SERVICE_ID IMAGE [--follow] [--tail N]`: the image's log on standard
/// output, wherever the image runs.
pub async fn logs(
    config: Config,
    service: String,
    image: String,
    follow: bool,
    tail: usize,
) -> anyhow::Result<ExitCode> {
    let client = RestClient::new(&config, Token::Admin)?;
    let path = format!("/v1/services/{service}/images/{image}/logs?tail={tail}&follow={follow}");
    let response = client
        .send(client.request(reqwest::Method::GET, &path))
        .await?;
    let mut body = response.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        out.write_all(&chunk.context("the log stream broke off")?)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `motey exec SERVICE_ID IMAGE -- CMD...`: runs a diagnostic command in the image's
/// container; exits with the command's exit code (124 if it ran out of time).
pub async fn exec(
    config: Config,
    service: String,
    image: String,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let client = RestClient::new(&config, Token::Admin)?;
    let result = client
        .json(
            client
                .request(
                    reqwest::Method::POST,
                    &format!("/v1/services/{service}/images/{image}/exec"),
                )
                .json(&serde_json::json!({ "command": command })),
        )
        .await?;
    print!("{}", result["output"].as_str().unwrap_or(""));
    if result["truncated"] == true {
        eprintln!("motey: output cut off at [SECURITY] exec_max_output");
    }
    if result["timed_out"] == true {
        eprintln!("motey: the command was still running at [SECURITY] exec_timeout");
        return Ok(ExitCode::from(124));
    }
    let code = result["exit_code"].as_i64().unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
