//! A tiny HTTP/1.1 client for tests of HTTP routes: one request per connection
//! (`Connection: close`), the answer read to the end and parsed.
//!
//! It sends the request target exactly as given, so tests control the percent-encoding.
//! It handles `Content-Length` and `chunked` bodies, which is all a test server sends.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// How long one request may take, connection to last byte, before the test fails.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The headers, names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body (decoded from `chunked` if need be), as text.
    pub body: String,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    ///
    /// If the body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {:?}", self.body))
    }
}

/// `GET target` without credentials.
pub async fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, None).await
}

/// `POST target` with an empty body, with `Authorization: Bearer <token>` when `token` is given.
pub async fn post(addr: SocketAddr, target: &str, token: Option<&str>) -> Response {
    let authorization = token.map(|token| format!("Bearer {token}"));
    request(addr, "POST", target, authorization.as_deref()).await
}

/// Sends `METHOD target HTTP/1.1` with an empty body and the given `Authorization` header
/// value, and reads the whole answer.
///
/// # Panics
///
/// If the server cannot be reached, takes longer than 10 s, or answers something that is
/// not HTTP/1.1.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    authorization: Option<&str>,
) -> Response {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(value) = authorization {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    let raw = tokio::time::timeout(TIMEOUT, exchange(addr, head.as_bytes()))
        .await
        .unwrap_or_else(|_| panic!("{method} {target}: no complete answer within {TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
    parse(&raw).unwrap_or_else(|| panic!("{method} {target}: not HTTP: {raw:?}"))
}

/// Writes `request` and reads until the server closes the connection. Uses the socket's
/// readiness API, so the crate needs no `io-util` feature of tokio.
async fn exchange(addr: SocketAddr, mut request: &[u8]) -> std::io::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr).await?;
    while !request.is_empty() {
        stream.writable().await?;
        match stream.try_write(request) {
            Ok(n) => request = &request[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    let mut raw = Vec::new();
    let mut buf = [0; 8192];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Status line, headers and body of a whole answer.
fn parse(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .map(|line| line.split_once(':'))
        .map(|pair| pair.map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned())))
        .collect::<Option<_>>()?;
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v == "chunked");
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Response { status, headers, body: String::from_utf8(body).ok()? })
}

/// Decodes a `chunked` body: `<hex size>\r\n<data>\r\n` ... `0\r\n\r\n`.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..line_end]).ok()?.split(';').next()?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        let data = raw.get(line_end + 2..line_end + 2 + size)?;
        body.extend_from_slice(data);
        raw = raw.get(line_end + 4 + size..)?;
    }
}
