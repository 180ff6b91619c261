//! The relay: authenticate, check, lease an account that serves the
//! endpoint, forward, fail over before the first byte, stream back, meter.
use aiproxy_shared::sync::LockExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aiproxy_shared::domain::AccountKind;
use aiproxy_shared::http::{HttpClient, ProxyUrl};
use aiproxy_shared::state::Mark;
use bytes::Bytes;
use http::header;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::adapters::{self, Outgoing};
use crate::admission::{Admission, Admitted, BodyBudget};
use crate::auth::{authenticate, model_allowed, query_without_key};
use crate::body::{Pipeline, RelayBody, TapBody};
use crate::errors::RelayError;
use crate::failure::{self, Verdict};
use crate::meter::Meter;
use crate::request;
use crate::response::{fold_stream, strip_response_headers};
use crate::routes::Endpoint;
use crate::scheduler::{Ask, Lease, Scheduler};
use crate::settings::Effective;
use crate::snapshot::{AccountEntry, KeyEntry, Snapshot, SnapshotHolder};
use crate::spending::Spending;
use crate::tap::{Decoder, Observed, Unwrapper, UsageFormat, UsageTap};
use crate::usage::{Unavailable, UsageSink};

/// The class of a key's rate-limit refusal.
const RATE_LIMITED: &str = "rate_limited";

/// Largest error body read from an account that failed, to judge it.
const MAX_FAILURE_BODY: usize = 1 << 20;

/// Shared by every request on a node.
pub struct Relay {
    pub snapshot: Arc<SnapshotHolder>,
    /// What was spent since the snapshot.
    pub spending: Arc<Spending>,
    pub scheduler: Arc<Scheduler>,
    /// Direct upstream client.
    pub client: HttpClient,
    /// Clients through each account proxy in use, by proxy URL.
    pub proxied: std::sync::Mutex<std::collections::HashMap<ProxyUrl, HttpClient>>,
    pub sink: UsageSink,
    /// Longest silence allowed inside a response body.
    pub idle_timeout: Duration,
    pub max_body_bytes: usize,
    /// Accounts tried per request before giving up.
    pub max_attempts: usize,
    /// Connect timeout for clients made for account proxies.
    pub connect_timeout: Duration,
    /// The control plane, told about refused tokens and rate limits.
    pub control: crate::control::Client,
    pub node_id: String,
    /// Shutdown began: readiness fails so load balancers move away.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The drain's grace is over: responses cut now are recorded as `shutdown`.
    pub cutting: Arc<std::sync::atomic::AtomicBool>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// One access-log line per request.
    pub access_log: bool,
    /// Readiness fails after this long without a word from the control plane.
    pub max_snapshot_age: Option<Duration>,
    /// Refusals decided before a body is read.
    pub admission: Arc<Admission>,
    /// Request-body bytes held at once across the node.
    pub bodies: BodyBudget,
    pub body_read_timeout: Duration,
    /// Work a response leaves behind (marks, reports to the control plane);
    /// the node's shutdown waits for it.
    pub tasks: tokio_util::task::TaskTracker,
}

/// A response from an account, with the leases it holds.
struct Attempt {
    response: Response<Incoming>,
    account: Arc<AccountEntry>,
    lease: Lease,
}

/// How one call to an account went.
enum Called {
    /// An answer for the client (success, or the request's own fault).
    Answered(Response<Incoming>),
    /// The account refused; its answer is kept in case no other account can serve.
    Refused {
        head: http::response::Parts,
        body: Bytes,
        verdict: Verdict,
    },
    /// No answer at all.
    Failed {
        error: RelayError,
        mark: Option<Mark>,
    },
}

/// What the client gets when every account failed.
enum LastFailure {
    Refused {
        head: http::response::Parts,
        body: Bytes,
        account_id: i64,
    },
    Failed(RelayError),
}

