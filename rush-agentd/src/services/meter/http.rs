#![allow(dead_code)]
//! Hand-written HTTP/1.1 wire reading and writing, kept for the tests: they speak raw bytes
//! to the meter (chunked requests, pipelined keep-alive) and play upstreams that misbehave.

//! Message heads, and bodies framed by Content-Length, chunked coding or the close.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Longest request or status line plus headers accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest piece a body reader hands out at once.
const PIECE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection before sending any byte of a message.
    #[error("connection closed")]
    Closed,
    #[error("malformed HTTP message: {0}")]
    Malformed(&'static str),
    #[error("message head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("body over {0} bytes")]
    BodyTooLarge(usize),
    #[error("connection failed")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every comma-separated element of every `name` field, trimmed.
    pub fn elements<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
    }

    /// Whether a list-valued field such as Connection holds `token`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.elements(name).any(|e| e.eq_ignore_ascii_case(token))
    }

    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((name.to_owned(), value.into()));
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        for (n, v) in &self.0 {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// The x of HTTP/1.x.
    pub minor: u8,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub minor: u8,
    pub headers: Headers,
}

impl RequestHead {
    /// Whether the client wants the connection closed after this exchange.
    pub fn wants_close(&self) -> bool {
        let c = &self.headers;
        c.has_token("connection", "close") || (self.minor == 0 && !c.has_token("connection", "keep-alive"))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.{}\r\n", self.method, self.target, self.minor).into_bytes();
        self.headers.write_to(&mut out);
        out.extend_from_slice(b"\r\n");
        out
    }
}

impl ResponseHead {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.{} {} {}\r\n", self.minor, self.status, self.reason).into_bytes();
        self.headers.write_to(&mut out);
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Reads the lines of a head up to the empty line. Empty lines before the first one are
/// skipped, as RFC 9112 §2.2 asks of servers.
async fn read_head_lines<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<String>, HttpError> {
    let mut lines = Vec::new();
    let mut budget = MAX_HEAD;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut *r).take(budget as u64 + 1).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Err(if lines.is_empty() {
                HttpError::Closed
            } else {
                HttpError::Malformed("truncated head")
            });
        }
        if n > budget {
            return Err(HttpError::HeadTooLarge);
        }
        budget -= n;
        if line.last() != Some(&b'\n') {
            return Err(HttpError::Malformed("truncated head"));
        }
        let text = std::str::from_utf8(&line).map_err(|_| HttpError::Malformed("head is not UTF-8"))?;
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return Ok(lines);
        }
        lines.push(text.to_owned());
    }
}

fn parse_headers(lines: &[String]) -> Result<Headers, HttpError> {
    let mut headers = Headers::default();
    for l in lines {
        if l.starts_with([' ', '\t']) {
            return Err(HttpError::Malformed("folded header line"));
        }
        let (name, value) = l.split_once(':').ok_or(HttpError::Malformed("header line without a colon"))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(HttpError::Malformed("bad header name"));
        }
        headers.push(name, value.trim());
    }
    Ok(headers)
}

fn parse_version(v: &str) -> Result<u8, HttpError> {
    match v {
        "HTTP/1.1" => Ok(1),
        "HTTP/1.0" => Ok(0),
        _ => Err(HttpError::Malformed("not HTTP/1.0 or HTTP/1.1")),
    }
}

pub async fn read_request_head<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<RequestHead, HttpError> {
    let lines = read_head_lines(r).await?;
    let mut parts = lines[0].split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("bad request line"));
    };
    if method.is_empty() || target.is_empty() {
        return Err(HttpError::Malformed("bad request line"));
    }
    Ok(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        minor: parse_version(version)?,
        headers: parse_headers(&lines[1..])?,
    })
}

