//! The Data API's OpenAPI document against a real `data-api serve`: the document is
//! fetched from `/openapi.json` (open, no token), and schemathesis generates requests
//! from it — examples, coverage, fuzzing and the stateful phase that follows the links
//! from a registration to reading and correcting it — and runs every check on the
//! answers, once with the researcher token and once with the admin token. Any answer the
//! document does not describe fails.
//!
//! Participant endpoints need a device certificate, which schemathesis does not present:
//! their refusals (401) are checked against the document here; their contract with
//! certificates is in `workloads/data-api/tests/api.rs`.

use system_tests::docker::repo_root;
use system_tests::openapi::Fuzz;
use system_tests::survey::{registration, DataApi, Survey, ADMIN_TOKEN, RESEARCHER_TOKEN};

/// Runs schemathesis with `token` against a Data API of its own with one household.
async fn fuzz_with(token: &str, what: &str) {
    let survey = Survey::new();
    let api = DataApi::start(&survey).await;
    api.register(&survey, &registration("fuzz@example.org"))
        .await;
    let response = survey
        .client()
        .get(format!("{}/openapi.json", api.url()))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200, "/openapi.json needs no token");
    let document = survey.dir.path().join("openapi.json");
    std::fs::write(&document, response.bytes().await.unwrap()).unwrap();

    Fuzz::new(
        document.to_str().unwrap(),
        &api.url(),
        &repo_root().join("tests/tests/data_api_openapi.toml"),
        10,
    )
    .arg("--tls-verify")
    .arg(survey.ca())
    .header(&format!("Authorization: Bearer {token}"))
    .passes(what)
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_researcher_token_every_answer_is_as_the_openapi_document_says() {
    fuzz_with(RESEARCHER_TOKEN, "researcher token").await;
}

/// Administrators see the overview and the session; every researcher endpoint is a 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_admin_token_every_answer_is_as_the_openapi_document_says() {
    fuzz_with(ADMIN_TOKEN, "admin token").await;
}
