//! What stands between the upstream's bytes and the client's: compression to
//! undo, and Code Assist's `{"response": …}` wrapping to remove.

use aiproxy_shared::http::{json_bytes, write_json};
use bytes::Bytes;
use serde_json::Value;

/// Largest Code Assist JSON body (or SSE line) held to be unwrapped.
const MAX_UNWRAPPED: usize = 64 << 20;

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

    /// What can be sent on now; a partial SSE line or a JSON body waits
    /// (a JSON body up to `MAX_UNWRAPPED` bytes).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, DecodeError> {
        if self.pending.len() + chunk.len() > MAX_UNWRAPPED {
            return Err(DecodeError::TooLarge(MAX_UNWRAPPED));
        }
        self.pending.extend_from_slice(chunk);
        if !self.sse {
            return Ok(Bytes::new());
        }
        let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Ok(Bytes::new());
        };
        let complete: Vec<u8> = self.pending.drain(..=last).collect();
        let mut out = Vec::with_capacity(complete.len());
        for line in complete.split_inclusive(|&b| b == b'\n') {
            unwrap_line(line, &mut out);
        }
        Ok(Bytes::from(out))
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
            Ok(v) if v.get("response").is_some() => json_bytes(&v["response"]),
            _ => Bytes::from(rest),
        }
    }
}

fn unwrap_line(line: &[u8], out: &mut Vec<u8>) {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let ending = &line[body.len()..];
    if let Some(data) = body.strip_prefix(b"data:")
        && let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii())
        && v.get("response").is_some()
    {
        out.extend_from_slice(b"data: ");
        write_json(out, &v["response"]);
        out.extend_from_slice(ending);
        return;
    }
    out.extend_from_slice(line);
}

/// Most bytes one decoding step produces: a compressed chunk is inflated
/// piece by piece, so no ratio of compression can make one allocation huge.
pub const PIECE: usize = 64 << 10;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("compressed body is corrupt: {0}")]
    Corrupt(String),
    #[error("body inflates beyond {0} bytes")]
    TooLarge(usize),
}

impl DecodeError {
    /// The `error_class` a request is recorded with.
    pub fn class(&self) -> &'static str {
        match self {
            DecodeError::Corrupt(_) => "upstream_body_corrupt",
            DecodeError::TooLarge(_) => "upstream_body_too_large",
        }
    }
}

/// Streaming decompression of a body that arrived compressed (gzip, zlib
/// or raw deflate), in pieces of at most `PIECE` bytes.
pub struct Decoder {
    format: Format,
    inflate: flate2::Decompress,
    /// Compressed bytes not yet inflated.
    input: Vec<u8>,
    at: usize,
    state: State,
    /// Whole gzip members decoded: bytes after the last one that are not
    /// another member are ignored, as gzip tools do.
    members: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Gzip,
    /// `deflate`: zlib-wrapped, or raw as some servers send it.
    Deflate,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Reading a gzip member's header.
    Header,
    Body,
    /// Skipping a gzip member's 8-byte trailer.
    Trailer(usize),
    /// The deflate stream ended (zlib); anything after is ignored.
    Done,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("format", &self.format)
            .field("state", &self.state)
            .finish()
    }
}

