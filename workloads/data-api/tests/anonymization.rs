//! Property tests of anonymization on revocation (sections 3.1.4, 4.4.2): for random
//! households and densities the displaced location lies within [d_min, d_max] of
//! equation 3.1 on the WGS 84 geodesic, contact details and address are gone, PV systems
//! are normalized, and every measurement is still exported under the household (on sled
//! and on PostgreSQL).

use std::collections::HashSet;
use std::ops::ControlFlow;

use chrono::{NaiveDate, TimeZone, Utc};
use data_api::anonymize::{anonymize_household, geodesic_distance, DistanceBounds};
use data_api::consent;
use data_api::export::{write_measurements, ExportFilter, ExportFormat};
use data_api::model::*;
use data_api::nuts::NutsIndex;
use data_api::privacy::ledger::RevocationLedger;
use data_api::privacy::{DenyList, FileKeyVault, KeyVault, Privacy, SealedStore};
use data_api::store::postgres::PgStore;
use data_api::store::{SledStore, Store};
use proptest::prelude::*;
use rand::SeedableRng;
use serde_json::{json, Value};
use system_tests::postgres::Postgres;
use uuid::Uuid;

/// The store as `serve` builds it: the backend under sealing, with a vault and a ledger
/// in `dir`.
fn sealed_store<S: Store>(backend: S, dir: &std::path::Path) -> (SealedStore<S>, Privacy) {
    let vault: std::sync::Arc<dyn KeyVault> =
        std::sync::Arc::new(FileKeyVault::open(&dir.join("keys")).unwrap());
    let store = SealedStore::new(
        backend,
        vault.clone(),
        RevocationLedger::open(&dir.join("revocations")).unwrap(),
    );
    let privacy = Privacy {
        vault,
        deny_list: std::sync::Arc::new(DenyList::default()),
    };
    (store, privacy)
}

fn location() -> impl Strategy<Value = Location> {
    // Anywhere but the immediate pole caps, where a 20 km circle wraps around the pole.
    (-89.5f64..89.5, -180.0f64..180.0).prop_map(|(latitude, longitude)| Location {
        latitude,
        longitude,
    })
}

fn density() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        0.0f64..50.0,
        0.0f64..5000.0,
        2500.0f64..3500.0, // around the d_min floor
        3000.0f64..10_000.0,
    ]
}

fn pv_system() -> impl Strategy<Value = PhotovoltaicSystem> {
    (0.1f64..100.0, 0.0f64..360.0, 0.0f64..90.0, 0u32..(365 * 40)).prop_map(
        |(power, azimuth, tilt, days)| {
            let date =
                NaiveDate::from_ymd_opt(1990, 1, 1).unwrap() + chrono::Days::new(days as u64);
            PhotovoltaicSystem {
                uuid: Uuid::new_v4(),
                nominal_power: power,
                azimuth,
                tilt,
                installation_date: Some(date),
                installation_year: chrono::Datelike::year(&date),
                generation_meter: None,
            }
        },
    )
}