/// One admitted request, as the steps after the pick need it: where it came
/// in, the snapshot it is served from, and who asked for which model (the
/// parts of its usage record known up front). Its meter consumes it.
struct Exchange<'r> {
    endpoint: &'r Endpoint,
    request_id: &'r HeaderValue,
    snapshot: &'r Arc<Snapshot>,
    started: Instant,
    /// Counts the request on this node until its response ends.
    admitted: Admitted,
    key: Arc<KeyEntry>,
    /// The package admitted against; 0 when none.
    package_id: i64,
    price_rate: Decimal,
    model: String,
    stream: bool,
    session_hash: String,
}

impl Relay {
    pub async fn handle(
        &self,
        endpoint: Endpoint,
        req: Request<Incoming>,
        request_id: &HeaderValue,
    ) -> Response<RelayBody> {
        use tracing::Instrument;
        use tracing::field::Empty;
        let started = Instant::now();
        let mut caller = (0, 0);
        // The request's span lasts until its answer ends (the meter holds it).
        let span = aiproxy_shared::traced_span!(
            "relay",
            request_id = request_id.to_str().unwrap_or_default(),
            endpoint = endpoint.name(),
            key_id = Empty,
            user_id = Empty,
            model = Empty,
            account_id = Empty,
            status = Empty,
            error_class = Empty,
            input_tokens = Empty,
            output_tokens = Empty,
            cache_creation_tokens = Empty,
            cache_read_tokens = Empty,
            upstream_request_id = Empty,
        );
        aiproxy_shared::telemetry::continue_trace(&span, req.headers());
        let relayed = self
            .relay(&endpoint, req, request_id, &mut caller)
            .instrument(span.clone())
            .await;
        match relayed {
            Ok(resp) => resp,
            Err(e) => {
                span.record("status", e.status.as_u16())
                    .record("error_class", e.class);
                if self.access_log {
                    crate::access::Line {
                        request_id: request_id.to_str().unwrap_or_default(),
                        user_id: caller.1,
                        key_id: caller.0,
                        account_id: 0,
                        endpoint: endpoint.name(),
                        model: "",
                        status: e.status.as_u16(),
                        error_class: e.class,
                        duration: started.elapsed(),
                        first_byte: None,
                        stream: false,
                        tokens: Default::default(),
                        upstream_request_id: "",
                    }
                    .emit();
                }
                self.metrics.finished(&crate::metrics::Finished {
                    endpoint: endpoint.name(),
                    platform: endpoint.platform().as_str(),
                    status: e.status.as_u16(),
                    error_class: e.class,
                    duration: started.elapsed(),
                    first_byte: None,
                });
                e.into_response(endpoint.error_shape(), request_id)
                    .map(RelayBody::full)
            }
        }
    }

