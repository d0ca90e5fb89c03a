//! The web console's static files (`reference-server/console/`: HTML, CSS, ES modules),
//! embedded in the binary and served at `/console/` on the API's origin, with a strict
//! Content-Security-Policy and an ETag each. `GET /` leads to the console.
//!
//! Security model: the console is plain files and talks to the API with the bearer token the
//! operator types in (kept in the tab's `sessionStorage`, never in a URL or a cookie, so there
//! is nothing for a cross-site request to ride on). The CSP allows scripts, styles and
//! connections to this origin only, no inline code, no framing, no `<base>`, no form posts,
//! and Trusted Types with no policy, so no script can assign HTML to a sink (`innerHTML`):
//! the console builds its pages with `textContent` only.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use warp::filters::BoxedFilter;
use warp::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HeaderValue, LOCATION,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use warp::http::{HeaderMap, StatusCode};
use warp::path::Tail;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::error::ApiError;

/// The policy every console answer carries.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; manifest-src 'self'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

/// Where the console is served.
pub const PREFIX: &str = "/console/";

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Path under `console/` (and under [`PREFIX`]).
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            bytes: include_bytes!(concat!("../../console/", $path)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `reference-server/console/` (a test checks the list against the directory).
pub const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/main.js", JS),
    asset!("js/api.js", JS),
    asset!("js/live.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/format.js", JS),
    asset!("js/diff.js", JS),
    asset!("js/jsonpath.js", JS),
    asset!("js/pages/fleet.js", JS),
    asset!("js/pages/policies.js", JS),
    asset!("js/pages/approvals.js", JS),
    asset!("js/pages/blocks.js", JS),
    asset!("js/pages/audit.js", JS),
    asset!("js/pages/editor.js", JS),
];

/// `GET /` (to the console) and `GET /console/...` (its files; `index.html` for the folder).
pub fn routes() -> [BoxedFilter<(Response,)>; 2] {
    let root = warp::path::end()
        .and(warp::get())
        .map(|| redirect(PREFIX))
        .boxed();
    let files = warp::path("console")
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .map(|tail: Tail, headers: HeaderMap| serve(tail.as_str(), &headers))
        .boxed();
    [root, files]
}

/// The answer for `path` under the console (empty: the index), given the request's headers.
pub fn serve(path: &str, request: &HeaderMap) -> Response {
    let path = if path.is_empty() { "index.html" } else { path };
    let Some((index, asset)) = ASSETS.iter().enumerate().find(|(_, a)| a.path == path) else {
        let mut response = ApiError::not_found(format!("no console file `{path}`")).to_response();
        secure(response.headers_mut());
        return response;
    };
    let etag = etags().get(index).map_or("", String::as_str);
    let fresh = request
        .get(warp::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(ETAG, value);
    }
    // Revalidate every time: the files change with the binary, and a 304 costs a few bytes.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(headers);
    response
}

/// The security headers of every console answer.
fn secure(headers: &mut HeaderMap) {
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

fn redirect(to: &'static str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    response
}

/// A strong ETag per asset (the first 128 bits of its SHA-256), computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.bytes);
                format!("\"{}\"", hex::encode(digest.get(..16).unwrap_or_default()))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn files(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, root, out);
            } else {
                let relative = path.strip_prefix(root).unwrap();
                out.insert(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn every_console_file_is_embedded_and_nothing_else() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut on_disk = BTreeSet::new();
        files(&root, &root, &mut on_disk);
        let embedded: BTreeSet<String> = ASSETS.iter().map(|a| a.path.to_owned()).collect();
        assert_eq!(embedded, on_disk);
        for asset in ASSETS {
            let expected = match asset.path.rsplit_once('.').map(|(_, ext)| ext) {
                Some("html") => HTML,
                Some("js") => JS,
                Some("css") => "text/css; charset=utf-8",
                Some("svg") => "image/svg+xml",
                other => panic!("no content type for {other:?}"),
            };
            assert_eq!(asset.content_type, expected, "{}", asset.path);
        }
    }

    #[test]
    fn no_console_file_has_inline_code_or_html_sinks() {
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            for forbidden in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                " style=",
                "<style",
                "onclick=",
                "http://",
                "https://",
            ] {
                // An SVG names its XML namespace with a URL; nothing is fetched from it.
                let namespace = asset.path.ends_with(".svg") && forbidden.starts_with("http");
                assert!(
                    namespace || !text.contains(forbidden),
                    "{} contains `{forbidden}`",
                    asset.path
                );
            }
        }
        let index = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        assert_eq!(ASSETS[0].path, "index.html");
        assert_eq!(index.matches("<script").count(), 1);
        assert!(index.contains(r#"<script type="module" src="/console/js/main.js"></script>"#));
    }
}
