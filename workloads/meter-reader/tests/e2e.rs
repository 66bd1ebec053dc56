//! End to end: `meter-sim` on a pty or TCP port → `meter-reader run` → a mutual-TLS Data
//! API (tests/support) → the measurements there, with consent, outage and crash cases.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::*;

const METER: &str = "6f1c8a52-7a2e-4c7b-9a51-0d3f2b9e4c11";

struct Rig {
    _tmp: tempfile::TempDir,
    pki: Pki,
    data_dir: std::path::PathBuf,
    log: std::path::PathBuf,
}

fn rig() -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::create(&tmp.path().join("pki"));
    Rig {
        data_dir: tmp.path().join("data"),
        log: tmp.path().join("reader.log"),
        pki,
        _tmp: tmp,
    }
}

impl Rig {
    fn setup(
        &self,
        api: &TestApi,
        meters: String,
        extra: Vec<(&'static str, String)>,
    ) -> ReaderSetup<'_> {
        ReaderSetup {
            pki: &self.pki,
            api_url: api.url(),
            meters,
            data_dir: self.data_dir.clone(),
            log: self.log.clone(),
            extra,
        }
    }

    fn stored_uuids(&self) -> HashSet<String> {
        log_events(&self.log, "measurement stored")
            .iter()
            .map(|e| e["uuid"].as_str().unwrap().to_string())
            .collect()
    }
}

fn value(m: &Value, code: &str) -> Option<f64> {
    m["data"]
        .as_array()?
        .iter()
        .find_map(|e| e.get(code).and_then(Value::as_f64))
}

