//! The collaborative editors at `/` (plain text: CodeMirror + y-websocket)
//! and `/rich` (rich text: Tiptap + @hocuspocus/provider): the pages built
//! from `web-demo/` (`npm run build` writes `web-demo/dist/`, which is
//! committed) embedded in the binary, so `crdt-hub serve` needs neither npm
//! nor files beside it.
//!
//! - `/` is `index.html` and `/rich` is `rich.html`, revalidated on every
//!   load (`no-cache` + `ETag`), so a new binary's page is picked up at once.
//! - Each page links its own script and stylesheet (`/assets/app.js` and
//!   `/assets/app.css`; `/assets/rich.js` and `/assets/rich.css`) as
//!   `?v=<content hash>`: requested with the current hash they are cached
//!   for a year; with any other (or no) hash they are revalidated, so a
//!   stale URL never pins the wrong bytes in a cache for a year.
//! - The assets are also embedded gzipped and sent so to browsers that
//!   accept gzip (a third of the bytes).

use std::sync::LazyLock;

use warp::http::StatusCode;
use warp::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    HeaderMap, HeaderValue, IF_NONE_MATCH, REFERRER_POLICY, VARY, X_CONTENT_TYPE_OPTIONS,
};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

// `web-demo-dist` links to the top-level `web-demo/dist` (the committed
// bundle), inside this package so that `cargo package` carries it.
const INDEX_HTML: &[u8] = include_bytes!("../../web-demo-dist/index.html");
const APP_JS: &[u8] = include_bytes!("../../web-demo-dist/app.js");
const APP_JS_GZ: &[u8] = include_bytes!("../../web-demo-dist/app.js.gz");
const APP_CSS: &[u8] = include_bytes!("../../web-demo-dist/app.css");
const APP_CSS_GZ: &[u8] = include_bytes!("../../web-demo-dist/app.css.gz");
const RICH_HTML: &[u8] = include_bytes!("../../web-demo-dist/rich.html");
const RICH_JS: &[u8] = include_bytes!("../../web-demo-dist/rich.js");
const RICH_JS_GZ: &[u8] = include_bytes!("../../web-demo-dist/rich.js.gz");
const RICH_CSS: &[u8] = include_bytes!("../../web-demo-dist/rich.css");
const RICH_CSS_GZ: &[u8] = include_bytes!("../../web-demo-dist/rich.css.gz");

/// Cache for a year: the URL changes whenever the bytes do.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Keep a copy but ask first (cheap: `If-None-Match` gets a 304).
const REVALIDATE: &str = "no-cache";

/// A page loads only its own script and stylesheet and talks only to
/// this server (`'self'` covers `ws:`/`wss:` to the same host). Inline
/// styles stay allowed: CodeMirror positions carets and colours peers'
/// selections with `style` attributes, and Tiptap does the same for its
/// collaboration carets and adds its base styles as a `<style>` element.
/// The rich page needs nothing more, so both pages share this policy.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// One embedded file, in one or two encodings.
struct Asset {
    content_type: &'static str,
    identity: &'static [u8],
    gzip: Option<&'static [u8]>,
    /// The `v` that `index.html` puts in this asset's URL; `None` for the
    /// page itself.
    version: Option<String>,
    etag: String,
    gzip_etag: String,
}

impl Asset {
    fn new(
        content_type: &'static str,
        identity: &'static [u8],
        gzip: Option<&'static [u8]>,
    ) -> Self {
        let etag = format!("\"{:016x}\"", fnv1a(identity));
        Self {
            content_type,
            identity,
            gzip,
            version: None,
            gzip_etag: format!("{}-gz\"", etag.trim_end_matches('"')),
            etag,
        }
    }