/// Length of a complete gzip header at the start of `b`; `None` while
/// more bytes are needed.
fn gzip_header_len(b: &[u8]) -> Result<Option<usize>, DecodeError> {
    if b.len() < 10 {
        return Ok(None);
    }
    if b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 {
        return Err(DecodeError::Corrupt("not a gzip header".into()));
    }
    let flags = b[3];
    let mut at = 10;
    if flags & 0x04 != 0 {
        let Some(len) = b.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + u16::from_le_bytes([len[0], len[1]]) as usize;
    }
    for flag in [0x08, 0x10] {
        if flags & flag != 0 {
            match b.get(at..).and_then(|rest| memchr::memchr(0, rest)) {
                Some(nul) => at += nul + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 0x02 != 0 {
        at += 2;
    }
    Ok((at <= b.len()).then_some(at))
}

impl Decoder {
    /// From `content-encoding`, or from the gzip magic bytes when the header is missing.
    pub fn detect(content_encoding: Option<&str>, first_bytes: &[u8]) -> Option<Decoder> {
        let format = match content_encoding
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("gzip") | Some("x-gzip") => Format::Gzip,
            Some("deflate") => Format::Deflate,
            _ if first_bytes.starts_with(&[0x1f, 0x8b]) => Format::Gzip,
            _ => return None,
        };
        Some(Decoder {
            format,
            inflate: flate2::Decompress::new(format == Format::Deflate),
            input: Vec::new(),
            at: 0,
            state: if format == Format::Gzip {
                State::Header
            } else {
                State::Body
            },
            members: 0,
        })
    }

    /// Takes compressed bytes; `next_piece` inflates them.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.at == self.input.len() {
            self.input.clear();
            self.at = 0;
        }
        if self.format == Format::Deflate
            && self.state == State::Body
            && self.inflate.total_in() == 0
            && self.input.is_empty()
            && !chunk.is_empty()
            && !looks_like_zlib(chunk)
        {
            // `deflate` sent raw, as some servers do.
            self.inflate = flate2::Decompress::new(false);
        }
        self.input.extend_from_slice(chunk);
    }

    /// Inflates the next piece (at most `PIECE` bytes) from what was
    /// pushed; `None` once that is used up.
    pub fn next_piece(&mut self) -> Result<Option<Bytes>, DecodeError> {
        let mut out = Vec::with_capacity(PIECE);
        loop {
            let input = &self.input[self.at..];
            match self.state {
                State::Done => {
                    self.at = self.input.len();
                    break;
                }
                State::Header => {
                    if input.is_empty() {
                        break;
                    }
                    if self.members > 0 && !input.starts_with(&[0x1f]) {
                        self.state = State::Done;
                        continue;
                    }
                    match gzip_header_len(input)? {
                        Some(n) => {
                            self.at += n;
                            self.state = State::Body;
                        }
                        None => break,
                    }
                }
                State::Trailer(left) => {
                    let n = left.min(input.len());
                    self.at += n;
                    if n < left {
                        self.state = State::Trailer(left - n);
                        break;
                    }
                    // Another gzip member may follow.
                    self.members += 1;
                    self.state = State::Header;
                    self.inflate.reset(false);
                }
                State::Body => {
                    if out.len() == PIECE || (input.is_empty() && out.is_empty()) {
                        break;
                    }
                    let (before_in, before_out) = (self.inflate.total_in(), out.len());
                    let status = self
                        .inflate
                        .decompress_vec(input, &mut out, flate2::FlushDecompress::None)
                        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
                    self.at += (self.inflate.total_in() - before_in) as usize;
                    match status {
                        flate2::Status::StreamEnd => {
                            self.state = if self.format == Format::Gzip {
                                State::Trailer(8)
                            } else {
                                State::Done
                            };
                        }
                        _ if out.len() == before_out && self.inflate.total_in() == before_in => {
                            // Needs more input.
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }

    /// Whether every pushed byte has been inflated.
    #[cfg(test)]
    pub fn drained(&self) -> bool {
        self.at == self.input.len()
    }

    /// Decodes a whole body, refusing to produce more than `limit` bytes.
    pub fn decode_all(mut self, body: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
        self.push(body);
        let mut out = Vec::new();
        while let Some(piece) = self.next_piece()? {
            if out.len() + piece.len() > limit {
                return Err(DecodeError::TooLarge(limit));
            }
            out.extend_from_slice(&piece);
        }
        Ok(Bytes::from(out))
    }
}

/// A zlib header: method 8, window within range, header checksum right.
fn looks_like_zlib(b: &[u8]) -> bool {
    match b {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) * 256 + u16::from(*flg)) % 31 == 0
        }
        [cmf] => cmf & 0x0f == 8 && cmf >> 4 <= 7,
        [] => true,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const SAMPLE: &str = "event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn decode_in_chunks(mut decoder: Decoder, body: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in body.chunks(size) {
            decoder.push(chunk);
            while let Some(piece) = decoder.next_piece().unwrap() {
                assert!(piece.len() <= PIECE);
                out.extend_from_slice(&piece);
            }
        }
        assert!(decoder.drained());
        out
    }

    #[test]
    fn gzip_without_header_is_detected_and_decoded_in_pieces() {
        let gz = gzip(SAMPLE.as_bytes());
        for size in [1, 3, 10, gz.len()] {
            let decoder = Decoder::detect(None, &gz[..2]).expect("magic bytes detected");
            assert_eq!(decode_in_chunks(decoder, &gz, size), SAMPLE.as_bytes());
        }
        assert!(Decoder::detect(None, b"data").is_none());
        assert!(Decoder::detect(Some("gzip"), b"").is_some());
    }

    #[test]
    fn gzip_members_headers_zlib_and_raw_deflate_all_decode() {
        // Two members, the first with a name and a comment.
        let mut named = flate2::GzBuilder::new()
            .filename("a.txt")
            .comment("c")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::fast());
        named.write_all(b"first ").unwrap();
        let mut body = named.finish().unwrap();
        body.extend_from_slice(&gzip(b"second"));
        for size in [1, 5, body.len()] {
            let decoder = Decoder::detect(Some("gzip"), &[]).unwrap();
            assert_eq!(decode_in_chunks(decoder, &body, size), b"first second");
        }
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(SAMPLE.as_bytes()).unwrap();
        let zlib = zlib.finish().unwrap();
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(SAMPLE.as_bytes()).unwrap();
        let raw = raw.finish().unwrap();
        // Padding after the last member, as some servers send, is ignored.
        let mut padded = gzip(b"whole");
        padded.extend_from_slice(&[0, 0, 0, 0]);
        let decoder = Decoder::detect(Some("gzip"), &[]).unwrap();
        assert_eq!(decode_in_chunks(decoder, &padded, 3), b"whole");
        for body in [zlib, raw] {
            let decoder = Decoder::detect(Some("deflate"), &body).unwrap();
            assert_eq!(decode_in_chunks(decoder, &body, 7), SAMPLE.as_bytes());
        }
        let corrupt = Decoder::detect(Some("gzip"), &[]).unwrap();
        let err = corrupt.decode_all(
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xff\xff\xff",
            1 << 20,
        );
        assert_eq!(err.unwrap_err().class(), "upstream_body_corrupt");
    }

    #[test]
    fn a_decompression_bomb_inflates_in_bounded_pieces_and_buffers_are_capped() {
        // 64 MiB of zeros compress to about 64 KiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10);
        let mut decoder = Decoder::detect(Some("gzip"), &bomb).unwrap();
        decoder.push(&bomb);
        let mut total = 0;
        while let Some(piece) = decoder.next_piece().unwrap() {
            assert!(piece.len() <= PIECE, "one piece of {} bytes", piece.len());
            total += piece.len();
        }
        assert_eq!(total, 64 << 20);
        let capped = Decoder::detect(Some("gzip"), &bomb).unwrap();
        let err = capped.decode_all(&bomb, 1 << 20).unwrap_err();
        assert_eq!(err.class(), "upstream_body_too_large");
    }

    #[test]
    fn code_assist_wrapping_is_removed_in_any_chunking() {
        let wrapped = "data: {\"response\":{\"candidates\":[],\"modelVersion\":\"g\"},\"traceId\":\"t\"}\r\n\r\ndata: {\"response\":{\"usageMetadata\":{\"promptTokenCount\":3}}}\r\n\r\n";
        let plain = "data: {\"candidates\":[],\"modelVersion\":\"g\"}\r\n\r\ndata: {\"usageMetadata\":{\"promptTokenCount\":3}}\r\n\r\n";
        for size in [1, 7, wrapped.len()] {
            let mut u = Unwrapper::new(true);
            let mut out = Vec::new();
            for chunk in wrapped.as_bytes().chunks(size) {
                out.extend_from_slice(&u.feed(chunk).unwrap());
            }
            out.extend_from_slice(&u.finish());
            assert_eq!(String::from_utf8(out).unwrap(), plain, "chunk size {size}");
        }
        let mut u = Unwrapper::new(false);
        assert!(
            u.feed(br#"{"response":{"candidates":[1]}}"#)
                .unwrap()
                .is_empty()
        );
        assert_eq!(&u.finish()[..], br#"{"candidates":[1]}"#);
        let mut u = Unwrapper::new(false);
        u.feed(br#"{"error":{"code":429}}"#).unwrap();
        assert_eq!(&u.finish()[..], br#"{"error":{"code":429}}"#);
    }
}
