//! The one typed event every part of netwatch after the probe works on, decoded once from the
//! kernel's [`RawEvent`]. Its serde form is the JSON-lines schema documented in the README, and
//! the same form is what `--record` files hold, so field names here are a public contract.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netwatch_common::{AF_INET6, RawEvent, event_flags, event_kind, tcp_state};
use serde::{Deserialize, Serialize};

use crate::model::{
    comm::Comm,
    names::{Container, RecordedOwner},
};

/// A TCP state, named as `ss` and the kernel's tracepoints name it (without the `TCP_` prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    /// The state the kernel numbers `n`; `None` for 0 (unknown) or a number this build does
    /// not know.
    pub fn from_kernel(n: u8) -> Option<Self> {
        use TcpState::*;
        Some(match n {
            tcp_state::ESTABLISHED => Established,
            tcp_state::SYN_SENT => SynSent,
            tcp_state::SYN_RECV => SynRecv,
            tcp_state::FIN_WAIT1 => FinWait1,
            tcp_state::FIN_WAIT2 => FinWait2,
            tcp_state::TIME_WAIT => TimeWait,
            tcp_state::CLOSE => Close,
            tcp_state::CLOSE_WAIT => CloseWait,
            tcp_state::LAST_ACK => LastAck,
            tcp_state::LISTEN => Listen,
            tcp_state::CLOSING => Closing,
            tcp_state::NEW_SYN_RECV => NewSynRecv,
            _ => return None,
        })
    }

    /// The kernel's number for the state (`include/net/tcp_states.h`).
    pub fn kernel_number(self) -> u8 {
        use TcpState::*;
        match self {
            Established => tcp_state::ESTABLISHED,
            SynSent => tcp_state::SYN_SENT,
            SynRecv => tcp_state::SYN_RECV,
            FinWait1 => tcp_state::FIN_WAIT1,
            FinWait2 => tcp_state::FIN_WAIT2,
            TimeWait => tcp_state::TIME_WAIT,
            Close => tcp_state::CLOSE,
            CloseWait => tcp_state::CLOSE_WAIT,
            LastAck => tcp_state::LAST_ACK,
            Listen => tcp_state::LISTEN,
            Closing => tcp_state::CLOSING,
            NewSynRecv => tcp_state::NEW_SYN_RECV,
        }
    }

    pub fn name(self) -> &'static str {
        use TcpState::*;
        match self {
            Established => "ESTABLISHED",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            FinWait1 => "FIN_WAIT1",
            FinWait2 => "FIN_WAIT2",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            Listen => "LISTEN",
            Closing => "CLOSING",
            NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A state's name, or `-` when it is not known: how every text output prints states.
pub fn state_label(s: Option<TcpState>) -> &'static str {
    s.map_or("-", TcpState::name)
}

/// `addr:port`, with brackets for IPv6: how every output writes an endpoint (and how the
/// report keys destinations). Pads to a column's width (`{:<21}`). The port is anything that
/// displays: `leaks` writes `*` for a peer's many ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint<P = u16>(pub IpAddr, pub P);

impl<P: fmt::Display> fmt::Display for Endpoint<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Endpoint(addr, port) = self;
        crate::model::pad::pad(f, |w| match addr {
            IpAddr::V4(a) => write!(w, "{a}:{port}"),
            IpAddr::V6(a) => write!(w, "[{a}]:{port}"),
        })
    }
}

