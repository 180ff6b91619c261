//! The Kubernetes manifests in `deploy/kubernetes` render with `kubectl
//! kustomize` without a warning, every object they make passes the strict
//! schemas of kubernetes-validate (unknown fields are errors), and the
//! rendered objects keep what the deployment relies on: data planes that
//! drain before they are killed and keep their usage journal on a claim of
//! their own, a gRPC port that only aiproxy's pods reach, hardened containers
//! on pinned images, and secrets that reach a container only from a Secret.
//! Every plane serves its metrics on a named port of its own, which a
//! Service exposes and the NetworkPolicies admit from other namespaces; the
//! optional ServiceMonitor component renders with the production overlay
//! and scrapes each plane once, under the job names the alert rules expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Map, Value};

/// Each a complete deployment of its own.
const OVERLAYS: [&str; 2] = ["production", "single-node"];

/// Kubernetes releases whose schemas every object must pass.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.35.0", "1.37.0"];

/// The settings that are secrets, each of which can be given as a file
/// named by `<NAME>_FILE`.
const SECRETS: [&str; 7] = [
    "AIPROXY_DATABASE_URL",
    "AIPROXY_REDIS_URL",
    "AIPROXY_SECRET_KEY",
    "AIPROXY_NODE_TOKEN",
    "AIPROXY_NODE_TOKEN_PREVIOUS",
    "AIPROXY_ADMIN_PASSWORD",
    "AIPROXY_ADMIN_TOKEN",
];

/// The image's user and group (the Dockerfile's `USER`).
const IMAGE_USER: u64 = 65532;

/// `AIPROXY_DATA_DIR` as the image sets it.
const IMAGE_DATA_DIR: &str = "/data";

/// Defaults of `aiproxy dataplane` (README, Limits and shutdown): the drain
/// delay, and how long a stopping node may spend delivering its journal.
const DATAPLANE_DRAIN_DELAY: u64 = 5;
const JOURNAL_DELIVERY: u64 = 15;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// An overlay rendered: the YAML stream and its objects.
struct Rendered {
    file: tempfile::NamedTempFile,
    objects: Vec<Value>,
}

fn render(overlay: &str) -> Rendered {
    render_dir(
        &repo().join("deploy/kubernetes/overlays").join(overlay),
        overlay,
    )
}

/// `kubectl kustomize` on the kustomization in `dir`, called `overlay` in
/// messages.
fn render_dir(dir: &Path, overlay: &str) -> Rendered {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl: {e} (it renders the manifests; .ci/run installs it)")
        });
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "kubectl kustomize {overlay} (Kustomize v5 or later) failed or warned:\n{said}"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &out.stdout).unwrap();
    let objects = to_json(file.path());
    assert!(!objects.is_empty(), "{overlay} renders nothing");
    Rendered { file, objects }
}

/// Runs kubernetes-validate's strict schemas over `file`, which holds
/// `count` objects, for every release in `KUBERNETES_VERSIONS`.
fn validate(file: &Path, count: usize, what: &str) {
    let mut cmd = Command::new(venv().join("bin/kubernetes-validate"));
    cmd.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", version]);
    }
    let out = cmd.arg(file).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let passed = said
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
        .count();
    // A kind it has no schema for is only a warning there: not here.
    let other: Vec<&str> = said
        .lines()
        .filter(|l| !(l.starts_with("INFO ") && l.contains(" passed for resource ")))
        .collect();
    assert!(
        out.status.success() && other.is_empty() && passed == count * KUBERNETES_VERSIONS.len(),
        "{what}: {passed} of {} checks ({count} objects, Kubernetes {}) passed:\n{}{}",
        count * KUBERNETES_VERSIONS.len(),
        KUBERNETES_VERSIONS.join(" and "),
        other.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `to` as a path relative to the directory `from`: Kustomize takes no
/// absolute path to a resource or a component.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in from.components().skip(common) {
        out.push("..");
    }
    for part in to.components().skip(common) {
        out.push(part);
    }
    out
}

/// `target/tmp/kubernetes-validate`: a venv with `tests/kubernetes/requirements.txt`
/// installed, made again when that file changes.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let venv = tmp.join("kubernetes-validate");
        let requirements =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("kubernetes/requirements.txt");
        let stamp = venv.join("requirements.installed");
        let wanted = std::fs::read_to_string(&requirements).unwrap();
        // Test runners that run each test in a process of its own (nextest)
        // would otherwise make it several times at once.
        std::fs::create_dir_all(tmp).unwrap();
        let lock = std::fs::File::create(tmp.join("kubernetes-validate.lock")).unwrap();
        lock.lock().unwrap();
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
            return venv;
        }
        run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv));
        run(Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements));
        std::fs::write(&stamp, wanted).unwrap();
        venv
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (python3 with venv is needed for this test)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The YAML stream's documents as JSON, read by the venv's PyYAML.
fn to_json(file: &Path) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        with open(sys.argv[1]) as f:\n    \
        docs = [d for d in yaml.safe_load_all(f) if d]\n\
        json.dump(docs, sys.stdout)";
    let out = run(Command::new(venv().join("bin/python"))
        .args(["-c", SCRIPT])
        .arg(file));
    serde_json::from_str(&out).unwrap()
}

// ---- reading the objects ----------------------------------------------

fn kind_name(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| o["kind"] == kind)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name} is rendered"))
}

