//! tcpdrive: a small, predictable TCP traffic driver for netwatch's end-to-end tests.
//!
//! Blocking std sockets, one behaviour per subcommand, one result line on stdout, errors on
//! stderr with errno names. Every wait is bounded (`--timeout-ms`), so a test never hangs on it.
//!
//! Wire protocol: the client sends a request of `--request` bytes (default `ping\n`) and the
//! server answers with `--reply` bytes (default `pong\n`). Both are a repeated 4-letter word
//! with the LAST byte `\n` and no other newline, so each side reads until `\n` (or EOF). The
//! reply of `serve-close-first` starts with `b` (`bye!\n`) instead of `p`: it tells the client
//! that the server closes first, so the client reads to EOF before closing itself, which makes
//! the closing order deterministic.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::exit;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netwatch_tests::{errno_name, monotonic_ns};

const USAGE: &str = "\
usage:
  tcpdrive serve <addr:port> [--count N] [--reply BYTES] [--hold-ms MS] [--backlog N] [--timeout-ms MS]
      print READY <pid>; for each of N (1) connections: accept, read the request, write the
      reply, read until the client closes, sleep hold-ms, close. Prints DONE <pid> <ok> <failed>.
  tcpdrive serve-close-first <addr:port> [--count N] [--reply BYTES] [--hold-ms MS] [--backlog N] [--timeout-ms MS]
      like serve, but the server closes right after the reply (after hold-ms).
  tcpdrive serve-forever <addr:port> [--reply BYTES] [--backlog N] [--timeout-ms MS]
      print READY <pid>; accept forever, a thread per connection doing what serve does.
  tcpdrive listen-only <addr:port> [--backlog N]
      print READY <pid>; listen and never accept (fills the accept queue), until killed.
  tcpdrive connect <addr:port> [--count N] [--request BYTES] [--timeout-ms MS]
      N sequential connect/request/reply/close cycles (the client closes first, or second
      after reading EOF from serve-close-first). Prints DONE <pid> <ok> <failed>.
  tcpdrive connect-reset <addr:port> [--count N] [--request BYTES] [--timeout-ms MS]
      like connect, but each close is an abort (SO_LINGER 0): the client sends a reset.
  tcpdrive serve-leak <addr:port> [--count N] [--backlog N]
      print READY <pid>; accept N connections, answer each, never close them (CLOSE_WAIT
      once the clients close); print LEAKING <pid> <N>, then wait to be killed.
  tcpdrive connect-half-close <addr:port> [--count N] [--request BYTES] [--timeout-ms MS]
      like connect, but each cycle shuts its side down (a FIN) right before close(): the
      close() of a socket whose FIN is still unacknowledged (FIN_WAIT1 -> FIN_WAIT1).
  tcpdrive connect-close <addr:port> [--count N] [--timeout-ms MS]
      N sequential connects, each closed at once without sending anything (a FIN, for a
      server that never reads or answers); prints OPENED <pid> <local port> per connection,
      then DONE <pid> <ok> <failed>.
  tcpdrive connect-shutdown <addr:port> [--count N] [--timeout-ms MS]
      N connects, each shut down for writing (a FIN) and kept open: against a server that
      never closes, FIN_WAIT2 sockets whose peer never closed. Prints OPENED <pid> <local port>
      per connection, then READY <pid>, then waits to be killed.
  tcpdrive connect-expect-fail <addr:port> [--timeout-ms MS]
      one connect that must fail; prints FAILED <pid> <ERRNO> (exit 0), or CONNECTED <pid> (exit 1).
  tcpdrive send-slow <addr:port> --bytes N [--timeout-ms MS]
      connect, write N bytes, poll SIOCOUTQ until all is ACKed (bound: timeout-ms, default
      20000), read the reply, close. Prints SENT <pid> <bytes> <unacked> <elapsed_ms>;
      exit 0 when all was ACKed, 1 otherwise.
  tcpdrive churn <addr:port> --count N [--parallel P] [--request BYTES] [--timeout-ms MS]
      N connect/request/reply/close cycles on P threads (1), as fast as possible.
      Prints DONE <pid> <ok> <failed> <elapsed_ms>.
  tcpdrive connect-paced <addr:port> --rate R [--count N] [--request BYTES] [--timeout-ms MS]
      connect/request/reply/close cycles started R times a second on a fixed schedule (the
      client closes first against serve-forever): a steady TIME_WAIT birth rate. Prints
      STARTED <pid> <monotonic ns>; at the first connect() that finds no free local port,
      EXHAUSTED <pid> <ok> <monotonic ns> and exit 0; after N (unbounded) cycles, DONE <pid>
      <ok> <failed>.
  tcpdrive hold-accept <addr:port> --count N [--backlog N]
      print READY <pid>; accept N connections and keep them open, reading nothing; print
      HELD <pid> <N>, then wait to be killed (its exit closes them all).
  tcpdrive hold-connect <addr:port> --count N [--timeout-ms MS]
      N connects kept open, sending nothing; print PORT <pid> <local port> for each, then
      HELD <pid> <N>, then wait to be killed.
      Both raise their open-file limit to the hard limit first.
  tcpdrive bulk-sink <addr:port> [--backlog N]
      print READY <pid>; accept forever, a thread per connection reading and discarding
      everything until the client closes, then closing.
  tcpdrive bulk <addr:port> --bytes N [--chunk BYTES] [--timeout-ms MS]
      connect, write N bytes in writes of --chunk bytes (4096), shut down for writing, wait
      for the server's close. Prints BULK <pid> <bytes> <elapsed_us> <writes>.