/// What happened. The tag is the JSON `kind` field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// A state transition (`sock:inet_sock_set_state`).
    State {
        old_state: Option<TcpState>,
        new_state: Option<TcpState>,
        /// Milliseconds spent in `old_state`; `None` when netwatch did not see it begin.
        ms_in_old: Option<f64>,
        /// At `-> CLOSE` (from `struct tcp_sock`, offsets from BTF): bytes sent and
        /// acknowledged, bytes received, smoothed RTT.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes_sent: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes_received: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        srtt_ms: Option<f64>,
    },
    /// A retransmitted segment (`tcp:tcp_retransmit_skb`).
    Retransmit {
        state: Option<TcpState>,
        /// The transmit error the kernel reports (6.12+; 0 = sent).
        err: Option<i32>,
    },
    /// A listener re-sent a SYN-ACK (`tcp:tcp_retransmit_synack`).
    SynackRetransmit { state: Option<TcpState> },
    /// The peer reset the connection (`tcp:tcp_receive_reset`); `state` is the last state seen.
    ResetReceived { state: Option<TcpState> },
    /// This host sent a reset (`tcp:tcp_send_reset`), with the kernel's reason (6.10+).
    ResetSent {
        state: Option<TcpState>,
        reason: Option<String>,
    },
    /// The kernel freed the socket (`tcp:tcp_destroy_sock`).
    Destroy { state: Option<TcpState> },
    /// A process accepted the socket (`syscalls:sys_exit_accept4`); it is the owner.
    Accept { state: Option<TcpState> },
    /// The socket's first send or first receive (`sock:sock_send_length` /
    /// `sock_recv_length`, code-path modes only), by the process and from the user stack
    /// the event carries: the code that handles the connection.
    FirstUse {
        state: Option<TcpState>,
        call: UseCall,
    },
}

/// Which call a [`EventKind::FirstUse`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UseCall {
    Send,
    Recv,
}

impl EventKind {
    /// A transition with nothing else known (for tests and synthetic streams).
    #[cfg(test)]
    pub fn state(old: TcpState, new: TcpState) -> Self {
        EventKind::State {
            old_state: Some(old),
            new_state: Some(new),
            ms_in_old: None,
            bytes_sent: None,
            bytes_received: None,
            srtt_ms: None,
        }
    }

    /// Short upper-case label for text output.
    pub fn label(&self) -> &'static str {
        match self {
            EventKind::State { .. } => "STATE",
            EventKind::Retransmit { .. } => "RETRANSMIT",
            EventKind::SynackRetransmit { .. } => "SYNACK_RETRANSMIT",
            EventKind::ResetReceived { .. } => "RESET_RECEIVED",
            EventKind::ResetSent { .. } => "RESET_SENT",
            EventKind::Destroy { .. } => "DESTROY",
            EventKind::Accept { .. } => "ACCEPT",
            EventKind::FirstUse {
                call: UseCall::Send,
                ..
            } => "FIRST_SEND",
            EventKind::FirstUse {
                call: UseCall::Recv,
                ..
            } => "FIRST_RECV",
        }
    }

    /// Whether the kernel counted this event as a retransmitted segment (`TcpRetransSegs`):
    /// every SYN-ACK sent again, and every retransmission but the attempts
    /// `__tcp_retransmit_skb` gave up before counting. Since 6.12 the tracepoint fires for
    /// those too (`err` [`NOT_RETRANSMITTED`]): nothing went out, and the kernel tries again
    /// later, which makes a second event. A failure after the count (a firewall's drop, a
    /// full device queue) is a retransmission the network never saw, but the kernel counted
    /// it, and so do we.
    pub fn is_retransmission(&self) -> bool {
        match self {
            EventKind::Retransmit { err, .. } => {
                !err.is_some_and(|e| NOT_RETRANSMITTED.contains(&e))
            }
            EventKind::SynackRetransmit { .. } => true,
            _ => false,
        }
    }
}

/// The errors `__tcp_retransmit_skb` returns before it counts a segment (Linux 6.12+): the
/// previous copy is still in the host's queues (`EBUSY`), the segment is beyond the peer's
/// window (`EAGAIN`), no memory to split it (`ENOMEM`), no route (`EHOSTUNREACH`).
pub const NOT_RETRANSMITTED: [i32; 4] = [
    -libc::EBUSY,
    -libc::EAGAIN,
    -libc::ENOMEM,
    -libc::EHOSTUNREACH,
];

