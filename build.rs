//! Embeds the browser terminal's assets into the binary.
//!
//! `web/` is a small npm project: `npm run build` bundles the page into
//! `web/dist/` (`scripts/web-assets` does that, and `scripts/serve` and
//! `scripts/test` run it). When `web/dist` is complete and newer than its
//! sources, it is what gets embedded. Otherwise, when npm is there, this
//! script builds the bundle itself, in `OUT_DIR/npm` (a build script writes
//! nothing outside `OUT_DIR`, and so never makes Cargo run it again): the
//! sources copied there, `npm ci --offline` from the lock file (plain
//! `npm ci` when the npm cache cannot satisfy it) unless its `node_modules`
//! was installed from this very lock file, then `npm run build`. Either
//! way the bundle lands in `OUT_DIR/web`, where `src/doors/web/assets.rs`
//! includes it.
//!
//! Without npm, or when its build fails, `cargo build` still succeeds: a
//! `cargo:warning` says why, a page saying execd was built without its web
//! assets takes the bundle's place, and `EXECD_WEB_ASSETS=missing` (the
//! reason in `EXECD_WEB_ASSETS_REASON`) lets execd say so when `--web`
//! starts. `EXECD_NPM` names the npm to run (default `npm`); set it to an
//! empty string to never run npm.
//!
//! Cargo runs this again only when the sources (or `web/dist`, or, while
//! there is no `web/dist`, anything under `web/`) change.
//!
//! tests/web_terminal.rs includes this file as a module and runs [`embed`]
//! on scratch copies of `web/`, with and without a working npm.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

/// What `npm run build` writes into `dist/`, all of it embedded.
pub const ASSETS: [&str; 3] = ["index.html", "app.js", "app.css"];

/// What the bundle is built from, relative to `web/` (a directory counts
/// with everything in it).
pub const INPUTS: [&str; 4] = ["package.json", "package-lock.json", "build.mjs", "src"];

/// Where `npm ci` left a copy of the lock file it installed from (in
/// `OUT_DIR/npm`, and in `web/` by `scripts/web-assets`).
pub const INSTALLED_LOCK: &str = "node_modules/.execd-package-lock.json";

/// What the build found and did.
#[derive(Debug)]
pub struct Embedded {
    /// The real page is embedded (else the placeholder).
    pub bundled: bool,
    /// npm ran (`npm ci` and/or `npm run build`).
    pub ran_npm: bool,
    /// The `cargo:` lines for Cargo, in order.
    pub directives: Vec<String>,
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=EXECD_NPM");
    let npm = std::env::var_os("EXECD_NPM").unwrap_or_else(|| "npm".into());
    let npm = (!npm.is_empty()).then_some(npm.as_os_str());
    for line in embed(&manifest.join("web"), &out_dir, npm).directives {
        println!("{line}");
    }
}

/// Puts the page into `out_dir/web`: `web/dist` when it is up to date, else
/// a bundle built with `npm` in `out_dir/npm`, else (no npm, or its build
/// failed) an older `web/dist`, else the placeholder. Never fails on
/// account of Node or npm; writes nothing outside `out_dir`.
pub fn embed(web: &Path, out_dir: &Path, npm: Option<&OsStr>) -> Embedded {
    let dist = web.join("dist");
    let mut directives = Vec::new();
    let mut ran_npm = false;
    let mut missing_reason = None;
    // The directory holding the bundle to embed, if any.
    let mut bundle = None;
    match needs_build(web) {
        None => bundle = Some(dist.clone()),
        Some(need) => {
            let failure = match npm {
                Some(npm) => {
                    ran_npm = true;
                    let staging = out_dir.join("npm");
                    match npm_build(web, &staging, npm) {
                        Ok(()) => {
                            bundle = Some(staging.join("dist"));
                            None
                        }
                        Err(e) => Some(format!("{need}, and building it failed: {e}")),
                    }
                }
                None => Some(format!("{need}, and EXECD_NPM is empty")),
            };
            if let Some(failure) = failure {
                if complete(&dist) {
                    warn(
                        &mut directives,
                        &format!("web terminal: {failure}: embedding the older web/dist"),
                    );
                    bundle = Some(dist.clone());
                } else {
                    warn(
                        &mut directives,
                        &format!(
                            "web terminal: {failure}: the binary serves a page saying execd was \
                             built without its web assets (run scripts/web-assets, then cargo \
                             build again)"
                        ),
                    );
                    missing_reason = Some(failure);
                }
            }
        }
    }

    // Rerun when the sources or web/dist change. Only paths that exist:
    // Cargo reruns a script on every build while a watched path is missing.
    // Nothing watched is written here, so no build reruns it by itself.
    for input in INPUTS {
        let path = web.join(input);
        if path.exists() {
            directives.push(format!("cargo:rerun-if-changed={}", path.display()));
        }
    }
    if dist.exists() {
        directives.push(format!("cargo:rerun-if-changed={}", dist.display()));
    } else {
        // Notices a web/dist that appears later (scripts/web-assets).
        directives.push(format!("cargo:rerun-if-changed={}", web.display()));
    }

    let out = out_dir.join("web");
    std::fs::create_dir_all(&out).expect("creating OUT_DIR/web");
    for asset in ASSETS {
        let content = match &bundle {
            Some(bundle) => std::fs::read(bundle.join(asset)).expect("reading a web asset"),
            None if asset == "index.html" => {
                missing_page(missing_reason.as_deref().unwrap_or_default()).into_bytes()
            }
            None => Vec::new(),
        };
        write_if_changed(&out.join(asset), &content);
    }
    let bundled = bundle.is_some();
    directives.push(format!(
        "cargo:rustc-env=EXECD_WEB_ASSETS={}",
        if bundled { "bundled" } else { "missing" }
    ));
    directives.push(format!(
        "cargo:rustc-env=EXECD_WEB_ASSETS_REASON={}",
        missing_reason
            .unwrap_or_default()
            .replace(['\r', '\n'], " ")
    ));
    Embedded {
        bundled,
        ran_npm,
        directives,
    }
}

