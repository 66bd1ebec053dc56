//! The Data API over real mutual TLS on a loopback port: the authorization matrix over
//! every endpoint, consent transitions, the ingest contract with the meter reader,
//! registration and corrections, and the data set export; each on sled and on PostgreSQL.

mod common;

use std::collections::HashSet;

use common::*;
use data_api::model::Scope;
use data_api::pki::{CertificateAuthority, DeviceCertificate};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

crate::on_both_stores!(
    authorization_matrix_covers_every_endpoint,
    consent_transitions_are_one_way,
    revocation_anonymizes_and_measurements_stay_exported,
    ingest_follows_the_meter_reader_contract,
    registration_corrections_and_export_filters,
    racing_consent_requests_succeed_once,
    corrections_add_and_remove_pv_systems,
);

#[derive(Clone, Copy, Debug)]
enum Role {
    Researcher,
    ResearcherOrAdmin,
}

/// One participant endpoint with the scope it needs.
struct DeviceEndpoint {
    method: Method,
    path: String,
    scope: Scope,
    body: Option<Value>,
}

struct StaffEndpoint {
    method: Method,
    path: String,
    role: Role,
    body: Option<Value>,
}

async fn send(
    client: &Client,
    method: &Method,
    url: String,
    body: &Option<Value>,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = client.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request")
}

fn device_endpoints(h: &Registered) -> Vec<DeviceEndpoint> {
    let meter = &h.meters[0];
    let e = |method: Method, path: &str, scope: Scope, body: Option<Value>| DeviceEndpoint {
        method,
        path: path.to_owned(),
        scope,
        body,
    };
    vec![
        e(Method::GET, "/account", Scope::Account, None),
        e(Method::GET, "/household", Scope::Household, None),
        e(Method::GET, "/household/consent", Scope::Consent, None),
        e(Method::POST, "/household/consent", Scope::Consent, None),
        e(Method::DELETE, "/household/consent", Scope::Consent, None),
        e(
            Method::GET,
            "/household/measurement_device",
            Scope::Household,
            None,
        ),
        e(Method::GET, "/household/meter", Scope::Household, None),
        e(
            Method::GET,
            &format!("/household/meter/{meter}/measurement"),
            Scope::MeasurementRead,
            None,
        ),
        e(
            Method::POST,
            "/household/meter/measurement",
            Scope::MeasurementWrite,
            Some(json!({"measurements": [measurement(meter, 0)]})),
        ),
        e(Method::GET, "/household/pv_system", Scope::Household, None),
    ]
}

fn staff_endpoints(h: &Registered) -> Vec<StaffEndpoint> {
    let e = |method: Method, path: String, role: Role, body: Option<Value>| StaffEndpoint {
        method,
        path,
        role,
        body,
    };
    vec![
        e(
            Method::POST,
            "/management/household".into(),
            Role::Researcher,
            Some(registration("new@example.org")),
        ),
        e(
            Method::GET,
            "/management/household".into(),
            Role::ResearcherOrAdmin,
            None,
        ),
        e(
            Method::GET,
            format!("/management/household/{}", h.id),
            Role::Researcher,
            None,
        ),
        e(
            Method::PATCH,
            format!("/management/household/{}", h.id),
            Role::Researcher,
            Some(
                json!({"metadata": {"children": 3, "adults": 2, "employed_adults": 2,
                "ev_charger": true, "heat_pump": true, "home_battery": true}}),
            ),
        ),
        e(
            Method::GET,
            "/management/session".into(),
            Role::ResearcherOrAdmin,
            None,
        ),
        e(
            Method::GET,
            "/management/export/measurements?format=csv".into(),
            Role::Researcher,
            None,
        ),
        e(
            Method::GET,
            "/management/export/households?format=jsonl".into(),
            Role::Researcher,
            None,
        ),
    ]
}

