//! The page's files, embedded at build time by `build.rs` from `web/dist`
//! (or a page saying they were missing when execd was built).

pub(crate) const INDEX_HTML: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/index.html"));
pub(crate) const APP_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/app.js"));
pub(crate) const APP_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/app.css"));

/// Whether the real page is in: `false` when web/dist was not built.
pub const BUNDLED: bool = matches!(env!("EXECD_WEB_ASSETS").as_bytes(), b"bundled");

/// Why the real page is not in (empty when it is): what `build.rs` said
/// when it could not build or find `web/dist`.
pub(crate) const MISSING_REASON: &str = env!("EXECD_WEB_ASSETS_REASON");