Addresses: 10.0.0.2:8080 or [fd00::2]:8080. Timeouts default to 10000 ms (servers: 30000 ms
per connection). Exit status: 0 success, 1 failure, 2 bad arguments.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("tcpdrive: {msg}\n{USAGE}");
            2
        }
    };
    let _ = io::stdout().flush();
    exit(code);
}

/// Parsed `--name value` options of one subcommand.
struct Opts {
    values: Vec<(String, String)>,
}

impl Opts {
    fn parse(rest: &[String], allowed: &[&str]) -> Result<Opts, String> {
        let mut values = Vec::new();
        let mut it = rest.iter();
        while let Some(arg) = it.next() {
            let name = arg
                .strip_prefix("--")
                .filter(|n| allowed.contains(n))
                .ok_or_else(|| {
                    format!("unexpected argument `{arg}` (options here: {allowed:?})")
                })?;
            let value = it.next().ok_or_else(|| format!("`{arg}` needs a value"))?;
            values.push((name.to_string(), value.clone()));
        }
        Ok(Opts { values })
    }

    fn num(&self, name: &str) -> Result<Option<u64>, String> {
        match self.values.iter().rev().find(|(n, _)| n == name) {
            None => Ok(None),
            Some((_, v)) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("--{name}: `{v}` is not a number")),
        }
    }

    fn num_or(&self, name: &str, default: u64) -> Result<u64, String> {
        Ok(self.num(name)?.unwrap_or(default))
    }

    /// A size option for a message: at least 1 byte (the terminating newline).
    fn size_or(&self, name: &str, default: u64) -> Result<usize, String> {
        let n = self.num_or(name, default)?;
        if n == 0 {
            return Err(format!(
                "--{name} must be at least 1 (the message ends with a newline)"
            ));
        }
        usize::try_from(n).map_err(|_| format!("--{name} too large"))
    }

    fn millis_or(&self, name: &str, default: u64) -> Result<Duration, String> {
        let ms = self.num_or(name, default)?;
        if ms == 0 {
            return Err(format!("--{name} must be positive"));
        }
        Ok(Duration::from_millis(ms))
    }
}