/// One TCP event with its socket, its owner and its endpoints.
///
/// Its serde form is the JSON schema of `--json` and `--record`, less `cgroup` (the owner's
/// cgroup path) and the owner's container (`container_id`, `container`, `pod`, `namespace`):
/// those are not the kernel's, so the writers in `pipeline` add them from the host
/// (see `pipeline::sink::EventJson`), and [`Event::from_json_line`] hands it back separately.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds, as the kernel stamped it.
    pub ts_ns: u64,
    /// Kernel socket address, as hex (`0xffff...`): a JSON number would lose its low bits.
    #[serde(with = "hex_u64")]
    pub sock: u64,
    /// Owner process (tgid); `None` when not known. Never a softirq bystander.
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    /// The owner's command name, inline (no allocation per event).
    pub comm: Option<Comm>,
    /// True when the owner was read at this event (connect, listen, close, shutdown), false
    /// when it was remembered from an earlier one.
    #[serde(default)]
    pub owner_seen_here: bool,
    /// cgroup v2 id of the owner (the inode of its cgroup directory); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Inode of the socket's network namespace (as `/proc/<pid>/ns/net` and `lsns` show it),
    /// read by the kernel once per socket; `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Id in the kernel's `STACKS` map of the user stack that opened the socket (at connect()
    /// or accept()); `None` when none was captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<u32>,
    /// That stack symbolized, innermost frame first (`trace --stacks`, at `accept`,
    /// `CLOSE -> SYN_SENT` and `first_use` events only); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
    /// At `accept` and `CLOSE -> SYN_SENT`: the word at the user stack pointer, maybe the
    /// return address into the function that called accept() / connect() (see `stacks`); not
    /// part of the JSON schema.
    #[serde(skip)]
    pub sp_word: Option<u64>,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// What decoding needs from the running kernel beyond the record itself.
#[derive(Clone, Debug, Default)]
pub struct DecodeContext {
    /// `sk_rst_reason` names from `tcp_send_reset`'s format file (empty before 6.10).
    pub reset_reasons: Vec<(i64, String)>,
}

impl DecodeContext {
    fn reset_reason(&self, code: u32) -> String {
        self.reset_reasons
            .iter()
            .find(|(v, _)| *v == i64::from(code))
            .map_or_else(|| format!("REASON_{code}"), |(_, name)| name.clone())
    }
}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {expected}", expected = RawEvent::SIZE)]
    Size(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
}