pub async fn read_response_head<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<ResponseHead, HttpError> {
    let lines = read_head_lines(r).await?;
    let mut parts = lines[0].splitn(3, ' ');
    let (Some(version), Some(status)) = (parts.next(), parts.next()) else {
        return Err(HttpError::Malformed("bad status line"));
    };
    let status: u16 = match status.parse() {
        Ok(s) if (100..1000).contains(&s) && status.len() == 3 => s,
        _ => return Err(HttpError::Malformed("bad status code")),
    };
    Ok(ResponseHead {
        status,
        reason: parts.next().unwrap_or("").to_owned(),
        minor: parse_version(version)?,
        headers: parse_headers(&lines[1..])?,
    })
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

fn content_length(h: &Headers) -> Result<Option<u64>, HttpError> {
    let mut found = None;
    for e in h.elements("content-length") {
        let n: u64 = e.parse().map_err(|_| HttpError::Malformed("bad Content-Length"))?;
        if found.is_some_and(|f| f != n) {
            return Err(HttpError::Malformed("conflicting Content-Length"));
        }
        found = Some(n);
    }
    Ok(found)
}

fn chunked_last(h: &Headers) -> Option<bool> {
    h.elements("transfer-encoding").last().map(|e| e.eq_ignore_ascii_case("chunked"))
}

/// RFC 9112 §6.3 for requests: Transfer-Encoding wins over Content-Length, and a request
/// coding that does not end in chunked cannot be delimited.
pub fn request_framing(h: &RequestHead) -> Result<Framing, HttpError> {
    match chunked_last(&h.headers) {
        Some(true) => Ok(Framing::Chunked),
        Some(false) => Err(HttpError::Malformed("request Transfer-Encoding does not end in chunked")),
        None => Ok(content_length(&h.headers)?.map_or(Framing::None, Framing::Length)),
    }
}

/// RFC 9112 §6.3 for responses to `method`.
pub fn response_framing(method: &str, h: &ResponseHead) -> Result<Framing, HttpError> {
    if method.eq_ignore_ascii_case("HEAD") || h.status / 100 == 1 || h.status == 204 || h.status == 304 {
        return Ok(Framing::None);
    }
    match chunked_last(&h.headers) {
        Some(true) => Ok(Framing::Chunked),
        Some(false) => Ok(Framing::Close),
        None => Ok(content_length(&h.headers)?.map_or(Framing::Close, Framing::Length)),
    }
}

/// Hands out a body piece by piece as it arrives, so a stream is relayed without delay.
#[derive(Debug)]
pub struct BodyReader {
    framing: Framing,
    /// Bytes left: of the body (Length) or of the current chunk (Chunked).
    left: u64,
    /// Chunked: the current chunk's data is followed by CRLF still to read.
    in_chunk: bool,
    done: bool,
}

impl BodyReader {
    pub fn new(framing: Framing) -> BodyReader {
        let left = if let Framing::Length(n) = framing { n } else { 0 };
        let done = framing == Framing::None || framing == Framing::Length(0);
        BodyReader { framing, left, in_chunk: false, done }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next piece of the body, or None at its end.
    pub async fn next<R: AsyncBufRead + Unpin>(&mut self, r: &mut R) -> Result<Option<Vec<u8>>, HttpError> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::None => Ok(None),
            Framing::Length(_) => {
                let piece = take_available(r, self.left).await?;
                if piece.is_empty() {
                    return Err(HttpError::Malformed("body shorter than its Content-Length"));
                }
                self.left -= piece.len() as u64;
                self.done = self.left == 0;
                Ok(Some(piece))
            }
            Framing::Close => {
                let piece = take_available(r, u64::MAX).await?;
                if piece.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
                Ok(Some(piece))
            }
            Framing::Chunked => loop {
                if self.left > 0 {
                    let piece = take_available(r, self.left).await?;
                    if piece.is_empty() {
                        return Err(HttpError::Malformed("truncated chunk"));
                    }
                    self.left -= piece.len() as u64;
                    return Ok(Some(piece));
                }
                if self.in_chunk {
                    if !read_line(r).await?.is_empty() {
                        return Err(HttpError::Malformed("chunk data not followed by CRLF"));
                    }
                    self.in_chunk = false;
                }
                let line = read_line(r).await?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size =
                    u64::from_str_radix(size, 16).map_err(|_| HttpError::Malformed("bad chunk size"))?;
                if size == 0 {
                    // Trailer fields are read and dropped: nothing the meter needs is in them.
                    while !read_line(r).await?.is_empty() {}
                    self.done = true;
                    return Ok(None);
                }
                self.left = size;
                self.in_chunk = true;
            },
        }
    }
}

/// Up to `max` (and at most PIECE) bytes of what is buffered, waiting only when nothing
/// is; empty at end of stream.
async fn take_available<R: AsyncBufRead + Unpin>(r: &mut R, max: u64) -> Result<Vec<u8>, HttpError> {
    let buf = r.fill_buf().await?;
    let n = buf.len().min(PIECE).min(usize::try_from(max).unwrap_or(usize::MAX));
    let piece = buf[..n].to_vec();
    r.consume(n);
    Ok(piece)
}

