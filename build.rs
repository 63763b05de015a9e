//! Embeds the browser terminal's assets into the binary.
//!
//! `npm ci && npm run build` in `web/` (the project scripts do it) bundles
//! the page into `web/dist/`. When all of it is there it is copied into
//! `OUT_DIR`, where `src/doors/web/assets.rs` includes it; otherwise (a
//! machine without Node) a small page saying so takes its place, so that
//! `cargo build` never needs Node.

use std::path::{Path, PathBuf};

const ASSETS: [&str; 3] = ["index.html", "app.js", "app.css"];

const MISSING_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>execd terminal</title></head>\n<body><h1>execd was built without its web assets</h1>\n<p>Build them with <code>npm ci &amp;&amp; npm run build</code> in <code>web/</code> (or run <code>scripts/serve</code>), then rebuild execd.</p></body></html>\n";

fn main() {
    let dist = Path::new("web/dist");
    let complete = ASSETS.iter().all(|a| dist.join(a).is_file());
    if complete {
        for asset in ASSETS {
            println!("cargo:rerun-if-changed=web/dist/{asset}");
        }
    } else {
        // Watching web/ notices when a bundle appears there later.
        println!("cargo:rerun-if-changed=web");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("web");
    std::fs::create_dir_all(&out).expect("creating OUT_DIR/web");
    for asset in ASSETS {
        let target = out.join(asset);
        if complete {
            std::fs::copy(dist.join(asset), &target).expect("copying a web asset");
        } else {
            let text = if asset == "index.html" {
                MISSING_PAGE
            } else {
                ""
            };
            std::fs::write(&target, text).expect("writing a placeholder web asset");
        }
    }
    println!(
        "cargo:rustc-env=EXECD_WEB_ASSETS={}",
        if complete { "bundled" } else { "missing" }
    );
}