fn warn(directives: &mut Vec<String>, text: &str) {
    // One line per warning: Cargo would read the rest as directives.
    let text = text.replace(['\r', '\n'], " ");
    directives.push(format!("cargo:warning={text}"));
}

fn complete(dist: &Path) -> bool {
    ASSETS.iter().all(|a| dist.join(a).is_file())
}

/// Why `web/dist` must be built, or `None` when it is complete and newer
/// than every input.
pub fn needs_build(web: &Path) -> Option<String> {
    let dist = web.join("dist");
    if !complete(&dist) {
        return Some(if dist.exists() {
            "web/dist is incomplete".into()
        } else {
            "web/dist is missing".into()
        });
    }
    let oldest_asset = ASSETS
        .iter()
        .filter_map(|a| modified(&dist.join(a)))
        .min()?;
    let newest_input = INPUTS.iter().filter_map(|i| newest(&web.join(i))).max()?;
    (newest_input > oldest_asset).then(|| "web/dist is older than its sources".into())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of `path` and, for a directory, of
/// everything in it.
fn newest(path: &Path) -> Option<SystemTime> {
    let mut time = modified(path);
    if path.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            time = time.max(newest(&entry.path()));
        }
    }
    time
}

/// Builds the bundle of `web` in `staging`: the sources copied there,
/// `npm ci` unless `staging/node_modules` was installed from this lock file
/// (offline first: the lock pins every package and the npm cache usually
/// has them), then `npm run build` into `staging/dist`.
fn npm_build(web: &Path, staging: &Path, npm: &OsStr) -> Result<(), String> {
    std::fs::create_dir_all(staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
    run(staging, npm, &["--version"])
        .map_err(|e| format!("npm is not available ({}: {e})", npm.to_string_lossy()))?;
    // A fresh copy of the sources: nothing left over from an older one.
    let _ = std::fs::remove_dir_all(staging.join("src"));
    let _ = std::fs::remove_dir_all(staging.join("dist"));
    for input in INPUTS {
        copy_tree(&web.join(input), &staging.join(input))
            .map_err(|e| format!("copying web/{input} into {}: {e}", staging.display()))?;
    }
    let lock = std::fs::read(web.join("package-lock.json"))
        .map_err(|e| format!("reading web/package-lock.json: {e}"))?;
    let installed = staging.join(INSTALLED_LOCK);
    if std::fs::read(&installed).ok().as_deref() != Some(lock.as_slice()) {
        let quiet = [
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--loglevel=error",
        ];
        let offline: Vec<&str> = ["ci", "--offline"].iter().chain(&quiet).copied().collect();
        let online: Vec<&str> = ["ci"].iter().chain(&quiet).copied().collect();
        run(staging, npm, &offline).or_else(|offline_error| {
            run(staging, npm, &online)
                .map_err(|e| format!("npm ci --offline: {offline_error}; then npm ci: {e}"))
        })?;
        std::fs::write(&installed, &lock)
            .map_err(|e| format!("writing {}: {e}", installed.display()))?;
    }
    run(staging, npm, &["run", "--silent", "build"]).map_err(|e| format!("npm run build: {e}"))?;
    if !complete(&staging.join("dist")) {
        return Err("npm run build left its dist/ incomplete".into());
    }
    Ok(())
}

/// Copies the file or directory `from` to `to`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, to)?;
    }
    Ok(())
}

/// Runs `program args` in `dir`; its output is kept out of Cargo's
/// directives (stdout) and only reported, shortened, on failure.
fn run(dir: &Path, program: &OsStr, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        // Cargo's DEBUG=true/false means something else to Node tools.
        .env_remove("DEBUG")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let text = if text.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout)
    } else {
        text
    };
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" / ");
    Err(format!("{} ({tail})", out.status))
}

/// Leaves `path` alone when it already holds `content`: a rewrite would
/// make rustc recompile the crate that includes it.
fn write_if_changed(path: &Path, content: &[u8]) {
    if std::fs::read(path).ok().as_deref() == Some(content) {
        return;
    }
    std::fs::write(path, content).expect("writing a web asset into OUT_DIR");
}

/// The page served in place of the terminal when the bundle is missing.
pub fn missing_page(reason: &str) -> String {
    let reason: String = reason
        .chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>execd terminal</title></head>\n\
         <body><h1>execd was built without its web assets</h1>\n\
         <p>{reason}</p>\n\
         <p>Build them with <code>scripts/web-assets</code> (or <code>npm ci &amp;&amp; npm run build</code> \
         in <code>web/</code>), then rebuild execd.</p></body></html>\n"
    )
}
