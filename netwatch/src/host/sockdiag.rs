//! The TCP sockets that already exist, listed through `NETLINK_SOCK_DIAG` (what `ss` uses).
//!
//! Why: the kernel programs only see sockets that change after netwatch attaches. A socket
//! stuck in CLOSE_WAIT since yesterday never changes again, so `netwatch leaks` finds those at
//! start-up by asking the kernel for a dump of every TCP socket in the wanted states, with the
//! inode that maps it to its owners' fds ([`crate::host::procfd`]) and the cookie that identifies it
//! in the live stream.
//!
//! The request is small and fixed (`inet_diag_req_v2`), so it is built by hand on a raw
//! netlink socket instead of pulling in a netlink crate.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use crate::host::{netstat, settings};
use crate::model::timewait::HostSettings;

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`: the message type of a socket dump request.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_NOOP`, `NLMSG_ERROR`, `NLMSG_DONE` from `linux/netlink.h`.
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST | NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
const DUMP_FLAGS: u16 = 0x1 | 0x300;
/// `NLM_F_DUMP_INTR`: the dump was interrupted by a concurrent change and may be inconsistent.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`: family, protocol, ext, pad, states, `inet_diag_sockid`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `sizeof(struct inet_diag_sockid)`: sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID_LEN: usize = 4 + 16 + 16 + 4 + 8;
/// `sizeof(struct inet_diag_msg)`: family, state, timer, retrans, sockid, expires, rqueue,
/// wqueue, uid, inode.
const MSG_LEN: usize = 4 + SOCKID_LEN + 5 * 4;
/// `INET_DIAG_INFO` (`linux/inet_diag.h`): the attribute holding a `struct tcp_info`; asked
/// for with bit `1 << (INET_DIAG_INFO - 1)` of `idiag_ext`.
const INET_DIAG_INFO: u16 = 2;
/// Offset of `tcpi_last_ack_recv` (u32, ms since the last ACK arrived) in `struct tcp_info`:
/// eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked, lost, retrans,
/// fackets, last_data_sent, last_ack_sent, last_data_recv, last_ack_recv.
const TCPI_LAST_ACK_RECV: usize = 8 + 12 * 4;
/// Receive buffer: the kernel fills dump skbs up to 32 KiB; twice that never truncates.
const RECV_BUF: usize = 64 * 1024;

/// Which TCP states to dump: bit `1 << state` for each kernel state number
/// (`TCP_ESTABLISHED` = 1 ... `TCP_NEW_SYN_RECV` = 12), the kernel's `idiag_states`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMask(pub u32);

impl StateMask {
    /// `TCP_FIN_WAIT2`: we closed, the peer has not.
    pub const FIN_WAIT2: StateMask = StateMask(1 << 5);
    /// `TCP_CLOSE_WAIT`: the peer closed, we have not (the leak `netwatch leaks` looks for).
    pub const CLOSE_WAIT: StateMask = StateMask(1 << 8);
    /// `TCP_TIME_WAIT`: timewait sockets whose substate is TIME_WAIT.
    pub const TIME_WAIT: StateMask = StateMask(1 << 6);

    /// Both masks' states.
    pub const fn union(self, other: StateMask) -> StateMask {
        StateMask(self.0 | other.0)
    }
}

/// Masks only the tests ask for.
#[cfg(test)]
impl StateMask {
    const ALL: StateMask = StateMask(!0);
    const ESTABLISHED: StateMask = StateMask(1 << 1);
    const LISTEN: StateMask = StateMask(1 << 10);

    const fn state(state: u8) -> StateMask {
        StateMask(1u32.wrapping_shl(state as u32))
    }

    const fn contains(self, state: u8) -> bool {
        state < 32 && self.0 & (1 << state) != 0
    }
}

