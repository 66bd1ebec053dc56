//! The reader daemon: consent check, measurement cycle (data aggregator) and report cycle
//! (data transmitter) around the probe threads and the store.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{ApiClient, ApiError, MAX_BATCH};
use crate::config::{Config, MeterConfig};
use crate::consent::{Consent, ConsentState};
use crate::obis::Obis;
use crate::probe::{lock, LatestReading, Probe, ProbeOptions};
use crate::sml::units;
use crate::store::{Measurement, Store, StoreError};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Data API client could not be set up.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A probe thread could not be started.
    #[error("probe thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The data of a measurement: the configured codes present in the reading, energy in
/// kWh and power in kW (the meter sends Wh and W), other units as sent.
pub fn measurement_data(reading: &LatestReading, codes: &[Obis]) -> Vec<BTreeMap<String, f64>> {
    codes
        .iter()
        .filter_map(|code| {
            let r = reading.readings.get(code)?;
            let value = match r.unit {
                Some(units::WATT_HOUR) | Some(units::WATT) => r.in_unit_of(3),
                _ => r.value,
            };
            value
                .is_finite()
                .then(|| BTreeMap::from([(code.hex(), value)]))
        })
        .collect()
}

struct Daemon {
    config: Config,
    store: Store,
    consent: Consent,
    api: ApiClient,
    probes: std::sync::Mutex<Vec<(MeterConfig, Probe)>>,
    /// Woken when the device frontend learned a new consent state.
    consent_changed: tokio::sync::Notify,
    /// Meters the Data API refused as not the household's (until restarted).
    refused_meters: std::sync::Mutex<HashSet<uuid::Uuid>>,
    /// Whether the revocation has been logged in this run.
    revocation_told: std::sync::atomic::AtomicBool,
}

