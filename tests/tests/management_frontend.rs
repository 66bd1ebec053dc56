//! The Registration frontend (FR-06..08) and the Status frontend (FR-09) in a real
//! headless Chromium, driven over WebDriver, against a real `data-api serve` process with
//! real TLS: the survey's CA and server certificate come from `data-api pki`, and the
//! browser trusts exactly that server key. Devices reach the same process over mutual TLS
//! with certificates from `data-api pki issue-device`.
//!
//! Screenshots of every page go to `artifacts/screenshots/management-*.png` and
//! `status-*.png` for a person to check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};
use system_tests::browser::{
    browser, chromedriver, console_errors, full_page_screenshot, screenshot, text,
    trust_server_key, wait_js, Driver,
};
use system_tests::survey::{
    registration, DataApi, Participant, Survey, ADMIN_TOKEN, RESEARCHER_TOKEN,
};

/// The Data API and a browser that trusts its server certificate.
struct Rig {
    survey: Survey,
    api: DataApi,
    driver: Driver,
    client: Client,
    _profile: tempfile::TempDir,
}

async fn rig(serve_args: &[&str]) -> Rig {
    let survey = Survey::new();
    let api = DataApi::start_with(&survey, serve_args).await;
    let driver = chromedriver().await;
    let profile = tempfile::tempdir().expect("browser profile");
    let trust = trust_server_key(&survey.pki_dir().join("server.pem"));
    let client = browser(&driver, profile.path(), &[trust]).await;
    Rig {
        survey,
        api,
        driver,
        client,
        _profile: profile,
    }
}

impl Rig {
    fn ui(&self) -> String {
        format!("{}/ui/", self.api.url())
    }

    /// Console errors other than the refusals the test provoked on purpose: Chromium
    /// logs every 4xx answer to `fetch` as an error, naming its status.
    async fn unexpected_console_errors(&self, provoked: &[u16]) -> Vec<Value> {
        console_errors(&self.client, &self.driver)
            .await
            .into_iter()
            .filter(|entry| {
                let message = entry["message"].as_str().unwrap_or_default();
                !provoked.iter().any(|status| {
                    message.contains("/management/")
                        && message.contains(&format!("status of {status}"))
                })
            })
            .collect()
    }

    async fn assert_console_clean(&self, provoked: &[u16]) {
        let errors = self.unexpected_console_errors(provoked).await;
        assert!(errors.is_empty(), "console errors: {errors:?}");
    }

    async fn sign_in(&self, token: &str) {
        let input = self.client.find(Locator::Css("#token")).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(token).await.unwrap();
        // Enter in the field submits the form, as a keyboard user would.
        input.send_keys("\u{E007}").await.unwrap();
    }
}

async fn type_into(client: &Client, css: &str, value: &str) {
    let input = client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    input.clear().await.unwrap_or_else(|e| panic!("{css}: {e}"));
    input
        .send_keys(value)
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
}

/// Sets a select or date input as a person picking a value would (input and change
/// events), without depending on the locale's date keyboard layout.
async fn choose(client: &Client, css: &str, value: &str) {
    client
        .execute(
            "const el = document.querySelector(arguments[0]);
             el.value = arguments[1];
             el.dispatchEvent(new Event('input', {bubbles: true}));
             el.dispatchEvent(new Event('change', {bubbles: true}));
             return el.value;",
            vec![json!(css), json!(value)],
        )
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
}