async fn authorization_matrix_covers_every_endpoint() {
    let server = TestServer::start().await;
    let alice = server.register("alice@example.org").await;
    let bob = server.register("bob@example.org").await;

    let no_cert = server.anonymous();
    let foreign_ca = CertificateAuthority::generate("foreign CA", 1).unwrap();
    let foreign = foreign_ca
        .issue_device(&DeviceCertificate::new(
            &alice.email,
            Scope::ALL.to_vec(),
            1,
        ))
        .unwrap();
    let foreign = client_with_identity(&server.ca.cert_pem, &foreign.cert_pem, &foreign.key_pem);
    let now = OffsetDateTime::now_utc();
    let expired = server
        .ca
        .issue_device(&DeviceCertificate {
            email: alice.email.clone(),
            scopes: Scope::ALL.to_vec(),
            device: None,
            not_before: now - Duration::days(10),
            not_after: now - Duration::days(1),
        })
        .unwrap();
    let expired = client_with_identity(&server.ca.cert_pem, &expired.cert_pem, &expired.key_pem);
    let stranger = server.device_all_scopes("stranger@example.org");

    for endpoint in device_endpoints(&alice) {
        let url = server.url(&endpoint.path);
        let what = format!("{} {}", endpoint.method, endpoint.path);
        let cases: [(&str, &Client, Option<&str>, u16, &str); 6] = [
            (
                "no certificate",
                &no_cert,
                None,
                401,
                "certificate_required",
            ),
            (
                "researcher token, no certificate",
                &no_cert,
                Some(RESEARCHER_TOKEN),
                401,
                "certificate_required",
            ),
            (
                "admin token, no certificate",
                &no_cert,
                Some(ADMIN_TOKEN),
                401,
                "certificate_required",
            ),
            ("foreign CA", &foreign, None, 401, "certificate_rejected"),
            (
                "expired certificate",
                &expired,
                None,
                401,
                "certificate_rejected",
            ),
            (
                "unregistered email",
                &stranger,
                None,
                401,
                "unknown_participant",
            ),
        ];
        for (case, client, token, status, code) in cases {
            let (got, body) =
                error_of(send(client, &endpoint.method, url.clone(), &endpoint.body, token).await)
                    .await;
            assert_eq!(
                (got, body["error"].as_str().unwrap()),
                (status, code),
                "{what} with {case}: {body}"
            );
        }
        let message = error_of(
            send(
                &expired,
                &endpoint.method,
                url.clone(),
                &endpoint.body,
                None,
            )
            .await,
        )
        .await
        .1;
        assert!(
            message["message"].as_str().unwrap().contains("expired"),
            "{message}"
        );

        // Every scope but the one needed.
        let others: Vec<Scope> = Scope::ALL
            .into_iter()
            .filter(|s| *s != endpoint.scope)
            .collect();
        let narrow = server.device(&alice.email, &others);
        let (got, body) =
            error_of(send(&narrow, &endpoint.method, url.clone(), &endpoint.body, None).await)
                .await;
        assert_eq!(
            (got, body["error"].as_str().unwrap()),
            (403, "insufficient_scope"),
            "{what}: {body}"
        );
    }

    // The right callers succeed, each with nothing but the scope it needs. Consent
    // endpoints run in their natural order; the measurement endpoints need consent.
    let only = |scope: Scope| server.device(&alice.email, &[scope]);
    for endpoint in device_endpoints(&alice) {
        if endpoint.method == Method::DELETE {
            continue;
        }
        let response = send(
            &only(endpoint.scope),
            &endpoint.method,
            server.url(&endpoint.path),
            &endpoint.body,
            None,
        )
        .await;
        assert!(
            response.status().is_success(),
            "{} {}: {}",
            endpoint.method,
            endpoint.path,
            response.text().await.unwrap()
        );
    }
    let response = send(
        &only(Scope::Consent),
        &Method::DELETE,
        server.url("/household/consent"),
        &None,
        None,
    )
    .await;
    assert_eq!(response.status(), 200);

    // Another household's resources are out of reach.
    let bob_client = server.device_all_scopes(&bob.email);
    let r = bob_client
        .post(server.url("/household/consent"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = error_of(
        bob_client
            .get(server.url(&format!("/household/meter/{}/measurement", alice.meters[0])))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (403, "foreign_meter")
    );
    let (status, body) = error_of(
        bob_client
            .post(server.url("/household/meter/measurement"))
            .json(&json!({"measurements": [measurement(&bob.meters[0], 1), measurement(&alice.meters[0], 2)]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (403, "foreign_meter")
    );
    assert_eq!(body["field"], "measurements[1].meter");
    let own: Value = bob_client
        .get(server.url("/household"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["id"], bob.id.as_str());

    // Researcher and admin endpoints.
    let device = server.device_all_scopes(&bob.email);
    for endpoint in staff_endpoints(&bob) {
        let url = server.url(&endpoint.path);
        let what = format!("{} {}", endpoint.method, endpoint.path);
        let cases: [(&str, &Client, Option<&str>, u16, &str); 4] = [
            ("no token", &no_cert, None, 401, "missing_token"),
            (
                "wrong token",
                &no_cert,
                Some("not-the-token-0123456789"),
                401,
                "invalid_token",
            ),
            (
                "participant certificate",
                &device,
                None,
                401,
                "missing_token",
            ),
            (
                "participant certificate, wrong token",
                &device,
                Some("x"),
                401,
                "invalid_token",
            ),
        ];
        for (case, client, token, status, code) in cases {
            let response = send(client, &endpoint.method, url.clone(), &endpoint.body, token).await;
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{what} {case}"
            );
            let (got, body) = error_of(response).await;
            assert_eq!(
                (got, body["error"].as_str().unwrap()),
                (status, code),
                "{what} with {case}: {body}"
            );
        }
        let admin = send(
            &no_cert,
            &endpoint.method,
            url.clone(),
            &endpoint.body,
            Some(ADMIN_TOKEN),
        )
        .await;
        match endpoint.role {
            Role::Researcher => {
                let (got, body) = error_of(admin).await;
                assert_eq!(
                    (got, body["error"].as_str().unwrap()),
                    (403, "insufficient_role"),
                    "{what} as admin"
                );
            }
            Role::ResearcherOrAdmin => assert_eq!(admin.status(), 200, "{what} as admin"),
        }
        let researcher = send(
            &no_cert,
            &endpoint.method,
            url.clone(),
            &endpoint.body,
            Some(RESEARCHER_TOKEN),
        )
        .await;
        assert!(
            researcher.status().is_success(),
            "{what} as researcher: {}",
            researcher.status()
        );
    }
    server.stop().await;
}

async fn consent_transitions_are_one_way() {
    let server = TestServer::start().await;
    let h = server.register("erika@example.org").await;
    let device = server.device_all_scopes(&h.email);
    let consent = |c: &Client| {
        let c = c.clone();
        let url = server.url("/household/consent");
        async move {
            c.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let state = consent(&device).await;
    assert_eq!(state["state"], "NOT_GRANTED");
    assert!(state["granted_at"].is_null() && state["revoked_at"].is_null());

    // Before granting: no measurements, no revocation.
    let batch = json!({"measurements": [measurement(&h.meters[0], 0)]});
    let (status, body) = error_of(
        device
            .post(server.url("/household/meter/measurement"))
            .json(&batch)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (403, "consent_not_granted")
    );
    let (status, body) = error_of(
        device
            .delete(server.url("/household/consent"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (409, "consent_not_granted")
    );

    // Grant once.
    let granted: Value = device
        .post(server.url("/household/consent"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(granted["state"], "GRANTED");
    assert!(granted["granted_at"].is_string());
    let (status, body) = error_of(
        device
            .post(server.url("/household/consent"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (409, "consent_already_granted")
    );
    let household: Value = device
        .get(server.url("/household"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(household["consent"]["state"], "GRANTED");

    let r: Value = device
        .post(server.url("/household/meter/measurement"))
        .json(&batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"accepted": 1, "duplicates": 0}));

    // Revoke once; never again, never back.
    let revoked: Value = device
        .delete(server.url("/household/consent"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revoked["state"], "REVOKED");
    assert_eq!(revoked["granted_at"], granted["granted_at"]);
    assert!(revoked["revoked_at"].is_string());
    for method in [Method::DELETE, Method::POST] {
        let (status, body) = error_of(
            device
                .request(method, server.url("/household/consent"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (409, "consent_revoked")
        );
    }
    // The returned device still learns it must stop, and its measurements are refused.
    assert_eq!(consent(&device).await["state"], "REVOKED");
    let late = json!({"measurements": [measurement(&h.meters[0], 1)]});
    let (status, body) = error_of(
        device
            .post(server.url("/household/meter/measurement"))
            .json(&late)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (403, "consent_revoked")
    );
    // A device certificate first used after revocation has no email to match any more.
    let (status, _) = error_of(
        server
            .device_all_scopes(&h.email)
            .get(server.url("/household/consent"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    server.stop().await;
}

async fn revocation_anonymizes_and_measurements_stay_exported() {
    let server = TestServer::start().await;
    let h = server.register("anna@example.org").await;
    let device = server.device_all_scopes(&h.email);
    device
        .post(server.url("/household/consent"))
        .send()
        .await
        .unwrap();
    let batch: Vec<Value> = (0..10)
        .map(|i| measurement(&h.meters[i % 2], i as u32))
        .collect();
    let uuids: HashSet<String> = batch
        .iter()
        .map(|m| m["uuid"].as_str().unwrap().to_owned())
        .collect();
    let r = device
        .post(server.url("/household/meter/measurement"))
        .json(&json!({"measurements": batch}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let revoked = device
        .delete(server.url("/household/consent"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);

    let (status, body) = error_of(device.get(server.url("/account")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "account_deleted")
    );
    let household: Value = device
        .get(server.url("/household"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(household["address"].is_null());
    assert_eq!(household["anonymized"], true);
    let moved = &household["location"];
    let d = data_api::anonymize::geodesic_distance(
        data_api::model::Location {
            latitude: 51.3397,
            longitude: 12.3731,
        },
        data_api::model::Location {
            latitude: moved["latitude"].as_f64().unwrap(),
            longitude: moved["longitude"].as_f64().unwrap(),
        },
    );
    // Leipzig (DED51) has ~2000 inhabitants/km²: equation 3.1 gives about [1.6 km, 4.4 km].
    let bounds = data_api::anonymize::DistanceBounds::for_density(1992.0);
    assert!(bounds.contains(d), "moved {d} m, bounds {bounds:?}");
    let pv: Value = device
        .get(server.url("/household/pv_system"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pv["pv_systems"][0]["nominal_power"], 10.0);
    assert_eq!(pv["pv_systems"][0]["installation_year"], 2019);
    assert!(pv["pv_systems"][0]["installation_date"].is_null());

    let researcher = server.anonymous();
    let view: Value = researcher
        .get(server.url(&format!("/management/household/{}", h.id)))
        .bearer_auth(RESEARCHER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        view["user"].is_null() && view["address"].is_null(),
        "{view}"
    );
    let text = view.to_string();
    assert!(
        !text.contains("anna@example.org")
            && !text.contains("Augustusplatz")
            && !text.contains("Mustermann")
    );
    // The email is free again and corrections are refused.
    let r = researcher
        .patch(server.url(&format!("/management/household/{}", h.id)))
        .bearer_auth(RESEARCHER_TOKEN)
        .json(&json!({"user": {"name": "X", "email": "x@example.org"}}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (409, "household_anonymized")
    );

    let export = researcher
        .get(server.url(&format!(
            "/management/export/measurements?format=jsonl&household={}",
            h.id
        )))
        .bearer_auth(RESEARCHER_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    // Every measurement is exported, under pseudonyms: the database's ids link to no
    // export taken before the revocation.
    let pseudonym = lines[0]["household"].as_str().unwrap().to_owned();
    assert_ne!(pseudonym, h.id);
    assert!(lines.iter().all(|l| l["household"] == pseudonym.as_str()));
    let exported: HashSet<String> = lines
        .iter()
        .map(|l| l["uuid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(exported.len(), uuids.len());
    assert!(exported.is_disjoint(&uuids));
    let households = researcher
        .get(server.url("/management/export/households?format=jsonl"))
        .bearer_auth(RESEARCHER_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(households.contains(&pseudonym) && !households.contains(&h.id));
    assert!(!households.contains("anna@example.org"));
    server.stop().await;
}

async fn ingest_follows_the_meter_reader_contract() {
    let server = TestServer::start().await;
    let h = server.register("max@example.org").await;
    let device = server.device_all_scopes(&h.email);
    device
        .post(server.url("/household/consent"))
        .send()
        .await
        .unwrap();
    let post = |body: Value| {
        device
            .post(server.url("/household/meter/measurement"))
            .header(
                "X-Component-Versions",
                "meter-reader=0.1.0,sml-decoder=0.1.0,motey-agent=0.9.1",
            )
            .json(&body)
            .send()
    };

    // The contract's example body, twice: the second time everything is a duplicate.
    let example = json!({"measurements": [{
        "uuid": "5f0c6f4e-8a3b-4c1e-9d2a-0b6f3c1e7a11", "meter": h.meters[0],
        "measured_at": "2026-11-23T10:15:00Z",
        "data": [{"0100010800ff": 12345.6}, {"0100100700ff": -230.0}]
    }]});
    let first: Value = post(example.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(first, json!({"accepted": 1, "duplicates": 0}));
    let again: Value = post(example.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(again, json!({"accepted": 0, "duplicates": 1}));
    let mixed = json!({"measurements": [example["measurements"][0], measurement(&h.meters[0], 5)]});
    let r: Value = post(mixed).await.unwrap().json().await.unwrap();
    assert_eq!(r, json!({"accepted": 1, "duplicates": 1}));

    // Malformed input names the field.
    let good = measurement(&h.meters[0], 9);
    let with = |path: &str, value: Value| {
        let mut m = good.clone();
        m[path] = value;
        json!({"measurements": [good.clone(), good.clone(), good.clone(), m]})
    };
    let cases = [
        (
            with("data", json!([{"0100010800FF": 1.0}])),
            "measurements[3].data[0]",
        ),
        (
            with("data", json!([{"1.8.0": 1.0}])),
            "measurements[3].data[0]",
        ),
        (
            with("data", json!([{"0100010800ff": "12"}])),
            "measurements[3].data[0]",
        ),
        (
            with("data", json!([{"0100010800ff": 1.0, "0100020800ff": 2.0}])),
            "measurements[3].data[0]",
        ),
        (
            with("data", json!([{"0100010800ff": 1.0}, {}])),
            "measurements[3].data[1]",
        ),
        (with("data", json!([])), "measurements[3].data"),
        (with("uuid", json!("not-a-uuid")), "measurements[3].uuid"),
        (with("meter", json!(42)), "measurements[3].meter"),
        (
            with("measured_at", json!("yesterday")),
            "measurements[3].measured_at",
        ),
        (with("extra", json!(1)), "measurements[3].extra"),
        (json!({"measurements": "all"}), "measurements"),
        (json!({"measurements": []}), "measurements"),
        (json!({"readings": []}), "readings"),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let (status, err) = error_of(post(body.clone()).await.unwrap()).await;
        assert_eq!(
            (
                status,
                err["error"].as_str().unwrap(),
                err["field"].as_str().unwrap()
            ),
            (400, "invalid_field", field),
            "{body}"
        );
    }
    let broken = device
        .post(server.url("/household/meter/measurement"))
        .body("{\"measurements\": [")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(broken).await;
    assert_eq!(
        (status, err["error"].as_str().unwrap()),
        (400, "invalid_json")
    );
    let oversized: Vec<Value> = (0..1001)
        .map(|i| measurement(&h.meters[0], i % 600))
        .collect();
    let (status, err) = error_of(post(json!({"measurements": oversized})).await.unwrap()).await;
    assert_eq!(
        (status, err["error"].as_str().unwrap()),
        (413, "too_many_measurements")
    );
    let huge = "x".repeat(5 << 20);
    let (status, _) = error_of(
        device
            .post(server.url("/household/meter/measurement"))
            .body(huge)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);
    let (status, err) = error_of(
        device
            .post(server.url("/household/meter/measurement"))
            .header("X-Component-Versions", "garbage")
            .json(&example)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str().unwrap()),
        (400, "X-Component-Versions")
    );
    // A uuid taken by another meter is not a duplicate but an error.
    let mut stolen = example["measurements"][0].clone();
    stolen["meter"] = json!(h.meters[1]);
    let (status, err) = error_of(post(json!({"measurements": [stolen]})).await.unwrap()).await;
    assert_eq!(
        (status, err["field"].as_str().unwrap()),
        (400, "measurements[0].uuid")
    );

    // Device health: versions and activity; meters know their last measurement.
    let devices: Value = device
        .get(server.url("/household/measurement_device"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        devices["measurement_devices"][0]["component_versions"],
        json!({"meter-reader": "0.1.0", "sml-decoder": "0.1.0", "motey-agent": "0.9.1"})
    );
    assert!(devices["measurement_devices"][0]["last_activity"].is_string());
    let overview: Value = server
        .anonymous()
        .get(server.url("/management/household"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = &overview["households"][0];
    assert_eq!(
        entry["measurement_devices"][0]["component_versions"],
        json!({"meter-reader": "0.1.0", "sml-decoder": "0.1.0", "motey-agent": "0.9.1"})
    );
    assert_eq!(
        entry["meters"][0]["last_measurement"],
        "2026-11-23T10:15:00Z"
    );
    assert!(
        entry.get("user").is_none() && entry.get("address").is_none(),
        "no contact details in the overview"
    );
    assert!(entry["participant"].is_string(), "the participant is named");
    // Device health: consent was granted moments ago, so measurements dated days back
    // do not make the device silent yet (the judgement itself is unit-tested).
    let health = &entry["measurement_devices"][0]["health"];
    assert_eq!(health["state"], "reporting", "{health}");
    assert_eq!(
        entry["measurement_devices"][0]["last_measurement"],
        entry["meters"][0]["last_measurement"]
    );
    assert_eq!(overview["report_interval_seconds"], 3600.0);
    assert_eq!(overview["silent_after_seconds"], 7200.0);
    // Researchers find their participants by name in the same overview.
    let overview: Value = server
        .anonymous()
        .get(server.url("/management/household"))
        .bearer_auth(RESEARCHER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = &overview["households"][0];
    assert!(entry["user"]["email"].is_string(), "{entry}");
    assert!(entry.get("address").is_none(), "{entry}");

    // Paging through a meter's series in a time range.
    let series: Vec<Value> = (0..25).map(|i| measurement(&h.meters[1], 20 + i)).collect();
    post(json!({"measurements": series})).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "/household/meter/{}/measurement?from=2026-11-23T10:25:00Z&to=2026-11-23T10:40:00Z&limit=4",
            h.meters[1]
        );
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = device
            .get(server.url(&url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for m in page["measurements"].as_array().unwrap() {
            seen.push(m["measured_at"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (25..40)
        .map(|m| format!("2026-11-23T10:{m:02}:00Z"))
        .collect();
    assert_eq!(seen, expected);
    for query in ["limit=0", "limit=5000", "from=soon", "cursor=zz", "bogus=1"] {
        let url = server.url(&format!(
            "/household/meter/{}/measurement?{query}",
            h.meters[1]
        ));
        let (status, _) = error_of(device.get(url).send().await.unwrap()).await;
        assert_eq!(status, 400, "{query}");
    }
    let (status, err) = error_of(
        device
            .get(server.url("/household/meter/nope/measurement"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, err["field"].as_str().unwrap()), (400, "uuid"));
    let (status, _) = error_of(device.get(server.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    let (status, _) = error_of(device.put(server.url("/household")).send().await.unwrap()).await;
    assert_eq!(status, 405);
    server.stop().await;
}

async fn registration_corrections_and_export_filters() {
    let server = TestServer::start().await;
    let researcher = server.anonymous();
    let create = |body: Value| {
        researcher
            .post(server.url("/management/household"))
            .bearer_auth(RESEARCHER_TOKEN)
            .json(&body)
            .send()
    };
    // Registration details are checked field by field.
    let mut bad = registration("a@example.org");
    bad["pv_systems"][0]["tilt"] = json!(120.0);
    let (status, err) = error_of(create(bad).await.unwrap()).await;
    assert_eq!(
        (status, err["field"].as_str().unwrap()),
        (400, "pv_systems[0].tilt")
    );
    let mut bad = registration("a@example.org");
    bad["pv_systems"][0]["generation_meter"] = json!(0);
    let (_, err) = error_of(create(bad).await.unwrap()).await;
    assert_eq!(err["field"], "pv_systems[0].generation_meter");
    let mut bad = registration("a@example.org");
    bad["meters"][0]["model"] = json!("XYZ");
    let (_, err) = error_of(create(bad).await.unwrap()).await;
    assert_eq!(err["field"], "meters[0].model");
    let mut bad = registration("not-an-email");
    bad["metadata"]["adults"] = json!(1);
    let (_, err) = error_of(create(bad).await.unwrap()).await;
    assert_eq!(err["field"], "user.email");
    let mut bad = registration("a@example.org");
    bad["location"]["latitude"] = json!(91.0);
    let (_, err) = error_of(create(bad).await.unwrap()).await;
    assert_eq!(err["field"], "location.latitude");
    let mut bad = registration("a@example.org");
    bad.as_object_mut().unwrap().remove("metadata");
    let (status, err) = error_of(create(bad).await.unwrap()).await;
    assert_eq!(
        (status, err["error"].as_str().unwrap()),
        (400, "invalid_field")
    );

    let a = server.register("a@example.org").await;
    let (status, err) = error_of(create(registration("A@Example.org")).await.unwrap()).await;
    assert_eq!(
        (status, err["error"].as_str().unwrap()),
        (409, "email_taken")
    );
    assert_eq!(err["field"], "user.email");
    let b = server.register("b@example.org").await;
    assert_eq!(a.body["user"]["email"], "a@example.org");
    assert_eq!(
        a.body["pv_systems"][0]["generation_meter"],
        a.meters[1].as_str()
    );

    // FR-07: correct the email; the device certificate follows the new address.
    let patched = researcher
        .patch(server.url(&format!("/management/household/{}", a.id)))
        .bearer_auth(RESEARCHER_TOKEN)
        .json(&json!({"user": {"name": "Anna A.", "email": "anna@example.org"},
                      "meters": [{"uuid": a.meters[0], "model": "DD3"}],
                      "pv_systems": [{"uuid": a.body["pv_systems"][0]["uuid"], "nominal_power": 7.5}]}))
        .send().await.unwrap();
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["meters"][0]["model"], "DD3");
    assert_eq!(patched["pv_systems"][0]["nominal_power"], 7.5);
    let account: Value = server
        .device_all_scopes("anna@example.org")
        .get(server.url("/account"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        account,
        json!({"name": "Anna A.", "email": "anna@example.org"})
    );
    let (status, _) = error_of(
        server
            .device_all_scopes("a@example.org")
            .get(server.url("/account"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, err) = error_of(
        researcher
            .patch(server.url(&format!("/management/household/{}", a.id)))
            .bearer_auth(RESEARCHER_TOKEN)
            .json(&json!({"user": {"name": "B", "email": "b@example.org"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str().unwrap()),
        (409, "email_taken")
    );
    let (status, err) = error_of(
        researcher
            .patch(server.url(&format!("/management/household/{}", a.id)))
            .bearer_auth(RESEARCHER_TOKEN)
            .json(&json!({"meters": [{"uuid": b.meters[0], "model": "EASY"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str().unwrap()),
        (400, "meters[0].uuid")
    );
    let (status, _) = error_of(
        researcher
            .get(server.url(&format!("/management/household/{}", uuid::Uuid::new_v4())))
            .bearer_auth(RESEARCHER_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);

    // Consent overview filter (FR-08).
    server
        .device_all_scopes("b@example.org")
        .post(server.url("/household/consent"))
        .send()
        .await
        .unwrap();
    let granted: Value = researcher
        .get(server.url("/management/household?consent=GRANTED"))
        .bearer_auth(RESEARCHER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = granted["households"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![b.id.as_str()]);

    // Export filters: household and time range; CSV has one row per data point.
    let device_b = server.device_all_scopes("b@example.org");
    let batch: Vec<Value> = (0..30).map(|i| measurement(&b.meters[0], i)).collect();
    device_b
        .post(server.url("/household/meter/measurement"))
        .json(&json!({"measurements": batch}))
        .send()
        .await
        .unwrap();
    let csv = researcher
        .get(server.url(&format!(
            "/management/export/measurements?format=csv&household={}&from=2026-11-23T10:10:00Z&to=2026-11-23T10:20:00Z",
            b.id
        )))
        .bearer_auth(RESEARCHER_TOKEN)
        .send().await.unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        data_api::export::CSV_HEADER.trim_end()
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 20, "10 measurements × 2 data points");
    let pseudonym = rows[0].split(',').next().unwrap();
    assert_ne!(pseudonym, b.id);
    assert!(rows
        .iter()
        .all(|r| r.starts_with(pseudonym) && r.contains(",ELECTRICITY,MT681,")));
    assert!(
        rows[0].ends_with(",2026-11-23T10:10:00Z,0100010800ff,12355.6"),
        "{}",
        rows[0]
    );
    let none = researcher
        .get(server.url(&format!(
            "/management/export/measurements?format=jsonl&household={}",
            a.id
        )))
        .bearer_auth(RESEARCHER_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(none.is_empty());
    for query in ["format=xml", "household=nope", "from=later"] {
        let (status, _) = error_of(
            researcher
                .get(server.url(&format!("/management/export/measurements?{query}")))
                .bearer_auth(RESEARCHER_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST.as_u16(), "{query}");
    }
    server.stop().await;
}

async fn racing_consent_requests_succeed_once() {
    let server = TestServer::start().await;
    let h = server.register("race@example.org").await;
    let device = server.device_all_scopes(&h.email);
    for method in [Method::POST, Method::DELETE] {
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let (device, url, method) = (
                    device.clone(),
                    server.url("/household/consent"),
                    method.clone(),
                );
                tokio::spawn(async move {
                    device
                        .request(method, url)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for a in attempts {
            statuses.push(a.await.unwrap());
        }
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 409, 409, 409, 409, 409, 409, 409],
            "{method}"
        );
    }
    let consent: Value = device
        .get(server.url("/household/consent"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(consent["state"], "REVOKED");
    server.stop().await;
}

/// FR-07: a forgotten PV system is added, one listed by mistake removed; a new one needs
/// every attribute, and its generation meter must be a PV-GENERATION meter.
async fn corrections_add_and_remove_pv_systems() {
    let server = TestServer::start().await;
    let h = server.register("pv@example.org").await;
    let stored = h.body["pv_systems"][0]["uuid"].as_str().unwrap().to_owned();
    let patch = |body: Value| {
        server
            .anonymous()
            .patch(server.url(&format!("/management/household/{}", h.id)))
            .bearer_auth(RESEARCHER_TOKEN)
            .json(&body)
            .send()
    };

    let (status, err) = error_of(
        patch(json!({"pv_systems": [{"uuid": stored, "tilt": 20}, {"nominal_power": 3.2, "azimuth": 90}]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("pv_systems[1].installation_date"))
    );
    let (status, err) = error_of(
        patch(
            json!({"pv_systems": [{"nominal_power": 3.2, "azimuth": 90, "tilt": 10,
            "installation_date": "2021-04-01", "generation_meter": h.meters[0]}]}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("pv_systems[0].generation_meter"))
    );

    let added: Value = patch(
        json!({"pv_systems": [{"nominal_power": 3.2, "azimuth": 90, "tilt": 10,
        "installation_date": "2021-04-01", "generation_meter": h.meters[1]}]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let systems = added["pv_systems"].as_array().unwrap();
    assert_eq!(systems.len(), 2, "{added}");
    assert_eq!(systems[1]["nominal_power"], 3.2);
    assert_eq!(systems[1]["installation_year"], 2021);
    assert_eq!(systems[1]["generation_meter"], h.meters[1].as_str());

    let removed = patch(json!({"pv_systems": [{"uuid": stored, "remove": true}]}))
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let removed: Value = removed.json().await.unwrap();
    let systems = removed["pv_systems"].as_array().unwrap();
    assert_eq!(systems.len(), 1, "{removed}");
    assert_eq!(systems[0]["nominal_power"], 3.2);
    let (status, err) = error_of(
        patch(json!({"pv_systems": [{"uuid": stored, "remove": true}]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("pv_systems[0].uuid"))
    );
    server.stop().await;
}

/// FR-07: meters and measurement devices are added, changed and removed with located
/// errors; a meter a PV system names, a meter with measurements and a device that still
/// reads a meter stay (409 naming what holds them); uuids are unique across households.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_add_change_and_remove_meters_and_devices() {
    let server = TestServer::start().await;
    let h = server.register("meters@example.org").await;
    let other = server.register("other@example.org").await;
    let patch = |body: Value| {
        server
            .anonymous()
            .patch(server.url(&format!("/management/household/{}", h.id)))
            .bearer_auth(RESEARCHER_TOKEN)
            .json(&body)
            .send()
    };
    let refused = |body: Value| async move { error_of(patch(body).await.unwrap()).await };

    // A new meter needs what registration needs; errors name the entry.
    let (status, err) =
        refused(json!({"meters": [{"uuid": h.meters[0], "model": "DD3"}, {"model": "EHZ"}]})).await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("meters[1].type")),
        "{err}"
    );
    let (status, err) = refused(json!({"meters": [{"type": "ELECTRICITY", "model": "EHZ",
        "measurement_device": other.device}]}))
    .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("meters[0].measurement_device"))
    );
    // Uuids are unique across households.
    let (status, err) = refused(json!({"meters": [{"add": true, "uuid": other.meters[0],
        "type": "ELECTRICITY", "model": "EHZ"}]}))
    .await;
    assert_eq!(
        (status, err["error"].as_str(), err["field"].as_str()),
        (409, Some("duplicate_id"), Some("meters[0].uuid"))
    );

    // A second device with a chosen uuid, a meter it reads, the first meter corrected.
    let second = uuid::Uuid::new_v4().to_string();
    let response = patch(json!({
        "measurement_devices": [{"add": true, "uuid": second, "name": "pi-2", "scopes": ["measurement-write"]}],
        "meters": [{"uuid": h.meters[0], "model": "DD3"},
                   {"type": "ELECTRICITY", "model": "EASY", "measurement_device": second}]
    }))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let view: Value = response.json().await.unwrap();
    let meters = view["meters"].as_array().unwrap();
    assert_eq!(meters.len(), 3, "{view}");
    assert_eq!(meters[0]["model"], "DD3");
    assert_eq!(meters[2]["measurement_device"], second.as_str());
    assert_eq!(view["measurement_devices"][1]["name"], "pi-2");
    let added = meters[2]["uuid"].as_str().unwrap().to_owned();

    // The device still reads a meter; the PV system names the generation meter.
    let (status, err) =
        refused(json!({"measurement_devices": [{"uuid": second, "remove": true}]})).await;
    assert_eq!(
        (status, err["error"].as_str(), err["field"].as_str()),
        (
            409,
            Some("device_in_use"),
            Some("measurement_devices[0].uuid")
        )
    );
    assert!(err["message"].as_str().unwrap().contains(&added), "{err}");
    let pv = h.body["pv_systems"][0]["uuid"].as_str().unwrap().to_owned();
    let (status, err) = refused(json!({"meters": [{"uuid": h.meters[1], "remove": true}]})).await;
    assert_eq!(
        (status, err["error"].as_str(), err["field"].as_str()),
        (409, Some("meter_in_use"), Some("meters[0].uuid"))
    );
    assert!(err["message"].as_str().unwrap().contains(&pv), "{err}");

    // A meter with measurements is part of the data set.
    let device = server.device_all_scopes("meters@example.org");
    assert_eq!(
        device
            .post(server.url("/household/consent"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let upload = device
        .post(server.url("/household/meter/measurement"))
        .json(&json!({"measurements": [measurement(&h.meters[0], 1)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let (status, err) = refused(json!({"meters": [{"uuid": h.meters[0], "remove": true}]})).await;
    assert_eq!(
        (status, err["error"].as_str(), err["field"].as_str()),
        (409, Some("meter_has_measurements"), Some("meters[0].uuid"))
    );

    // One correction removes the PV system with its generation meter, and the new meter
    // with the device that read it.
    let response = patch(json!({
        "pv_systems": [{"uuid": pv, "remove": true}],
        "meters": [{"uuid": h.meters[1], "remove": true}, {"uuid": added, "remove": true}],
        "measurement_devices": [{"uuid": second, "remove": true}]
    }))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let view: Value = response.json().await.unwrap();
    assert_eq!(view["meters"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(view["measurement_devices"].as_array().unwrap().len(), 1);
    assert_eq!(view["pv_systems"], json!([]));
    // The last meter stays: a household has at least one.
    let (status, err) = refused(json!({"meters": [{"uuid": h.meters[0], "remove": true}]})).await;
    assert_eq!((status, err["field"].as_str()), (400, Some("meters")));

    // A removed meter's uuid stays with its household: no other one can take it.
    let taken = server
        .anonymous()
        .patch(server.url(&format!("/management/household/{}", other.id)))
        .bearer_auth(RESEARCHER_TOKEN)
        .json(&json!({"meters": [{"add": true, "uuid": added, "type": "ELECTRICITY", "model": "EHZ"}]}))
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(taken).await;
    assert_eq!((status, err["error"].as_str()), (409, Some("duplicate_id")));
    server.stop().await;
}
