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
use motey::app::Agent;
use motey::config::RawConfig;
use motey_val::fake::FakeEngine;
use serde_json::{json, Value};
use support::AgentProcess;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = support::TOKEN;
const CLUSTER_KEY: &str = "web-client-test-cluster-key-0123456789";

/// A refusal the browser logs as a network error when a test provokes it on purpose.
fn refused(path: &str, status: u16) -> String {
    format!("{path} - Failed to load resource: the server responded with a status of {status}")
}

/// The hub of a small fog: an agent in this process with the in-memory engine, running
/// the embedded MQTT broker over which its peers discover it.
struct Hub {
    base: String,
    node_id: String,
    broker_port: u16,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawConfig::defaults();
    for (section, key, value) in [
        ("GENERAL", "data_dir", dir.path().display().to_string()),
        ("GENERAL", "node_id", "web-hub".into()),
        ("GENERAL", "node_name", "hub".into()),
        ("WEBSERVER", "ip", "127.0.0.1".into()),
        ("WEBSERVER", "port", "0".into()),
        ("WEBSERVER", "token", TOKEN.into()),
        ("WEBSERVER", "open_reads", "false".into()),
        ("ORCHESTRATOR", "reconcile_interval", "1".into()),
        ("MQTT", "embedded", "true".into()),
        ("MQTT", "ip", "127.0.0.1".into()),
        ("MQTT", "port", "0".into()),
        ("MQTT", "heartbeat_interval", "1".into()),
        ("MQTT", "peer_suspect_after", "4".into()),
        // Long enough that a silent peer stays suspect while the pages are looked at.
        ("MQTT", "peer_gone_after", "3600".into()),
        ("ZEROMQ", "peer_port", "0".into()),
        ("CLUSTER", "key", CLUSTER_KEY.into()),
    ] {
        raw.set(section, key, value);
    }
    let config = raw.parse_config().unwrap();
    let agent = Agent::bind_with_engine(config, Arc::new(FakeEngine::new()))
        .await
        .unwrap();
    let base = format!("http://{}", agent.rest_address());
    let node_id = agent.node_id().to_string();
    let broker_port = agent
        .broker_address()
        .expect("the hub runs the broker")
        .port();
    let shutdown = CancellationToken::new();
    tokio::spawn(agent.run(shutdown.clone()));
    Hub {
        base,
        node_id,
        broker_port,
        shutdown,
        _dir: dir,
    }
}

/// A peer of the hub: the real `motey` binary, using the hub's broker.
async fn edge(name: &str, hub: &Hub) -> AgentProcess {
    let broker_port = hub.broker_port.to_string();
    AgentProcess::start_with(
        name,
        &[
            ("MOTEY_GENERAL_NODE_NAME", name),
            ("MOTEY_CLUSTER_KEY", CLUSTER_KEY),
            ("MOTEY_MQTT_EMBEDDED", "false"),
            ("MOTEY_MQTT_PORT", &broker_port),
            ("MOTEY_MQTT_HEARTBEAT_INTERVAL", "1"),
            ("MOTEY_MQTT_PEER_SUSPECT_AFTER", "4"),
            ("MOTEY_MQTT_PEER_GONE_AFTER", "3600"),
            // A frozen node's connection stays open: it falls silent, it does not leave.
            ("MOTEY_MQTT_KEEPALIVE", "3600"),
        ],
    )
    .await
}

/// Waits until the hub's `/v1/nodes` shows `node` in `state`.
async fn wait_for_peer_state(hub: &Hub, node: &str, state: &str) {
    system_tests::wait_for(
        &format!("the hub to see {node} {state}"),
        Duration::from_secs(90),
        || async {
            let nodes = get_json(&hub.base, "/v1/nodes").await;
            nodes
                .as_array()?
                .iter()
                .any(|n| n["id"] == node && n["state"] == state)
                .then_some(())
        },
    )
    .await;
}

