//! The admin console: the built web app embedded at compile time (see
//! `build.rs`), served on the admin port at `/` with the SPA fallback,
//! long-lived caching of hashed assets and gzip where the browser takes it.
use std::io::Read as _;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// `(path, content type, gzipped, bytes)` of every file of `web/dist`.
static ASSETS: &[(&str, &str, bool, &[u8])] =
    include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// Only the console's own origin may run scripts, fetch or frame it.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

const NOT_BUILT: &str = "<!doctype html><title>aiproxy</title><p>The admin console was not built into this binary. \
Build it with <code>npm ci &amp;&amp; npm run build</code> in <code>web/</code> and rebuild aiproxy; the admin API is at \
<code>/api/v1</code>.</p>";

fn find(path: &str) -> Option<&'static (&'static str, &'static str, bool, &'static [u8])> {
    ASSETS.iter().find(|(p, ..)| *p == path)
}

/// The first path segments of the console's own pages
/// (`web/src/router/routes.ts`; a test keeps the two in step).
pub const PAGES: &[&str] = &[
    "login",
    "dashboard",
    "accounts",
    "users",
    "packages",
    "keys",
    "logs",
    "usage",
    "cache",
    "settings",
];

/// Whether `path` (without its leading slash) is a page of the console.
fn is_page(path: &str) -> bool {
    path.is_empty() || PAGES.contains(&path.split('/').next().unwrap_or_default())
}

/// Serves `uri`: an asset, `index.html` for the console's own pages, and
/// 404 for anything else.
pub async fn serve(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    let asset = find(path).or_else(|| is_page(path).then(|| find("index.html")).flatten());
    let Some((name, content_type, gzipped, bytes)) = asset else {
        if is_page(path) {
            return page(StatusCode::OK, NOT_BUILT);
        }
        return page(StatusCode::NOT_FOUND, "not found");
    };
    let accepts_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let (body, encoding) = if *gzipped && !accepts_gzip {
        let mut plain = Vec::new();
        if flate2::read::GzDecoder::new(*bytes)
            .read_to_end(&mut plain)
            .is_err()
        {
            return page(StatusCode::INTERNAL_SERVER_ERROR, "corrupt console asset");
        }
        (Body::from(plain), None)
    } else {
        (Body::from(*bytes), gzipped.then_some("gzip"))
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(encoding) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    // Vite names built assets by content hash; the page itself must be fresh.
    let cache = if name.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    security_headers(h);
    response
}

fn page(status: StatusCode, html: &'static str) -> Response {
    let mut response = (status, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    security_headers(h);
    response
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// Whether a console build is embedded.
pub fn is_built() -> bool {
    find("index.html").is_some()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_pages_are_the_console_routes() {
        let routes = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../web/src/router/routes.ts"
        ))
        .unwrap();
        let mut declared: Vec<&str> = routes
            .lines()
            .filter_map(|l| l.trim().strip_prefix("path: '")?.split('\'').next())
            .map(|p| p.trim_start_matches('/'))
            .filter(|p| !p.is_empty() && !p.starts_with(':'))
            .collect();
        declared.sort_unstable();
        let mut pages = PAGES.to_vec();
        pages.sort_unstable();
        assert_eq!(declared, pages, "console::PAGES and routes.ts disagree");
    }

    #[test]
    fn only_pages_get_the_console() {
        for page in ["", "login", "accounts", "logs/123", "settings/x"] {
            assert!(is_page(page), "{page}");
        }
        for other in [
            "metrics",
            "readyz",
            "api",
            "api/v2/x",
            "favicon.ico",
            "accountsx",
        ] {
            assert!(!is_page(other), "{other}");
        }
    }
}