impl Daemon {
    fn probes(&self) -> std::sync::MutexGuard<'_, Vec<(MeterConfig, Probe)>> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the Data API for the consent; on failure the cached state holds.
    async fn refresh_consent(&self) -> ConsentState {
        match self.api.consent().await {
            Ok(state) => match self.consent.update(state) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot persist consent");
                    self.consent.current()
                }
            },
            Err(e) => {
                let cached = self.consent.current();
                tracing::warn!(error = %e, consent = %cached, "consent not fetched, using the last known state");
                cached
            }
        }
    }

    fn apply_consent(&self, state: ConsentState) -> Result<(), DaemonError> {
        let mut probes = self.probes();
        match state {
            ConsentState::Granted if probes.is_empty() => {
                let options = ProbeOptions {
                    unlock_after: self.config.unlock_after,
                    timing_scale: self.config.timing_scale,
                };
                for m in &self.config.meters {
                    probes.push((m.clone(), Probe::start(m.clone(), options)?));
                }
            }
            ConsentState::Granted => {}
            ConsentState::NotGranted | ConsentState::Revoked => {
                for (_, p) in probes.drain(..) {
                    p.stop();
                }
            }
        }
        Ok(())
    }

    fn measure(&self) {
        let now = Instant::now();
        for (meter, probe) in self.probes().iter() {
            let latest = lock(&probe.status).latest.clone();
            let Some(reading) =
                latest.filter(|r| now.duration_since(r.received) <= self.config.reading_max_age)
            else {
                tracing::warn!(meter = %meter.meter, "no recent reading: no measurement this cycle");
                continue;
            };
            let data = measurement_data(&reading, &self.config.obis);
            if data.is_empty() {
                tracing::info!(meter = %meter.meter, "none of the codes of interest in the reading");
                continue;
            }
            let m = Measurement {
                uuid: uuid::Uuid::new_v4(),
                meter: meter.meter,
                measured_at: reading
                    .received_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                data,
            };
            match self.store.append(&m) {
                Ok(_) => {
                    tracing::info!(meter = %m.meter, uuid = %m.uuid, measured_at = %m.measured_at, pending = self.store.pending(), "measurement stored")
                }
                Err(e) => tracing::error!(meter = %m.meter, error = %e, "measurement not stored"),
            }
        }
    }

    fn refused_meters(&self) -> std::sync::MutexGuard<'_, HashSet<uuid::Uuid>> {
        self.refused_meters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Uploads everything pending, oldest first, deleting each batch once acknowledged.
    async fn report(&self) -> Result<usize, ApiError> {
        let mut sent = 0;
        loop {
            let refused = self.refused_meters().clone();
            let batch = match self
                .store
                .oldest_matching(self.config.batch_size.clamp(1, MAX_BATCH), |m| {
                    !refused.contains(&m.meter)
                }) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the store");
                    return Ok(sent);
                }
            };
            if batch.is_empty() {
                return Ok(sent);
            }
            let (keys, measurements): (Vec<u64>, Vec<Measurement>) = batch.into_iter().unzip();
            let ack = match self.api.upload(&measurements).await {
                Ok(ack) => ack,
                Err(e) => {
                    // A meter the household does not have (a wrong uuid in the
                    // configuration) would hold up every other meter's measurements
                    // for good: set its measurements aside and send the rest.
                    let Some(meter) = e.foreign_meter_at().and_then(|i| measurements.get(i)) else {
                        return Err(e);
                    };
                    if self.refused_meters().insert(meter.meter) {
                        tracing::error!(
                            meter = %meter.meter,
                            "the Data API does not know this meter for the household: its measurements stay on this device and are not sent; check METER_READER_METERS"
                        );
                    }
                    continue;
                }
            };
            if let Err(e) = self.store.remove(&keys) {
                // Not fatal: the next upload repeats the batch and the Data API counts
                // the repetitions as duplicates.
                tracing::error!(error = %e, "acknowledged measurements not deleted");
                return Ok(sent);
            }
            sent += keys.len();
            tracing::info!(
                batch = keys.len(),
                accepted = ack.accepted,
                duplicates = ack.duplicates,
                pending = self.store.pending(),
                "measurements uploaded"
            );
        }
    }

    /// What the device knows about itself: consent, pending measurements and every
    /// configured meter with its probe (read only while consent is granted).
    fn status(&self, consent: ConsentState) -> serde_json::Value {
        let refused = self.refused_meters().clone();
        let probes = self.probes();
        let meters: Vec<_> = self
            .config
            .meters
            .iter()
            .map(|m| {
                let s = probes
                    .iter()
                    .find(|(running, _)| running.meter == m.meter)
                    .map(|(_, p)| lock(&p.status).clone())
                    .unwrap_or_default();
                serde_json::json!({
                    "meter": m.meter,
                    "probe": m.probe.to_string(),
                    "model": m.model.map(|model| model.name()),
                    "connected": s.connected,
                    "good_frames": s.good_frames,
                    "bad_frames": s.bad_frames,
                    "unlock_attempts": s.unlock_attempts,
                    "last_reading": s.latest.map(|l| l.received_at.to_rfc3339()),
                    "refused_by_data_api": refused.contains(&m.meter),
                })
            })
            .collect();
        serde_json::json!({
            // Changes every cycle, so that an observer can count cycles.
            "written_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "consent": consent,
            "return_device": consent == ConsentState::Revoked,
            "pending_measurements": self.store.pending(),
            "meters": meters,
        })
    }

    fn write_status(&self, consent: ConsentState) {
        let status = self.status(consent);
        let path = self.config.data_dir.join("status.json");
        let tmp = self.config.data_dir.join("status.json.tmp");
        let written =
            std::fs::write(&tmp, status.to_string()).and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %path.display(), "status file not written");
        }
    }

    /// A consent state the Data API gave in an answer to the device frontend: taken at
    /// once, so that a grant starts the probes and a revocation stops them without
    /// waiting for the next measurement cycle.
    fn consent_seen(&self, state: ConsentState) {
        let before = self.consent.current();
        match self.consent.update(state) {
            Ok(now) if now != before => self.consent_changed.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot persist consent"),
        }
    }
}

impl Daemon {
    /// Tells, once per run, that the device is done; the measuring cycle and a refused
    /// upload may both be the first to learn of the revocation.
    fn revoked_notice(&self) {
        if self
            .revocation_told
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        tracing::error!(
            consent = "REVOKED",
            "consent revoked: measuring stopped for good; this device should be returned to the research group"
        );
    }
}

