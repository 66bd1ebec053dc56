//! The `Store` contract, run against both backends: sled in a temporary directory and a
//! real PostgreSQL server started for the test.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use data_api::model::*;
use data_api::store::postgres::PgStore;
use data_api::store::{
    IngestOutcome, RevokedCertificate, SeriesQuery, SledStore, Store, StoreError,
};
use system_tests::postgres::Postgres;
use uuid::Uuid;

/// What keeps a store's data alive: its directory or its server.
enum Backend {
    Sled(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] Postgres),
}

fn sled() -> (Box<dyn Store>, Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 16 << 20).unwrap();
    (Box::new(store), Backend::Sled(dir))
}

fn postgres() -> (Box<dyn Store>, Backend) {
    let server = Postgres::start();
    let store = PgStore::open(&server.url(), 4).unwrap();
    (Box::new(store), Backend::Postgres(server))
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sled() {
                let (store, _keep) = super::sled();
                super::$name(store.as_ref());
            }

            #[test]
            fn postgres() {
                let (store, _keep) = super::postgres();
                super::$name(store.as_ref());
            }
        }
    )*};
}

on_both_stores!(
    ingest_is_idempotent_and_needs_consent,
    email_is_unique_and_freed_on_removal,
    meters_and_devices_belong_to_one_household,
    a_measurement_uuid_belongs_to_one_meter,
    series_pages_through_a_time_range,
    scans_visit_meters_in_time_order,
    certificates_stay_with_their_first_household,
    device_activity_keeps_the_latest_time,
    stale_replacements_are_refused,
    revoked_certificates_keep_the_first_time,
    sealed_households_are_found_by_their_digest,
);

fn household(email: &str) -> Household {
    let device = Uuid::new_v4();
    Household {
        id: Uuid::new_v4(),
        user: Some(User {
            name: "Erika Mustermann".into(),
            email: email.into(),
        }),
        metadata: None,
        address: None,
        location: Some(Location {
            latitude: 51.3397,
            longitude: 12.3731,
        }),
        consent: Consent::default(),
        measurement_devices: vec![MeasurementDevice {
            uuid: device,
            name: Some("pi-1".into()),
            scopes: all_scopes(),
        }],
        meters: vec![
            Meter {
                uuid: Uuid::new_v4(),
                meter_type: MeterType::Electricity,
                model: MeterModel::MT681,
                measurement_device: device,
            },
            Meter {
                uuid: Uuid::new_v4(),
                meter_type: MeterType::PvGeneration,
                model: MeterModel::EHZ,
                measurement_device: device,
            },
        ],
        pv_systems: vec![],
        created_at: Utc::now(),
        updated_at: Utc::now(),
        anonymized_at: None,
        sealed: None,
    }
}

