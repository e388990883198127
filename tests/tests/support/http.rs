//! Plain HTTP/1.1 over `std::net::TcpStream`: what the tests ask `netwatch serve`.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// What came back for one request.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request` as is, reads to EOF (each read bounded by `timeout`), parses the status
/// line. `Err` when nothing that looks like HTTP came back.
pub fn http(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<Reply, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    // The server may answer (431, 503) before it has read everything: a failed write is
    // not the end, the answer is.
    let wrote = s.write_all(request);
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!(
            "no HTTP response (write: {wrote:?}, read: {read:?}): {text:?}"
        ));
    };
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    Ok(Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http(addr, request.as_bytes(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}
