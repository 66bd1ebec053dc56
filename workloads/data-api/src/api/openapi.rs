//! The OpenAPI 3.1 document of the HTTP interface, served at `/openapi.json`. It sits
//! beside the router it describes; a test walks the router's routes against it, and
//! schemathesis (system-tests, `data_api_openapi`) checks every answer of a real server
//! against it.

use serde_json::{json, Value};

/// Comma-separated uuids, as `household=` takes them.
const UUID_LIST: &str = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(,[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})*$";

/// What the exports' ids are.
const PSEUDONYMS: &str = "Every id in an export (household, meter, measurement device, PV system, measurement) is a pseudonym, never the id the database keeps: stable between exports while the household takes part, so the two exports join, and new once it revokes its consent, so no earlier export links to the anonymized record. Locations are rounded to 0.01°; anonymized households give their displaced location, rounded.";

/// A certificate's SHA-256 fingerprint: 64 hex digits, colons allowed between them.
const FINGERPRINT: &str = "^:*([0-9a-fA-F]:*){64}$";

/// Security requirements.
fn device() -> Value {
    json!([{"deviceCertificate": []}])
}

fn researcher() -> Value {
    json!([{"researcherToken": []}])
}

fn staff() -> Value {
    json!([{"researcherToken": []}, {"adminToken": []}])
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn ok(name: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": schema(name)}}})
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema("Error")}}})
}

/// The answers every operation can give beside its own: refusals and a failed store.
fn responses(own: Value, codes: &[(&str, &str)]) -> Value {
    let mut all = own;
    for (code, description) in codes
        .iter()
        .chain(&[("503", "the store is unavailable (see `/health`)")])
    {
        all[*code] = error(description);
    }
    all
}

const DEVICE_REFUSALS: [(&str, &str); 3] = [
    (
        "400",
        "an invalid `X-Component-Versions` header or parameter, naming the field",
    ),
    ("401", "no, an expired, foreign or unknown certificate"),
    (
        "403",
        "the certificate lacks the scope, or names a device of another household",
    ),
];

const STAFF_REFUSALS: [(&str, &str); 3] = [
    ("400", "an invalid parameter, naming the field"),
    ("401", "missing or unknown token"),
    ("403", "the admin token on a researcher endpoint"),
];

fn component_versions() -> Value {
    json!({
        "name": "X-Component-Versions", "in": "header", "required": false,
        "description": "What runs on the device, e.g. `meter-reader=0.1.0,sml-decoder=0.1.0,motey-agent=0.9.1`; recorded per device",
        "schema": {"type": "string"}
    })
}

fn time_query(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description,
           "schema": {"type": "string", "format": "date-time"}})
}

fn export_format() -> Value {
    json!({"name": "format", "in": "query", "required": false,
           "schema": {"type": "string", "enum": ["csv", "jsonl", "ndjson"], "default": "csv"}})
}

fn export_content(description: &str) -> Value {
    json!({"description": description, "content": {
        "text/csv": {"schema": {"type": "string"}},
        "application/x-ndjson": {"schema": {"type": "string"}}
    }})
}

