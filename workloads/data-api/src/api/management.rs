//! Researcher and administrator endpoints: registering participants (FR-06), correcting
//! their details (FR-07), the household overview with consent (FR-08) and device health
//! (FR-09, endpoint 10), and the data set export the survey exists for.

use std::collections::{BTreeMap, HashSet};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::correction::RegistrationUpdate;
use super::participant::parse_time;
use super::{admit, parse_json, read_body, ApiError, ApiQuery, AppState};
use crate::auth::{Researcher, Role, Staff};
use crate::export::{self, ExportFilter, ExportFormat};
use crate::model::{
    all_scopes, optional_whole_number, whole_number, Address, Consent, ConsentState, Household,
    Location, MeasurementDevice, Metadata, Meter, MeterModel, MeterType, PhotovoltaicSystem, Scope,
    User,
};
use crate::store::{Store, StoreError};
use crate::validate::{self, FieldError};

const MAX_MANAGEMENT_BODY: usize = 1 << 20;

/// Registration details of section 3.1.2 as a researcher enters them. Devices, meters and
/// PV systems refer to each other by their position in these lists.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Optional fixed ids make demo set-ups reproducible; normally the server picks them.
    #[serde(default)]
    pub id: Option<Uuid>,
    pub user: User,
    pub address: Address,
    pub location: Location,
    pub metadata: Metadata,
    #[serde(default)]
    pub measurement_devices: Vec<DeviceRegistration>,
    pub meters: Vec<MeterRegistration>,
    #[serde(default)]
    pub pv_systems: Vec<PvRegistration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRegistration {
    #[serde(default)]
    pub uuid: Option<Uuid>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<Scope>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterRegistration {
    #[serde(default)]
    pub uuid: Option<Uuid>,
    #[serde(rename = "type")]
    pub meter_type: MeterType,
    pub model: MeterModel,
    /// Index into `measurement_devices`.
    #[serde(default, deserialize_with = "whole_number")]
    pub measurement_device: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvRegistration {
    pub nominal_power: f64,
    pub azimuth: f64,
    pub tilt: f64,
    pub installation_date: NaiveDate,
    /// Index into `meters`; must be a PV-GENERATION meter.
    #[serde(default, deserialize_with = "optional_whole_number")]
    pub generation_meter: Option<usize>,
}

impl Registration {
    fn into_household(self, now: DateTime<Utc>) -> Result<Household, FieldError> {
        let mut user = self.user;
        user.email = user.email.trim().to_lowercase();
        validate::user("user", &user)?;
        validate::address("address", &self.address)?;
        validate::location("location", &self.location)?;
        validate::metadata("metadata", &self.metadata)?;

        let mut device_specs = self.measurement_devices;
        if device_specs.is_empty() {
            device_specs.push(DeviceRegistration::default());
        }
        if device_specs.len() > 16 {
            return Err(FieldError::new("measurement_devices", "at most 16 devices"));
        }
        let mut devices = Vec::new();
        for (i, d) in device_specs.into_iter().enumerate() {
            let scopes = d.scopes.unwrap_or_else(all_scopes);
            if scopes.is_empty() {
                return Err(FieldError::new(
                    format!("measurement_devices[{i}].scopes"),
                    "a device needs at least one scope",
                ));
            }
            devices.push(MeasurementDevice {
                uuid: d.uuid.unwrap_or_else(Uuid::new_v4),
                name: d.name,
                scopes,
            });
        }
        if self.meters.is_empty() || self.meters.len() > 32 {
            return Err(FieldError::new("meters", "a household has 1 to 32 meters"));
        }
        let mut meters = Vec::new();
        for (i, m) in self.meters.into_iter().enumerate() {
            let device = devices.get(m.measurement_device).ok_or_else(|| {
                FieldError::new(
                    format!("meters[{i}].measurement_device"),
                    format!("no measurement device at index {}", m.measurement_device),
                )
            })?;
            meters.push(Meter {
                uuid: m.uuid.unwrap_or_else(Uuid::new_v4),
                meter_type: m.meter_type,
                model: m.model,
                measurement_device: device.uuid,
            });
        }
        let mut pv_systems = Vec::new();
        for (i, pv) in self.pv_systems.into_iter().enumerate() {
            let prefix = format!("pv_systems[{i}]");
            validate::pv_specification(
                &prefix,
                Some(pv.nominal_power),
                Some(pv.azimuth),
                Some(pv.tilt),
                Some(pv.installation_date),
            )?;
            let generation_meter = pv
                .generation_meter
                .map(|index| generation_meter_at(&meters, index, &prefix))
                .transpose()?;
            pv_systems.push(PhotovoltaicSystem {
                uuid: Uuid::new_v4(),
                nominal_power: pv.nominal_power,
                azimuth: pv.azimuth,
                tilt: pv.tilt,
                installation_date: Some(pv.installation_date),
                installation_year: pv.installation_date.year(),
                generation_meter,
            });
        }
        unique_ids(&devices, &meters)?;
        Ok(Household {
            id: self.id.unwrap_or_else(Uuid::new_v4),
            user: Some(user),
            metadata: Some(self.metadata),
            address: Some(self.address),
            location: Some(self.location),
            consent: Consent::default(),
            measurement_devices: devices,
            meters,
            pv_systems,
            created_at: now,
            updated_at: now,
            anonymized_at: None,
            sealed: None,
        })
    }
}

fn generation_meter_at(meters: &[Meter], index: usize, prefix: &str) -> Result<Uuid, FieldError> {
    match meters.get(index) {
        Some(m) if m.meter_type == MeterType::PvGeneration => Ok(m.uuid),
        Some(_) => Err(FieldError::new(
            format!("{prefix}.generation_meter"),
            format!("meter {index} is not a PV-GENERATION meter"),
        )),
        None => Err(FieldError::new(
            format!("{prefix}.generation_meter"),
            format!("no meter at index {index}"),
        )),
    }
}

fn unique_ids(devices: &[MeasurementDevice], meters: &[Meter]) -> Result<(), FieldError> {
    let mut seen = HashSet::new();
    for (i, d) in devices.iter().enumerate() {
        if !seen.insert(d.uuid) {
            return Err(FieldError::new(
                format!("measurement_devices[{i}].uuid"),
                "repeated uuid",
            ));
        }
    }
    for (i, m) in meters.iter().enumerate() {
        if !seen.insert(m.uuid) {
            return Err(FieldError::new(
                format!("meters[{i}].uuid"),
                "repeated uuid",
            ));
        }
    }
    Ok(())
}

#[derive(Serialize)]
pub struct DeviceHealth {
    pub uuid: Uuid,
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    pub component_versions: BTreeMap<String, String>,
    pub last_activity: Option<DateTime<Utc>>,
    /// The newest measurement of any of the device's meters.
    pub last_measurement: Option<DateTime<Utc>>,
    pub health: Health,
}

/// What the Status frontend (FR-09) highlights: whether a device reports as the survey
/// expects it to, judged against its household's consent and the report cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Consent granted, in contact and delivering new measurements.
    Reporting,
    /// Not heard of, or nothing new measured, for longer than two report cycles.
    Silent,
    /// In contact, not measuring because consent is not granted yet.
    WaitingForConsent,
    /// Registered, but the device has never contacted the Data API.
    NeverSeen,
    /// Consent revoked: the device stops and goes back to the research group.
    Retired,
}

/// Why a device counts as silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SilenceCause {
    /// The device has not contacted the Data API.
    NoContact,
    /// The device is in contact but delivers no new measurements (a probe or meter
    /// problem rather than the network).
    NoMeasurements,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub state: HealthState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<SilenceCause>,
    /// For a silent device: its last contact, or its newest measurement (the grant if it
    /// has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silent_since: Option<DateTime<Utc>>,
}