    async fn relay(
        &self,
        endpoint: &Endpoint,
        req: Request<Incoming>,
        request_id: &HeaderValue,
        // The caller's key and user ids, once known.
        who: &mut (i64, i64),
    ) -> Result<Response<RelayBody>, RelayError> {
        let started = Instant::now();
        let snapshot = self.snapshot.load().ok_or_else(RelayError::not_ready)?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let (parts, body) = req.into_parts();
        let caller = authenticate(&snapshot, &parts.headers, parts.uri.query(), now_ms)?;
        *who = (caller.key.id, caller.user.id);
        tracing::Span::current()
            .record("key_id", caller.key.id)
            .record("user_id", caller.user.id);
        match self.sink.availability() {
            Ok(()) => {}
            Err(Unavailable::Full) => return Err(RelayError::journal_full()),
            Err(Unavailable::Failing) => return Err(RelayError::journal_unavailable()),
        }
        // Everything that refuses a request whatever its body, before the
        // body is read: a refused request holds no memory.
        let admitted = self.admission.admit(&caller.key, caller.user, now_ms)?;
        self.spending
            .pre_admit(&snapshot, &caller.key, chrono::Utc::now())?;
        let mut body_bytes = self.bodies.none();
        let body = request::read_body(
            body,
            &parts.headers,
            self.max_body_bytes,
            &self.bodies,
            &mut body_bytes,
            self.body_read_timeout,
        )
        .await?;
        let parsed = request::parse(endpoint, &parts.headers, body, &caller.key.client_filter)?;
        tracing::Span::current().record("model", parsed.model.as_str());
        if !model_allowed(&caller.key, &parsed.model) {
            return Err(RelayError::model_not_allowed());
        }
        if snapshot.prices.is_fenced(&parsed.model) {
            return Err(RelayError::price_unavailable());
        }
        let package_id =
            self.spending
                .admit(&snapshot, &caller.key, &parsed.model, chrono::Utc::now())?;
        let exchange = Exchange {
            endpoint,
            request_id,
            snapshot: &snapshot,
            started,
            admitted,
            key: caller.key.clone(),
            package_id,
            price_rate: caller.user.price_rate,
            model: parsed.model.clone(),
            stream: parsed.stream,
            session_hash: parsed
                .session
                .as_ref()
                .map(|s| s.hash.clone())
                .unwrap_or_default(),
        };
        let ask = Ask {
            key: &caller.key,
            user: caller.user,
            kinds: endpoint.kinds(),
            session: parsed.session.as_ref().map(|s| s.hash.as_str()),
            pool: endpoint.name(),
            now_ms,
        };
        let scheduling = aiproxy_shared::traced_span!("schedule");
        let picked =
            tracing::Instrument::instrument(self.scheduler.acquire(&snapshot, &ask), scheduling)
                .await;
        let (mut account, mut lease) = match picked {
            Ok(picked) => picked,
            Err(e) => {
                // Later requests of a key over its rate are refused before
                // their bodies are read.
                if let (RATE_LIMITED, Some(secs)) = (e.class, e.retry_after) {
                    self.admission
                        .rate_limited(caller.key.id, now_ms + secs as i64 * 1000);
                }
                return Err(e);
            }
        };
        let query = query_without_key(parts.uri.query());
        let outgoing = Outgoing {
            endpoint,
            query: query.as_deref(),
            headers: &parts.headers,
            body: parsed.body,
            request_id: request_id.to_str().unwrap_or_default(),
        };

        let mut tried: Vec<i64> = Vec::new();
        let mut last: Option<LastFailure> = None;
        for attempt in 1..=self.max_attempts {
            tried.push(account.id);
            let mut report = None;
            let attempt_span = aiproxy_shared::traced_span!(
                "attempt",
                attempt,
                account_id = account.id,
                status = tracing::field::Empty,
            );
            let called = tracing::Instrument::instrument(
                self.call(&account, &outgoing, &snapshot.settings),
                attempt_span.clone(),
            )
            .await;
            if let Called::Answered(response) = &called {
                attempt_span.record("status", response.status().as_u16());
            } else if let Called::Refused { head, .. } = &called {
                attempt_span.record("status", head.status.as_u16());
            }
            drop(attempt_span);
            let mark = match called {
                Called::Answered(response) => {
                    let attempt = Attempt {
                        response,
                        account,
                        lease,
                    };
                    return self.respond(exchange, attempt).await;
                }
                Called::Refused {
                    head,
                    body,
                    verdict,
                } => {
                    tracing::warn!(
                        request_id = request_id.to_str().unwrap_or_default(),
                        account_id = account.id,
                        status = head.status.as_u16(),
                        reason = verdict.mark.as_ref().map(|m| m.reason.as_str()),
                        "upstream refused; trying another account"
                    );
                    last = Some(LastFailure::Refused {
                        head,
                        body,
                        account_id: account.id,
                    });
                    let mark = verdict.mark.clone();
                    report = Some(verdict);
                    mark
                }
                Called::Failed { error, mark } => {
                    tracing::warn!(request_id = request_id.to_str().unwrap_or_default(), account_id = account.id, error = %error.message, "upstream call failed; trying another account");
                    last = Some(LastFailure::Failed(error));
                    mark
                }
            };
            // The control plane hears of a refusal only once the mark is
            // set, so a refresh it makes can lift the mark for good.
            if attempt == self.max_attempts {
                self.mark_then_report(&account, mark, report);
                break;
            }
            let ask = Ask {
                now_ms: chrono::Utc::now().timestamp_millis(),
                ..ask
            };
            let next = self
                .scheduler
                .fail_over(&snapshot, &ask, &mut lease, &tried, mark)
                .await;
            if let Some(verdict) = &report {
                self.tell_control_plane(&account, verdict);
            }
            match next {
                Some(next) => {
                    self.metrics.failover(endpoint.platform().as_str());
                    account = next;
                }
                None => break,
            }
        }
        match last {
            // Every account refused: pass the last answer through as it was.
            Some(LastFailure::Refused {
                head,
                body,
                account_id,
            }) => Ok(self.pass_through(exchange, head, body, account_id)),
            Some(LastFailure::Failed(e)) => Err(e),
            None => Err(RelayError::no_account()),
        }
    }