/// Objects with a pod template (Deployment, StatefulSet, …).
fn workloads(objects: &[Value]) -> impl Iterator<Item = &Value> {
    objects
        .iter()
        .filter(|o| o.pointer("/spec/template/spec").is_some())
}

fn pod(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn pod_labels(workload: &Value) -> &Value {
    &workload["spec"]["template"]["metadata"]["labels"]
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod[k].as_array())
        .flatten()
        .collect()
}

/// The role a workload runs: the command argument (`None` for the all-in-one).
fn role(workload: &Value) -> Option<&str> {
    pod(workload)["containers"][0]["args"][0].as_str()
}

/// The one workload that runs `role`, and its aiproxy container.
fn running<'a>(objects: &'a [Value], role_arg: Option<&str>) -> (&'a Value, &'a Value) {
    let found: Vec<&Value> = workloads(objects).filter(|w| role(w) == role_arg).collect();
    assert_eq!(found.len(), 1, "one workload runs {role_arg:?}");
    (found[0], &pod(found[0])["containers"][0])
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A container's environment as literal values: its ConfigMaps (`envFrom`),
/// then `env` entries with a value or a ConfigMap key; later wins.
fn env(objects: &[Value], container: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for from in array(&container["envFrom"]) {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            let map = find(objects, "ConfigMap", name);
            let prefix = from["prefix"].as_str().unwrap_or("");
            for (k, v) in map["data"].as_object().into_iter().flatten() {
                out.insert(format!("{prefix}{k}"), v.clone());
            }
        }
    }
    for entry in array(&container["env"]) {
        let name = entry["name"].as_str().unwrap().to_string();
        if let Some(v) = entry.get("value") {
            out.insert(name, v.clone());
        } else if let Some(r) = entry.pointer("/valueFrom/configMapKeyRef") {
            let map = find(objects, "ConfigMap", r["name"].as_str().unwrap());
            out.insert(name, map["data"][r["key"].as_str().unwrap()].clone());
        }
    }
    out
}

fn env_u64(env: &Map<String, Value>, name: &str) -> Option<u64> {
    env.get(name).map(|v| {
        v.as_str()
            .unwrap_or_else(|| panic!("{name} is a string"))
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    })
}

/// A container port by number or by name.
fn container_port(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => array(&container["ports"])
            .iter()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        _ => panic!("a port is a number or a name: {port}"),
    }
}

/// A probe's HTTP path and the container port it reaches.
fn http_probe(container: &Value, which: &str) -> (String, u64) {
    let get = &container[which]["httpGet"];
    assert!(
        get.is_object(),
        "{which} is an HTTP GET: {}",
        container[which]
    );
    (
        get["path"].as_str().unwrap().to_string(),
        container_port(container, &get["port"]),
    )
}

/// Whether a plain label map (a Service's selector) picks pods with `labels`.
fn labels_pick(wanted: &Value, labels: &Value) -> bool {
    wanted
        .as_object()
        .is_some_and(|w| w.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Whether a label selector picks pods with `labels` (empty picks all).
fn selects(selector: &Value, labels: &Value) -> bool {
    assert!(
        array(&selector["matchExpressions"]).is_empty(),
        "this test reads matchLabels only: {selector}"
    );
    match selector.get("matchLabels") {
        Some(wanted) => labels_pick(wanted, labels),
        None => true,
    }
}

/// "1Gi", "512Mi", "100M", "1000" as bytes.
fn quantity(q: &str) -> u64 {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * factor;
        }
    }
    q.parse().unwrap()
}

/// The volume mount that holds `path`, the innermost when mounts nest.
fn mount_holding<'a>(container: &'a Value, path: &str) -> Option<&'a Value> {
    let dir = |m: &Value| {
        m["mountPath"]
            .as_str()
            .unwrap()
            .trim_end_matches('/')
            .to_string()
    };
    array(&container["volumeMounts"])
        .iter()
        .filter(|m| path == dir(m) || path.starts_with(&format!("{}/", dir(m))))
        .max_by_key(|m| dir(m).len())
}

/// Whether a NetworkPolicy's ingress rule admits `port` of `container`
/// (a rule without ports admits every port).
fn covers(container: &Value, rule: &Value, port: u64) -> bool {
    let ports = array(&rule["ports"]);
    ports.is_empty()
        || ports.iter().any(|p| {
            let from = container_port(container, p.get("port").unwrap_or(&Value::Null));
            let to = p["endPort"].as_u64().unwrap_or(from);
            (from..=to).contains(&port)
        })
}

/// The metrics port `aiproxy` serves on by default for a role (src/main.rs):
/// `METRICS_PORT` for the all-in-one and the control plane, the next for a
/// data plane, so that both fit on one host.
fn metrics_port(role: Option<&str>) -> u64 {
    let port = u64::from(aiproxy_shared::config::METRICS_PORT);
    match role {
        None | Some("controlplane") => port,
        Some("dataplane") => port + 1,
        Some(other) => panic!("no metrics port known for the role {other}"),
    }
}

