//! Stamps the binary with the commit it was built from (`aiproxy --version`),
//! from git when the source is a checkout, else from `AIPROXY_BUILD_COMMIT`
//! (an image build passes it), else `unknown`.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=AIPROXY_BUILD_COMMIT");
    let commit = std::env::var("AIPROXY_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Rebuilt when HEAD moves: the files git keeps it in.
            // (Only files that exist: a missing one would rerun this always.)
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                let head = git(&["symbolic-ref", "-q", "HEAD"]);
                let files = ["HEAD", "packed-refs"].into_iter().map(String::from);
                for file in files.chain(head) {
                    let path = std::path::Path::new(&dir).join(file);
                    if path.exists() {
                        println!("cargo:rerun-if-changed={}", path.display());
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=AIPROXY_COMMIT={commit}");
}