fn run(args: &[String]) -> Result<i32, String> {
    let (mode, rest) = args.split_first().ok_or("no subcommand")?;
    let (addr, rest) = rest
        .split_first()
        .ok_or_else(|| format!("{mode}: missing <addr:port>"))?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an address:port (IPv6: [fd00::2]:8080)"))?;
    match mode.as_str() {
        "serve" | "serve-close-first" => {
            let o = Opts::parse(
                rest,
                &["count", "reply", "hold-ms", "backlog", "timeout-ms"],
            )?;
            let close_first = mode == "serve-close-first";
            let cfg = ServerCfg {
                reply: message(
                    if close_first { b"bye!" } else { b"pong" },
                    o.size_or("reply", 5)?,
                ),
                close_first,
                hold: Duration::from_millis(o.num_or("hold-ms", 0)?),
                timeout: o.millis_or("timeout-ms", 30_000)?,
            };
            Ok(serve(addr, o.num_or("count", 1)?, backlog(&o)?, &cfg))
        }
        "serve-forever" => {
            let o = Opts::parse(rest, &["reply", "backlog", "timeout-ms"])?;
            let cfg = ServerCfg {
                reply: message(b"pong", o.size_or("reply", 5)?),
                close_first: false,
                hold: Duration::ZERO,
                timeout: o.millis_or("timeout-ms", 30_000)?,
            };
            serve_forever(addr, backlog(&o)?, cfg)
        }
        "listen-only" => {
            let o = Opts::parse(rest, &["backlog"])?;
            let _listener =
                listen(addr, backlog(&o)?).unwrap_or_else(|e| die(&format!("listen {addr}"), &e));
            ready();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "connect" | "connect-reset" => {
            let o = Opts::parse(rest, &["count", "request", "timeout-ms"])?;
            let request = message(b"ping", o.size_or("request", 5)?);
            let timeout = o.millis_or("timeout-ms", 10_000)?;
            let reset = mode == "connect-reset";
            let (mut ok, mut failed) = (0u64, 0u64);
            for _ in 0..o.num_or("count", 1)? {
                match client_cycle(addr, &request, timeout, reset) {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        eprintln!("tcpdrive: connect {addr}: {e}");
                        failed += 1;
                    }
                }
            }
            say(&format!("DONE {} {ok} {failed}", std::process::id()));
            Ok(if failed == 0 { 0 } else { 1 })
        }
        "connect-half-close" => {
            let o = Opts::parse(rest, &["count", "request", "timeout-ms"])?;
            let request = message(b"ping", o.size_or("request", 5)?);
            let timeout = o.millis_or("timeout-ms", 10_000)?;
            let (mut ok, mut failed) = (0u64, 0u64);
            for _ in 0..o.num_or("count", 1)? {
                match half_close_cycle(addr, &request, timeout) {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        eprintln!("tcpdrive: connect {addr}: {e}");
                        failed += 1;
                    }
                }
            }
            say(&format!("DONE {} {ok} {failed}", std::process::id()));
            Ok(if failed == 0 { 0 } else { 1 })
        }
        "connect-close" => {
            let o = Opts::parse(rest, &["count", "timeout-ms"])?;
            let timeout = o.millis_or("timeout-ms", 10_000)?;
            let pid = std::process::id();
            let (mut ok, mut failed) = (0u64, 0u64);
            for _ in 0..o.num_or("count", 1)? {
                match TcpStream::connect_timeout(&addr, timeout).and_then(|s| s.local_addr()) {
                    Ok(local) => {
                        say(&format!("OPENED {pid} {}", local.port()));
                        ok += 1;
                    }
                    Err(e) => {
                        eprintln!("tcpdrive: connect {addr}: {}", describe(&e));
                        failed += 1;
                    }
                }
            }
            say(&format!("DONE {pid} {ok} {failed}"));
            Ok(if failed == 0 { 0 } else { 1 })
        }
        "connect-shutdown" => {
            let o = Opts::parse(rest, &["count", "timeout-ms"])?;
            let timeout = o.millis_or("timeout-ms", 10_000)?;
            let mut held = Vec::new();
            for _ in 0..o.num_or("count", 1)? {
                let s = TcpStream::connect_timeout(&addr, timeout)
                    .unwrap_or_else(|e| die(&format!("connect {addr}"), &e));
                s.shutdown(std::net::Shutdown::Write)
                    .unwrap_or_else(|e| die("shutdown(SHUT_WR)", &e));
                let local = s.local_addr().unwrap_or_else(|e| die("getsockname", &e));
                say(&format!("OPENED {} {}", std::process::id(), local.port()));
                held.push(s);
            }
            ready();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "serve-leak" => {
            let o = Opts::parse(rest, &["count", "backlog"])?;
            serve_leak(addr, o.num_or("count", 1)?, backlog(&o)?)
        }
        "hold-accept" => {
            let o = Opts::parse(rest, &["count", "backlog"])?;
            let count = o
                .num("count")?
                .ok_or("hold-accept: --count N is required")?;
            hold_accept(addr, count, backlog(&o)?)
        }
        "hold-connect" => {
            let o = Opts::parse(rest, &["count", "timeout-ms"])?;
            let count = o
                .num("count")?
                .ok_or("hold-connect: --count N is required")?;
            hold_connect(addr, count, o.millis_or("timeout-ms", 10_000)?)
        }
        "connect-expect-fail" => {
            let o = Opts::parse(rest, &["timeout-ms"])?;
            match TcpStream::connect_timeout(&addr, o.millis_or("timeout-ms", 5_000)?) {
                Err(e) => {
                    say(&format!("FAILED {} {}", std::process::id(), err_name(&e)));
                    Ok(0)
                }
                Ok(stream) => {
                    eprintln!("tcpdrive: connect {addr} unexpectedly succeeded");
                    say(&format!("CONNECTED {}", std::process::id()));
                    drop(stream);
                    Ok(1)
                }
            }
        }
        "send-slow" => {
            let o = Opts::parse(rest, &["bytes", "timeout-ms"])?;
            let bytes = o.num("bytes")?.ok_or("send-slow: --bytes N is required")?;
            let bytes = usize::try_from(bytes)
                .ok()
                .filter(|b| *b > 0)
                .ok_or("--bytes must be at least 1")?;
            Ok(send_slow(addr, bytes, o.millis_or("timeout-ms", 20_000)?))
        }
        "bulk-sink" => {
            let o = Opts::parse(rest, &["backlog"])?;
            bulk_sink(addr, o.num_or("backlog", 128)? as i32)
        }
        "bulk" => {
            let o = Opts::parse(rest, &["bytes", "chunk", "timeout-ms"])?;
            let bytes = o.num("bytes")?.ok_or("bulk: --bytes N is required")?;
            let chunk = o.size_or("chunk", 4096)?;
            Ok(bulk(addr, bytes, chunk, o.millis_or("timeout-ms", 60_000)?))
        }
        "churn" => {
            let o = Opts::parse(rest, &["count", "parallel", "request", "timeout-ms"])?;
            let count = o.num("count")?.ok_or("churn: --count N is required")?;
            let parallel = o.num_or("parallel", 1)?.max(1);
            let request = message(b"ping", o.size_or("request", 5)?);
            Ok(churn(
                addr,
                count,
                parallel,
                request,
                o.millis_or("timeout-ms", 10_000)?,
            ))
        }
        "connect-paced" => {
            let o = Opts::parse(rest, &["rate", "count", "request", "timeout-ms"])?;
            let rate = o
                .num("rate")?
                .filter(|r| *r > 0)
                .ok_or("connect-paced: --rate N (connections a second, at least 1) is required")?;
            let request = message(b"ping", o.size_or("request", 5)?);
            Ok(connect_paced(
                addr,
                rate,
                o.num_or("count", u64::MAX)?,
                &request,
                o.millis_or("timeout-ms", 10_000)?,
            ))
        }
        other => Err(format!("unknown subcommand `{other}`")),
    }
}

