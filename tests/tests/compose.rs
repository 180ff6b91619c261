//! The Docker Compose files in `deploy/compose/` parse and name only images
//! and files that exist: each passes a Compose implementation (`docker-compose
//! config`, Debian's package, which needs no daemon) and the Compose
//! Specification's schema (as vendored by `check-jsonschema`, in a venv
//! pinned by `tests/compose/requirements.txt`); every image is the one built
//! from the repository or a pinned tag on an allow-list; every file a service
//! names is in the repository or made by the split deployment's `init.sh`,
//! which git ignores and which never overwrites; nginx's configuration passes
//! `nginx -t`. The split deployment keeps its shape: planes started in order
//! of health, only nginx published, data planes with a volume and time to
//! drain, and no secret written in the file. Every plane says where it
//! serves its metrics, and no metrics port is published.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// The tag every service built from the repository's Dockerfile carries.
const LOCAL_IMAGE: &str = "aiproxy:local";

/// The only images pulled from a registry: official images, pinned.
const PINNED_IMAGES: [&str; 3] = ["mariadb:11.4", "redis:7.4-alpine", "nginx:1.28-alpine"];

/// The metrics port of the all-in-one and the control plane; a data plane
/// serves on the next (src/main.rs).
const CONTROLPLANE_METRICS: u16 = aiproxy_shared::config::METRICS_PORT;
const DATAPLANE_METRICS: u16 = CONTROLPLANE_METRICS + 1;

/// Environment variables whose values are secrets wherever they appear.
fn is_secret(name: &str) -> bool {
    ["PASSWORD", "SECRET", "TOKEN"]
        .iter()
        .any(|s| name.contains(s))
        || name.ends_with("_KEY")
        || name.ends_with("_URL")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dir(topology: &str) -> PathBuf {
    repo().join("deploy/compose").join(topology)
}

fn run(cmd: &mut Command, needs: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} ({needs} is needed for this test)"))
}

fn succeed(cmd: &mut Command, needs: &str) -> String {
    let out = run(cmd, needs);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A venv under the target directory with `tests/compose/requirements.txt`
/// installed, remade when that file changes.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compose-venv");
        let wanted =
            std::fs::read_to_string(repo().join("tests/compose/requirements.txt")).unwrap();
        let stamp = venv.join("requirements.installed");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
            return venv;
        }
        let python = "python3 with venv and pip (PyPI reachable on the first run)";
        succeed(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            python,
        );
        succeed(
            Command::new(venv.join("bin/python"))
                .args(["-m", "pip", "install", "-q", "-r"])
                .arg(repo().join("tests/compose/requirements.txt")),
            python,
        );
        std::fs::write(&stamp, wanted).unwrap();
        venv
    })
}