/// Stops the agent's process without ending it (`SIGSTOP`): it falls silent, as a node
/// whose network hangs. The agent's drop still kills it.
fn freeze(agent: &AgentProcess) {
    let pid: i32 = std::fs::read_to_string(agent.data_dir().join("motey.pid"))
        .expect("the agent's pid file")
        .trim()
        .parse()
        .expect("a pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("stop the agent");
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
async fn update_through_the_page_see_progress_rollback_history_and_logs() {
    const ADMIN: &str = "web-admin-token-0123456789";
    let agent = AgentProcess::start_with(
        "web-update",
        &[
            ("MOTEY_SECURITY_ADMIN_TOKEN", ADMIN),
            ("MOTEY_ORCHESTRATOR_UPDATE_SETTLE", "2"),
        ],
    )
    .await;
    let blueprint = |body: &str, extra: &str| {
        format!(
            "name: web-update\nimages:\n  - name: box\n    image: motey/testbox:latest\n    env: {{TESTBOX_BODY: {body}{extra}}}\n"
        )
    };
    let (status, created) = agent.post_blueprint(&blueprint("v1", "")).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    agent.wait_for_state(&id, "RUNNING").await;

    let browser = Browser::open(Viewport::Desktop).await;
    let desktop = Viewport::Desktop.name();
    browser.goto(&agent.url("/")).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#sign-in").await;
    browser.wait_for_text("h1", "Services").await;
    wait_for_service_state(&browser, &id, "RUNNING").await;
    let card = format!("li[data-service-id='{id}']");

    // A good version 2, pasted into the update form: the card ends at version 2.
    browser
        .click(&format!("{card} button[data-action='update']"))
        .await;
    let textarea = format!("#update-{id}-blueprint");
    browser.type_into(&textarea, &blueprint("v2", "")).await;
    browser
        .screenshot(&format!("services-update-{desktop}"))
        .await;
    browser.click(&format!("#update-{id}-submit")).await;
    browser.wait_for(&format!("#update-{id}-started")).await;
    browser
        .wait_until("version 2 on the card", || async {
            let text = browser.text(&format!("{card} dl.meta")).await?;
            (text.contains("Version\n2") || text.contains("Version 2")).then_some(())
        })
        .await;
    wait_for_service_state(&browser, &id, "RUNNING").await;

    // A broken version 3 (exits after a second): the card shows the update, then the
    // rollback and its reason.
    browser
        .click(&format!("{card} button[data-action='update']"))
        .await;
    browser
        .click(&format!("{card} button[data-action='update']"))
        .await;
    browser
        .type_into(
            &textarea,
            &blueprint("v3", ", TESTBOX_EXIT_AFTER_MS: 1000, TESTBOX_EXIT_CODE: 3"),
        )
        .await;
    browser.click(&format!("#update-{id}-submit")).await;
    wait_for_service_state(&browser, &id, "ROLLED_BACK").await;
    let reason = browser
        .wait_for_text(&format!("{card} .reason"), "rolled back")
        .await;
    assert!(reason.contains("exited with code 3"), "{reason}");
    browser
        .screenshot(&format!("services-rolled-back-{desktop}"))
        .await;

    // An invalid update is refused next to the text, naming the field.
    browser
        .click(&format!("{card} button[data-action='update']"))
        .await;
    browser
        .click(&format!("{card} button[data-action='update']"))
        .await;
    browser
        .type_into(
            &textarea,
            "name: web-update\nimages:\n  - {name: other, image: motey/testbox:latest}\n",
        )
        .await;
    browser.click(&format!("#update-{id}-submit")).await;
    browser
        .wait_for_text(&format!("#update-{id}-errors"), "images[0].name")
        .await;

    // History: newest first, the rollback with its reason.
    browser
        .click(&format!("{card} button[data-action='history']"))
        .await;
    let history = browser
        .wait_for_text(&format!("#history-{id}"), "rolled back")
        .await;
    assert!(
        history.contains("updated") && history.contains("deployed"),
        "{history}"
    );
    browser
        .screenshot(&format!("services-history-{desktop}"))
        .await;

    // Logs: the API token is not enough; with the admin token the log shows.
    browser
        .click(&format!("{card} button[data-action='logs']"))
        .await;
    browser
        .wait_for_text(&format!("#logs-{id}-error"), "admin token")
        .await;
    browser
        .type_into(&format!("#logs-{id}-admin-token"), ADMIN)
        .await;
    browser
        .click(&format!("#logs-{id}-admin button[type='submit']"))
        .await;
    let log = browser
        .wait_for_text(&format!("#logs-{id}-output"), "testbox started")
        .await;
    assert!(log.contains("env TESTBOX_BODY=v2"), "{log}");
    browser
        .screenshot(&format!("services-logs-{desktop}"))
        .await;
    browser
        .assert_clean_console(&[
            &refused(&format!("/v1/services/{id}"), 409),
            &refused(
                &format!("/v1/services/{id}/images/box/logs?tail=100&follow=false"),
                403,
            ),
        ])
        .await;
}

#[tokio::test]
async fn every_page_on_a_phone_and_a_desktop_in_a_fog_of_three_peers() {
    // A fog: the hub and three agents; one stays, one falls silent, one crashes.
    let agent = hub().await;
    let staying = edge("edge-1", &agent).await;
    let silent = edge("edge-2", &agent).await;
    let mut crashed = edge("edge-3", &agent).await;
    for peer in [&staying, &silent, &crashed] {
        wait_for_peer_state(&agent, &peer.node_id, "alive").await;
    }
    crashed.kill();
    wait_for_peer_state(&agent, &crashed.node_id, "gone").await;
    freeze(&silent);
    wait_for_peer_state(&agent, &silent.node_id, "suspect").await;

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
        browser.screenshot(&format!("signin-{name}")).await;
        browser.press(keys::TAB).await;
        assert!(
            browser.focused().await.starts_with("input#token"),
            "Tab leads to the token field"
        );
        browser.press(TOKEN).await;
        browser.press(keys::ENTER).await;

        // Nodes: this node with its statistics, and every peer with its state as the
        // hub's discovery judges it, its last contact and where its API is.
        browser.wait_for_text("h1", "Nodes").await;
        let this_node = browser
            .wait_for_text(
                &format!("tr[data-node-id='{}']", agent.node_id),
                "this node",
            )
            .await;
        assert!(this_node.contains("hub"), "{this_node}");
        assert!(this_node.contains("operating"), "phase: {this_node}");
        for (peer, name, state) in [
            (&staying, "edge-1", "alive"),
            (&silent, "edge-2", "suspect"),
            (&crashed, "edge-3", "gone"),
        ] {
            let row = browser
                .wait_for_text(
                    &format!("tr[data-node-id='{}'][data-state='{state}']", peer.node_id),
                    name,
                )
                .await;
            assert!(row.contains(state), "{row}");
            assert!(row.contains(&format!("127.0.0.1:{}", peer.port)), "{row}");
            assert!(row.contains("ago"), "last seen: {row}");
            assert!(row.contains("motey 0.1.0"), "version: {row}");
            assert!(row.contains("operating"), "phase as last announced: {row}");
        }
        let phase = browser
            .wait_for_text("[data-stat='phase']", "operating")
            .await;
        assert!(phase.contains("operating"), "{phase}");
        let colours = browser
            .execute(
                "return ['alive', 'suspect', 'gone'].map(s => getComputedStyle(document.querySelector(`#node-rows .state-${s}`)).color)",
                json!([]),
            )
            .await;
        let colours: Vec<&str> = colours
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            colours.len() == 3
                && colours[0] != colours[1]
                && colours[1] != colours[2]
                && colours[0] != colours[2],
            "each state has its own colour: {colours:?}"
        );
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
        let card = browser
            .wait_for_text("li.service[data-state='RUNNING']", "metering")
            .await;
        assert!(card.contains("reader"), "{card}");
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

        // A service no node can run is followed to ERROR, with the reason. One name per
        // viewport: the first one stays live (ERROR) and a node runs one service a name.
        browser
            .type_into(
                "#blueprint",
                &format!("name: lonely-{name}\nimages:\n  - name: dish\n    image: motey/testbox:latest\n    capabilities: [satellite-dish]\n"),
            )
            .await;
        browser.click("#deploy").await;
        browser
            .wait_for("#deploy-progress[data-state='ERROR']")
            .await;
        let outcome = browser.wait_for_text("#deploy-outcome", "ERROR").await;
        assert!(outcome.contains("satellite-dish"), "{outcome}");
        browser.wait_gone("#blueprint-errors").await;
        browser.screenshot(&format!("deploy-error-{name}")).await;

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

#[tokio::test]
async fn assets_are_public_typed_revalidated_and_locked_down() {
    let agent = hub().await;
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
}