/// One socket of a dump: the fields of `inet_diag_msg` that identify it and its owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiagSocket {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Kernel TCP state number (`TCP_CLOSE_WAIT` = 8).
    pub state: u8,
    /// Local address and port.
    pub src: SocketAddr,
    /// Remote address and port (unspecified for a listener).
    pub dst: SocketAddr,
    /// Socket inode: `socket:[INODE]` in `/proc/<pid>/fd`; 0 for a TIME_WAIT or request socket.
    pub inode: u64,
    /// Uid that created the socket.
    pub uid: u32,
    /// Socket cookie (`bpf_get_socket_cookie`, `ss -e`'s `sk:`): stable for the socket's life.
    pub cookie: u64,
    /// Milliseconds since the last ACK from the peer arrived (`tcp_info.tcpi_last_ack_recv`);
    /// `None` for TIME_WAIT and request sockets, which carry no `tcp_info`.
    ///
    /// Why: a socket stuck in CLOSE_WAIT has heard nothing since the peer's FIN (which carries
    /// an ACK), so this is a lower bound of how long it has been stuck, known even for a
    /// socket that was stuck before netwatch started.
    pub last_ack_recv_ms: Option<u32>,
    /// Milliseconds left on the socket's timer (`idiag_expires`): for a timewait socket, until
    /// the kernel drops it.
    pub expires_ms: u32,
    /// The namespace's `net.ipv4.tcp_fin_timeout` in ms, read with the dump; `None` when it
    /// could not be read.
    pub fin_timeout_ms: Option<u32>,
    /// `idiag_timer`: 3 for a timewait socket (substate TIME_WAIT or FIN_WAIT2), whatever
    /// state it reports.
    pub timer: u8,
}

/// One namespace's dump, with what was read inside the namespace beside it.
#[derive(Debug, Clone)]
pub struct NamespaceDump {
    pub sockets: Vec<DiagSocket>,
    /// The namespace's TIME_WAIT sysctls.
    pub settings: HostSettings,
    /// Its TCPTimeWaitOverflow counter.
    pub time_wait_overflows: Option<u64>,
}

/// What is read from `/proc` inside the namespace, on the thread that opens the socket.
struct NamespaceReads {
    fin_timeout_ms: Option<u32>,
    settings: HostSettings,
    time_wait_overflows: Option<u64>,
}

impl NamespaceReads {
    fn here() -> Self {
        Self {
            fin_timeout_ms: fin_timeout_ms(),
            settings: settings::read(),
            time_wait_overflows: netstat::time_wait_overflows(),
        }
    }
}

impl DiagSocket {
    /// A timewait socket, not a full one (an orphaned full FIN_WAIT2 also has no inode).
    pub fn is_timewait(&self) -> bool {
        self.timer == 3
    }

    /// How long the kernel says this socket has at least been in its state: the time since
    /// the peer's last ACK for a full socket (`tcpi_last_ack_recv`); for an orphaned FIN_WAIT2
    /// (a timewait socket, which has no `tcp_info`), the FIN timeout less the time left on its
    /// timer, which started when it was orphaned.
    pub fn kernel_age_ms(&self) -> Option<u32> {
        const TCP_FIN_WAIT2: u8 = 5;
        self.last_ack_recv_ms.or_else(|| {
            (self.state == TCP_FIN_WAIT2 && self.inode == 0)
                .then(|| {
                    self.fin_timeout_ms
                        .map(|t| t.saturating_sub(self.expires_ms))
                })
                .flatten()
        })
    }
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// A system call failed.
    #[error("sock_diag: {what}: {source}")]
    Io {
        /// The call that failed.
        what: String,
        /// Its error.
        source: io::Error,
    },
    /// The kernel answered the request with an error (`NLMSG_ERROR`, or an error in
    /// `NLMSG_DONE`).
    #[error("sock_diag: the kernel refused the dump: {}", io::Error::from_raw_os_error(*.errno))]
    Netlink {
        /// Positive errno.
        errno: i32,
    },
    /// A reply that does not parse.
    #[error("sock_diag: malformed reply: {0}")]
    Malformed(String),
    /// The dump raced with socket changes (`NLM_F_DUMP_INTR`) on every one of 4 attempts.
    #[error("sock_diag: dump interrupted by a concurrent change; retry")]
    Interrupted,
    /// Entering the network namespace failed.
    #[error("sock_diag: cannot enter network namespace {path}: {source}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> SockDiagError + '_ {
    move |source| SockDiagError::Io {
        what: what.to_string(),
        source,
    }
}

/// Lists the TCP sockets (IPv4, then IPv6) whose state is in `states`, in the calling
/// thread's network namespace, or in `netns` (a namespace file such as
/// `/var/run/netns/NAME` or `/proc/PID/ns/net`) when given.
///
/// Why a namespace: a container's sockets are only visible from inside its namespace. The
/// netlink socket is opened there by a short-lived thread (a socket stays in the namespace it
/// was created in), so the calling thread never changes namespace.
pub fn tcp_sockets(
    states: StateMask,
    netns: Option<&Path>,
) -> Result<Vec<DiagSocket>, SockDiagError> {
    Ok(dump(states, netns)?.sockets)
}