/// YAML as JSON, by PyYAML (anchors and merge keys resolved).
fn yaml(text: &str) -> Value {
    use std::io::Write;
    let mut child = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "YAML does not parse:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The compose file as written.
fn raw(topology: &str) -> Value {
    yaml(&std::fs::read_to_string(dir(topology).join("compose.yaml")).unwrap())
}

/// `docker-compose config` on the file in place, variables from `env_file`
/// only (none from this process).
fn compose_config(topology: &str, env_file: &Path) -> Output {
    let home = tempfile::tempdir().unwrap();
    let dir = dir(topology);
    run(
        Command::new("docker-compose")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .arg("--project-directory")
            .arg(&dir)
            .arg("-f")
            .arg(dir.join("compose.yaml"))
            .arg("--env-file")
            .arg(env_file)
            .arg("config"),
        "docker-compose (Debian's package; .ci/run installs it)",
    )
}

/// The file as Compose resolves it, interpolated with `env_file`.
fn config(topology: &str, env_file: &Path) -> Value {
    let out = compose_config(topology, env_file);
    assert!(
        out.status.success(),
        "docker-compose config rejects {topology} with {}:\n{}",
        env_file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    yaml(&String::from_utf8(out.stdout).unwrap())
}

/// `KEY=VALUE` lines of an env file; comments and blank lines skipped.
fn env_vars(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// A copy of a topology's directory (without a local `.env` or `certs/`)
/// in which `init.sh` has run, when it has one.
fn initialised(topology: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path, top: bool) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if top && (name == ".env" || name == "certs") {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to.join(&name), false);
            } else {
                std::fs::copy(entry.path(), to.join(&name)).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    copy(&dir(topology), tmp.path(), true);
    let init = tmp.path().join("init.sh");
    if init.exists() {
        succeed(&mut Command::new(&init), "openssl");
    }
    tmp
}

fn services(config: &Value) -> &serde_json::Map<String, Value> {
    config["services"].as_object().expect("services")
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(|s| s.as_str().unwrap().to_string()).collect(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

struct Mount {
    bind: bool,
    source: String,
    target: String,
    read_only: bool,
}

/// A service's volumes, in either the short or the long syntax.
fn mounts(service: &Value) -> Vec<Mount> {
    let Some(list) = service["volumes"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (source, target, mode) = match parts.as_slice() {
                    [t] => ("", *t, ""),
                    [s, t] => (*s, *t, ""),
                    [s, t, m] => (*s, *t, *m),
                    _ => panic!("volume {s}"),
                };
                Mount {
                    bind: source.starts_with(['/', '.', '~']),
                    source: source.to_string(),
                    target: target.to_string(),
                    read_only: mode.split(',').any(|m| m == "ro"),
                }
            }
            long => Mount {
                bind: long["type"] == "bind",
                source: text(&long["source"]),
                target: text(&long["target"]),
                read_only: long["read_only"] == true,
            },
        })
        .collect()
}

/// The container ports a service publishes. Compose writes a mapping bound
/// to an address in the short syntax (`127.0.0.1:9464:9464/tcp`).
fn published(service: &Value) -> BTreeSet<u64> {
    let Some(list) = service["ports"].as_array() else {
        return BTreeSet::new();
    };
    list.iter()
        .map(|p| match p {
            Value::String(s) => {
                let target = s.rsplit(':').next().unwrap();
                let port = target.split_once('/').map_or(target, |(port, _)| port);
                port.parse().unwrap_or_else(|e| panic!("port {s}: {e}"))
            }
            long => text(&long["target"]).parse().unwrap(),
        })
        .collect()
}

/// Seconds in a Compose duration (`75s`, `1m15s`, `2m`).
fn seconds(duration: &str) -> u64 {
    let (mut total, mut number) = (0, String::new());
    for c in duration.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = std::mem::take(&mut number).parse().expect(duration);
        total += match c {
            'h' => n * 3600,
            'm' => n * 60,
            's' => n,
            _ => panic!("unit {c} in {duration}"),
        };
    }
    assert!(number.is_empty(), "a duration needs a unit: {duration}");
    total
}

/// The plane `name` serves its metrics on `port` of every interface, for
/// containers on its networks, and no service publishes that port.
fn assert_metrics_unpublished(services: &serde_json::Map<String, Value>, name: &str, port: u16) {
    assert_eq!(
        text(&services[name]["environment"]["AIPROXY_METRICS_LISTEN"]),
        format!("0.0.0.0:{port}"),
        "{name}: AIPROXY_METRICS_LISTEN"
    );
    for (other, service) in services {
        assert!(
            !published(service).contains(&u64::from(port)),
            "{other} publishes the metrics port {port} of {name}"
        );
    }
}

fn depends_healthy(service: &Value, on: &str) -> bool {
    service["depends_on"][on]["condition"] == "service_healthy"
}

/// The argv of a service's exec-form health check.
fn health_check(service: &Value) -> Vec<String> {
    strings(&service["healthcheck"]["test"])
}

#[test]
fn the_files_pass_compose_and_its_schema() {
    let venv = venv();
    for topology in ["all-in-one", "split"] {
        let file = dir(topology).join("compose.yaml");
        succeed(
            Command::new(venv.join("bin/check-jsonschema"))
                .args(["--builtin-schema", "vendor.compose-spec"])
                .arg(&file),
            "check-jsonschema",
        );
        let example = dir(topology).join(".env.example");
        let config = config(topology, &example);
        assert!(!services(&config).is_empty());
    }

    // The all-in-one needs no .env at all.
    let empty = tempfile::NamedTempFile::new().unwrap();
    config("all-in-one", empty.path());

    // The split one refuses to start without its secrets, saying what to do.
    let out = compose_config("split", empty.path());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("init.sh"), "{said}");

    // init.sh's .env and .env.example set the same variables, and each is
    // enough for Compose.
    let init = initialised("split");
    config("split", &init.path().join(".env"));
    let made: BTreeSet<String> = env_vars(&init.path().join(".env")).into_keys().collect();
    let example: BTreeSet<String> = env_vars(&dir("split").join(".env.example"))
        .into_keys()
        .collect();
    assert_eq!(made, example, "init.sh's .env and .env.example differ");
}

