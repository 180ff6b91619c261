//! What the kernel says about a process (CPU time, resident memory), the
//! helper servers run as child processes, and Redis's command counters.
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// User + system CPU time of `pid` and its threads, in microseconds.
pub fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat_cpu_us(&stat)
}

/// CPU time of each thread of `pid` by thread name, in microseconds.
pub fn cpu_us_by_thread(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        *out.entry(stat[open + 1..close].to_string()).or_default() += stat_cpu_us(&stat);
    }
    out
}

/// utime + stime of a `stat` line, in microseconds: fields 14 and 15, the
/// 12th and 13th after the parenthesised command name.
fn stat_cpu_us(stat: &str) -> u64 {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 1_000_000 / TICKS_PER_SEC
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Descriptors `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The soft limit on open files of `pid`.
pub fn fd_limit(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024)
}

/// Runs this benchmark binary as a helper server (`serve-upstream`,
/// `serve-bare …`) pinned to `cpu`, and returns it with the port it announced.
pub async fn spawn_helper(args: &[String], cpu: Option<usize>) -> (Child, u16) {
    let me = std::env::current_exe().expect("own path");
    let mut cmd = match cpu {
        Some(cpu) if Path::new("/usr/bin/taskset").exists() => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&me);
            c
        }
        _ => Command::new(&me),
    };
    cmd.args(args)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn helper");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines
        .next_line()
        .await
        .expect("helper output")
        .expect("helper announced");
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("helper port");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// Round trips clients made to Redis: its script calls and the few plain
/// commands aiproxy issues (`INFO commandstats` also counts every command a
/// script runs inside Redis, which are not round trips, so those are left out).
pub async fn redis_calls(addr: &str) -> Option<u64> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        buf.extend_from_slice(&chunk[..n]);
        if n == 0
            || buf.ends_with(b"\r\n\r\n")
            || (buf.len() > 4 && buf.ends_with(b"\r\n") && is_complete(&buf))
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    Some(
        text.lines()
            .filter(|l| {
                [
                    "cmdstat_evalsha:",
                    "cmdstat_eval:",
                    "cmdstat_script|load:",
                    "cmdstat_ping:",
                ]
                .iter()
                .any(|c| l.starts_with(c))
            })
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum(),
    )
}

/// Whether a RESP bulk string reply is all here.
fn is_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let len: usize = std::str::from_utf8(&buf[1..end])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    buf.len() >= end + 2 + len + 2
}
