//! The device frontend (FR-01..05) in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`), against real processes: `data-api serve`
//! with mutual TLS, `meter-reader run` serving the frontend and proxying with its device
//! certificate, and two `meter-sim` meters on ptys. The participant grants consent and
//! watches measurements arrive in the chart, then revokes it and sees the final state.
//! Screenshots go to `artifacts/screenshots/device-*.png` for a person to check.

use fantoccini::{Client, Locator};
use reqwest::Method;
use serde_json::Value;
use system_tests::browser::{self, chromedriver, console_errors, text, wait_js};
use system_tests::survey::{
    registration, DataApi, MeterReader, Participant, Process, ReaderSetup, Survey, PATIENCE,
};
use system_tests::{free_port, wait_for};

/// A household with its reader serving the frontend on a loopback port.
struct Rig {
    survey: Survey,
    api: DataApi,
    participant: Participant,
    reader: MeterReader,
    ui: String,
    household: String,
    _meters: Vec<Process>,
}

async fn rig() -> Rig {
    let survey = Survey::new();
    let api = DataApi::start(&survey).await;
    let device = survey.issue_device("erika@example.org", "erika");
    let answer = api
        .register(&survey, &registration("erika@example.org"))
        .await;
    let meter = |i: usize| answer["meters"][i]["uuid"].as_str().unwrap().to_owned();
    let (grid, grid_pty) = survey.start_sim(&[
        "--model",
        "MT681",
        "--interval-ms",
        "250",
        "--power-w",
        "1500",
        "--power-swing-w",
        "400",
        "--import-wh",
        "1000000",
    ]);
    let (pv, pv_pty) = survey.start_sim(&[
        "--model",
        "EHZ",
        "--interval-ms",
        "250",
        "--power-w",
        "-2500",
        "--power-swing-w",
        "600",
        "--export-wh",
        "5000000",
        "--serial",
        "4711",
    ]);
    let ui_port = free_port();
    let setup = ReaderSetup {
        meters: vec![
            (meter(0), format!("serial://{grid_pty}?model=MT681")),
            (meter(1), format!("serial://{pv_pty}?model=EHZ")),
        ],
        api_url: api.url(),
        device: device.clone(),
        ca: survey.ca(),
        data_dir: survey.dir.path().join("reader"),
        log: survey.log_file("meter-reader.log"),
        extra: vec![
            (
                "METER_READER_UI_LISTEN".into(),
                format!("127.0.0.1:{ui_port}"),
            ),
            // A slower measurement cycle than the other suites: the chart should show a
            // handful of points a second, not dozens.
            ("METER_READER_MEASUREMENT_INTERVAL".into(), "1".into()),
        ],
    };
    let reader = MeterReader::start(&survey, &setup);
    wait_for("the device frontend to listen", PATIENCE, || {
        let up = !reader.events("device frontend listening").is_empty();
        async move { up.then_some(()) }
    })
    .await;
    let participant = Participant::new(&survey, &api, &device);
    Rig {
        ui: format!("http://127.0.0.1:{ui_port}"),
        household: answer["id"].as_str().unwrap().to_owned(),
        participant,
        reader,
        api,
        survey,
        _meters: vec![grid, pv],
    }
}

