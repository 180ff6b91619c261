//! The container image's recipe, checked for what can be checked without
//! building it (no image can be pulled here): two stages, a non-root user,
//! the data volume, the ports the binary listens on, a health check that
//! runs the binary itself, labels with the version and commit, and a build
//! context that leaves out build outputs and local state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let (op, args) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((op.to_uppercase(), args.trim().to_string()));
                pending.clear();
            }
        }
    }
    out
}

fn all(op: &str) -> Vec<String> {
    instructions()
        .into_iter()
        .filter(|(o, _)| o == op)
        .map(|(_, a)| a)
        .collect()
}

#[test]
fn the_image_recipe_is_small_non_root_and_self_checking() {
    let stages = all("FROM");
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    assert!(stages[0].ends_with(" AS build"), "{stages:?}");
    assert!(
        stages[1].contains("distroless") || stages[1].contains("slim"),
        "{stages:?}"
    );

    // The runtime stage runs as a user that is not root.
    let user = all("USER").pop().expect("a USER");
    assert!(!["0", "root", "0:0"].contains(&user.as_str()), "{user}");

    assert_eq!(all("VOLUME"), vec![r#"["/data"]"#.to_string()]);
    assert!(
        all("ENV")
            .iter()
            .any(|e| e.contains("AIPROXY_DATA_DIR=/data"))
    );
    let ports: Vec<String> = all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect();
    // The defaults of listen.proxy, listen.admin and listen.grpc.
    let defaults = aiproxy_shared::config::Config::default().listen;
    for addr in [defaults.proxy, defaults.admin, defaults.grpc] {
        assert!(
            ports.contains(&addr.port().to_string()),
            "{ports:?} lacks {addr}"
        );
    }

    // The health check is the binary's own probe, in exec form (no shell).
    let check = all("HEALTHCHECK").pop().expect("a HEALTHCHECK");
    let exec = check.split_once("CMD ").expect("HEALTHCHECK … CMD").1;
    let argv: Vec<String> = serde_json::from_str(exec).expect("exec form");
    assert!(
        argv[0].ends_with("/aiproxy") && argv[1] == "probe",
        "{argv:?}"
    );
    let entry: Vec<String> = serde_json::from_str(&all("ENTRYPOINT").pop().unwrap()).unwrap();
    assert_eq!(entry, vec![argv[0].clone()]);

    // Version and commit as labels, the version the crate's.
    let labels = all("LABEL").join(" ");
    assert!(
        labels.contains(&format!(
            "org.opencontainers.image.version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{labels}"
    );
    assert!(labels.contains("org.opencontainers.image.revision=\"${AIPROXY_BUILD_COMMIT}\""));
    assert!(
        all("ENV")
            .iter()
            .any(|e| e.contains("AIPROXY_BUILD_COMMIT="))
    );

    // What the build stage copies and builds exists in the repository.
    assert!(all("COPY")[0] == ". .", "the build copies the workspace");
    assert!(repo().join("Cargo.lock").exists() && repo().join("web/dist/index.html").exists());
}

#[test]
fn the_build_context_leaves_out_outputs_and_local_state() {
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", "data/", "web/node_modules/", ".git/"] {
        assert!(entries.contains(&needed), "{needed} is not ignored");
    }
    // web/dist is embedded by the build, so it must stay in the context.
    assert!(!entries.iter().any(|e| e.starts_with("web/dist")));
}