    /// One call to one account, judged: answered, refused, or failed.
    async fn call(
        &self,
        account: &AccountEntry,
        outgoing: &Outgoing<'_>,
        settings: &Effective,
    ) -> Called {
        let now = chrono::Utc::now();
        let (timeout, cap) = (settings.request_timeout, settings.unavailable_cap);
        let upstream = match adapters::build(account, outgoing) {
            Ok(req) => req,
            // Not ready yet (e.g. a Code Assist project still being found):
            // the fix arrives in a snapshot, so no mark.
            Err(error) => return Called::Failed { error, mark: None },
        };
        let client = self.client_for(account);
        let started = Instant::now();
        let response = match tokio::time::timeout(timeout, client.request(upstream)).await {
            Err(_) => {
                return Called::Failed {
                    error: RelayError::timeout(),
                    mark: Some(failure::unreachable(
                        account.id,
                        "upstream_timeout",
                        now,
                        cap,
                    )),
                };
            }
            Ok(Err(e)) => {
                tracing::debug!(account_id = account.id, error = %e, "upstream connection failed");
                return Called::Failed {
                    error: RelayError::upstream("upstream connection failed"),
                    mark: Some(failure::unreachable(
                        account.id,
                        "upstream_unreachable",
                        now,
                        cap,
                    )),
                };
            }
            Ok(Ok(response)) => response,
        };
        if !failure::is_account_failure(response.status()) {
            return Called::Answered(response);
        }
        // Limits and refusals are often spelled out in the body: read it.
        let (mut head, body) = response.into_parts();
        let left = timeout.saturating_sub(started.elapsed());
        let raw = match tokio::time::timeout(left, Limited::new(body, MAX_FAILURE_BODY).collect())
            .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        };
        let encoding = head
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let body = match Decoder::detect(encoding, &raw) {
            Some(d) => {
                strip_response_headers(&mut head.headers, true);
                match d.decode_all(&raw, MAX_FAILURE_BODY) {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::warn!(request_id = outgoing.request_id, account_id = account.id, error = %e, "an account's refusal could not be decoded");
                        return Called::Failed {
                            error: RelayError::new(
                                http::StatusCode::BAD_GATEWAY,
                                e.class(),
                                "upstream error body could not be decoded",
                            ),
                            mark: None,
                        };
                    }
                }
            }
            None => {
                strip_response_headers(&mut head.headers, false);
                raw
            }
        };
        let verdict = failure::judge(account, head.status, &head.headers, &body, now, cap);
        Called::Refused {
            head,
            body,
            verdict,
        }
    }

    /// The answer of the account that took the request, streamed back
    /// through the usage tap.
    async fn respond(
        &self,
        exchange: Exchange<'_>,
        attempt: Attempt,
    ) -> Result<Response<RelayBody>, RelayError> {
        let Attempt {
            response,
            account,
            lease,
        } = attempt;
        let (endpoint, request_id, started) =
            (exchange.endpoint, exchange.request_id, exchange.started);
        let timeout = exchange.snapshot.settings.request_timeout;
        let fold = account.kind == AccountKind::OpenAiResponses
            && !exchange.stream
            && response.status().is_success();
        let (mut head, mut body) = response.into_parts();
        let mut meter = self.meter(exchange, account.id, head.status.as_u16());
        meter.upstream_request_id = crate::meter::upstream_request_id(&head.headers);
        meter.lease = Some(lease);
        // Wait for the first bytes: they tell whether the body is gzip
        // even when no header says so, and they time the first byte.
        let first = match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                meter.error_class = "upstream_timeout".into();
                meter.finish(&Observed::default(), true);
                return Err(RelayError::timeout());
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(request_id = %meter.request_id, account_id = account.id, error = %e, "upstream body failed before the first byte");
                meter.error_class = "upstream_stream_error".into();
                meter.finish(&Observed::default(), true);
                return Err(RelayError::upstream("upstream connection failed"));
            }
            Ok(Some(Ok(frame))) => frame.into_data().ok(),
            Ok(None) => None,
        };
        meter.ttfb = Some(started.elapsed());
        if fold {
            return fold_stream(head, first, body, meter, timeout, request_id).await;
        }
        let encoding = head
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let decoder = Decoder::detect(encoding, first.as_deref().unwrap_or_default());
        let content_type = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let tap = UsageTap::new(usage_format(endpoint), content_type);
        strip_response_headers(&mut head.headers, decoder.is_some());
        if tap.is_sse() {
            head.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            head.headers
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        head.headers.insert("x-request-id", request_id.clone());
        let unwrap =
            (account.kind == AccountKind::GeminiOauth).then(|| Unwrapper::new(tap.is_sse()));
        let pipeline = Pipeline::new(decoder, unwrap, tap);
        let body = TapBody::new(
            body,
            first,
            pipeline,
            meter,
            self.idle_timeout,
            self.cutting.clone(),
        );
        Ok(Response::from_parts(
            head,
            RelayBody::Tapped(Box::new(body)),
        ))
    }

    /// The last refusal, as the upstream sent it, recorded like any request.
    fn pass_through(
        &self,
        exchange: Exchange<'_>,
        mut head: http::response::Parts,
        body: Bytes,
        account_id: i64,
    ) -> Response<RelayBody> {
        let (endpoint, request_id, started) =
            (exchange.endpoint, exchange.request_id, exchange.started);
        let mut meter = self.meter(exchange, account_id, head.status.as_u16());
        meter.upstream_request_id = crate::meter::upstream_request_id(&head.headers);
        meter.ttfb = Some(started.elapsed());
        let mut tap = UsageTap::new(usage_format(endpoint), None);
        tap.feed(&body);
        tap.finish();
        meter.finish(tap.observed(), true);
        head.headers.insert("x-request-id", request_id.clone());
        Response::from_parts(head, RelayBody::full(body))
    }

    /// The request's meter, for the answer `account_id` gave with `status`.
    fn meter(&self, exchange: Exchange<'_>, account_id: i64, status: u16) -> Meter {
        let endpoint = exchange.endpoint;
        Meter {
            request_id: exchange.request_id.to_str().unwrap_or_default().to_string(),
            key_id: exchange.key.id,
            user_id: exchange.key.user_id,
            account_id,
            requested_model: exchange.model,
            platform: endpoint.platform(),
            endpoint: endpoint.name(),
            billed: endpoint.is_billed(),
            stream: exchange.stream,
            status,
            started: exchange.started,
            ttfb: None,
            snapshot: exchange.snapshot.clone(),
            price_rate: exchange.price_rate,
            sink: self.sink.clone(),
            lease: None,
            admitted: Some(exchange.admitted),
            error_class: String::new(),
            session_hash: exchange.session_hash,
            package_id: exchange.package_id,
            key: exchange.key,
            spending: self.spending.clone(),
            metrics: self.metrics.clone(),
            access_log: self.access_log,
            upstream_request_id: String::new(),
            span: tracing::Span::current(),
        }
    }

    /// The client for an account: direct, or through its proxy (one pooled
    /// client per proxy, made on first use).
    fn client_for(&self, account: &AccountEntry) -> HttpClient {
        let Some(proxy) = &account.proxy else {
            return self.client.clone();
        };
        let mut proxied = self.proxied.locked();
        proxied
            .entry(proxy.clone())
            .or_insert_with(|| aiproxy_shared::http::client_via(proxy, self.connect_timeout))
            .clone()
    }

    /// Marks the account, then tells the control plane, in the background.
    fn mark_then_report(
        &self,
        account: &Arc<AccountEntry>,
        mark: Option<Mark>,
        report: Option<Verdict>,
    ) {
        let scheduler = self.scheduler.clone();
        let account = account.clone();
        let control = self.control.clone();
        let node_id = self.node_id.clone();
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            if let Some(mark) = mark {
                scheduler.mark(&mark).await;
            }
            if let Some(verdict) = report {
                tell_control_plane(&tasks, control, node_id, &account, &verdict);
            }
        });
    }

    fn tell_control_plane(&self, account: &AccountEntry, verdict: &Verdict) {
        tell_control_plane(
            &self.tasks,
            self.control.clone(),
            self.node_id.clone(),
            account,
            verdict,
        );
    }
}

