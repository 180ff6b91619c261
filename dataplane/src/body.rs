//! Response bodies: a buffered body for local answers, and the tapped
//! upstream body that forwards every chunk as it arrives.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::meter::Meter;
use crate::tap::{DecodeError, Decoder, Unwrapper, UsageTap};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any body the relay sends to a client.
pub enum RelayBody {
    Full(Option<Bytes>),
    Tapped(Box<TapBody>),
}

impl RelayBody {
    pub fn full(bytes: Bytes) -> Self {
        RelayBody::Full(Some(bytes))
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RelayBody::Full(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            RelayBody::Tapped(tap) => Pin::new(tap.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RelayBody::Full(bytes) => bytes.as_ref().is_none_or(|b| b.is_empty()),
            RelayBody::Tapped(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RelayBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RelayBody::Full(None) => SizeHint::with_exact(0),
            RelayBody::Tapped(_) => SizeHint::default(),
        }
    }
}

/// The upstream body, decoded if compressed, watched for usage, and
/// metered when it ends or when the client drops it.
pub struct TapBody {
    upstream: Incoming,
    /// Fires when the upstream may have been silent for `idle`; moved on
    /// only when it fires, so a chunk costs no timer work.
    quiet: Pin<Box<tokio::time::Sleep>>,
    /// When the upstream last sent something.
    heard: tokio::time::Instant,
    idle: Duration,
    /// The first chunk, read before the response head was sent.
    first: Option<Bytes>,
    pipeline: Pipeline,
    meter: Option<Meter>,
    done: bool,
    /// The upstream body ended; what the pipeline holds still goes out.
    upstream_ended: bool,
    /// Set when the node cuts responses at the end of its drain.
    cutting: Arc<AtomicBool>,
}

/// What upstream bytes go through on their way out: decompression (in
/// bounded pieces), Code Assist unwrapping where the account needs it, then
/// the usage tap. Raw bytes are pushed in; processed bytes are taken out a
/// piece at a time, so the upstream is read again only when nothing taken
/// in is left to process.
pub struct Pipeline {
    pub decoder: Option<Decoder>,
    pub unwrap: Option<Unwrapper>,
    pub tap: UsageTap,
    /// Raw bytes waiting, when there is no decoder.
    pub raw: Option<Bytes>,
}

impl Pipeline {
    pub fn new(decoder: Option<Decoder>, unwrap: Option<Unwrapper>, tap: UsageTap) -> Self {
        Pipeline {
            decoder,
            unwrap,
            tap,
            raw: None,
        }
    }

    /// Takes raw upstream bytes.
    fn push(&mut self, raw: Bytes) {
        match &mut self.decoder {
            Some(d) => d.push(&raw),
            None => self.raw = Some(raw),
        }
    }

    /// The next processed piece of what was pushed (possibly empty, when a
    /// stage holds it back); `None` once everything pushed is processed.
    fn next(&mut self) -> Result<Option<Bytes>, DecodeError> {
        let piece = match &mut self.decoder {
            Some(d) => d.next_piece()?,
            None => self.raw.take(),
        };
        piece.map(|bytes| self.after_decoding(bytes)).transpose()
    }

    fn after_decoding(&mut self, mut bytes: Bytes) -> Result<Bytes, DecodeError> {
        if let Some(u) = &mut self.unwrap {
            bytes = u.feed(&bytes)?;
        }
        self.tap.feed(&bytes);
        Ok(bytes)
    }

    /// Whatever the stages still hold at the end of the body (call once
    /// `next` has given `None`).
    fn finish(&mut self) -> Bytes {
        let tail = match &mut self.unwrap {
            Some(u) => u.finish(),
            None => Bytes::new(),
        };
        self.tap.feed(&tail);
        tail
    }
}

impl TapBody {
    pub fn new(
        upstream: Incoming,
        first: Option<Bytes>,
        pipeline: Pipeline,
        meter: Meter,
        idle: Duration,
        cutting: Arc<AtomicBool>,
    ) -> Self {
        Self {
            upstream,
            quiet: Box::pin(tokio::time::sleep(idle)),
            heard: tokio::time::Instant::now(),
            idle,
            first,
            pipeline,
            meter: Some(meter),
            done: false,
            upstream_ended: false,
            cutting,
        }
    }

    /// Whether the upstream has now been silent for `idle`; otherwise the
    /// timer is set to fire when it would have been.
    fn silent_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        while self.quiet.as_mut().poll(cx).is_ready() {
            let deadline = self.heard + self.idle;
            if deadline <= tokio::time::Instant::now() {
                return true;
            }
            self.quiet.as_mut().reset(deadline);
        }
        false
    }

    /// The body cannot go on (corrupt or oversized after decoding): the
    /// request is recorded with the error's class and the response cut.
    fn fail(&mut self, e: DecodeError) -> BoxError {
        self.done = true;
        if let Some(meter) = self.meter.as_mut() {
            meter.error_class = e.class().into();
        }
        let request_id = self.meter.as_ref().map(|m| m.request_id.clone());
        self.end(false);
        tracing::warn!(request_id = request_id.as_deref().unwrap_or_default(), error = %e, "upstream body cannot be relayed; response cut off");
        e.into()
    }

    fn end(&mut self, ended: bool) {
        if let Some(meter) = self.meter.take() {
            if ended {
                self.pipeline.tap.finish();
            } else {
                self.pipeline.tap.interrupt();
            }
            meter.finish(self.pipeline.tap.observed(), ended);
        }
    }
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.as_mut().get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            // Bytes already read go out first, a processed piece at a time:
            // the upstream is read again only when they are used up.
            if let Some(first) = this.first.take() {
                this.pipeline.push(first);
            }
            match this.pipeline.next() {
                Ok(Some(bytes)) if bytes.is_empty() => continue,
                Ok(Some(bytes)) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(this.fail(e)))),
            }
            if this.upstream_ended {
                this.done = true;
                let tail = this.pipeline.finish();
                this.end(true);
                return Poll::Ready(if tail.is_empty() {
                    None
                } else {
                    Some(Ok(Frame::data(tail)))
                });
            }
            let polled = Pin::new(&mut this.upstream).poll_frame(cx);
            if polled.is_pending() {
                if this.silent_too_long(cx) {
                    this.done = true;
                    if let Some(meter) = this.meter.as_mut() {
                        meter.error_class = "upstream_idle_timeout".into();
                    }
                    let request_id = this.meter.as_ref().map(|m| m.request_id.clone());
                    this.end(false);
                    tracing::warn!(
                        request_id = request_id.as_deref().unwrap_or_default(),
                        idle_secs = this.idle.as_secs(),
                        "upstream went quiet; response cut off"
                    );
                    return Poll::Ready(Some(Err("upstream went quiet".into())));
                }
                return Poll::Pending;
            }
            this.heard = tokio::time::Instant::now();
            match ready!(polled) {
                Some(Ok(frame)) => {
                    if let Ok(raw) = frame.into_data() {
                        this.pipeline.push(raw);
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    if let Some(meter) = this.meter.as_mut() {
                        meter.error_class = "upstream_stream_error".into();
                    }
                    this.end(false);
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => this.upstream_ended = true,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for TapBody {
    /// The client went away (or the node cut the response at shutdown):
    /// record what was used so far; dropping `upstream` cancels the upstream request.
    fn drop(&mut self) {
        if self.cutting.load(Ordering::Relaxed)
            && let Some(meter) = self.meter.as_mut()
            && meter.error_class.is_empty()
        {
            meter.error_class = "shutdown".into();
        }
        self.end(false);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::tap::UsageFormat;

    /// Everything pushed comes out, whatever a stage holds back: a gzip
    /// Code Assist body far larger than one decoded piece, in one chunk.
    #[test]
    fn a_compressed_wrapped_body_comes_out_whole_and_is_metered() {
        let text = "x".repeat(300 << 10);
        let wrapped = serde_json::json!({"response": {"candidates": [{"content": {"parts": [{"text": text}]}}],
            "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 7}, "modelVersion": "gemini-2.5-pro"}});
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(wrapped.to_string().as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let mut pipeline = Pipeline::new(
            Decoder::detect(Some("gzip"), &gz),
            Some(Unwrapper::new(false)),
            UsageTap::new(UsageFormat::Gemini, Some("application/json")),
        );
        pipeline.push(Bytes::from(gz));
        let mut out = Vec::new();
        while let Some(piece) = pipeline.next().unwrap() {
            out.extend_from_slice(&piece);
        }
        out.extend_from_slice(&pipeline.finish());
        pipeline.tap.finish();
        let body: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(body, wrapped["response"]);
        assert_eq!(pipeline.tap.observed().usage.input, 11);
        assert_eq!(pipeline.tap.observed().usage.output, 7);
    }
}
