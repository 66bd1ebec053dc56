//! The REST server as an attacker on the household network meets it: real `motey`
//! processes, real TCP. Blueprint bombs are refused without holding up `/health` or the
//! peer protocol; an agent listening beyond loopback with default settings serves HTTPS
//! with the certificate it generated and answers no read without the token; the `motey`
//! CLI checks that certificate.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use motey::domain::NodeId;
use motey::peer::{ClusterKey, ClusterKeyTrust, Reply, Request, Requester};
use support::{client, AgentProcess, TOKEN};
use system_tests::free_port;

const CLUSTER_SECRET: &str = "the cluster secret of the hardening tests";

/// Far above what `/health` or a peer round trip takes on a busy machine, far below the
/// tens of seconds a bomb held the runtime for.
const PROMPT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_bombs_do_not_delay_health_or_peer_requests() {
    let peer_port = free_port();
    let agent = AgentProcess::start_without_images(
        "bombs",
        &[
            ("MOTEY_ZEROMQ_PEER_PORT", &peer_port.to_string()),
            ("MOTEY_CLUSTER_KEY", CLUSTER_SECRET),
        ],
    )
    .await;
    let bomb = format!("name: bomb\nimages: {}", "[".repeat(200_000));
    let until = Instant::now() + Duration::from_secs(4);
    // Two senders, each posting bombs back to back.
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let url = agent.url("/v1/services");
            let bomb = bomb.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while Instant::now() < until {
                    let request = client()
                        .post(&url)
                        .header("content-type", "application/x-yaml")
                        .body(bomb.clone());
                    answers.push(support::send_json(request, TOKEN).await);
                }
                answers
            })
        })
        .collect();

    let requester = Requester::new(
        std::sync::Arc::new(ClusterKeyTrust::new(
            NodeId("prober".into()),
            ClusterKey::from_secret(CLUSTER_SECRET),
            rand::random(),
        )),
        Duration::from_secs(30),
    );
    let agent_node = NodeId(agent.node_id.clone());
    let endpoint = format!("tcp://127.0.0.1:{peer_port}");
    let health = agent.url("/health");
    let mut probes = 0;
    while Instant::now() < until {
        let started = Instant::now();
        let answer = client().get(&health).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 200);
        let health_took = started.elapsed();
        let started = Instant::now();
        let reply = requester
            .call(&endpoint, &agent_node, &Request::Capabilities)
            .await;
        let peer_took = started.elapsed();
        assert!(matches!(reply, Ok(Reply::Capabilities { .. })), "{reply:?}");
        assert!(
            health_took < PROMPT && peer_took < PROMPT,
            "health took {health_took:?}, a peer request {peer_took:?} while bombs were refused"
        );
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(probes > 1);
    for sender in senders {
        let answers = sender.await.unwrap();
        assert!(!answers.is_empty());
        for (status, body) in answers {
            assert_eq!(
                (status, body["error"].as_str()),
                (400, Some("blueprint_too_complex")),
                "{body}"
            );
            assert!(
                body["message"].as_str().unwrap().contains("32 levels"),
                "{body}"
            );
        }
    }
}

/// An agent as a node on a household's network is by default: listening on every
/// address, `[WEBSERVER] tls` and `open_reads` as shipped.
async fn default_network_agent(test: &str, env: &[(&str, &str)]) -> AgentProcess {
    let mut settings = vec![("MOTEY_WEBSERVER_IP", "0.0.0.0")];
    settings.extend_from_slice(env);
    AgentProcess::start_without_images(test, &settings).await
}

