//! A tiny HTTP/1.1 server for `netwatch serve`: GET only, one request per connection
//! (`Connection: close`), one task per connection on the caller's tokio runtime.
//!
//! It is built to stay out of the event stream's way: every read and write is asynchronous
//! and bounded in time ([`Limits::read_timeout`]) and size ([`Limits::max_header_bytes`]),
//! at most [`Limits::max_connections`] requests are served at once (more get `503` at once),
//! and the only work done for a request is the route's (encoding the metrics).
//!
//! Answers: the route's response for `GET` of a path it knows; `404` for a path it does not
//! know; `405` for any other method; `400` for a request line or header it cannot read; `408`
//! when the request head has not arrived within the read timeout; `431` when the request head
//! is larger than the limit; `503` past the connection limit.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    time::timeout,
};

/// What the server tolerates.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head (request line and headers, with the blank line) read.
    pub max_header_bytes: usize,
    /// Requests served at once; a connection past it gets `503 Service Unavailable`.
    pub max_connections: usize,
    /// Connections being turned away (503) at once; past it a connection gets its 503
    /// without waiting and is closed at once (a reset may follow it if the request came in).
    pub max_rejecting: usize,
    /// How long a client has to send its request head, and to take the response.
    pub read_timeout: Duration,
    /// How long, after answering, unread request bytes are drained before closing (closing
    /// with unread data would send a reset, which can destroy the response in flight).
    pub linger: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 8 * 1024,
            max_connections: 16,
            max_rejecting: 256,
            read_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
        }
    }
}

/// One response; always sent with `Content-Length` and `Connection: close`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
        }
    }

    /// A plain-text answer whose body is the reason phrase.
    pub fn plain(status: u16) -> Self {
        Self::new(
            status,
            "text/plain; charset=utf-8",
            format!("{}\n", reason(status).to_lowercase()),
        )
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        match self.status {
            405 => head.push_str("Allow: GET\r\n"),
            503 => head.push_str("Retry-After: 1\r\n"),
            _ => {}
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A request line that was read whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
}

/// What a buffer holding the start of a request amounts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse<'a> {
    /// The head has not ended yet: read more.
    Incomplete,
    /// The head is (or would be) longer than the limit.
    TooLarge,
    /// Not HTTP/1.x as this server reads it.
    Bad(&'static str),
    Request(Request<'a>),
}

/// The end of the request head in `buf`: the index just past its blank line.
fn head_end(buf: &[u8]) -> Option<usize> {
    // CRLF CRLF by the book; bare LF LF tolerated (RFC 9112 section 2.2).
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads the request head at the start of `buf` (at most `max` bytes of it).
pub fn parse(buf: &[u8], max: usize) -> Parse<'_> {
    let end = match head_end(&buf[..buf.len().min(max)]) {
        Some(end) => end,
        None if buf.len() >= max => return Parse::TooLarge,
        None => return Parse::Incomplete,
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parse::Bad("request head is not UTF-8");
    };
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Bad("request line is not METHOD TARGET VERSION");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Parse::Bad("bad method");
    }
    if !version.starts_with("HTTP/1.") {
        return Parse::Bad("not HTTP/1.x");
    }
    // origin-form (`/metrics?x=1`) or absolute-form (`http://host:port/metrics`).
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None if target.starts_with('/') => target,
        None => return Parse::Bad("request target is not a path"),
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    for header in lines.take_while(|l| !l.is_empty()) {
        match header.split_once(':') {
            Some((name, _)) if !name.is_empty() && !name.contains([' ', '\t']) => {}
            _ => return Parse::Bad("malformed header line"),
        }
    }
    Parse::Request(Request { method, path })
}

/// Answers a request: the route's response for a GET it knows, 404 or 405 otherwise.
pub fn respond(req: &Request<'_>, route: &dyn Fn(&str) -> Option<Response>) -> Response {
    if req.method != "GET" {
        return Response::plain(405);
    }
    route(req.path).unwrap_or_else(|| Response::plain(404))
}

/// The routes: GET of a path to its response, `None` for a path not served.
pub type Route = Arc<dyn Fn(&str) -> Option<Response> + Send + Sync>;

/// Counts a live connection of one kind while it exists.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot if fewer than `max` are taken.
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(count)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections until the task is aborted; never returns.
pub async fn serve(listener: TcpListener, route: Route, limits: Limits) {
    serve_counted(listener, route, limits, Arc::default()).await;
}

/// [`serve`], with `active` counting the connections being served (the tests watch it).
async fn serve_counted(
    listener: TcpListener,
    route: Route,
    limits: Limits,
    active: Arc<AtomicUsize>,
) {
    let rejecting = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection aborted before accept: neither
                // stops the server; a pause keeps a persistent error from spinning.
                log::warn!("metrics server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Some(slot) = Slot::take(&active, limits.max_connections) {
            let route = Arc::clone(&route);
            tokio::spawn(async move {
                handle(stream, route, limits).await;
                drop(slot);
            });
        } else if let Some(slot) = Slot::take(&rejecting, limits.max_rejecting) {
            tokio::spawn(async move {
                let _ = timeout(
                    limits.read_timeout,
                    finish(stream, &Response::plain(503), limits),
                )
                .await;
                drop(slot);
            });
        } else {
            // Too many even to turn away politely: the 503 goes into the fresh socket's empty
            // send buffer without waiting, and the close follows at once.
            log::debug!("metrics server: too many connections: one turned away at once");
            let _ = stream.try_write(&Response::plain(503).to_bytes());
        }
    }
}

