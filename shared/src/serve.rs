//! Accepting HTTP connections under limits: a connection cap that refuses
//! rather than queues, a deadline for a request's headers, an idle
//! keep-alive timeout, descriptor exhaustion answered by refusing, and a
//! graceful drain.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a listener treats its connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// From a connection's start, or the end of its previous response, to
    /// the end of the next request's headers, once its first byte is in.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte arriving is
    /// closed after this long.
    pub keepalive_timeout: Duration,
}

/// What stays of a listener once it stops accepting: its open connections.
pub struct Drain {
    graceful: GracefulShutdown,
    cut: CancellationToken,
    connections: TaskTracker,
}

impl Drain {
    /// Asks every connection to finish its requests and close, and waits up
    /// to `grace`; then calls `before_cut` and closes the rest, waiting for
    /// their requests to wind down. True when all closed within the grace.
    pub async fn finish(self, grace: Duration, before_cut: impl FnOnce(usize)) -> bool {
        let Drain {
            graceful,
            cut,
            connections,
        } = self;
        connections.close();
        let clean = tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_ok();
        if !clean {
            before_cut(connections.len());
            cut.cancel();
        }
        connections.wait().await;
        clean
    }
}

/// Serves `listener` until `stop` fires; returns the open connections to drain.
/// `service` makes each connection's service from the peer's address.
pub async fn serve<S, B>(
    listener: TcpListener,
    limits: Limits,
    service: impl Fn(SocketAddr) -> S,
    stop: CancellationToken,
) -> Drain
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let cut = CancellationToken::new();
    let connections = TaskTracker::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Held so that, when descriptors run out, one can be freed to accept
    // and refuse the waiting connection instead of spinning on accept.
    let mut reserve = open_reserve();
    let mut warned_full = Instant::now() - Duration::from_secs(60);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_out_of_descriptors(&e) => {
                    refuse_one(&listener, &mut reserve).await;
                    if warned_full.elapsed() > Duration::from_secs(10) {
                        warned_full = Instant::now();
                        tracing::warn!(error = %e, "out of file descriptors: refusing connections");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if warned_full.elapsed() > Duration::from_secs(10) {
                warned_full = Instant::now();
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached: refusing connections"
                );
            }
            // Tracked too: a drain waits for the refusal to be written.
            connections.spawn(answer_busy(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watch = Arc::new(Watch::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            watch: watch.clone(),
        });
        let tracked = Tracking {
            inner: service(peer),
            watch: watch.clone(),
        };
        let conn = builder
            .serve_connection_with_upgrades(io, tracked)
            .into_owned();
        let conn = graceful.watch(conn);
        let limits = limits.clone();
        let cut = cut.clone();
        connections.spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            loop {
                let check = watch.next_check(&limits);
                tokio::select! {
                    // Past the drain's grace: dropped with whatever is in flight.
                    _ = cut.cancelled() => return,
                    ended = &mut conn => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = tokio::time::sleep_until(check.into()) => {
                        if let Some(reason) = watch.expired(&limits) {
                            tracing::debug!(%peer, reason, "closing connection");
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    Drain {
        graceful,
        cut,
        connections,
    }
}

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    // EMFILE (per process) and ENFILE (system-wide).
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

/// Frees the reserve descriptor, accepts the connection the kernel holds
/// and closes it at once, then takes the reserve back.
async fn refuse_one(listener: &TcpListener, reserve: &mut Option<std::fs::File>) {
    if reserve.take().is_none() {
        // No reserve to free: back off rather than spin.
        tokio::time::sleep(Duration::from_millis(50)).await;
    } else if let Ok(Ok((stream, _))) =
        tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
    {
        drop(stream);
    }
    *reserve = open_reserve();
}

/// Refusals being written at once; beyond this a surplus connection is
/// dropped without an answer.
const MAX_BUSY_ANSWERS: usize = 256;
static BUSY_ANSWERS: AtomicUsize = AtomicUsize::new(0);

/// A 503, then the connection is closed: the write side first, and the
/// client's request read and discarded for a moment, so the close is not a
/// reset that would discard the answer before the client reads it.
async fn answer_busy(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 28\r\n\r\ntoo many connections; retry\n";
    if BUSY_ANSWERS.fetch_add(1, Ordering::Relaxed) >= MAX_BUSY_ANSWERS {
        BUSY_ANSWERS.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let _ = stream.try_write(BUSY);
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    BUSY_ANSWERS.fetch_sub(1, Ordering::Relaxed);
}

/// What the watchdog of one connection knows: requests in flight, when
/// the connection last became idle, and when bytes came in after that.
struct Watch {
    started: Instant,
    busy: AtomicUsize,
    /// Milliseconds after `started` when the last request ended (or the
    /// connection opened).
    idle_since_ms: AtomicU64,
    /// Bytes arrived since then: a request is on its way.
    heard: AtomicBool,
    /// Milliseconds after `started` of the first of those bytes.
    heard_at_ms: AtomicU64,
}

impl Watch {
    fn new() -> Self {
        Watch {
            started: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            heard: AtomicBool::new(false),
            heard_at_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.started + Duration::from_millis(ms.load(Ordering::Relaxed))
    }

    fn heard_bytes(&self) {
        if !self.heard.load(Ordering::Relaxed) {
            self.heard_at_ms.store(self.now_ms(), Ordering::Relaxed);
            self.heard.store(true, Ordering::Relaxed);
        }
    }

    fn begin(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self) {
        if self.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
            self.heard.store(false, Ordering::Relaxed);
        }
    }

    /// The deadline in force: none while a request is in flight; the
    /// header deadline once a request's bytes are arriving; else idleness.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            None
        } else if self.heard.load(Ordering::Relaxed) {
            Some((
                self.at(&self.heard_at_ms) + limits.header_read_timeout,
                "request headers too slow",
            ))
        } else {
            Some((
                self.at(&self.idle_since_ms) + limits.keepalive_timeout,
                "idle keep-alive timeout",
            ))
        }
    }

    /// When to look again.
    fn next_check(&self, limits: &Limits) -> Instant {
        let now = Instant::now();
        match self.deadline(limits) {
            Some((at, _)) => at.max(now + Duration::from_millis(10)),
            None => now + limits.header_read_timeout.min(limits.keepalive_timeout),
        }
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        self.deadline(limits)
            .filter(|(at, _)| *at <= Instant::now())
            .map(|(_, reason)| reason)
    }
}

/// The connection's socket, noting when bytes arrive.
struct Watched {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watch.heard_bytes();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Counts a request in flight from its headers to the end of its response body.
struct Tracking<S> {
    inner: S,
    watch: Arc<Watch>,
}

/// Ends the request's count when dropped.
pub struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracking<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = Tracked<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.watch.begin();
        Tracked {
            inner: self.inner.call(req),
            guard: Some(InFlight(self.watch.clone())),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future, unboxed, holding the request's count until its
    /// response exists (then its body holds it).
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, B> Future for Tracked<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        #[allow(
            clippy::expect_used,
            reason = "a future is not polled after it is ready"
        )]
        let guard = this.guard.take().expect("polled after completion");
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            inner: body,
            _guard: guard,
        })))
    }
}

/// A response body that keeps its request counted until it is done.
pub struct TrackedBody<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