fn assert_no_duplicate_readings(ms: &[Value]) {
    let keys: HashSet<(String, String)> = ms
        .iter()
        .map(|m| (m["meter"].to_string(), m["uuid"].to_string()))
        .collect();
    assert_eq!(keys.len(), ms.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_meter_to_data_api_with_right_values() {
    let rig = rig();
    let api = TestApi::start(&rig.pki, "GRANTED").await;
    let (_sim, pty) = start_sim(&[
        "--power-w",
        "1500",
        "--import-wh",
        "1000000",
        "--interval-ms",
        "250",
    ]);
    let _reader = start_reader(&rig.setup(
        &api,
        format!("{METER}=serial://{pty}"),
        vec![("MOTEY_AGENT_VERSION", "0.9.1".into())],
    ));
    wait_for(60, "three measurements at the Data API", || {
        api.measurements().len() >= 3
    })
    .await;
    for m in api.measurements() {
        assert_eq!(m["meter"], METER);
        let at = m["measured_at"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok() && at.ends_with('Z'),
            "{at}"
        );
        // kW and kWh, converted from the meter's W and Wh
        assert_eq!(value(&m, "0100100700ff"), Some(1.5));
        assert_eq!(value(&m, "0100020800ff"), Some(0.0));
        let energy = value(&m, "0100010800ff").unwrap();
        assert!((1000.0..1001.0).contains(&energy), "{energy}");
        // counters are in 0.1 Wh steps: at most four decimals in kWh
        assert!(
            ((energy * 1e4).round() - energy * 1e4).abs() < 1e-6,
            "{energy}"
        );
        assert!(m["data"].as_array().unwrap().len() == 3, "{m}");
    }
    // FR-09: what runs, and the agent's version as the agent named it.
    let versions = api.with(|s| s.component_versions.clone()).unwrap();
    let own = env!("CARGO_PKG_VERSION");
    assert_eq!(
        versions,
        format!("meter-reader={own},sml-decoder={own},motey-agent=0.9.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probe_with_damaged_frames_and_reconnect() {
    let rig = rig();
    let api = TestApi::start(&rig.pki, "GRANTED").await;
    let (mut sim, addr) = start_sim(&[
        "--tcp",
        "127.0.0.1:0",
        "--interval-ms",
        "200",
        "--corrupt-every",
        "3",
        "--power-w",
        "-700",
        "--model",
        "EHZ",
    ]);
    let _reader = start_reader(&rig.setup(&api, format!("{METER}=tcp://{addr}"), vec![]));
    wait_for(60, "a measurement", || !api.measurements().is_empty()).await;
    wait_for(60, "bad frames counted", || {
        status(&rig.data_dir)["meters"][0]["bad_frames"].as_u64() > Some(0)
    })
    .await;
    let m = &api.measurements()[0];
    assert_eq!(value(m, "0100100700ff"), Some(-0.7));

    // the probe goes away and comes back (on the same port, with other counters)
    sim.kill9();
    let (_sim2, _) = start_sim(&[
        "--tcp",
        &addr,
        "--interval-ms",
        "200",
        "--import-wh",
        "5000",
        "--model",
        "EHZ",
    ]);
    wait_for(60, "measurements after reconnecting", || {
        api.measurements()
            .iter()
            .any(|m| value(m, "0100010800ff").is_some_and(|e| (5.0..5.1).contains(&e)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_measured_until_consent_granted() {
    let rig = rig();
    let api = TestApi::start(&rig.pki, "NOT_GRANTED").await;
    let (_sim, pty) = start_sim(&["--interval-ms", "250"]);
    let _reader = start_reader(&rig.setup(&api, format!("{METER}=serial://{pty}"), vec![]));
    // Several measurement cycles pass (each asks for the consent).
    wait_for(60, "consent checks", || {
        api.with(|s| s.consent_requests) >= 6
    })
    .await;
    assert!(api.measurements().is_empty());
    assert_eq!(api.with(|s| s.posts), 0);
    assert!(rig.stored_uuids().is_empty());
    assert_eq!(status(&rig.data_dir)["consent"], "NOT_GRANTED");

    api.set_consent("GRANTED");
    wait_for(60, "measurements once granted", || {
        !api.measurements().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_stops_for_good_across_restart() {
    let rig = rig();
    let api = TestApi::start(&rig.pki, "GRANTED").await;
    let (_sim, pty) = start_sim(&["--interval-ms", "250"]);
    let setup = rig.setup(&api, format!("{METER}=serial://{pty}"), vec![]);
    let mut reader = start_reader(&setup);
    wait_for(60, "measurements", || !api.measurements().is_empty()).await;

    api.set_consent("REVOKED");
    wait_for(60, "the reader to see the revocation", || {
        status(&rig.data_dir)["consent"] == "REVOKED"
    })
    .await;
    assert_eq!(status(&rig.data_dir)["return_device"], true);
    let stored = rig.stored_uuids().len();
    reader.kill9();

    // Even a Data API that claims GRANTED again does not bring the device back.
    api.set_consent("GRANTED");
    let requests = api.with(|s| s.consent_requests);
    let _reader = start_reader(&setup);
    wait_for(60, "the restarted reader to report the revocation", || {
        log_events(&rig.log, "meter reader started").len() == 2
            && log_events(
                &rig.log,
                "consent revoked: measuring stopped for good; this device should be returned to the research group",
            )
            .len()
                >= 2
    })
    .await;
    // Observe a few measurement cycles of the restarted reader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rig.stored_uuids().len(),
        stored,
        "measured after revocation"
    );
    assert_eq!(
        api.with(|s| s.consent_requests),
        requests,
        "asked again after revocation"
    );
    assert_eq!(status(&rig.data_dir)["consent"], "REVOKED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_of_many_report_cycles_delivers_everything_once() {
    let rig = rig();
    let mut api = TestApi::start(&rig.pki, "GRANTED").await;
    let (_sim, pty) = start_sim(&["--interval-ms", "200"]);
    let _reader = start_reader(&rig.setup(&api, format!("{METER}=serial://{pty}"), vec![]));
    wait_for(60, "first upload", || !api.measurements().is_empty()).await;

    api.stop().await;
    let before = rig.stored_uuids().len();
    let failures_before = log_events(&rig.log, "upload failed, will retry").len();
    wait_for(120, "many failed report cycles and measurements", || {
        log_events(&rig.log, "upload failed, will retry").len() >= failures_before + 8
            && rig.stored_uuids().len() >= before + 15
    })
    .await;
    api.restart().await;

    wait_for(120, "every stored measurement at the Data API", || {
        let at_api: HashSet<String> = api
            .measurements()
            .iter()
            .map(|m| m["uuid"].as_str().unwrap().to_string())
            .collect();
        rig.stored_uuids().is_subset(&at_api)
    })
    .await;
    let ms = api.measurements();
    assert_no_duplicate_readings(&ms);
    let times: HashSet<&str> = ms
        .iter()
        .map(|m| m["measured_at"].as_str().unwrap())
        .collect();
    assert!(times.len() > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_upload_loses_and_duplicates_nothing() {
    let rig = rig();
    let api = TestApi::start(&rig.pki, "GRANTED").await;
    let (_sim, pty) = start_sim(&["--interval-ms", "200"]);
    let setup = rig.setup(
        &api,
        format!("{METER}=serial://{pty}"),
        vec![("METER_READER_BATCH_SIZE", "4".to_string())],
    );
    // The Data API commits each batch, then holds the answer back: a kill in that
    // window is the worst case (stored remotely, not yet deleted locally).
    api.state.lock().unwrap().answer_delay = Duration::from_secs(3);
    let mut reader = start_reader(&setup);
    wait_for(60, "an upload in flight", || api.with(|s| s.in_flight) > 0).await;
    reader.kill9();
    api.state.lock().unwrap().answer_delay = Duration::ZERO;

    let _reader = start_reader(&setup);
    wait_for(120, "every stored measurement at the Data API", || {
        let at_api: HashSet<String> = api
            .measurements()
            .iter()
            .map(|m| m["uuid"].as_str().unwrap().to_string())
            .collect();
        let stored = rig.stored_uuids();
        stored.len() >= 8 && stored.is_subset(&at_api)
    })
    .await;
    // The batch whose answer was lost came again and was recognised.
    assert!(api.with(|s| s.duplicates) >= 1);
    assert_no_duplicate_readings(&api.measurements());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_meter_is_unlocked_by_pin() {
    let rig = rig();
    let api = TestApi::start(&rig.pki, "GRANTED").await;
    let (_sim, pty) = start_sim(&[
        "--interval-ms",
        "250",
        "--pin",
        "2041",
        "--timing-scale",
        "0.5",
    ]);
    let setup = rig.setup(
        &api,
        format!("{METER}=serial://{pty}?model=MT681&pin=2041"),
        vec![
            ("METER_READER_UNLOCK_AFTER", "1".to_string()),
            ("METER_READER_TIMING_SCALE", "0.5".to_string()),
        ],
    );
    let _reader = start_reader(&setup);
    wait_for(60, "energy-only measurements of the locked meter", || {
        api.measurements()
            .iter()
            .any(|m| value(m, "0100010800ff").is_some() && value(m, "0100100700ff").is_none())
    })
    .await;
    wait_for(120, "power after the PIN entry", || {
        api.measurements()
            .iter()
            .any(|m| value(m, "0100100700ff") == Some(0.35))
    })
    .await;
    assert!(status(&rig.data_dir)["meters"][0]["unlock_attempts"].as_u64() >= Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_survey_pki_is_trusted() {
    let rig = rig();
    let other = Pki::create(&rig.data_dir.with_file_name("other-pki"));
    let api = TestApi::start(&rig.pki, "GRANTED").await;
    let (_sim, pty) = start_sim(&["--interval-ms", "250"]);
    let cases = [
        // a device certificate from another CA: the Data API refuses the handshake
        vec![
            ("METER_READER_CLIENT_CERT", other.path("device.pem")),
            ("METER_READER_CLIENT_KEY", other.path("device-key.pem")),
        ],
        // a Data API certificate the device's CA did not sign: the reader refuses it
        vec![("METER_READER_CA_CERT", other.path("ca.pem"))],
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let extra = case
            .into_iter()
            .map(|(k, p)| (k, p.display().to_string()))
            .collect();
        let mut setup = rig.setup(&api, format!("{METER}=serial://{pty}"), extra);
        setup.data_dir = rig.data_dir.join(format!("case{i}"));
        let _reader = start_reader(&setup);
        wait_for(60, "failed consent checks", || {
            log_events(&rig.log, "consent not fetched, using the last known state").len()
                >= 3 * (i + 1)
        })
        .await;
        assert_eq!(api.with(|s| s.consent_requests), 0);
        assert!(api.measurements().is_empty());
        assert_eq!(status(&setup.data_dir)["consent"], "NOT_GRANTED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_probe_unplugged_and_plugged_in_again() {
    let rig = rig();
    let api = TestApi::start(&rig.pki, "GRANTED").await;
    // A stable name for the probe, as udev gives one (/dev/serial/by-id/...).
    let link = rig.data_dir.with_file_name("probe");
    let (mut sim, pty) = start_sim(&["--interval-ms", "200"]);
    std::os::unix::fs::symlink(&pty, &link).unwrap();
    let _reader =
        start_reader(&rig.setup(&api, format!("{METER}=serial://{}", link.display()), vec![]));
    wait_for(60, "a measurement", || !api.measurements().is_empty()).await;

    sim.kill9();
    wait_for(60, "the reader to notice the unplugged probe", || {
        status(&rig.data_dir)["meters"][0]["connected"] == false
    })
    .await;
    let (_sim2, pty2) = start_sim(&["--interval-ms", "200", "--import-wh", "7000"]);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&pty2, &link).unwrap();
    wait_for(60, "measurements from the probe plugged in again", || {
        api.measurements()
            .iter()
            .any(|m| value(m, "0100010800ff").is_some_and(|e| (7.0..7.1).contains(&e)))
    })
    .await;
}