#[test]
fn they_name_only_pinned_images_and_files_that_exist() {
    for topology in ["all-in-one", "split"] {
        let config = config(topology, &dir(topology).join(".env.example"));
        let written = raw(topology);
        let made = initialised(topology);
        for (name, service) in services(&config) {
            let image = service["image"]
                .as_str()
                .expect("every service names its image");
            if service.get("build").is_some() {
                assert_eq!(image, LOCAL_IMAGE, "{topology}/{name}");
                let context = PathBuf::from(service["build"]["context"].as_str().unwrap());
                let dockerfile = service["build"]["dockerfile"]
                    .as_str()
                    .unwrap_or("Dockerfile");
                assert!(
                    context.join(dockerfile).is_file(),
                    "{topology}/{name}: no {dockerfile} in {}",
                    context.display()
                );
                assert_eq!(
                    context.canonicalize().unwrap(),
                    repo().canonicalize().unwrap(),
                    "{topology}/{name} builds from the repository's root"
                );
            } else {
                let (_, tag) = image.rsplit_once(':').expect("a tag");
                assert!(
                    PINNED_IMAGES.contains(&image) && tag != "latest",
                    "{topology}/{name}: {image} is not a pinned image on the allow-list"
                );
            }

            // Host paths: in the repository, or made by init.sh and ignored by git.
            let mut paths: Vec<String> = mounts(service)
                .into_iter()
                .filter(|m| m.bind)
                .map(|m| m.source)
                .collect();
            paths.extend(strings(&written["services"][name]["env_file"]));
            for path in paths {
                let path = dir(topology).join(path);
                let copy = path
                    .strip_prefix(dir(topology))
                    .ok()
                    .map(|relative| made.path().join(relative));
                let is_dir = path.is_dir() || copy.as_ref().is_some_and(|c| c.is_dir());
                if ignored(&path, is_dir) {
                    assert!(
                        copy.is_some_and(|c| c.exists()),
                        "{topology}/{name}: {} is ignored by git and not made by init.sh",
                        path.display()
                    );
                } else {
                    assert!(
                        path.exists(),
                        "{topology}/{name}: {} is missing (what init.sh makes, git must ignore)",
                        path.display()
                    );
                }
            }
        }
        for kind in ["secrets", "configs"] {
            for (name, entry) in config[kind].as_object().into_iter().flatten() {
                if let Some(file) = entry["file"].as_str() {
                    assert!(dir(topology).join(file).exists(), "{kind}.{name}: {file}");
                }
            }
        }
    }
}

/// Whether git ignores `path`, whether or not it exists.
fn ignored(path: &Path, is_dir: bool) -> bool {
    let mut path = path.as_os_str().to_owned();
    if is_dir {
        path.push("/");
    }
    run(
        Command::new("git")
            .arg("-C")
            .arg(repo())
            .args(["check-ignore", "-q", "--no-index"])
            .arg(path),
        "git",
    )
    .status
    .success()
}