/// A Service named `name` picks the pods of `workload` and forwards `port`
/// to the container port `target`.
fn assert_service(objects: &[Value], name: &str, workload: &Value, port: u64, target: u64) {
    let service = find(objects, "Service", name);
    assert!(
        labels_pick(&service["spec"]["selector"], pod_labels(workload)),
        "Service {name} does not pick the pods of {}",
        kind_name(workload)
    );
    let container = &pod(workload)["containers"][0];
    let forwards = array(&service["spec"]["ports"]).iter().any(|p| {
        p["port"] == port
            && container_port(container, p.get("targetPort").unwrap_or(&p["port"])) == target
    });
    assert!(
        forwards,
        "Service {name} does not forward {port} to {target}: {}",
        service["spec"]["ports"]
    );
}

// ---- the tests ----------------------------------------------------------

#[test]
fn every_overlay_renders_and_passes_the_schemas() {
    for overlay in OVERLAYS {
        let rendered = render(overlay);
        validate(rendered.file.path(), rendered.objects.len(), overlay);
    }
}

#[test]
fn data_planes_drain_keep_their_journal_and_scale() {
    let rendered = render("production");
    let objects = &rendered.objects;
    let listen = aiproxy_shared::config::Config::default().listen;
    let (sts, dp) = running(objects, Some("dataplane"));
    let name = sts["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        sts["kind"], "StatefulSet",
        "the journal needs a claim per node"
    );
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    let retention = &sts["spec"]["persistentVolumeClaimRetentionPolicy"];
    assert_eq!(
        retention["whenScaled"], "Retain",
        "scaling in must keep the journal"
    );
    assert_eq!(retention["whenDeleted"], "Retain");
    let env = env(objects, dp);

    // Readiness drops traffic while draining or without a snapshot;
    // liveness only asks whether the process serves.
    let proxy = u64::from(listen.proxy.port());
    assert_eq!(http_probe(dp, "readinessProbe"), ("/readyz".into(), proxy));
    assert_eq!(http_probe(dp, "livenessProbe"), ("/healthz".into(), proxy));

    // Killed only after the drain delay, the grace and the journal's delivery.
    let delay = env_u64(&env, "AIPROXY_DRAIN_DELAY").unwrap_or(DATAPLANE_DRAIN_DELAY);
    let default_grace = aiproxy_shared::config::Config::default().server.drain_grace;
    let grace = env_u64(&env, "AIPROXY_DRAIN_GRACE").unwrap_or(default_grace);
    let termination = pod(sts)["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    assert!(
        termination > delay + grace + JOURNAL_DELIVERY,
        "terminationGracePeriodSeconds {termination} ≤ drain delay {delay} + grace {grace} + {JOURNAL_DELIVERY}"
    );
    // The readiness probe notices the drain before the listener closes.
    let readiness = &dp["readinessProbe"];
    let noticed = readiness["periodSeconds"].as_u64().unwrap_or(10)
        * readiness["failureThreshold"].as_u64().unwrap_or(3);
    assert!(
        noticed <= delay,
        "readiness fails {noticed} s after SIGTERM, the drain delay is {delay} s"
    );

    // The data directory, and with it the journal, is on a claim template.
    let data_dir = env
        .get("AIPROXY_DATA_DIR")
        .map_or(IMAGE_DATA_DIR, |v| v.as_str().unwrap());
    let mount = mount_holding(dp, &format!("{data_dir}/spool"))
        .unwrap_or_else(|| panic!("{data_dir}/spool is on no volume"));
    let volume = mount["name"].as_str().unwrap();
    let claim = array(&sts["spec"]["volumeClaimTemplates"])
        .iter()
        .find(|t| t["metadata"]["name"] == volume)
        .unwrap_or_else(|| panic!("the spool's volume {volume} is no volumeClaimTemplate"));
    assert!(
        !array(&pod(sts)["volumes"])
            .iter()
            .any(|v| v["name"] == volume),
        "a pod volume named {volume} hides the claim"
    );
    // The journal's limit is reached before the claim is full.
    let size = quantity(
        claim["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .unwrap(),
    );
    let default_journal = aiproxy_shared::config::Config::default()
        .proxy
        .journal_max_bytes;
    let journal = env_u64(&env, "AIPROXY_JOURNAL_MAX_BYTES").unwrap_or(default_journal);
    assert!(
        journal < size,
        "AIPROXY_JOURNAL_MAX_BYTES {journal} does not fit the {size}-byte claim"
    );

    // The StatefulSet's own headless Service, and the one clients use.
    let governing = find(
        objects,
        "Service",
        sts["spec"]["serviceName"].as_str().unwrap(),
    );
    assert_eq!(governing["spec"]["clusterIP"], "None");
    assert_service(
        objects,
        governing["metadata"]["name"].as_str().unwrap(),
        sts,
        proxy,
        proxy,
    );
    assert_service(objects, "aiproxy-dataplane", sts, proxy, proxy);

    // The control plane's address reaches its gRPC port.
    let url = env["AIPROXY_CONTROLPLANE_URL"].as_str().unwrap();
    let (host, port) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .and_then(|a| a.split_once(':'))
        .unwrap_or_else(|| panic!("AIPROXY_CONTROLPLANE_URL {url} is scheme://host:port"));
    let grpc = u64::from(listen.grpc.port());
    let (deployment, _) = running(objects, Some("controlplane"));
    assert_service(objects, host, deployment, port.parse().unwrap(), grpc);

    // Scaled by CPU from at least three data planes up; the HPA
    // owns the count, so the StatefulSet states none.
    let hpas: Vec<&Value> = of_kind(objects, "HorizontalPodAutoscaler").collect();
    assert_eq!(hpas.len(), 1);
    let hpa = hpas[0];
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["apiVersion"], "apps/v1");
    assert_eq!(target["kind"], "StatefulSet");
    assert_eq!(target["name"], name);
    let min = hpa["spec"]["minReplicas"].as_u64().unwrap_or(1);
    let max = hpa["spec"]["maxReplicas"].as_u64().unwrap();
    assert!(
        min >= 3 && max > min,
        "production runs {min}..{max} data planes"
    );
    assert!(
        array(&hpa["spec"]["metrics"])
            .iter()
            .any(|m| m["resource"]["name"] == "cpu"),
        "{}",
        hpa["spec"]["metrics"]
    );
    assert!(
        dp["resources"]["requests"]["cpu"].is_string(),
        "CPU utilisation needs a CPU request"
    );
    assert!(
        sts["spec"].get("replicas").is_none(),
        "every apply would reset the HPA's count"
    );

    // Disruptions take data planes one at a time, and only data planes.
    let cp_labels = pod_labels(deployment);
    let pdbs: Vec<&Value> = of_kind(objects, "PodDisruptionBudget")
        .filter(|p| selects(&p["spec"]["selector"], pod_labels(sts)))
        .collect();
    assert_eq!(pdbs.len(), 1, "one PodDisruptionBudget covers data planes");
    let pdb = &pdbs[0]["spec"];
    assert!(!selects(&pdb["selector"], cp_labels));
    assert!(
        pdb["maxUnavailable"] == 1 || pdb["minAvailable"].as_u64().is_some_and(|m| m < min),
        "{pdb}"
    );
}

