//! What netwatch's kernel programs and its user space must agree on, and nothing else:
//! the ring-buffer record, the per-socket map value, the tracepoint field layouts handed in
//! at load time, and the names and indices both sides use to find maps and programs.
//!
//! Every record is `#[repr(C)]` with explicit padding so that the bytes the kernel writes are
//! the bytes user space reads, on any compiler.
#![no_std]

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// What a [`RawEvent`] reports.
pub mod event_kind {
    /// `sock:inet_sock_set_state`: `old_state -> new_state`.
    pub const STATE: u8 = 1;
    /// `tcp:tcp_retransmit_skb`: a segment was retransmitted; `new_state` is the socket state.
    pub const RETRANSMIT: u8 = 2;
    /// `tcp:tcp_retransmit_synack`: a listener re-sent a SYN-ACK (SYN flood / lossy path).
    pub const SYNACK_RETRANSMIT: u8 = 3;
    /// `tcp:tcp_receive_reset`: the peer reset us; `new_state` is the last state we saw.
    pub const RESET_RECEIVED: u8 = 4;
    /// `tcp:tcp_send_reset`: we sent a reset; `aux` holds the kernel's `sk_rst_reason`.
    pub const RESET_SENT: u8 = 5;
    /// `tcp:tcp_destroy_sock`: the kernel freed the socket.
    pub const DESTROY: u8 = 6;
    /// `syscalls:sys_exit_accept4` / `sys_exit_accept`: a process accepted this socket; the
    /// owner is that process.
    pub const ACCEPT: u8 = 7;
    /// `sock:sock_send_length` / `sock:sock_recv_length`: the first send (`aux` = 0) or the
    /// first receive (`aux` = 1) on this socket, in the calling task's context; `stack_id` is
    /// that task's user stack there (the code that uses the socket).
    pub const FIRST_USE: u8 = 8;
}

/// [`RawEvent::aux`] of a `FIRST_USE` event, and the bits of [`SockInfo::used`].
pub mod first_use {
    pub const SEND: u32 = 0;
    pub const RECV: u32 = 1;
    /// `SockInfo::used` bit: the first send was captured.
    pub const SENT: u8 = 1;
    /// `SockInfo::used` bit: the first receive was captured.
    pub const RECEIVED: u8 = 2;
}

/// Bits of [`RawEvent::flags`].
pub mod event_flags {
    /// The owner was read from the current task at this very event (a syscall-only
    /// transition), not inherited from an earlier one.
    pub const OWNER_CAPTURED: u8 = 1;
    /// `aux` holds a value (reset reason, retransmit error) the kernel gave.
    pub const AUX_VALID: u8 = 2;
    /// `dwell_ns` is known: netwatch saw this socket enter its previous state.
    pub const DWELL_KNOWN: u8 = 4;
    /// `bytes_acked`, `bytes_received` and `srtt_us` were read from the socket (at -> CLOSE).
    pub const TCP_INFO: u8 = 8;
    /// `stack_id` names a user stack in the `STACKS` map, captured at connect() or accept().
    pub const STACK_VALID: u8 = 16;
    /// `ACCEPT` and `CLOSE -> SYN_SENT` only: `bytes_acked` holds the word at the user stack
    /// pointer in accept() / connect(): the return address into the caller when the libc
    /// wrapper made no frame of its own, which the frame-pointer walk misses (user space
    /// checks it).
    pub const USER_SP_WORD: u8 = 32;
}

pub const COMM_LEN: usize = 16;

/// One event as the kernel writes it into the ring buffer.
///
/// Addresses are in network byte order (IPv4 in the first 4 bytes), ports in host order
/// (the tracepoints already convert them). `tgid == 0` means the owner is unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Kernel address of the socket: unique while it lives, reused soon after.
    pub skaddr: u64,
    /// Time spent in `old_state`, valid when `DWELL_KNOWN` is set.
    pub dwell_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; COMM_LEN],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub kind: u8,
    pub old_state: u8,
    /// The new state for `STATE`; the socket's state for every other kind (0 if unknown).
    pub new_state: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Reset reason (`RESET_SENT`) or error (`RETRANSMIT`), valid when `AUX_VALID` is set.
    pub aux: u32,
    /// From `struct tcp_sock` at `-> CLOSE`, valid when `TCP_INFO` is set: bytes we sent that
    /// the peer acknowledged, bytes we received, smoothed RTT (µs, as the kernel keeps it:
    /// `srtt_us` holds 8 times the RTT). With `USER_SP_WORD` set (`ACCEPT`, `CLOSE -> SYN_SENT`),
    /// `bytes_acked` holds the word at the user stack pointer instead.
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub srtt_us: u32,
    /// Id in the `STACKS` map of the user stack of the socket's opener (connect() or
    /// accept()), valid when `STACK_VALID` is set.
    pub stack_id: i32,
    /// cgroup v2 id of the owner, read with the owner; 0 = unknown.
    pub cgroup_id: u64,
    /// Inode of the socket's network namespace (`sk->__sk_common.skc_net->ns.inum`, what
    /// `/proc/<pid>/ns/net` and `lsns` show), read once per socket; 0 = unknown.
    pub netns: u32,
    pub _pad2: u32,
}

