//! The metering survey end to end with every part real: `data-api pki` makes the survey
//! CA and certificates, `data-api serve` runs as a process with mutual TLS, a researcher
//! registers the household with the bearer token, the participant's device grants and
//! revokes consent with its certificate, `meter-sim` emits SML on ptys and
//! `meter-reader run` reads them and uploads to the Data API. What arrives is read back
//! through the participant endpoints and the researchers' export.

use std::collections::{HashMap, HashSet};

use reqwest::Method;
use serde_json::Value;
use system_tests::postgres::Postgres;
use system_tests::survey::{
    obis_value, registration, DataApi, DeviceIdentity, MeterReader, Participant, ReaderSetup,
    Survey, PATIENCE,
};
use system_tests::wait_for;

const IMPORT_ENERGY: &str = "0100010800ff";
const EXPORT_ENERGY: &str = "0100020800ff";
const SUM_POWER: &str = "0100100700ff";
const REVOKED_NOTICE: &str = "consent revoked: measuring stopped for good; this device should be returned to the research group";

/// A registered household with its device certificate and meter uuids.
struct Household {
    id: String,
    device: DeviceIdentity,
    /// The electricity meter (MT681) and the PV generation meter (EHZ).
    consumption: String,
    generation: String,
}

async fn register(survey: &Survey, api: &DataApi, email: &str) -> Household {
    let device = survey.issue_device(email, "erika");
    let answer = api.register(survey, &registration(email)).await;
    let meters = answer["meters"].as_array().expect("meters in the answer");
    assert_eq!(meters.len(), 2, "{answer}");
    Household {
        id: answer["id"].as_str().expect("household id").to_owned(),
        device,
        consumption: meters[0]["uuid"].as_str().unwrap().to_owned(),
        generation: meters[1]["uuid"].as_str().unwrap().to_owned(),
    }
}