/// Reads one request head, answers it, closes.
async fn handle(mut stream: TcpStream, route: Route, limits: Limits) {
    let mut buf = Vec::with_capacity(1024);
    let read = timeout(limits.read_timeout, async {
        let mut chunk = [0u8; 2048];
        loop {
            match parse(&buf, limits.max_header_bytes) {
                Parse::Incomplete => {}
                Parse::TooLarge => return Some(Response::plain(431)),
                Parse::Bad(why) => {
                    log::debug!("metrics server: bad request: {why}");
                    return Some(Response::plain(400));
                }
                Parse::Request(req) => return Some(respond(&req, &*route)),
            }
            match stream.read(&mut chunk).await {
                Ok(0) => return None, // the client left before asking
                Err(e) => {
                    log::debug!("metrics server: reading a request: {e}");
                    return None;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let response = match read {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(_elapsed) => Response::plain(408),
    };
    let _ = timeout(limits.read_timeout, finish(stream, &response, limits)).await;
}

/// Writes the response, ends our side, and reads what the client still sends (a bounded
/// while) so that closing does not turn into a reset.
async fn finish(mut stream: TcpStream, response: &Response, limits: Limits) {
    if stream.write_all(&response.to_bytes()).await.is_err() {
        return;
    }
    if stream.shutdown().await.is_err() {
        return;
    }
    let _ = timeout(limits.linger, async {
        let mut scratch = [0u8; 4096];
        let mut left: usize = 256 * 1024;
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    const MAX: usize = 8192;

    fn request(head: &str) -> Parse<'_> {
        parse(head.as_bytes(), MAX)
    }

    #[test]
    fn parses_a_request_line_and_headers() {
        assert_eq!(
            request("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"),
            Parse::Request(Request {
                method: "GET",
                path: "/metrics"
            })
        );
        // Query strings are not part of the path; bare LF line ends are read too.
        assert_eq!(
            request("GET /healthz?verbose=1 HTTP/1.0\n\n"),
            Parse::Request(Request {
                method: "GET",
                path: "/healthz"
            })
        );
        assert_eq!(
            request("GET http://node1:9750/metrics HTTP/1.1\r\n\r\n"),
            Parse::Request(Request {
                method: "GET",
                path: "/metrics"
            })
        );
        assert_eq!(
            request("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            Parse::Request(Request {
                method: "POST",
                path: "/metrics"
            })
        );
    }

    #[test]
    fn waits_for_the_end_of_the_head() {
        assert_eq!(request(""), Parse::Incomplete);
        assert_eq!(request("GET /metrics HTTP/1.1\r\n"), Parse::Incomplete);
        assert_eq!(
            request("GET /metrics HTTP/1.1\r\nHost: x\r\n\r"),
            Parse::Incomplete
        );
    }

    #[test]
    fn rejects_what_is_not_http() {
        for bad in [
            "GET\r\n\r\n",
            "GET /metrics\r\n\r\n",
            "GET /metrics HTTP/1.1 extra\r\n\r\n",
            "get /metrics HTTP/1.1\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "GET /metrics SPDY/3\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nbad name: x\r\n\r\n",
        ] {
            assert!(matches!(request(bad), Parse::Bad(_)), "{bad:?}");
        }
        assert!(matches!(
            parse(b"GET /\xff HTTP/1.1\r\n\r\n", MAX),
            Parse::Bad(_)
        ));
    }

    #[test]
    fn a_head_over_the_limit_is_too_large() {
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX));
        assert_eq!(request(&big), Parse::TooLarge);
        // Even before its end has arrived.
        assert_eq!(request(&big[..MAX + 10]), Parse::TooLarge);
        // A head of exactly the limit is fine.
        let line = "GET / HTTP/1.1\r\nX: ";
        let exact = format!("{line}{}\r\n\r\n", "a".repeat(MAX - line.len() - 4));
        assert_eq!(exact.len(), MAX);
        assert!(matches!(request(&exact), Parse::Request(_)));
    }

    #[test]
    fn routes_get_only() {
        let route = |p: &str| (p == "/healthz").then(|| Response::new(200, "text/plain", "ok\n"));
        let req = |method, path| Request { method, path };
        assert_eq!(respond(&req("GET", "/healthz"), &route).status, 200);
        assert_eq!(respond(&req("GET", "/nope"), &route).status, 404);
        assert_eq!(respond(&req("POST", "/healthz"), &route).status, 405);
        assert_eq!(respond(&req("HEAD", "/healthz"), &route).status, 405);
    }

    #[test]
    fn responses_have_length_and_close() {
        let text = String::from_utf8(Response::plain(405).to_bytes()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Length: 19\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.contains("\r\nAllow: GET\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nmethod not allowed\n"), "{text}");
    }

    /// Runs the server on a loopback port in a thread; returns its address and its count of
    /// connections being served.
    fn start(limits: Limits) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let active = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&active);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let route: Route = Arc::new(|p: &str| {
                    (p == "/healthz").then(|| Response::new(200, "text/plain", "ok\n"))
                });
                serve_counted(listener, route, limits, counted).await;
            });
        });
        (addr, active)
    }

    /// Waits (polling, at most 10 s) until `active` connections are being served.
    fn wait_active(active: &AtomicUsize, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while active.load(Ordering::Acquire) != n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} connections served after 10 s, not {n}",
                active.load(Ordering::Acquire)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `request`, returns what came back before EOF (or a reset).
    fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut chunk) {
            out.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn serves_over_tcp() {
        let (addr, active) = start(Limits {
            read_timeout: Duration::from_millis(300),
            max_connections: 2,
            ..Limits::default()
        });
        let ok = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nok\n"),
            "{ok}"
        );
        assert!(exchange(addr, b"GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(
            exchange(
                addr,
                b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
            )
            .starts_with("HTTP/1.1 405 ")
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert!(exchange(addr, big.as_bytes()).starts_with("HTTP/1.1 431 "));
        // A client that never sends its request is answered after the read timeout.
        let t = std::time::Instant::now();
        assert!(exchange(addr, b"GET /healthz HTTP/1.1\r\n").starts_with("HTTP/1.1 408 "));
        assert!(t.elapsed() >= Duration::from_millis(300));
        // Two silent clients take both slots (once the last exchange has let go of its
        // own): the third is turned away.
        wait_active(&active, 0);
        let idle: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        wait_active(&active, 2);
        let busy = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(busy.starts_with("HTTP/1.1 503 "), "{busy}");
        drop(idle);
    }

    #[test]
    fn past_every_limit_a_client_still_gets_503() {
        let (addr, _) = start(Limits {
            max_connections: 0,
            max_rejecting: 0,
            ..Limits::default()
        });
        for _ in 0..3 {
            let busy = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
            assert!(busy.starts_with("HTTP/1.1 503 "), "{busy}");
            assert!(busy.contains("\r\nRetry-After: 1\r\n"), "{busy}");
        }
    }
}
