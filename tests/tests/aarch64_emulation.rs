//! The Raspberry Pi's build, smoke-tested under emulation: the aarch64 binaries,
//! cross-compiled, run under qemu-user beside native ones. The agent reports its version
//! and starts with the host's Docker Engine; the reader decodes the whole capture corpus
//! exactly as the native build does, and reads a native meter simulator over TCP and
//! uploads to a native Data API. Emulation says nothing about a Pi's speed: figures are in
//! BENCHMARKS.md, not here.

use std::path::PathBuf;
use std::process::Stdio;

use reqwest::Method;
use serde_json::Value;
use system_tests::cross::{aarch64_binaries, elf_machine_of, emulated, Machine};
use system_tests::survey::{
    obis_value, registration, survey_binaries, DataApi, MeterReader, Participant, Process,
    ReaderSetup, Survey, PATIENCE,
};
use system_tests::{free_port, wait_for};

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[test]
fn the_binaries_are_built_for_aarch64() {
    let binaries = aarch64_binaries();
    for binary in [
        &binaries.motey,
        &binaries.meter_reader,
        &binaries.meter_sim,
        &binaries.data_api,
    ] {
        assert_eq!(
            elf_machine_of(binary),
            Some(Machine::Aarch64),
            "{}",
            binary.display()
        );
    }
}

#[test]
fn the_agent_reports_its_version() {
    let output = emulated(&aarch64_binaries().motey)
        .arg("--version")
        .output()
        .expect("run motey --version under qemu");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("motey {VERSION}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_with_the_hosts_docker_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (port, token, node_id) = (free_port(), "emulated-token-0123456789", "agent-aarch64");
    let log = dir.path().join("agent.log");
    let mut command = emulated(&aarch64_binaries().motey);
    command
        .arg("start")
        .env("MOTEY_GENERAL_DATA_DIR", dir.path().join("data"))
        .env("MOTEY_GENERAL_NODE_ID", node_id)
        .env("MOTEY_WEBSERVER_IP", "127.0.0.1")
        .env("MOTEY_WEBSERVER_PORT", port.to_string())
        .env("MOTEY_WEBSERVER_TOKEN", token)
        .env("MOTEY_ZEROMQ_PEER_PORT", free_port().to_string())
        .env("MOTEY_MQTT_PORT", free_port().to_string())
        .env("MOTEY_VAL_ENDPOINT", "unix:///var/run/docker.sock")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut agent = Process::spawn("motey (aarch64)", &mut command);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    let health: Value = wait_for("/health of the emulated agent", PATIENCE, || {
        let exited = !agent.running();
        assert!(!exited, "the agent exited:\n{}", read(&log));
        let request = client.get(format!("{base}/health")).send();
        async move {
            let response = request.await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            response.json().await.ok()
        }
    })
    .await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node_id"], node_id);
    assert_eq!(health["version"], VERSION);

    // Operating means its health checks pass, the container engine's ping among them: the
    // emulated agent speaks to the host's Docker Engine through its socket.
    wait_for("the emulated agent to be operating", PATIENCE, || {
        let request = client.get(format!("{base}/v1/nodes")).bearer_auth(token);
        async move {
            let nodes: Value = request.send().await.ok()?.json().await.ok()?;
            let me = nodes.as_array()?.iter().find(|n| n["this_node"] == true)?;
            (me["phase"] == "operating").then_some(())
        }
    })
    .await;
    agent.terminate();
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The captures of real meters the decoder's own tests use.
fn corpus() -> Vec<PathBuf> {
    let dir =
        system_tests::docker::repo_root().join("workloads/meter-reader/tests/data/libsml-testing");
    let mut captures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "bin"))
        .collect();
    captures.sort();
    captures
}

#[test]
fn decode_of_every_capture_matches_the_native_build() {
    let captures = corpus();
    assert!(
        captures.len() > 30,
        "the corpus has {} captures",
        captures.len()
    );
    let mut transmissions = 0;
    for capture in &captures {
        let native = std::process::Command::new(&survey_binaries().meter_reader)
            .arg("decode")
            .arg(capture)
            .output()
            .expect("run the native meter-reader decode");
        let emulated = emulated(&aarch64_binaries().meter_reader)
            .arg("decode")
            .arg(capture)
            .output()
            .expect("run meter-reader decode under qemu");
        let name = capture.file_name().unwrap().to_string_lossy();
        assert_eq!(emulated.status.code(), native.status.code(), "{name}");
        assert!(
            emulated.stdout == native.stdout,
            "{name}: the aarch64 output differs\nnative:\n{}\naarch64:\n{}",
            String::from_utf8_lossy(&native.stdout),
            String::from_utf8_lossy(&emulated.stdout)
        );
        transmissions += native.stdout.iter().filter(|&&b| b == b'\n').count();
    }
    // The corpus decodes to a few hundred transmissions: equal outputs are not equal silence.
    assert!(transmissions > 200, "{transmissions} transmissions decoded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_uploads_what_it_reads_from_a_native_meter() {
    let survey = Survey::new();
    let api = DataApi::start(&survey).await;
    let device = survey.issue_device("erika@example.org", "erika");
    let answer = api
        .register(&survey, &registration("erika@example.org"))
        .await;
    let meter = answer["meters"][0]["uuid"]
        .as_str()
        .expect("meter uuid")
        .to_owned();
    let (_sim, address) = survey.start_sim(&[
        "--tcp",
        "127.0.0.1:0",
        "--model",
        "MT681",
        "--interval-ms",
        "250",
        "--power-w",
        "1500",
        "--import-wh",
        "1000000",
    ]);
    let setup = ReaderSetup {
        meters: vec![(meter.clone(), format!("tcp://{address}?model=MT681"))],
        api_url: api.url(),
        device: device.clone(),
        ca: survey.ca(),
        data_dir: survey.dir.path().join("reader"),
        log: survey.log_file("meter-reader.log"),
        extra: vec![],
    };
    let reader = MeterReader::start_as(emulated(&aarch64_binaries().meter_reader), &setup);
    let participant = Participant::new(&survey, &api, &device);
    let (status, consent) = participant.call(Method::POST, "/household/consent").await;
    assert_eq!(status, 200, "{consent}");

    wait_for(
        "measurements of the emulated reader at the Data API",
        PATIENCE,
        || {
            let participant = &participant;
            let meter = &meter;
            async move { (participant.measurements(meter).await.len() >= 3).then_some(()) }
        },
    )
    .await;
    let measurements = participant.measurements(&meter).await;
    let taken = reader.stored();
    for m in &measurements {
        // The simulator's 1500 W and 1,000,000 Wh, converted by the reader to kW and kWh.
        assert_eq!(obis_value(m, "0100100700ff"), Some(1.5), "{m}");
        let energy = obis_value(m, "0100010800ff").expect("import energy");
        assert!((1000.0..1001.0).contains(&energy), "{m}");
        let uuid = m["uuid"].as_str().expect("uuid");
        assert!(taken.contains(uuid), "{uuid} is not one the reader took");
    }
    let distinct: std::collections::HashSet<&str> = measurements
        .iter()
        .filter_map(|m| m["uuid"].as_str())
        .collect();
    assert_eq!(
        distinct.len(),
        measurements.len(),
        "a measurement stored twice"
    );
}