impl Health {
    fn of(state: HealthState) -> Health {
        Health {
            state,
            cause: None,
            silent_since: None,
        }
    }

    fn silent(cause: SilenceCause, since: Option<DateTime<Utc>>) -> Health {
        Health {
            state: HealthState::Silent,
            cause: Some(cause),
            silent_since: since,
        }
    }

    /// Judges a device by its household's consent, its last contact and its newest
    /// measurement at `now`; `silent_after` is two report cycles. A device whose consent
    /// was just granted is given that long for its first measurement.
    pub fn assess(
        consent: &Consent,
        last_activity: Option<DateTime<Utc>>,
        last_measurement: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        silent_after: chrono::Duration,
    ) -> Health {
        let stale = |at: Option<DateTime<Utc>>| at.is_none_or(|at| now - at > silent_after);
        match consent.state {
            ConsentState::Revoked => Health::of(HealthState::Retired),
            ConsentState::NotGranted => match last_activity {
                None => Health::of(HealthState::NeverSeen),
                Some(_) if stale(last_activity) => {
                    Health::silent(SilenceCause::NoContact, last_activity)
                }
                Some(_) => Health::of(HealthState::WaitingForConsent),
            },
            ConsentState::Granted => {
                if stale(last_activity) {
                    return Health::silent(
                        SilenceCause::NoContact,
                        last_activity.or(consent.granted_at),
                    );
                }
                // Measuring is expected from the grant on, so the grant counts as the
                // start of the wait; the answer names the newest measurement if any.
                if stale(last_measurement.max(consent.granted_at)) {
                    return Health::silent(
                        SilenceCause::NoMeasurements,
                        last_measurement.or(consent.granted_at),
                    );
                }
                Health::of(HealthState::Reporting)
            }
        }
    }
}

