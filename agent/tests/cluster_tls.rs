//! Discovery over MQTT with TLS and a password, end to end: a certificate authority and a
//! broker certificate made with rcgen, a real mosquitto with a TLS listener that refuses
//! anonymous clients, and real agents (the `motey` binary) configured only through
//! `[MQTT] ip, port, username, password, tls_ca_file`. Agents with the wrong CA or the
//! wrong password say so in their log, keep serving their REST API and keep retrying.

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster::Mosquitto;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::AgentProcess;
use system_tests::wait_for;

const KEY: &str = "tls-test-cluster-key-0123456789";
const USER: &str = "motey";
const PASSWORD: &str = "broker-password-0123";
/// A second account, whose agent first comes with a wrong password.
const EDGE_USER: &str = "edge";
const EDGE_PASSWORD: &str = "edge-password-0123";

/// A CA and, if asked, a broker certificate it signed for 127.0.0.1 and localhost, as PEM
/// files in `dir` (readable by the broker, which drops its privileges when run as root).
fn make_pki(dir: &Path, name: &str, with_server: bool) -> PathBuf {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_file = dir.join(format!("{name}-ca.pem"));
    write_readable(&ca_file, &ca_cert.pem());
    if with_server {
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "mosquitto");
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();
        write_readable(&dir.join("server.pem"), &server_cert.pem());
        write_readable(&dir.join("server-key.pem"), &server_key.serialize_pem());
    }
    ca_file
}