async fn screenshot(client: &Client, name: &str) {
    browser::screenshot(client, &format!("device-{name}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_grants_consent_sees_measurements_and_revokes() {
    let rig = rig().await;
    let driver = chromedriver().await;
    let profile = tempfile::tempdir().expect("browser profile");
    let client = browser::browser(&driver, profile.path(), &[]).await;

    client
        .goto(&format!("{}/?refresh=1", rig.ui))
        .await
        .expect("open the device frontend");
    wait_js(
        &client,
        "the page to load",
        "document.body.dataset.loaded === 'true'",
    )
    .await;

    // Before consent: nothing measured, the registration details are shown (FR-04).
    assert_eq!(text(&client, "#consent-state").await, "not granted");
    let registration = text(&client, "#registration").await;
    for expected in [
        "Erika Mustermann",
        "erika@example.org",
        "Augustusplatz 10, 04109 Leipzig, DE",
        "EV charger",
    ] {
        assert!(
            registration.contains(expected),
            "{expected} in {registration}"
        );
    }
    let devices = text(&client, "#devices").await;
    for expected in [
        "meter reader in the basement",
        "Electricity meter MT681",
        "PV generation meter EHZ",
        "9.62 kWp",
        "meter-reader",
    ] {
        assert!(devices.contains(expected), "{expected} in {devices}");
    }
    assert!(text(&client, "#measurements-summary")
        .await
        .contains("Nothing is measured until you grant consent"));
    assert!(client
        .find(Locator::Css("#grant"))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap());
    assert!(!client
        .find(Locator::Css("#revoke"))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap());
    screenshot(&client, "consent-not-granted").await;

    // FR-01: grant, then the measurements appear in the charts without a reload.
    client
        .find(Locator::Css("#grant"))
        .await
        .unwrap()
        .click()
        .await
        .expect("click grant");
    wait_js(
        &client,
        "the consent to show as granted",
        "document.getElementById('consent-state').dataset.state === 'GRANTED'",
    )
    .await;
    let (_, consent) = rig
        .participant
        .call(Method::GET, "/household/consent")
        .await;
    assert_eq!(consent["state"], "GRANTED");
    wait_js(
        &client,
        "power and energy lines of both meters with several points",
        "[...document.querySelectorAll('#power-chart polyline.series, #energy-chart polyline.series')]
            .filter(l => Number(l.dataset.count) >= 4).length >= 6",
    )
    .await;
    let series = wait_js(
        &client,
        "the chart's series names",
        "[...document.querySelectorAll('#power-chart polyline.series')].map(l => l.dataset.series).join('|')",
    )
    .await;
    let series = series.as_str().unwrap_or_default().to_owned();
    assert!(
        series.contains("Electricity meter MT681 — power")
            && series.contains("PV generation meter EHZ — power"),
        "{series}"
    );
    let rows = wait_js(
        &client,
        "table rows",
        "document.querySelectorAll('#measurement-table tbody tr').length",
    )
    .await;
    assert!(rows.as_u64() >= Some(4), "{rows}");
    let table = text(&client, "#measurement-table").await;
    assert!(table.contains("Electricity meter MT681"), "{table}");
    assert!(table.contains("PV generation meter EHZ"), "{table}");
    // Fed-in power is negative.
    assert!(table.contains('-'), "{table}");
    // The page shows what the Data API has.
    let shown: u64 = wait_js(
        &client,
        "the count",
        "Number(document.body.dataset.measurements)",
    )
    .await
    .as_u64()
    .unwrap_or(0);
    assert!(shown >= 8, "{shown}");
    // The device's own view: measuring, both probes connected.
    wait_js(
        &client,
        "both probes shown as connected",
        "document.getElementById('device').textContent.split('probe connected').length - 1 === 2",
    )
    .await;
    screenshot(&client, "measurements").await;

    // Phone-sized: nothing wider than the screen, charts still drawn.
    client.set_window_size(390, 1400).await.expect("resize");
    wait_js(
        &client,
        "the layout and the charts to fit a phone",
        "window.innerWidth < 500
            && document.documentElement.scrollWidth <= window.innerWidth + 1
            && [...document.querySelectorAll('.chart svg')].every(
                c => c.viewBox.baseVal.width <= Math.max(320, c.parentElement.clientWidth + 1))",
    )
    .await;
    screenshot(&client, "phone").await;
    client
        .execute(
            "document.getElementById('energy-chart').scrollIntoView()",
            vec![],
        )
        .await
        .expect("scroll to the charts");
    screenshot(&client, "phone-chart").await;
    client.set_window_size(1280, 1700).await.expect("resize");

    // FR-02/03: revoke — a confirmation explains that it is final and anonymizes.
    client
        .find(Locator::Css("#revoke"))
        .await
        .unwrap()
        .click()
        .await
        .expect("click revoke");
    wait_js(
        &client,
        "the confirmation dialog",
        "document.getElementById('revoke-dialog').open",
    )
    .await;
    let explanation = text(&client, "#revoke-dialog").await;
    for expected in ["final", "deleted", "anonymized", "return it"] {
        assert!(
            explanation.contains(expected),
            "{expected} in {explanation}"
        );
    }
    let confirm = client.find(Locator::Css("#revoke-confirm")).await.unwrap();
    assert!(
        !confirm.is_enabled().await.unwrap(),
        "confirm before ticking"
    );
    screenshot(&client, "revoke-dialog").await;
    // By keyboard: the dialog focuses the check box; Space ticks it, Enter confirms.
    let focused = client.active_element().await.expect("focused element");
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("revoke-understood")
    );
    focused.send_keys(" ").await.expect("tick with Space");
    wait_js(
        &client,
        "the confirm button to be enabled",
        "!document.getElementById('revoke-confirm').disabled",
    )
    .await;
    confirm
        .send_keys("\u{E007}")
        .await
        .expect("confirm with Enter");

    wait_js(
        &client,
        "the consent to show as revoked",
        "document.getElementById('consent-state').dataset.state === 'REVOKED'",
    )
    .await;
    wait_js(
        &client,
        "the anonymized registration details",
        "document.getElementById('registration').textContent.includes('Contact details were deleted')",
    )
    .await;
    let consent_text = text(&client, "#consent").await;
    assert!(consent_text.contains("revoked"), "{consent_text}");
    assert!(
        consent_text.contains("return it to the research group"),
        "{consent_text}"
    );
    for button in ["#grant", "#revoke"] {
        assert!(
            !client
                .find(Locator::Css(button))
                .await
                .unwrap()
                .is_displayed()
                .await
                .unwrap(),
            "{button} still offered"
        );
    }
    assert!(!text(&client, "#registration").await.contains("Erika"));
    screenshot(&client, "revoked").await;

    // The Data API and the reader agree: revoked, anonymized, measuring stopped.
    let (_, household) = rig.participant.call(Method::GET, "/household").await;
    assert_eq!(household["consent"]["state"], "REVOKED");
    assert_eq!(household["anonymized"], true);
    wait_for("the reader to stop", PATIENCE, || {
        let status = rig.reader.status();
        async move { (status["consent"] == "REVOKED" && status["return_device"] == true).then_some(()) }
    })
    .await;
    let exported = rig.api.export(&rig.survey, &rig.household).await;
    assert!(!exported.is_empty(), "measurements stay in the data set");

    let errors = console_errors(&client, &driver).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    client.close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_refuses_foreign_hosts_and_cross_site_consent_changes() {
    let rig = rig().await;
    let http = reqwest::Client::new();

    // A page of another site cannot send the frontend's header without a preflight.
    let answer = http
        .post(format!("{}/api/consent", rig.ui))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "cross_site_request");
    assert_eq!(body["field"], "x-device-frontend");
    let answer = http
        .post(format!("{}/api/consent", rig.ui))
        .header("x-device-frontend", "1")
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);

    // DNS rebinding: a foreign name pointing at the device gets nothing.
    let answer = http
        .get(format!("{}/api/overview", rig.ui))
        .header("host", "evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "host_not_allowed");

    // Nothing of that reached the Data API.
    let (_, consent) = rig
        .participant
        .call(Method::GET, "/household/consent")
        .await;
    assert_eq!(consent["state"], "NOT_GRANTED");

    // Bad parameters are named.
    let answer = http
        .get(format!("{}/api/measurements?from=yesterday", rig.ui))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["field"], "from");

    // The page's own request is accepted and reaches the Data API.
    let answer = http
        .post(format!("{}/api/consent", rig.ui))
        .header("x-device-frontend", "1")
        .header("origin", rig.ui.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["state"], "GRANTED");
    // A second grant is the Data API's 409, passed through with its error body.
    let answer = http
        .post(format!("{}/api/consent", rig.ui))
        .header("x-device-frontend", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 409);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "consent_already_granted");
    // The reader took the grant at once: its probes run before the next cycle asks.
    wait_for("the reader to measure", PATIENCE, || {
        let stored = !rig.reader.stored().is_empty();
        async move { stored.then_some(()) }
    })
    .await;
    // The pages carry a strict content security policy.
    let page = http.get(format!("{}/", rig.ui)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(page.text().await.unwrap().contains("/app.js"));

    // Without the Data API the frontend still answers, with what the device knows.
    let mut rig = rig;
    rig.api.kill9();
    let answer = http
        .get(format!("{}/api/overview", rig.ui))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let overview: Value = answer.json().await.unwrap();
    assert_eq!(overview["household"]["ok"], false);
    assert_eq!(overview["household"]["status"], 502);
    assert_eq!(
        overview["household"]["body"]["error"],
        "data_api_unreachable"
    );
    assert_eq!(overview["reader"]["consent"], "GRANTED");
    let answer = http
        .delete(format!("{}/api/consent", rig.ui))
        .header("x-device-frontend", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 502);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "data_api_unreachable");
}