fn participant_paths() -> Value {
    let refusals = &DEVICE_REFUSALS;
    json!({
        "/account": {"get": {
            "operationId": "getAccount", "summary": "The participant's name and email",
            "security": device(), "parameters": [component_versions()],
            "responses": responses(json!({"200": ok("Account")}), &[refusals[0], refusals[1], refusals[2],
                ("404", "`account_deleted`: the contact details went with the revocation")])
        }},
        "/household": {"get": {
            "operationId": "getOwnHousehold", "summary": "The participant's household",
            "security": device(), "parameters": [component_versions()],
            "responses": responses(json!({"200": ok("OwnHousehold")}), refusals)
        }},
        "/household/consent": {
            "get": {"operationId": "getConsent", "security": device(), "parameters": [component_versions()],
                    "responses": responses(json!({"200": ok("Consent")}), refusals)},
            "post": {"operationId": "grantConsent", "summary": "Grant consent (FR-01)",
                     "security": device(), "parameters": [component_versions()],
                     "responses": responses(json!({"200": ok("Consent")}), &[refusals[0], refusals[1], refusals[2],
                        ("409", "`consent_already_granted` or `consent_revoked`")])},
            "delete": {"operationId": "revokeConsent", "summary": "Revoke consent and anonymize (FR-02, FR-03)",
                       "security": device(), "parameters": [component_versions()],
                       "responses": responses(json!({"200": ok("Consent")}), &[refusals[0], refusals[1], refusals[2],
                          ("409", "`consent_not_granted` or `consent_revoked`")])}
        },
        "/household/measurement_device": {"get": {
            "operationId": "getOwnDevices", "security": device(), "parameters": [component_versions()],
            "responses": responses(json!({"200": ok("OwnDevices")}), refusals)
        }},
        "/household/meter": {"get": {
            "operationId": "getOwnMeters", "security": device(), "parameters": [component_versions()],
            "responses": responses(json!({"200": ok("OwnMeters")}), refusals)
        }},
        "/household/meter/{uuid}/measurement": {"get": {
            "operationId": "getMeasurements", "summary": "A meter's measurements, paged (FR-05)",
            "security": device(),
            "parameters": [
                {"name": "uuid", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}},
                time_query("from", "inclusive"), time_query("to", "exclusive"),
                {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "cursor", "in": "query", "required": false, "description": "`next_cursor` of the previous page", "schema": {"type": "string"}},
                component_versions()
            ],
            "responses": responses(json!({"200": ok("MeasurementPage")}), refusals)
        }},
        "/household/meter/measurement": {"post": {
            "operationId": "postMeasurements", "summary": "Upload a batch (the meter reader's contract)",
            "security": device(), "parameters": [component_versions()],
            "requestBody": {"required": true, "content": {"application/json": {"schema": schema("MeasurementBatch")}}},
            "responses": responses(json!({"200": ok("IngestOutcome")}), &[refusals[0], refusals[1],
                ("403", "`consent_not_granted`, `consent_revoked`, `foreign_meter`, `insufficient_scope`"),
                ("413", "more than 1000 measurements or 4 MiB")])
        }},
        "/household/pv_system": {"get": {
            "operationId": "getOwnPvSystems", "security": device(), "parameters": [component_versions()],
            "responses": responses(json!({"200": ok("OwnPvSystems")}), refusals)
        }}
    })
}

fn household_id() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}})
}