fn backlog(o: &Opts) -> Result<i32, String> {
    let b = o.num_or("backlog", 128)?;
    i32::try_from(b).map_err(|_| "--backlog too large".to_string())
}

/// `n` bytes: `word` repeated, the last byte `\n` (so `message(b"pong", 5)` is `pong\n`).
fn message(word: &[u8; 4], n: usize) -> Vec<u8> {
    let mut m: Vec<u8> = (0..n - 1).map(|i| word[i % 4]).collect();
    m.push(b'\n');
    m
}

/// Prints one result line and flushes, so a reader of a pipe sees it at once.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn ready() {
    say(&format!("READY {}", std::process::id()));
}

fn die(what: &str, e: &io::Error) -> ! {
    eprintln!("tcpdrive: {what}: {}", describe(e));
    exit(1);
}

/// The errno name of an error (`ETIMEDOUT` for std's own connect timeout, which carries none).
fn err_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => errno_name(errno),
        None if e.kind() == io::ErrorKind::TimedOut => "ETIMEDOUT".to_string(),
        None => format!("{:?}", e.kind()),
    }
}

fn describe(e: &io::Error) -> String {
    let name = err_name(e);
    if e.raw_os_error() == Some(libc::EAGAIN) {
        format!("{name} (timed out: {e})")
    } else {
        format!("{name} ({e})")
    }
}