/// Tells the control plane what an account's refusal means: refresh its
/// token, persist its rate limit, flag a likely ban. Never delays the request.
fn tell_control_plane(
    tasks: &tokio_util::task::TaskTracker,
    control: crate::control::Client,
    node_id: String,
    account: &AccountEntry,
    verdict: &Verdict,
) {
    if verdict.refresh_token {
        report_refused_token(tasks, control.clone(), node_id.clone(), account);
    }
    if verdict.rate_limit_reset.is_none()
        && verdict.suspected_ban.is_none()
        && verdict.credential_failure.is_none()
    {
        return;
    }
    if let Some(reset) = verdict.rate_limit_reset {
        tracing::info!(account_id = account.id, reset_at = %reset.to_rfc3339(), "account rate-limited upstream");
    }
    let report = aiproxy_proto::v1::AccountStateReport {
        node_id,
        account_id: account.id,
        rate_limit_reset_at_ms: verdict.rate_limit_reset.map_or(0, |r| r.timestamp_millis()),
        suspected_ban: verdict.suspected_ban.clone().unwrap_or_default(),
        credential_failure: verdict.credential_failure.clone().unwrap_or_default(),
    };
    let mut control = control;
    tasks.spawn(async move {
        if let Err(e) = control.report_account_state(report).await {
            tracing::warn!(error = %e, "could not report an account's state to the control plane");
        }
    });
}