impl RawEvent {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

/// What the kernel remembers per socket (map `SOCKETS`, keyed by `skaddr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    /// When the socket entered `state` (CLOCK_MONOTONIC ns); 0 = not seen.
    pub state_since_ns: u64,
    /// cgroup v2 id of the owner; 0 = unknown.
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; COMM_LEN],
    /// Id in `STACKS` of the user stack at connect() / accept(); negative = none.
    pub stack_id: i32,
    /// Inode of the socket's network namespace; 0 = not read (yet).
    pub netns: u32,
    pub state: u8,
    /// `first_use::SENT` / `RECEIVED`: the first send / receive was captured (code-path modes
    /// only); 0 again when the address starts a new socket.
    pub used: u8,
    pub _pad: [u8; 6],
}

/// Offset of a tracepoint field that the running kernel does not have.
pub const ABSENT: u16 = u16::MAX;

/// Where each field sits in one tracepoint's record on the running kernel, read from its
/// tracefs `format` file at start-up and handed to the program as a load-time global.
/// A field the kernel lacks is [`ABSENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpFields {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub state: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// `tcp_send_reset` on 6.10+: `enum sk_rst_reason reason`.
    pub reason: u16,
    /// `tcp_retransmit_skb` on 6.12+: `int err`.
    pub err: u16,
    /// `tcp_send_reset` on 6.10+: `__u8 saddr[sizeof(struct sockaddr_in6)]` holding a
    /// sockaddr_in or sockaddr_in6 (family, port, address).
    pub src_sockaddr: u16,
    pub dst_sockaddr: u16,
    /// `syscalls:sys_exit_*`: `long ret`.
    pub ret: u16,
    pub _pad: u16,
}

impl TpFields {
    /// Every field absent: the program returns at once (what a missing tracepoint gets).
    pub const NONE: Self = Self {
        skaddr: ABSENT,
        oldstate: ABSENT,
        newstate: ABSENT,
        state: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        family: ABSENT,
        protocol: ABSENT,
        saddr: ABSENT,
        daddr: ABSENT,
        saddr_v6: ABSENT,
        daddr_v6: ABSENT,
        reason: ABSENT,
        err: ABSENT,
        src_sockaddr: ABSENT,
        dst_sockaddr: ABSENT,
        ret: ABSENT,
        _pad: 0,
    };
}

/// An offset into a kernel struct that the running kernel's BTF did not give.
pub const ABSENT32: u32 = u32::MAX;

/// Byte offsets inside kernel structs, read from the running kernel's BTF
/// (`/sys/kernel/btf/vmlinux`) at start-up; [`ABSENT32`] switches off what needs them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct tcp_sock`: read at `-> CLOSE`.
    pub tcp_bytes_acked: u32,
    pub tcp_bytes_received: u32,
    pub tcp_srtt_us: u32,
    /// The fd -> socket walk at accept(): `task_struct.files`, `files_struct.fdt`,
    /// `fdtable.fd`, `fdtable.max_fds`, `file.private_data`, `socket.sk`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `struct sock_common`, for the endpoints of an accepted socket.
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `struct pt_regs.sp`: the user stack pointer at a syscall's exit.
    pub pt_regs_sp: u32,
    /// `sock_common.skc_net.net` (the socket's `struct net *`) and `net.ns.inum`: the
    /// socket's network namespace.
    pub skc_net: u32,
    pub net_ns_inum: u32,
    /// What the raw tracepoint programs read from the socket themselves, where a classic
    /// tracepoint's record has it already: `sock_common.skc_state` (1 byte),
    /// `sock.sk_protocol` (2), and `inet_sock.inet_sport` (2) and `inet_sock.inet_saddr` (4),
    /// which the classic records take their source port and IPv4 address from.
    pub skc_state: u32,
    pub sk_protocol: u32,
    pub inet_sport: u32,
    pub inet_saddr: u32,
    /// `tcp_send_reset` since 6.10 takes an IPv6 socket's source address from
    /// `inet_sock.pinet6->saddr` (`struct ipv6_pinfo`), and the addresses of a reset sent
    /// without a full socket from the segment: `sk_buff.head`, `.data` (the TCP header) and
    /// `.network_header` (2 bytes, from `head`).
    pub inet_pinet6: u32,
    pub ipv6_pinfo_saddr: u32,
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_network_header: u32,
    /// How many bytes from the start of the socket (its `sock_common`) the raw programs copy
    /// in one read, to pick the `skc_*` fields out of the copy instead of reading each on its
    /// own (one `bpf_probe_read_kernel` costs about as much as copying a hundred bytes); at
    /// most [`SOCK_HEAD_BYTES`], 0 = read every field on its own. A field that ends past it
    /// is read on its own.
    pub sk_head_len: u32,
    /// The same for `inet_sock.inet_saddr` and `inet_sport`, which sit next to each other:
    /// where the copied block starts and its length, at most [`INET_COPY_BYTES`]
    /// (`ABSENT32`/0 = read each on its own).
    pub inet_copy_off: u32,
    pub inet_copy_len: u32,
    pub _pad: u32,
}

