//! The decoder against real captures from the field (tests/data/libsml-testing).

use std::path::PathBuf;
use std::process::Command;

use meter_reader::obis::Obis;
use meter_reader::sml::{self, DecodeError, FrameError, SmlValue, Transmission};

fn data(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/libsml-testing")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn captures() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/libsml-testing");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".bin").then_some(name)
        })
        .collect();
    names.sort();
    names
}

/// (capture, transmissions that must decode, transmissions that must be rejected).
/// Rejections are transmissions damaged on the line in the capture itself.
const EXPECTED: &[(&str, usize, usize)] = &[
    ("DZG_DVS-7412.2_jmberg.bin", 1, 0),
    ("DZG_DVS-7420.2V.G2_mtr0.bin", 1, 0),
    ("DZG_DVS-7420.2V.G2_mtr1.bin", 4, 0),
    ("DZG_DVS-7420.2V.G2_mtr1_error.bin", 0, 7),
    ("DZG_DVS-7420.2V.G2_mtr2.bin", 3, 0),
    ("DZG_DVS-7420.2V.G2_mtr2_neg.bin", 3, 0),
    ("DrNeuhaus_SMARTY_ix-130.bin", 12, 0),
    ("EMH-ED300L_consumption.bin", 1, 0),
    ("EMH-ED300L_delivery.bin", 2, 0),
    ("EMH_eHZ-GW8E2A500AK2.bin", 16, 0),
    ("EMH_eHZ-HW8E2A5L0EK2P.bin", 12, 0),
    ("EMH_eHZ-HW8E2A5L0EK2P_1.bin", 12, 0),
    ("EMH_eHZ-HW8E2A5L0EK2P_2.bin", 1, 0),
    ("EMH_eHZ-HW8E2AWL0EK2P.bin", 13, 0),
    ("EMH_eHZ-IW8E2A5L0EK2P_with_error.bin", 11, 0),
    ("EMH_eHZ-IW8E2AWL0EK2P.bin", 12, 0),
    ("EMH_eHZ361L5R.bin", 1, 0),
    ("EMH_eHZ361L5R_1.bin", 1, 0),
    ("EMH_mME40-AE6AKF0K0.bin", 12, 0),
    ("EasyMeter_Q3A_A1064V1009.bin", 4, 3),
    ("HOLLEY_DTZ541-BDBA_with_PIN.bin", 2, 0),
    ("HOLLEY_DTZ541-BDBA_without_PIN.bin", 1, 0),
    ("HOLLEY_DTZ541-ZDBA.bin", 7, 0),
    ("ISKRA_MT175_D1A52-V22-K0t.bin", 8, 0),
    ("ISKRA_MT175_eHZ.bin", 10, 0),
    ("ISKRA_MT631-D1A52-K0z-H01_with_PIN.bin", 5, 0),
    ("ISKRA_MT631-D1A52-K0z-H01_without_PIN.bin", 5, 0),
    ("ISKRA_MT631-D2A51-V22-K0z_with_PIN.bin", 4, 0),
    ("ISKRA_MT631-D2A51-V22-K0z_without_PIN.bin", 2, 0),
    ("ISKRA_MT691_eHZ-MS2020.bin", 18, 0),
    ("ITRON_OpenWay-3.HZ.bin", 1, 0),
    ("ITRON_OpenWay-3.HZ_with_PIN.bin", 5, 0),
    ("ITRON_OpenWay-3.HZ_without_PIN.bin", 2, 0),
    ("dzg_dwsb20_2th_2byte.bin", 15, 0),
    ("dzg_dwsb20_2th_3byte.bin", 14, 2),
    ("eBZ_DD3_DD32R06DTA-SMZ1.bin", 4, 0),
    ("eBZ_DD3_DD3BZ06DTA-SMZ1_without_PIN.bin", 2, 0),
];

#[test]
fn every_capture_decodes_as_expected() {
    let names = captures();
    assert_eq!(names.len(), EXPECTED.len(), "a capture without expectation");
    for (name, good, bad) in EXPECTED {
        let results = sml::decode_all(&data(name));
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!((ok, errors.len()), (*good, *bad), "{name}: {errors:?}");
        // A transmission whose CRC checks out is never rejected: any rejection is damage
        // on the line, not a decoder limitation.
        for e in errors {
            assert!(
                matches!(
                    e,
                    DecodeError::Frame(FrameError::CrcMismatch { .. } | FrameError::Truncated(_))
                ),
                "{name}: {e}"
            );
        }
    }
}

#[test]
fn message_crcs_of_good_transmissions_match() {
    for name in captures() {
        for t in sml::decode_all(&data(&name)).into_iter().flatten() {
            for m in &t.messages {
                assert!(m.crc_ok, "{name}: message {:?}", m.transaction_id);
            }
        }
    }
}