    /// This asset as `page` links it (`url?v=…`).
    fn linked_from(mut self, page: &[u8], url: &str) -> Self {
        self.version = version_in_page(page, url);
        self
    }
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/html; charset=utf-8", INDEX_HTML, None));
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new("text/javascript; charset=utf-8", APP_JS, Some(APP_JS_GZ))
        .linked_from(INDEX_HTML, "/assets/app.js")
});
static STYLESHEET: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new("text/css; charset=utf-8", APP_CSS, Some(APP_CSS_GZ))
        .linked_from(INDEX_HTML, "/assets/app.css")
});
static RICH: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/html; charset=utf-8", RICH_HTML, None));
static RICH_SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new("text/javascript; charset=utf-8", RICH_JS, Some(RICH_JS_GZ))
        .linked_from(RICH_HTML, "/assets/rich.js")
});
static RICH_STYLESHEET: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new("text/css; charset=utf-8", RICH_CSS, Some(RICH_CSS_GZ))
        .linked_from(RICH_HTML, "/assets/rich.css")
});

/// `GET /`, `GET /rich` and their assets under `/assets/`. Rejects
/// anything else, so the routes after it (a room path without an upgrade)
/// still answer. A WebSocket upgrade to `/rich` never gets here: the room
/// `rich` stays a room.
pub fn routes() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let page = warp::path::end()
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .map(|headers: HeaderMap| serve(&INDEX, &headers, REVALIDATE).into_response());
    let rich = warp::path!("rich")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .map(|headers: HeaderMap| serve(&RICH, &headers, REVALIDATE).into_response());
    let assets = warp::path!("assets" / String)
        .and(warp::get())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and_then(
            |name: String, query: String, headers: HeaderMap| async move {
                let asset = asset_named(&name).ok_or_else(warp::reject::not_found)?;
                Ok::<_, Rejection>(serve_asset(asset, &query, &headers))
            },
        );
    page.or(rich).unify().or(assets).unify()
}

/// The embedded asset served at `/assets/{name}`, if any.
fn asset_named(name: &str) -> Option<&'static Asset> {
    match name {
        "app.js" => Some(&SCRIPT),
        "app.css" => Some(&STYLESHEET),
        "rich.js" => Some(&RICH_SCRIPT),
        "rich.css" => Some(&RICH_STYLESHEET),
        _ => None,
    }
}

fn serve_asset(asset: &Asset, query: &str, headers: &HeaderMap) -> Response {
    let current = asset.version.is_some() && query_param(query, "v") == asset.version.as_deref();
    serve(asset, headers, if current { IMMUTABLE } else { REVALIDATE })
}