/// The timewait sockets of a namespace (both substates, as `ss` lists them under time-wait
/// and fin-wait-2), with its settings and overflow counter.
pub fn time_waits(netns: Option<&Path>) -> Result<NamespaceDump, SockDiagError> {
    let mut d = dump(StateMask::TIME_WAIT.union(StateMask::FIN_WAIT2), netns)?;
    d.sockets.retain(DiagSocket::is_timewait);
    Ok(d)
}

/// [`tcp_sockets`], with what was read in the namespace.
fn dump(states: StateMask, netns: Option<&Path>) -> Result<NamespaceDump, SockDiagError> {
    let (sock, reads) = match netns {
        None => (open_socket()?, NamespaceReads::here()),
        Some(path) => open_socket_in(path)?,
    };
    // A dump that raced with socket changes is asked again (a few times) with a new sequence
    // number; replies still queued for the old one are skipped.
    let mut seq = 0;
    let mut attempts = 0;
    'dump: loop {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            seq += 1;
            send_request(
                &sock,
                &request(family, libc::IPPROTO_TCP as u8, states, seq),
            )?;
            match receive_dump(&sock, seq, &mut out) {
                Err(SockDiagError::Interrupted) if attempts < 3 => {
                    attempts += 1;
                    continue 'dump;
                }
                other => other?,
            }
        }
        for d in &mut out {
            d.fin_timeout_ms = reads.fin_timeout_ms;
        }
        return Ok(NamespaceDump {
            sockets: out,
            settings: reads.settings,
            time_wait_overflows: reads.time_wait_overflows,
        });
    }
}

fn open_socket() -> Result<OwnedFd, SockDiagError> {
    // SAFETY: socket() takes no pointers; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io_err("socket(AF_NETLINK, NETLINK_SOCK_DIAG)")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `net.ipv4.tcp_fin_timeout` of the calling thread's network namespace, in ms.
fn fin_timeout_ms() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout").ok()?;
    text.trim().parse::<u32>().ok()?.checked_mul(1000)
}

/// Opens the netlink socket inside the namespace `path`, on a thread of its own that enters
/// the namespace and ends right after: the caller's namespace is untouched. Reads the
/// namespace's sysctls and counters there too (`/proc/sys/net` shows the reader's namespace).
fn open_socket_in(path: &Path) -> Result<(OwnedFd, NamespaceReads), SockDiagError> {
    let path = path.to_path_buf();
    let ns = File::open(&path).map_err(|source| SockDiagError::Netns {
        path: path.clone(),
        source,
    })?;
    std::thread::Builder::new()
        .name("netwatch-netns".into())
        .spawn(move || {
            // SAFETY: `ns` is an open file for the whole call; setns() changes only this
            // thread's network namespace, and this thread ends right after creating the socket.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(SockDiagError::Netns {
                    path,
                    source: io::Error::last_os_error(),
                });
            }
            Ok((open_socket()?, NamespaceReads::here()))
        })
        .map_err(io_err("spawn the namespace thread"))?
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// One `SOCK_DIAG_BY_FAMILY` dump request: `nlmsghdr` + `inet_diag_req_v2` with a zero
/// socket id (no filter but the states).
fn request(family: u8, protocol: u8, states: StateMask, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&DUMP_FLAGS.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
    let ext = 1u8 << (INET_DIAG_INFO - 1);
    b.extend_from_slice(&[family, protocol, ext, 0 /* pad */]);
    b.extend_from_slice(&states.0.to_ne_bytes());
    b.resize(len, 0); // inet_diag_sockid: all zero
    b
}

fn send_request(sock: &OwnedFd, req: &[u8]) -> Result<(), SockDiagError> {
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `req` and `kernel` are valid for the lengths passed, and outlive the call.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io_err("sendto")(io::Error::last_os_error()));
    }
    if n as usize != req.len() {
        return Err(SockDiagError::Malformed(format!(
            "short send: {n} of {} bytes",
            req.len()
        )));
    }
    Ok(())
}