/// The clock and threshold device health is judged by.
#[derive(Debug, Clone, Copy)]
pub struct HealthClock {
    pub now: DateTime<Utc>,
    pub silent_after: chrono::Duration,
}

impl HealthClock {
    pub fn new(report_interval: std::time::Duration) -> HealthClock {
        HealthClock {
            now: Utc::now(),
            silent_after: chrono::Duration::from_std(report_interval * 2)
                .unwrap_or(chrono::Duration::MAX),
        }
    }
}

#[derive(Serialize)]
pub struct MeterHealth {
    pub uuid: Uuid,
    #[serde(rename = "type")]
    pub meter_type: MeterType,
    pub model: MeterModel,
    pub measurement_device: Uuid,
    pub last_measurement: Option<DateTime<Utc>>,
}

/// A household as the management endpoints show it. Contact details and the address are
/// only in the single-household view (researchers), never in the overview.
#[derive(Serialize)]
pub struct HouseholdView {
    pub id: Uuid,
    pub consent: Consent,
    pub anonymized: bool,
    pub anonymized_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Option<User>>,
    /// The participant's name (none once anonymized): the Status frontend names to whom a
    /// device belongs (section 4.2.2), also for administrators, who get no contact details.
    pub participant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Option<Address>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Option<Location>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Option<Metadata>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pv_systems: Option<Vec<PhotovoltaicSystem>>,
    /// The first (usually only) device, for set-ups that know of one device per household.
    pub measurement_device: Option<Uuid>,
    pub measurement_devices: Vec<DeviceHealth>,
    pub meters: Vec<MeterHealth>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl HouseholdView {
    pub fn build(
        store: &dyn Store,
        h: Household,
        details: bool,
        clock: HealthClock,
    ) -> Result<HouseholdView, StoreError> {
        let mut meters = Vec::with_capacity(h.meters.len());
        for m in &h.meters {
            meters.push(MeterHealth {
                uuid: m.uuid,
                meter_type: m.meter_type,
                model: m.model,
                measurement_device: m.measurement_device,
                last_measurement: store.last_measurement(m.uuid)?,
            });
        }
        let mut devices = Vec::with_capacity(h.measurement_devices.len());
        for d in &h.measurement_devices {
            let status = store.device_status(d.uuid)?;
            let last_measurement = meters
                .iter()
                .filter(|m| m.measurement_device == d.uuid)
                .filter_map(|m| m.last_measurement)
                .max();
            devices.push(DeviceHealth {
                uuid: d.uuid,
                name: d.name.clone(),
                scopes: d.scopes.clone(),
                health: Health::assess(
                    &h.consent,
                    status.last_activity,
                    last_measurement,
                    clock.now,
                    clock.silent_after,
                ),
                component_versions: status.component_versions,
                last_activity: status.last_activity,
                last_measurement,
            });
        }
        Ok(HouseholdView {
            id: h.id,
            anonymized: h.anonymized_at.is_some(),
            anonymized_at: h.anonymized_at,
            consent: h.consent,
            participant: h.user.as_ref().map(|user| user.name.clone()),
            user: details.then_some(h.user),
            address: details.then_some(h.address),
            location: details.then_some(h.location),
            metadata: details.then_some(h.metadata),
            pv_systems: details.then_some(h.pv_systems),
            measurement_device: h.measurement_devices.first().map(|d| d.uuid),
            measurement_devices: devices,
            meters,
            created_at: h.created_at,
            updated_at: h.updated_at,
        })
    }
}

/// FR-06.
pub async fn create_household(
    State(state): State<AppState>,
    researcher: Result<Researcher, ApiError>,
    body: Body,
) -> Result<Response, ApiError> {
    let (_, body) = admit(researcher, body).await?;
    let bytes = read_body(body, MAX_MANAGEMENT_BODY).await?;
    let registration: Registration = parse_json(&bytes)?;
    let household = registration.into_household(Utc::now())?;
    let clock = HealthClock::new(state.report_interval);
    let view = state
        .blocking(move |store| {
            store.create_household(&household)?;
            Ok(HouseholdView::build(store, household, true, clock)?)
        })
        .await?;
    tracing::info!(household = %view.id, meters = view.meters.len(), "household registered");
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    consent: Option<ConsentState>,
}

/// Endpoint 10 (FR-08, FR-09): every household with its consent and device health.
/// Researchers also get each participant's name and email (they register them and must
/// find them again); administrators only the participant's name, no contact details.
pub async fn list_households(
    State(state): State<AppState>,
    Staff(role): Staff,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let clock = HealthClock::new(state.report_interval);
    let households = state
        .blocking(move |store| {
            let mut views = Vec::new();
            for h in store.households()? {
                if params.consent.is_some_and(|c| c != h.consent.state) {
                    continue;
                }
                let user = (role == Role::Researcher).then(|| h.user.clone());
                let mut view = HouseholdView::build(store, h, false, clock)?;
                view.user = user;
                views.push(view);
            }
            Ok(views)
        })
        .await?;
    tracing::debug!(
        role = role.as_str(),
        count = households.len(),
        "households listed"
    );
    Ok(Json(json!({
        "households": households,
        "now": clock.now,
        "report_interval_seconds": state.report_interval.as_secs_f64(),
        "silent_after_seconds": clock.silent_after.as_seconds_f64(),
    })))
}

/// Who the token belongs to and the settings the frontends show: signing in checks the
/// token here, and the Status frontend states the silence threshold it highlights by.
pub async fn session(State(state): State<AppState>, Staff(role): Staff) -> Json<Value> {
    let clock = HealthClock::new(state.report_interval);
    Json(json!({
        "role": role.as_str(),
        "now": clock.now,
        "report_interval_seconds": state.report_interval.as_secs_f64(),
        "silent_after_seconds": clock.silent_after.as_seconds_f64(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

fn household_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::invalid_field("id", format!("{id:?} is not a UUID")))
}

pub async fn get_household(
    State(state): State<AppState>,
    _: Researcher,
    Path(id): Path<String>,
) -> Result<Json<HouseholdView>, ApiError> {
    let id = household_id(&id)?;
    let clock = HealthClock::new(state.report_interval);
    let view = state
        .blocking(move |store| {
            let h = store.household(id)?.ok_or_else(|| {
                ApiError::not_found(
                    "unknown_household",
                    format!("household {id} does not exist"),
                )
            })?;
            Ok(HouseholdView::build(store, h, true, clock)?)
        })
        .await?;
    Ok(Json(view))
}

/// FR-07.
pub async fn update_household(
    State(state): State<AppState>,
    researcher: Result<Researcher, ApiError>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<HouseholdView>, ApiError> {
    let (_, body) = admit(researcher, body).await?;
    let id = household_id(&id)?;
    let bytes = read_body(body, MAX_MANAGEMENT_BODY).await?;
    let update: RegistrationUpdate = parse_json(&bytes)?;
    let clock = HealthClock::new(state.report_interval);
    let view = state
        .blocking(move |store| {
            for _ in 0..16 {
                let current = store.household(id)?.ok_or_else(|| {
                    ApiError::not_found(
                        "unknown_household",
                        format!("household {id} does not exist"),
                    )
                })?;
                let mut next = current.clone();
                update.apply(&mut next, Utc::now())?;
                update.check_against_store(store)?;
                match store.replace_household(&current, &next) {
                    Ok(()) => return Ok(HouseholdView::build(store, next, true, clock)?),
                    Err(StoreError::HouseholdChanged(_)) => continue,
                    Err(e) => return Err(update.locate_duplicate(e)),
                }
            }
            Err(ApiError::conflict(
                "concurrent_update",
                "the household kept changing; try again",
            ))
        })
        .await?;
    tracing::info!(household = %id, "registration details corrected");
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    format: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// Comma-separated household ids.
    household: Option<String>,
}

fn export_format(format: Option<&str>) -> Result<ExportFormat, ApiError> {
    match format.unwrap_or("csv") {
        "csv" => Ok(ExportFormat::Csv),
        "jsonl" | "ndjson" => Ok(ExportFormat::JsonLines),
        other => Err(ApiError::invalid_field(
            "format",
            format!("{other:?} is not an export format (csv or jsonl)"),
        )),
    }
}

fn export_response(format: ExportFormat, name: &str, body: Body) -> Response {
    let (content_type, extension) = match format {
        ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        ExportFormat::JsonLines => ("application/x-ndjson", "jsonl"),
    };
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.{extension}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// The data set: measurements with their household and meter, streamed as CSV (one row
/// per data point) or JSON lines (one line per measurement). Anonymized households are
/// included under their anonymous id.
pub async fn export_measurements(
    State(state): State<AppState>,
    _: Researcher,
    ApiQuery(params): ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    let format = export_format(params.format.as_deref())?;
    let households = params
        .household
        .as_deref()
        .map(|list| {
            // Exactly as the OpenAPI document states it: hyphenated uuids, commas.
            list.split(',')
                .map(|s| match Uuid::parse_str(s) {
                    Ok(uuid) if s.len() == 36 => Ok(uuid),
                    _ => Err(ApiError::invalid_field(
                        "household",
                        format!("{s:?} is not a hyphenated UUID"),
                    )),
                })
                .collect::<Result<HashSet<Uuid>, _>>()
        })
        .transpose()?;
    let filter = ExportFilter {
        from: parse_time("from", params.from.as_deref())?,
        to: parse_time("to", params.to.as_deref())?,
        households,
    };
    let body =
        export::measurements_body(state.store.clone(), state.privacy.clone(), filter, format);
    tracing::info!(format = ?format, "measurement export started");
    Ok(export_response(format, "measurements", body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HouseholdExportParams {
    format: Option<String>,
}

/// Registration details without contact details or address, for correlating measurements.
pub async fn export_households(
    State(state): State<AppState>,
    _: Researcher,
    ApiQuery(params): ApiQuery<HouseholdExportParams>,
) -> Result<Response, ApiError> {
    let format = export_format(params.format.as_deref())?;
    let privacy = state.privacy.clone();
    let bytes = state
        .blocking(move |store| Ok(export::households(&store.households()?, &privacy, format)?))
        .await?;
    Ok(export_response(format, "households", Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valid() -> Value {
        json!({
            "user": {"name": "Erika Mustermann", "email": "erika@example.org"},
            "address": {"street": "Augustusplatz", "house_number": "10", "postal_code": "04109", "city": "Leipzig"},
            "location": {"latitude": 51.3397, "longitude": 12.3731},
            "metadata": {"children": 2, "adults": 2, "employed_adults": 1, "ev_charger": true, "heat_pump": false, "home_battery": true},
            "meters": [{"type": "ELECTRICITY", "model": "MT681"}, {"type": "PV-GENERATION", "model": "EHZ"}],
            "pv_systems": [{"nominal_power": 9.62, "azimuth": 180.0, "tilt": 30.0, "installation_date": "2019-05-17", "generation_meter": 1}]
        })
    }

    fn register(bytes: &[u8]) -> Result<Household, ApiError> {
        let registration: Registration = parse_json(bytes)?;
        Ok(registration.into_household(Utc::now())?)
    }

    #[test]
    fn the_valid_registration_is_accepted() {
        let h = register(&serde_json::to_vec(&valid()).unwrap()).unwrap();
        assert_eq!(h.meters.len(), 2);
        assert_eq!(h.pv_systems[0].generation_meter, Some(h.meters[1].uuid));
        assert_eq!(h.measurement_devices.len(), 1);
        assert_eq!(h.address.unwrap().country, "DE");
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Two report cycles of an hour.
    fn assess(
        consent: &Consent,
        activity: Option<&str>,
        measurement: Option<&str>,
        now: &str,
    ) -> Health {
        Health::assess(
            consent,
            activity.map(at),
            measurement.map(at),
            at(now),
            chrono::Duration::hours(2),
        )
    }

    #[test]
    fn devices_are_silent_after_two_report_cycles_without_contact_or_measurements() {
        let granted = Consent {
            state: ConsentState::Granted,
            granted_at: Some(at("2026-11-01T08:00:00Z")),
            revoked_at: None,
        };
        let now = "2026-11-01T12:00:00Z";
        let fresh = assess(
            &granted,
            Some("2026-11-01T11:59:00Z"),
            Some("2026-11-01T11:45:00Z"),
            now,
        );
        assert_eq!(fresh.state, HealthState::Reporting);
        // In contact, but the newest measurement is three hours old: a probe problem.
        let stuck = assess(
            &granted,
            Some("2026-11-01T11:59:00Z"),
            Some("2026-11-01T09:00:00Z"),
            now,
        );
        assert_eq!(stuck.state, HealthState::Silent);
        assert_eq!(stuck.cause, Some(SilenceCause::NoMeasurements));
        assert_eq!(stuck.silent_since, Some(at("2026-11-01T09:00:00Z")));
        let offline = assess(
            &granted,
            Some("2026-11-01T09:30:00Z"),
            Some("2026-11-01T09:30:00Z"),
            now,
        );
        assert_eq!(offline.cause, Some(SilenceCause::NoContact));
        assert_eq!(offline.silent_since, Some(at("2026-11-01T09:30:00Z")));
        // Exactly two cycles is not yet longer than two cycles.
        let edge = assess(
            &granted,
            Some("2026-11-01T10:00:00Z"),
            Some("2026-11-01T10:00:00Z"),
            now,
        );
        assert_eq!(edge.state, HealthState::Reporting);
        // Just granted: the first measurement may take up to two cycles.
        let just_granted = Consent {
            granted_at: Some(at("2026-11-01T11:30:00Z")),
            ..granted.clone()
        };
        let waiting = assess(&just_granted, Some("2026-11-01T11:30:00Z"), None, now);
        assert_eq!(waiting.state, HealthState::Reporting);
    }

    #[test]
    fn consent_decides_what_is_expected_of_a_device() {
        let now = "2026-11-01T12:00:00Z";
        let not_granted = Consent::default();
        assert_eq!(
            assess(&not_granted, None, None, now).state,
            HealthState::NeverSeen
        );
        assert_eq!(
            assess(&not_granted, Some("2026-11-01T11:00:00Z"), None, now).state,
            HealthState::WaitingForConsent
        );
        let gone = assess(&not_granted, Some("2026-10-01T11:00:00Z"), None, now);
        assert_eq!(gone.state, HealthState::Silent);
        assert_eq!(gone.cause, Some(SilenceCause::NoContact));
        let revoked = Consent {
            state: ConsentState::Revoked,
            granted_at: Some(at("2026-10-01T00:00:00Z")),
            revoked_at: Some(at("2026-10-02T00:00:00Z")),
        };
        assert_eq!(
            assess(&revoked, Some("2026-10-02T00:00:00Z"), None, now).state,
            HealthState::Retired
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn registration_parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = register(&bytes);
        }

        /// Replacing any one leaf of a valid registration yields either a household or a
        /// 400 that names a field.
        #[test]
        fn mutated_registrations_name_the_field(
            path in prop_oneof![
                Just(vec!["user", "email"]), Just(vec!["user", "name"]),
                Just(vec!["address", "postal_code"]), Just(vec!["address", "country"]),
                Just(vec!["location", "latitude"]), Just(vec!["location", "longitude"]),
                Just(vec!["metadata", "adults"]), Just(vec!["metadata", "employed_adults"]),
                Just(vec!["metadata", "ev_charger"]), Just(vec!["meters"]), Just(vec!["pv_systems"]),
            ],
            replacement in prop_oneof![
                Just(Value::Null), any::<bool>().prop_map(Value::from), any::<i64>().prop_map(Value::from),
                (-1e6f64..1e6).prop_map(Value::from), "\\PC{0,12}".prop_map(Value::from),
                Just(json!([])), Just(json!({})),
            ],
        ) {
            let mut body = valid();
            let mut target = &mut body;
            for key in &path {
                target = &mut target[*key];
            }
            *target = replacement;
            match register(&serde_json::to_vec(&body).unwrap()) {
                Ok(h) => prop_assert!(!h.meters.is_empty()),
                Err(e) => {
                    prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                    prop_assert!(e.field.as_deref().is_some_and(|f| f.starts_with(path[0])), "{:?} for {:?}", e, path);
                }
            }
        }
    }
}
