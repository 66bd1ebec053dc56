//! The data set export: measurements streamed straight from the store as CSV or JSON
//! lines, so an export of any size needs only a chunk of memory at a time.
//!
//! Exports never carry the ids the database keeps: households, meters, devices, PV
//! systems and measurements appear under pseudonyms ([`ExportPseudonyms`]) that change
//! when the household revokes its consent, so no export taken before a revocation links
//! to the anonymized record. Locations are coarsened ([`crate::privacy::coarsen`]).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::ops::ControlFlow;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::model::{Household, Location, MeasurementData, Metadata, MeterModel, MeterType};
use crate::privacy::{coarsen, ExportPseudonyms, Privacy};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One row per data point: household, meter, meter type and model, measurement uuid,
    /// time, OBIS code, value.
    Csv,
    /// One JSON object per measurement.
    JsonLines,
}

#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    pub households: Option<HashSet<Uuid>>,
}

pub const CSV_HEADER: &str =
    "household,meter,meter_type,meter_model,measurement,measured_at,obis,value\n";

const CHUNK_BYTES: usize = 64 * 1024;

/// Counts of what an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCount {
    pub measurements: u64,
    /// CSV rows (data points) or JSON lines.
    pub rows: u64,
}

#[derive(Clone, Copy)]
struct MeterContext {
    household_id: Uuid,
    /// The pseudonyms of the household and of the meter.
    household: Uuid,
    meter: Uuid,
    meter_type: MeterType,
    model: MeterModel,
}

#[derive(Serialize)]
struct Line<'a> {
    household: Uuid,
    meter: Uuid,
    meter_type: MeterType,
    meter_model: MeterModel,
    uuid: Uuid,
    measured_at: &'a str,
    data: &'a MeasurementData,
}