#[test]
fn the_control_plane_is_replicated_and_its_grpc_port_closed_to_others() {
    let rendered = render("production");
    let objects = &rendered.objects;
    let listen = aiproxy_shared::config::Config::default().listen;
    let (admin, grpc) = (
        u64::from(listen.admin.port()),
        u64::from(listen.grpc.port()),
    );
    let (deployment, cp) = running(objects, Some("controlplane"));
    let (sts, _) = running(objects, Some("dataplane"));
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        env(objects, cp)["AIPROXY_GRPC_LISTEN"],
        format!("0.0.0.0:{grpc}"),
        "data planes connect from other pods"
    );
    assert_eq!(http_probe(cp, "readinessProbe"), ("/readyz".into(), admin));
    assert_eq!(http_probe(cp, "livenessProbe"), ("/healthz".into(), admin));
    assert_service(objects, "aiproxy-controlplane", deployment, admin, admin);
    assert_service(objects, "aiproxy-controlplane", deployment, grpc, grpc);

    // Every NetworkPolicy over the control plane's pods (they add up).
    let (cp_labels, dp_labels) = (pod_labels(deployment), pod_labels(sts));
    let policies: Vec<&Value> = of_kind(objects, "NetworkPolicy")
        .filter(|p| selects(&p["spec"]["podSelector"], cp_labels))
        .collect();
    assert!(
        !policies.is_empty(),
        "no NetworkPolicy covers the control plane"
    );
    let covers = |rule: &Value, port: u64| covers(cp, rule, port);
    let mut grpc_from_dataplanes = false;
    let mut admin_open = false;
    for policy in &policies {
        let spec = &policy["spec"];
        assert!(
            array(&spec["policyTypes"]).contains(&"Ingress".into()),
            "{} does not restrict ingress",
            kind_name(policy)
        );
        for rule in array(&spec["ingress"]) {
            let peers = array(&rule["from"]);
            if covers(rule, admin) && peers.is_empty() {
                admin_open = true;
            }
            if !covers(rule, grpc) {
                continue;
            }
            assert!(
                !peers.is_empty(),
                "{} opens {grpc} to everyone",
                kind_name(policy)
            );
            for peer in peers {
                let only_pods = peer.as_object().unwrap().keys().all(|k| k == "podSelector");
                let selector = &peer["podSelector"];
                let aiproxy = selector["matchLabels"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty())
                    && (selects(selector, dp_labels) || selects(selector, cp_labels));
                assert!(
                    only_pods && aiproxy,
                    "{} opens {grpc} to {peer}",
                    kind_name(policy)
                );
                grpc_from_dataplanes |= selects(selector, dp_labels);
            }
        }
    }
    assert!(grpc_from_dataplanes, "data planes cannot reach {grpc}");
    assert!(
        admin_open,
        "the admin port {admin} is closed to the cluster"
    );

    // The control plane gets its secrets; a data plane only the node token
    // and the Redis URL, the same as the control plane's.
    let cp_secrets = secret_sources(objects, pod(deployment), cp, "control plane");
    let dp_secrets = secret_sources(objects, pod(sts), &pod(sts)["containers"][0], "data plane");
    for setting in [
        "AIPROXY_DATABASE_URL",
        "AIPROXY_REDIS_URL",
        "AIPROXY_SECRET_KEY",
        "AIPROXY_NODE_TOKEN",
        "AIPROXY_ADMIN_TOKEN",
    ] {
        assert!(
            cp_secrets.contains_key(setting),
            "control plane lacks {setting}"
        );
    }
    assert_eq!(
        dp_secrets.keys().copied().collect::<Vec<_>>(),
        ["AIPROXY_NODE_TOKEN", "AIPROXY_REDIS_URL"]
    );
    for (setting, source) in &dp_secrets {
        assert_eq!(Some(source), cp_secrets.get(setting), "{setting} differs");
    }

    // One control plane may be evicted at a time.
    assert!(
        of_kind(objects, "PodDisruptionBudget").any(|p| selects(&p["spec"]["selector"], cp_labels)
            && !selects(&p["spec"]["selector"], dp_labels)),
        "no PodDisruptionBudget covers the control plane"
    );
}

