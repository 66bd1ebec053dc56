//! Endpoints 1–9 of table 4.2: what a measurement device (and through it the participant)
//! may see and do, always for its own household.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{admit, read_body, ApiError, ApiQuery, AppState, MAX_BATCH, MAX_BODY_BYTES};
use crate::auth::Participant;
use crate::consent;
use crate::model::{Consent, Measurement, MeasurementData, ObisCode, Scope};
use crate::store::{IngestOutcome, SeriesCursor, SeriesQuery};

pub async fn account(p: Participant) -> Result<Json<Value>, ApiError> {
    p.require(Scope::Account)?;
    match &p.household.user {
        Some(user) => Ok(Json(json!({"name": user.name, "email": user.email}))),
        None => Err(ApiError::not_found(
            "account_deleted",
            "the contact details were deleted when consent was revoked",
        )),
    }
}

pub async fn household(p: Participant) -> Result<Json<Value>, ApiError> {
    p.require(Scope::Household)?;
    let h = &p.household;
    Ok(Json(json!({
        "id": h.id,
        "consent": h.consent,
        "metadata": h.metadata,
        "address": h.address,
        "location": h.location,
        "anonymized": h.anonymized_at.is_some(),
        "anonymized_at": h.anonymized_at,
        "created_at": h.created_at,
    })))
}

pub async fn consent(p: Participant) -> Result<Json<Consent>, ApiError> {
    p.require(Scope::Consent)?;
    Ok(Json(p.household.consent))
}

/// FR-01.
pub async fn grant_consent(
    State(state): State<AppState>,
    p: Participant,
) -> Result<Json<Consent>, ApiError> {
    p.require(Scope::Consent)?;
    let id = p.household.id;
    let household = state
        .blocking(move |store| consent::grant(store, id).map_err(ApiError::from))
        .await?;
    tracing::info!(household = %household.id, "consent granted");
    Ok(Json(household.consent))
}

/// FR-02, FR-03: revocation and anonymization are one durable transaction.
pub async fn revoke_consent(
    State(state): State<AppState>,
    p: Participant,
) -> Result<Json<Consent>, ApiError> {
    p.require(Scope::Consent)?;
    let id = p.household.id;
    let nuts = state.nuts.clone();
    let (household, _) = state
        .blocking(move |store| {
            consent::revoke(store, &nuts, id, &mut rand::thread_rng()).map_err(ApiError::from)
        })
        .await?;
    Ok(Json(household.consent))
}

#[derive(Serialize)]
struct DeviceView {
    uuid: Uuid,
    name: Option<String>,
    scopes: Vec<Scope>,
    component_versions: std::collections::BTreeMap<String, String>,
    last_activity: Option<DateTime<Utc>>,
}

pub async fn measurement_devices(
    State(state): State<AppState>,
    p: Participant,
) -> Result<Json<Value>, ApiError> {
    p.require(Scope::Household)?;
    let household = p.household;
    let devices = state
        .blocking(move |store| {
            let mut devices = Vec::new();
            for d in &household.measurement_devices {
                let status = store.device_status(d.uuid)?;
                devices.push(DeviceView {
                    uuid: d.uuid,
                    name: d.name.clone(),
                    scopes: d.scopes.clone(),
                    component_versions: status.component_versions,
                    last_activity: status.last_activity,
                });
            }
            Ok(devices)
        })
        .await?;
    Ok(Json(json!({ "measurement_devices": devices })))
}

pub async fn meters(
    State(state): State<AppState>,
    p: Participant,
) -> Result<Json<Value>, ApiError> {
    p.require(Scope::Household)?;
    let household = p.household;
    let meters = state
        .blocking(move |store| {
            let mut meters = Vec::new();
            for m in &household.meters {
                meters.push(json!({
                    "uuid": m.uuid,
                    "type": m.meter_type,
                    "model": m.model,
                    "measurement_device": m.measurement_device,
                    "last_measurement": store.last_measurement(m.uuid)?,
                }));
            }
            Ok(meters)
        })
        .await?;
    Ok(Json(json!({ "meters": meters })))
}