/// A listening socket with SO_REUSEADDR and an explicit backlog (std's `TcpListener::bind`
/// does not take a backlog).
fn listen(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on a descriptor we own; sockaddr structs are zeroed and
    // filled field by field, and passed with their exact size.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let rc = match addr {
            SocketAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_port = a.port().to_be();
                sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                libc::bind(
                    fd,
                    &sa as *const _ as *const libc::sockaddr,
                    size_of_val(&sa) as libc::socklen_t,
                )
            }
            SocketAddr::V6(a) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = a.port().to_be();
                sa.sin6_addr.s6_addr = a.ip().octets();
                sa.sin6_flowinfo = a.flowinfo();
                sa.sin6_scope_id = a.scope_id();
                libc::bind(
                    fd,
                    &sa as *const _ as *const libc::sockaddr,
                    size_of_val(&sa) as libc::socklen_t,
                )
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd, backlog) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(listener)
    }
}

/// Reads until a `\n` arrives (returns Ok(true)) or EOF (Ok(false)); `got` receives the bytes.
fn read_until_newline(s: &mut TcpStream, got: &mut Vec<u8>) -> io::Result<bool> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(false);
        }
        got.extend_from_slice(&buf[..n]);
        if buf[..n].contains(&b'\n') {
            return Ok(true);
        }
    }
}

/// Reads and discards until EOF; returns how many bytes came.
fn read_to_eof(s: &mut TcpStream) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

struct ServerCfg {
    reply: Vec<u8>,
    close_first: bool,
    hold: Duration,
    timeout: Duration,
}

/// One server-side connection: request, reply, then either close first, or wait for the
/// client's close (EOF) and close second. The socket closes when `s` is dropped.
fn handle(mut s: TcpStream, cfg: &ServerCfg) -> Result<(), String> {
    let io = |what: &str, e: io::Error| format!("{what}: {}", describe(&e));
    s.set_read_timeout(Some(cfg.timeout))
        .map_err(|e| io("SO_RCVTIMEO", e))?;
    s.set_write_timeout(Some(cfg.timeout))
        .map_err(|e| io("SO_SNDTIMEO", e))?;
    let mut req = Vec::new();
    if !read_until_newline(&mut s, &mut req).map_err(|e| io("reading the request", e))? {
        return Err(format!(
            "EOF before a complete request ({} bytes)",
            req.len()
        ));
    }
    s.write_all(&cfg.reply)
        .map_err(|e| io("writing the reply", e))?;
    if !cfg.close_first {
        read_to_eof(&mut s).map_err(|e| io("waiting for the client to close", e))?;
    }
    if !cfg.hold.is_zero() {
        std::thread::sleep(cfg.hold);
    }
    Ok(())
}

