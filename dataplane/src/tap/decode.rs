//! What stands between the upstream's bytes and the client's: compression to
//! undo, and Code Assist's `{"response": …}` wrapping to remove.
use std::io::Write;

use bytes::Bytes;
use serde_json::Value;

/// Turns Code Assist's `{"response": …}` wrapping back into the plain Gemini
/// shape clients expect: per complete SSE line, or for a whole JSON body.
#[derive(Debug)]
pub struct Unwrapper {
    sse: bool,
    pending: Vec<u8>,
}

impl Unwrapper {
    pub fn new(sse: bool) -> Self {
        Self {
            sse,
            pending: Vec::new(),
        }
    }

    /// What can be sent on now; a partial SSE line or a JSON body waits.
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        if !self.sse {
            return Bytes::new();
        }
        let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Bytes::new();
        };
        let complete: Vec<u8> = self.pending.drain(..=last).collect();
        let mut out = Vec::with_capacity(complete.len());
        for line in complete.split_inclusive(|&b| b == b'\n') {
            unwrap_line(line, &mut out);
        }
        Bytes::from(out)
    }

    /// The rest, at the end of the body.
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.pending);
        if self.sse {
            let mut out = Vec::with_capacity(rest.len());
            unwrap_line(&rest, &mut out);
            return Bytes::from(out);
        }
        match serde_json::from_slice::<Value>(&rest) {
            Ok(mut v) if v.get("response").is_some() => {
                Bytes::from(serde_json::to_vec(&v["response"].take()).expect("JSON serializes"))
            }
            _ => Bytes::from(rest),
        }
    }
}

fn unwrap_line(line: &[u8], out: &mut Vec<u8>) {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let ending = &line[body.len()..];
    if let Some(data) = body.strip_prefix(b"data:")
        && let Ok(mut v) = serde_json::from_slice::<Value>(data.trim_ascii())
        && v.get("response").is_some()
    {
        out.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut *out, &v["response"].take()).expect("JSON serializes");
        out.extend_from_slice(ending);
        return;
    }
    out.extend_from_slice(line);
}

/// Streaming decompression of a body that arrived compressed.
pub enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
}

impl Decoder {
    /// From `content-encoding`, or from the gzip magic bytes when the header is missing.
    pub fn detect(content_encoding: Option<&str>, first_bytes: &[u8]) -> Option<Decoder> {
        match content_encoding
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("gzip") | Some("x-gzip") => {
                Some(Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())))
            }
            Some("deflate") => Some(Decoder::Deflate(
                flate2::write::ZlibDecoder::new(Vec::new()),
            )),
            _ if first_bytes.starts_with(&[0x1f, 0x8b]) => {
                Some(Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())))
            }
            _ => None,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> std::io::Result<Bytes> {
        let out = match self {
            Decoder::Gzip(d) => {
                d.write_all(chunk)?;
                d.flush()?;
                std::mem::take(d.get_mut())
            }
            Decoder::Deflate(d) => {
                d.write_all(chunk)?;
                d.flush()?;
                std::mem::take(d.get_mut())
            }
        };
        Ok(Bytes::from(out))
    }

    pub fn finish(self) -> std::io::Result<Bytes> {
        let out = match self {
            Decoder::Gzip(d) => d.finish()?,
            Decoder::Deflate(d) => d.finish()?,
        };
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn gzip_without_header_is_detected_and_decoded_in_pieces() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(SAMPLE.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        let mut decoder = Decoder::detect(None, &gz[..2]).expect("magic bytes detected");
        let mut out = Vec::new();
        for chunk in gz.chunks(10) {
            out.extend_from_slice(&decoder.feed(chunk).unwrap());
        }
        out.extend_from_slice(&decoder.finish().unwrap());
        assert_eq!(out, SAMPLE.as_bytes());
        assert!(Decoder::detect(None, b"data").is_none());
        assert!(Decoder::detect(Some("gzip"), b"").is_some());
    }

    #[test]
    fn code_assist_wrapping_is_removed_in_any_chunking() {
        let wrapped = "data: {\"response\":{\"candidates\":[],\"modelVersion\":\"g\"},\"traceId\":\"t\"}\r\n\r\ndata: {\"response\":{\"usageMetadata\":{\"promptTokenCount\":3}}}\r\n\r\n";
        let plain = "data: {\"candidates\":[],\"modelVersion\":\"g\"}\r\n\r\ndata: {\"usageMetadata\":{\"promptTokenCount\":3}}\r\n\r\n";
        for size in [1, 7, wrapped.len()] {
            let mut u = Unwrapper::new(true);
            let mut out = Vec::new();
            for chunk in wrapped.as_bytes().chunks(size) {
                out.extend_from_slice(&u.feed(chunk));
            }
            out.extend_from_slice(&u.finish());
            assert_eq!(String::from_utf8(out).unwrap(), plain, "chunk size {size}");
        }
        let mut u = Unwrapper::new(false);
        assert!(u.feed(br#"{"response":{"candidates":[1]}}"#).is_empty());
        assert_eq!(&u.finish()[..], br#"{"candidates":[1]}"#);
        let mut u = Unwrapper::new(false);
        u.feed(br#"{"error":{"code":429}}"#);
        assert_eq!(&u.finish()[..], br#"{"error":{"code":429}}"#);
    }
}