/// Copies a ring-buffer record into a [`RawEvent`].
pub fn raw_from_bytes(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    if bytes.len() < RawEvent::SIZE {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the slice holds at least size_of::<RawEvent>() bytes (checked above); RawEvent is
    // #[repr(C)] plain integers (aya::Pod), valid for any bit pattern; read_unaligned makes no
    // alignment assumption about the ring buffer's memory.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) })
}

fn addr(family: Family, bytes: &[u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
    }
}

impl Event {
    /// Whether the kernel captured the opener's user stack at this event: accept(), and
    /// connect() (`CLOSE -> SYN_SENT`).
    pub fn opens_socket(&self) -> bool {
        match &self.kind {
            EventKind::Accept { .. } => true,
            EventKind::State {
                old_state,
                new_state,
                ..
            } => *old_state == Some(TcpState::Close) && *new_state == Some(TcpState::SynSent),
            _ => false,
        }
    }

    /// Whether the kernel captured a user stack at this event: the opener's
    /// ([`Event::opens_socket`]) or the first sender's or receiver's (`FirstUse`).
    pub fn carries_stack(&self) -> bool {
        self.opens_socket() || matches!(self.kind, EventKind::FirstUse { .. })
    }

    /// Decodes one kernel record.
    pub fn decode(raw: &RawEvent, cx: &DecodeContext) -> Result<Self, DecodeError> {
        let family = if raw.family == AF_INET6 {
            Family::Ipv6
        } else {
            Family::Ipv4
        };
        let state = TcpState::from_kernel(raw.new_state);
        let aux_valid = raw.flags & event_flags::AUX_VALID != 0;
        let kind = match raw.kind {
            event_kind::STATE => {
                let tcp = raw.flags & event_flags::TCP_INFO != 0;
                EventKind::State {
                    old_state: TcpState::from_kernel(raw.old_state),
                    new_state: state,
                    ms_in_old: (raw.flags & event_flags::DWELL_KNOWN != 0)
                        .then(|| raw.dwell_ns as f64 / 1e6),
                    bytes_sent: tcp.then_some(raw.bytes_acked),
                    bytes_received: tcp.then_some(raw.bytes_received),
                    // The kernel keeps srtt_us as 8 times the smoothed RTT in µs.
                    srtt_ms: tcp.then(|| f64::from(raw.srtt_us >> 3) / 1000.0),
                }
            }
            event_kind::RETRANSMIT => EventKind::Retransmit {
                state,
                err: aux_valid.then_some(raw.aux as i32),
            },
            event_kind::SYNACK_RETRANSMIT => EventKind::SynackRetransmit { state },
            event_kind::RESET_RECEIVED => EventKind::ResetReceived { state },
            event_kind::RESET_SENT => EventKind::ResetSent {
                state,
                reason: aux_valid.then(|| cx.reset_reason(raw.aux)),
            },
            event_kind::DESTROY => EventKind::Destroy { state },
            event_kind::ACCEPT => EventKind::Accept { state },
            event_kind::FIRST_USE => EventKind::FirstUse {
                state,
                call: if raw.aux == netwatch_common::first_use::RECV {
                    UseCall::Recv
                } else {
                    UseCall::Send
                },
            },
            other => return Err(DecodeError::Kind(other)),
        };
        let known = raw.tgid != 0;
        Ok(Event {
            ts_ns: raw.ts_ns,
            sock: raw.skaddr,
            pid: known.then_some(raw.tgid),
            tid: known.then_some(raw.tid),
            comm: known.then(|| Comm::from_kernel(&raw.comm)),
            owner_seen_here: known && raw.flags & event_flags::OWNER_CAPTURED != 0,
            cgroup_id: (raw.cgroup_id != 0).then_some(raw.cgroup_id),
            netns: (raw.netns != 0).then_some(raw.netns),
            family,
            saddr: addr(family, &raw.saddr),
            sport: raw.sport,
            daddr: addr(family, &raw.daddr),
            dport: raw.dport,
            stack_id: (raw.flags & event_flags::STACK_VALID != 0 && raw.stack_id >= 0)
                .then_some(raw.stack_id as u32),
            stack: Vec::new(),
            sp_word: (raw.flags & event_flags::USER_SP_WORD != 0
                && raw.flags & event_flags::TCP_INFO == 0)
                .then_some(raw.bytes_acked),
            kind,
        })
    }
}

/// An event of nothing known: the buffer a recording's reader reads each event into.
impl Default for Event {
    fn default() -> Self {
        Event {
            ts_ns: 0,
            sock: 0,
            pid: None,
            tid: None,
            comm: None,
            owner_seen_here: false,
            cgroup_id: None,
            netns: None,
            family: Family::Ipv4,
            saddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            sport: 0,
            daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dport: 0,
            stack_id: None,
            stack: Vec::new(),
            sp_word: None,
            kind: EventKind::Destroy { state: None },
        }
    }
}

#[cfg(test)]
impl Event {
    /// A `CLOSE -> SYN_SENT` event at `ts_ns`, for tests that need any event.
    pub fn test_state(ts_ns: u64) -> Self {
        Event {
            ts_ns,
            sock: 1,
            kind: EventKind::state(TcpState::Close, TcpState::SynSent),
            ..Event::default()
        }
    }
}

/// The flat JSON form of an event, read with borrowed strings: replaying a recording reads
/// millions of these, and the derived reader for [`Event`] (flattened, internally tagged)
/// buffers every field first, at several times the cost.
#[derive(Deserialize)]
struct FlatEvent<'a> {
    ts_ns: u64,
    #[serde(borrow)]
    sock: &'a str,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<Comm>,
    #[serde(default)]
    owner_seen_here: bool,
    #[serde(default)]
    cgroup_id: Option<u64>,
    #[serde(default)]
    netns: Option<u32>,
    family: Family,
    #[serde(borrow)]
    saddr: &'a str,
    sport: u16,
    #[serde(borrow)]
    daddr: &'a str,
    dport: u16,
    #[serde(borrow)]
    kind: &'a str,
    #[serde(default)]
    old_state: Option<TcpState>,
    #[serde(default)]
    new_state: Option<TcpState>,
    #[serde(default)]
    ms_in_old: Option<f64>,
    #[serde(default)]
    bytes_sent: Option<u64>,
    #[serde(default)]
    bytes_received: Option<u64>,
    #[serde(default)]
    srtt_ms: Option<f64>,
    #[serde(default)]
    state: Option<TcpState>,
    #[serde(default)]
    err: Option<i32>,
    #[serde(default, borrow)]
    reason: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    call: Option<UseCall>,
    #[serde(default)]
    stack_id: Option<u32>,
    #[serde(default)]
    stack: Vec<String>,
    /// The owner's cgroup path as the live run saw it (see [`crate::host::cgroup::owner_cgroup`]).
    #[serde(default, borrow)]
    cgroup: Option<std::borrow::Cow<'a, str>>,
    /// The owner's container as the live run named it (see
    /// [`crate::model::names::Container`]).
    #[serde(default, borrow)]
    container_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    container: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    pod: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    namespace: Option<std::borrow::Cow<'a, str>>,
}

