//! The HTTP server of `netwatch serve`, on hyper: GET only, one request per connection
//! (`Connection: close`), one task per connection on the caller's tokio runtime, over TLS and
//! behind basic authentication when the web config asks ([`WebConfig`]), as its file says
//! when the connection comes ([`WebConfigFile`]).
//!
//! It is built to stay out of the event stream's way: every read and write is asynchronous
//! and bounded in time ([`Limits::read_timeout`]) and size ([`Limits::max_header_bytes`]),
//! at most [`Limits::max_connections`] requests are served at once (more get `503` at once),
//! and the only work done for a request is the route's (encoding the metrics) and checking
//! the password (bcrypt, on the blocking pool).
//!
//! Answers: the route's response for `GET` of a path it knows; `404` for a path it does not
//! know; `405` for any other method; `401` without the right user and password (except
//! `/healthz`, which tells nothing but whether tracing runs); `400` for a request hyper cannot
//! read; `408` when the request head has not arrived within the read timeout; `431` when the
//! request head is larger than the limit; `503` past the connection limit.
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    time::timeout,
};

use crate::commands::web_config::{WebConfig, WebConfigFile};

/// What the server tolerates.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head (request line and headers, with the blank line) read; at least
    /// 8 KiB (hyper's smallest buffer).
    pub max_header_bytes: usize,
    /// Requests served at once; a connection past it gets `503 Service Unavailable`.
    pub max_connections: usize,
    /// Connections being turned away (503) at once; past it a connection gets its 503
    /// without waiting and is closed at once (a reset may follow it if the request came in).
    pub max_rejecting: usize,
    /// How long a client has to finish the TLS handshake, to send its request head, and to
    /// take the response.
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

/// One response of a route.
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
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("unknown");
        Self::new(
            status,
            "text/plain; charset=utf-8",
            format!("{}\n", reason.to_lowercase()),
        )
    }

    /// The answer as hyper sends it, with the headers its status calls for.
    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *r.status_mut() = status;
        let headers = r.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        match self.status {
            401 => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"netwatch\""),
                );
            }
            405 => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            503 => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }

    /// The bytes on the wire, for the answers sent without hyper: a 503 to a connection past
    /// the limit, a 408 to a request head that did not arrive in time.
    fn to_bytes(&self) -> Vec<u8> {
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown");
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 503 {
            head.push_str("Retry-After: 1\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// The routes: GET of a path to its response, `None` for a path not served.
pub type Route = Arc<dyn Fn(&str) -> Option<Response> + Send + Sync>;

/// The paths answered without a user and password.
const OPEN_PATHS: &[&str] = &["/healthz"];

/// Answers one request: 401, 405, the route's answer or 404.
async fn answer(
    req: hyper::Request<Incoming>,
    route: &Route,
    web: &WebConfig,
) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path();
    if !OPEN_PATHS.contains(&path)
        && !web
            .authorized(
                req.headers()
                    .get(header::AUTHORIZATION)
                    .map(HeaderValue::as_bytes),
            )
            .await
    {
        return Response::plain(401).into_hyper();
    }
    if req.method() != hyper::Method::GET {
        return Response::plain(405).into_hyper();
    }
    route(path)
        .unwrap_or_else(|| Response::plain(404))
        .into_hyper()
}

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

/// A connection, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The connection as the web config wants it: the TCP stream itself, or TLS over it once the
/// handshake is done (`None` if it fails: plain HTTP to a TLS port ends here).
async fn open(stream: TcpStream, web: &WebConfig) -> Option<Box<dyn Stream>> {
    match &web.tls {
        None => Some(Box::new(stream)),
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => Some(Box::new(tls)),
            Err(e) => {
                log::debug!("metrics server: TLS handshake: {e}");
                None
            }
        },
    }
}

/// Accepts connections until the task is aborted; never returns.
pub async fn serve(listener: TcpListener, route: Route, limits: Limits, web: WebConfigFile) {
    serve_counted(listener, route, limits, web, Arc::default()).await;
}

/// [`serve`], with `active` counting the connections being served (the tests watch it).
async fn serve_counted(
    listener: TcpListener,
    route: Route,
    limits: Limits,
    web: WebConfigFile,
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
            let (route, web) = (Arc::clone(&route), web.clone());
            tokio::spawn(async move {
                // The config as its file says now (a broken file: closed unanswered).
                if let Some(web) = web.current().await
                    && let Ok(Some(stream)) = timeout(limits.read_timeout, open(stream, &web)).await
                {
                    handle(stream, route, web, limits).await;
                }
                drop(slot);
            });
        } else if let Some(slot) = Slot::take(&rejecting, limits.max_rejecting) {
            let web = web.clone();
            tokio::spawn(async move {
                let _ = timeout(limits.read_timeout, async {
                    if let Some(web) = web.current().await
                        && let Some(stream) = open(stream, &web).await
                    {
                        finish(stream, Some(&Response::plain(503)), limits).await;
                    }
                })
                .await;
                drop(slot);
            });
        } else if web.last_read().is_some_and(|w| w.tls.is_none()) {
            // Too many even to turn away politely: the 503 goes into the fresh socket's empty
            // send buffer without waiting, and the close follows at once.
            log::debug!("metrics server: too many connections: one turned away at once");
            let _ = stream.try_write(&Response::plain(503).to_bytes());
        } else {
            log::debug!("metrics server: too many connections: one closed at once");
        }
    }
}