async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<String, HttpError> {
    let mut line = Vec::new();
    (&mut *r).take(4096).read_until(b'\n', &mut line).await?;
    if line.last() != Some(&b'\n') {
        return Err(HttpError::Malformed("truncated chunked body"));
    }
    let text = String::from_utf8(line).map_err(|_| HttpError::Malformed("chunk line is not UTF-8"))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// A whole body, refused when over `cap`.
pub async fn read_body<R: AsyncBufRead + Unpin>(
    r: &mut R,
    framing: Framing,
    cap: usize,
) -> Result<Vec<u8>, HttpError> {
    if let Framing::Length(n) = framing
        && n > cap as u64
    {
        return Err(HttpError::BodyTooLarge(cap));
    }
    let mut body = Vec::new();
    let mut reader = BodyReader::new(framing);
    while let Some(piece) = reader.next(r).await? {
        if body.len() + piece.len() > cap {
            return Err(HttpError::BodyTooLarge(cap));
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

/// `data` as one chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(raw: &[u8], framing: Framing) -> Result<Vec<u8>, HttpError> {
        read_body(&mut &raw[..], framing, 1 << 20).await
    }

    #[tokio::test]
    async fn request_head_and_framing() {
        let raw = b"\r\nPOST /v1/x?a=b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\nrest";
        let mut r = &raw[..];
        let h = read_request_head(&mut r).await.unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str(), h.minor), ("POST", "/v1/x?a=b", 1));
        assert_eq!(h.headers.get("HOST"), Some("h"));
        assert_eq!(request_framing(&h).unwrap(), Framing::Chunked);
        assert_eq!(r, b"rest");
        assert!(!h.wants_close());
    }

    #[tokio::test]
    async fn malformed_heads_are_refused() {
        for raw in [
            &b"GET / HTTP/2\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n",
        ] {
            assert!(read_request_head(&mut &raw[..]).await.is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
        assert!(matches!(read_request_head(&mut &b""[..]).await, Err(HttpError::Closed)));
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(read_request_head(&mut huge.as_bytes()).await, Err(HttpError::HeadTooLarge)));
    }

    #[tokio::test]
    async fn conflicting_lengths_are_refused() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        let h = read_request_head(&mut &raw[..]).await.unwrap();
        assert!(request_framing(&h).is_err());
    }

    #[tokio::test]
    async fn response_framing_follows_rfc_9112() {
        async fn head(s: &str) -> ResponseHead {
            read_response_head(&mut s.as_bytes()).await.unwrap()
        }
        let ok_len = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
        assert_eq!(response_framing("POST", &ok_len).unwrap(), Framing::Length(5));
        assert_eq!(response_framing("HEAD", &ok_len).unwrap(), Framing::None);
        let close = head("HTTP/1.0 200 OK\r\n\r\n").await;
        assert_eq!(response_framing("GET", &close).unwrap(), Framing::Close);
        let no_content = head("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(response_framing("GET", &no_content).unwrap(), Framing::None);
        let chunked =
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n").await;
        assert_eq!(response_framing("GET", &chunked).unwrap(), Framing::Chunked);
        assert_eq!(chunked.reason, "OK");
    }

    #[tokio::test]
    async fn bodies_by_each_framing() {
        assert_eq!(body_of(b"hello world", Framing::Length(5)).await.unwrap(), b"hello");
        assert_eq!(body_of(b"hello", Framing::Close).await.unwrap(), b"hello");
        assert_eq!(body_of(b"", Framing::None).await.unwrap(), b"");
        let chunked = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(body_of(chunked, Framing::Chunked).await.unwrap(), b"hello 0123456789");
        assert!(body_of(b"5\r\nhel", Framing::Chunked).await.is_err());
        assert!(body_of(b"hel", Framing::Length(5)).await.is_err());
        assert!(matches!(body_of(b"x", Framing::Length(2 << 20)).await, Err(HttpError::BodyTooLarge(_))));
    }

    #[test]
    fn chunk_encoding() {
        assert_eq!(chunk(b"0123456789abcdef!"), b"11\r\n0123456789abcdef!\r\n");
    }
}