fn reading(t: &Transmission, code: &str) -> (f64, Option<&'static str>) {
    let r = t.readings()[&code.parse::<Obis>().unwrap()];
    (r.value, r.unit_symbol())
}

fn first(name: &str) -> Transmission {
    sml::decode_all(&data(name))
        .into_iter()
        .flatten()
        .next()
        .unwrap()
}

#[test]
fn expected_values_of_real_meters() {
    // Iskra MT175
    let t = first("ISKRA_MT175_eHZ.bin");
    assert_eq!(hex::encode(t.server_id().unwrap()), "090149534b000403df63");
    assert_eq!(reading(&t, "0100010800ff"), (22_462_413.6, Some("Wh")));
    assert_eq!(reading(&t, "0100100700ff"), (168.0, Some("W")));
    // Iskra MT691
    let t = first("ISKRA_MT691_eHZ-MS2020.bin");
    assert_eq!(reading(&t, "0100010800ff"), (198_927.3, Some("Wh")));
    assert_eq!(reading(&t, "0100100700ff"), (26.0, Some("W")));
    // eBZ DD3
    let t = first("eBZ_DD3_DD32R06DTA-SMZ1.bin");
    assert_eq!(reading(&t, "0100010800ff"), (13_024_000.0, Some("Wh")));
    assert_eq!(reading(&t, "0100020800ff"), (1_000.0, Some("Wh")));
    // EasyMeter Q3A: four decimals, per-phase power and voltage
    let t = first("EasyMeter_Q3A_A1064V1009.bin");
    assert_eq!(reading(&t, "0100010800ff"), (2_941_646.161_4, Some("Wh")));
    assert_eq!(reading(&t, "0100020800ff"), (110_073.160_3, Some("Wh")));
    assert_eq!(reading(&t, "0100100700ff"), (810.26, Some("W")));
    assert_eq!(reading(&t, "0100200700ff"), (232.5, Some("V")));
    // Holley DTZ541: frequency and current
    let t = first("HOLLEY_DTZ541-ZDBA.bin");
    assert_eq!(reading(&t, "01000e0700ff"), (50.0, Some("Hz")));
    assert_eq!(reading(&t, "01001f0700ff"), (1.06, Some("A")));
    assert_eq!(reading(&t, "0100100700ff"), (460.0, Some("W")));
    // Itron OpenWay 3.HZ
    let t = first("ITRON_OpenWay-3.HZ_with_PIN.bin");
    assert_eq!(reading(&t, "0100010800ff"), (25_892_776.1, Some("Wh")));
    assert_eq!(reading(&t, "0100100700ff"), (542.0, Some("W")));
}

#[test]
fn dzg_power_quirk_only_for_affected_serials() {
    // FILES: "Wrongly encoded power value 356.24 as -299.12" (serial in the affected range)
    let t = first("DZG_DVS-7412.2_jmberg.bin");
    assert_eq!(reading(&t, "0100100700ff"), (356.24, Some("W")));
    assert_eq!(reading(&t, "0100010800ff"), (5_430_157.7, Some("Wh")));
    // A newer DZG generator meter sends real negative power as a 2-byte signed integer.
    let t = first("DZG_DVS-7420.2V.G2_mtr2_neg.bin");
    assert_eq!(reading(&t, "0100100700ff"), (-105.5, Some("W")));
}

#[test]
fn locked_meters_show_fewer_values() {
    let locked = first("ISKRA_MT631-D1A52-K0z-H01_without_PIN.bin").readings();
    let unlocked = first("ISKRA_MT631-D1A52-K0z-H01_with_PIN.bin").readings();
    assert!(unlocked.len() >= locked.len());
}

fn sml_rs_value(v: &sml_rs::parser::common::Value<'_>) -> Option<i128> {
    use sml_rs::parser::common::Value as V;
    Some(match *v {
        V::I8(x) => x.into(),
        V::I16(x) => x.into(),
        V::I32(x) => x.into(),
        V::I64(x) => x.into(),
        V::U8(x) => x.into(),
        V::U16(x) => x.into(),
        V::U32(x) => x.into(),
        V::U64(x) => x.into(),
        _ => return None,
    })
}