#[test]
fn the_all_in_one_has_one_writer_and_keeps_its_data() {
    let rendered = render("single-node");
    let objects = &rendered.objects;
    let listen = aiproxy_shared::config::Config::default().listen;
    let (proxy, admin) = (
        u64::from(listen.proxy.port()),
        u64::from(listen.admin.port()),
    );
    let (deployment, aio) = running(objects, None);
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["strategy"]["type"], "Recreate",
        "two pods must never open the SQLite file at once"
    );
    assert_eq!(workloads(objects).count(), 1);
    assert_eq!(http_probe(aio, "readinessProbe"), ("/readyz".into(), proxy));
    assert_eq!(http_probe(aio, "livenessProbe"), ("/healthz".into(), admin));
    assert_service(objects, "aiproxy", deployment, proxy, proxy);
    assert_service(objects, "aiproxy", deployment, admin, admin);

    let env = env(objects, aio);
    for name in ["AIPROXY_DATABASE_URL", "AIPROXY_REDIS_URL"] {
        let as_file = format!("{name}_FILE");
        let given = array(&aio["env"])
            .iter()
            .any(|e| e["name"] == name || e["name"] == as_file.as_str());
        assert!(
            !given && !env.contains_key(name),
            "the all-in-one keeps SQLite and in-memory state, not {name}"
        );
    }

    // SQLite, the generated secrets and the journal are on a claim.
    let data_dir = env
        .get("AIPROXY_DATA_DIR")
        .map_or(IMAGE_DATA_DIR, |v| v.as_str().unwrap());
    let mount = mount_holding(aio, &format!("{data_dir}/aiproxy.db"))
        .unwrap_or_else(|| panic!("{data_dir} is on no volume"));
    let volume = array(&pod(deployment)["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let claim = volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap_or_else(|| panic!("{data_dir} is not on a claim: {volume}"));
    find(objects, "PersistentVolumeClaim", claim);

    // No drain delay here; the grace and the journal's delivery still apply.
    let default_grace = aiproxy_shared::config::Config::default().server.drain_grace;
    let delay = env_u64(&env, "AIPROXY_DRAIN_DELAY").unwrap_or(0);
    let grace = env_u64(&env, "AIPROXY_DRAIN_GRACE").unwrap_or(default_grace);
    let termination = pod(deployment)["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    assert!(termination > delay + grace + JOURNAL_DELIVERY);
}

#[test]
fn every_container_is_hardened_pinned_and_reads_secrets_from_a_secret() {
    for overlay in OVERLAYS {
        let rendered = render(overlay);
        let objects = &rendered.objects;
        for map in of_kind(objects, "ConfigMap") {
            for (key, value) in map["data"].as_object().into_iter().flatten() {
                let value = value.as_str().unwrap_or("");
                assert!(
                    !SECRETS.contains(&key.as_str()) && !credentials_in_url(value),
                    "{overlay}: {} holds a secret in {key}",
                    kind_name(map)
                );
            }
        }
        for workload in workloads(objects) {
            let pod = pod(workload);
            let what = format!("{overlay}: {}", kind_name(workload));
            assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
            assert_eq!(pod["securityContext"]["fsGroup"], IMAGE_USER, "{what}");
            for container in containers(pod) {
                let what = format!("{what} container {}", container["name"]);
                hardened(pod, container, &what);
                let image = container["image"].as_str().unwrap();
                assert!(pinned(image), "{what}: image {image} is not pinned");
                let resources = &container["resources"];
                for field in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
                    assert!(resources.pointer(field).is_some(), "{what}: no {field}");
                }
                secret_sources(objects, pod, container, &what);
            }
        }
    }
}

/// `scheme://user:password@host`: a URL that carries its credentials.
fn credentials_in_url(value: &str) -> bool {
    value
        .split_once("://")
        .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
}

fn hardened(pod: &Value, container: &Value, what: &str) {
    let (own, shared) = (&container["securityContext"], &pod["securityContext"]);
    let either = |k: &str| own.get(k).or_else(|| shared.get(k)).unwrap_or(&Value::Null);
    assert_eq!(either("runAsNonRoot"), true, "{what}: runAsNonRoot");
    assert_eq!(either("runAsUser"), IMAGE_USER, "{what}: runAsUser");
    assert_eq!(
        either("seccompProfile")["type"],
        "RuntimeDefault",
        "{what}: seccompProfile"
    );
    assert_eq!(
        own["readOnlyRootFilesystem"], true,
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        own["allowPrivilegeEscalation"], false,
        "{what}: allowPrivilegeEscalation"
    );
    assert!(
        array(&own["capabilities"]["drop"]).contains(&"ALL".into()),
        "{what}: capabilities are not all dropped"
    );
    assert!(
        array(&own["capabilities"]["add"]).is_empty(),
        "{what}: adds capabilities"
    );
}

/// A tag other than `latest`, or a digest.
fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap();
    last.split_once(':')
        .is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest")
}