pub async fn pv_systems(p: Participant) -> Result<Json<Value>, ApiError> {
    p.require(Scope::Household)?;
    Ok(Json(json!({ "pv_systems": p.household.pv_systems })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub fn parse_time(field: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::invalid_field(field, format!("{v:?} is not an RFC 3339 time: {e}"))
                })
        })
        .transpose()
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value)
        .map_err(|_| ApiError::invalid_field(field, format!("{value:?} is not a UUID")))
}

/// FR-05: a meter's measurements in a time range, paged (`cursor` from `next_cursor`).
pub async fn meter_measurements(
    State(state): State<AppState>,
    p: Participant,
    Path(meter): Path<String>,
    ApiQuery(params): ApiQuery<SeriesParams>,
) -> Result<Json<Value>, ApiError> {
    p.require(Scope::MeasurementRead)?;
    let meter = parse_uuid("uuid", &meter)?;
    if p.household.meter(meter).is_none() {
        return Err(ApiError::forbidden(
            "foreign_meter",
            format!("meter {meter} does not belong to this household"),
        ));
    }
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_BATCH).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("must be between 1 and {MAX_BATCH}"),
        ));
    }
    let after = params
        .cursor
        .as_deref()
        .map(|c| {
            SeriesCursor::decode(c).ok_or_else(|| {
                ApiError::invalid_field("cursor", "not a cursor returned by this endpoint")
            })
        })
        .transpose()?;
    let query = SeriesQuery {
        from: parse_time("from", params.from.as_deref())?,
        to: parse_time("to", params.to.as_deref())?,
        after,
        limit,
    };
    let page = state
        .blocking(move |store| Ok(store.series(meter, &query)?))
        .await?;
    Ok(Json(json!({
        "measurements": page.measurements,
        "next_cursor": page.next.map(|c| c.encode()),
    })))
}

/// Subtask (A): a device delivers a batch of measurements. The whole batch is validated,
/// checked against consent and meter ownership, written atomically and flushed
/// before the answer; uuids already stored for the same meter are counted as duplicates.
pub async fn post_measurements(
    State(state): State<AppState>,
    p: Result<Participant, ApiError>,
    body: Body,
) -> Result<Json<IngestOutcome>, ApiError> {
    let (p, body) = admit(p, body).await?;
    p.require(Scope::MeasurementWrite)?;
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let batch = parse_batch(&bytes)?;
    if let Err(e) = p.household.consent.accepts_measurements() {
        return Err(ApiError::forbidden(e.code(), e.to_string()));
    }
    for (i, m) in batch.iter().enumerate() {
        if p.household.meter(m.meter).is_none() {
            return Err(ApiError::forbidden(
                "foreign_meter",
                format!("meter {} does not belong to this household", m.meter),
            )
            .with_field(format!("measurements[{i}].meter")));
        }
    }
    let household = p.household.id;
    let count = batch.len();
    let outcome = state
        .blocking(move |store| Ok(store.ingest(household, &batch)?))
        .await?;
    tracing::debug!(
        household = %household,
        batch = count,
        accepted = outcome.accepted,
        duplicates = outcome.duplicates,
        "measurements stored"
    );
    Ok(Json(outcome))
}

/// Validates a batch by hand so every error names its exact place, e.g.
/// `measurements[3].data[0]`.
pub fn parse_batch(bytes: &[u8]) -> Result<Vec<Measurement>, ApiError> {
    let root: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_json",
            e.to_string(),
        )
    })?;
    let Value::Object(mut root) = root else {
        return Err(ApiError::invalid_field(
            "body",
            "expected an object {\"measurements\": [...]}",
        ));
    };
    if let Some(key) = root.keys().find(|k| *k != "measurements") {
        return Err(ApiError::invalid_field(key.clone(), "unknown field"));
    }
    let Some(Value::Array(items)) = root.remove("measurements") else {
        return Err(ApiError::invalid_field(
            "measurements",
            "expected a list of measurements",
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid_field(
            "measurements",
            "the batch is empty",
        ));
    }
    if items.len() > MAX_BATCH {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_measurements",
            format!(
                "a batch holds at most {MAX_BATCH} measurements, this one {}",
                items.len()
            ),
        )
        .with_field("measurements"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_measurement(i, item))
        .collect()
}