fn serve(asset: &Asset, headers: &HeaderMap, cache_control: &'static str) -> Response {
    let gzip = asset.gzip.filter(|_| accepts_gzip(headers));
    let etag = if gzip.is_some() {
        &asset.gzip_etag
    } else {
        &asset.etag
    };

    let mut response = if if_none_match(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = gzip.unwrap_or(asset.identity).into_response();
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        if gzip.is_some() {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    };
    let h = response.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    if let Ok(value) = HeaderValue::from_str(etag) {
        h.insert(ETAG, value);
    }
    if asset.gzip.is_some() {
        h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    }
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if asset.version.is_none() {
        h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
        // The page URL may carry `?token=…`: never send it anywhere.
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    response
}

/// The `v` in `href="/assets/app.css?v=…"` (or `src=`) in the page.
fn version_in_page(page: &[u8], url: &str) -> Option<String> {
    let page = std::str::from_utf8(page).ok()?;
    let needle = format!("{url}?v=");
    let start = page.find(&needle)? + needle.len();
    let rest = &page[start..];
    let end = rest.find(|c: char| !c.is_ascii_alphanumeric())?;
    (end > 0).then(|| rest[..end].to_owned())
}

/// The first value of `name` in a raw query string (no percent-decoding:
/// the values compared here are plain hex).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether `Accept-Encoding` allows gzip (`gzip` or `*`, with a q above 0).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// Whether `If-None-Match` names `etag` (weak comparison) or is `*`.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// 64-bit FNV-1a: a stable content fingerprint for ETags (not security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn each_page_links_both_its_assets_with_a_version() {
        assert!(
            SCRIPT.version.is_some(),
            "index.html has no /assets/app.js?v=…"
        );
        assert!(
            STYLESHEET.version.is_some(),
            "index.html has no /assets/app.css?v=…"
        );
        assert!(
            RICH_SCRIPT.version.is_some(),
            "rich.html has no /assets/rich.js?v=…"
        );
        assert!(
            RICH_STYLESHEET.version.is_some(),
            "rich.html has no /assets/rich.css?v=…"
        );
    }

    #[test]
    fn assets_are_found_by_name_only() {
        assert!(std::ptr::eq(asset_named("rich.js").unwrap(), &*RICH_SCRIPT));
        assert!(std::ptr::eq(asset_named("app.css").unwrap(), &*STYLESHEET));
        assert!(asset_named("other.js").is_none());
        assert!(asset_named("rich.js.gz").is_none());
    }

    #[test]
    fn gzip_is_accepted_unless_refused() {
        assert!(accepts_gzip(&headers(&[(
            "accept-encoding",
            "gzip, deflate, br"
        )])));
        assert!(accepts_gzip(&headers(&[(
            "accept-encoding",
            "br;q=1.0, GZIP;q=0.5"
        )])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "*")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "br")])));
        assert!(!accepts_gzip(&headers(&[])));
    }

    #[test]
    fn if_none_match_compares_weakly() {
        assert!(if_none_match(
            &headers(&[("if-none-match", "\"a\", W/\"b\"")]),
            "\"b\""
        ));
        assert!(if_none_match(&headers(&[("if-none-match", "*")]), "\"b\""));
        assert!(!if_none_match(
            &headers(&[("if-none-match", "\"a\"")]),
            "\"b\""
        ));
    }

    #[test]
    fn query_param_finds_the_first_value() {
        assert_eq!(query_param("x=1&v=abc&v=def", "v"), Some("abc"));
        assert_eq!(query_param("", "v"), None);
        assert_eq!(query_param("v", "v"), None);
    }

    #[test]
    fn the_pages_are_revalidated_and_answer_304_to_their_etag() {
        for asset in [&*INDEX, &*RICH] {
            let page = serve(asset, &headers(&[]), REVALIDATE);
            assert_eq!(page.status(), StatusCode::OK);
            assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(page.headers()[CACHE_CONTROL], "no-cache");
            assert_eq!(page.headers()[CONTENT_SECURITY_POLICY], PAGE_CSP);
            assert_eq!(page.headers()[REFERRER_POLICY], "no-referrer");

            let mut conditional = HeaderMap::new();
            conditional.insert(IF_NONE_MATCH, page.headers()[ETAG].clone());
            let again = serve(asset, &conditional, REVALIDATE);
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
            assert_eq!(again.headers()[ETAG], page.headers()[ETAG]);
        }
        assert_ne!(INDEX.etag, RICH.etag);
    }

    #[test]
    fn assets_are_cached_for_good_only_under_their_current_version() {
        let version = SCRIPT.version.clone().unwrap();
        let gzip = headers(&[("accept-encoding", "gzip, br")]);

        let current = serve_asset(&SCRIPT, &format!("v={version}"), &gzip);
        assert_eq!(current.status(), StatusCode::OK);
        assert_eq!(
            current.headers()[CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(current.headers()[CONTENT_ENCODING], "gzip");
        assert_eq!(current.headers()[CACHE_CONTROL], IMMUTABLE);
        assert_eq!(current.headers()[VARY], "accept-encoding");

        let stale = serve_asset(&STYLESHEET, "v=0000", &headers(&[]));
        assert_eq!(stale.headers()[CONTENT_TYPE], "text/css; charset=utf-8");
        assert!(!stale.headers().contains_key(CONTENT_ENCODING));
        assert_eq!(stale.headers()[CACHE_CONTROL], "no-cache");
        assert_ne!(stale.headers()[ETAG], current.headers()[ETAG]);
    }
}