fn management_paths() -> Value {
    let refusals = &STAFF_REFUSALS;
    json!({
        "/management/household": {
            "get": {"operationId": "listHouseholds", "summary": "Every household with consent and device health (FR-08, FR-09)",
                    "security": staff(),
                    "parameters": [{"name": "consent", "in": "query", "required": false, "schema": schema("ConsentState")}],
                    "responses": responses(json!({"200": ok("HouseholdOverview")}), &refusals[..2])},
            "post": {"operationId": "registerHousehold", "summary": "Register a participant (FR-06)",
                     "security": researcher(),
                     "requestBody": {"required": true, "content": {"application/json": {"schema": schema("Registration")}}},
                     "responses": responses(json!({"201": {
                            "description": "Registered",
                            "content": {"application/json": {"schema": schema("HouseholdView")}},
                            "links": {
                                "GetHousehold": {"operationId": "getHousehold", "parameters": {"id": "$response.body#/id"}},
                                "CorrectHousehold": {"operationId": "correctHousehold", "parameters": {"id": "$response.body#/id"}}
                            }
                        }}), &[refusals[0], refusals[1], refusals[2],
                        ("409", "`email_taken` (field `user.email`) or `duplicate_id`"), ("413", "body over 1 MiB")])}
        },
        "/management/household/{id}": {
            "get": {"operationId": "getHousehold", "security": researcher(), "parameters": [household_id()],
                    "responses": responses(json!({"200": ok("HouseholdView")}), &[refusals[0], refusals[1], refusals[2],
                       ("404", "`unknown_household`")])},
            "patch": {"operationId": "correctHousehold", "summary": "Correct the registration details (FR-07)",
                      "security": researcher(), "parameters": [household_id()],
                      "requestBody": {"required": true, "content": {"application/json": {"schema": schema("RegistrationUpdate")}}},
                      "responses": responses(json!({"200": ok("HouseholdView")}), &[refusals[0], refusals[1], refusals[2],
                         ("404", "`unknown_household`"),
                         ("409", "`household_anonymized`, `email_taken`, `duplicate_id`, `device_in_use`, `meter_in_use`, `meter_has_measurements`, `concurrent_update`"),
                         ("413", "body over 1 MiB")])}
        },
        "/management/session": {"get": {
            "operationId": "getSession", "summary": "Whose token this is, and the report cycle",
            "security": staff(), "responses": responses(json!({"200": ok("Session")}), &refusals[1..2])
        }},
        "/management/export/measurements": {"get": {
            "operationId": "exportMeasurements", "summary": "The data set, streamed, under pseudonyms",
            "description": PSEUDONYMS,
            "security": researcher(),
            "parameters": [export_format(), time_query("from", "inclusive"), time_query("to", "exclusive"),
                {"name": "household", "in": "query", "required": false,
                 "description": "comma-separated household ids: the ids of the database (`/management/household`), not export pseudonyms",
                 "schema": {"type": "string", "pattern": UUID_LIST}}],
            "responses": responses(json!({"200": export_content(
                "CSV (`household,meter,meter_type,meter_model,measurement,measured_at,obis,value`, one row per data point) or JSON lines, one `MeasurementExportLine` per measurement")}), refusals)
        }},
        "/management/export/households": {"get": {
            "operationId": "exportHouseholds", "summary": "Households without contact details or address, under pseudonyms",
            "description": PSEUDONYMS,
            "security": researcher(), "parameters": [export_format()],
            "responses": responses(json!({"200": export_content("CSV or JSON lines, one `HouseholdExportLine` per household")}), refusals)
        }},
        "/management/certificate/revoked": {
            "get": {"operationId": "listRevokedCertificates", "summary": "The deny-list of device certificates",
                    "security": staff(),
                    "responses": responses(json!({"200": {"description": "every revoked certificate",
                        "content": {"application/json": {"schema": {"type": "array", "items": schema("RevokedCertificate")}}}}}),
                        &refusals[1..2])},
            "post": {"operationId": "revokeCertificate",
                     "summary": "Revoke a device certificate: from then on its TLS handshake fails, on every replica within seconds",
                     "security": staff(),
                     "requestBody": {"required": true, "content": {"application/json": {"schema": schema("CertificateRevocation")}}},
                     "responses": responses(json!({"201": {"description": "Revoked (again: the first time stays)",
                        "content": {"application/json": {"schema": schema("RevokedCertificate")}}}}),
                        &[("400", "not a fingerprint (field `fingerprint`), not a JSON object"), refusals[1]])}
        },
        "/health": {"get": {
            "operationId": "health", "summary": "Liveness: 503 while the store fails", "security": [],
            "responses": {
                "200": ok("Health"),
                "503": {"description": "the store fails; the process exits if it does not recover within --store-retry",
                        "content": {"application/json": {"schema": schema("Health")}}}
            }
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}
        }}
    })
}

