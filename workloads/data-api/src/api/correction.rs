//! FR-07: a researcher corrects a registered household. Present sections replace the
//! stored ones. Measurement devices, meters and PV systems are entries addressed by
//! `uuid`: an entry names a stored one to change only the attributes it gives, `"remove":
//! true` removes it, an entry without `uuid` (or with `"add": true` and a chosen uuid)
//! adds one, which then needs what registration needs. Errors name the entry of the
//! request (`meters[1].type`), as at registration.
//!
//! Referential rules: a meter is read by a device of the household, a PV system's
//! generation meter is a PV-GENERATION meter of the household; a device that still reads
//! a meter, a meter a PV system names, or a meter with measurements cannot be removed
//! (409 naming what holds it). Uuids are unique across households; the store refuses one
//! that another household holds and keeps removed ones reserved.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::ApiError;
use crate::model::{
    all_scopes, Address, Household, Location, MeasurementDevice, Metadata, Meter, MeterModel,
    MeterType, PhotovoltaicSystem, Scope, User,
};
use crate::store::{Store, StoreError};
use crate::validate;

/// At most this many measurement devices and meters per household, as at registration.
pub const MAX_DEVICES: usize = 16;
pub const MAX_METERS: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationUpdate {
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub address: Option<Address>,
    #[serde(default)]
    pub location: Option<Location>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub measurement_devices: Vec<DeviceUpdate>,
    #[serde(default)]
    pub meters: Vec<MeterUpdate>,
    #[serde(default)]
    pub pv_systems: Vec<PvUpdate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    #[serde(default)]
    pub uuid: Option<Uuid>,
    #[serde(default)]
    pub add: bool,
    #[serde(default)]
    pub remove: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<Scope>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterUpdate {
    #[serde(default)]
    pub uuid: Option<Uuid>,
    #[serde(default)]
    pub add: bool,
    #[serde(default)]
    pub remove: bool,
    #[serde(default, rename = "type")]
    pub meter_type: Option<MeterType>,
    #[serde(default)]
    pub model: Option<MeterModel>,
    /// The device that reads the meter (a stored one or one added in this request); a
    /// new meter without one is read by the household's first device.
    #[serde(default)]
    pub measurement_device: Option<Uuid>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvUpdate {
    /// The stored PV system to change; without one the entry adds a PV system (a
    /// participant may have forgotten one), which then needs every attribute.
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// Removes the stored PV system (one listed by mistake).
    #[serde(default)]
    pub remove: bool,
    #[serde(default)]
    pub nominal_power: Option<f64>,
    #[serde(default)]
    pub azimuth: Option<f64>,
    #[serde(default)]
    pub tilt: Option<f64>,
    #[serde(default)]
    pub installation_date: Option<NaiveDate>,
    #[serde(default)]
    pub generation_meter: Option<Uuid>,
}

/// What an entry of a list asks for.
enum Entry {
    Add(Uuid),
    Change(Uuid),
    Remove(Uuid),
}

fn entry(
    prefix: &str,
    uuid: Option<Uuid>,
    add: bool,
    remove: bool,
    stored: bool,
    kind: &str,
) -> Result<Entry, ApiError> {
    match (uuid, add, remove) {
        (_, true, true) => Err(ApiError::invalid_field(
            format!("{prefix}.remove"),
            "an entry either adds or removes",
        )),
        (None, _, true) => Err(ApiError::invalid_field(
            format!("{prefix}.uuid"),
            format!("name the {kind} to remove"),
        )),
        (None, _, false) => Ok(Entry::Add(Uuid::new_v4())),
        (Some(uuid), true, _) if stored => Err(ApiError::conflict(
            "duplicate_id",
            format!("{kind} {uuid} is already part of this household"),
        )
        .with_field(format!("{prefix}.uuid"))),
        (Some(uuid), true, _) => Ok(Entry::Add(uuid)),
        (Some(uuid), false, _) if !stored => Err(unknown(format!("{prefix}.uuid"), kind, uuid)),
        (Some(uuid), false, true) => Ok(Entry::Remove(uuid)),
        (Some(uuid), false, false) => Ok(Entry::Change(uuid)),
    }
}

impl RegistrationUpdate {
    /// Applies the correction to `h` (its stored state); the store's part of the rules
    /// (measurements of removed meters, uuids of other households) is checked by
    /// [`RegistrationUpdate::check_against_store`] and the store itself.
    pub fn apply(&self, h: &mut Household, now: DateTime<Utc>) -> Result<(), ApiError> {
        if h.anonymized_at.is_some() {
            return Err(ApiError::conflict(
                "household_anonymized",
                "the household was anonymized after consent revocation; its details can no longer be changed",
            ));
        }
        self.apply_sections(h)?;
        let removed_devices = self.apply_devices(h)?;
        self.apply_meters(h)?;
        self.check_devices_in_use(h, &removed_devices)?;
        self.check_meters_in_use(h)?;
        self.apply_pv_systems(h)?;
        self.check_generation_meters(h)?;
        unique_ids(h)?;
        h.updated_at = now;
        Ok(())
    }

    fn apply_sections(&self, h: &mut Household) -> Result<(), ApiError> {
        if let Some(user) = &self.user {
            let mut user = user.clone();
            user.email = user.email.trim().to_lowercase();
            validate::user("user", &user)?;
            h.user = Some(user);
        }
        if let Some(address) = &self.address {
            validate::address("address", address)?;
            h.address = Some(address.clone());
        }
        if let Some(location) = &self.location {
            validate::location("location", location)?;
            h.location = Some(*location);
        }
        if let Some(metadata) = &self.metadata {
            validate::metadata("metadata", metadata)?;
            h.metadata = Some(metadata.clone());
        }
        Ok(())
    }

    /// Returns the removed devices with the index of their entry.
    fn apply_devices(&self, h: &mut Household) -> Result<Vec<(usize, Uuid)>, ApiError> {
        let mut removed = Vec::new();
        for (i, update) in self.measurement_devices.iter().enumerate() {
            let prefix = format!("measurement_devices[{i}]");
            let stored = update.uuid.is_some_and(|u| h.device(u).is_some());
            if let Some(scopes) = &update.scopes {
                if scopes.is_empty() {
                    return Err(ApiError::invalid_field(
                        format!("{prefix}.scopes"),
                        "a device needs at least one scope",
                    ));
                }
            }
            match entry(
                &prefix,
                update.uuid,
                update.add,
                update.remove,
                stored,
                "measurement device",
            )? {
                Entry::Add(uuid) => h.measurement_devices.push(MeasurementDevice {
                    uuid,
                    name: update.name.clone(),
                    scopes: update.scopes.clone().unwrap_or_else(all_scopes),
                }),
                Entry::Remove(uuid) => {
                    h.measurement_devices.retain(|d| d.uuid != uuid);
                    removed.push((i, uuid));
                }
                Entry::Change(uuid) => {
                    let device = h
                        .measurement_devices
                        .iter_mut()
                        .find(|d| d.uuid == uuid)
                        .expect("entry() found it");
                    if let Some(name) = &update.name {
                        device.name = Some(name.clone());
                    }
                    if let Some(scopes) = &update.scopes {
                        device.scopes = scopes.clone();
                    }
                }
            }
        }
        if h.measurement_devices.is_empty() || h.measurement_devices.len() > MAX_DEVICES {
            return Err(ApiError::invalid_field(
                "measurement_devices",
                format!("a household has 1 to {MAX_DEVICES} measurement devices"),
            ));
        }
        Ok(removed)
    }

    fn apply_meters(&self, h: &mut Household) -> Result<(), ApiError> {
        for (i, update) in self.meters.iter().enumerate() {
            let prefix = format!("meters[{i}]");
            let stored = update.uuid.is_some_and(|u| h.meter(u).is_some());
            if let Some(device) = update.measurement_device {
                if h.device(device).is_none() {
                    return Err(unknown(
                        format!("{prefix}.measurement_device"),
                        "measurement device",
                        device,
                    ));
                }
            }
            match entry(
                &prefix,
                update.uuid,
                update.add,
                update.remove,
                stored,
                "meter",
            )? {
                Entry::Add(uuid) => {
                    let required = |name: &str| {
                        ApiError::invalid_field(
                            format!("{prefix}.{name}"),
                            "required for a new meter",
                        )
                    };
                    h.meters.push(Meter {
                        uuid,
                        meter_type: update.meter_type.ok_or_else(|| required("type"))?,
                        model: update.model.ok_or_else(|| required("model"))?,
                        measurement_device: update
                            .measurement_device
                            .unwrap_or(h.measurement_devices[0].uuid),
                    });
                }
                Entry::Remove(uuid) => h.meters.retain(|m| m.uuid != uuid),
                Entry::Change(uuid) => {
                    let meter = h
                        .meters
                        .iter_mut()
                        .find(|m| m.uuid == uuid)
                        .expect("entry() found it");
                    if let Some(t) = update.meter_type {
                        meter.meter_type = t;
                    }
                    if let Some(model) = update.model {
                        meter.model = model;
                    }
                    if let Some(device) = update.measurement_device {
                        meter.measurement_device = device;
                    }
                }
            }
        }
        if h.meters.is_empty() || h.meters.len() > MAX_METERS {
            return Err(ApiError::invalid_field(
                "meters",
                format!("a household has 1 to {MAX_METERS} meters"),
            ));
        }
        Ok(())
    }

    fn check_devices_in_use(
        &self,
        h: &Household,
        removed: &[(usize, Uuid)],
    ) -> Result<(), ApiError> {
        for (i, device) in removed {
            let readers: Vec<String> = h
                .meters
                .iter()
                .filter(|m| m.measurement_device == *device)
                .map(|m| m.uuid.to_string())
                .collect();
            if !readers.is_empty() {
                return Err(ApiError::conflict(
                    "device_in_use",
                    format!(
                        "measurement device {device} still reads meter {}; move or remove the meters first",
                        readers.join(", ")
                    ),
                )
                .with_field(format!("measurement_devices[{i}].uuid")));
            }
        }
        Ok(())
    }

    /// A meter a PV system names as its generation meter stays, unless the same request
    /// removes that PV system or gives it another generation meter.
    fn check_meters_in_use(&self, h: &Household) -> Result<(), ApiError> {
        for (i, meter) in self.removed_meters() {
            let holders: Vec<String> = h
                .pv_systems
                .iter()
                .filter(|pv| pv.generation_meter == Some(meter))
                .filter(|pv| !self.releases(pv.uuid, meter))
                .map(|pv| pv.uuid.to_string())
                .collect();
            if !holders.is_empty() {
                return Err(ApiError::conflict(
                    "meter_in_use",
                    format!(
                        "meter {meter} is the generation meter of PV system {}; remove the PV system or give it another generation meter first",
                        holders.join(", ")
                    ),
                )
                .with_field(format!("meters[{i}].uuid")));
            }
        }
        Ok(())
    }

    /// The stored meters this request removes, with the index of their entry.
    pub fn removed_meters(&self) -> impl Iterator<Item = (usize, Uuid)> + '_ {
        self.meters
            .iter()
            .enumerate()
            .filter(|(_, m)| m.remove && !m.add)
            .filter_map(|(i, m)| Some((i, m.uuid?)))
    }

    fn releases(&self, pv: Uuid, meter: Uuid) -> bool {
        self.pv_systems.iter().any(|u| {
            u.uuid == Some(pv)
                && (u.remove || u.generation_meter.is_some_and(|other| other != meter))
        })
    }

    fn apply_pv_systems(&self, h: &mut Household) -> Result<(), ApiError> {
        for (i, update) in self.pv_systems.iter().enumerate() {
            let prefix = format!("pv_systems[{i}]");
            validate::pv_specification(
                &prefix,
                update.nominal_power,
                update.azimuth,
                update.tilt,
                update.installation_date,
            )?;
            if let Some(meter) = update.generation_meter {
                match h.meter(meter) {
                    Some(m) if m.meter_type == MeterType::PvGeneration => {}
                    _ => {
                        return Err(ApiError::invalid_field(
                            format!("{prefix}.generation_meter"),
                            format!("{meter} is not a PV-GENERATION meter of this household"),
                        ))
                    }
                }
            }
            let Some(uuid) = update.uuid else {
                if update.remove {
                    return Err(ApiError::invalid_field(
                        format!("{prefix}.uuid"),
                        "name the PV system to remove",
                    ));
                }
                h.pv_systems.push(update.new_pv_system(&prefix)?);
                continue;
            };
            let position = h
                .pv_systems
                .iter()
                .position(|p| p.uuid == uuid)
                .ok_or_else(|| unknown(format!("{prefix}.uuid"), "PV system", uuid))?;
            if update.remove {
                h.pv_systems.remove(position);
                continue;
            }
            update.change(&mut h.pv_systems[position]);
        }
        Ok(())
    }

    /// A generation meter that was re-typed must not stay linked to a PV system. The
    /// error names the PV system's entry in this request if it has one.
    fn check_generation_meters(&self, h: &Household) -> Result<(), ApiError> {
        for (i, pv) in h.pv_systems.iter().enumerate() {
            if let Some(meter) = pv.generation_meter {
                if h.meter(meter).map(|m| m.meter_type) != Some(MeterType::PvGeneration) {
                    let entry = self
                        .pv_systems
                        .iter()
                        .position(|u| u.uuid == Some(pv.uuid))
                        .unwrap_or(i);
                    return Err(ApiError::invalid_field(
                        format!("pv_systems[{entry}].generation_meter"),
                        format!("meter {meter} is no longer a PV-GENERATION meter"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The rules only the store can judge: a meter with measurements is part of the data
    /// set and stays (a replaced meter is added beside it).
    pub fn check_against_store(&self, store: &dyn Store) -> Result<(), ApiError> {
        for (i, meter) in self.removed_meters() {
            if store.last_measurement(meter)?.is_some() {
                return Err(ApiError::conflict(
                    "meter_has_measurements",
                    format!("meter {meter} has measurements, which stay part of the data set; it cannot be removed"),
                )
                .with_field(format!("meters[{i}].uuid")));
            }
        }
        Ok(())
    }

    /// Names the entry that added a uuid the store found in another household.
    pub fn locate_duplicate(&self, e: StoreError) -> ApiError {
        let StoreError::DuplicateId { uuid, .. } = &e else {
            return e.into();
        };
        let device = self
            .measurement_devices
            .iter()
            .position(|d| d.uuid == Some(*uuid))
            .map(|i| format!("measurement_devices[{i}].uuid"));
        let meter = self
            .meters
            .iter()
            .position(|m| m.uuid == Some(*uuid))
            .map(|i| format!("meters[{i}].uuid"));
        let error = ApiError::from(e);
        match device.or(meter) {
            Some(field) => error.with_field(field),
            None => error,
        }
    }
}

impl PvUpdate {
    /// A PV system added by a correction: every attribute but the generation meter is
    /// required, as at registration.
    fn new_pv_system(&self, prefix: &str) -> Result<PhotovoltaicSystem, ApiError> {
        let required = |name: &str| {
            ApiError::invalid_field(format!("{prefix}.{name}"), "required for a new PV system")
        };
        let installation_date = self
            .installation_date
            .ok_or_else(|| required("installation_date"))?;
        Ok(PhotovoltaicSystem {
            uuid: Uuid::new_v4(),
            nominal_power: self
                .nominal_power
                .ok_or_else(|| required("nominal_power"))?,
            azimuth: self.azimuth.ok_or_else(|| required("azimuth"))?,
            tilt: self.tilt.ok_or_else(|| required("tilt"))?,
            installation_date: Some(installation_date),
            installation_year: installation_date.year(),
            generation_meter: self.generation_meter,
        })
    }

    fn change(&self, pv: &mut PhotovoltaicSystem) {
        if let Some(p) = self.nominal_power {
            pv.nominal_power = p;
        }
        if let Some(a) = self.azimuth {
            pv.azimuth = a;
        }
        if let Some(t) = self.tilt {
            pv.tilt = t;
        }
        if let Some(d) = self.installation_date {
            pv.installation_date = Some(d);
            pv.installation_year = d.year();
        }
        if let Some(m) = self.generation_meter {
            pv.generation_meter = Some(m);
        }
    }
}

/// Devices and meters share one uuid space within a household, as at registration.
fn unique_ids(h: &Household) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    let devices = h.measurement_devices.iter().map(|d| d.uuid);
    if let Some(uuid) = devices
        .chain(h.meters.iter().map(|m| m.uuid))
        .find(|uuid| !seen.insert(*uuid))
    {
        return Err(ApiError::conflict(
            "duplicate_id",
            format!("{uuid} is used twice in this household"),
        ));
    }
    Ok(())
}

fn unknown(field: String, kind: &str, uuid: Uuid) -> ApiError {
    ApiError::invalid_field(
        field,
        format!("{kind} {uuid} is not part of this household"),
    )
}