/// Writes the export in chunks to `sink`; stops early when the sink breaks.
pub fn write_measurements(
    store: &dyn Store,
    privacy: &Privacy,
    filter: &ExportFilter,
    format: ExportFormat,
    sink: &mut dyn FnMut(Bytes) -> ControlFlow<()>,
) -> Result<ExportCount, StoreError> {
    let households = store.households()?;
    let pseudonyms = privacy.pseudonyms_of(&households)?;
    let mut meters: HashMap<Uuid, MeterContext> = HashMap::new();
    let mut selected_meters = Vec::new();
    for h in &households {
        let selected = filter
            .households
            .as_ref()
            .is_none_or(|set| set.contains(&h.id));
        let of = &pseudonyms[&h.id];
        for m in &h.meters {
            meters.insert(
                m.uuid,
                MeterContext {
                    household_id: h.id,
                    household: of.of(HOUSEHOLD, h.id),
                    meter: of.of(METER, m.uuid),
                    meter_type: m.meter_type,
                    model: m.model,
                },
            );
            if selected {
                selected_meters.push(m.uuid);
            }
        }
    }

    let mut buffer = Vec::with_capacity(CHUNK_BYTES + 4096);
    if format == ExportFormat::Csv {
        buffer.extend_from_slice(CSV_HEADER.as_bytes());
    }
    let mut count = ExportCount::default();
    let stopped = std::cell::Cell::new(false);
    let mut visit = |m: crate::model::Measurement| -> ControlFlow<()> {
        let Some(ctx) = meters.get(&m.meter) else {
            return ControlFlow::Continue(());
        };
        let time = m.measured_at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let uuid = pseudonyms[&ctx.household_id].of(MEASUREMENT, m.uuid);
        count.measurements += 1;
        match format {
            ExportFormat::Csv => {
                for (code, value) in &m.data.0 {
                    // Every column is an id, enum, time, hex code or number: nothing to quote.
                    let _ = writeln!(
                        buffer,
                        "{},{},{},{},{},{},{},{}",
                        ctx.household,
                        ctx.meter,
                        ctx.meter_type.as_str(),
                        ctx.model.as_str(),
                        uuid,
                        time,
                        code,
                        value
                    );
                    count.rows += 1;
                }
            }
            ExportFormat::JsonLines => {
                let line = Line {
                    household: ctx.household,
                    meter: ctx.meter,
                    meter_type: ctx.meter_type,
                    meter_model: ctx.model,
                    uuid,
                    measured_at: &time,
                    data: &m.data,
                };
                if serde_json::to_writer(&mut buffer, &line).is_ok() {
                    buffer.push(b'\n');
                    count.rows += 1;
                }
            }
        }
        if buffer.len() >= CHUNK_BYTES {
            let chunk = Bytes::from(std::mem::replace(
                &mut buffer,
                Vec::with_capacity(CHUNK_BYTES + 4096),
            ));
            if sink(chunk).is_break() {
                stopped.set(true);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    };
    if filter.households.is_some() {
        for meter in &selected_meters {
            store.scan_measurements(Some(*meter), filter.from, filter.to, &mut visit)?;
            if stopped.get() {
                break;
            }
        }
    } else {
        store.scan_measurements(None, filter.from, filter.to, &mut visit)?;
    }
    if !stopped.get() && !buffer.is_empty() {
        let _ = sink(Bytes::from(buffer));
    }
    Ok(count)
}

/// A streaming response body; the export runs on a blocking thread and stops when the
/// client goes away.
pub fn measurements_body(
    store: Arc<dyn Store>,
    privacy: Arc<Privacy>,
    filter: ExportFilter,
    format: ExportFormat,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut sink = |chunk: Bytes| {
            if tx.blocking_send(Ok(chunk)).is_err() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        match write_measurements(store.as_ref(), &privacy, &filter, format, &mut sink) {
            Ok(count) => tracing::info!(
                measurements = count.measurements,
                rows = count.rows,
                "measurement export finished"
            ),
            Err(e) => {
                tracing::error!(error = %e, "measurement export failed");
                // Ending the body with an error lets the client see the export is incomplete.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    Body::from_stream(ReceiverStream::new(rx))
}

const HOUSEHOLD: &str = "household";
const METER: &str = "meter";
const DEVICE: &str = "measurement device";
const PV_SYSTEM: &str = "pv system";
const MEASUREMENT: &str = "measurement";

#[derive(Serialize)]
struct HouseholdLine<'a> {
    id: Uuid,
    consent: &'a str,
    granted_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    anonymized: bool,
    location: Option<Location>,
    metadata: Option<&'a Metadata>,
    pv_systems: Vec<PvSystemLine>,
    meters: Vec<MeterLine>,
}

#[derive(Serialize)]
struct PvSystemLine {
    uuid: Uuid,
    nominal_power: f64,
    azimuth: f64,
    tilt: f64,
    installation_date: Option<chrono::NaiveDate>,
    installation_year: i32,
    generation_meter: Option<Uuid>,
}

#[derive(Serialize)]
struct MeterLine {
    uuid: Uuid,
    #[serde(rename = "type")]
    meter_type: MeterType,
    model: MeterModel,
    measurement_device: Uuid,
}

fn household_line<'a>(h: &'a Household, of: &ExportPseudonyms) -> HouseholdLine<'a> {
    HouseholdLine {
        id: of.of(HOUSEHOLD, h.id),
        consent: h.consent.state.as_str(),
        granted_at: h.consent.granted_at,
        revoked_at: h.consent.revoked_at,
        anonymized: h.anonymized_at.is_some(),
        location: h.location.map(coarsen),
        metadata: h.metadata.as_ref(),
        pv_systems: h
            .pv_systems
            .iter()
            .map(|p| PvSystemLine {
                uuid: of.of(PV_SYSTEM, p.uuid),
                nominal_power: p.nominal_power,
                azimuth: p.azimuth,
                tilt: p.tilt,
                installation_date: p.installation_date,
                installation_year: p.installation_year,
                generation_meter: p.generation_meter.map(|m| of.of(METER, m)),
            })
            .collect(),
        meters: h
            .meters
            .iter()
            .map(|m| MeterLine {
                uuid: of.of(METER, m.uuid),
                meter_type: m.meter_type,
                model: m.model,
                measurement_device: of.of(DEVICE, m.measurement_device),
            })
            .collect(),
    }
}

/// Households without contact details or address, to correlate with measurements: under
/// their pseudonyms, with locations coarsened.
pub fn households(
    households: &[Household],
    privacy: &Privacy,
    format: ExportFormat,
) -> Result<Vec<u8>, StoreError> {
    let pseudonyms = privacy.pseudonyms_of(households)?;
    let lines = households
        .iter()
        .map(|h| household_line(h, &pseudonyms[&h.id]));
    let mut out = Vec::new();
    match format {
        ExportFormat::JsonLines => {
            for line in lines {
                if serde_json::to_writer(&mut out, &line).is_ok() {
                    out.push(b'\n');
                }
            }
        }
        ExportFormat::Csv => {
            out.extend_from_slice(
                b"household,consent,anonymized,latitude,longitude,children,adults,employed_adults,\
ev_charger,heat_pump,home_battery,pv_systems,pv_nominal_power_kwp,meters\n",
            );
            let opt = |v: Option<String>| v.unwrap_or_default();
            for h in lines {
                let m = h.metadata;
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    h.id,
                    h.consent,
                    h.anonymized,
                    opt(h.location.map(|l| l.latitude.to_string())),
                    opt(h.location.map(|l| l.longitude.to_string())),
                    opt(m.map(|m| m.children.to_string())),
                    opt(m.map(|m| m.adults.to_string())),
                    opt(m.map(|m| m.employed_adults.to_string())),
                    opt(m.map(|m| m.ev_charger.to_string())),
                    opt(m.map(|m| m.heat_pump.to_string())),
                    opt(m.map(|m| m.home_battery.to_string())),
                    h.pv_systems.len(),
                    h.pv_systems.iter().map(|p| p.nominal_power).sum::<f64>(),
                    h.meters.len(),
                );
            }
        }
    }
    Ok(out)
}
