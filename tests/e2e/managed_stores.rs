//! Managed stores: a Redis and a MariaDB the tests start with a certificate
//! generated for the run (the Redis on its TLS port only, the MariaDB
//! refusing plaintext), and a Redis master that fails over under Sentinel.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aiproxy_tests::harness::eventually;
use serde_json::json;

use crate::embedded::start_with;

/// A CA and a server certificate for 127.0.0.1 and localhost it signed,
/// made with the openssl command line.
struct Certificates {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn certificates(dir: &Path) -> Certificates {
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            ],
            &["-out", "ca.pem", "-subj", "/CN=aiproxy test CA"][..],
            &days[..],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-extfile",
                "san.ext",
            ][..],
            &days[..],
        ]
        .concat(),
    );
    Certificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when the test ends, whatever happens.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `redis-cli` against a plain port.
fn redis_plain(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Scripts a Redis has run (the scheduling path runs one per request).
fn scripts_run(port: u16) -> u64 {
    let stats = redis_plain(port, &["INFO", "commandstats"]);
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn redis_cli(port: u16, certs: &Certificates, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&certs.ca)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_relay_keeps_its_state_in_a_redis_reached_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path());
    let port = free_port();
    let _redis = Server(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&certs.cert)
            .arg("--tls-key-file")
            .arg(&certs.key)
            .arg("--tls-ca-cert-file")
            .arg(&certs.ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's, built with TLS) runs"),
    );
    wait_for_port(port, "the TLS Redis");
    assert_eq!(redis_cli(port, &certs, &["PING"]).trim(), "PONG");

    let url = format!("rediss://127.0.0.1:{port}/");
    let aio = start_with(&[
        ("AIPROXY_REDIS_URL", url.clone()),
        ("AIPROXY_REDIS_CA", certs.ca.display().to_string()),
    ])
    .await;
    let mock = aiproxy_tests::mock::MockUpstream::start().await;
    aio.admin
        .create_account("tls", &mock.url(), "sk-ant-upstream")
        .await;
    let key = aio.user_key("tls").await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]});
    let url = format!("{}/v1/messages", aio.proxy);
    eventually("the key is served", Duration::from_secs(10), async || {
        let reply = aio
            .http
            .send("POST", &url, &[("x-api-key", &key)], Some(&body))
            .await;
        (reply.status == 200).then_some(()).ok_or(reply.text())
    })
    .await;
    // The scheduling script ran on the TLS Redis (its only port).
    let stats = redis_cli(port, &certs, &["INFO", "commandstats"]);
    assert!(
        stats.contains("cmdstat_evalsha") || stats.contains("cmdstat_eval:"),
        "no script ran on the TLS Redis:\n{stats}"
    );
    aio.process.stop().await;

    // A CA for a plain URL is a configuration mistake, said at start.
    let refused = Command::new(crate::bin())
        .args(["dataplane"])
        .env("AIPROXY_DATA_DIR", dir.path().join("dp"))
        .env("AIPROXY_CONTROLPLANE_URL", "http://127.0.0.1:1")
        .env("AIPROXY_NODE_TOKEN", "a-node-token-of-16+")
        .env("AIPROXY_REDIS_URL", format!("redis://127.0.0.1:{port}/"))
        .env("AIPROXY_REDIS_CA", &certs.ca)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not rediss://"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Runs `aiproxy migrate` against `url`; its stderr when it fails.
