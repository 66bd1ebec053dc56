//! The admin web client (`webclient/` at the repository root), embedded in the binary and
//! served at `/`. The assets are public: the client signs in with the API token and sends
//! it with every `/v1` request itself. Every asset carries a strict Content-Security-Policy
//! (scripts, styles and requests only from the agent), so even a blueprint that smuggles
//! markup into a service name cannot run code in the page.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// One embedded file of the web client.
struct Asset {
    /// The URL path it is served at.
    path: &'static str,
    /// The file name the content type is guessed from.
    file: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal) => {
        Asset {
            path: $path,
            file: $file,
            body: include_bytes!(concat!("../../../webclient/", $file)),
        }
    };
}

/// Every file of `webclient/` but its README; a unit test keeps this list and the
/// directory in step.
const ASSETS: &[Asset] = &[
    asset!("/", "index.html"),
    asset!("/style.css", "style.css"),
    asset!("/favicon.svg", "favicon.svg"),
    asset!("/js/app.js", "js/app.js"),
    asset!("/js/api.js", "js/api.js"),
    asset!("/js/dom.js", "js/dom.js"),
    asset!("/js/format.js", "js/format.js"),
    asset!("/js/signin.js", "js/signin.js"),
    asset!("/js/services.js", "js/services.js"),
    asset!("/js/service-access.js", "js/service-access.js"),
    asset!("/js/nodes.js", "js/nodes.js"),
    asset!("/js/capabilities.js", "js/capabilities.js"),
    asset!("/js/deploy.js", "js/deploy.js"),
];

/// Scripts, styles, images and requests from the agent only; no inline code, no frames,
/// no plugins, forms post nowhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The routes of the web client, one per asset (`/index.html` too), for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for (index, asset) in ASSETS.iter().enumerate() {
        let serve = move |headers: HeaderMap| async move { serve(index, &headers) };
        router = router.route(asset.path, get(serve));
        if asset.path == "/" {
            router = router.route("/index.html", get(serve));
        }
    }
    // Browsers ask for it whatever the page says; an answer keeps their console clean.
    router.route(
        "/favicon.ico",
        get(|headers: HeaderMap| async move {
            let index = ASSETS
                .iter()
                .position(|asset| asset.file == "favicon.svg")
                .unwrap_or_default();
            serve(index, &headers)
        }),
    )
}

/// The asset with headers; 304 when the browser's copy is current. Assets are revalidated
/// on every use (`no-cache`) so that an upgraded agent never runs with stale scripts; the
/// entity tag makes that a cheap 304.
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
    headers.insert(header::CONTENT_TYPE, content_type(asset.file));
    (headers, asset.body).into_response()
}

fn content_type(file: &str) -> HeaderValue {
    let mime = mime_guess::from_path(file).first_or_octet_stream();
    let value = if mime.type_() == mime_guess::mime::TEXT
        || mime.subtype() == mime_guess::mime::JAVASCRIPT
        || mime.subtype() == mime_guess::mime::JSON
    {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_owned()
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
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
    fn every_file_of_the_web_client_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../webclient");
        let mut on_disk = Vec::new();
        files_under(&root, &root, &mut on_disk);
        on_disk.retain(|file| file != "README.md");
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.file.to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "webclient/ and ASSETS differ");
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
            let current = etags()[1].to_str().unwrap().to_owned();
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
            let response = serve(1, &request);
            let expected = if fresh { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
            proptest::prop_assert_eq!(response.status(), expected);
            proptest::prop_assert_eq!(&response.headers()[header::ETAG], &etags()[1]);
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