fn receive_dump(sock: &OwnedFd, seq: u32, out: &mut Vec<DiagSocket>) -> Result<(), SockDiagError> {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io_err("recv")(e));
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(SockDiagError::Malformed(format!(
                "datagram of {n} bytes truncated to {}",
                buf.len()
            )));
        }
        if parse_datagram(&buf[..n], seq, out)? == Progress::Done {
            return Ok(());
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Progress {
    More,
    Done,
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the netlink messages of one datagram, appending the sockets of the dump `seq` to
/// `out`; messages of other sequence numbers (a stale reply) are skipped.
fn parse_datagram(
    mut b: &[u8],
    seq: u32,
    out: &mut Vec<DiagSocket>,
) -> Result<Progress, SockDiagError> {
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_ne(b, 0) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(SockDiagError::Malformed(format!(
                "message length {len} with {} bytes left",
                b.len()
            )));
        }
        let (ty, flags, msg_seq) = (u16_ne(b, 4), u16_ne(b, 6), u32_ne(b, 8));
        let payload = &b[NLMSG_HDRLEN..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        if msg_seq != seq {
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(SockDiagError::Interrupted);
        }
        match ty {
            NLMSG_NOOP => {}
            NLMSG_DONE => {
                // A dump that failed half-way says so in NLMSG_DONE's int payload.
                if payload.len() >= 4 {
                    let err = u32_ne(payload, 0) as i32;
                    if err < 0 {
                        return Err(SockDiagError::Netlink { errno: -err });
                    }
                }
                return Ok(Progress::Done);
            }
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(SockDiagError::Malformed("short NLMSG_ERROR".into()));
                }
                let err = u32_ne(payload, 0) as i32;
                // error 0 is an ACK, which a dump does not ask for; anything else ends it.
                if err == 0 {
                    return Ok(Progress::Done);
                }
                return Err(SockDiagError::Netlink { errno: -err });
            }
            SOCK_DIAG_BY_FAMILY => out.push(parse_msg(payload)?),
            _ => {}
        }
    }
    Ok(Progress::More)
}

/// Parses one `inet_diag_msg` and, of the attributes after it, `INET_DIAG_INFO`.
fn parse_msg(p: &[u8]) -> Result<DiagSocket, SockDiagError> {
    if p.len() < MSG_LEN {
        return Err(SockDiagError::Malformed(format!(
            "inet_diag_msg of {} bytes, want {MSG_LEN}",
            p.len()
        )));
    }
    let (family, state) = (p[0], p[1]);
    let id = &p[4..4 + SOCKID_LEN];
    // Ports and addresses are in network byte order, the rest in host order.
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let addr = |raw: &[u8]| -> Result<IpAddr, SockDiagError> {
        if family == libc::AF_INET as u8 {
            Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])))
        } else if family == libc::AF_INET6 as u8 {
            let mut a = [0u8; 16];
            a.copy_from_slice(&raw[..16]);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        } else {
            Err(SockDiagError::Malformed(format!("address family {family}")))
        }
    };
    let src = SocketAddr::new(addr(&id[4..20])?, sport);
    let dst = SocketAddr::new(addr(&id[20..36])?, dport);
    // idiag_cookie[2]: [0] is the low half (`ss` prints `cookie[1] << 32 | cookie[0]`).
    let cookie = u64::from(u32_ne(id, 40)) | (u64::from(u32_ne(id, 44)) << 32);
    let tail = 4 + SOCKID_LEN; // expires, rqueue, wqueue, uid, inode
    Ok(DiagSocket {
        family,
        state,
        src,
        dst,
        inode: u64::from(u32_ne(p, tail + 16)),
        uid: u32_ne(p, tail + 12),
        cookie,
        last_ack_recv_ms: attribute(&p[MSG_LEN..], INET_DIAG_INFO)
            .filter(|info| info.len() >= TCPI_LAST_ACK_RECV + 4)
            .map(|info| u32_ne(info, TCPI_LAST_ACK_RECV)),
        expires_ms: u32_ne(p, tail),
        fin_timeout_ms: None,
        timer: p[2],
    })
}