/// Tells the control plane which token was refused; it refreshes the
/// account unless that happened meanwhile.
fn report_refused_token(
    tasks: &tokio_util::task::TaskTracker,
    control: crate::control::Client,
    node_id: String,
    account: &AccountEntry,
) {
    let Some(token) = account
        .bearer
        .as_ref()
        .and_then(|b| b.to_str().ok())
        .and_then(|b| b.strip_prefix("Bearer "))
    else {
        return;
    };
    let request = aiproxy_proto::v1::RefreshAccountRequest {
        node_id,
        account_id: account.id,
        refused_token_sha256: Sha256::digest(token.as_bytes()).to_vec(),
    };
    let mut control = control;
    tasks.spawn(async move {
        if let Err(e) = control.refresh_account(request).await {
            tracing::warn!(error = %e, "could not ask the control plane for a token refresh");
        }
    });
}

fn usage_format(endpoint: &Endpoint) -> UsageFormat {
    match endpoint {
        Endpoint::AnthropicMessages | Endpoint::AnthropicCountTokens => UsageFormat::Anthropic,
        Endpoint::OpenAiChat => UsageFormat::OpenAiChat,
        Endpoint::OpenAiResponses => UsageFormat::OpenAiResponses,
        Endpoint::GeminiGenerate { .. } | Endpoint::GeminiCountTokens { .. } => UsageFormat::Gemini,
    }
}