fn serve(addr: SocketAddr, count: u64, backlog: i32, cfg: &ServerCfg) -> i32 {
    let listener = listen(addr, backlog).unwrap_or_else(|e| die(&format!("listen {addr}"), &e));
    ready();
    let (mut ok, mut failed) = (0u64, 0u64);
    while ok + failed < count {
        match listener.accept() {
            Ok((s, peer)) => match handle(s, cfg) {
                Ok(()) => ok += 1,
                Err(e) => {
                    eprintln!("tcpdrive: connection from {peer}: {e}");
                    failed += 1;
                }
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("tcpdrive: accept: {}", describe(&e));
                failed += 1;
            }
        }
    }
    say(&format!("DONE {} {ok} {failed}", std::process::id()));
    if failed == 0 { 0 } else { 1 }
}

fn serve_forever(addr: SocketAddr, backlog: i32, cfg: ServerCfg) -> ! {
    let listener = listen(addr, backlog).unwrap_or_else(|e| die(&format!("listen {addr}"), &e));
    let cfg = Arc::new(cfg);
    ready();
    loop {
        match listener.accept() {
            Ok((s, peer)) => {
                let cfg = Arc::clone(&cfg);
                let spawned = std::thread::Builder::new().spawn(move || {
                    if let Err(e) = handle(s, &cfg) {
                        eprintln!("tcpdrive: connection from {peer}: {e}");
                    }
                });
                if let Err(e) = spawned {
                    eprintln!("tcpdrive: cannot start a thread: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("tcpdrive: accept: {}", describe(&e));
                // EMFILE and the like: do not spin.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// One client cycle: connect, request, full reply, close (after EOF when the server closes
/// first, as its reply starting with `b` says).
/// Accepts `count` connections, answers each request, and never closes them: once the clients
/// close, every one sits in CLOSE_WAIT (the leak netwatch must find). Prints
/// `LEAKING <pid> <count>` once all are accepted and answered, then waits to be killed.
fn serve_leak(addr: SocketAddr, count: u64, backlog: i32) -> ! {
    let listener = listen(addr, backlog).unwrap_or_else(|e| die(&format!("listen {addr}"), &e));
    ready();
    let mut held = Vec::new();
    for _ in 0..count {
        let (mut s, _) = listener
            .accept()
            .unwrap_or_else(|e| die(&format!("accept on {addr}"), &e));
        let mut got = Vec::new();
        if let Err(e) = read_until_newline(&mut s, &mut got) {
            die("reading a request", &e);
        }
        if let Err(e) = s.write_all(b"pong\n") {
            die("writing a reply", &e);
        }
        held.push(s);
    }
    say(&format!("LEAKING {} {}", std::process::id(), held.len()));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Raises the soft open-file limit to the hard one: holding many sockets needs it.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Accepts `count` connections and holds them, reading nothing, until killed.
fn hold_accept(addr: SocketAddr, count: u64, backlog: i32) -> ! {
    raise_nofile();
    let listener = listen(addr, backlog).unwrap_or_else(|e| die(&format!("listen {addr}"), &e));
    ready();
    let held: Vec<TcpStream> = (0..count)
        .map(|_| {
            listener
                .accept()
                .unwrap_or_else(|e| die(&format!("accept on {addr}"), &e))
                .0
        })
        .collect();
    say(&format!("HELD {} {}", std::process::id(), held.len()));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Opens `count` connections and holds them, sending nothing, until killed.
fn hold_connect(addr: SocketAddr, count: u64, timeout: Duration) -> ! {
    raise_nofile();
    let pid = std::process::id();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let held: Vec<TcpStream> = (0..count)
        .map(|_| {
            let s = TcpStream::connect_timeout(&addr, timeout)
                .unwrap_or_else(|e| die(&format!("connect {addr}"), &e));
            let port = s.local_addr().map_or(0, |a| a.port());
            let _ = writeln!(out, "PORT {pid} {port}");
            s
        })
        .collect();
    let _ = writeln!(out, "HELD {pid} {}", held.len());
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// SO_LINGER on with a zero timeout: close() then aborts the connection with a reset.
fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from the pointer, which points at
    // a live `linger`; the fd belongs to `s`, open for the duration of the call.
    let ret = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn client_cycle(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
    reset: bool,
) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect: {}", describe(&e)))?;
    exchange(s, request, timeout, reset)
}

/// One connect, request and reply, then shutdown(SHUT_WR) and at once close(): the FIN is
/// usually still unacknowledged at the close (always, when the peer drops it).
fn half_close_cycle(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect: {}", describe(&e)))?;
    let s = exchange_open(s, request, timeout)?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown(SHUT_WR): {}", describe(&e)))
}

/// One request and reply on a connected socket, then the close (after the server's, for a
/// reply that says it closes first).
fn exchange(s: TcpStream, request: &[u8], timeout: Duration, reset: bool) -> Result<(), String> {
    let s = exchange_open(s, request, timeout)?;
    if reset {
        set_linger_zero(&s).map_err(|e| format!("SO_LINGER: {}", describe(&e)))?;
    }
    Ok(())
}

/// The request and the whole reply (up to the server's close, for a reply that says it
/// closes first); the socket is handed back open, for the caller to close as it means to.
fn exchange_open(mut s: TcpStream, request: &[u8], timeout: Duration) -> Result<TcpStream, String> {
    let io = |what: &str, e: io::Error| format!("{what}: {}", describe(&e));
    s.set_read_timeout(Some(timeout))
        .map_err(|e| io("SO_RCVTIMEO", e))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| io("SO_SNDTIMEO", e))?;
    s.write_all(request)
        .map_err(|e| io("writing the request", e))?;
    let mut reply = Vec::new();
    if !read_until_newline(&mut s, &mut reply).map_err(|e| io("reading the reply", e))? {
        return Err(format!(
            "EOF before a complete reply ({} bytes)",
            reply.len()
        ));
    }
    if reply.first() == Some(&b'b') {
        read_to_eof(&mut s).map_err(|e| io("waiting for the server to close", e))?;
    }
    Ok(s)
}

/// `count` cycles, the i-th started at i/rate seconds (a late one at once), until connect()
/// finds no free local port.
fn connect_paced(
    addr: SocketAddr,
    rate: u64,
    count: u64,
    request: &[u8],
    timeout: Duration,
) -> i32 {
    let pid = std::process::id();
    say(&format!("STARTED {pid} {}", monotonic_ns()));
    let start = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    for i in 0..count {
        let due = start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let result = match TcpStream::connect_timeout(&addr, timeout) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                say(&format!("EXHAUSTED {pid} {ok} {}", monotonic_ns()));
                return 0;
            }
            Err(e) => Err(format!("connect: {}", describe(&e))),
            Ok(s) => exchange(s, request, timeout, false),
        };
        match result {
            Ok(()) => ok += 1,
            Err(e) => {
                eprintln!("tcpdrive: connect {addr}: {e}");
                failed += 1;
            }
        }
    }
    say(&format!("DONE {pid} {ok} {failed}"));
    i32::from(failed != 0)
}

/// Bytes in the socket's send queue not yet ACKed by the peer (SIOCOUTQ == TIOCOUTQ).
fn unacked(s: &TcpStream) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.max(0) as u64)
    }
}

fn send_slow(addr: SocketAddr, bytes: usize, bound: Duration) -> i32 {
    let start = Instant::now();
    let deadline = start + bound;
    let pid = std::process::id();
    let mut s = TcpStream::connect_timeout(&addr, bound)
        .unwrap_or_else(|e| die(&format!("connect {addr}"), &e));
    let _ = s.set_write_timeout(Some(bound));
    if let Err(e) = s.write_all(&message(b"data", bytes)) {
        eprintln!("tcpdrive: send-slow write: {}", describe(&e));
    }
    let mut left = unacked(&s).unwrap_or_else(|e| die("ioctl(SIOCOUTQ)", &e));
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        left = unacked(&s).unwrap_or_else(|e| die("ioctl(SIOCOUTQ)", &e));
    }
    if left == 0 {
        // Read the server's reply, so the close below is a FIN and not a reset for unread data.
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        let _ = s.set_read_timeout(Some(remaining.min(Duration::from_secs(5))));
        let mut reply = Vec::new();
        if let Err(e) = read_until_newline(&mut s, &mut reply) {
            eprintln!("tcpdrive: send-slow reading the reply: {}", describe(&e));
        }
    } else {
        eprintln!("tcpdrive: send-slow: {left} bytes still unacknowledged after {bound:?}");
        let _ = s.shutdown(Shutdown::Write);
    }
    drop(s);
    say(&format!(
        "SENT {pid} {bytes} {left} {}",
        start.elapsed().as_millis()
    ));
    if left == 0 { 0 } else { 1 }
}

/// Reads and discards each connection's bytes until the client closes: the receiving end of
/// a bulk transfer, which costs as little as a reader can.
fn bulk_sink(addr: SocketAddr, backlog: i32) -> ! {
    let listener = listen(addr, backlog).unwrap_or_else(|e| die(&format!("listen {addr}"), &e));
    ready();
    loop {
        match listener.accept() {
            Ok((mut s, peer)) => {
                let spawned = std::thread::Builder::new().spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                eprintln!("tcpdrive: bulk from {peer}: {}", describe(&e));
                                break;
                            }
                        }
                    }
                });
                if let Err(e) = spawned {
                    eprintln!("tcpdrive: no thread for {peer}: {e}");
                }
            }
            Err(e) => eprintln!("tcpdrive: accept on {addr}: {}", describe(&e)),
        }
    }
}