fn parse_measurement(i: usize, item: Value) -> Result<Measurement, ApiError> {
    let at = |name: &str| format!("measurements[{i}].{name}");
    let Value::Object(fields) = item else {
        return Err(ApiError::invalid_field(
            format!("measurements[{i}]"),
            "expected an object",
        ));
    };
    if let Some(key) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "uuid" | "meter" | "measured_at" | "data"))
    {
        return Err(ApiError::invalid_field(at(key), "unknown field"));
    }
    let text = |name: &str| -> Result<&str, ApiError> {
        fields
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid_field(at(name), "missing or not a string"))
    };
    let uuid = parse_uuid(&at("uuid"), text("uuid")?)?;
    let meter = parse_uuid(&at("meter"), text("meter")?)?;
    let measured_at =
        parse_time(&at("measured_at"), Some(text("measured_at")?))?.expect("a value was given");
    let Some(Value::Array(points)) = fields.get("data") else {
        return Err(ApiError::invalid_field(at("data"), "missing or not a list"));
    };
    if points.is_empty() {
        return Err(ApiError::invalid_field(at("data"), "holds no data points"));
    }
    let mut data = Vec::with_capacity(points.len());
    for (j, point) in points.iter().enumerate() {
        let field = || format!("measurements[{i}].data[{j}]");
        let entry = match point {
            Value::Object(map) if map.len() == 1 => map.iter().next().expect("one entry"),
            _ => {
                return Err(ApiError::invalid_field(
                    field(),
                    "expected a single-key object {\"<obis hex code>\": number}",
                ))
            }
        };
        let code: ObisCode = entry
            .0
            .parse()
            .map_err(|e: crate::model::InvalidObisCode| {
                ApiError::invalid_field(field(), e.to_string())
            })?;
        let value = entry.1.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
            ApiError::invalid_field(field(), format!("the value of {code} is not a number"))
        })?;
        data.push((code, value));
    }
    Ok(Measurement {
        uuid,
        meter,
        measured_at,
        data: MeasurementData(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            "[0-9a-fA-F:.TZ-]{0,40}".prop_map(Value::from),
            Just(Value::from("0100010800ff")),
            Just(Value::from(Uuid::new_v4().to_string())),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("measurements".to_owned()),
                        Just("uuid".to_owned()),
                        Just("meter".to_owned()),
                        Just("measured_at".to_owned()),
                        Just("data".to_owned()),
                        "[a-f0-9]{0,12}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn batch_parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_batch(&bytes);
        }

        #[test]
        fn batch_parser_names_a_field_or_accepts(value in arbitrary_json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            match parse_batch(&bytes) {
                Ok(batch) => {
                    prop_assert!(!batch.is_empty() && batch.len() <= MAX_BATCH);
                    prop_assert!(batch.iter().all(|m| !m.data.0.is_empty()));
                }
                Err(e) => prop_assert!(e.status.is_client_error() && e.field.is_some(), "{:?}", e),
            }
        }

        #[test]
        fn component_versions_parser_never_panics(s in "\\PC{0,80}") {
            let _ = crate::auth::parse_component_versions(&s);
        }

        #[test]
        fn obis_parser_accepts_exactly_lowercase_hex(s in "[0-9a-fA-Fx ]{0,14}") {
            let ok = s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            prop_assert_eq!(s.parse::<ObisCode>().is_ok(), ok);
        }
    }

    #[test]
    fn valid_batch_round_trips() {
        let meter = Uuid::new_v4();
        let body = serde_json::json!({"measurements": [{
            "uuid": Uuid::new_v4(), "meter": meter, "measured_at": "2026-11-23T10:15:00+01:00",
            "data": [{"0100010800ff": 12345.6}, {"0100100700ff": -230}]
        }]});
        let batch = parse_batch(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(batch[0].meter, meter);
        assert_eq!(
            batch[0].measured_at.to_rfc3339(),
            "2026-11-23T09:15:00+00:00"
        );
        assert_eq!(batch[0].data.0[1].1, -230.0);
    }
}