/// Why a JSON line is not an event.
#[derive(Debug, thiserror::Error)]
pub enum JsonEventError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("`{field}` is not valid: {value:?}")]
    Field { field: &'static str, value: String },
}

impl Event {
    /// Parses one JSON line of the documented schema (what `--json` and `--record` write): the
    /// event, and the owner's cgroup path and container the writer saw, when the line has them.
    pub fn from_json_line(line: &[u8]) -> Result<(Event, RecordedOwner), JsonEventError> {
        let f: FlatEvent<'_> = serde_json::from_slice(line)?;
        let bad = |field: &'static str, value: &str| JsonEventError::Field {
            field,
            value: value.to_string(),
        };
        let digits = f.sock.strip_prefix("0x").unwrap_or(f.sock);
        let sock = u64::from_str_radix(digits, 16).map_err(|_| bad("sock", f.sock))?;
        let saddr = f.saddr.parse().map_err(|_| bad("saddr", f.saddr))?;
        let daddr = f.daddr.parse().map_err(|_| bad("daddr", f.daddr))?;
        let state = f.state;
        let kind = match f.kind {
            "state" => EventKind::State {
                old_state: f.old_state,
                new_state: f.new_state,
                ms_in_old: f.ms_in_old,
                bytes_sent: f.bytes_sent,
                bytes_received: f.bytes_received,
                srtt_ms: f.srtt_ms,
            },
            "retransmit" => EventKind::Retransmit { state, err: f.err },
            "synack_retransmit" => EventKind::SynackRetransmit { state },
            "reset_received" => EventKind::ResetReceived { state },
            "reset_sent" => EventKind::ResetSent {
                state,
                reason: f.reason.map(|r| r.into_owned()),
            },
            "destroy" => EventKind::Destroy { state },
            "accept" => EventKind::Accept { state },
            "first_use" => EventKind::FirstUse {
                state,
                call: f.call.ok_or_else(|| bad("call", "missing"))?,
            },
            other => return Err(bad("kind", other)),
        };
        let owned = |c: Option<std::borrow::Cow<'_, str>>| c.map(|c| c.into_owned());
        let owner = RecordedOwner {
            cgroup: owned(f.cgroup),
            container: f.container_id.map(|id| Container {
                id: id.into_owned(),
                name: owned(f.container),
                pod: owned(f.pod),
                namespace: owned(f.namespace),
            }),
        };
        let event = Event {
            ts_ns: f.ts_ns,
            sock,
            pid: f.pid,
            tid: f.tid,
            comm: f.comm,
            owner_seen_here: f.owner_seen_here,
            cgroup_id: f.cgroup_id,
            netns: f.netns,
            family: f.family,
            saddr,
            sport: f.sport,
            daddr,
            dport: f.dport,
            stack_id: f.stack_id,
            stack: f.stack,
            sp_word: None,
            kind,
        };
        Ok((event, owner))
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        let digits = s.strip_prefix("0x").unwrap_or(&s);
        u64::from_str_radix(digits, 16).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use netwatch_common::COMM_LEN;

    use super::*;