/// Writes `bytes` in writes of `chunk` bytes, then waits for the server's close: a bulk
/// transfer whose every write is a `sendmsg` (what a tracer of sends pays for).
fn bulk(addr: SocketAddr, bytes: u64, chunk: usize, bound: Duration) -> i32 {
    let pid = std::process::id();
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, bound)
        .unwrap_or_else(|e| die(&format!("connect {addr}"), &e));
    let _ = s.set_write_timeout(Some(bound));
    let _ = s.set_read_timeout(Some(bound));
    let buf = vec![b'x'; chunk];
    let (mut left, mut writes) = (bytes, 0u64);
    while left > 0 {
        let n = usize::try_from(left).map_or(chunk, |l| l.min(chunk));
        if let Err(e) = s.write_all(&buf[..n]) {
            eprintln!("tcpdrive: bulk write: {}", describe(&e));
            return 1;
        }
        left -= n as u64;
        writes += 1;
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut rest = [0u8; 64];
    while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
    say(&format!(
        "BULK {pid} {bytes} {} {writes}",
        start.elapsed().as_micros()
    ));
    0
}

fn churn(addr: SocketAddr, count: u64, parallel: u64, request: Vec<u8>, timeout: Duration) -> i32 {
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let request = Arc::new(request);
    let start = Instant::now();
    let threads: Vec<_> = (0..parallel)
        .map(|_| {
            let (next, ok, failed, request) =
                (next.clone(), ok.clone(), failed.clone(), request.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    match client_cycle(addr, &request, timeout, false) {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            // The first few errors say what went wrong; the rest only count.
                            if failed.fetch_add(1, Ordering::Relaxed) < 10 {
                                eprintln!("tcpdrive: churn {addr}: {e}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    say(&format!(
        "DONE {} {ok} {failed} {}",
        std::process::id(),
        start.elapsed().as_millis()
    ));
    if failed == 0 { 0 } else { 1 }
}