/// Room for the copy of a socket's first bytes ([`KernelOffsets::sk_head_len`]): the whole
/// `sock_common` up to the IPv6 addresses (88 bytes on 6.x), with room to spare.
pub const SOCK_HEAD_BYTES: u32 = 128;
/// Room for the copy of `inet_saddr` and `inet_sport` ([`KernelOffsets::inet_copy_len`]).
pub const INET_COPY_BYTES: u32 = 16;

impl KernelOffsets {
    pub const NONE: Self = Self {
        tcp_bytes_acked: ABSENT32,
        tcp_bytes_received: ABSENT32,
        tcp_srtt_us: ABSENT32,
        task_files: ABSENT32,
        files_fdt: ABSENT32,
        fdt_fd: ABSENT32,
        fdt_max_fds: ABSENT32,
        file_private_data: ABSENT32,
        socket_sk: ABSENT32,
        skc_daddr: ABSENT32,
        skc_rcv_saddr: ABSENT32,
        skc_dport: ABSENT32,
        skc_num: ABSENT32,
        skc_family: ABSENT32,
        skc_v6_daddr: ABSENT32,
        skc_v6_rcv_saddr: ABSENT32,
        pt_regs_sp: ABSENT32,
        skc_net: ABSENT32,
        net_ns_inum: ABSENT32,
        skc_state: ABSENT32,
        sk_protocol: ABSENT32,
        inet_sport: ABSENT32,
        inet_saddr: ABSENT32,
        inet_pinet6: ABSENT32,
        ipv6_pinfo_saddr: ABSENT32,
        skb_head: ABSENT32,
        skb_data: ABSENT32,
        skb_network_header: ABSENT32,
        sk_head_len: 0,
        inet_copy_off: ABSENT32,
        inet_copy_len: 0,
        _pad: 0,
    };
}

/// How many `TP_PROTO` arguments the raw tracepoints with a kernel-dependent argument list take
/// on the running kernel (from BTF's `btf_trace_<name>` typedefs), handed to the raw programs as
/// the `RAW_ARGS` global: they read an optional argument only when it exists. A raw program
/// that reads past the last argument is refused when it is attached, and the verifier prunes
/// the read when the count (a frozen `.rodata` constant) says it is not there.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawArgs {
    /// `tcp_send_reset`: `(sk, skb)` before 6.10, `(sk, skb, reason)` since.
    pub send_reset: u32,
    /// `tcp_retransmit_skb`: `(sk, skb)`, or `(sk, skb, err)` on kernels whose tracepoint
    /// reports the error.
    pub retransmit_skb: u32,
}

impl RawArgs {
    /// The oldest argument lists: no optional argument is read.
    pub const OLDEST: Self = Self {
        send_reset: 2,
        retransmit_skb: 2,
    };
}

/// The kernel programs copy this many bytes of each tracepoint record in one read, then pick
/// fields out of the copy. Every record netwatch reads is shorter (the longest,
/// `tcp_send_reset` on 6.18, is 88 bytes); user space refuses a layout that reaches past it.
pub const RECORD_COPY_LEN: usize = 128;

/// Default size of the `EVENTS` ring buffer in bytes, compiled into the kernel object and
/// used by user space as the default `--ring-size`, which overrides it at load time.
/// 4 MiB: ~40,000 events, a third of a second of the heaviest churn this machine drives.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Slots in [`KernelFilter`]'s lists.
pub const FILTER_SLOTS: usize = 8;