/// The payload of the first netlink attribute (`struct rtattr`: u16 length including the
/// 4-byte header, u16 type, payload padded to 4) of type `ty`; `None` when absent or cut.
fn attribute(mut b: &[u8], ty: u16) -> Option<&[u8]> {
    while b.len() >= 4 {
        let len = usize::from(u16_ne(b, 0));
        if len < 4 || len > b.len() {
            return None;
        }
        if u16_ne(b, 2) == ty {
            return Some(&b[4..len]);
        }
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const AF_INET: u8 = libc::AF_INET as u8;
    const AF_INET6: u8 = libc::AF_INET6 as u8;

    /// A netlink message: header with `ty`, `flags`, `seq`, then `payload`, padded to 4.
    fn nlmsg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&4242u32.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize(b.len().next_multiple_of(4), 0);
        b
    }

    /// An `inet_diag_msg` as the kernel lays it out, with 8 bytes of attributes after it.
    fn diag_msg(family: u8, state: u8, src: SocketAddr, dst: SocketAddr, inode: u32) -> Vec<u8> {
        let ip = |a: IpAddr| -> [u8; 16] {
            let mut raw = [0u8; 16];
            match a {
                IpAddr::V4(v4) => raw[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => raw = v6.octets(),
            }
            raw
        };
        let mut b = vec![family, state, 0, 0];
        b.extend_from_slice(&src.port().to_be_bytes());
        b.extend_from_slice(&dst.port().to_be_bytes());
        b.extend_from_slice(&ip(src.ip()));
        b.extend_from_slice(&ip(dst.ip()));
        b.extend_from_slice(&3u32.to_ne_bytes()); // if
        b.extend_from_slice(&0x1122_3344u32.to_ne_bytes()); // cookie low
        b.extend_from_slice(&0x5566_7788u32.to_ne_bytes()); // cookie high
        for v in [0u32, 0, 0, 1000, inode] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&[8, 0, 1, 0, 0, 0, 0, 0]); // an attribute, ignored
        b
    }

    #[test]
    fn an_orphaned_fin_wait2_is_as_old_as_its_timer_says() {
        let mut d = parse_msg(&diag_msg(
            AF_INET,
            5,
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
            0,
        ))
        .unwrap();
        // 45 s left of a 60 s FIN timeout: orphaned 15 s ago.
        (d.expires_ms, d.fin_timeout_ms) = (45_000, Some(60_000));
        assert_eq!(d.kernel_age_ms(), Some(15_000));
        // Unknown timeout: no claim.
        d.fin_timeout_ms = None;
        assert_eq!(d.kernel_age_ms(), None);
        // A full socket (held by a process: an inode) says how long since the last ACK.
        (d.inode, d.fin_timeout_ms, d.last_ack_recv_ms) = (77, Some(60_000), Some(1_234));
        assert_eq!(d.kernel_age_ms(), Some(1_234));
        d.last_ack_recv_ms = None;
        assert_eq!(d.kernel_age_ms(), None);
    }

    #[test]
    fn the_request_is_an_inet_diag_req_v2_dump() {
        let states = StateMask::CLOSE_WAIT.union(StateMask::LISTEN);
        let r = request(AF_INET6, libc::IPPROTO_TCP as u8, states, 7);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_ne(&r, 0), 72);
        assert_eq!(u16_ne(&r, 4), 20);
        assert_eq!(
            u16_ne(&r, 6),
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16
        );
        assert_eq!(u32_ne(&r, 8), 7);
        assert_eq!(&r[16..20], &[AF_INET6, 6, 2, 0]); // idiag_ext: INET_DIAG_INFO
        assert_eq!(u32_ne(&r, 20), (1 << 8) | (1 << 10));
        assert!(r[24..].iter().all(|&b| b == 0));
    }

    #[test]
    fn state_masks() {
        assert_eq!(StateMask::state(1), StateMask::ESTABLISHED);
        assert_eq!(StateMask::state(5), StateMask::FIN_WAIT2);
        assert_eq!(StateMask::state(6), StateMask::TIME_WAIT);
        assert_eq!(StateMask::state(8), StateMask::CLOSE_WAIT);
        assert!(StateMask::CLOSE_WAIT.contains(8));
        assert!(!StateMask::CLOSE_WAIT.contains(1));
        assert!(StateMask::ALL.contains(12));
        assert!(!StateMask::ALL.contains(40));
        assert_eq!(StateMask::state(40), StateMask(1 << 8)); // wrapping, never a panic
    }

    #[test]
    fn parses_ipv4_and_ipv6_replies_until_done() {
        let v4s: SocketAddr = "10.231.0.2:8080".parse().unwrap();
        let v4d: SocketAddr = "10.231.0.1:51000".parse().unwrap();
        let v6s: SocketAddr = "[fd31::2]:443".parse().unwrap();
        let v6d: SocketAddr = "[fd31::1]:40000".parse().unwrap();
        let mut dgram = nlmsg(20, 2, 1, &diag_msg(AF_INET, 8, v4s, v4d, 98765));
        dgram.extend(nlmsg(20, 2, 1, &diag_msg(AF_INET6, 10, v6s, v6d, 1)));
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&dgram, 1, &mut out).unwrap(), Progress::More);
        assert_eq!(
            parse_datagram(&nlmsg(NLMSG_DONE, 2, 1, &0i32.to_ne_bytes()), 1, &mut out).unwrap(),
            Progress::Done
        );
        assert_eq!(
            out,
            vec![
                DiagSocket {
                    family: AF_INET,
                    state: 8,
                    src: v4s,
                    dst: v4d,
                    inode: 98765,
                    uid: 1000,
                    cookie: 0x5566_7788_1122_3344,
                    last_ack_recv_ms: None,
                    expires_ms: 0,
                    fin_timeout_ms: None,
                    timer: 0,
                },
                DiagSocket {
                    family: AF_INET6,
                    state: 10,
                    src: v6s,
                    dst: v6d,
                    inode: 1,
                    uid: 1000,
                    cookie: 0x5566_7788_1122_3344,
                    last_ack_recv_ms: None,
                    expires_ms: 0,
                    fin_timeout_ms: None,
                    timer: 0,
                },
            ]
        );
    }

    /// A `struct rtattr` of type `ty` around `payload`, padded to 4.
    fn rtattr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize(b.len().next_multiple_of(4), 0);
        b
    }

    #[test]
    fn reads_last_ack_recv_from_the_tcp_info_attribute() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut info = vec![0u8; 232];
        info[TCPI_LAST_ACK_RECV..TCPI_LAST_ACK_RECV + 4].copy_from_slice(&4321u32.to_ne_bytes());
        let mut msg = diag_msg(AF_INET, 8, a, a, 7);
        msg.extend(rtattr(1, &[9, 9, 9])); // INET_DIAG_MEMINFO-like, skipped
        msg.extend(rtattr(INET_DIAG_INFO, &info));
        assert_eq!(parse_msg(&msg).unwrap().last_ack_recv_ms, Some(4321));
        // A cut attribute or a short tcp_info gives no value, never a panic.
        let mut cut = diag_msg(AF_INET, 8, a, a, 7);
        cut.extend(&rtattr(INET_DIAG_INFO, &info)[..20]);
        assert_eq!(parse_msg(&cut).unwrap().last_ack_recv_ms, None);
        let mut short = diag_msg(AF_INET, 8, a, a, 7);
        short.extend(rtattr(INET_DIAG_INFO, &info[..40]));
        assert_eq!(parse_msg(&short).unwrap().last_ack_recv_ms, None);
    }

    #[test]
    fn other_sequence_numbers_are_skipped() {
        let a: SocketAddr = "1.2.3.4:5".parse().unwrap();
        let mut dgram = nlmsg(20, 2, 9, &diag_msg(AF_INET, 1, a, a, 1));
        dgram.extend(nlmsg(NLMSG_DONE, 2, 9, &0i32.to_ne_bytes()));
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&dgram, 1, &mut out).unwrap(), Progress::More);
        assert!(out.is_empty());
    }

    #[test]
    fn errors_carry_the_errno() {
        let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
        err.extend(request(AF_INET, 6, StateMask::ALL, 1)[..16].iter());
        let e = parse_datagram(&nlmsg(NLMSG_ERROR, 0, 1, &err), 1, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(e, SockDiagError::Netlink { errno } if errno == libc::EPERM),
            "{e}"
        );
        assert!(e.to_string().contains("not permitted"), "{e}");

        let done = nlmsg(NLMSG_DONE, 2, 1, &(-libc::ENOBUFS).to_ne_bytes());
        let e = parse_datagram(&done, 1, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, SockDiagError::Netlink { errno } if errno == libc::ENOBUFS));

        let intr = nlmsg(NLMSG_DONE, 2 | NLM_F_DUMP_INTR, 1, &0i32.to_ne_bytes());
        let e = parse_datagram(&intr, 1, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, SockDiagError::Interrupted));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let a: SocketAddr = "1.2.3.4:5".parse().unwrap();
        let whole = nlmsg(20, 2, 1, &diag_msg(AF_INET, 1, a, a, 1));
        for cut in 0..whole.len() {
            let mut bad = whole[..cut].to_vec();
            if cut >= 4 {
                // A header that claims the whole message: too long for what is left.
                bad[..4].copy_from_slice(&(whole.len() as u32).to_ne_bytes());
            }
            let r = parse_datagram(&bad, 1, &mut Vec::new());
            assert!(cut < NLMSG_HDRLEN && r.is_ok() || r.is_err(), "cut {cut}");
        }
        let short = nlmsg(20, 2, 1, &[AF_INET, 1, 0, 0]);
        assert!(parse_datagram(&short, 1, &mut Vec::new()).is_err());
        let mut weird = diag_msg(AF_INET, 1, a, a, 1);
        weird[0] = 99;
        assert!(parse_datagram(&nlmsg(20, 2, 1, &weird), 1, &mut Vec::new()).is_err());
    }

    #[test]
    fn a_missing_namespace_is_a_netns_error() {
        let e = tcp_sockets(StateMask::ALL, Some(Path::new("/nonexistent/netns"))).unwrap_err();
        assert!(matches!(e, SockDiagError::Netns { .. }), "{e}");
        // Opens, but setns() refuses it (EINVAL): the errno comes back from the thread.
        let e = tcp_sockets(StateMask::ALL, Some(Path::new("/proc/self/status"))).unwrap_err();
        match e {
            SockDiagError::Netns { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL), "{source}")
            }
            other => panic!("{other}"),
        }
    }

    /// Unprivileged too: sock_diag lists the sockets of the caller's namespace to anyone.
    #[test]
    fn lists_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let socks = tcp_sockets(StateMask::LISTEN, None).unwrap();
        let mine: Vec<_> = socks.iter().filter(|s| s.src.port() == port).collect();
        assert_eq!(mine.len(), 1, "{socks:?}");
        assert_eq!(mine[0].state, 10);
        assert_ne!(mine[0].inode, 0);
        assert_ne!(mine[0].cookie, 0);
        assert!(socks.iter().all(|s| s.state == 10));
    }

    /// Root, real kernel, real processes: a server that never closes what it accepted, in a
    /// network namespace of its own; its CLOSE_WAIT sockets must be listed from inside that
    /// namespace (and not from ours), mapped to its pid and fds, and its cgroup found.
    #[test]
    fn root_sock_diag_lists_a_leaking_servers_close_wait_sockets_with_their_owner() {
        // SAFETY: geteuid() has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "this test needs root, and CI=true says it must run"
            );
            eprintln!("SKIPPED root_sock_diag_...: needs root");
            return;
        }
        let tcpdrive = root::build_tcpdrive();
        let pair = root::NetPair::new();
        let port = 8080;
        let addr = format!("{}:{port}", root::SERVER_IP);

        let mut server = root::Spawned::new(root::in_netns(&pair.server, &tcpdrive).args([
            "serve-leak",
            &addr,
            "--count",
            "3",
        ]));
        let ready = server.line(Duration::from_secs(10));
        let pid: u32 = ready
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("serve-leak said {ready:?}, want READY <pid>"));

        // Bounded by tcpdrive's own per-connection timeout.
        let client = root::in_netns(&pair.client, &tcpdrive)
            .args(["connect", &addr, "--count", "3", "--timeout-ms", "5000"])
            .output()
            .expect("run tcpdrive connect");
        let said = String::from_utf8_lossy(&client.stdout);
        assert!(
            client.status.success() && said.trim().ends_with(" 3 0"),
            "client: {said} {}",
            String::from_utf8_lossy(&client.stderr)
        );
        assert!(server.line(Duration::from_secs(10)).starts_with("LEAKING "));

        let netns = PathBuf::from(format!("/var/run/netns/{}", pair.server));
        let deadline = Instant::now() + Duration::from_secs(10);
        let leaked = loop {
            let socks: Vec<DiagSocket> = tcp_sockets(StateMask::CLOSE_WAIT, Some(&netns))
                .expect("dump the server namespace")
                .into_iter()
                .filter(|s| s.src.port() == port)
                .collect();
            if socks.len() == 3 || Instant::now() > deadline {
                break socks;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(leaked.len(), 3, "CLOSE_WAIT sockets on :{port}: {leaked:?}");
        for s in &leaked {
            assert_eq!(s.state, 8);
            assert_eq!(s.family, libc::AF_INET as u8);
            assert_eq!(s.src.ip().to_string(), root::SERVER_IP);
            assert_eq!(s.dst.ip().to_string(), root::CLIENT_IP);
            assert_eq!(s.uid, 0);
            assert_ne!(s.inode, 0);
            // Since the peer's FIN: well under the 10 s this test waited at most.
            assert!(
                s.last_ack_recv_ms.is_some_and(|ms| ms < 10_000),
                "tcp_info: {s:?}"
            );
        }

        // The calling thread stayed in our namespace: these sockets are not visible here.
        let here = tcp_sockets(StateMask::ALL, None).expect("dump our namespace");
        assert!(
            !here
                .iter()
                .any(|h| leaked.iter().any(|l| l.cookie == h.cookie)),
            "the server namespace's sockets leaked into ours"
        );

        let owners = crate::host::procfd::socket_owners();
        let mut fds = Vec::new();
        for s in &leaked {
            let holders = owners
                .get(&s.inode)
                .unwrap_or_else(|| panic!("no owner for inode {}", s.inode));
            assert_eq!(holders.len(), 1, "{holders:?}");
            assert_eq!(holders[0].pid, pid);
            assert_eq!(holders[0].comm, "tcpdrive");
            fds.push(holders[0].fd);
        }
        fds.sort_unstable();
        fds.dedup();
        assert_eq!(fds.len(), 3, "distinct fds: {fds:?}");

        drop(server);
        drop(pair);
    }

    /// Helpers of the root test: a namespace pair, a child killed on drop, tcpdrive's build.
    mod root {
        use std::io::{BufRead as _, BufReader};
        use std::path::{Path, PathBuf};
        use std::process::{Child, Command, Stdio};
        use std::sync::mpsc;
        use std::time::{Duration, Instant};

        pub const CLIENT_IP: &str = "10.232.0.1";
        pub const SERVER_IP: &str = "10.232.0.2";

        fn ip(args: &[&str]) {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// Two namespaces joined by a veth pair; deleted on drop (also when a test panics).
        pub struct NetPair {
            pub client: String,
            pub server: String,
            created: Vec<String>,
        }

        impl NetPair {
            pub fn new() -> NetPair {
                let pid = std::process::id();
                let mut pair = NetPair {
                    client: format!("nwsd-{pid}-c"),
                    server: format!("nwsd-{pid}-s"),
                    created: Vec::new(),
                };
                for ns in [pair.client.clone(), pair.server.clone()] {
                    ip(&["netns", "add", &ns]);
                    pair.created.push(ns.clone());
                    ip(&["-n", &ns, "link", "set", "lo", "up"]);
                }
                let (c, s) = (pair.client.as_str(), pair.server.as_str());
                ip(&[
                    "-n", c, "link", "add", "sdc0", "type", "veth", "peer", "name", "sds0",
                    "netns", s,
                ]);
                for (ns, dev, addr) in [(c, "sdc0", CLIENT_IP), (s, "sds0", SERVER_IP)] {
                    ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
                    ip(&["-n", ns, "link", "set", dev, "up"]);
                }
                pair
            }
        }

        impl Drop for NetPair {
            fn drop(&mut self) {
                for ns in &self.created {
                    let _ = Command::new("ip")
                        .args(["netns", "del", ns])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }

        /// `ip netns exec NS program`.
        pub fn in_netns(ns: &str, program: &Path) -> Command {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }

        /// A child whose stdout lines arrive on a channel; killed and reaped on drop.
        pub struct Spawned {
            child: Child,
            lines: mpsc::Receiver<String>,
        }

        impl Spawned {
            pub fn new(cmd: &mut Command) -> Spawned {
                let mut child = cmd
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
                let out = child.stdout.take().unwrap();
                let (tx, lines) = mpsc::channel();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
                Spawned { child, lines }
            }

            /// The next stdout line, waiting at most `bound`.
            pub fn line(&mut self, bound: Duration) -> String {
                self.lines
                    .recv_timeout(bound)
                    .unwrap_or_else(|e| panic!("no line from the child within {bound:?}: {e}"))
            }
        }

        impl Drop for Spawned {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }

        /// Builds tcpdrive (`cargo build -p netwatch-tests --bin tcpdrive`), bounded at
        /// 10 minutes, and returns the executable cargo reports.
        pub fn build_tcpdrive() -> PathBuf {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let mut child = Command::new(cargo)
                .current_dir(&workspace)
                .args([
                    "build",
                    "-p",
                    "netwatch-tests",
                    "--bin",
                    "tcpdrive",
                    "--message-format=json",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("run cargo build");
            let out = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                BufReader::new(out)
                    .lines()
                    .map_while(Result::ok)
                    .collect::<Vec<_>>()
            });
            let deadline = Instant::now() + Duration::from_secs(600);
            let status = loop {
                if let Some(status) = child.try_wait().expect("wait for cargo") {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("cargo build of tcpdrive took over 10 minutes");
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            assert!(status.success(), "cargo build of tcpdrive failed");
            reader
                .join()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "tcpdrive")
                .find_map(|v| v["executable"].as_str().map(PathBuf::from))
                .expect("cargo reported no tcpdrive executable")
        }
    }
}