/// Where each secret setting of a container comes from: (Secret, key).
type Sources = BTreeMap<&'static str, (String, String)>;

/// A secret reaches the container from a Secret only: as a file named by
/// `<NAME>_FILE` in a mounted Secret volume, or from a Secret's key. The
/// container sees no key of a Secret that it does not use, so a data plane
/// holds neither the secret key nor the database's password.
fn secret_sources(objects: &[Value], pod: &Value, container: &Value, what: &str) -> Sources {
    let literal = env(objects, container);
    let volumes = array(&pod["volumes"]);
    // A pod volume, or nothing for a StatefulSet's claim template.
    let volume = |name: &Value| volumes.iter().find(|v| v["name"] == *name);
    let has_key = |secret: &str, key: &str| {
        let secret = find(objects, "Secret", secret);
        assert!(
            secret["data"].get(key).is_some(),
            "{what}: {} has no key {key}",
            kind_name(secret)
        );
    };
    let mut used = Sources::new();
    for setting in SECRETS {
        let entry = array(&container["env"])
            .iter()
            .find(|e| e["name"] == setting);
        if let Some(entry) = entry {
            let source = entry
                .pointer("/valueFrom/secretKeyRef")
                .unwrap_or_else(|| panic!("{what}: {setting} is not from a Secret: {entry}"));
            let (secret, key) = (
                source["name"].as_str().unwrap(),
                source["key"].as_str().unwrap(),
            );
            has_key(secret, key);
            used.insert(setting, (secret.to_string(), key.to_string()));
        }
        let Some(path) = literal.get(&format!("{setting}_FILE")) else {
            continue;
        };
        let path = path.as_str().unwrap();
        let mount = mount_holding(container, path)
            .unwrap_or_else(|| panic!("{what}: {path} is on no volume"));
        let dir = mount["mountPath"].as_str().unwrap().trim_end_matches('/');
        let inside = path[dir.len()..].trim_start_matches('/');
        let source = volume(&mount["name"])
            .and_then(|v| v.get("secret"))
            .unwrap_or_else(|| panic!("{what}: {path} is not in a Secret volume"));
        let secret = source["secretName"].as_str().unwrap();
        let key = match source.get("items") {
            Some(items) => array(items)
                .iter()
                .find(|i| i["path"] == inside)
                .and_then(|i| i["key"].as_str())
                .unwrap_or_else(|| panic!("{what}: {path} is not among the volume's items")),
            None => inside,
        };
        has_key(secret, key);
        assert!(
            used.insert(setting, (secret.to_string(), key.to_string()))
                .is_none(),
            "{what}: {setting} and {setting}_FILE are both set"
        );
    }

    // What the container could read: its Secret volumes and envFrom.
    let mut visible = BTreeSet::new();
    for mount in array(&container["volumeMounts"]) {
        let Some(volume) = volume(&mount["name"]) else {
            continue;
        };
        assert!(
            volume.get("projected").is_none(),
            "{what}: this test reads Secret volumes, not projected ones"
        );
        let Some(source) = volume.get("secret") else {
            continue;
        };
        let secret = find(objects, "Secret", source["secretName"].as_str().unwrap());
        let keys: Vec<&str> = match source.get("items") {
            Some(items) => array(items)
                .iter()
                .map(|i| i["key"].as_str().unwrap())
                .collect(),
            None => secret["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.as_str())
                .collect(),
        };
        for key in keys {
            visible.insert((
                source["secretName"].as_str().unwrap().to_string(),
                key.to_string(),
            ));
        }
    }
    for from in array(&container["envFrom"]) {
        if let Some(name) = from["secretRef"]["name"].as_str() {
            let prefix = from["prefix"].as_str().unwrap_or("");
            let secret = find(objects, "Secret", name);
            for (key, _) in secret["data"].as_object().into_iter().flatten() {
                visible.insert((name.to_string(), key.clone()));
                let setting = format!("{prefix}{key}");
                if let Some(s) = SECRETS.iter().find(|s| **s == setting) {
                    used.insert(s, (name.to_string(), key.clone()));
                }
            }
        }
    }
    let used_keys: BTreeSet<(String, String)> = used.values().cloned().collect();
    let unused: Vec<_> = visible.difference(&used_keys).collect();
    assert!(
        unused.is_empty(),
        "{what}: sees secrets it does not use: {unused:?}"
    );
    used
}

// ---- metrics ------------------------------------------------------------

/// Fields of a ServiceMonitor's spec and of one of its endpoints
/// (monitoring.coreos.com/v1); anything else is a mistake.
const SERVICE_MONITOR_FIELDS: [&str; 16] = [
    "attachMetadata",
    "bodySizeLimit",
    "endpoints",
    "jobLabel",
    "keepDroppedTargets",
    "labelLimit",
    "labelNameLengthLimit",
    "labelValueLengthLimit",
    "namespaceSelector",
    "podTargetLabels",
    "sampleLimit",
    "scrapeClass",
    "scrapeProtocols",
    "selector",
    "targetLabels",
    "targetLimit",
];
const SERVICE_MONITOR_ENDPOINT_FIELDS: [&str; 21] = [
    "authorization",
    "basicAuth",
    "bearerTokenSecret",
    "enableHttp2",
    "filterRunning",
    "followRedirects",
    "honorLabels",
    "honorTimestamps",
    "interval",
    "metricRelabelings",
    "oauth2",
    "params",
    "path",
    "port",
    "proxyUrl",
    "relabelings",
    "scheme",
    "scrapeTimeout",
    "targetPort",
    "tlsConfig",
    "trackTimestampsStaleness",
];

/// The job names deploy/observability's rules and dashboard expect, and the
/// role whose pods each one scrapes.
const METRICS_JOBS: [(&str, &str); 2] = [
    ("aiproxy-controlplane", "controlplane"),
    ("aiproxy-dataplane", "dataplane"),
];

/// A Prometheus duration as a ServiceMonitor takes it (`30s`, `1m30s`).
fn is_duration(text: &str) -> bool {
    let mut digits = false;
    let mut rest = text;
    while !rest.is_empty() {
        let n = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if n == 0 {
            return false;
        }
        rest = &rest[n..];
        let unit = ["ms", "y", "w", "d", "h", "m", "s"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        let Some(unit) = unit else {
            return false;
        };
        rest = &rest[unit.len()..];
        digits = true;
    }
    digits
}

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect()
}

#[test]
fn every_plane_serves_metrics_on_a_port_of_its_own() {
    for overlay in OVERLAYS {
        let rendered = render(overlay);
        let objects = &rendered.objects;
        for workload in workloads(objects) {
            let what = format!("{overlay}: {}", kind_name(workload));
            let container = &pod(workload)["containers"][0];
            let port = metrics_port(role(workload));

            // A named port, which Services and ServiceMonitors refer to.
            let named = array(&container["ports"])
                .iter()
                .find(|p| p["name"] == "metrics");
            assert_eq!(
                named.and_then(|p| p["containerPort"].as_u64()),
                Some(port),
                "{what}: no container port `metrics` {port}"
            );
            // Said in so many words, on every interface of the pod.
            assert_eq!(
                env(objects, container).get("AIPROXY_METRICS_LISTEN"),
                Some(&Value::from(format!("0.0.0.0:{port}"))),
                "{what}: AIPROXY_METRICS_LISTEN"
            );

            // A Service over these pods exposes it, under the same name and
            // number.
            let exposing: Vec<&Value> = of_kind(objects, "Service")
                .filter(|s| labels_pick(&s["spec"]["selector"], pod_labels(workload)))
                .filter(|s| {
                    array(&s["spec"]["ports"])
                        .iter()
                        .any(|p| p["name"] == "metrics")
                })
                .collect();
            assert!(
                !exposing.is_empty(),
                "{what}: no Service has a port `metrics`"
            );
            for service in exposing {
                let entry = array(&service["spec"]["ports"])
                    .iter()
                    .find(|p| p["name"] == "metrics")
                    .unwrap();
                assert!(
                    entry["port"] == port
                        && container_port(
                            container,
                            entry.get("targetPort").unwrap_or(&entry["port"])
                        ) == port,
                    "{what}: {} forwards `metrics` as {entry}, not {port} to {port}",
                    kind_name(service)
                );
            }

            // The NetworkPolicies over these pods (if any: without one every
            // port is open) admit the port from other namespaces, where
            // Prometheus usually runs.
            let policies: Vec<&Value> = of_kind(objects, "NetworkPolicy")
                .filter(|p| selects(&p["spec"]["podSelector"], pod_labels(workload)))
                .filter(|p| array(&p["spec"]["policyTypes"]).contains(&"Ingress".into()))
                .collect();
            if policies.is_empty() {
                continue;
            }
            let admitted = policies
                .iter()
                .flat_map(|p| array(&p["spec"]["ingress"]))
                .filter(|rule| covers(container, rule, port))
                .any(|rule| {
                    let peers = array(&rule["from"]);
                    peers.is_empty()
                        || peers
                            .iter()
                            .any(|peer| peer.get("namespaceSelector").is_some())
                });
            assert!(
                admitted,
                "{what}: no NetworkPolicy admits {port} from pods of other namespaces"
            );
        }
    }
}

#[test]
fn the_servicemonitor_component_scrapes_each_plane_once_as_its_job() {
    let production = render("production");
    let namespaces: BTreeSet<&str> = of_kind(&production.objects, "Service")
        .map(|s| s["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces.len(), 1, "the Services share a namespace");
    let namespace = namespaces.into_iter().next().unwrap();

    // The production overlay with the component, as its README shows it:
    // an overlay of its own here, which gives the ServiceMonitors the
    // namespace the production overlay would.
    let tmp = tempfile::tempdir().unwrap();
    let kubernetes = relative(tmp.path(), &repo().join("deploy/kubernetes"));
    std::fs::write(
        tmp.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\n\
             kind: Kustomization\n\
             namespace: {namespace}\n\
             resources:\n  - {}\n\
             components:\n  - {}\n",
            kubernetes.join("overlays/production").display(),
            kubernetes.join("components/servicemonitor").display()
        ),
    )
    .unwrap();
    let rendered = render_dir(tmp.path(), "production with components/servicemonitor");
    let (monitors, others): (Vec<&Value>, Vec<&Value>) = rendered
        .objects
        .iter()
        .partition(|o| o["kind"] == "ServiceMonitor");

    // What is not a ServiceMonitor passes the schemas (kubernetes-validate
    // has none for a CRD), and is what the production overlay makes alone:
    // the component adds its ServiceMonitors and changes nothing else.
    let file = tempfile::NamedTempFile::new().unwrap();
    let stream: String = others.iter().map(|o| format!("---\n{o}\n")).collect();
    std::fs::write(file.path(), stream).unwrap();
    validate(
        file.path(),
        others.len(),
        "production with components/servicemonitor",
    );
    let as_text = |objects: &[&Value]| -> BTreeSet<String> {
        objects.iter().map(|o| o.to_string()).collect()
    };
    let alone: Vec<&Value> = production.objects.iter().collect();
    assert!(
        as_text(&others) == as_text(&alone),
        "the component changes objects other than its ServiceMonitors"
    );

    // Each ServiceMonitor's shape, as its CRD would check it.
    let objects = &rendered.objects;
    let mut jobs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut scraped: BTreeMap<String, usize> = BTreeMap::new();
    for monitor in &monitors {
        let what = kind_name(monitor);
        assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1", "{what}");
        for key in keys(monitor) {
            assert!(
                ["apiVersion", "kind", "metadata", "spec"].contains(&key),
                "{what}: unknown field {key}"
            );
        }
        assert_eq!(
            monitor["metadata"]["namespace"], namespace,
            "{what}: not beside the Services"
        );
        let spec = &monitor["spec"];
        for key in keys(spec) {
            assert!(
                SERVICE_MONITOR_FIELDS.contains(&key),
                "{what}: unknown field spec.{key}"
            );
        }
        // Its own namespace, where the Services are.
        let within = &spec["namespaceSelector"];
        assert!(
            within.is_null() || array(&within["matchNames"]) == [Value::from(namespace)],
            "{what}: namespaceSelector {within}"
        );
        let selector = &spec["selector"];
        assert!(
            selector["matchLabels"]
                .as_object()
                .is_some_and(|m| !m.is_empty()),
            "{what}: selects Services by no label"
        );
        let endpoints = array(&spec["endpoints"]);
        assert!(!endpoints.is_empty(), "{what}: no endpoints");

        // The job label: a Service label's value if `jobLabel` names one,
        // else the Service's name; no relabelling may change it.
        for endpoint in endpoints {
            for key in keys(endpoint) {
                assert!(
                    SERVICE_MONITOR_ENDPOINT_FIELDS.contains(&key),
                    "{what}: unknown field in an endpoint: {key}"
                );
            }
            let port = endpoint["port"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: an endpoint names no Service port"));
            assert_eq!(
                endpoint.get("path").unwrap_or(&"/metrics".into()),
                "/metrics",
                "{what}: path"
            );
            assert!(
                endpoint.get("scheme").is_none_or(|s| s == "http"),
                "{what}: scheme"
            );
            for field in ["interval", "scrapeTimeout"] {
                if let Some(d) = endpoint.get(field) {
                    assert!(d.as_str().is_some_and(is_duration), "{what}: {field} {d}");
                }
            }
            for relabeling in array(&endpoint["relabelings"]) {
                assert_ne!(relabeling["targetLabel"], "job", "{what}: relabels the job");
            }

            // Every Service it selects whose port it names: a target set.
            let services = of_kind(objects, "Service").filter(|s| {
                s["metadata"]["namespace"] == namespace
                    && selects(selector, &s["metadata"]["labels"])
            });
            for service in services {
                let Some(entry) = array(&service["spec"]["ports"])
                    .iter()
                    .find(|p| p["name"] == port)
                else {
                    continue;
                };
                let job = match spec["jobLabel"].as_str() {
                    Some(label) => service["metadata"]["labels"][label]
                        .as_str()
                        .unwrap_or_else(|| {
                            panic!("{what}: {} has no label {label}", kind_name(service))
                        })
                        .to_string(),
                    None => service["metadata"]["name"].as_str().unwrap().to_string(),
                };
                // The pods behind it, and the port it reaches on them.
                for workload in workloads(objects)
                    .filter(|w| labels_pick(&service["spec"]["selector"], pod_labels(w)))
                {
                    let container = &pod(workload)["containers"][0];
                    let target = entry.get("targetPort").unwrap_or(&entry["port"]);
                    assert_eq!(
                        container_port(container, target),
                        metrics_port(role(workload)),
                        "{what}: {} port {port} does not reach the metrics of {}",
                        kind_name(service),
                        kind_name(workload)
                    );
                    jobs.entry(job.clone())
                        .or_default()
                        .push(role(workload).unwrap_or("all-in-one").to_string());
                    *scraped.entry(kind_name(workload)).or_default() += 1;
                }
            }
        }
    }

    // Each plane's pods are scraped once, as the job the rules expect.
    let expected: BTreeMap<String, Vec<String>> = METRICS_JOBS
        .iter()
        .map(|(job, role)| (job.to_string(), vec![role.to_string()]))
        .collect();
    assert_eq!(jobs, expected, "jobs and the roles they scrape");
    for workload in workloads(objects) {
        assert_eq!(
            scraped.get(&kind_name(workload)),
            Some(&1),
            "{} is not scraped exactly once",
            kind_name(workload)
        );
    }
    assert_eq!(
        monitors.len(),
        METRICS_JOBS.len(),
        "one ServiceMonitor a plane"
    );
}