fn migrate(url: &str, data: &Path) -> Result<(), String> {
    let out = Command::new(crate::bin())
        .arg("migrate")
        .env("AIPROXY_DATA_DIR", data)
        .env("AIPROXY_DATABASE_URL", url)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_control_plane_reaches_a_mariadb_that_requires_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path());
    let data = dir.path().join("mariadb");
    let install = Command::new("mariadb-install-db")
        .args(["--no-defaults", "--user=root", "--skip-test-db"])
        .arg("--auth-root-authentication-method=normal")
        .arg(format!("--datadir={}", data.display()))
        .output()
        .expect("mariadb-install-db (Debian's mariadb-server) runs");
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let port = free_port();
    let _mariadb = Server(
        Command::new("mariadbd")
            .args(["--no-defaults", "--user=root", "--skip-name-resolve"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!(
                "--socket={}",
                dir.path().join("mariadb.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mariadb.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                dir.path().join("mariadb.err").display()
            ))
            .args(["--bind-address=127.0.0.1", &format!("--port={port}")])
            .arg(format!("--ssl-ca={}", certs.ca.display()))
            .arg(format!("--ssl-cert={}", certs.cert.display()))
            .arg(format!("--ssl-key={}", certs.key.display()))
            .arg("--require-secure-transport=ON")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd runs"),
    );
    wait_for_port(port, "the TLS MariaDB");
    // Set up through the local socket, which needs no TLS.
    let socket = dir.path().join("mariadb.sock");
    let setup = Command::new("mariadb")
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "-e"])
        .arg(
            "CREATE DATABASE aiproxy; CREATE USER aiproxy@'%' IDENTIFIED BY 'pw'; \
             GRANT ALL ON aiproxy.* TO aiproxy@'%';",
        )
        .output()
        .expect("the mariadb client runs");
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let ca = certs.ca.display().to_string();
    let root = format!("mysql://aiproxy:pw@127.0.0.1:{port}");
    let work = dir.path().join("aiproxy");

    // Verified against the CA: the schema is migrated over TLS.
    migrate(
        &format!("{root}/aiproxy?ssl-mode=verify_identity&ssl-ca={ca}"),
        &work,
    )
    .unwrap();
    // The server refuses plaintext (MariaDB says so as a denied login)…
    let plain = migrate(&format!("{root}/aiproxy?ssl-mode=disabled"), &work).unwrap_err();
    assert!(
        plain.contains("1045") || plain.to_lowercase().contains("secure transport"),
        "{plain}"
    );
    // …and a certificate the public roots do not vouch for is refused.
    let unverified = migrate(&format!("{root}/aiproxy?ssl-mode=verify_ca"), &work).unwrap_err();
    assert!(unverified.contains("certificate"), "{unverified}");
}

/// A master, its replica and one sentinel: the relay follows the master the
/// sentinel names, and after the master is killed, the promoted replica.
#[tokio::test]
async fn the_relay_follows_a_redis_master_through_a_sentinel_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (master, replica, sentinel) = (free_port(), free_port(), free_port());
    let redis = |port: u16, extra: &[&str]| {
        Server(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                // A replica keeps the master's copy in its directory.
                .arg("--dir")
                .arg(dir.path())
                .args(extra)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server runs"),
        )
    };
    let master_server = redis(master, &[]);
    let _replica = redis(replica, &["--replicaof", "127.0.0.1", &master.to_string()]);
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel}\nbind 127.0.0.1\n\
             sentinel monitor m 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds m 1000\n\
             sentinel failover-timeout m 5000\n"
        ),
    )
    .unwrap();
    let _sentinel = Server(
        Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs as a sentinel"),
    );
    for port in [master, replica, sentinel] {
        wait_for_port(port, "a Redis");
    }
    // The sentinel must know the replica before it can promote it.
    eventually(
        "the sentinel sees the replica",
        Duration::from_secs(30),
        async || {
            let replicas = redis_plain(sentinel, &["SENTINEL", "replicas", "m"]);
            let synced = redis_plain(replica, &["INFO", "replication"]);
            (replicas.contains(&replica.to_string()) && synced.contains("master_link_status:up"))
                .then_some(())
                .ok_or(format!("{replicas}\n{synced}"))
        },
    )
    .await;

    let aio = start_with(&[(
        "AIPROXY_REDIS_URL",
        format!("redis+sentinel://127.0.0.1:{sentinel}/m"),
    )])
    .await;
    let mock = aiproxy_tests::mock::MockUpstream::start().await;
    aio.admin
        .create_account("followed", &mock.url(), "sk-ant-upstream")
        .await;
    let key = aio.user_key("followed").await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "hi"}]});
    let url = format!("{}/v1/messages", aio.proxy);
    let send = async || {
        aio.http
            .send("POST", &url, &[("x-api-key", &key)], Some(&body))
            .await
    };
    eventually("the key is served", Duration::from_secs(10), async || {
        let reply = send().await;
        (reply.status == 200).then_some(()).ok_or(reply.text())
    })
    .await;
    assert!(scripts_run(master) > 0, "the relay schedules on the master");
    assert_eq!(scripts_run(replica), 0);

    // The master dies; the sentinel promotes the replica, and the relay,
    // serving from its own memory meanwhile, moves there.
    drop(master_server);
    eventually(
        "the relay schedules on the promoted replica",
        Duration::from_secs(60),
        async || {
            let reply = send().await;
            if reply.status != 200 {
                return Err(format!("{}: {}", reply.status, reply.text()));
            }
            let on_replica = scripts_run(replica);
            (on_replica > 0).then_some(()).ok_or(format!(
                "nothing scheduled on the replica yet; the sentinel names {}",
                redis_plain(sentinel, &["SENTINEL", "get-master-addr-by-name", "m"])
                    .replace('\n', " ")
            ))
        },
    )
    .await;
    aio.process.stop().await;
}