/// Runs the `motey` CLI against `agent`, as an admin on its node would.
fn motey(agent: &AgentProcess, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_motey"))
        .args(args)
        .env("MOTEY_GENERAL_DATA_DIR", agent.data_dir())
        .env("MOTEY_WEBSERVER_IP", "0.0.0.0")
        .env("MOTEY_WEBSERVER_PORT", agent.port.to_string())
        .env("MOTEY_WEBSERVER_TOKEN", TOKEN)
        .output()
        .expect("run the motey binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_default_agent_serves_https_with_its_certificate_and_no_reads_without_the_token() {
    let agent = default_network_agent("https", &[]).await;
    assert_eq!(agent.scheme(), "https");
    let fingerprint = motey::api::tls::fingerprint_of_file(&agent.certificate_file()).unwrap();
    assert!(
        agent.log().contains(&fingerprint),
        "the fingerprint is logged at start:\n{}",
        agent.log()
    );
    let key = agent.data_dir().join("rest-key.pem");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", key.display());

    // The client trusts only the generated certificate, for the name 127.0.0.1.
    let http = agent.http();
    for path in [
        "/v1/services",
        "/v1/nodes",
        "/v1/nodestatus",
        "/v1/capabilities",
    ] {
        let answer = http.get(agent.url(path)).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 401, "GET {path} without a token");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    let (status, services) = agent.get("/v1/services").await;
    assert_eq!((status, services), (200, serde_json::json!([])));
    let health = http.get(agent.url("/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "liveness needs no token");
    // Plain HTTP on the same port gets no answer from the API.
    let plain = client()
        .get(format!("http://127.0.0.1:{}/v1/services", agent.port))
        .bearer_auth(TOKEN)
        .send()
        .await;
    assert!(plain.map_or(true, |answer| !answer.status().is_success()));

    // The CLI on the node pins the certificate from the agent's files.
    let status = motey(&agent, &["status"]);
    let printed = text(&status.stdout);
    assert!(status.status.success(), "{printed}{}", text(&status.stderr));
    assert!(printed.contains("https://0.0.0.0:"), "{printed}");
    assert!(printed.contains(&fingerprint), "{printed}");
    let history = motey(&agent, &["history", "no-such-service"]);
    let refused = text(&history.stderr);
    assert!(
        refused.contains("404"),
        "the agent itself answered over HTTPS: {refused}"
    );
    let pinned = motey(
        &agent,
        &["--fingerprint", &fingerprint, "history", "no-such-service"],
    );
    assert!(
        text(&pinned.stderr).contains("404"),
        "{}",
        text(&pinned.stderr)
    );
    let ca = motey(
        &agent,
        &[
            "--cacert",
            agent.certificate_file().to_str().unwrap(),
            "history",
            "no-such-service",
        ],
    );
    assert!(text(&ca.stderr).contains("404"), "{}", text(&ca.stderr));
}

#[tokio::test]
async fn the_cli_refuses_a_certificate_that_is_not_the_pinned_one() {
    let agent = default_network_agent("pin", &[]).await;
    let wrong = "AB:".repeat(31) + "AB";
    let refused = motey(
        &agent,
        &["--fingerprint", &wrong, "history", "no-such-service"],
    );
    let message = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(message.contains("not the pinned"), "{message}");
    assert!(!message.contains("404"), "{message}");
    // A CA that did not issue the agent's certificate is refused too.
    let foreign = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let foreign_file = agent.data_dir().join("foreign-ca.pem");
    std::fs::write(&foreign_file, foreign.cert.pem()).unwrap();
    let refused = motey(
        &agent,
        &[
            "--cacert",
            foreign_file.to_str().unwrap(),
            "history",
            "no-such-service",
        ],
    );
    let message = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(!message.contains("404"), "{message}");
}

#[tokio::test]
async fn tls_off_serves_plain_http_and_still_needs_the_token() {
    let agent = default_network_agent("plain", &[("MOTEY_WEBSERVER_TLS", "off")]).await;
    assert_eq!(agent.scheme(), "http");
    assert!(!agent.certificate_file().exists());
    let answer = client()
        .get(agent.url("/v1/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    let (status, _) = agent.get("/v1/services").await;
    assert_eq!(status, 200);
    let history = motey_plain(&agent, &["history", "no-such-service"]);
    assert!(
        text(&history.stderr).contains("404"),
        "{}",
        text(&history.stderr)
    );
}

fn motey_plain(agent: &AgentProcess, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_motey"))
        .args(args)
        .env("MOTEY_GENERAL_DATA_DIR", agent.data_dir())
        .env("MOTEY_WEBSERVER_IP", "0.0.0.0")
        .env("MOTEY_WEBSERVER_TLS", "off")
        .env("MOTEY_WEBSERVER_PORT", agent.port.to_string())
        .env("MOTEY_WEBSERVER_TOKEN", TOKEN)
        .output()
        .expect("run the motey binary")
}

#[tokio::test]
async fn a_request_whose_body_never_comes_is_answered_at_the_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let agent = AgentProcess::start_without_images(
        "slow-body",
        &[
            ("MOTEY_SECURITY_EXEC_TIMEOUT", "1"),
            ("MOTEY_WEBSERVER_REQUEST_TIMEOUT", "2"),
        ],
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", agent.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/services HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/x-yaml\r\ncontent-length: 100\r\n\r\nname: slow\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body never comes; the answer does, well before this bound.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = stream.read(&mut buffer).await.unwrap();
            answer.extend_from_slice(&buffer[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("}") {
                break;
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(read.is_ok(), "no answer within 30 s: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
}
