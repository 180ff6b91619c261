//! Embeds the admin console (`web/dist`) into the control plane. When the
//! console's sources changed since `web/dist` was built (a hash of them is
//! kept in `web/dist/.source-hash`) and npm is available, it rebuilds them
//! first; otherwise the committed build is used as it is. Text assets are
//! gzip-compressed here so they are served compressed without work per request.
// A build script reports failure by panicking.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Inputs of the console build, relative to `web/`.
const SOURCES: &[&str] = &[
    "src",
    "public",
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
    "tsconfig.app.json",
    "tsconfig.node.json",
    // The API types are generated from it.
    "../controlplane/openapi.json",
];
const HASH_FILE: &str = ".source-hash";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let web = manifest.join("../web");
    let dist = web.join("dist");
    for source in SOURCES {
        println!("cargo:rerun-if-changed={}", web.join(source).display());
    }
    println!("cargo:rerun-if-changed={}", dist.display());
    println!("cargo:rerun-if-env-changed=AIPROXY_WEB_BUILD");

    let hash = source_hash(&web);
    let built = std::fs::read_to_string(dist.join(HASH_FILE)).unwrap_or_default();
    if hash.is_some() && hash.as_deref() != Some(built.trim()) {
        rebuild(&web, hash.as_deref().unwrap_or_default());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir"));
    embed(&dist, &out);
}

/// sha256 over the console's sources (paths and contents), or None when
/// there are no sources (a checkout without `web/`).
fn source_hash(web: &Path) -> Option<String> {
    let mut files = Vec::new();
    for source in SOURCES {
        collect(&web.join(source), &mut files);
    }
    if files.is_empty() {
        return None;
    }
    files.sort();
    let mut hasher = Sha256::new();
    for file in &files {
        let relative = file.strip_prefix(web).unwrap_or(file);
        hasher.update(relative.to_string_lossy().replace('\\', "/").as_bytes());
        hasher.update([0]);
        // Line endings may differ between checkouts; the build does not care.
        let bytes = std::fs::read(file).unwrap_or_default();
        let text: Vec<u8> = bytes.into_iter().filter(|b| *b != b'\r').collect();
        hasher.update(&text);
        hasher.update([0]);
    }
    Some(hex(&hasher.finalize()))
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) {
    if path.is_file() {
        files.push(path.to_path_buf());
    } else if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            collect(&entry.path(), files);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `npm ci` (when `node_modules` is missing) and `npm run build`; on any
/// failure the existing build stays and a warning says why.
fn rebuild(web: &Path, hash: &str) {
    if std::env::var("AIPROXY_WEB_BUILD").as_deref() == Ok("0") {
        println!("cargo:warning=web/dist is older than web/src; AIPROXY_WEB_BUILD=0 keeps it");
        return;
    }
    let npm = |args: &[&str]| {
        Command::new("npm")
            .args(args)
            .current_dir(web)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !npm(&["--version"]) {
        println!(
            "cargo:warning=web/dist is older than web/src and npm is not installed: serving the committed console build"
        );
        return;
    }
    if !web.join("node_modules").exists() && !npm(&["ci", "--no-audit", "--no-fund"]) {
        println!("cargo:warning=npm ci failed in web/: serving the committed console build");
        return;
    }
    if !npm(&["run", "build"]) {
        println!(
            "cargo:warning=the console build failed (npm run build in web/): serving the committed build"
        );
        return;
    }
    if let Err(e) = std::fs::write(web.join("dist").join(HASH_FILE), format!("{hash}\n")) {
        println!("cargo:warning=cannot record the console build's source hash: {e}");
    }
}

/// Writes `$OUT_DIR/console_assets.rs`: every file of `dist` as
/// `(path, content type, gzipped, bytes)`.
fn embed(dist: &Path, out: &Path) {
    let mut files = Vec::new();
    collect(dist, &mut files);
    files.sort();
    let mut code = String::from("&[\n");
    for (n, file) in files.iter().enumerate() {
        let relative = file
            .strip_prefix(dist)
            .expect("inside dist")
            .to_string_lossy()
            .replace('\\', "/");
        if relative == HASH_FILE {
            continue;
        }
        let content_type = content_type(&relative);
        let bytes = std::fs::read(file).expect("read a console asset");
        let compress = is_text(content_type) && bytes.len() > 512;
        let (stored, gzipped) = if compress {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(&bytes).expect("gzip in memory");
            (encoder.finish().expect("gzip in memory"), true)
        } else {
            (bytes, false)
        };
        let target = out.join(format!("console-{n}"));
        std::fs::write(&target, stored).expect("write an embedded asset");
        let _ = writeln!(
            code,
            "    ({relative:?}, {content_type:?}, {gzipped}, include_bytes!({:?})),",
            target.display().to_string()
        );
    }
    code.push(']');
    std::fs::write(out.join("console_assets.rs"), code).expect("write console_assets.rs");
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn is_text(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type == "application/json"
        || content_type == "image/svg+xml"
        || content_type == "font/ttf"
}
