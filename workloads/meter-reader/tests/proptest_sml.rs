//! Property tests: no input panics the decoder, and what the encoder writes decodes back.
//! Case counts are bounded so that CI stays fast.

use meter_reader::sml::message::{
    CloseResponse, GetListResponse, ListEntry, Message, MessageBody, OpenResponse, SmlTime,
    SmlValue,
};
use meter_reader::sml::{self, transport};
use proptest::prelude::*;

fn corpus_sample() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/libsml-testing/EMH_eHZ-HW8E2AWL0EK2P.bin"
    );
    std::fs::read(path).unwrap()
}

fn value() -> impl Strategy<Value = SmlValue> {
    prop_oneof![
        any::<bool>().prop_map(SmlValue::Bool),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(SmlValue::Bytes),
        any::<i64>().prop_map(SmlValue::Int),
        any::<u64>().prop_map(SmlValue::UInt),
        (-200i64..200).prop_map(SmlValue::Int),
    ]
}

fn time() -> impl Strategy<Value = Option<SmlTime>> {
    prop_oneof![
        Just(None),
        any::<u32>().prop_map(|s| Some(SmlTime::SecIndex(s))),
        any::<u32>().prop_map(|s| Some(SmlTime::Timestamp(s))),
        (any::<u32>(), any::<i16>(), any::<i16>()).prop_map(|(t, l, s)| Some(
            SmlTime::LocalTimestamp {
                timestamp: t,
                local_offset: l,
                season_offset: s
            }
        )),
    ]
}

fn entry() -> impl Strategy<Value = ListEntry> {
    (
        proptest::collection::vec(any::<u8>(), 6),
        proptest::option::of(any::<u64>()),
        time(),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<i8>()),
        value(),
        // An empty optional octet string is the same byte as an omitted one (0x01).
        proptest::option::of(proptest::collection::vec(any::<u8>(), 1..20)),
    )
        .prop_map(
            |(obj_name, status, val_time, unit, scaler, value, value_signature)| ListEntry {
                obj_name,
                status,
                val_time,
                unit,
                scaler,
                value,
                value_signature,
            },
        )
}

fn transmission() -> impl Strategy<Value = Vec<Message>> {
    (
        proptest::collection::vec(any::<u8>(), 1..12),
        proptest::collection::vec(entry(), 0..20),
        time(),
    )
        .prop_map(|(server_id, entries, sensor_time)| {
            let msg = |n: u8, body| Message {
                transaction_id: vec![n, 0x42],
                group_no: 0,
                abort_on_error: 0,
                body,
                crc_ok: true,
            };
            vec![
                msg(
                    1,
                    MessageBody::OpenResponse(OpenResponse {
                        req_file_id: vec![1, 2, 3],
                        server_id: server_id.clone(),
                        sml_version: Some(1),
                        ..Default::default()
                    }),
                ),
                msg(
                    2,
                    MessageBody::GetListResponse(GetListResponse {
                        server_id,
                        act_sensor_time: sensor_time,
                        entries,
                        ..Default::default()
                    }),
                ),
                msg(3, MessageBody::CloseResponse(CloseResponse::default())),
            ]
        })
}

fn encode(messages: &[Message]) -> Vec<u8> {
    let payload: Vec<u8> = messages.iter().flat_map(Message::encode).collect();
    transport::encode_transmission(&payload)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = sml::decode_all(&bytes);
    }

    #[test]
    fn arbitrary_payload_in_a_valid_frame_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let tx = transport::encode_transmission(&payload);
        let results = sml::decode_all(&tx);
        prop_assert_eq!(results.len(), 1);
    }

    #[test]
    fn payload_that_looks_like_sml_never_panics(
        payload in proptest::collection::vec(
            prop_oneof![Just(0x76u8), Just(0x77), Just(0x01), Just(0x00), Just(0x62), Just(0x72),
                        Just(0x8f), Just(0xff), Just(0x65), Just(0x59), any::<u8>()],
            0..1024)
    ) {
        let tx = transport::encode_transmission(&payload);
        let _ = sml::decode_all(&tx);
    }

    #[test]
    fn damaged_real_captures_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..32),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = corpus_sample();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len()) + 1);
        let _ = sml::decode_all(&bytes);
    }

    #[test]
    fn encoded_transmissions_decode_back(messages in transmission()) {
        let tx = encode(&messages);
        let decoded = sml::decode_all(&tx);
        prop_assert_eq!(decoded.len(), 1);
        let t = decoded.into_iter().next().unwrap().unwrap();
        prop_assert_eq!(t.messages, messages);
    }

    #[test]
    fn chunking_does_not_matter(messages in transmission(), garbage in proptest::collection::vec(any::<u8>(), 0..64), chunk in 1usize..300) {
        let mut stream = garbage.clone();
        stream.extend(encode(&messages));
        stream.extend(&garbage);
        stream.extend(encode(&messages));
        let whole = sml::decode_all(&stream);
        let mut d = sml::StreamDecoder::new();
        let mut found = Vec::new();
        for c in stream.chunks(chunk) {
            d.push(c, |r| found.push(r));
        }
        prop_assert_eq!(&found, &whole);
        prop_assert!(whole.iter().filter(|r| r.is_ok()).count() >= 2);
    }
}
