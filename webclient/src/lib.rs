//! The browser frontends of this repository are plain HTML, CSS and JavaScript modules
//! embedded in the binaries that serve them: the agent's admin web client (the files of
//! this directory, [`ADMIN_CLIENT`]) and the Data API's Registration and Status frontends.
//! This crate holds what they share: how an embedded file is served (a strong entity tag,
//! revalidation on every use, a strict Content-Security-Policy and the other protective
//! headers) and the admin client's assets themselves.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// One embedded file of a frontend.
#[derive(Debug)]
pub struct Asset {
    /// The URL path it is served at.
    pub path: &'static str,
    /// Its file name, relative to its frontend's directory; the content type follows from it.
    pub file: &'static str,
    pub body: &'static [u8],
}

/// Scripts, styles, images and requests from the serving origin only; no inline code, no
/// frames, no plugins, forms post nowhere else. Even text a user entered that smuggles
/// markup into a page (a service or participant name) cannot run code there.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

macro_rules! admin_asset {
    ($path:literal, $file:literal) => {
        Asset {
            path: $path,
            file: $file,
            body: include_bytes!(concat!("../", $file)),
        }
    };
}

/// The agent's admin web client, served at `/`: every file of this directory but its
/// README and the crate's own files; a unit test keeps this list and the directory in step.
pub const ADMIN_CLIENT: &[Asset] = &[
    admin_asset!("/", "index.html"),
    admin_asset!("/style.css", "style.css"),
    admin_asset!("/favicon.svg", "favicon.svg"),
    admin_asset!("/js/app.js", "js/app.js"),
    admin_asset!("/js/api.js", "js/api.js"),
    admin_asset!("/js/dom.js", "js/dom.js"),
    admin_asset!("/js/format.js", "js/format.js"),
    admin_asset!("/js/signin.js", "js/signin.js"),
    admin_asset!("/js/services.js", "js/services.js"),
    admin_asset!("/js/service-access.js", "js/service-access.js"),
    admin_asset!("/js/nodes.js", "js/nodes.js"),
    admin_asset!("/js/capabilities.js", "js/capabilities.js"),
    admin_asset!("/js/deploy.js", "js/deploy.js"),
];

/// The routes of a frontend, one per asset, for any router state; the asset served at
/// `index` (a path ending in `/`) also answers at `index.html` below it, and the frontend's
/// `favicon.svg` at `/favicon.ico`, which browsers ask for whatever a page says.
pub fn routes<S: Clone + Send + Sync + 'static>(assets: &'static [Asset]) -> Router<S> {
    let mut router = Router::new();
    for asset in assets {
        let served = Arc::new(Served::new(asset));
        let serve = {
            let served = served.clone();
            move |headers: HeaderMap| async move { served.respond(&headers) }
        };
        router = router.route(asset.path, get(serve.clone()));
        if asset.path.ends_with('/') {
            router = router.route(&format!("{}index.html", asset.path), get(serve));
        }
    }
    if let Some(favicon) = assets.iter().find(|asset| asset.file == "favicon.svg") {
        let served = Arc::new(Served::new(favicon));
        router = router.route(
            "/favicon.ico",
            get(move |headers: HeaderMap| async move { served.respond(&headers) }),
        );
    }
    router
}

/// An asset with its entity tag, computed once when the routes are built.
struct Served {
    asset: &'static Asset,
    etag: HeaderValue,
}

impl Served {
    fn new(asset: &'static Asset) -> Served {
        let digest = hex::encode(&Sha256::digest(asset.body)[..12]);
        Served {
            asset,
            etag: HeaderValue::from_str(&format!("\"{digest}\"")).expect("hex is a valid header"),
        }
    }

    /// The asset with its headers; 304 when the browser's copy is current. Assets are
    /// revalidated on every use (`no-cache`) so that an upgraded binary never runs with
    /// stale scripts; the entity tag makes that a cheap 304.
    fn respond(&self, request: &HeaderMap) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, self.etag.clone());
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
        let current = self.etag.to_str().unwrap_or_default();
        let fresh = request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|tag| tag.trim() == current || tag.trim() == "*");
        if fresh {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(self.asset.file)),
        );
        (headers, self.asset.body).into_response()
    }
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// The files below `dir` (relative, `/`-separated) but READMEs, for the tests that keep a
/// frontend's asset list and its directory in step.
pub fn files_under(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, found);
            } else if path.file_name().is_some_and(|name| name != "README.md") {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                found.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, dir, &mut found);
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn every_file_of_the_admin_client_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let on_disk: Vec<String> = files_under(root)
            .into_iter()
            .filter(|file| !file.starts_with("src/") && file != "Cargo.toml")
            .collect();
        let mut embedded: Vec<String> = ADMIN_CLIENT.iter().map(|a| a.file.to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "webclient/ and ADMIN_CLIENT differ");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Whatever a browser sends as If-None-Match, the answer is the asset or a 304,
        /// and a 304 only when one of the tags is the asset's.
        #[test]
        fn any_if_none_match_gets_the_asset_or_not_modified(
            tags in proptest::collection::vec("[ -~]{0,40}", 0..4),
            with_current in proptest::bool::ANY,
        ) {
            let served = Served::new(&ADMIN_CLIENT[1]);
            let current = served.etag.to_str().unwrap().to_owned();
            let mut tags = tags;
            if with_current {
                tags.push(current.clone());
            }
            let value = tags.join(",");
            let mut request = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&value) {
                request.insert(header::IF_NONE_MATCH, value);
            }
            let fresh = request.contains_key(header::IF_NONE_MATCH)
                && value.split(',').any(|tag| tag.trim() == current || tag.trim() == "*");
            let response = served.respond(&request);
            let expected = if fresh { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
            proptest::prop_assert_eq!(response.status(), expected);
            proptest::prop_assert_eq!(&response.headers()[header::ETAG], &served.etag);
            proptest::prop_assert_eq!(
                response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap(),
                CONTENT_SECURITY_POLICY
            );
        }
    }

    #[test]
    fn scripts_and_styles_get_their_content_types() {
        assert_eq!(content_type("js/app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("favicon.svg"), "image/svg+xml");
    }
}
