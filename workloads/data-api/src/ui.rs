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

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// One embedded file of the frontends.
struct Asset {
    /// The URL path it is served at.
    path: &'static str,
    /// The file name the content type follows from.
    file: &'static str,
    body: &'static [u8],
}

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

/// Scripts, styles, images and requests from the Data API only; no inline code, no
/// frames, no plugins, forms post nowhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The frontends' routes, one per asset, plus `/ui` and `/` leading to `/ui/`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for (index, asset) in ASSETS.iter().enumerate() {
        let serve = move |headers: HeaderMap| async move { serve(index, &headers) };
        router = router.route(asset.path, get(serve));
        if asset.path == "/ui/" {
            router = router.route("/ui/index.html", get(serve));
        }
    }
    let favicon = |headers: HeaderMap| async move {
        let index = ASSETS
            .iter()
            .position(|asset| asset.file == "favicon.svg")
            .unwrap_or_default();
        serve(index, &headers)
    };
    router
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        // Browsers ask for it whatever the page says; an answer keeps their console clean.
        .route("/favicon.ico", get(favicon))
}

/// The asset with its headers; 304 when the browser's copy is current. Assets are
/// revalidated on every use (`no-cache`) so that an upgraded Data API never runs with
/// stale scripts; the entity tag makes that a cheap 304.
fn serve(index: usize, request: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == etag.to_str().unwrap_or_default() || tag.trim() == "*");
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(asset.file)),
    );
    (headers, asset.body).into_response()
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// Strong entity tags from the content, computed once.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = hex::encode(&Sha256::digest(asset.body)[..12]);
                HeaderValue::from_str(&format!("\"{digest}\"")).expect("hex is a valid header")
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn files_under(root: &Path, dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_under(root, &path, found);
            } else {
                found.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }

    #[test]
    fn every_file_of_the_frontends_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk = Vec::new();
        files_under(&root, &root, &mut on_disk);
        on_disk.retain(|file| file != "README.md");
        on_disk.extend(SHARED.iter().map(|file| file.to_string()));
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.file.to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "ui/ and ASSETS differ");
    }

    #[test]
    fn assets_carry_the_policy_and_revalidate() {
        let response = serve(0, &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, etags()[0].clone());
        assert_eq!(serve(0, &request).status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn scripts_and_styles_get_their_content_types() {
        assert_eq!(content_type("js/app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
    }
}