async fn no_sideways_scrolling(client: &Client, what: &str) {
    wait_js(
        client,
        what,
        "document.documentElement.scrollWidth <= window.innerWidth + 1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn researcher_registers_finds_and_corrects_a_participant() {
    let rig = rig(&[]).await;
    let client = &rig.client;
    // Another household, registered and consenting through the API, to search among.
    let other = rig
        .api
        .register(&rig.survey, &{
            let mut r = registration("max@example.org");
            r["user"]["name"] = json!("Max Mustermann");
            r
        })
        .await;
    let max_device = rig.survey.issue_device("max@example.org", "max");
    let max = Participant::new(&rig.survey, &rig.api, &max_device);
    let (status, _) = max.call(reqwest::Method::POST, "/household/consent").await;
    assert_eq!(status, 200);

    // Sign-in: a wrong token is refused and not kept.
    client.goto(&rig.ui()).await.expect("open /ui/");
    wait_js(
        client,
        "the sign-in page",
        "document.getElementById('token')",
    )
    .await;
    screenshot(client, "management-signin").await;
    rig.sign_in("not-the-researcher-token-0123").await;
    let refusal = wait_js(
        client,
        "the refusal",
        "!document.getElementById('signin-error').hidden && document.getElementById('signin-error').textContent",
    )
    .await;
    assert!(refusal.as_str().unwrap().contains("refused"), "{refusal}");
    let kept: Value = client
        .execute(
            "return sessionStorage.getItem('energiebroker.management-token')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, Value::Null);
    screenshot(client, "management-signin-refused").await;
    rig.assert_console_clean(&[401]).await;

    rig.sign_in(RESEARCHER_TOKEN).await;
    wait_js(
        client,
        "the households list",
        "location.hash === '#/households' && document.querySelectorAll('#households tbody tr').length === 1",
    )
    .await;
    assert_eq!(text(client, "#role").await, "Researcher");

    // FR-06: the registration form.
    click(client, "#register-link").await;
    wait_js(
        client,
        "the registration form",
        "document.getElementById('registration-form')",
    )
    .await;
    type_into(client, "#f-user-name", "Erika Mustermann").await;
    type_into(client, "#f-user-email", "erika-at-example.org").await;
    type_into(client, "#f-address-street", "Augustusplatz").await;
    type_into(client, "#f-address-house-number", "10").await;
    type_into(client, "#f-address-postal-code", "04109").await;
    type_into(client, "#f-address-city", "Leipzig").await;
    type_into(client, "#f-location-latitude", "51.3397").await;
    type_into(client, "#f-location-longitude", "12.3731").await;
    type_into(client, "#f-metadata-children", "2").await;
    type_into(client, "#f-metadata-adults", "2").await;
    type_into(client, "#f-metadata-employed-adults", "1").await;
    click(client, "#f-metadata-ev-charger").await;
    click(client, "#f-metadata-home-battery").await;
    type_into(client, "#f-measurement-devices-0-name", "basement").await;
    click(client, "#add-meter").await;
    wait_js(
        client,
        "the second meter",
        "document.getElementById('f-meters-1-type')",
    )
    .await;
    choose(client, "#f-meters-1-type", "PV-GENERATION").await;
    choose(client, "#f-meters-1-model", "EHZ").await;
    click(client, "#add-pv").await;
    wait_js(
        client,
        "the PV system",
        "document.getElementById('f-pv-systems-0-nominal-power')",
    )
    .await;
    type_into(client, "#f-pv-systems-0-nominal-power", "9.62").await;
    type_into(client, "#f-pv-systems-0-tilt", "95").await;
    choose(client, "#f-pv-systems-0-installation-date", "2019-05-17").await;
    choose(client, "#f-pv-systems-0-generation-meter", "1").await;
    let meter_label = wait_js(
        client,
        "the generation meter choice",
        "document.querySelector('#f-pv-systems-0-generation-meter').selectedOptions[0].textContent",
    )
    .await;
    assert_eq!(meter_label, "Meter 2: PV-GENERATION EHZ");

    // Client-side checks: the mistakes are shown next to their fields, nothing is sent.
    click(client, "#save").await;
    wait_js(
        client,
        "the field errors",
        "!document.getElementById('f-user-email-error').hidden
            && !document.getElementById('f-pv-systems-0-tilt-error').hidden",
    )
    .await;
    assert!(text(client, "#f-user-email-error")
        .await
        .contains("Not an email address"));
    assert!(text(client, "#f-pv-systems-0-tilt-error")
        .await
        .contains("From 0 to 90"));
    let invalid: Value = client
        .execute(
            "return [...document.querySelectorAll('[aria-invalid=true]')].map(e => e.id)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(invalid, json!(["f-user-email", "f-pv-systems-0-tilt"]));
    let focused = client.active_element().await.unwrap();
    assert_eq!(
        focused.attr("id").await.unwrap().as_deref(),
        Some("f-user-email"),
        "the first mistake takes the focus"
    );
    full_page_screenshot(client, "management-register-field-errors").await;
    let listed = rig
        .api
        .researcher_get(&rig.survey, "/management/household")
        .await;
    assert_eq!(listed["households"].as_array().unwrap().len(), 1);

    // Corrected, the registration goes through and opens the new household.
    type_into(client, "#f-user-email", "erika@example.org").await;
    type_into(client, "#f-pv-systems-0-tilt", "30").await;
    click(client, "#save").await;
    let hash = wait_js(
        client,
        "the registered household",
        "location.hash.startsWith('#/households/') && document.getElementById('registered') && location.hash",
    )
    .await;
    let id = hash
        .as_str()
        .unwrap()
        .trim_start_matches("#/households/")
        .to_owned();
    wait_js(
        client,
        "the correction form",
        "document.getElementById('f-user-name')",
    )
    .await;
    let stored = rig
        .api
        .researcher_get(&rig.survey, &format!("/management/household/{id}"))
        .await;
    assert_eq!(stored["user"]["email"], "erika@example.org");
    assert_eq!(stored["address"]["country"], "DE");
    assert_eq!(stored["metadata"]["ev_charger"], true);
    assert_eq!(stored["metadata"]["heat_pump"], false);
    assert_eq!(stored["measurement_devices"][0]["name"], "basement");
    assert_eq!(stored["meters"][1]["type"], "PV-GENERATION");
    assert_eq!(stored["pv_systems"][0]["nominal_power"], 9.62);
    assert_eq!(stored["pv_systems"][0]["installation_date"], "2019-05-17");
    assert_eq!(
        stored["pv_systems"][0]["generation_meter"],
        stored["meters"][1]["uuid"]
    );
    // The meter uuids the reader is configured with are on the page.
    let page = text(client, "main").await;
    assert!(
        page.contains(stored["meters"][0]["uuid"].as_str().unwrap()),
        "{page}"
    );
    full_page_screenshot(client, "management-registered").await;

    // FR-08: both households in the list, found by search and by consent.
    client
        .goto(&format!("{}#/households", rig.ui()))
        .await
        .unwrap();
    wait_js(
        client,
        "both households",
        "document.querySelectorAll('#households tbody tr').length === 2",
    )
    .await;
    let counts = text(client, "#counts").await;
    assert!(counts.contains("2 households"), "{counts}");
    assert!(counts.contains("1 participating"), "{counts}");
    screenshot(client, "management-households").await;
    type_into(client, "#search", "erika").await;
    wait_js(
        client,
        "the search to find Erika only",
        &format!(
            "[...document.querySelectorAll('#households tbody tr')].map(r => r.dataset.household).join() === '{id}'"
        ),
    )
    .await;
    let row = text(client, "#households tbody tr").await;
    assert!(row.contains("Erika Mustermann"), "{row}");
    assert!(row.contains("not granted"), "{row}");
    screenshot(client, "management-households-search").await;
    type_into(client, "#search", "").await;
    choose(client, "#consent-filter", "GRANTED").await;
    wait_js(
        client,
        "the consent filter to show Max only",
        &format!(
            "[...document.querySelectorAll('#households tbody tr')].map(r => r.dataset.household).join() === '{}'",
            other["id"].as_str().unwrap()
        ),
    )
    .await;

    // FR-07: corrections. The Data API's refusals are shown next to their fields.
    choose(client, "#consent-filter", "").await;
    click(client, &format!("tr[data-household='{id}'] a")).await;
    wait_js(
        client,
        "the household's form",
        "document.getElementById('f-address-city')",
    )
    .await;
    type_into(client, "#f-user-email", "MAX@example.org").await;
    click(client, "#save").await;
    wait_js(
        client,
        "the taken email refused next to the field",
        "!document.getElementById('f-user-email-error').hidden",
    )
    .await;
    let taken = text(client, "#f-user-email-error").await;
    // The refusal never repeats the email: the Data API logs its refusals.
    assert!(taken.contains("already registered"), "{taken}");
    assert!(!taken.to_lowercase().contains("max@example.org"), "{taken}");
    type_into(client, "#f-user-email", "erika@example.org").await;
    // Re-typing the generation meter leaves the PV system without one: the Data API names
    // the PV system's generation meter.
    choose(client, "#f-meters-1-type", "ELECTRICITY").await;
    click(client, "#save").await;
    wait_js(
        client,
        "the server's field error at the generation meter",
        "!document.getElementById('f-pv-systems-0-generation-meter-error').hidden",
    )
    .await;
    let refused = text(client, "#f-pv-systems-0-generation-meter-error").await;
    assert!(refused.contains("PV-GENERATION"), "{refused}");
    assert!(text(client, "#form-errors")
        .await
        .contains("The Data API refused the details"));
    full_page_screenshot(client, "management-edit-server-error").await;
    rig.assert_console_clean(&[400, 409]).await;

    choose(client, "#f-meters-1-type", "PV-GENERATION").await;
    type_into(client, "#f-address-city", "Halle (Saale)").await;
    type_into(client, "#f-address-postal-code", "06108").await;
    type_into(client, "#f-pv-systems-0-tilt", "35").await;
    click(client, "#f-metadata-heat-pump").await;
    click(client, "#save").await;
    wait_js(
        client,
        "the corrections to be saved",
        "!document.getElementById('saved').hidden",
    )
    .await;
    let corrected = rig
        .api
        .researcher_get(&rig.survey, &format!("/management/household/{id}"))
        .await;
    assert_eq!(corrected["address"]["city"], "Halle (Saale)");
    assert_eq!(corrected["address"]["postal_code"], "06108");
    assert_eq!(corrected["pv_systems"][0]["tilt"], 35.0);
    assert_eq!(corrected["metadata"]["heat_pump"], true);
    assert_eq!(corrected["meters"][1]["type"], "PV-GENERATION");
    assert_eq!(corrected["user"]["email"], "erika@example.org");
    full_page_screenshot(client, "management-edit-saved").await;

    // A forgotten PV system is added, the one listed by mistake removed.
    click(client, "#add-pv").await;
    wait_js(
        client,
        "the new PV system's fields",
        "document.getElementById('f-pv-systems-1-nominal-power')",
    )
    .await;
    type_into(client, "#f-pv-systems-1-nominal-power", "4.1").await;
    type_into(client, "#f-pv-systems-1-azimuth", "90").await;
    type_into(client, "#f-pv-systems-1-tilt", "15").await;
    choose(client, "#f-pv-systems-1-installation-date", "2022-06-01").await;
    choose(client, "#f-pv-systems-1-generation-meter", "1").await;
    click(client, "fieldset[data-path='pv_systems[0]'] .remove").await;
    wait_js(
        client,
        "one PV system left in the form",
        "document.querySelectorAll('fieldset[data-path^=\"pv_systems[\"]').length === 1",
    )
    .await;
    click(client, "#save").await;
    let systems = wait_js(
        client,
        "the PV systems to be saved",
        "!document.getElementById('saved').hidden && document.getElementById('f-pv-systems-0-nominal-power').value",
    )
    .await;
    assert_eq!(systems, "4.1");
    let corrected = rig
        .api
        .researcher_get(&rig.survey, &format!("/management/household/{id}"))
        .await;
    let pv = corrected["pv_systems"].as_array().unwrap();
    assert_eq!(pv.len(), 1, "{corrected}");
    assert_eq!(pv[0]["nominal_power"], 4.1);
    assert_eq!(pv[0]["installation_date"], "2022-06-01");
    assert_eq!(pv[0]["generation_meter"], corrected["meters"][1]["uuid"]);

    // After Max revokes consent his household is anonymized and shown read-only.
    let (status, _) = max
        .call(reqwest::Method::DELETE, "/household/consent")
        .await;
    assert_eq!(status, 200);
    client
        .goto(&format!(
            "{}#/households/{}",
            rig.ui(),
            other["id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let remains = wait_js(
        client,
        "the anonymized household",
        "document.getElementById('remains')?.textContent",
    )
    .await;
    let remains = remains.as_str().unwrap();
    assert!(remains.contains("10 kWp"), "{remains}");
    assert!(remains.contains("installed 2019"), "{remains}");
    assert!(!text(client, "main").await.contains("Max"));
    assert!(client
        .find(Locator::Css("#registration-form"))
        .await
        .is_err());
    screenshot(client, "management-anonymized").await;

    // On a phone: one column, nothing wider than the screen.
    client.set_window_size(390, 844).await.expect("resize");
    client
        .goto(&format!("{}#/households", rig.ui()))
        .await
        .unwrap();
    wait_js(
        client,
        "the list on a phone",
        "document.querySelectorAll('#households tbody tr').length === 2",
    )
    .await;
    no_sideways_scrolling(client, "the list to fit a phone").await;
    screenshot(client, "management-phone-households").await;
    client
        .goto(&format!("{}#/register", rig.ui()))
        .await
        .unwrap();
    wait_js(
        client,
        "the form on a phone",
        "document.getElementById('f-user-name')",
    )
    .await;
    click(client, "#add-pv").await;
    no_sideways_scrolling(client, "the form to fit a phone").await;
    full_page_screenshot(client, "management-phone-register").await;
    client.set_window_size(1280, 1700).await.expect("resize");

    // Sign-out forgets the token.
    click(client, "#sign-out").await;
    wait_js(
        client,
        "the sign-in page again",
        "document.getElementById('token') && sessionStorage.length === 0",
    )
    .await;
    rig.assert_console_clean(&[]).await;
    client.clone().close().await.expect("close the browser");
}

/// A device that keeps talking to the Data API in the background until dropped: every
/// 300 ms it uploads a fresh measurement, or (with `measuring` off) only asks for its
/// consent, like a reader whose probe has failed.
struct BusyDevice {
    stop: Arc<AtomicBool>,
}

impl Drop for BusyDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn keep_busy(participant: Participant, meter: String, measuring: bool) -> BusyDevice {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    tokio::spawn(async move {
        while !stopped.load(Ordering::Relaxed) {
            if measuring {
                upload(
                    &participant,
                    &meter,
                    Utc::now(),
                    "meter-reader=0.1.0,sml-decoder=0.1.0",
                )
                .await;
            } else {
                let _ = participant
                    .client
                    .get(format!("{}/household/consent", participant.base))
                    .header(
                        "x-component-versions",
                        "meter-reader=0.0.9,sml-decoder=0.0.9",
                    )
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    BusyDevice { stop }
}

async fn upload(participant: &Participant, meter: &str, at: chrono::DateTime<Utc>, versions: &str) {
    let response = participant
        .client
        .post(format!("{}/household/meter/measurement", participant.base))
        .header("x-component-versions", versions)
        .json(&json!({"measurements": [{
            "uuid": uuid::Uuid::new_v4(),
            "meter": meter,
            "measured_at": at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "data": [{"0100010800ff": 12345.6}, {"0100100700ff": 230.0}],
        }]}))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200, "upload refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_highlights_silent_devices() {
    // A report cycle of 2 s makes "longer than two report cycles" 4 s: the stuck device
    // turns silent while the test watches, without waiting for hours.
    let rig = rig(&["--report-interval", "2"]).await;
    let client = &rig.client;
    let mut households = Vec::new();
    for (email, name) in [
        ("erika@example.org", "Erika Mustermann"),
        ("max@example.org", "Max Mustermann"),
        ("lena@example.org", "Lena Meyer"),
    ] {
        let mut r = registration(email);
        r["user"]["name"] = json!(name);
        households.push(rig.api.register(&rig.survey, &r).await);
    }
    let device_of = |i: usize| {
        households[i]["measurement_device"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let meter_of = |i: usize| {
        households[i]["meters"][0]["uuid"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Erika's device measures and uploads all the time.
    let erika = Participant::new(
        &rig.survey,
        &rig.api,
        &rig.survey.issue_device("erika@example.org", "erika"),
    );
    assert_eq!(
        erika
            .call(reqwest::Method::POST, "/household/consent")
            .await
            .0,
        200
    );
    let _fresh = keep_busy(erika, meter_of(0), true);
    // Max's device stays in contact, but its newest measurement is three hours old.
    let max = Participant::new(
        &rig.survey,
        &rig.api,
        &rig.survey.issue_device("max@example.org", "max"),
    );
    assert_eq!(
        max.call(reqwest::Method::POST, "/household/consent")
            .await
            .0,
        200
    );
    upload(
        &max,
        &meter_of(1),
        Utc::now() - chrono::Duration::hours(3),
        "meter-reader=0.0.9,sml-decoder=0.0.9",
    )
    .await;
    let _stuck = keep_busy(max, meter_of(1), false);
    // Lena's device has not been installed yet.

    client.goto(&rig.ui()).await.expect("open /ui/");
    wait_js(
        client,
        "the sign-in page",
        "document.getElementById('token')",
    )
    .await;
    rig.sign_in(ADMIN_TOKEN).await;
    wait_js(
        client,
        "the status page",
        "location.hash === '#/status' && document.querySelectorAll('#devices tbody tr').length === 3",
    )
    .await;
    assert_eq!(text(client, "#role").await, "Administrator");
    // Administrators get the status only.
    let offered: Value = client
        .execute(
            "return [...document.querySelectorAll('#nav li')].filter(li => !li.hidden).map(li => li.textContent)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(offered, json!(["Device status"]));
    // The threshold comes from the Data API's configuration and is on the page.
    assert_eq!(text(client, "#report-cycle").await, "2 s");
    assert_eq!(text(client, "#silent-after").await, "4 s");

    let row = |i: usize| format!("#devices tr[data-device='{}']", device_of(i));
    wait_js(
        client,
        "Max's device to turn silent while Erika's reports",
        &format!(
            "document.querySelector(\"{}\")?.dataset.health === 'silent'
                && document.querySelector(\"{}\")?.dataset.health === 'reporting'",
            row(1),
            row(0)
        ),
    )
    .await;
    let silent = text(client, &row(1)).await;
    assert!(
        silent.contains("silent — no new measurement for 3 h"),
        "{silent}"
    );
    assert!(silent.contains("meter-reader 0.0.9"), "{silent}");
    assert!(silent.contains("granted"), "{silent}");
    assert!(
        silent.contains("Max Mustermann") && !silent.contains("@"),
        "the participant's name but no contact details for administrators: {silent}"
    );
    let fresh = text(client, &row(0)).await;
    assert!(fresh.contains("reporting"), "{fresh}");
    assert!(fresh.contains("meter-reader 0.1.0"), "{fresh}");
    let never = text(client, &row(2)).await;
    assert!(never.contains("never seen"), "{never}");
    // The silent row is highlighted: it is drawn differently from the others.
    let backgrounds: Value = client
        .execute(
            "return arguments[0].map(s => getComputedStyle(document.querySelector(s)).backgroundColor)",
            vec![json!([row(0), row(1), row(2)])],
        )
        .await
        .unwrap();
    assert_ne!(backgrounds[1], backgrounds[0], "{backgrounds}");
    assert_eq!(backgrounds[0], backgrounds[2], "{backgrounds}");
    let counts = text(client, "#counts").await;
    assert!(counts.contains("3 devices, 1 silent"), "{counts}");
    screenshot(client, "status-admin").await;

    // By keyboard: "only silent devices" narrows the list.
    let only = client.find(Locator::Css("#only-silent")).await.unwrap();
    only.send_keys(" ").await.expect("tick with Space");
    wait_js(
        client,
        "only the silent device",
        "document.querySelectorAll('#devices tbody tr').length === 1",
    )
    .await;
    assert!(client.find(Locator::Css(&row(1))).await.is_ok());
    screenshot(client, "status-only-silent").await;
    only.send_keys(" ").await.expect("untick with Space");

    // A researcher's route is not for administrators.
    client
        .goto(&format!("{}#/households", rig.ui()))
        .await
        .unwrap();
    wait_js(
        client,
        "the way back to the status",
        "location.hash === '#/status' && document.querySelectorAll('#devices tbody tr').length === 3",
    )
    .await;

    // On a phone: rows become blocks, the silent one still stands out.
    client.set_window_size(390, 844).await.expect("resize");
    no_sideways_scrolling(client, "the status page to fit a phone").await;
    full_page_screenshot(client, "status-phone").await;
    client.set_window_size(1280, 1700).await.expect("resize");

    // Researchers see the same status with the participants' names.
    click(client, "#sign-out").await;
    wait_js(
        client,
        "the sign-in page",
        "document.getElementById('token')",
    )
    .await;
    rig.sign_in(RESEARCHER_TOKEN).await;
    client.goto(&format!("{}#/status", rig.ui())).await.unwrap();
    wait_js(
        client,
        "the researcher's status page",
        &format!(
            "document.querySelector(\"{}\")?.textContent.includes('Max Mustermann')",
            row(1)
        ),
    )
    .await;
    screenshot(client, "status-researcher").await;
    rig.assert_console_clean(&[]).await;
    client.clone().close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_served_with_a_strict_policy_and_tokens_are_checked() {
    let survey = Survey::new();
    let api = DataApi::start(&survey).await;
    let http = survey.client();
    let page = http.get(format!("{}/ui/", api.url())).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(page.text().await.unwrap().contains("/ui/js/app.js"));
    for asset in [
        "/ui/js/app.js",
        "/ui/js/dom.js",
        "/ui/js/format.js",
        "/ui/style.css",
    ] {
        let answer = http
            .get(format!("{}{asset}", api.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{asset}");
    }
    // The session endpoint names the role and the report cycle.
    let session: Value = api.researcher_get(&survey, "/management/session").await;
    assert_eq!(session["role"], "researcher");
    assert_eq!(session["report_interval_seconds"], 3600.0);
    assert_eq!(session["silent_after_seconds"], 7200.0);
    let refused = http
        .get(format!("{}/management/session", api.url()))
        .bearer_auth("not-a-token-of-this-survey")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let admin: Value = http
        .get(format!("{}/management/session", api.url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin["role"], "admin");
}