#[test]
fn no_secret_is_written_in_the_files() {
    for topology in ["all-in-one", "split"] {
        // Two sets of values for the same variables: every secret a service
        // sees must follow them, so none is a literal in the file.
        let example = dir(topology).join(".env.example");
        let other = tempfile::NamedTempFile::new().unwrap();
        let replaced: String = env_vars(&example)
            .into_iter()
            .map(|(k, v)| {
                if k.starts_with("COMPOSE_") {
                    format!("{k}={v}\n")
                } else {
                    format!("{k}=other{}\n", k.to_lowercase().replace('_', ""))
                }
            })
            .collect();
        std::fs::write(other.path(), replaced).unwrap();
        let (a, b) = (config(topology, &example), config(topology, other.path()));
        let mut seen = 0;
        for (name, service) in services(&a) {
            for (var, value) in service["environment"].as_object().into_iter().flatten() {
                if !is_secret(var) {
                    continue;
                }
                let (value, then) = (text(value), text(&b["services"][name]["environment"][var]));
                // A URL is secret only where it carries a password.
                let secret = |v: &str| {
                    if var.ends_with("_URL") {
                        url_password(v)
                    } else {
                        Some(v.to_string())
                    }
                };
                if let Some(value) = secret(&value) {
                    assert_ne!(
                        Some(value),
                        secret(&then),
                        "{topology}/{name}: {var} is written in the file"
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen > 0, "{topology}: no secret found to check");
    }
}

/// The password in `scheme://user:password@host/…`, if any.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    Some(userinfo.split_once(':')?.1.to_string())
}

#[test]
fn the_all_in_one_keeps_its_data_and_drains() {
    let config = config("all-in-one", &dir("all-in-one").join(".env.example"));
    let services = services(&config);
    assert_eq!(services.len(), 1, "one service");
    let (name, node) = services.iter().next().unwrap();
    assert!(node.get("command").is_none(), "no command: both planes");
    assert_metrics_unpublished(services, name, CONTROLPLANE_METRICS);
    assert_eq!(published(node), BTreeSet::from([8080, 8090]));
    data_volume(&config, node, "all-in-one");
    assert!(seconds(node["stop_grace_period"].as_str().unwrap()) >= 60);
    assert_eq!(
        health_check(node),
        [
            "CMD",
            "/usr/local/bin/aiproxy",
            "probe",
            "http://127.0.0.1:8080/readyz"
        ]
    );
}

/// The named volume (declared at the top) a service mounts on /data.
fn data_volume(config: &Value, service: &Value, who: &str) -> String {
    let data: Vec<Mount> = mounts(service)
        .into_iter()
        .filter(|m| m.target == "/data")
        .collect();
    assert!(
        data.len() == 1 && !data[0].bind && !data[0].source.is_empty(),
        "{who}: a named volume on /data"
    );
    let volume = data[0].source.clone();
    assert!(
        config["volumes"].get(&volume).is_some(),
        "{who}: volume {volume} is not declared"
    );
    volume
}

#[test]
fn the_split_deployment_keeps_its_shape() {
    let config = config("split", &dir("split").join(".env.example"));
    let services = services(&config);
    let with = |command: &str| -> Vec<(&String, &Value)> {
        services
            .iter()
            .filter(|(_, s)| strings(&s["command"]) == [command])
            .collect()
    };
    let controlplanes = with("controlplane");
    assert_eq!(controlplanes.len(), 1, "one control plane");
    let (cp_name, cp) = controlplanes[0];
    let dataplanes = with("dataplane");
    assert!(dataplanes.len() >= 2, "two data planes or more");
    let env = |s: &Value, var: &str| text(&s["environment"][var]);

    // MariaDB and Redis, healthy before the control plane starts.
    let db = &services["mariadb"];
    let redis = &services["redis"];
    assert_eq!(
        health_check(db),
        ["CMD", "healthcheck.sh", "--connect", "--innodb_initialized"]
    );
    assert_eq!(health_check(redis), ["CMD", "redis-cli", "ping"]);
    assert!(depends_healthy(cp, "mariadb") && depends_healthy(cp, "redis"));

    // The control plane: its own health check, gRPC beyond loopback, the
    // database the MariaDB service makes, nginx's range trusted.
    assert_eq!(
        health_check(cp),
        [
            "CMD",
            "/usr/local/bin/aiproxy",
            "probe",
            "http://127.0.0.1:8090/readyz"
        ]
    );
    assert_eq!(env(cp, "AIPROXY_GRPC_LISTEN"), "0.0.0.0:9090");
    for var in [
        "AIPROXY_SECRET_KEY",
        "AIPROXY_NODE_TOKEN",
        "AIPROXY_ADMIN_TOKEN",
        "AIPROXY_ADMIN_PASSWORD",
    ] {
        assert!(!env(cp, var).is_empty(), "{var}");
    }
    assert_ne!(
        env(cp, "AIPROXY_NODE_TOKEN"),
        env(cp, "AIPROXY_ADMIN_TOKEN")
    );
    assert_eq!(
        env(cp, "AIPROXY_DATABASE_URL"),
        format!(
            "mysql://{}:{}@mariadb:3306/{}",
            env(db, "MARIADB_USER"),
            env(db, "MARIADB_PASSWORD"),
            env(db, "MARIADB_DATABASE")
        )
    );
    assert_eq!(env(cp, "AIPROXY_REDIS_URL"), "redis://redis:6379/0");
    let edge = config["networks"]["edge"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .expect("the edge network's range");
    assert_eq!(env(cp, "AIPROXY_TRUSTED_PROXIES"), edge);
    assert_metrics_unpublished(services, cp_name, CONTROLPLANE_METRICS);

    // Data planes: after a healthy control plane, the same token and Redis,
    // each its own name and volume, and time to drain.
    let mut names = BTreeSet::new();
    let mut volumes = BTreeSet::new();
    for (name, dp) in &dataplanes {
        assert!(depends_healthy(dp, cp_name), "{name}");
        assert_eq!(
            env(dp, "AIPROXY_CONTROLPLANE_URL"),
            format!("http://{cp_name}:9090")
        );
        assert_eq!(env(dp, "AIPROXY_NODE_TOKEN"), env(cp, "AIPROXY_NODE_TOKEN"));
        assert_eq!(env(dp, "AIPROXY_REDIS_URL"), env(cp, "AIPROXY_REDIS_URL"));
        assert!(names.insert(env(dp, "AIPROXY_NODE_ID")), "{name}: node id");
        assert_metrics_unpublished(services, name, DATAPLANE_METRICS);
        assert!(
            volumes.insert(data_volume(&config, dp, name)),
            "{name}: volume"
        );
        let grace = dp["stop_grace_period"].as_str().unwrap_or("10s");
        assert!(seconds(grace) >= 60, "{name}: stop_grace_period {grace}");
        assert_eq!(
            health_check(dp),
            [
                "CMD",
                "/usr/local/bin/aiproxy",
                "probe",
                "http://127.0.0.1:8080/readyz"
            ]
        );
    }

    // Only nginx publishes ports; MariaDB and Redis are on the internal
    // network only; nobody shares the host's network.
    let publishing: Vec<&String> = services
        .iter()
        .filter(|(_, s)| !published(s).is_empty())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(publishing, ["nginx"]);
    assert_eq!(config["networks"]["backend"]["internal"], true);
    for name in ["mariadb", "redis"] {
        let networks: Vec<&String> = services[name]["networks"]
            .as_object()
            .expect("networks")
            .keys()
            .collect();
        assert_eq!(networks, ["backend"], "{name}");
    }
    for (name, service) in services {
        assert!(service.get("network_mode").is_none(), "{name}");
    }
}

/// One nginx directive and, for a block, what it holds.
#[derive(Debug)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Vec<Directive>,
}

/// nginx's configuration syntax: words, `;`, `{ … }`, comments, quotes.
fn nginx_parse(text: &str) -> Vec<Directive> {
    let mut words = Vec::new();
    for line in text.lines() {
        let mut chars = line.chars().peekable();
        while let Some(&c) = chars.peek() {
            match c {
                '#' => break,
                ';' | '{' | '}' => {
                    words.push(c.to_string());
                    chars.next();
                }
                '"' | '\'' => {
                    chars.next();
                    let quoted: String = chars.by_ref().take_while(|&q| q != c).collect();
                    words.push(format!("\"{quoted}\""));
                }
                c if c.is_whitespace() => {
                    chars.next();
                }
                _ => {
                    let mut word = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_whitespace() || ";{}#".contains(c) {
                            break;
                        }
                        word.push(c);
                        chars.next();
                    }
                    words.push(word);
                }
            }
        }
    }
    fn block(words: &mut std::vec::IntoIter<String>) -> Vec<Directive> {
        let mut out = Vec::new();
        let mut current: Vec<String> = Vec::new();
        while let Some(word) = words.next() {
            match word.as_str() {
                ";" | "{" => {
                    let inner = if word == "{" {
                        block(words)
                    } else {
                        Vec::new()
                    };
                    let mut it = std::mem::take(&mut current).into_iter();
                    out.push(Directive {
                        name: it.next().expect("a directive"),
                        args: it.collect(),
                        block: inner,
                    });
                }
                "}" => break,
                _ => current.push(word),
            }
        }
        assert!(current.is_empty(), "unterminated directive {current:?}");
        out
    }
    block(&mut words.into_iter())
}

fn find<'a>(block: &'a [Directive], name: &str) -> Vec<&'a Directive> {
    block.iter().filter(|d| d.name == name).collect()
}