fn consenting(store: &dyn Store, email: &str) -> Household {
    let h = household(email);
    store.create_household(&h).unwrap();
    let mut granted = h.clone();
    granted.consent.grant(Utc::now()).unwrap();
    store.replace_household(&h, &granted).unwrap();
    granted
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn measurement(meter: Uuid, time: &str) -> Measurement {
    Measurement {
        uuid: Uuid::new_v4(),
        meter,
        measured_at: at(time),
        data: MeasurementData(vec![
            ("0100010800ff".parse().unwrap(), 12345.6),
            ("0100100700ff".parse().unwrap(), -230.0),
        ]),
    }
}

fn outcome(accepted: usize, duplicates: usize) -> IngestOutcome {
    IngestOutcome {
        accepted,
        duplicates,
    }
}

fn all_of(store: &dyn Store, meter: Uuid) -> Vec<Measurement> {
    let query = SeriesQuery {
        from: None,
        to: None,
        after: None,
        limit: 1000,
    };
    store.series(meter, &query).unwrap().measurements
}

fn ingest_is_idempotent_and_needs_consent(store: &dyn Store) {
    let h = household("a@example.org");
    store.create_household(&h).unwrap();
    let meter = h.meters[0].uuid;
    let batch = vec![
        measurement(meter, "2026-11-23T10:15:00Z"),
        measurement(meter, "2026-11-23T10:30:00Z"),
    ];
    assert!(matches!(
        store.ingest(h.id, &batch),
        Err(StoreError::Consent(ConsentError::NotGranted))
    ));
    let mut granted = h.clone();
    granted.consent.grant(Utc::now()).unwrap();
    store.replace_household(&h, &granted).unwrap();
    assert_eq!(store.ingest(h.id, &batch).unwrap(), outcome(2, 0));
    assert_eq!(store.ingest(h.id, &batch).unwrap(), outcome(0, 2));
    // A uuid twice in one batch is stored once; a retry mixed with new ones.
    let fresh = measurement(meter, "2026-11-23T10:45:00Z");
    let mixed = vec![batch[0].clone(), fresh.clone(), fresh.clone()];
    assert_eq!(store.ingest(h.id, &mixed).unwrap(), outcome(1, 2));
    assert_eq!(all_of(store, meter).len(), 3);
    assert_eq!(
        store.last_measurement(meter).unwrap(),
        Some(fresh.measured_at)
    );
    assert_eq!(store.last_measurement(h.meters[1].uuid).unwrap(), None);

    let mut revoked = granted.clone();
    revoked.consent.revoke(Utc::now()).unwrap();
    store.replace_household(&granted, &revoked).unwrap();
    let late = vec![measurement(meter, "2026-11-23T11:00:00Z")];
    assert!(matches!(
        store.ingest(h.id, &late),
        Err(StoreError::Consent(ConsentError::Revoked))
    ));
    assert!(matches!(
        store.ingest(Uuid::new_v4(), &late),
        Err(StoreError::UnknownHousehold(_))
    ));
    assert_eq!(all_of(store, meter).len(), 3);
}

fn email_is_unique_and_freed_on_removal(store: &dyn Store) {
    let h = household("a@example.org");
    store.create_household(&h).unwrap();
    assert!(matches!(
        store.create_household(&household("A@example.org")),
        Err(StoreError::EmailTaken)
    ));
    let key = h.email_index_key().unwrap();
    assert_eq!(store.household_by_email(&key).unwrap(), Some(h.id));
    // The store matches the key exactly and does not interpret it.
    assert_eq!(store.household_by_email("A@example.org").unwrap(), None);

    let mut renamed = h.clone();
    renamed.user.as_mut().unwrap().email = "b@example.org".into();
    store.replace_household(&h, &renamed).unwrap();
    assert_eq!(store.household_by_email(&key).unwrap(), None);
    assert_eq!(
        store
            .household_by_email(&renamed.email_index_key().unwrap())
            .unwrap(),
        Some(h.id)
    );
    let other = household("c@example.org");
    store.create_household(&other).unwrap();
    let mut stealing = other.clone();
    stealing.user.as_mut().unwrap().email = "B@example.org".into();
    assert!(matches!(
        store.replace_household(&other, &stealing),
        Err(StoreError::EmailTaken)
    ));
    assert_eq!(store.household(other.id).unwrap(), Some(other.clone()));

    let mut anonymized = renamed.clone();
    anonymized.user = None;
    store.replace_household(&renamed, &anonymized).unwrap();
    assert_eq!(
        store
            .household_by_email(&renamed.email_index_key().unwrap())
            .unwrap(),
        None
    );
    store.create_household(&household("b@example.org")).unwrap();
    store.create_household(&household("a@example.org")).unwrap();
}

fn meters_and_devices_belong_to_one_household(store: &dyn Store) {
    let first = household("a@example.org");
    store.create_household(&first).unwrap();
    assert!(matches!(
        store.create_household(&first),
        Err(StoreError::DuplicateId {
            kind: "household",
            ..
        })
    ));
    let mut second = household("b@example.org");
    second.meters[1].uuid = first.meters[0].uuid;
    match store.create_household(&second) {
        Err(StoreError::DuplicateId { kind, uuid }) => {
            assert_eq!((kind, uuid), ("meter", first.meters[0].uuid));
        }
        other => panic!("expected a duplicate meter, got {other:?}"),
    }
    // Nothing of the refused household was stored, its email included.
    assert_eq!(store.household(second.id).unwrap(), None);
    assert_eq!(store.household_by_email("b@example.org").unwrap(), None);

    let mut third = household("c@example.org");
    third.measurement_devices[0].uuid = first.measurement_devices[0].uuid;
    assert!(matches!(
        store.create_household(&third),
        Err(StoreError::DuplicateId {
            kind: "measurement device",
            ..
        })
    ));
    // A correction cannot take another household's meter either.
    let fourth = household("d@example.org");
    store.create_household(&fourth).unwrap();
    let mut taking = fourth.clone();
    taking.meters.push(first.meters[1].clone());
    assert!(matches!(
        store.replace_household(&fourth, &taking),
        Err(StoreError::DuplicateId { kind: "meter", .. })
    ));
    assert_eq!(store.households().unwrap().len(), 2);
}

fn a_measurement_uuid_belongs_to_one_meter(store: &dyn Store) {
    let h = consenting(store, "a@example.org");
    let stored = measurement(h.meters[0].uuid, "2026-11-23T10:15:00Z");
    store.ingest(h.id, std::slice::from_ref(&stored)).unwrap();
    let mut moved = stored.clone();
    moved.meter = h.meters[1].uuid;
    let batch = vec![measurement(h.meters[1].uuid, "2026-11-23T10:00:00Z"), moved];
    match store.ingest(h.id, &batch) {
        Err(StoreError::MeasurementOfOtherMeter { index, uuid }) => {
            assert_eq!((index, uuid), (1, stored.uuid));
        }
        other => panic!("expected a measurement of another meter, got {other:?}"),
    }
    // The batch was refused whole.
    assert!(all_of(store, h.meters[1].uuid).is_empty());
}

fn series_pages_through_a_time_range(store: &dyn Store) {
    let h = consenting(store, "a@example.org");
    let meter = h.meters[0].uuid;
    // Across months, from the first to the last an upload can name (RFC 3339 years).
    let times = [
        "0000-06-01T00:00:00Z",
        "1999-03-01T00:00:00Z",
        "2026-10-31T23:59:59.999999Z",
        "2026-11-01T00:00:00Z",
        "2026-11-23T10:15:00Z",
        "2027-02-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
    ];
    let batch: Vec<Measurement> = times.iter().map(|t| measurement(meter, t)).collect();
    assert_eq!(store.ingest(h.id, &batch).unwrap(), outcome(7, 0));
    assert_eq!(all_of(store, meter), batch);

    let mut query = SeriesQuery {
        from: Some(at("2026-10-31T23:59:59.999999Z")),
        to: Some(at("2027-02-01T00:00:00Z")),
        after: None,
        limit: 2,
    };
    let page = store.series(meter, &query).unwrap();
    assert_eq!(page.measurements, batch[2..4]);
    query.after = page.next;
    let page = store.series(meter, &query).unwrap();
    assert_eq!(page.measurements, batch[4..5]);
    assert!(page.next.is_none());
}

fn scans_visit_meters_in_time_order(store: &dyn Store) {
    let h = consenting(store, "a@example.org");
    let g = consenting(store, "b@example.org");
    let mut all = Vec::new();
    for (household, meter) in [(&h, h.meters[0].uuid), (&g, g.meters[1].uuid)] {
        let batch: Vec<Measurement> = ["2026-12-01T00:00:00Z", "2026-11-01T00:00:00Z"]
            .iter()
            .map(|t| measurement(meter, t))
            .collect();
        store.ingest(household.id, &batch).unwrap();
        all.extend(batch);
    }
    all.sort_by_key(|m| (m.meter, m.measured_at, m.uuid));
    let mut visited = Vec::new();
    store
        .scan_measurements(None, None, None, &mut |m| {
            visited.push(m);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(visited, all);

    let mut in_november = Vec::new();
    store
        .scan_measurements(
            Some(h.meters[0].uuid),
            Some(at("2026-11-01T00:00:00Z")),
            Some(at("2026-12-01T00:00:00Z")),
            &mut |m| {
                in_november.push(m);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert_eq!(in_november.len(), 1);
    assert_eq!(in_november[0].meter, h.meters[0].uuid);

    let mut first = Vec::new();
    store
        .scan_measurements(None, None, None, &mut |m| {
            first.push(m);
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(first, all[..1]);
}

fn certificates_stay_with_their_first_household(store: &dyn Store) {
    let h = household("a@example.org");
    let g = household("b@example.org");
    store.create_household(&h).unwrap();
    store.create_household(&g).unwrap();
    let fingerprint = [7u8; 32];
    assert_eq!(store.certificate_binding(&fingerprint).unwrap(), None);
    store.bind_certificate(&fingerprint, h.id).unwrap();
    store.bind_certificate(&fingerprint, g.id).unwrap();
    assert_eq!(store.certificate_binding(&fingerprint).unwrap(), Some(h.id));
}

fn device_activity_keeps_the_latest_time(store: &dyn Store) {
    let h = household("a@example.org");
    store.create_household(&h).unwrap();
    let device = h.measurement_devices[0].uuid;
    assert_eq!(
        store.device_status(device).unwrap(),
        DeviceStatus::default()
    );
    let versions = BTreeMap::from([("meter-reader".to_owned(), "0.1.0".to_owned())]);
    store
        .record_device_activity(device, at("2026-11-23T10:00:00Z"), Some(&versions))
        .unwrap();
    store
        .record_device_activity(device, at("2026-11-23T09:00:00Z"), None)
        .unwrap();
    store.flush().unwrap();
    let status = store.device_status(device).unwrap();
    assert_eq!(status.last_activity, Some(at("2026-11-23T10:00:00Z")));
    assert_eq!(status.component_versions, versions);
}

fn stale_replacements_are_refused(store: &dyn Store) {
    let h = household("a@example.org");
    store.create_household(&h).unwrap();
    let mut first = h.clone();
    first.consent.grant(Utc::now()).unwrap();
    store.replace_household(&h, &first).unwrap();
    let mut second = h.clone();
    second.user.as_mut().unwrap().name = "Erika Musterfrau".into();
    assert!(matches!(
        store.replace_household(&h, &second),
        Err(StoreError::HouseholdChanged(_))
    ));
    assert!(matches!(
        store.replace_household(&household("b@example.org"), &second),
        Err(StoreError::UnknownHousehold(_))
    ));
    assert_eq!(store.household(h.id).unwrap(), Some(first));
}

fn revoked_certificates_keep_the_first_time(store: &dyn Store) {
    assert_eq!(store.revoked_certificates().unwrap(), vec![]);
    let (lost, stolen) = ([1u8; 32], [2u8; 32]);
    store
        .revoke_certificate(&lost, at("2026-11-23T10:00:00Z"))
        .unwrap();
    store
        .revoke_certificate(&stolen, at("2026-11-23T11:00:00Z"))
        .unwrap();
    store
        .revoke_certificate(&lost, at("2026-11-24T08:00:00Z"))
        .unwrap();
    let mut revoked = store.revoked_certificates().unwrap();
    revoked.sort_by_key(|r| r.fingerprint);
    assert_eq!(
        revoked,
        vec![
            RevokedCertificate {
                fingerprint: lost,
                revoked_at: at("2026-11-23T10:00:00Z"),
            },
            RevokedCertificate {
                fingerprint: stolen,
                revoked_at: at("2026-11-23T11:00:00Z"),
            },
        ]
    );
}

/// What `SealedStore` hands a backend: no personal part in clear, the keyed email digest
/// as the index key. The backend keeps both as they are.
fn sealed_households_are_found_by_their_digest(store: &dyn Store) {
    let mut sealed = household("a@example.org");
    sealed.user = None;
    sealed.location = None;
    sealed.sealed = Some(SealedPersonal {
        email_index: Some("9f".repeat(32)),
        ciphertext: "00".repeat(40),
    });
    store.create_household(&sealed).unwrap();
    assert_eq!(store.household(sealed.id).unwrap(), Some(sealed.clone()));
    assert_eq!(
        store.household_by_email(&"9f".repeat(32)).unwrap(),
        Some(sealed.id)
    );
    assert_eq!(store.household_by_email("a@example.org").unwrap(), None);
    let mut other = household("b@example.org");
    other.user = None;
    other.sealed = sealed.sealed.clone();
    assert!(matches!(
        store.create_household(&other),
        Err(StoreError::EmailTaken)
    ));
}

/// Managed instances want TLS: the server's certificate is verified against the given
/// CA, and a connection string asking for TLS without one is refused, not downgraded.
#[test]
fn postgres_over_tls_verifies_the_server() {
    use data_api::pki;
    use data_api::store::postgres::Transport;
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    for pki_dir in [&ours, &theirs] {
        pki::init(pki_dir, 30).unwrap();
        pki::issue_server(pki_dir, &["127.0.0.1".into()], 30, false).unwrap();
    }
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    let server = Postgres::start_tls_only(
        &read(ours.join(pki::SERVER_CERT)),
        &read(ours.join(pki::SERVER_KEY)),
    );

    let verified = Transport::tls_with_ca(&ours.join(pki::CA_CERT)).unwrap();
    let store = PgStore::open_with(&server.url(), 2, &verified).unwrap();
    let h = household("tls@example.org");
    store.create_household(&h).unwrap();
    assert_eq!(store.household(h.id).unwrap(), Some(h));

    assert!(
        PgStore::open(&server.url(), 1).is_err(),
        "plain TCP is refused"
    );
    let foreign = Transport::tls_with_ca(&theirs.join(pki::CA_CERT)).unwrap();
    assert!(PgStore::open_with(&server.url(), 1, &foreign).is_err());
    let asks_for_tls = format!("{}?sslmode=require", server.url());
    assert!(matches!(
        PgStore::open(&asks_for_tls, 1),
        Err(StoreError::TlsSetup(_))
    ));
}