fn household(location: Location, pv_systems: Vec<PhotovoltaicSystem>) -> Household {
    let device = Uuid::new_v4();
    let now = Utc::now();
    Household {
        id: Uuid::new_v4(),
        user: Some(User {
            name: "Erika Mustermann".into(),
            email: format!("{}@example.org", Uuid::new_v4()),
        }),
        metadata: Some(Metadata {
            children: 1,
            adults: 2,
            employed_adults: 1,
            ev_charger: false,
            heat_pump: true,
            home_battery: false,
        }),
        address: Some(Address {
            street: "Hauptstraße".into(),
            house_number: "1".into(),
            postal_code: "04109".into(),
            city: "Leipzig".into(),
            country: "DE".into(),
        }),
        location: Some(location),
        consent: Consent::default(),
        measurement_devices: vec![MeasurementDevice {
            uuid: device,
            name: None,
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
        pv_systems,
        created_at: now,
        updated_at: now,
        anonymized_at: None,
        sealed: None,
    }
}

fn check_anonymized(
    before: &Household,
    after: &Household,
    bounds: DistanceBounds,
) -> Result<(), TestCaseError> {
    prop_assert!(after.user.is_none(), "contact details removed");
    prop_assert!(after.address.is_none(), "address removed");
    let (from, to) = (before.location.unwrap(), after.location.unwrap());
    let d = geodesic_distance(from, to);
    prop_assert!(
        bounds.contains(d),
        "distance {} outside [{}, {}]",
        d,
        bounds.d_min,
        bounds.d_max
    );
    prop_assert!((-90.0..=90.0).contains(&to.latitude) && (-180.0..=180.0).contains(&to.longitude));
    prop_assert_eq!(after.pv_systems.len(), before.pv_systems.len());
    for (old, new) in before.pv_systems.iter().zip(&after.pv_systems) {
        prop_assert_eq!(new.nominal_power, old.nominal_power.round());
        prop_assert_eq!(new.nominal_power.fract(), 0.0);
        prop_assert_eq!(new.installation_date, None);
        prop_assert_eq!(
            Some(new.installation_year),
            old.installation_date.map(|d| chrono::Datelike::year(&d))
        );
        prop_assert_eq!((new.azimuth, new.tilt), (old.azimuth, old.tilt));
    }
    prop_assert!(after.anonymized_at.is_some());
    // Nothing of the contact details or address survives anywhere in the record.
    let text = serde_json::to_string(after).unwrap();
    let user = before.user.as_ref().unwrap();
    prop_assert!(
        !text.contains(&user.email)
            && !text.contains("Mustermann")
            && !text.contains("Hauptstraße")
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Equation 3.1 bounds hold for every density, and the geodesic distance of the
    /// displaced point lies within them.
    #[test]
    fn displaced_location_lies_within_equation_3_1_bounds(
        location in location(),
        rho in density(),
        pv in proptest::collection::vec(pv_system(), 0..3),
        seed in any::<u64>(),
    ) {
        let bounds = DistanceBounds::for_density(rho);
        prop_assert!(300.0 <= bounds.d_min && bounds.d_min <= 8000.0);
        prop_assert!(1300.0 <= bounds.d_max && bounds.d_max <= 20_000.0);
        prop_assert!(bounds.d_min < bounds.d_max);
        let before = household(location, pv);
        let mut after = before.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        anonymize_household(&mut after, bounds, &mut rng, Utc::now());
        check_anonymized(&before, &after, bounds)?;
        prop_assert_eq!(&after.meters, &before.meters);
        prop_assert_eq!(after.id, before.id);
    }
}

/// One square district around (10..11 E, 50..51 N) with the given density.
fn district_index(rho: f64) -> NutsIndex {
    NutsIndex::from_geojson(
        &json!({
            "type": "FeatureCollection",
            "features": [{
                "type": "Feature",
                "properties": {"nuts3": "DEX01", "name": "Test", "density": rho},
                "geometry": {"type": "Polygon", "coordinates": [[[10.0,50.0],[11.0,50.0],[11.0,51.0],[10.0,51.0],[10.0,50.0]]]}
            }]
        })
        .to_string(),
    )
    .unwrap()
}

/// One revocation case: the inputs the properties below draw.
#[derive(Debug, Clone)]
struct RevocationCase {
    inside: bool,
    offset: (f64, f64),
    rho: f64,
    pv: Vec<PhotovoltaicSystem>,
    count: usize,
    seed: u64,
}

fn revocation_case() -> impl Strategy<Value = RevocationCase> {
    (
        any::<bool>(),
        (0.01f64..0.99, 0.01f64..0.99),
        density(),
        proptest::collection::vec(pv_system(), 0..3),
        1usize..40,
        any::<u64>(),
    )
        .prop_map(|(inside, offset, rho, pv, count, seed)| RevocationCase {
            inside,
            offset,
            rho,
            pv,
            count,
            seed,
        })
}

/// The full revocation path on a real store: bounds from the household's district (or
/// the most conservative ones outside every district), anonymized record persisted,
/// measurements still exported, under the household's export pseudonyms.
fn revocation_keeps_measurements_exported(
    store: &dyn Store,
    privacy: &Privacy,
    case: RevocationCase,
) -> Result<(), TestCaseError> {
    let RevocationCase {
        inside,
        offset,
        rho,
        pv,
        count,
        seed,
    } = case;
    let location = if inside {
        Location {
            latitude: 50.0 + offset.0,
            longitude: 10.0 + offset.1,
        }
    } else {
        Location {
            latitude: -30.0 - offset.0,
            longitude: 140.0 + offset.1,
        }
    };
    let expected_bounds = if inside {
        DistanceBounds::for_density(rho)
    } else {
        DistanceBounds::MOST_CONSERVATIVE
    };
    let nuts = district_index(rho);
    let before = household(location, pv);
    store.create_household(&before).unwrap();
    consent::grant(store, before.id).unwrap();
    let measurements: Vec<Measurement> = (0..count)
        .map(|i| Measurement {
            uuid: Uuid::new_v4(),
            meter: before.meters[i % 2].uuid,
            measured_at: Utc
                .timestamp_opt(1_790_000_000 + 900 * i as i64, 0)
                .unwrap(),
            data: MeasurementData(vec![("0100010800ff".parse().unwrap(), i as f64)]),
        })
        .collect();
    store.ingest(before.id, &measurements).unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (after, report) = consent::revoke(store, &nuts, before.id, &mut rng).unwrap();
    prop_assert_eq!(report.bounds, expected_bounds);
    prop_assert_eq!(report.district.is_some(), inside);
    let stored = store.household(before.id).unwrap().unwrap();
    prop_assert_eq!(&stored, &after);
    prop_assert_eq!(stored.consent.state, ConsentState::Revoked);
    check_anonymized(&before, &stored, expected_bounds)?;
    prop_assert_eq!(
        store
            .household_by_email(&before.email_index_key().unwrap())
            .unwrap(),
        None
    );

    let mut lines = Vec::new();
    write_measurements(
        store,
        privacy,
        &ExportFilter::default(),
        ExportFormat::JsonLines,
        &mut |chunk| {
            lines.extend_from_slice(&chunk);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let exported: Vec<Value> = String::from_utf8(lines)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    prop_assert_eq!(exported.len(), count);
    let uuids: HashSet<String> = exported
        .iter()
        .map(|l| l["uuid"].as_str().unwrap().to_owned())
        .collect();
    let pseudonyms = privacy.export_pseudonyms(&stored).unwrap();
    let expected: HashSet<String> = measurements
        .iter()
        .map(|m| pseudonyms.of("measurement", m.uuid).to_string())
        .collect();
    prop_assert_eq!(uuids, expected);
    let household_id = pseudonyms.of("household", before.id).to_string();
    prop_assert!(exported
        .iter()
        .all(|l| l["household"].as_str() == Some(household_id.as_str())));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn revocation_keeps_measurements_exported_on_sled(case in revocation_case()) {
        let dir = tempfile::tempdir().unwrap();
        let (store, privacy) = sealed_store(SledStore::open(&dir.path().join("db"), 8 << 20).unwrap(), dir.path());
        revocation_keeps_measurements_exported(&store, &privacy, case)?;
    }
}

/// The same property on PostgreSQL: one server for the run, a fresh database per case.
#[test]
fn revocation_keeps_measurements_exported_on_postgres() {
    let server = Postgres::start();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let databases = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&revocation_case(), |case| {
            let n = databases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let url = server.create_database(&format!("case{n}"));
            let dir = tempfile::tempdir().unwrap();
            let (store, privacy) = sealed_store(PgStore::open(&url, 2).unwrap(), dir.path());
            revocation_keeps_measurements_exported(&store, &privacy, case)
        })
        .unwrap();
}