/// Serves the device frontend until it fails; a frontend that cannot start is logged and
/// left out, since measuring matters more than the web interface.
async fn serve_frontend(d: Arc<Daemon>) {
    let Some(listen) = d.config.ui_listen else {
        return;
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %listen, error = %e, "device frontend not started");
            return;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let hooks = {
        let (status_of, consent_of) = (d.clone(), d.clone());
        crate::frontend::DeviceHooks {
            status: Box::new(move || status_of.status(status_of.consent.current())),
            consent_seen: Box::new(move |state| consent_of.consent_seen(state)),
        }
    };
    let router = crate::frontend::router(d.api.clone(), hooks, d.config.ui_hosts.clone());
    tracing::info!(addr = %addr, "device frontend listening");
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "device frontend stopped");
    }
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&config.data_dir)?;
    let store = Store::open(&config.data_dir)?;
    let consent = Consent::load(store.clone())?;
    let api = ApiClient::new(
        &config.api_url,
        &config.ca_cert,
        &config.client_cert,
        &config.client_key,
    )?;
    let d = Arc::new(Daemon {
        config,
        store,
        consent,
        api,
        probes: std::sync::Mutex::new(Vec::new()),
        consent_changed: tokio::sync::Notify::new(),
        refused_meters: std::sync::Mutex::new(HashSet::new()),
        revocation_told: std::sync::atomic::AtomicBool::new(false),
    });
    tracing::info!(
        meters = d.config.meters.len(),
        measurement_interval_s = d.config.measurement_interval.as_secs_f64(),
        report_interval_s = d.config.report_interval.as_secs_f64(),
        pending = d.store.pending(),
        "meter reader started"
    );
    let measuring = {
        let d = d.clone();
        async move {
            let mut state = d.consent.current();
            if state != ConsentState::Revoked {
                state = d.refresh_consent().await;
            }
            if state == ConsentState::Revoked {
                d.revoked_notice();
            }
            d.apply_consent(state)?;
            d.write_status(state);
            let period = d.config.measurement_interval;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let cycle = tokio::select! {
                    _ = tick.tick() => true,
                    _ = d.consent_changed.notified() => false,
                };
                if state == ConsentState::Revoked {
                    // Final: never ask again, never measure again.
                    d.write_status(state);
                    continue;
                }
                state = if cycle {
                    d.refresh_consent().await
                } else {
                    d.consent.current()
                };
                if state == ConsentState::Revoked {
                    d.revoked_notice();
                }
                d.apply_consent(state)?;
                if !cycle {
                    // The frontend changed the consent: the probes follow now, the next
                    // measurement comes with the next cycle.
                } else if state == ConsentState::Granted {
                    d.measure();
                } else {
                    tracing::info!(consent = %state, "consent not granted: nothing measured");
                }
                d.write_status(state);
            }
            #[allow(unreachable_code)]
            Ok::<(), DaemonError>(())
        }
    };
    let reporting = {
        let d = d.clone();
        async move {
            let report = d.config.report_interval;
            let mut delay = report;
            let mut backoff = Duration::from_secs(1);
            loop {
                tokio::time::sleep(delay).await;
                delay = report;
                if d.consent.current() != ConsentState::Granted {
                    continue;
                }
                match d.report().await {
                    Ok(sent) => {
                        backoff = Duration::from_secs(1);
                        if sent > 0 {
                            tracing::debug!(sent, "report cycle done");
                        }
                    }
                    Err(e) => {
                        if let Some(state) = e.consent() {
                            if let Ok(ConsentState::Revoked) = d.consent.update(state) {
                                d.revoked_notice();
                            }
                        }
                        tracing::warn!(error = %e, pending = d.store.pending(), retry_in_s = backoff.as_secs_f64(), "upload failed, will retry");
                        delay = backoff.min(report).min(d.config.retry_max);
                        backoff = (backoff * 2).min(d.config.retry_max);
                    }
                }
            }
        }
    };
    let frontend = {
        let d = d.clone();
        async move {
            serve_frontend(d).await;
            // Without a frontend the reader goes on measuring.
            std::future::pending::<()>().await
        }
    };
    let result = tokio::select! {
        r = measuring => r,
        _ = reporting => Ok(()),
        _ = frontend => Ok(()),
        _ = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    for (_, p) in d.probes().drain(..) {
        p.stop();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obis;
    use crate::sml::Reading;

    fn reading(raw: f64, scaler: i8, unit: Option<u8>) -> Reading {
        Reading {
            value: crate::sml::scale(raw, i32::from(scaler)),
            unit,
            raw,
            scaler,
        }
    }

    #[test]
    fn energy_in_kwh_power_in_kw_exactly() {
        let latest = LatestReading {
            received_at: chrono::Utc::now(),
            received: Instant::now(),
            server_id: vec![],
            readings: BTreeMap::from([
                (
                    obis::IMPORT_ENERGY,
                    reading(224_624_136.0, -1, Some(units::WATT_HOUR)),
                ),
                (
                    obis::EXPORT_ENERGY,
                    reading(29_416_461_614.0, -4, Some(units::WATT_HOUR)),
                ),
                (obis::SUM_POWER, reading(-1055.0, -1, Some(units::WATT))),
                (
                    Obis([1, 0, 32, 7, 0, 255]),
                    reading(2325.0, -1, Some(units::VOLT)),
                ),
            ]),
        };
        let codes = [
            obis::IMPORT_ENERGY,
            obis::EXPORT_ENERGY,
            obis::IMPORT_POWER,
            obis::SUM_POWER,
            Obis([1, 0, 32, 7, 0, 255]),
        ];
        let data = measurement_data(&latest, &codes);
        let flat: Vec<(String, f64)> = data.into_iter().flat_map(|m| m.into_iter()).collect();
        assert_eq!(
            flat,
            vec![
                ("0100010800ff".to_string(), 22_462.413_6),
                ("0100020800ff".to_string(), 2_941.646_161_4),
                ("0100100700ff".to_string(), -0.105_5),
                ("0100200700ff".to_string(), 232.5),
            ]
        );
        assert!(measurement_data(&latest, &[obis::IMPORT_POWER]).is_empty());
    }
}