fn reader_setup(
    survey: &Survey,
    api: &DataApi,
    household: &Household,
    meters: Vec<(String, String)>,
    extra: Vec<(&str, &str)>,
) -> ReaderSetup {
    ReaderSetup {
        meters,
        api_url: api.url(),
        device: household.device.clone(),
        ca: survey.ca(),
        data_dir: survey.dir.path().join("reader"),
        log: survey.log_file("meter-reader.log"),
        extra: extra
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

/// What the Data API stores for the household, as its device reads it (exports carry
/// pseudonyms, not the uuids the reader sent).
async fn stored(participant: &Participant, household: &Household) -> Vec<Value> {
    let mut all = participant.measurements(&household.consumption).await;
    all.extend(participant.measurements(&household.generation).await);
    all
}

fn uuids(measurements: &[Value]) -> Vec<String> {
    measurements
        .iter()
        .map(|m| m["uuid"].as_str().expect("uuid").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_gates_the_chain_from_probe_to_data_api() {
    let survey = Survey::new();
    let api = DataApi::start(&survey).await;
    consent_gates_the_chain(&survey, &api).await;
}

/// The same chain with the Data API on PostgreSQL (personal details sealed there too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_gates_the_chain_from_probe_to_data_api_on_postgres() {
    let survey = Survey::new();
    let postgres = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let api = DataApi::start_on_postgres(&survey, &postgres.url()).await;
    consent_gates_the_chain(&survey, &api).await;
}

async fn consent_gates_the_chain(survey: &Survey, api: &DataApi) {
    let household = register(survey, api, "erika@example.org").await;
    let participant = Participant::new(survey, api, &household.device);

    // The household's two meters: consumption from the grid, and the PV system feeding in.
    let (_grid_meter, grid_pty) = survey.start_sim(&[
        "--model",
        "MT681",
        "--interval-ms",
        "250",
        "--power-w",
        "1500",
        "--import-wh",
        "1000000",
    ]);
    let (_pv_meter, pv_pty) = survey.start_sim(&[
        "--model",
        "EHZ",
        "--interval-ms",
        "250",
        "--power-w",
        "-2500",
        "--import-wh",
        "300",
        "--export-wh",
        "5000000",
        "--serial",
        "4711",
    ]);
    let setup = reader_setup(
        survey,
        api,
        &household,
        vec![
            (
                household.consumption.clone(),
                format!("serial://{grid_pty}?model=MT681"),
            ),
            (
                household.generation.clone(),
                format!("serial://{pv_pty}?model=EHZ"),
            ),
        ],
        vec![],
    );
    let mut reader = MeterReader::start(survey, &setup);

    // NOT_GRANTED: cycles pass, the reader asks the real Data API and measures nothing.
    wait_for("measurement cycles without consent", PATIENCE, || {
        let skipped = reader.events("consent not granted: nothing measured").len();
        async move { (skipped >= 4).then_some(()) }
    })
    .await;
    assert!(reader.stored().is_empty(), "measured without consent");
    assert_eq!(reader.status()["consent"], "NOT_GRANTED");
    assert!(participant
        .measurements(&household.consumption)
        .await
        .is_empty());
    assert!(api.export(survey, &household.id).await.is_empty());
    // The device's requests were recorded with its component versions (FR-09).
    let overview = api.researcher_get(survey, "/management/household").await;
    let listed = overview["households"]
        .as_array()
        .expect("household list")
        .iter()
        .find(|h| h["id"] == household.id.as_str())
        .cloned()
        .expect("household in the overview");
    assert_eq!(listed["consent"]["state"], "NOT_GRANTED");
    let device = &listed["measurement_devices"][0];
    assert!(device["last_activity"].is_string(), "{listed}");
    assert!(
        device["component_versions"]["meter-reader"].is_string(),
        "{listed}"
    );

    // FR-01: the participant grants consent through the device.
    let (status, consent) = participant.call(Method::POST, "/household/consent").await;
    assert_eq!(status, 200, "{consent}");
    assert_eq!(consent["state"], "GRANTED");

    wait_for(
        "measurements of both meters at the Data API",
        PATIENCE,
        || {
            let participant = &participant;
            let (a, b) = (&household.consumption, &household.generation);
            async move {
                let grid = participant.measurements(a).await;
                let pv = participant.measurements(b).await;
                (grid.len() >= 3 && pv.len() >= 3).then_some(())
            }
        },
    )
    .await;
    let grid = participant.measurements(&household.consumption).await;
    let pv = participant.measurements(&household.generation).await;
    for m in &grid {
        assert_eq!(m["meter"], household.consumption.as_str());
        // Converted from the meter's W and Wh to kW and kWh.
        assert_eq!(obis_value(m, SUM_POWER), Some(1.5), "{m}");
        assert_eq!(obis_value(m, EXPORT_ENERGY), Some(0.0), "{m}");
        let energy = obis_value(m, IMPORT_ENERGY).expect("import energy");
        assert!((1000.0..1001.0).contains(&energy), "{m}");
        let at = m["measured_at"].as_str().expect("measured_at");
        assert!(chrono_like(at), "{at}");
    }
    for m in &pv {
        assert_eq!(m["meter"], household.generation.as_str());
        assert_eq!(obis_value(m, SUM_POWER), Some(-2.5), "{m}");
        assert_eq!(obis_value(m, IMPORT_ENERGY), Some(0.3), "{m}");
        let fed_in = obis_value(m, EXPORT_ENERGY).expect("export energy");
        assert!((5000.0..5001.0).contains(&fed_in), "{m}");
    }
    // Every measurement at the Data API is one the reader took, and none is there twice.
    let taken = reader.stored();
    let at_api: Vec<String> = uuids(&grid).into_iter().chain(uuids(&pv)).collect();
    let distinct: HashSet<&String> = at_api.iter().collect();
    assert_eq!(distinct.len(), at_api.len(), "a measurement stored twice");
    assert!(at_api.iter().all(|u| taken.contains(u)));
    // The participant sees the meters with their last measurement.
    let (status, meters) = participant.call(Method::GET, "/household/meter").await;
    assert_eq!(status, 200);
    assert!(meters["meters"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["last_measurement"].is_string()));

    // FR-02/03: revocation is final and anonymizes the household.
    let (status, consent) = participant.call(Method::DELETE, "/household/consent").await;
    assert_eq!(status, 200, "{consent}");
    assert_eq!(consent["state"], "REVOKED");
    wait_for("the reader to learn of the revocation", PATIENCE, || {
        let status = reader.status();
        async move { (status["consent"] == "REVOKED").then_some(status) }
    })
    .await;
    assert_eq!(reader.status()["return_device"], true);
    // Told once, whether the consent check or a refused upload learned it first.
    assert_eq!(reader.events(REVOKED_NOTICE).len(), 1);
    let stored_at_revocation = reader.stored();
    reader.pass_cycles(5).await;
    assert_eq!(
        reader.stored(),
        stored_at_revocation,
        "measured after revocation"
    );
    // Taken after those cycles, so that no request from before the revocation is
    // still under way.
    let activity_at_revocation = device_activity(api, survey, &household.id).await;

    // For good: a restarted reader does not ask again and does not measure.
    reader.process.kill9();
    let reader = MeterReader::start(survey, &setup);
    wait_for(
        "the restarted reader to report the revocation",
        PATIENCE,
        || {
            let started = reader.events("meter reader started").len();
            let notices = reader.events(REVOKED_NOTICE).len();
            async move { (started == 2 && notices == 2).then_some(()) }
        },
    )
    .await;
    reader.pass_cycles(5).await;
    assert_eq!(
        reader.stored(),
        stored_at_revocation,
        "measured after restart"
    );
    assert_eq!(
        device_activity(api, survey, &household.id).await,
        activity_at_revocation,
        "the revoked device still talks to the Data API"
    );

    // The Data API refuses measurements now and has anonymized the household; what was
    // collected stays in the data set under the anonymous household.
    let (status, account) = participant.call(Method::GET, "/account").await;
    assert_eq!(status, 404, "{account}");
    assert_eq!(account["error"], "account_deleted");
    let (_, details) = participant.call(Method::GET, "/household").await;
    assert_eq!(details["anonymized"], true, "{details}");
    assert_eq!(details["consent"]["state"], "REVOKED");
    let exported = stored(&participant, &household).await;
    assert_eq!(
        exported.len(),
        api.export(survey, &household.id).await.len(),
        "the data set holds them all"
    );
    let exported_uuids: HashSet<String> = uuids(&exported).into_iter().collect();
    assert_eq!(exported_uuids.len(), exported.len());
    assert!(exported_uuids.is_superset(&distinct.into_iter().cloned().collect()));
    assert!(exported_uuids.is_subset(&stored_at_revocation));
}

/// The last activity the Data API recorded for the household's device.
async fn device_activity(api: &DataApi, survey: &Survey, household: &str) -> Value {
    let details = api
        .researcher_get(survey, &format!("/management/household/{household}"))
        .await;
    details["measurement_devices"][0]["last_activity"].clone()
}

fn chrono_like(at: &str) -> bool {
    // RFC 3339 in UTC with seconds, as the contract's example: 2026-11-23T10:15:00Z.
    at.len() >= 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_api_outage_of_several_report_cycles_delivers_every_measurement_once() {
    let survey = Survey::new();
    let mut api = DataApi::start(&survey).await;
    let household = register(&survey, &api, "max@example.org").await;
    let participant = Participant::new(&survey, &api, &household.device);
    let (status, _) = participant.call(Method::POST, "/household/consent").await;
    assert_eq!(status, 200);

    let (mut sim, pty) = survey.start_sim(&["--interval-ms", "200", "--power-w", "800"]);
    let setup = reader_setup(
        &survey,
        &api,
        &household,
        vec![(household.consumption.clone(), format!("serial://{pty}"))],
        // Readings go stale quickly, so that the reader stops measuring soon after the
        // simulated meter is switched off at the end.
        vec![("METER_READER_READING_MAX_AGE", "2")],
    );
    let reader = MeterReader::start(&survey, &setup);
    wait_for("the first upload", PATIENCE, || {
        let participant = &participant;
        let meter = &household.consumption;
        async move { (!participant.measurements(meter).await.is_empty()).then_some(()) }
    })
    .await;

    // The Data API goes away (SIGKILL: no drain, an upload may lose its answer) for many
    // report cycles while the reader keeps measuring.
    api.kill9();
    let stored_before = reader.stored().len();
    let failures_before = reader.events("upload failed, will retry").len();
    wait_for(
        "failed report cycles and new measurements",
        PATIENCE,
        || {
            let failures = reader.events("upload failed, will retry").len();
            let stored = reader.stored().len();
            async move {
                (failures >= failures_before + 8 && stored >= stored_before + 15).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        reader.status()["consent"],
        "GRANTED",
        "the cached consent holds through the outage"
    );

    api.restart().await;
    wait_for("uploads to resume", PATIENCE, || {
        let participant = &participant;
        let meter = &household.consumption;
        async move {
            let n = participant.measurements(meter).await.len();
            (n > stored_before).then_some(())
        }
    })
    .await;

    // Switch the meter off, so that the set of measurements becomes final, and wait until
    // the reader has nothing left to send.
    sim.kill9();
    wait_for("the reader to deliver everything", PATIENCE, || {
        let pending = reader.status()["pending_measurements"].as_u64();
        let stale = !reader
            .events("no recent reading: no measurement this cycle")
            .is_empty();
        async move { (stale && pending == Some(0)).then_some(()) }
    })
    .await;
    let taken = reader.stored();
    let exported = stored(&participant, &household).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for uuid in uuids(&exported) {
        *seen.entry(uuid).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "exported more than once: {twice:?}");
    let delivered: HashSet<String> = seen.into_keys().collect();
    assert_eq!(
        delivered.len(),
        taken.len(),
        "taken {} measurements, {} in the data set",
        taken.len(),
        delivered.len()
    );
    assert_eq!(delivered, taken, "taken and delivered measurements differ");
    // The participant endpoint agrees with the export.
    let listed: HashSet<String> = uuids(&participant.measurements(&household.consumption).await)
        .into_iter()
        .collect();
    assert_eq!(listed, taken);
    // Every measurement was acknowledged once: stored now, or (when the Data API died
    // between its commit and its answer) recognised as a duplicate on the retry.
    let acknowledged: u64 = reader
        .events("measurements uploaded")
        .iter()
        .map(|e| e["accepted"].as_u64().unwrap_or(0) + e["duplicates"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(acknowledged as usize, taken.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_unknown_to_the_household_does_not_hold_up_the_others() {
    let survey = Survey::new();
    let api = DataApi::start(&survey).await;
    let household = register(&survey, &api, "lena@example.org").await;
    let participant = Participant::new(&survey, &api, &household.device);
    let (status, _) = participant.call(Method::POST, "/household/consent").await;
    assert_eq!(status, 200);

    // The installer mistyped one meter's uuid.
    let mistyped = "0b4a3e91-1d2c-4f5e-8a6b-7c8d9e0f1a2b";
    let (_grid, grid_pty) = survey.start_sim(&["--interval-ms", "250"]);
    let (_other, other_pty) = survey.start_sim(&["--interval-ms", "250", "--serial", "99"]);
    let setup = reader_setup(
        &survey,
        &api,
        &household,
        vec![
            (mistyped.to_owned(), format!("serial://{other_pty}")),
            (
                household.consumption.clone(),
                format!("serial://{grid_pty}"),
            ),
        ],
        // One measurement per batch would hide the problem: mix both meters in each.
        vec![("METER_READER_BATCH_SIZE", "50")],
    );
    let reader = MeterReader::start(&survey, &setup);
    wait_for(
        "the registered meter's measurements to arrive",
        PATIENCE,
        || {
            let participant = &participant;
            let meter = &household.consumption;
            async move { (participant.measurements(meter).await.len() >= 5).then_some(()) }
        },
    )
    .await;
    let refusals = reader.events(
        "the Data API does not know this meter for the household: its measurements stay on this device and are not sent; check METER_READER_METERS",
    );
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["meter"], mistyped);
    let status = reader.status();
    let meters = status["meters"].as_array().expect("meters in the status");
    let flagged: Vec<&Value> = meters
        .iter()
        .filter(|m| m["refused_by_data_api"] == true)
        .collect();
    assert_eq!(flagged.len(), 1, "{status}");
    assert_eq!(flagged[0]["meter"], mistyped);
    // Kept on the device, not lost.
    assert!(
        status["pending_measurements"].as_u64() > Some(0),
        "{status}"
    );
    // Exports name meters by pseudonym: one meter's measurements, all of the known one.
    let exported = api.export(&survey, &household.id).await;
    let meters: HashSet<&str> = exported
        .iter()
        .filter_map(|m| m["meter"].as_str())
        .collect();
    assert_eq!(meters.len(), 1, "{exported:?}");
    assert!(exported.iter().all(|m| m["meter_type"] == "ELECTRICITY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_without_the_consent_scope_learns_the_consent_from_the_household() {
    let survey = Survey::new();
    let api = DataApi::start(&survey).await;
    let household = register(&survey, &api, "jonas@example.org").await;
    // The participant grants consent with a full certificate; the reader's certificate
    // may only see the household and write measurements.
    let participant = Participant::new(&survey, &api, &household.device);
    let (status, _) = participant.call(Method::POST, "/household/consent").await;
    assert_eq!(status, 200);
    let limited = survey.issue_device_with_scopes(
        "jonas@example.org",
        "jonas-reader",
        Some("household,measurement-write"),
    );
    let (_sim, pty) = survey.start_sim(&["--interval-ms", "250"]);
    let mut setup = reader_setup(
        &survey,
        &api,
        &household,
        vec![(household.consumption.clone(), format!("serial://{pty}"))],
        vec![],
    );
    setup.device = limited;
    let reader = MeterReader::start(&survey, &setup);
    wait_for("measurements from the limited device", PATIENCE, || {
        let participant = &participant;
        let meter = &household.consumption;
        async move { (participant.measurements(meter).await.len() >= 3).then_some(()) }
    })
    .await;
    assert_eq!(reader.status()["consent"], "GRANTED");
    assert!(reader
        .events("consent not fetched, using the last known state")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_the_data_api_does_not_know_retries_without_logging_the_email() {
    const STRANGER: &str = "unregistered.stranger@example.org";
    let survey = Survey::new();
    let api = DataApi::start(&survey).await;
    let household = register(&survey, &api, "known@example.org").await;
    let (_sim, pty) = survey.start_sim(&["--interval-ms", "250"]);
    let mut setup = reader_setup(
        &survey,
        &api,
        &household,
        vec![(household.consumption.clone(), format!("serial://{pty}"))],
        vec![],
    );
    setup.device = survey.issue_device(STRANGER, "stranger");
    let reader = MeterReader::start(&survey, &setup);
    wait_for(
        "the reader to retry the refused consent check",
        PATIENCE,
        || {
            let refusals = reader
                .events("consent not fetched, using the last known state")
                .into_iter()
                .filter(|e| {
                    e["error"]
                        .as_str()
                        .is_some_and(|m| m.contains("unknown_participant"))
                })
                .count();
            async move { (refusals >= 2).then_some(()) }
        },
    )
    .await;
    for log in [setup.log.clone(), survey.dir.path().join("data-api.log")] {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("unknown_participant"), "{}", log.display());
        assert!(
            !text.contains("stranger"),
            "{} names the email",
            log.display()
        );
    }
}
