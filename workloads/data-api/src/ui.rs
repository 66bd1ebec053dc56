//! The Registration frontend (FR-06..08) and the Status frontend (FR-09): plain HTML, CSS
//! and JavaScript modules from `ui/`, embedded in the binary and served under `/ui/`. The
//! assets are public; the pages sign in with the researcher or admin token and send it
//! with every `/management` request themselves. Every asset carries a strict
//! Content-Security-Policy (scripts, styles and requests from the Data API only), so a
//! participant's name cannot smuggle code into a researcher's page.
//!
//! `js/dom.js` (building elements from data as text) and `js/format.js` (times, "12 s
//! ago") are the agent web client's own modules from `webclient/js/`, embedded from there
//! rather than copied, so both frontends build their pages the same way.

use axum::response::Redirect;
use axum::routing::get;
use axum::Router;
use motey_webclient::Asset;

macro_rules! asset {
    ($path:literal, $file:literal) => {
        Asset {
            path: $path,
            file: $file,
            body: include_bytes!(concat!("../ui/", $file)),
        }
    };
}

macro_rules! shared {
    ($path:literal, $file:literal) => {
        Asset {
            path: $path,
            file: $file,
            body: include_bytes!(concat!("../../../webclient/", $file)),
        }
    };
}

/// Every file of `ui/` but its README, and the modules shared with the agent's web
/// client; a unit test keeps this list and the directory in step.
const ASSETS: &[Asset] = &[
    asset!("/ui/", "index.html"),
    asset!("/ui/style.css", "style.css"),
    asset!("/ui/favicon.svg", "favicon.svg"),
    asset!("/ui/js/app.js", "js/app.js"),
    asset!("/ui/js/api.js", "js/api.js"),
    asset!("/ui/js/signin.js", "js/signin.js"),
    asset!("/ui/js/households.js", "js/households.js"),
    asset!("/ui/js/registration.js", "js/registration.js"),
    asset!("/ui/js/form.js", "js/form.js"),
    asset!("/ui/js/status.js", "js/status.js"),
    shared!("/ui/js/dom.js", "js/dom.js"),
    shared!("/ui/js/format.js", "js/format.js"),
];

/// The files `ASSETS` takes from the agent's web client.
#[cfg(test)]
const SHARED: &[&str] = &["js/dom.js", "js/format.js"];

/// The frontends' routes, one per asset, plus `/ui` and `/` leading to `/ui/`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    motey_webclient::routes(ASSETS)
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_file_of_the_frontends_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk = motey_webclient::files_under(&root);
        on_disk.extend(SHARED.iter().map(|file| file.to_string()));
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.file.to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "ui/ and ASSETS differ");
    }
}
