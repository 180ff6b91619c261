//! The client side: sequential latency samples, open-loop fixed rates,
//! saturation, streams timed to their first byte, and idle streams held open.
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Where an arm is reached, and the key it takes.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub key: String,
}

#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

pub fn body(stream: bool) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":16,"stream":{stream},"messages":[{{"role":"user","content":"benchmark"}}]}}"#
    ))
}

impl Client {
    pub fn new() -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client {
            http: HyperClient::builder(TokioExecutor::new())
                .pool_max_idle_per_host(4096)
                .build(connector),
        }
    }

    async fn send(&self, t: &Target, body: Bytes) -> Result<Response<Incoming>, String> {
        let req = Request::post(format!("{}/v1/messages", t.url))
            .header("x-api-key", &t.key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .expect("request");
        let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            let status = resp.status();
            let text = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(format!("{status}: {}", String::from_utf8_lossy(&text)));
        }
        Ok(resp)
    }

    /// One non-streamed request, read to its end; nanoseconds.
    pub async fn one(&self, t: &Target, body: Bytes) -> Result<u64, String> {
        let started = Instant::now();
        let resp = self.send(t, body).await?;
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(started.elapsed().as_nanos() as u64)
    }

    /// `n` requests one after another.
    pub async fn sequential(&self, t: &Target, n: usize) -> Vec<u64> {
        let body = body(false);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.one(t, body.clone()).await.expect("request"));
        }
        out
    }

    /// `rate` requests per second for `duration`, each timed from when it was
    /// due (so a stalled server cannot hide its queue). Returns latencies and errors.
    pub async fn open_loop(&self, t: &Target, rate: u64, duration: Duration) -> (Vec<u64>, usize) {
        let total = (rate as f64 * duration.as_secs_f64()) as u64;
        let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
        let body = body(false);
        let started = tokio::time::Instant::now();
        let results = Arc::new(std::sync::Mutex::new((
            Vec::with_capacity(total as usize),
            0usize,
        )));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            let due = started + interval * i as u32;
            tokio::time::sleep_until(due).await;
            let (client, t, body, results) =
                (self.clone(), t.clone(), body.clone(), results.clone());
            tasks.spawn(async move {
                let outcome = client.one(&t, body).await;
                let late = due.elapsed().as_nanos() as u64;
                let mut r = results.lock().expect("results");
                match outcome {
                    Ok(_) => r.0.push(late),
                    Err(_) => r.1 += 1,
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let r = results.lock().expect("results");
        (r.0.clone(), r.1)
    }

    /// `total` requests with `concurrency` in flight; how long it took.
    pub async fn saturate(&self, t: &Target, concurrency: usize, total: usize) -> Duration {
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (client, t, next) = (self.clone(), t.clone(), next.clone());
            tasks.spawn(async move {
                let body = body(false);
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    client.one(&t, body.clone()).await.expect("request");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        started.elapsed()
    }

    /// A streamed request: time to its first body byte (ns) and how many
    /// chunks arrived.
    pub async fn stream_once(&self, t: &Target) -> Result<(u64, usize), String> {
        let started = Instant::now();
        let mut body = self.send(t, body(true)).await?.into_body();
        let mut ttfb = None;
        let mut chunks = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                ttfb.get_or_insert(started.elapsed().as_nanos() as u64);
                chunks += 1;
            }
        }
        Ok((ttfb.unwrap_or(0), chunks))
    }

    /// Opens `n` streams that stay idle after their first event; keep the
    /// returned bodies to hold them open.
    pub async fn hold(&self, t: &Target, n: usize) -> Vec<Incoming> {
        let mut tasks = tokio::task::JoinSet::new();
        let gate = Arc::new(tokio::sync::Semaphore::new(256));
        for _ in 0..n {
            let (client, t, gate) = (self.clone(), t.clone(), gate.clone());
            tasks.spawn(async move {
                let _permit = gate.acquire().await.expect("semaphore");
                let mut body = client
                    .send(&t, body(true))
                    .await
                    .expect("stream")
                    .into_body();
                body.frame().await.expect("first event").expect("frame");
                body
            });
        }
        let mut out = Vec::with_capacity(n);
        while let Some(b) = tasks.join_next().await {
            out.push(b.expect("stream task"));
        }
        out
    }
}

/// The `p`-th percentile (0–100) of sorted samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