    #[test]
    fn retransmissions_are_what_the_kernel_counted() {
        let rtx = |err| EventKind::Retransmit { state: None, err }.is_retransmission();
        // Sent, a kernel without `err`, and failures after the count: counted.
        for err in [
            Some(0),
            None,
            Some(-libc::EPERM),
            Some(-libc::ENOBUFS),
            Some(1),
        ] {
            assert!(rtx(err), "{err:?}");
        }
        // Given up before the count: not sent, tried again later.
        for e in [libc::EBUSY, libc::EAGAIN, libc::ENOMEM, libc::EHOSTUNREACH] {
            assert!(!rtx(Some(-e)), "{e}");
        }
        assert!(EventKind::SynackRetransmit { state: None }.is_retransmission());
        let state = EventKind::state(TcpState::Established, TcpState::FinWait1);
        assert!(!state.is_retransmission());
    }

    /// IPv6 in brackets, and padded to a column as the string it writes would be.
    #[test]
    fn endpoints_read_addr_port_and_fill_their_column() {
        let v4 = Endpoint("10.0.0.1".parse().unwrap(), 80);
        let v6 = Endpoint("2001:db8::1".parse().unwrap(), 443);
        assert_eq!(v4.to_string(), "10.0.0.1:80");
        assert_eq!(v6.to_string(), "[2001:db8::1]:443");
        assert_eq!(
            format!("{v4:<14}|{v6:>19}|"),
            "10.0.0.1:80   |  [2001:db8::1]:443|"
        );
        assert_eq!(format!("{v6:<3}|"), "[2001:db8::1]:443|", "never cut");
        let any_port = Endpoint(v4.0, "*");
        assert_eq!(any_port.to_string(), "10.0.0.1:*");
    }