/// What the kernel programs may drop before it reaches the ring buffer (`-p`, `-L`, `-D`,
/// `-4`/`-6`, `--cgroup`, and the port bounds of a filter expression). An empty list means
/// "any". Dropped events are counted (`stat::FILTERED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFilter {
    pub pids: [u32; FILTER_SLOTS],
    pub n_pids: u32,
    /// Inclusive (low, high) local-port ranges. A local port of 0 (not chosen yet, at
    /// `CLOSE -> SYN_SENT`) passes.
    pub local_ports: [[u16; 2]; FILTER_SLOTS],
    pub n_local_ports: u32,
    pub remote_ports: [[u16; 2]; FILTER_SLOTS],
    pub n_remote_ports: u32,
    /// `AF_INET` or `AF_INET6`; 0 = both.
    pub family: u16,
    pub _pad: u16,
    pub cgroup_id: u64,
}

impl KernelFilter {
    pub const ANY: Self = Self {
        pids: [0; FILTER_SLOTS],
        n_pids: 0,
        local_ports: [[0; 2]; FILTER_SLOTS],
        n_local_ports: 0,
        remote_ports: [[0; 2]; FILTER_SLOTS],
        n_remote_ports: 0,
        family: 0,
        _pad: 0,
        cgroup_id: 0,
    };
}

/// Indices into the per-CPU `STATS` array.
pub mod stat {
    /// Events a program tried to put in the ring buffer.
    pub const PRODUCED: u32 = 0;
    /// Of those, events that found no room (lost).
    pub const LOST: u32 = 1;
    /// Sockets whose owner could not be remembered because `SOCKETS` was full.
    pub const SOCKETS_FULL: u32 = 2;
    /// Events the kernel filter dropped (not counted in `PRODUCED`).
    pub const FILTERED: u32 = 3;
    /// Records or kernel fields a program could not read (`bpf_probe_read_kernel` failed), or
    /// a program run that found no free scratch space (programs nested deeper on one CPU than
    /// the kernel side has room for): the event is dropped, and counted here rather than
    /// vanishing.
    pub const READ_FAILED: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Names both sides use for maps, globals and programs.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const SOCKETS: &str = "SOCKETS";
    pub const STATS: &str = "STATS";
    /// Global `u64`: wake user space once this many bytes wait in the ring buffer.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    pub const SET_STATE_FIELDS: &str = "SET_STATE_FIELDS";
    pub const RETRANSMIT_FIELDS: &str = "RETRANSMIT_FIELDS";
    pub const SYNACK_FIELDS: &str = "SYNACK_FIELDS";
    pub const RECV_RESET_FIELDS: &str = "RECV_RESET_FIELDS";
    pub const SEND_RESET_FIELDS: &str = "SEND_RESET_FIELDS";
    pub const DESTROY_FIELDS: &str = "DESTROY_FIELDS";
    pub const ACCEPT_FIELDS: &str = "ACCEPT_FIELDS";
    pub const FIRST_READ_FIELDS: &str = "FIRST_READ_FIELDS";
    /// Layout of `sock:sock_send_length` and `sock:sock_recv_length` (the same format).
    pub const FIRST_USE_FIELDS: &str = "FIRST_USE_FIELDS";
    pub const KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";
    /// Global [`RawArgs`](super::RawArgs): argument counts of the raw tracepoints.
    pub const RAW_ARGS: &str = "RAW_ARGS";
    pub const FILTER: &str = "FILTER";
    /// Stack-trace map: user stacks at connect() and accept(), deduplicated by id.
    pub const STACKS: &str = "STACKS";
    /// Global `u32`: non-zero to capture user stacks at connect() and accept().
    pub const CAPTURE_STACKS: &str = "CAPTURE_STACKS";
}

/// Entries of the `STACKS` map: distinct code paths that opened sockets.
pub const STACKS_MAX_ENTRIES: u32 = 16_384;

/// Size of the `SOCKETS` map (per-socket owner and state-entry time) as compiled: user space
/// sizes it at load time from `--max-sockets`, the live TCP sockets netwatch can attribute at
/// once (preallocated, 128 bytes of kernel memory each).
pub const SOCKETS_MAX_ENTRIES: u32 = 65_536;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are #[repr(C)], made only of integers and integer arrays, with every
    // padding byte spelled out as a field, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::RawEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TpFields {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RawArgs {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<RawEvent>(), 136);
        assert_eq!(core::mem::size_of::<SockInfo>(), 56);
        assert_eq!(core::mem::size_of::<KernelFilter>(), 120);
        assert_eq!(core::mem::size_of::<TpFields>(), 36);
        assert_eq!(core::mem::size_of::<KernelOffsets>(), 128);
        assert_eq!(core::mem::size_of::<RawArgs>(), 8);
    }
}