fn nullable(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

/// A closed object: the Data API refuses unknown fields.
fn closed(required: &[&str], properties: Value) -> Value {
    let mut o = object(required, properties);
    o["additionalProperties"] = json!(false);
    o
}

fn text(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": "^[^\\x00-\\x1f\\x7f]*\\S[^\\x00-\\x1f\\x7f]*$"})
}

fn input_schemas() -> Value {
    let uuid = json!({"type": "string", "format": "uuid"});
    // Optional attributes may also be given as null.
    let opt = nullable;
    let opt_uuid = opt(uuid.clone());
    let date = json!({"type": "string", "format": "date"});
    let scopes = json!({"type": "array", "minItems": 1, "items": schema("Scope")});
    let power =
        json!({"type": "number", "exclusiveMinimum": 0, "maximum": 100000, "description": "kWp"});
    let azimuth = json!({"type": "number", "minimum": 0, "exclusiveMaximum": 360});
    let tilt = json!({"type": "number", "minimum": 0, "maximum": 90});
    json!({
        "User": closed(&["name", "email"], json!({"name": text(200), "email": {"type": "string", "format": "email", "maxLength": 254}})),
        "Address": closed(&["street", "house_number", "postal_code", "city"], json!({
            "street": text(200), "house_number": text(20), "postal_code": text(20), "city": text(200),
            "country": {"type": "string", "pattern": "^[A-Z]{2}$", "default": "DE"}})),
        "Location": closed(&["latitude", "longitude"], json!({
            "latitude": {"type": "number", "minimum": -90, "maximum": 90},
            "longitude": {"type": "number", "minimum": -180, "maximum": 180}})),
        "Metadata": closed(&["children", "adults", "employed_adults", "ev_charger", "heat_pump", "home_battery"], json!({
            "children": {"type": "integer", "minimum": 0, "maximum": 50},
            "adults": {"type": "integer", "minimum": 1, "maximum": 50},
            "employed_adults": {"type": "integer", "minimum": 0, "maximum": 50, "description": "at most `adults`"},
            "ev_charger": {"type": "boolean"}, "heat_pump": {"type": "boolean"}, "home_battery": {"type": "boolean"}})),
        "Scope": {"type": "string", "enum": ["account", "household", "consent", "measurement-read", "measurement-write"]},
        "MeterType": {"type": "string", "enum": ["ELECTRICITY", "PV-GENERATION"]},
        "MeterModel": {"type": "string", "enum": ["MT681", "MT175", "EHZ", "DD3", "EASY"]},
        "Registration": closed(&["user", "address", "location", "metadata", "meters"], json!({
            "id": opt_uuid, "user": schema("User"), "address": schema("Address"), "location": schema("Location"),
            "metadata": schema("Metadata"),
            "measurement_devices": {"type": "array", "maxItems": 16, "items": closed(&[], json!({
                "uuid": opt_uuid, "name": opt(json!({"type": "string"})), "scopes": opt(scopes.clone())}))},
            "meters": {"type": "array", "minItems": 1, "maxItems": 32, "items": closed(&["type", "model"], json!({
                "uuid": opt_uuid, "type": schema("MeterType"), "model": schema("MeterModel"),
                "measurement_device": {"type": "integer", "minimum": 0, "description": "index into measurement_devices"}}))},
            "pv_systems": {"type": "array", "items": closed(&["nominal_power", "azimuth", "tilt", "installation_date"], json!({
                "nominal_power": power, "azimuth": azimuth, "tilt": tilt, "installation_date": date,
                "generation_meter": opt(json!({"type": "integer", "minimum": 0, "description": "index of a PV-GENERATION meter"}))}))}
        })),
        "RegistrationUpdate": closed(&[], json!({
            "user": opt(schema("User")), "address": opt(schema("Address")), "location": opt(schema("Location")),
            "metadata": opt(schema("Metadata")),
            "measurement_devices": {"type": "array", "items": closed(&[], json!({
                "uuid": opt_uuid, "add": {"type": "boolean"}, "remove": {"type": "boolean"},
                "name": opt(json!({"type": "string"})), "scopes": opt(scopes)}))},
            "meters": {"type": "array", "items": closed(&[], json!({
                "uuid": opt_uuid, "add": {"type": "boolean"}, "remove": {"type": "boolean"},
                "type": opt(schema("MeterType")), "model": opt(schema("MeterModel")), "measurement_device": opt_uuid}))},
            "pv_systems": {"type": "array", "items": closed(&[], json!({
                "uuid": opt_uuid, "remove": {"type": "boolean"},
                "nominal_power": opt(power), "azimuth": opt(azimuth), "tilt": opt(tilt),
                "installation_date": opt(date), "generation_meter": opt_uuid}))}
        })),
        "CertificateRevocation": closed(&["fingerprint"], json!({
            "fingerprint": {"type": "string", "pattern": FINGERPRINT,
                            "description": "SHA-256 of the certificate's DER encoding, as `data-api pki fingerprint --cert FILE` prints it"}})),
        "MeasurementBatch": closed(&["measurements"], json!({
            "measurements": {"type": "array", "maxItems": 1000, "items": closed(&["uuid", "meter", "measured_at", "data"], json!({
                "uuid": uuid, "meter": uuid, "measured_at": {"type": "string", "format": "date-time"},
                "data": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "minProperties": 1, "maxProperties": 1,
                    "propertyNames": {"pattern": "^[0-9a-f]{12}$"},
                    "additionalProperties": {"type": "number"}}}}))}}))
    })
}