fn write_readable(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// `mosquitto_passwd` writes the broker's (hashed) password file.
fn write_password_file(path: &Path, accounts: &[(&str, &str)]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, "").unwrap();
    for (user, password) in accounts {
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(path)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd runs (Debian package mosquitto)");
        assert!(status.success());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A mosquitto whose only listener speaks TLS and requires a known account.
fn tls_broker() -> (Mosquitto, PathBuf) {
    let mut ca_file = PathBuf::new();
    let broker = Mosquitto::start_with(|port, dir| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ca_file = make_pki(dir, "fog", true);
        write_password_file(
            &dir.join("passwords"),
            &[(USER, PASSWORD), (EDGE_USER, EDGE_PASSWORD)],
        );
        format!(
            "listener {port} 127.0.0.1\n\
             cafile {ca}\ncertfile {dir}/server.pem\nkeyfile {dir}/server-key.pem\n\
             allow_anonymous false\npassword_file {dir}/passwords\n",
            ca = ca_file.display(),
            dir = dir.display(),
        )
    });
    (broker, ca_file)
}

fn tls_env(port: &str, ca_file: &Path, user: &str, password: &str) -> Vec<(String, String)> {
    [
        ("MOTEY_CLUSTER_KEY", KEY),
        ("MOTEY_MQTT_EMBEDDED", "false"),
        ("MOTEY_MQTT_IP", "127.0.0.1"),
        ("MOTEY_MQTT_PORT", port),
        ("MOTEY_MQTT_USERNAME", user),
        ("MOTEY_MQTT_PASSWORD", password),
        ("MOTEY_MQTT_TLS_CA_FILE", ca_file.to_str().unwrap()),
        ("MOTEY_MQTT_HEARTBEAT_INTERVAL", "1"),
        ("MOTEY_MQTT_PEER_SUSPECT_AFTER", "3"),
        ("MOTEY_MQTT_PEER_GONE_AFTER", "6"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

async fn start_agent(name: &str, env: &[(String, String)]) -> AgentProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    AgentProcess::start_with(name, &env).await
}

/// Ids of the alive peers in `GET /v1/nodes` of `observer`.
async fn alive_peers(observer: &AgentProcess) -> Vec<String> {
    let (_, nodes) = observer.get("/v1/nodes").await;
    nodes
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| n["id"] != observer.node_id.as_str() && n["state"] == "alive")
                .filter_map(|n| n["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_sees(observer: &AgentProcess, peer: &AgentProcess) {
    let what = format!("{} to see {} alive", observer.node_id, peer.node_id);
    wait_for(&what, Duration::from_secs(60), || async {
        alive_peers(observer)
            .await
            .contains(&peer.node_id)
            .then_some(())
    })
    .await;
}

/// Waits until the agent's log holds `needle` at least `times` times.
async fn wait_logged(agent: &AgentProcess, needle: &str, times: usize) -> String {
    let what = format!("{} to log {needle:?} {times}×", agent.node_id);
    wait_for(&what, Duration::from_secs(60), || async {
        let log = agent.log();
        (log.matches(needle).count() >= times).then_some(log)
    })
    .await
}

async fn api_is_up(agent: &AgentProcess) -> bool {
    reqwest::get(agent.url("/health"))
        .await
        .is_ok_and(|response| response.status().is_success())
}

#[tokio::test]
async fn two_agents_discover_each_other_over_tls_with_a_password() {
    let (broker, ca_file) = tls_broker();
    let env = tls_env(&broker.port().to_string(), &ca_file, USER, PASSWORD);
    let a = start_agent("tls-a", &env).await;
    let b = start_agent("tls-b", &env).await;
    wait_sees(&a, &b).await;
    wait_sees(&b, &a).await;
    let log = a.log();
    assert!(
        log.contains("tls=true"),
        "discovery started with TLS:\n{log}"
    );
    assert!(log.contains("connected to the MQTT broker"), "{log}");
    // Nothing reached the broker in the clear: it has no plain listener at all.
    let broker_log = std::fs::read_to_string(broker.dir().join("mosquitto.log")).unwrap();
    assert!(
        !broker_log.contains("not authorised"),
        "both agents were admitted:\n{broker_log}"
    );
}

#[tokio::test]
async fn a_wrong_ca_or_password_is_logged_and_retried_while_the_api_stays_up() {
    let (broker, ca_file) = tls_broker();
    let port = broker.port().to_string();
    let member = start_agent("tls-member", &tls_env(&port, &ca_file, USER, PASSWORD)).await;

    // Another CA: the broker's certificate does not chain to it.
    let other_ca = make_pki(broker.dir(), "other", false);
    let wrong_ca = start_agent("tls-wrong-ca", &tls_env(&port, &other_ca, USER, PASSWORD)).await;
    // The right CA, a wrong password.
    let wrong_password = start_agent(
        "tls-wrong-password",
        &tls_env(&port, &ca_file, EDGE_USER, "not-the-password"),
    )
    .await;

    let log = wait_logged(&wrong_ca, "check [MQTT] tls_ca_file", 1).await;
    assert!(
        log.contains("MQTT broker unreachable; retrying with backoff"),
        "{log}"
    );
    assert!(
        log.contains("UnknownIssuer") || log.contains("certificate"),
        "the TLS reason is named:\n{log}"
    );
    let log = wait_logged(&wrong_password, "check [MQTT] username and password", 1).await;
    assert!(log.contains("refused this node's credentials"), "{log}");

    // Both keep trying (each later attempt is logged at debug level)...
    wait_logged(&wrong_ca, "MQTT broker still unreachable", 2).await;
    wait_logged(&wrong_password, "MQTT broker still unreachable", 2).await;
    // ...while serving their REST API, alone.
    for agent in [&wrong_ca, &wrong_password] {
        assert!(api_is_up(agent).await, "{} answers /health", agent.node_id);
        assert!(alive_peers(agent).await.is_empty());
    }
    assert!(alive_peers(&member).await.is_empty(), "no one was admitted");

    // Once the broker accepts the password it was given, the retrying agent joins.
    write_password_file(
        &broker.dir().join("passwords"),
        &[(USER, PASSWORD), (EDGE_USER, "not-the-password")],
    );
    broker.reload();
    wait_sees(&wrong_password, &member).await;
    wait_sees(&member, &wrong_password).await;
    assert!(api_is_up(&wrong_ca).await);
    assert!(!alive_peers(&member).await.contains(&wrong_ca.node_id));
}

/// The production broker of OPERATIONS.md: TLS, an account per node (user name = node
/// id) and the ACL that lets each node speak only for itself under the topic prefix.
fn acl_broker(accounts: &[(&str, &str)]) -> (Mosquitto, PathBuf) {
    let mut ca_file = PathBuf::new();
    let broker = Mosquitto::start_with(|port, dir| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ca_file = make_pki(dir, "fog", true);
        write_password_file(&dir.join("passwords"), accounts);
        write_readable(
            &dir.join("motey.acl"),
            "pattern read motey/nodes/#\n\
             pattern write motey/nodes/request\n\
             pattern write motey/nodes/meta/%u\n\
             pattern write motey/nodes/leave/%u\n",
        );
        format!(
            "per_listener_settings false\nlistener {port} 127.0.0.1\n\
             cafile {ca}\ncertfile {dir}/server.pem\nkeyfile {dir}/server-key.pem\n\
             allow_anonymous false\npassword_file {dir}/passwords\nacl_file {dir}/motey.acl\n",
            ca = ca_file.display(),
            dir = dir.display(),
        )
    });
    (broker, ca_file)
}

/// `mosquitto_sub`/`mosquitto_pub` over the broker's TLS listener as `user`.
fn mqtt_tool(tool: &str, port: u16, ca_file: &Path, user: &str, password: &str) -> Command {
    let mut command = Command::new(tool);
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .arg("--cafile")
        .arg(ca_file)
        .args(["-u", user, "-P", password]);
    command
}

#[tokio::test]
async fn the_broker_acl_confines_a_node_to_its_own_topics_while_agents_discover_each_other() {
    let accounts = [
        ("acl-a", "acl-a-password-01"),
        ("acl-b", "acl-b-password-01"),
    ];
    let (broker, ca_file) = acl_broker(&accounts);
    let port = broker.port();
    let mut agents = Vec::new();
    for (node, password) in accounts {
        let mut env = tls_env(&port.to_string(), &ca_file, node, password);
        env.push(("MOTEY_GENERAL_NODE_ID".into(), node.into()));
        let mut agent = start_agent(node, &env).await;
        agent.node_id = node.into();
        agents.push(agent);
    }
    wait_sees(&agents[0], &agents[1]).await;
    wait_sees(&agents[1], &agents[0]).await;

    // A listener on every leave topic takes the first message that gets through.
    let observer = mqtt_tool("mosquitto_sub", port, &ca_file, "acl-a", accounts[0].1)
        .args([
            "-i",
            "acl-observer",
            "-t",
            "motey/nodes/leave/#",
            "-v",
            "-C",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (Debian package mosquitto-clients)");
    let observer = std::sync::Arc::new(std::sync::Mutex::new(observer));
    let received = wait_for(
        "a message to reach the observer",
        Duration::from_secs(60),
        || {
            let observer = observer.clone();
            let ca_file = ca_file.clone();
            async move {
                // acl-b speaks for acl-a first, then for itself, on one connection.
                let published = mqtt_tool("mosquitto_pub", port, &ca_file, "acl-b", accounts[1].1)
                    .args([
                        "-i",
                        "acl-intruder",
                        "-t",
                        "motey/nodes/leave/acl-a",
                        "-m",
                        "forged",
                    ])
                    .status()
                    .unwrap();
                assert!(published.success());
                mqtt_tool("mosquitto_pub", port, &ca_file, "acl-b", accounts[1].1)
                    .args([
                        "-i",
                        "acl-intruder",
                        "-t",
                        "motey/nodes/leave/acl-b",
                        "-m",
                        "own",
                    ])
                    .status()
                    .unwrap();
                let mut child = observer.lock().unwrap();
                child.try_wait().unwrap()?;
                let mut text = String::new();
                std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
                Some(text)
            }
        },
    )
    .await;
    assert_eq!(received.trim(), "motey/nodes/leave/acl-b own");
    // The unsigned leave on its own topic changes nothing either: acl-b stays alive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(alive_peers(&agents[0]).await.contains(&"acl-b".to_owned()));
    assert!(alive_peers(&agents[1]).await.contains(&"acl-a".to_owned()));
}

#[tokio::test]
async fn an_agent_reaches_another_agents_embedded_broker_over_tls_with_its_rest_certificate() {
    // The broker host listens beyond loopback (all addresses), so its embedded broker
    // serves TLS with the node's generated certificate; the tests reach it on 127.0.0.1.
    let host = start_agent(
        "embedded-host",
        &[
            ("MOTEY_MQTT_IP".into(), "0.0.0.0".into()),
            ("MOTEY_CLUSTER_KEY".into(), KEY.into()),
        ],
    )
    .await;
    let certificate = host.certificate_file();
    assert!(certificate.exists(), "the host generated its certificate");
    let edge_env = |ca_file: Option<&Path>| {
        let mut env = vec![
            ("MOTEY_MQTT_EMBEDDED".to_owned(), "false".to_owned()),
            ("MOTEY_MQTT_IP".into(), "127.0.0.1".into()),
            ("MOTEY_MQTT_PORT".into(), host.mqtt_port.to_string()),
            ("MOTEY_CLUSTER_KEY".into(), KEY.into()),
        ];
        if let Some(ca_file) = ca_file {
            env.push((
                "MOTEY_MQTT_TLS_CA_FILE".into(),
                ca_file.display().to_string(),
            ));
        }
        env
    };
    let edge = start_agent("embedded-edge", &edge_env(Some(&certificate))).await;
    wait_sees(&host, &edge).await;
    wait_sees(&edge, &host).await;

    // Without TLS the same login gets nowhere.
    let plain = start_agent("embedded-plain", &edge_env(None)).await;
    wait_logged(&plain, "MQTT", 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !alive_peers(&host).await.contains(&plain.node_id),
        "an agent without TLS joined through the embedded broker"
    );
}