/// An independent decoder (the sml-rs crate) finds the same values in every transmission
/// both accept, except where this decoder works around a documented meter firmware bug.
#[test]
fn agrees_with_sml_rs() {
    let mut compared = 0;
    for name in captures() {
        let bytes = data(&name);
        let ours: Vec<Transmission> = sml::decode_all(&bytes).into_iter().flatten().collect();
        let theirs: Vec<Vec<u8>> = sml_rs::transport::decode(&bytes)
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (o, payload) in ours.iter().zip(&theirs) {
            let file = sml_rs::parser::complete::parse(payload).expect("sml-rs parses");
            let their_entries: Vec<_> = file
                .messages
                .iter()
                .flat_map(|m| match &m.message_body {
                    sml_rs::parser::complete::MessageBody::GetListResponse(g) => {
                        g.val_list.iter().collect::<Vec<_>>()
                    }
                    _ => vec![],
                })
                .collect();
            let our_entries: Vec<_> = o.entries().collect();
            assert_eq!(our_entries.len(), their_entries.len(), "{name}");
            for (a, b) in our_entries.iter().zip(their_entries) {
                assert_eq!(a.obj_name, b.obj_name, "{name}");
                assert_eq!(a.unit, b.unit, "{name}");
                assert_eq!(a.scaler, b.scaler, "{name}");
                let ours = match a.value {
                    SmlValue::Int(v) => Some(i128::from(v)),
                    SmlValue::UInt(v) => Some(i128::from(v)),
                    _ => None,
                };
                let theirs = sml_rs_value(&b.value);
                if name == "DZG_DVS-7412.2_jmberg.bin"
                    && a.obis() == Some(meter_reader::obis::SUM_POWER)
                {
                    assert_eq!(ours, theirs.map(|v| v + 65_536), "{name}");
                } else {
                    assert_eq!(ours, theirs, "{name} {}", hex::encode(&a.obj_name));
                }
                compared += 1;
            }
        }
    }
    assert!(compared > 1000, "compared only {compared} entries");
}

#[test]
fn every_transmission_is_found_in_any_chunking() {
    let bytes = data("EMH_eHZ-HW8E2AWL0EK2P.bin");
    let whole = sml::decode_all(&bytes);
    for chunk in [1, 3, 7, 64, 1000] {
        let mut d = sml::StreamDecoder::new();
        let mut found = Vec::new();
        for c in bytes.chunks(chunk) {
            d.push(c, |r| found.push(r));
        }
        assert_eq!(found, whole, "chunk {chunk}");
    }
}

fn decode_cmd(args: &[&str], stdin: &[u8]) -> (i32, Vec<serde_json::Value>) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meter-reader"))
        .arg("decode")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code().unwrap(), lines)
}

#[test]
fn decode_command_binary_and_hex() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/libsml-testing");
    let bin = dir.join("ISKRA_MT175_eHZ.bin");
    let (code, lines) = decode_cmd(&[bin.to_str().unwrap()], b"");
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0]["crc_ok"], true);
    assert_eq!(lines[0]["server_id"], "090149534b000403df63");
    assert_eq!(lines[0]["values"]["0100010800ff"]["value"], 22_462_413.6);
    assert_eq!(lines[0]["values"]["0100010800ff"]["unit"], "Wh");

    let hex = dir.join("ISKRA_MT175_eHZ.hex");
    let (code, hex_lines) = decode_cmd(&["--hex", hex.to_str().unwrap()], b"");
    assert_eq!(code, 0);
    assert_eq!(hex_lines, lines);

    // standard input, with garbage and a damaged transmission
    let mut stream = b"garbage\x1b\x1b\x1b\x1b".to_vec();
    let good = data("EMH_eHZ361L5R.bin");
    let mut bad = good.clone();
    bad[40] ^= 0x01;
    stream.extend_from_slice(&bad);
    stream.extend_from_slice(&[0u8, 0xff, 0x1b]);
    stream.extend_from_slice(&good);
    let (code, lines) = decode_cmd(&["-"], &stream);
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["crc_ok"], false);
    assert!(lines[0]["error"].as_str().unwrap().contains("crc"));
    assert!(lines[0].get("values").is_none());
    assert_eq!(lines[1]["crc_ok"], true);
}

#[test]
fn decode_command_fails_without_transmissions() {
    let (code, lines) = decode_cmd(&[], b"no sml here");
    assert_eq!(code, 1);
    assert!(lines.is_empty());
    let good = data("EMH_eHZ361L5R.bin");
    let (code, lines) = decode_cmd(&[], &good[..good.len() - 6]);
    assert_eq!(code, 1);
    assert!(
        lines.is_empty(),
        "a transmission without end is not reported"
    );
}

#[test]
fn decode_command_prints_live_probe_data_as_it_arrives() {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_meter-reader"))
        .arg("decode")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let capture = data("ISKRA_MT175_eHZ.bin");
    stdin.write_all(&capture[..capture.len() / 2]).unwrap();
    stdin.flush().unwrap();
    // The input stays open, like a probe's: the line must come anyway.
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["crc_ok"], true);
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