fn output_schemas() -> Value {
    let uuid = json!({"type": "string", "format": "uuid"});
    let time = json!({"type": "string", "format": "date-time"});
    let opt_time = nullable(time.clone());
    let versions = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let pseudonym = json!({"type": "string", "format": "uuid", "description": "an export pseudonym, not a database id"});
    json!({
        "Error": object(&["error", "message", "field"], json!({
            "error": {"type": "string", "description": "machine-readable code"},
            "message": {"type": "string"},
            "field": nullable(json!({"type": "string", "description": "the offending input, e.g. `meters[1].type`"}))})),
        "ConsentState": {"type": "string", "enum": ["NOT_GRANTED", "GRANTED", "REVOKED"]},
        "Consent": object(&["state", "granted_at", "revoked_at"], json!({
            "state": schema("ConsentState"), "granted_at": opt_time, "revoked_at": opt_time})),
        "Account": object(&["name", "email"], json!({"name": {"type": "string"}, "email": {"type": "string"}})),
        "OwnHousehold": object(&["id", "consent", "anonymized"], json!({
            "id": uuid, "consent": schema("Consent"), "anonymized": {"type": "boolean"},
            "metadata": nullable(json!({"type": "object"})), "address": nullable(json!({"type": "object"})),
            "location": nullable(json!({"type": "object"})), "anonymized_at": opt_time, "created_at": time})),
        "OwnDevices": object(&["measurement_devices"], json!({"measurement_devices": {"type": "array", "items": object(
            &["uuid", "scopes", "component_versions"], json!({"uuid": uuid, "name": nullable(json!({"type": "string"})),
            "scopes": {"type": "array", "items": schema("Scope")}, "component_versions": versions, "last_activity": opt_time}))}})),
        "MeterView": object(&["uuid", "type", "model", "measurement_device"], json!({"uuid": uuid,
            "type": schema("MeterType"), "model": schema("MeterModel"), "measurement_device": uuid,
            "last_measurement": opt_time})),
        "OwnMeters": object(&["meters"], json!({"meters": {"type": "array", "items": schema("MeterView")}})),
        "PvSystem": object(&["uuid", "nominal_power", "azimuth", "tilt", "installation_year"], json!({
            "uuid": uuid, "nominal_power": {"type": "number"}, "azimuth": {"type": "number"}, "tilt": {"type": "number"},
            "installation_date": nullable(json!({"type": "string", "format": "date"})),
            "installation_year": {"type": "integer"}, "generation_meter": nullable(uuid.clone())})),
        "OwnPvSystems": object(&["pv_systems"], json!({"pv_systems": {"type": "array", "items": schema("PvSystem")}})),
        "Measurement": object(&["uuid", "meter", "measured_at", "data"], json!({
            "uuid": uuid, "meter": uuid, "measured_at": time,
            "data": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "number"}}}})),
        "MeasurementPage": object(&["measurements", "next_cursor"], json!({
            "measurements": {"type": "array", "items": schema("Measurement")},
            "next_cursor": nullable(json!({"type": "string"}))})),
        "IngestOutcome": object(&["accepted", "duplicates"], json!({
            "accepted": {"type": "integer", "minimum": 0}, "duplicates": {"type": "integer", "minimum": 0}})),
        "DeviceHealth": object(&["uuid", "scopes", "component_versions", "health"], json!({
            "uuid": uuid, "name": nullable(json!({"type": "string"})), "scopes": {"type": "array", "items": schema("Scope")},
            "component_versions": versions, "last_activity": opt_time, "last_measurement": opt_time,
            "health": object(&["state"], json!({
                "state": {"type": "string", "enum": ["reporting", "silent", "waiting_for_consent", "never_seen", "retired"]},
                "cause": {"type": "string", "enum": ["no_contact", "no_measurements"]},
                "silent_since": time}))})),
        "HouseholdView": object(&["id", "consent", "anonymized", "participant", "measurement_devices", "meters"], json!({
            "id": uuid, "consent": schema("Consent"), "anonymized": {"type": "boolean"}, "anonymized_at": opt_time,
            "user": nullable(json!({"type": "object"})), "participant": nullable(json!({"type": "string"})),
            "address": nullable(json!({"type": "object"})), "location": nullable(json!({"type": "object"})),
            "metadata": nullable(json!({"type": "object"})),
            "pv_systems": {"type": "array", "items": schema("PvSystem")},
            "measurement_device": nullable(uuid.clone()),
            "measurement_devices": {"type": "array", "items": schema("DeviceHealth")},
            "meters": {"type": "array", "items": schema("MeterView")},
            "created_at": time, "updated_at": time})),
        "HouseholdOverview": object(&["households", "now", "report_interval_seconds", "silent_after_seconds"], json!({
            "households": {"type": "array", "items": schema("HouseholdView")}, "now": time,
            "report_interval_seconds": {"type": "number"}, "silent_after_seconds": {"type": "number"}})),
        "Session": object(&["role", "now", "report_interval_seconds", "silent_after_seconds", "version"], json!({
            "role": {"type": "string", "enum": ["researcher", "admin"]}, "now": time,
            "report_interval_seconds": {"type": "number"}, "silent_after_seconds": {"type": "number"},
            "version": {"type": "string"}})),
        "RevokedCertificate": object(&["fingerprint", "revoked_at"], json!({
            "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "revoked_at": time})),
        "MeasurementExportLine": object(&["household", "meter", "meter_type", "meter_model", "uuid", "measured_at", "data"], json!({
            "household": pseudonym.clone(), "meter": pseudonym.clone(), "meter_type": schema("MeterType"),
            "meter_model": schema("MeterModel"), "uuid": pseudonym.clone(), "measured_at": time,
            "data": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "number"}}}})),
        "HouseholdExportLine": object(&["id", "consent", "anonymized", "pv_systems", "meters"], json!({
            "id": pseudonym.clone(), "consent": schema("ConsentState"), "granted_at": opt_time, "revoked_at": opt_time,
            "anonymized": {"type": "boolean"},
            "location": nullable(json!({"type": "object", "description": "rounded to 0.01°", "properties": {
                "latitude": {"type": "number"}, "longitude": {"type": "number"}}})),
            "metadata": nullable(json!({"type": "object"})),
            "pv_systems": {"type": "array", "items": object(&["uuid", "nominal_power", "azimuth", "tilt", "installation_year"], json!({
                "uuid": pseudonym.clone(), "nominal_power": {"type": "number"}, "azimuth": {"type": "number"},
                "tilt": {"type": "number"}, "installation_date": nullable(json!({"type": "string", "format": "date"})),
                "installation_year": {"type": "integer"}, "generation_meter": nullable(pseudonym.clone())}))},
            "meters": {"type": "array", "items": object(&["uuid", "type", "model", "measurement_device"], json!({
                "uuid": pseudonym.clone(), "type": schema("MeterType"), "model": schema("MeterModel"),
                "measurement_device": pseudonym.clone()}))}})),
        "Health": object(&["status", "version"], json!({
            "status": {"type": "string", "enum": ["ok", "store_unavailable"]}, "version": {"type": "string"},
            "error": {"type": "string"}, "unavailable_seconds": {"type": "number"}}))
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = participant_paths();
    for (path, item) in management_paths().as_object().expect("an object") {
        paths[path] = item.clone();
    }
    let mut schemas = input_schemas();
    for (name, s) in output_schemas().as_object().expect("an object") {
        schemas[name] = s.clone();
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "EnergieBroker Data API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The metering survey's single source of truth. Participants' measurement devices authenticate with client certificates of the survey CA (mutual TLS), researchers and administrators with bearer tokens. Every error is `{\"error\", \"message\", \"field\"}`."
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "deviceCertificate": {"type": "mutualTLS", "description": "a device certificate of the survey CA; its email selects the household, its OU the scopes"},
                "researcherToken": {"type": "http", "scheme": "bearer", "description": "the researcher token"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "the admin token (overview and status only)"}
            },
            "schemas": schemas
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The routes of `router()` as its source declares them: (path, methods).
    fn routed() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let router = &source[source.find("pub fn router").expect("router()")..];
        let router = &router[..router.find(".merge(").expect("the UI is merged last")];
        let mut routes = BTreeSet::new();
        for declaration in router.split(".route(").skip(1) {
            let path = declaration.split('"').nth(1).expect("a path literal");
            for method in ["get", "post", "patch", "put", "delete"] {
                let called = |prefix: &str| declaration.contains(&format!("{prefix}{method}("));
                if called(" ") || called("\n") || called("(") || called(".") {
                    routes.insert((path.to_owned(), method.to_owned()));
                }
            }
        }
        routes
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc = document();
        let mut operations = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                operations.insert((path.clone(), method.clone()));
            }
        }
        operations
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let routed = routed();
        assert!(
            routed.len() > 15,
            "the router's source was not understood: {routed:?}"
        );
        assert_eq!(routed, documented());
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{name} is not defined"
            );
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                assert!(operation["operationId"].is_string(), "{method} {path}");
                assert!(
                    operation["security"].is_array(),
                    "{method} {path} names its security"
                );
            }
        }
    }
}
