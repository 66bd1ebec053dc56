//! The admin web client in a real headless Chromium against real agents: sign-in, deploy
//! through the Deploy page and follow the service to RUNNING on real Docker, validation
//! errors next to the blueprint, terminate with confirmation, the Nodes page with peers,
//! capabilities added and removed, a phone-sized screen, keyboard use and a clean
//! console. Screenshots of every page go to `artifacts/screenshots/` for a person to look
//! at; they are not committed.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::sync::Arc;
use std::time::Duration;

use browser::{keys, Browser, Viewport};
use chrono::Utc;
use motey::api::{ApiState, NodeDirectory, NodeView};
use motey::app::Agent;
use motey::config::RawConfig;
use motey::domain::{NodeId, NodeInfo};
use motey::orchestrator::remote::NoPeers;
use motey::orchestrator::Orchestrator;
use motey::store::Store;
use motey_val::fake::FakeEngine;
use serde_json::{json, Value};
use support::AgentProcess;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = support::TOKEN;

/// A refusal the browser logs as a network error when a test provokes it on purpose.
fn refused(path: &str, status: u16) -> String {
    format!("{path} - Failed to load resource: the server responded with a status of {status}")
}

/// An agent in this process with the in-memory engine, and peers put in its store before
/// it serves (the single-node directory shows stored peers).
struct InProcessAgent {
    base: String,
    node_id: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn in_process_agent(peers: &[NodeInfo]) -> InProcessAgent {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawConfig::defaults();
    raw.set("GENERAL", "data_dir", dir.path().display().to_string());
    raw.set("GENERAL", "node_id", "web-hub");
    raw.set("GENERAL", "node_name", "hub");
    raw.set("WEBSERVER", "ip", "127.0.0.1");
    raw.set("WEBSERVER", "port", "0");
    raw.set("WEBSERVER", "token", TOKEN);
    raw.set("WEBSERVER", "open_reads", "false");
    raw.set("ORCHESTRATOR", "reconcile_interval", "1");
    raw.set("MQTT", "port", "0");
    raw.set("ZEROMQ", "peer_port", "0");
    // The peers below are announced once, by hand: keep them alive for the whole test.
    raw.set("MQTT", "peer_suspect_after", "3600");
    raw.set("MQTT", "peer_gone_after", "7200");
    let config = raw.parse_config().unwrap();
    let agent = Agent::bind_with_engine(config, Arc::new(FakeEngine::new()))
        .await
        .unwrap();
    for peer in peers {
        // As if the peer's discovery announcement had just arrived.
        agent
            .directory()
            .observe(peer.clone(), 1, tokio::time::Instant::now());
    }
    let base = format!("http://{}", agent.rest_address());
    let node_id = agent.node_id().to_string();
    let shutdown = CancellationToken::new();
    tokio::spawn(agent.run(shutdown.clone()));
    InProcessAgent {
        base,
        node_id,
        shutdown,
        _dir: dir,
    }
}

fn peer(id: &str, name: &str, address: &str, seconds_ago: i64) -> NodeInfo {
    NodeInfo {
        id: NodeId(id.into()),
        name: name.into(),
        addresses: vec![address.into()],
        rest_port: 5023,
        peer_port: 5091,
        last_seen: Some(Utc::now() - chrono::Duration::seconds(seconds_ago)),
        version: "0.1.0".into(),
        capabilities_digest: String::new(),
    }
}

async fn get_json(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The page fits the screen's width: nothing to scroll sideways.
async fn assert_fits_the_screen(browser: &Browser, page: &str) {
    let widths = browser
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            json!([]),
        )
        .await;
    let (content, screen) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
    assert!(
        content <= screen,
        "{page} is {content}px wide on a {screen}px screen"
    );
}

async fn service_state(browser: &Browser, id: &str) -> Option<String> {
    browser
        .execute(
            "const card = document.querySelector(`li[data-service-id=\"${arguments[0]}\"]`); return card ? card.dataset.state : null;",
            json!([id]),
        )
        .await
        .as_str()
        .map(str::to_owned)
}

async fn wait_for_service_state(browser: &Browser, id: &str, state: &str) {
    browser
        .wait_until(&format!("service {id} in {state} on the page"), || async {
            (service_state(browser, id).await.as_deref() == Some(state)).then_some(())
        })
        .await;
}

#[tokio::test]
async fn deploy_through_the_page_follow_it_to_running_and_terminate_it_on_docker() {
    let agent = AgentProcess::start("web").await;
    let browser = Browser::open(Viewport::Desktop).await;
    let desktop = Viewport::Desktop.name();

    // Sign-in: a wrong token is refused with a clear message, the right one gets in.
    browser.goto(&agent.url("/")).await;
    browser.wait_for("#token").await;
    browser.screenshot(&format!("signin-{desktop}")).await;
    browser.type_into("#token", "not-the-token").await;
    browser.click("#sign-in").await;
    let error = browser.wait_for_text("#signin-error", "refused").await;
    assert!(error.contains("[WEBSERVER] token"), "{error}");
    browser
        .screenshot(&format!("signin-refused-{desktop}"))
        .await;
    browser
        .assert_clean_console(&[&refused("/v1/capabilities", 401)])
        .await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#sign-in").await;
    browser.wait_for_text("h1", "Services").await;
    let (_, nodes) = agent.get("/v1/nodes").await;
    let node_name = nodes[0]["name"].as_str().unwrap().to_owned();
    browser.wait_for_text("#node-name", &node_name).await;

    // An invalid blueprint: the server's error is shown next to the text, naming the field.
    browser.click("a[data-route='/deploy']").await;
    browser.wait_for_text("h1", "Deploy").await;
    browser
        .type_into(
            "#blueprint",
            "name: broken\nimages:\n  - name: box\n    image: motey/testbox:latest\n    ports: [\"80:abc\"]\n",
        )
        .await;
    browser.click("#deploy").await;
    let errors = browser
        .wait_for_text("#blueprint-errors", "images[0].ports[0]")
        .await;
    assert!(
        errors.contains("\"80:abc\" is not a port mapping"),
        "{errors}"
    );
    let invalid = browser
        .execute(
            "return document.getElementById('blueprint').getAttribute('aria-invalid')",
            json!([]),
        )
        .await;
    assert_eq!(invalid, "true");
    browser
        .screenshot(&format!("deploy-invalid-{desktop}"))
        .await;
    browser
        .assert_clean_console(&[&refused("/v1/services", 400)])
        .await;
    let (_, services) = agent.get("/v1/services").await;
    assert_eq!(services, json!([]), "nothing was deployed");

    // A valid blueprint uploaded as a file is deployed and followed to RUNNING.
    let file = tempfile::Builder::new()
        .prefix("hello-")
        .suffix(".yaml")
        .tempfile()
        .unwrap();
    std::fs::write(
        file.path(),
        "name: web-hello\nimages:\n  - name: box\n    image: motey/testbox:latest\n    env: { TESTBOX_GREETING: hello }\n",
    )
    .unwrap();
    browser
        .type_into("#blueprint-file", &file.path().display().to_string())
        .await;
    browser
        .wait_until("the file in the text area", || async {
            let text = browser
                .execute(
                    "return document.getElementById('blueprint').value",
                    json!([]),
                )
                .await;
            text.as_str()
                .filter(|text| text.contains("web-hello"))
                .map(|_| ())
        })
        .await;
    browser.wait_gone("#blueprint-errors").await;
    browser.click("#deploy").await;
    browser
        .wait_for("#deploy-progress[data-state='RUNNING']")
        .await;
    let outcome = browser.wait_for_text("#deploy-outcome", "running").await;
    assert!(outcome.contains("web-hello"), "{outcome}");
    let id = browser.text("#deploy-service-id").await.unwrap();
    browser
        .screenshot(&format!("deploy-running-{desktop}"))
        .await;
    let running = agent.wait_for_state(&id, "RUNNING").await;
    assert_eq!(running["images"][0]["node"], agent.node_id.as_str());
    assert_eq!(agent.containers().len(), 1, "one container runs");

    // Services shows it with its image, node and container state.
    browser.click("#deploy-outcome a").await;
    wait_for_service_state(&browser, &id, "RUNNING").await;
    let card = format!("li[data-service-id='{id}']");
    let row = browser
        .wait_for_text(&format!("{card} tr[data-image='box']"), &agent.node_id)
        .await;
    assert!(row.contains("RUNNING"), "{row}");
    assert!(row.contains("motey/testbox:latest"), "{row}");

    // Live refresh: a service deployed elsewhere appears and runs without a reload.
    browser
        .execute("window.stillTheSamePage = true", json!([]))
        .await;
    let (status, live) = agent
        .post_blueprint(
            "name: web-live\nimages:\n  - name: idle\n    image: motey/testbox:latest\n",
        )
        .await;
    assert_eq!(status, 201, "{live}");
    let live_id = live["id"].as_str().unwrap().to_owned();
    wait_for_service_state(&browser, &live_id, "RUNNING").await;
    let same_page = browser
        .execute("return window.stillTheSamePage === true", json!([]))
        .await;
    assert_eq!(same_page, true, "the page was not reloaded");
    browser.screenshot(&format!("services-{desktop}")).await;

    // Terminate, by keyboard: Escape cancels and gives the focus back to the button ...
    let terminate = format!("{card} button[data-action='terminate']");
    browser.click(&terminate).await;
    browser.wait_for("dialog#confirm[open]").await;
    let question = browser.text("#confirm-title").await.unwrap();
    assert!(question.contains("web-hello"), "{question}");
    assert!(browser.focused().await.starts_with("button#confirm-cancel"));
    browser
        .screenshot(&format!("services-confirm-{desktop}"))
        .await;
    browser.press(keys::ESCAPE).await;
    browser.wait_gone("dialog#confirm[open]").await;
    assert_eq!(browser.focused().await, "button# Terminate");
    let (_, still) = agent.get(&format!("/v1/services/{id}")).await;
    assert_eq!(still["desired"], "RUNNING", "cancel terminates nothing");

    // ... Enter opens the dialog again, Tab reaches "Terminate", Enter confirms.
    browser.press(keys::ENTER).await;
    browser.wait_for("dialog#confirm[open]").await;
    browser.press(keys::TAB).await;
    assert!(browser.focused().await.starts_with("button#confirm-ok"));
    browser.press(keys::ENTER).await;
    wait_for_service_state(&browser, &id, "TERMINATED").await;
    agent.wait_for_state(&id, "TERMINATED").await;
    system_tests::wait_for(
        "the container to be removed",
        Duration::from_secs(60),
        || async { (agent.containers().len() == 1).then_some(()) },
    )
    .await;
    let (_, live_now) = agent.get(&format!("/v1/services/{live_id}")).await;
    assert_eq!(live_now["state"], "RUNNING", "only the chosen one stops");
    browser
        .screenshot(&format!("services-terminated-{desktop}"))
        .await;
    browser.assert_clean_console(&[]).await;
}

#[tokio::test]
async fn every_page_on_a_phone_and_a_desktop_with_peers_and_capabilities() {
    let agent = in_process_agent(&[
        peer("web-edge-1", "edge-1", "10.0.0.11", 4),
        peer("web-edge-2", "edge-2", "10.0.0.12", 95),
    ])
    .await;
    let created = reqwest::Client::new()
        .post(format!("{}/v1/services", agent.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-yaml")
        .body("name: metering\nimages:\n  - name: reader\n    image: motey/meter-reader:latest\n    capabilities: [optical-probe]\n  - name: store\n    image: motey/testbox:latest\n")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);

    for viewport in [Viewport::Phone, Viewport::Desktop] {
        let name = viewport.name();
        let browser = Browser::open(viewport).await;

        // Signing in by keyboard alone: the focus starts on the heading.
        browser.goto(&format!("{}/#/nodes", agent.base)).await;
        browser.wait_for("#token").await;
        browser.press(keys::TAB).await;
        assert!(
            browser.focused().await.starts_with("input#token"),
            "Tab leads to the token field"
        );
        browser.press(TOKEN).await;
        browser.press(keys::ENTER).await;

        // Nodes: this node with its statistics, and both peers with state and last contact.
        browser.wait_for_text("h1", "Nodes").await;
        let this_node = browser
            .wait_for_text("tr[data-node-id='web-hub']", "this node")
            .await;
        assert!(this_node.contains("hub"), "{this_node}");
        for (id, name, address) in [
            ("web-edge-1", "edge-1", "10.0.0.11:5023"),
            ("web-edge-2", "edge-2", "10.0.0.12:5023"),
        ] {
            let row = browser
                .wait_for_text(&format!("tr[data-node-id='{id}']"), name)
                .await;
            assert!(row.contains("alive"), "{row}");
            assert!(row.contains(address), "{row}");
            assert!(row.contains("ago"), "last seen: {row}");
        }
        let cpu = browser.wait_for_text("[data-stat='cpu']", "cores").await;
        assert!(cpu.contains('%'), "{cpu}");
        let memory = browser.wait_for_text("[data-stat='memory']", " of ").await;
        assert!(memory.contains("iB"), "{memory}");
        assert_fits_the_screen(&browser, "Nodes").await;
        browser.screenshot(&format!("nodes-{name}")).await;

        // Capabilities: added with the form (by keyboard), shown, then removed.
        browser.click("a[data-route='/capabilities']").await;
        browser.wait_for_text("h1", "Capabilities").await;
        if viewport == Viewport::Phone {
            browser.wait_for("#no-capabilities").await;
            browser.type_into("#capability-name", "optical-probe").await;
            browser.press(keys::ENTER).await;
        }
        browser
            .wait_for("tr[data-capability='optical-probe'][data-capability-type='hardware']")
            .await;
        browser.type_into("#capability-name", "zigbee").await;
        browser.type_into("#capability-type", "radio").await;
        browser.click("#add-capability").await;
        browser.wait_for("tr[data-capability='zigbee']").await;
        let listed = get_json(&agent.base, "/v1/capabilities").await;
        assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
        assert_fits_the_screen(&browser, "Capabilities").await;
        browser.screenshot(&format!("capabilities-{name}")).await;
        browser
            .click("tr[data-capability='zigbee'] button[data-action='remove']")
            .await;
        browser.wait_gone("tr[data-capability='zigbee']").await;
        let listed = get_json(&agent.base, "/v1/capabilities").await;
        assert_eq!(
            listed,
            json!([{"capability": "optical-probe", "capability_type": "hardware"}])
        );

        // The node's own capabilities show on the Nodes page.
        browser.click("a[data-route='/nodes']").await;
        browser
            .wait_for_text("tr[data-node-id='web-hub']", "optical-probe (hardware)")
            .await;

        // Services: the metering service runs now that its capability is offered.
        browser.click("a[data-route='/services']").await;
        let card = browser.wait_for_text("li.service", "metering").await;
        assert!(card.contains("reader"), "{card}");
        browser
            .wait_until("metering to run", || async {
                browser
                    .find("li.service[data-state='RUNNING']")
                    .await
                    .map(|_| ())
            })
            .await;
        assert_fits_the_screen(&browser, "Services").await;
        browser.screenshot(&format!("services-{name}")).await;

        // Deploy, with a refusal shown next to the text.
        browser.click("a[data-route='/deploy']").await;
        browser.click("#insert-example").await;
        browser.wait_for("#deploy").await;
        browser.screenshot(&format!("deploy-{name}")).await;
        browser
            .type_into(
                "#blueprint",
                "name: x\nimages:\n  - image: a\n    privileged: true\n",
            )
            .await;
        browser.click("#deploy").await;
        browser
            .wait_for_text("#blueprint-errors", "images[0].privileged")
            .await;
        assert_fits_the_screen(&browser, "Deploy").await;
        browser.screenshot(&format!("deploy-refused-{name}")).await;

        // Signing out forgets the token.
        browser.click("#sign-out").await;
        browser.wait_for("#token").await;
        let stored = browser
            .execute("return sessionStorage.length", json!([]))
            .await;
        assert_eq!(stored, 0);
        browser
            .assert_clean_console(&[&refused("/v1/services", 403)])
            .await;

        // A token the agent no longer accepts signs the user out with a notice.
        browser
            .execute(
                "sessionStorage.setItem('motey.api-token', 'a-stale-token'); location.reload()",
                json!([]),
            )
            .await;
        let notice = browser.wait_for_text(".notice", "no longer accepts").await;
        assert!(notice.contains("Sign in again"), "{notice}");
        browser.wait_for("#token").await;
        let stored = browser
            .execute("return sessionStorage.length", json!([]))
            .await;
        assert_eq!(stored, 0);
        browser.assert_clean_console(&[&refused("", 401)]).await;
    }
}

/// Peers as a cluster's discovery would report them, in each liveness state; last heard
/// of a fixed time before each request, as a discovery layer that keeps hearing them.
struct ScriptedPeers(Vec<(NodeInfo, &'static str, i64)>);

impl NodeDirectory for ScriptedPeers {
    fn peers(&self) -> Vec<NodeView> {
        self.0
            .iter()
            .map(|(info, state, seconds_ago)| NodeView {
                info: NodeInfo {
                    last_seen: Some(Utc::now() - chrono::Duration::seconds(*seconds_ago)),
                    ..info.clone()
                },
                state: (*state).into(),
                this_node: false,
            })
            .collect()
    }
}

#[tokio::test]
async fn suspect_and_gone_peers_are_shown_as_such() {
    let config = {
        let mut raw = RawConfig::defaults();
        raw.set("WEBSERVER", "token", TOKEN);
        raw.parse_config().unwrap()
    };
    let store = Store::temporary().unwrap();
    let me = NodeId("web-center".into());
    let orchestrator = Orchestrator::new(
        me.clone(),
        store.clone(),
        Arc::new(FakeEngine::new()),
        Arc::new(NoPeers),
        config.orchestrator.clone(),
    );
    let node = |id: &str| peer(id, &format!("{id}-name"), "192.0.2.1", 0);
    let mut with_two_addresses = node("peer-alive");
    with_two_addresses.addresses.push("192.0.2.2".into());
    let directory = ScriptedPeers(vec![
        (with_two_addresses, "alive", 2),
        (node("peer-suspect"), "suspect", 25),
        (node("peer-gone"), "gone", 600),
    ]);
    let this_node = NodeInfo {
        id: me,
        name: "center".into(),
        addresses: vec!["127.0.0.1".into()],
        rest_port: 0,
        peer_port: 0,
        last_seen: None,
        version: "0.1.0".into(),
        capabilities_digest: String::new(),
    };
    let state = ApiState::new(
        orchestrator,
        store,
        Arc::new(directory),
        this_node,
        &config,
        TOKEN.into(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server =
        tokio::spawn(async move { axum::serve(listener, motey::api::router(state)).await });

    let browser = Browser::open(Viewport::Desktop).await;
    browser.goto(&format!("{base}/#/nodes")).await;
    browser.type_into("#token", TOKEN).await;
    browser.press(keys::ENTER).await;
    for (id, state, seen) in [
        ("peer-alive", "alive", "s ago"),
        ("peer-suspect", "suspect", "s ago"),
        ("peer-gone", "gone", "min ago"),
    ] {
        let row = format!("tr[data-node-id='{id}'][data-state='{state}']");
        let text = browser.wait_for_text(&row, seen).await;
        assert!(text.contains(&format!("{id}-name")), "{text}");
        browser.wait_for(&format!("{row} .state-{state}")).await;
    }
    let colours = browser
        .execute(
            "return ['alive', 'suspect', 'gone'].map(s => getComputedStyle(document.querySelector(`.state-${s}`)).color)",
            json!([]),
        )
        .await;
    let colours: Vec<&str> = colours
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(colours.len(), 3);
    assert!(
        colours[0] != colours[1] && colours[1] != colours[2] && colours[0] != colours[2],
        "each state has its own colour: {colours:?}"
    );
    let addresses = browser.text("tr[data-node-id='peer-alive']").await.unwrap();
    assert!(addresses.contains("192.0.2.2:5023"), "{addresses}");
    browser.screenshot("nodes-peer-states-desktop").await;
    browser.assert_clean_console(&[]).await;
    server.abort();
}

#[tokio::test]
async fn assets_are_public_typed_revalidated_and_locked_down() {
    let agent = in_process_agent(&[]).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{}{path}", agent.base)).send();

    let index = get("/").await.unwrap();
    assert_eq!(index.status().as_u16(), 200, "no token needed");
    let headers = index.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.starts_with("default-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    let html = index.text().await.unwrap();

    // Everything the page loads comes from the agent itself.
    let mut referenced = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for part in html.split(attribute).skip(1) {
            let target = part.split('"').next().unwrap();
            assert!(
                target.starts_with('/') || target.starts_with('#'),
                "{target} is not local"
            );
            if target.starts_with('/') {
                referenced.push(target.to_owned());
            }
        }
    }
    // And so does every module the scripts import.
    let mut scripts: Vec<String> = referenced
        .iter()
        .filter(|path| path.ends_with(".js"))
        .cloned()
        .collect();
    let mut seen = Vec::new();
    while let Some(script) = scripts.pop() {
        if seen.contains(&script) {
            continue;
        }
        let response = get(&script).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{script}");
        assert_eq!(
            response.headers()["content-type"],
            "text/javascript; charset=utf-8",
            "{script}"
        );
        let source = response.text().await.unwrap();
        assert!(
            !source.contains("http://") && !source.contains("https://"),
            "{script} loads nothing from elsewhere"
        );
        for line in source
            .lines()
            .filter(|l| l.contains(" from '") || l.starts_with("import '"))
        {
            let module = line.split('\'').nth(1).unwrap();
            let module = module.trim_start_matches("./");
            scripts.push(format!("/js/{module}"));
        }
        seen.push(script);
    }
    assert!(seen.len() >= 8, "the client's modules: {seen:?}");
    for path in referenced.iter().filter(|p| !p.ends_with(".js")) {
        let response = get(path).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    assert_eq!(
        get("/style.css").await.unwrap().headers()["content-type"],
        "text/css; charset=utf-8"
    );
    assert_eq!(
        get("/favicon.ico").await.unwrap().headers()["content-type"],
        "image/svg+xml"
    );

    // A current copy is confirmed with 304 and no body.
    let etag = headers["etag"].to_str().unwrap();
    let again = client
        .get(format!("{}/", agent.base))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    assert!(again.bytes().await.unwrap().is_empty());

    // The API keeps its rules: reads are closed on this agent, and /health stays open.
    let status = |path: &'static str| {
        let request = get(path);
        async move { request.await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/v1/services").await, 401);
    assert_eq!(status("/health").await, 200);
    assert_eq!(status("/no-such-page").await, 404);
    assert!(agent.node_id == "web-hub");
}