/// Serves one request with hyper, then closes; a request head that has not arrived within
/// the read timeout gets a 408.
async fn handle(mut stream: Box<dyn Stream>, route: Route, web: WebConfig, limits: Limits) {
    let asked = Arc::new(AtomicBool::new(false));
    let served = {
        let asked = Arc::clone(&asked);
        let service = service_fn(move |req| {
            asked.store(true, Ordering::Release);
            let (route, web) = (Arc::clone(&route), web.clone());
            async move { Ok::<_, Infallible>(answer(req, &route, &web).await) }
        });
        let conn = http1::Builder::new()
            .keep_alive(false)
            .title_case_headers(true)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(&mut stream), service);
        timeout(limits.read_timeout, conn).await
    };
    match served {
        Ok(Ok(())) => finish(stream, None, limits).await,
        Ok(Err(e)) => {
            log::debug!("metrics server: {e}");
            finish(stream, None, limits).await;
        }
        Err(_elapsed) if !asked.load(Ordering::Acquire) => {
            let _ = timeout(
                limits.read_timeout,
                finish(stream, Some(&Response::plain(408)), limits),
            )
            .await;
        }
        Err(_elapsed) => log::debug!("metrics server: a client took too long to take its answer"),
    }
}

/// Writes `response` (when there is one), ends our side, and reads what the client still
/// sends (a bounded while) so that closing does not turn into a reset.
async fn finish(mut stream: Box<dyn Stream>, response: Option<&Response>, limits: Limits) {
    if let Some(r) = response
        && stream.write_all(&r.to_bytes()).await.is_err()
    {
        return;
    }
    // hyper may have ended our side already.
    let _ = stream.shutdown().await;
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

    /// Runs the server on a loopback port in a thread; returns its address and its count of
    /// connections being served.
    fn start(limits: Limits) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        start_with(limits, WebConfigFile::fixed(WebConfig::default()))
    }

    /// [`start`] with a web config.
    fn start_with(limits: Limits, web: WebConfigFile) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
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
                let route: Route = Arc::new(|p: &str| match p {
                    "/healthz" => Some(Response::new(200, "text/plain", "ok\n")),
                    "/metrics" => Some(Response::new(200, "text/plain", "metrics\n")),
                    _ => None,
                });
                serve_counted(listener, route, limits, web, counted).await;
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
        String::from_utf8_lossy(&out).into_owned()
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

    /// The test certificates the root tests of `serve` use too.
    mod certs {
        include!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/tests/support/certs.rs"
        ));
    }

    /// [`certs::certificates`] in `dir`, with the CA certificate's PEM text: (CA certificate,
    /// server certificate file, server key file).
    fn certificates(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
        let (ca, cert, key) = certs::certificates(dir);
        (std::fs::read_to_string(ca).unwrap(), cert, key)
    }

    /// A TLS client that trusts only `ca_pem` and shows the client certificate of `dir` (see
    /// [`certificates`]).
    fn tls_client_with_cert(ca_pem: &str, dir: &std::path::Path) -> tokio_rustls::TlsConnector {
        use tokio_rustls::rustls::{
            self, RootCertStore,
            pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let certs = CertificateDer::pem_file_iter(dir.join("client.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A TLS client that trusts only `ca_pem`.
    fn tls_client(ca_pem: &str) -> tokio_rustls::TlsConnector {
        use tokio_rustls::rustls::{
            self, RootCertStore,
            pki_types::{CertificateDer, pem::PemObject as _},
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// Sends `request` over TLS (checking the server's certificate for `127.0.0.1`), returns
    /// the answer, or the handshake's error.
    async fn tls_exchange(
        addr: std::net::SocketAddr,
        connector: &tokio_rustls::TlsConnector,
        request: &str,
    ) -> std::io::Result<String> {
        let tcp = TcpStream::connect(addr).await?;
        let name = tokio_rustls::rustls::pki_types::ServerName::from(addr.ip());
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test]
    async fn serves_over_tls_with_basic_auth() {
        use base64::Engine as _;
        let dir = std::env::temp_dir().join(format!("netwatch-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, cert_file, key_file) = certificates(&dir);
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let config = dir.join("web.yml");
        std::fs::write(
            &config,
            format!(
                "tls_server_config:\n  cert_file: server.pem\n  key_file: {}\nbasic_auth_users:\n  prometheus: '{hash}'\n",
                key_file.display()
            ),
        )
        .unwrap();
        assert!(cert_file.exists());
        let web = WebConfigFile::open(&config).unwrap();
        let (addr, _) = start_with(Limits::default(), web);
        let client = tls_client(&ca);
        let get = |path: &str, user: &str, password: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {}\r\n\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        };

        // The right password, over a certificate the client checked.
        let ok = tls_exchange(addr, &client, &get("/metrics", "prometheus", "s3cret"))
            .await
            .unwrap();
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nmetrics\n"),
            "{ok}"
        );
        // A wrong password, an unknown user, no credentials: 401 with a challenge.
        for request in [
            get("/metrics", "prometheus", "wrong"),
            get("/metrics", "nobody", "s3cret"),
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
        ] {
            let denied = tls_exchange(addr, &client, &request).await.unwrap();
            assert!(
                denied.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
                "{denied}"
            );
            assert!(
                denied.contains("\r\nWww-Authenticate: Basic realm=\"netwatch\"\r\n"),
                "{denied}"
            );
            assert!(!denied.contains("metrics\n"), "{denied}");
        }
        // /healthz is open.
        let health = tls_exchange(addr, &client, "GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        // Plain HTTP to the TLS port gets no HTTP answer.
        let plain = tokio::task::spawn_blocking(move || {
            exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        })
        .await
        .unwrap_or_default();
        assert!(!plain.starts_with("HTTP/"), "{plain:?}");
        // A client that trusts another CA refuses the server.
        let (other_ca, _, _) = certificates(&dir.join("other"));
        let stranger = tls_client(&other_ca);
        let err = tls_exchange(addr, &stranger, &get("/metrics", "prometheus", "s3cret"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Whether the server answered `request` with `status` over this client's TLS; a refused
    /// handshake (or a connection closed unanswered) is no answer.
    async fn answers(
        addr: std::net::SocketAddr,
        client: &tokio_rustls::TlsConnector,
        request: &str,
    ) -> Option<u16> {
        let answer = tls_exchange(addr, client, request).await.ok()?;
        answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    #[tokio::test]
    async fn client_certificates_are_verified_and_a_changed_file_applies_to_the_next_connection() {
        use base64::Engine as _;
        let dir = std::env::temp_dir().join(format!("netwatch-mtls-{}", std::process::id()));
        let (ca, _, _) = certificates(&dir);
        let (other_ca, _, _) = certificates(&dir.join("other"));
        let config = dir.join("web.yml");
        let write = |client_auth: &str, password: &str| {
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(
                &config,
                format!(
                    "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n{client_auth}basic_auth_users:\n  prometheus: '{hash}'\n"
                ),
            )
            .unwrap();
        };
        let required = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n";
        write(required, "old");
        let (addr, _) = start_with(Limits::default(), WebConfigFile::open(&config).unwrap());
        let get = |password: &str| {
            format!(
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {}\r\n\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("prometheus:{password}"))
            )
        };
        let with_cert = tls_client_with_cert(&ca, &dir);
        let without_cert = tls_client(&ca);
        // The other CA's client certificate is not one the server's CA signed.
        let stranger = tls_client_with_cert(&ca, &dir.join("other"));
        assert_eq!(answers(addr, &with_cert, &get("old")).await, Some(200));
        assert_eq!(answers(addr, &without_cert, &get("old")).await, None);
        assert_eq!(answers(addr, &stranger, &get("old")).await, None);
        drop(other_ca);

        // A new password applies to the next request; the old one is refused.
        write(required, "new");
        assert_eq!(answers(addr, &with_cert, &get("old")).await, Some(401));
        assert_eq!(answers(addr, &with_cert, &get("new")).await, Some(200));

        // Certificates only if given: none is fine, a stranger's is not.
        write(
            "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.pem\n",
            "new",
        );
        assert_eq!(answers(addr, &without_cert, &get("new")).await, Some(200));
        assert_eq!(answers(addr, &stranger, &get("new")).await, None);
        // Any certificate, required but not verified: the stranger's will do, none will not.
        write("  client_auth_type: RequireAnyClientCert\n", "new");
        assert_eq!(answers(addr, &stranger, &get("new")).await, Some(200));
        assert_eq!(answers(addr, &without_cert, &get("new")).await, None);

        // A broken file closes connections until it is fixed (never the old config).
        std::fs::write(&config, "tls_server_config: [").unwrap();
        assert_eq!(answers(addr, &with_cert, &get("new")).await, None);
        write("", "fixed");
        assert_eq!(answers(addr, &without_cert, &get("fixed")).await, Some(200));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn client_auth_settings_are_refused_by_name_when_wrong() {
        let dir = std::env::temp_dir().join(format!("netwatch-mtls-bad-{}", std::process::id()));
        certificates(&dir);
        let tls = |extra: &str| {
            let text = format!(
                "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n{extra}"
            );
            WebConfig::parse(&text, &dir)
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        };
        assert_eq!(tls(""), Ok(()));
        let unknown = tls("  client_auth_type: RequireClientCert\n").unwrap_err();
        assert!(
            unknown.contains("RequireClientCert") && unknown.contains("RequireAndVerifyClientCert"),
            "{unknown}"
        );
        let no_ca = tls("  client_auth_type: RequireAndVerifyClientCert\n").unwrap_err();
        assert!(no_ca.contains("client_ca_file"), "{no_ca}");
        let no_mode = tls("  client_ca_file: ca.pem\n").unwrap_err();
        assert!(no_mode.contains("NoClientCert"), "{no_mode}");
        let missing =
            tls("  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: none.pem\n")
                .unwrap_err();
        assert!(missing.contains("none.pem"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