fn arg(block: &[Directive], name: &str) -> Option<String> {
    find(block, name).first().map(|d| d.args.join(" "))
}

fn version(text: &str) -> Vec<u32> {
    text.split(['.', '-'])
        .map_while(|p| p.parse().ok())
        .collect()
}

#[test]
fn nginx_fronts_the_planes_and_passes_nginx_t() {
    let config = config("split", &dir("split").join(".env.example"));
    let services = services(&config);
    let nginx = &services["nginx"];
    let text = std::fs::read_to_string(dir("split").join("nginx.conf")).unwrap();
    let conf = nginx_parse(&text);

    // Mounted read-only where the image's http block includes it.
    let mounted: Vec<Mount> = mounts(nginx)
        .into_iter()
        .filter(|m| m.bind && Path::new(&m.source).ends_with("nginx.conf"))
        .collect();
    assert!(
        mounted.len() == 1
            && mounted[0].read_only
            && mounted[0].target == "/etc/nginx/conf.d/default.conf",
        "nginx.conf is mounted read-only as conf.d/default.conf"
    );

    // The upstreams are the data planes and the control plane, by name.
    let upstreams: BTreeMap<String, BTreeSet<String>> = find(&conf, "upstream")
        .into_iter()
        .map(|u| {
            let servers = find(&u.block, "server")
                .into_iter()
                .map(|s| s.args[0].clone())
                .collect();
            (u.args[0].clone(), servers)
        })
        .collect();
    let dataplanes: BTreeSet<String> = services
        .iter()
        .filter(|(_, s)| strings(&s["command"]) == ["dataplane"])
        .map(|(n, _)| format!("{n}:8080"))
        .collect();
    let proxied = |server: &Directive| -> String {
        let location = find(&server.block, "location");
        let location = location.first().expect("a location");
        let pass = arg(&location.block, "proxy_pass").expect("proxy_pass");
        pass.strip_prefix("http://")
            .expect("http://upstream")
            .to_string()
    };

    // Servers by port: 80 redirects, 443 relays, 8443 serves the console.
    let mut ports = BTreeSet::new();
    for server in find(&conf, "server") {
        let listen = &find(&server.block, "listen")[0].args;
        let port: u64 = listen[0].rsplit(':').next().unwrap().parse().unwrap();
        ports.insert(port);
        match port {
            80 => assert!(
                arg(&server.block, "return")
                    .unwrap()
                    .starts_with("301 https://"),
                "80 redirects"
            ),
            443 => {
                assert!(listen.contains(&"ssl".to_string()));
                let upstream = proxied(server);
                assert_eq!(
                    upstreams[&upstream], dataplanes,
                    "443 relays to every data plane"
                );
                let b = &server.block;
                assert_eq!(arg(b, "underscores_in_headers").as_deref(), Some("on"));
                assert_eq!(arg(b, "client_max_body_size").as_deref(), Some("32m"));
                let location = &find(b, "location")[0].block;
                for (name, value) in [
                    ("proxy_buffering", "off"),
                    ("proxy_request_buffering", "off"),
                    ("proxy_http_version", "1.1"),
                ] {
                    assert_eq!(arg(location, name).as_deref(), Some(value), "{name}");
                }
                let read = arg(location, "proxy_read_timeout").unwrap();
                assert!(seconds(&read) >= 600, "proxy_read_timeout {read}");
                let keepalive = find(&conf, "upstream")
                    .into_iter()
                    .find(|u| u.args[0] == upstream)
                    .map(|u| arg(&u.block, "keepalive"));
                assert!(
                    keepalive.flatten().is_some(),
                    "keepalive to the data planes"
                );
            }
            8443 => {
                assert!(listen.contains(&"ssl".to_string()));
                let upstream = proxied(server);
                assert_eq!(
                    upstreams[&upstream],
                    BTreeSet::from(["controlplane:8090".to_string()])
                );
                let location = &find(&server.block, "location")[0].block;
                assert!(
                    find(location, "proxy_set_header")
                        .iter()
                        .any(|h| h.args[0] == "X-Forwarded-For"),
                    "the console learns the client's address"
                );
            }
            other => panic!("nginx listens on {other}"),
        }
    }
    assert_eq!(
        ports,
        published(nginx),
        "nginx publishes what it listens on"
    );

    // The certificate it names is in the directory init.sh fills.
    let made = initialised("split");
    let certs = mounts(nginx)
        .into_iter()
        .find(|m| m.target == "/etc/nginx/certs")
        .expect("a certificate directory");
    assert!(certs.read_only);
    let certs_dir = Path::new(&certs.source)
        .strip_prefix(dir("split"))
        .unwrap()
        .to_path_buf();
    for name in ["ssl_certificate", "ssl_certificate_key"] {
        let path = arg(&conf, name).expect(name);
        let file = path.strip_prefix("/etc/nginx/certs/").expect(name);
        assert!(made.path().join(&certs_dir).join(file).is_file(), "{path}");
    }

    // `resolve` needs nginx 1.27.3 and a resolver; `http2 on` 1.25.1.
    let image = services["nginx"]["image"].as_str().unwrap();
    let pinned = version(image.split_once(':').unwrap().1);
    assert!(
        pinned >= vec![1, 27, 3] || !text.contains(" resolve;"),
        "{image}"
    );
    assert!(!text.contains(" resolve;") || arg(&conf, "resolver").is_some());
    for upstream in find(&conf, "upstream") {
        let resolves = find(&upstream.block, "server")
            .iter()
            .any(|s| s.args.iter().any(|a| a == "resolve"));
        assert!(
            !resolves || arg(&upstream.block, "zone").is_some(),
            "upstream {:?}: `resolve` needs a shared memory zone",
            upstream.args
        );
    }

    // nginx -t, with the local nginx: what it predates is taken out of the
    // copy it checks, and names it would look up then point at loopback.
    let out = run(
        Command::new("nginx").arg("-v"),
        "nginx (Debian's package; .ci/run installs it)",
    );
    let local = version(
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .rsplit('/')
            .next()
            .unwrap(),
    );
    let mut copy = text.replace(
        "/etc/nginx/certs/",
        &format!("{}/", made.path().join(&certs_dir).display()),
    );
    if local < vec![1, 25, 1] {
        copy = copy
            .lines()
            .filter(|l| l.trim() != "http2 on;")
            .collect::<Vec<_>>()
            .join("\n");
    }
    if local < vec![1, 27, 3] {
        copy = copy
            .lines()
            .map(|l| match l.trim().strip_prefix("server ") {
                Some(rest) if l.contains(" resolve;") => {
                    let port = rest
                        .split(['"', ' ', ';'])
                        .next()
                        .unwrap()
                        .rsplit(':')
                        .next()
                        .unwrap();
                    format!("    server 127.0.0.1:{port};")
                }
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("default.conf"), copy).unwrap();
    std::fs::write(
        tmp.path().join("nginx.conf"),
        format!(
            "events {{}}\nhttp {{\n    access_log off;\n    include {}/default.conf;\n}}\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    succeed(
        Command::new("nginx")
            .arg("-t")
            .arg("-p")
            .arg(tmp.path())
            .args(["-e", "stderr", "-c"])
            .arg(tmp.path().join("nginx.conf")),
        "nginx",
    );
}

#[test]
fn init_makes_ignored_files_once_and_never_overwrites() {
    let split = dir("split");
    let init = split.join("init.sh");
    use std::os::unix::fs::PermissionsExt;
    assert!(
        std::fs::metadata(&init).unwrap().permissions().mode() & 0o111 != 0,
        "init.sh is executable"
    );
    assert!(
        std::fs::read_to_string(&init)
            .unwrap()
            .starts_with("#!/bin/sh\n")
    );

    let made = initialised("split");
    let env = made.path().join(".env");
    let first = std::fs::read(&env).unwrap();
    let cert = std::fs::read(made.path().join("certs/fullchain.pem")).unwrap();
    let key = made.path().join("certs/privkey.pem");
    assert_eq!(
        std::fs::metadata(&env).unwrap().permissions().mode() & 0o077,
        0,
        ".env is private"
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o077,
        0,
        "the key is private"
    );

    // Again: nothing changes.
    succeed(&mut Command::new(made.path().join("init.sh")), "openssl");
    assert_eq!(std::fs::read(&env).unwrap(), first, ".env was rewritten");
    assert_eq!(
        std::fs::read(made.path().join("certs/fullchain.pem")).unwrap(),
        cert,
        "the certificate was rewritten"
    );

    // A fresh .env each time: random, long enough, tokens distinct.
    let again = initialised("split");
    assert_ne!(std::fs::read(again.path().join(".env")).unwrap(), first);
    for file in [env.as_path(), &split.join(".env.example")] {
        let vars = env_vars(file);
        assert!(vars["AIPROXY_SECRET_KEY"].len() >= 32, "{}", file.display());
        assert!(vars["AIPROXY_NODE_TOKEN"].len() >= 16, "{}", file.display());
        assert!(
            vars["AIPROXY_ADMIN_TOKEN"].len() >= 16,
            "{}",
            file.display()
        );
        assert_ne!(vars["AIPROXY_NODE_TOKEN"], vars["AIPROXY_ADMIN_TOKEN"]);
        for (k, v) in &vars {
            if is_secret(k) {
                assert!(!v.is_empty(), "{k} in {}", file.display());
            }
        }
    }

    // What it makes stays out of git; what is committed does not.
    for made in [".env", "certs/fullchain.pem", "certs/privkey.pem"] {
        assert!(ignored(&split.join(made), false), "{made} is not ignored");
    }
    for committed in ["compose.yaml", "nginx.conf", ".env.example", "init.sh"] {
        assert!(
            !ignored(&split.join(committed), false),
            "{committed} is ignored"
        );
    }
    assert!(ignored(&split.join("certs"), true));
    assert!(ignored(&dir("all-in-one").join(".env"), false));
}