    fn raw(kind: u8) -> RawEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        RawEvent {
            ts_ns: 5_000_000_000,
            skaddr: 0xffff_8881_0000_1234,
            dwell_ns: 1_500_000,
            tgid: 4242,
            tid: 4243,
            comm,
            saddr,
            daddr,
            sport: 51234,
            dport: 80,
            family: netwatch_common::AF_INET,
            kind,
            old_state: tcp_state::SYN_SENT,
            new_state: tcp_state::ESTABLISHED,
            flags: event_flags::DWELL_KNOWN,
            _pad: [0; 2],
            aux: 0,
            bytes_acked: 0,
            bytes_received: 0,
            srtt_us: 0,
            stack_id: -1,
            cgroup_id: 77,
            netns: 4026531840,
            _pad2: 0,
        }
    }

    #[test]
    fn state_names_match_the_kernel_numbering() {
        let names: Vec<_> = (1..=12)
            .map(|n| TcpState::from_kernel(n).map(TcpState::name))
            .collect();
        // The order of include/net/tcp_states.h.
        let expected = [
            "ESTABLISHED",
            "SYN_SENT",
            "SYN_RECV",
            "FIN_WAIT1",
            "FIN_WAIT2",
            "TIME_WAIT",
            "CLOSE",
            "CLOSE_WAIT",
            "LAST_ACK",
            "LISTEN",
            "CLOSING",
            "NEW_SYN_RECV",
        ];
        assert_eq!(names, expected.map(Some));
        for n in 1..=12 {
            assert_eq!(
                TcpState::from_kernel(n).map(TcpState::kernel_number),
                Some(n)
            );
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(13), None);
    }

    #[test]
    fn decodes_a_transition_with_owner_tuple_and_dwell() {
        let ev = Event::decode(&raw(event_kind::STATE), &DecodeContext::default()).unwrap();
        assert_eq!(ev.pid, Some(4242));
        assert_eq!(ev.comm.as_deref(), Some("curl"));
        assert!(!ev.owner_seen_here);
        assert_eq!(ev.saddr, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ev.daddr, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((ev.sport, ev.dport), (51234, 80));
        assert_eq!((ev.cgroup_id, ev.netns), (Some(77), Some(4026531840)));
        assert_eq!(
            ev.kind,
            EventKind::State {
                old_state: Some(TcpState::SynSent),
                new_state: Some(TcpState::Established),
                ms_in_old: Some(1.5),
                bytes_sent: None,
                bytes_received: None,
                srtt_ms: None,
            }
        );
    }

    #[test]
    fn tcp_info_at_close_decodes_bytes_and_srtt() {
        let mut r = raw(event_kind::STATE);
        r.new_state = tcp_state::CLOSE;
        r.flags |= event_flags::TCP_INFO;
        r.bytes_acked = 1234;
        r.bytes_received = 99;
        r.srtt_us = 8 * 2500;
        let ev = Event::decode(&r, &DecodeContext::default()).unwrap();
        let EventKind::State {
            bytes_sent,
            bytes_received,
            srtt_ms,
            ..
        } = ev.kind
        else {
            panic!("not a state event")
        };
        assert_eq!(
            (bytes_sent, bytes_received, srtt_ms),
            (Some(1234), Some(99), Some(2.5))
        );
    }

    #[test]
    fn accept_events_decode() {
        let mut r = raw(event_kind::ACCEPT);
        r.flags = event_flags::OWNER_CAPTURED;
        let ev = Event::decode(&r, &DecodeContext::default()).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::Accept {
                state: Some(TcpState::Established)
            }
        );
        assert!(ev.owner_seen_here);
    }

    #[test]
    fn unknown_owner_and_dwell_decode_to_none() {
        let mut r = raw(event_kind::STATE);
        r.tgid = 0;
        r.flags = 0;
        let ev = Event::decode(&r, &DecodeContext::default()).unwrap();
        assert_eq!((ev.pid, ev.tid, ev.comm), (None, None, None));
        assert!(matches!(
            ev.kind,
            EventKind::State {
                ms_in_old: None,
                ..
            }
        ));
    }

    #[test]
    fn ipv6_addresses_use_all_sixteen_bytes() {
        let mut r = raw(event_kind::RETRANSMIT);
        r.family = AF_INET6;
        r.saddr = "fd31::1".parse::<Ipv6Addr>().unwrap().octets();
        let ev = Event::decode(&r, &DecodeContext::default()).unwrap();
        assert_eq!(ev.family, Family::Ipv6);
        assert_eq!(ev.saddr, "fd31::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn reset_reason_is_named_from_the_kernel_table() {
        let mut r = raw(event_kind::RESET_SENT);
        r.flags = event_flags::AUX_VALID;
        r.aux = 1;
        let cx = DecodeContext {
            reset_reasons: vec![(0, "NOT_SPECIFIED".into()), (1, "NO_SOCKET".into())],
        };
        let ev = Event::decode(&r, &cx).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::ResetSent {
                state: Some(TcpState::Established),
                reason: Some("NO_SOCKET".into())
            }
        );
        r.aux = 99;
        let ev = Event::decode(&r, &cx).unwrap();
        assert!(
            matches!(ev.kind, EventKind::ResetSent { reason: Some(ref s), .. } if s == "REASON_99")
        );
    }

    #[test]
    fn first_use_events_decode_their_call_and_carry_a_stack() {
        let mut r = raw(event_kind::FIRST_USE);
        r.flags = event_flags::OWNER_CAPTURED | event_flags::AUX_VALID | event_flags::STACK_VALID;
        r.stack_id = 12;
        r.aux = netwatch_common::first_use::RECV;
        let ev = Event::decode(&r, &DecodeContext::default()).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::FirstUse {
                state: Some(TcpState::Established),
                call: UseCall::Recv
            }
        );
        assert_eq!((ev.kind.label(), ev.stack_id), ("FIRST_RECV", Some(12)));
        assert!(ev.carries_stack() && !ev.opens_socket());
        r.aux = netwatch_common::first_use::SEND;
        let ev = Event::decode(&r, &DecodeContext::default()).unwrap();
        assert_eq!(ev.kind.label(), "FIRST_SEND");
        let line = serde_json::to_string(&ev).unwrap();
        assert!(line.contains(r#""kind":"first_use""#) && line.contains(r#""call":"send""#));
        // A first_use line without its call is refused, naming the field.
        let bad = line.replace(r#","call":"send""#, "");
        let e = Event::from_json_line(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("`call`"), "{e}");
    }

    #[test]
    fn the_fast_reader_reads_every_kind_like_the_derived_one() {
        let cx = DecodeContext {
            reset_reasons: vec![(1, "NO_SOCKET".into())],
        };
        for kind in 1..=8 {
            let mut r = raw(kind);
            r.flags = event_flags::AUX_VALID | event_flags::TCP_INFO | event_flags::DWELL_KNOWN;
            r.aux = 1;
            r.comm[..5].copy_from_slice(b"a\"b\\c");
            let ev = Event::decode(&r, &cx).unwrap();
            let line = serde_json::to_string(&ev).unwrap();
            assert_eq!(
                Event::from_json_line(line.as_bytes()).unwrap(),
                (ev.clone(), RecordedOwner::default()),
                "{line}"
            );
            let derived: Event = serde_json::from_str(&line).unwrap();
            assert_eq!(derived, ev);
        }
        let err = Event::from_json_line(br#"{"ts_ns":1,"sock":"0xzz","pid":null,"tid":null,"comm":null,"family":"ipv4","saddr":"1.2.3.4","sport":1,"daddr":"1.2.3.4","dport":2,"kind":"state"}"#).unwrap_err();
        assert_eq!(err.to_string(), "`sock` is not valid: \"0xzz\"");
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(raw_from_bytes(&[0u8; 10]), Err(DecodeError::Size(10)));
        assert_eq!(
            Event::decode(&raw(77), &DecodeContext::default()),
            Err(DecodeError::Kind(77))
        );
    }

    #[test]
    fn a_recorded_container_comes_back_beside_the_event() {
        let ev = Event::decode(&raw(event_kind::STATE), &DecodeContext::default()).unwrap();
        let mut json = serde_json::to_value(&ev).unwrap();
        let id = "ab".repeat(32);
        json["container_id"] = id.as_str().into();
        let (_, owner) = Event::from_json_line(json.to_string().as_bytes()).unwrap();
        assert_eq!(owner.container, Some(Container::unnamed(&id)));
        json["container"] = "web".into();
        json["pod"] = "shop-7f".into();
        json["namespace"] = "prod".into();
        let (back, owner) = Event::from_json_line(json.to_string().as_bytes()).unwrap();
        assert_eq!(back, ev);
        let c = owner.container.unwrap();
        assert_eq!(c.label(), "prod/shop-7f/web");
        // Names without an id are no container (no writer makes such a line).
        json.as_object_mut().unwrap().remove("container_id");
        let (_, owner) = Event::from_json_line(json.to_string().as_bytes()).unwrap();
        assert_eq!(owner.container, None);
    }

    #[test]
    fn a_recorded_cgroup_comes_back_beside_the_event() {
        let ev = Event::decode(&raw(event_kind::STATE), &DecodeContext::default()).unwrap();
        let mut json = serde_json::to_value(&ev).unwrap();
        assert!(json.get("cgroup").is_none(), "{json}");
        json["cgroup"] = "/system.slice/shop.service".into();
        let (back, owner) = Event::from_json_line(json.to_string().as_bytes()).unwrap();
        let cgroup = owner.cgroup;
        assert_eq!(back, ev);
        assert_eq!(cgroup.as_deref(), Some("/system.slice/shop.service"));
        // The derived reader ignores the key.
        let derived: Event = serde_json::from_value(json).unwrap();
        assert_eq!(derived, ev);
    }

    #[test]
    fn an_unknown_cgroup_id_is_absent_not_null() {
        let mut ev = Event::test_state(1);
        ev.cgroup_id = None;
        let json = serde_json::to_value(&ev).unwrap();
        assert!(json.get("cgroup_id").is_none(), "{json}");
        let (back, _) = Event::from_json_line(json.to_string().as_bytes()).unwrap();
        assert_eq!(back, ev);
        ev.cgroup_id = Some(7);
        assert_eq!(serde_json::to_value(&ev).unwrap()["cgroup_id"], 7);
    }

    #[test]
    fn json_form_is_flat_and_round_trips() {
        let ev = Event::decode(&raw(event_kind::STATE), &DecodeContext::default()).unwrap();
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["kind"], "state");
        assert_eq!(json["sock"], "0xffff888100001234");
        assert_eq!(json["old_state"], "SYN_SENT");
        assert_eq!(json["new_state"], "ESTABLISHED");
        assert_eq!(json["pid"], 4242);
        assert_eq!(json["family"], "ipv4");
        let back: Event = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, ev);
        let (fast, _) = Event::from_json_line(json.to_string().as_bytes()).unwrap();
        assert_eq!(fast, ev);
    }
}
