//! netwatch's kernel side: one classic tracepoint program per TCP event, each of which copies
//! its record once, decides, reserves a ring-buffer slot, writes and submits.
//!
//! Field offsets are not compiled in: user space reads them from the running kernel's tracefs
//! `format` files and hands them in as the `*_FIELDS` globals (`.rodata`, frozen at load, so the
//! verifier sees them as constants).
//!
//! Owner attribution: many transitions run in softirq context, where the current task is a
//! bystander (ksoftirqd, swapper, or the peer on loopback). The record's `common_pid` is not
//! usable (the kernel overwrites the first 8 bytes of the record with a pt_regs pointer before
//! running BPF). So the current task is read only at transitions that only a syscall on this
//! very socket can cause (connect, listen, close/shutdown), remembered in `SOCKETS`, and reported
//! with every later event of that socket. Everything else reports what was remembered, or
//! nothing (`tgid == 0`).
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel as probe_read, bpf_probe_read_user,
        generated::{
            bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs,
        },
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{TracePointContext, tracing::StackIdContext as _},
};
use netwatch_common::{
    ABSENT, ABSENT32, AF_INET, AF_INET6, COMM_LEN, FILTER_SLOTS, IPPROTO_TCP, KernelFilter,
    KernelOffsets, RECORD_COPY_LEN, RawEvent, SOCKETS_MAX_ENTRIES, STACKS_MAX_ENTRIES, SockInfo,
    TpFields, event_flags, event_kind, stat,
    tcp_state::{CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT1, LAST_ACK, LISTEN, SYN_RECV, SYN_SENT},
};

/// Default ring size; user space overrides it at load time (`--ring-size`).
const DEFAULT_RING_BYTES: u32 = 4 << 20;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-socket owner, current state and the time it was entered, keyed by kernel address.
/// A plain preallocated hash, not an LRU: entries leave at `tcp_destroy_sock`, so they live
/// exactly as long as their sockets, and a full table is counted (`SOCKETS_FULL`) rather than
/// silently evicting the owner of some old, possibly leaking, socket. (An LRU map also measured
/// no cheaper here.)
#[map]
static SOCKETS: HashMap<u64, SockInfo> = HashMap::with_max_entries(SOCKETS_MAX_ENTRIES, 0);

/// Per-CPU counters, indexed by `netwatch_common::stat`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// User stacks of the tasks that opened sockets (connect() and accept()); the map itself
/// deduplicates them by id, which `SockInfo` and `RawEvent` carry.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(STACKS_MAX_ENTRIES, 0);

/// Non-zero: capture user stacks at connect() and accept() (user space may switch it off).
#[unsafe(no_mangle)]
static CAPTURE_STACKS: u32 = 1;

/// Wake the reader once this many bytes wait; below it the reader's own timer drains the ring.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = (DEFAULT_RING_BYTES / 4) as u64;

#[unsafe(no_mangle)]
static SET_STATE_FIELDS: TpFields = TpFields::NONE;
#[unsafe(no_mangle)]
static RETRANSMIT_FIELDS: TpFields = TpFields::NONE;
#[unsafe(no_mangle)]
static SYNACK_FIELDS: TpFields = TpFields::NONE;
#[unsafe(no_mangle)]
static RECV_RESET_FIELDS: TpFields = TpFields::NONE;
#[unsafe(no_mangle)]
static SEND_RESET_FIELDS: TpFields = TpFields::NONE;
#[unsafe(no_mangle)]
static DESTROY_FIELDS: TpFields = TpFields::NONE;
#[unsafe(no_mangle)]
static ACCEPT_FIELDS: TpFields = TpFields::NONE;
/// What to drop before the ring buffer (`--pid`, ports, family, cgroup).
#[unsafe(no_mangle)]
static FILTER: KernelFilter = KernelFilter::ANY;
/// Struct offsets from the kernel's BTF; `ABSENT32` where BTF did not give them.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets::NONE;

/// Reads a `T` at `base + off` in kernel memory; `None` when the offset is unknown or the
/// read faults.
#[inline(always)]
fn kread<T: Copy>(base: u64, off: u32) -> Option<T> {
    if off == ABSENT32 || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel never faults the kernel: an invalid address makes it
    // return an error, which becomes `None`. The offset comes from the running kernel's BTF.
    unsafe { probe_read((base + u64::from(off)) as *const T) }.ok()
}

/// Reads a load-time global. `read_volatile` keeps the compiler from folding the compiled-in
/// default into the code: the value must come from `.rodata` as user space set it. Read large
/// globals field by field (`global(&FILTER.n_pids)`): copying one whole costs stack, and the
/// BPF stack is 512 bytes.
#[inline(always)]
fn global<T: Copy>(g: &'static T) -> T {
    // SAFETY: `g` is a reference to an initialised static; a volatile read of it is always valid.
    unsafe { core::ptr::read_volatile(g) }
}

/// One tracepoint record, copied once from the kernel's trace buffer into [`Scratch`].
#[repr(C)]
struct Record {
    buf: [u8; RECORD_COPY_LEN],
}

/// The per-CPU working memory of one program run: the copied record and the event being
/// built. Kept out of the BPF stack because older verifiers (6.1) count the stack of every
/// call frame together against 512 bytes, and these two alone take 264.
#[repr(C)]
struct Scratch {
    rec: Record,
    ev: RawEvent,
}

/// One [`Scratch`] per CPU. Classic tracepoint programs never nest on one CPU (the kernel's
/// per-CPU `bpf_prog_active` guard skips a program that would), so one slot is enough.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's [`Scratch`], with the record of `ctx` copied into it; `None` (counted) when the
/// copy fails.
#[inline(always)]
fn scratch_with_record(ctx: &TracePointContext) -> Option<&'static mut Scratch> {
    let Some(p) = SCRATCH.get_ptr_mut(0) else {
        count(stat::READ_FAILED);
        return None;
    };
    // SAFETY: the pointer comes from the per-CPU array lookup of index 0, which always exists,
    // and is valid for this program run; no other program uses this CPU's slot meanwhile
    // (classic tracepoint programs do not nest on one CPU).
    let s = unsafe { &mut *p };
    // SAFETY: ctx points at the tracepoint's record inside the per-CPU perf trace buffer
    // (PERF_MAX_TRACE_SIZE = 8 KiB), so RECORD_COPY_LEN bytes from it are readable; the
    // helper faults safely (returns an error) if not, and writes at most RECORD_COPY_LEN
    // bytes into `buf`, which has room for them.
    let ret = unsafe {
        bpf_probe_read_kernel(
            s.rec.buf.as_mut_ptr().cast::<c_void>(),
            RECORD_COPY_LEN as u32,
            ctx.as_ptr().cast_const(),
        )
    };
    if ret != 0 {
        count(stat::READ_FAILED);
        return None;
    }
    Some(s)
}

impl Record {
    /// The field at `off`, or `None` when the kernel lacks it ([`ABSENT`]).
    #[inline(always)]
    fn get<T: Copy>(&self, off: u16) -> Option<T> {
        let off = off as usize;
        if off == ABSENT as usize || off + core::mem::size_of::<T>() > RECORD_COPY_LEN {
            return None;
        }
        // SAFETY: the bounds check above keeps the read inside `buf`; `T` is a plain integer
        // or byte array, valid for any bytes; `read_unaligned` needs no alignment.
        Some(unsafe { core::ptr::read_unaligned(self.buf.as_ptr().add(off) as *const T) })
    }

    /// Fills family, addresses and ports from the classic `family/sport/dport/saddr/daddr/
    /// saddr_v6/daddr_v6` fields, or from the sockaddr fields `tcp_send_reset` has on 6.10+.
    #[inline(always)]
    fn tuple(&self, f: &TpFields, ev: &mut RawEvent) {
        if f.src_sockaddr != ABSENT {
            self.sockaddr(f.src_sockaddr, &mut ev.family, &mut ev.sport, &mut ev.saddr);
            self.sockaddr(f.dst_sockaddr, &mut ev.family, &mut ev.dport, &mut ev.daddr);
            return;
        }
        ev.family = self.get::<u16>(f.family).unwrap_or(0);
        ev.sport = self.get::<u16>(f.sport).unwrap_or(0);
        ev.dport = self.get::<u16>(f.dport).unwrap_or(0);
        if ev.family == AF_INET6 {
            if let Some(a) = self.get::<[u8; 16]>(f.saddr_v6) {
                ev.saddr = a;
            }
            if let Some(a) = self.get::<[u8; 16]>(f.daddr_v6) {
                ev.daddr = a;
            }
        } else {
            if let Some(a) = self.get::<[u8; 4]>(f.saddr) {
                ev.saddr[..4].copy_from_slice(&a);
            }
            if let Some(a) = self.get::<[u8; 4]>(f.daddr) {
                ev.daddr[..4].copy_from_slice(&a);
            }
        }
    }

    /// A `struct sockaddr_in` / `sockaddr_in6` stored as bytes: family (host order), port
    /// (network order), then the address at 4 (IPv4) or 8 (IPv6).
    #[inline(always)]
    fn sockaddr(&self, off: u16, family: &mut u16, port: &mut u16, addr: &mut [u8; 16]) {
        let Some(fam) = self.get::<u16>(off) else {
            return;
        };
        *family = fam;
        *port = u16::from_be(self.get::<u16>(off.wrapping_add(2)).unwrap_or(0));
        if fam == AF_INET6 {
            if let Some(a) = self.get::<[u8; 16]>(off.wrapping_add(8)) {
                *addr = a;
            }
        } else if fam == AF_INET
            && let Some(a) = self.get::<[u8; 4]>(off.wrapping_add(4))
        {
            addr[..4].copy_from_slice(&a);
        }
    }
}

const EMPTY_SOCK: SockInfo = SockInfo {
    state_since_ns: 0,
    cgroup_id: 0,
    tgid: 0,
    tid: 0,
    comm: [0; COMM_LEN],
    stack_id: -1,
    netns: 0,
    state: 0,
    _pad: [0; 7],
};

/// The frame-pointer walk starts at the caller's caller when the libc wrapper of the syscall
/// (a leaf) made no frame: hand user space the word at the user stack pointer, which is then
/// the return address into the caller (user space checks that it follows a call).
///
/// User space leaves `pt_regs_sp` absent on kernels without `bpf_task_pt_regs` (before 5.15):
/// the check comes first, so on those kernels the verifier prunes the helper calls as dead
/// code (the offset is a frozen `.rodata` constant) instead of rejecting the program.
#[inline(always)]
fn user_sp_word(ev: &mut RawEvent) {
    let sp_off = global(&KERNEL_OFFSETS.pt_regs_sp);
    if sp_off == ABSENT32 {
        return;
    }
    // SAFETY: helpers whose results the verifier types (a BTF task, its user pt_regs); the
    // pointer is only read through bpf_probe_read_kernel (kread).
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if let Some(sp) = kread::<u64>(regs, sp_off)
        // SAFETY: bpf_probe_read_user faults safely on a bad user address.
        && let Ok(word) = unsafe { bpf_probe_read_user(sp as *const u64) }
    {
        ev.bytes_acked = word;
        ev.flags |= event_flags::USER_SP_WORD;
    }
}

/// The current task's user stack id in `STACKS`, or -1 (switched off, or the capture failed).
#[inline(always)]
fn user_stack_id(ctx: &TracePointContext) -> i32 {
    if global(&CAPTURE_STACKS) == 0 {
        return -1;
    }
    match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as i32,
        Err(_) => -1,
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from the per-CPU array lookup and is valid for this CPU;
        // tracing programs do not nest on one CPU, so a plain increment cannot race.
        unsafe { *p += 1 };
    }
}

/// Starts a new event in place (in [`Scratch`], never on the stack).
#[inline(always)]
fn reset_event(ev: &mut RawEvent, kind: u8, skaddr: u64) {
    *ev = RawEvent {
        // SAFETY: a helper without arguments or side effects.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr,
        dwell_ns: 0,
        tgid: 0,
        tid: 0,
        comm: [0; COMM_LEN],
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        kind,
        old_state: 0,
        new_state: 0,
        flags: 0,
        _pad: [0; 2],
        aux: 0,
        bytes_acked: 0,
        bytes_received: 0,
        srtt_us: 0,
        stack_id: -1,
        cgroup_id: 0,
        netns: 0,
        _pad2: 0,
    };
}

/// Copies the remembered owner of the socket into the event.
#[inline(always)]
fn owner_from(info: &SockInfo, ev: &mut RawEvent) {
    ev.tgid = info.tgid;
    ev.tid = info.tid;
    ev.comm = info.comm;
    ev.cgroup_id = info.cgroup_id;
    ev.netns = info.netns;
    if info.stack_id >= 0 {
        ev.stack_id = info.stack_id;
        ev.flags |= event_flags::STACK_VALID;
    }
}

#[inline(always)]
fn in_ranges(port: u16, ranges: &'static [[u16; 2]; FILTER_SLOTS], n: u32) -> bool {
    let mut i = 0;
    while i < FILTER_SLOTS {
        if i as u32 >= n {
            break;
        }
        if global(&ranges[i][0]) <= port && port <= global(&ranges[i][1]) {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether the user's kernel-side filter lets the event through.
#[inline(always)]
fn admitted(ev: &RawEvent) -> bool {
    let family = global(&FILTER.family);
    if family != 0 && ev.family != family {
        return false;
    }
    let cgroup = global(&FILTER.cgroup_id);
    if cgroup != 0 && ev.cgroup_id != cgroup {
        return false;
    }
    let n_pids = global(&FILTER.n_pids);
    if n_pids > 0 {
        let mut found = false;
        let mut i = 0;
        while i < FILTER_SLOTS {
            if i as u32 >= n_pids {
                break;
            }
            if global(&FILTER.pids[i]) == ev.tgid {
                found = true;
            }
            i += 1;
        }
        if !found {
            return false;
        }
    }
    let n_local = global(&FILTER.n_local_ports);
    if n_local > 0 && ev.sport != 0 && !in_ranges(ev.sport, &FILTER.local_ports, n_local) {
        return false;
    }
    let n_remote = global(&FILTER.n_remote_ports);
    if n_remote > 0 && !in_ranges(ev.dport, &FILTER.remote_ports, n_remote) {
        return false;
    }
    true
}

/// Puts the event in the ring buffer, counting it as produced and, without room, as lost.
/// Wakes the reader only once `WAKEUP_BYTES` wait: below that the reader's timer (a bounded
/// delay) collects the batch, which saves a wakeup per event.
#[inline(always)]
fn emit(ev: &RawEvent) {
    if !admitted(ev) {
        count(stat::FILTERED);
        return;
    }
    count(stat::PRODUCED);
    match EVENTS.reserve::<RawEvent>(0) {
        Some(mut slot) => {
            slot.write(*ev);
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= global(&WAKEUP_BYTES) {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            slot.submit(flags as u64);
        }
        None => count(stat::LOST),
    }
}

/// Transitions only a syscall on this socket can cause (connect, listen, close/shutdown): the
/// current task is then the socket's user.
#[inline(always)]
fn current_task_owns(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (CLOSE, SYN_SENT)
            | (CLOSE, LISTEN)
            | (ESTABLISHED, FIN_WAIT1)
            | (SYN_RECV, FIN_WAIT1)
            | (CLOSE_WAIT, LAST_ACK)
    )
}

/// Transitions that start a new socket life at an address a freed socket may have used.
#[inline(always)]
fn starts_fresh(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (CLOSE, SYN_SENT) | (CLOSE, LISTEN) | (LISTEN, SYN_RECV)
    )
}

/// `sock:inet_sock_set_state`: every TCP state transition (`skaddr, oldstate, newstate,
/// sport, dport, family, protocol, saddr, daddr, saddr_v6, daddr_v6` since 4.16).
#[tracepoint]
pub fn nw_set_state(ctx: TracePointContext) -> u32 {
    try_set_state(&ctx);
    0
}

#[inline(always)]
fn try_set_state(ctx: &TracePointContext) -> Option<()> {
    let f = global(&SET_STATE_FIELDS);
    let Scratch { rec, ev } = scratch_with_record(ctx)?;
    if rec.get::<u16>(f.protocol)? != IPPROTO_TCP {
        return None;
    }
    let skaddr = rec.get::<u64>(f.skaddr)?;
    let old = rec.get::<i32>(f.oldstate)? as u8;
    let new = rec.get::<i32>(f.newstate)? as u8;
    reset_event(ev, event_kind::STATE, skaddr);
    ev.old_state = old;
    ev.new_state = new;
    rec.tuple(&f, ev);

    let fresh = starts_fresh(old, new);
    let existing = SOCKETS.get_ptr_mut(skaddr);
    let mut info = match existing {
        // SAFETY: the pointer comes from the map lookup and is valid for this program run.
        Some(p) if !fresh => unsafe { *p },
        _ => EMPTY_SOCK,
    };
    if info.netns == 0 {
        info.netns = sock_netns(skaddr);
    }
    if info.state_since_ns != 0 && info.state_since_ns <= ev.ts_ns {
        ev.dwell_ns = ev.ts_ns - info.state_since_ns;
        ev.flags |= event_flags::DWELL_KNOWN;
    }
    if current_task_owns(old, new) {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        if tgid != 0 {
            info.tgid = tgid;
            info.tid = pid_tgid as u32;
            info.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
            // SAFETY: a helper without arguments.
            info.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
            ev.flags |= event_flags::OWNER_CAPTURED;
            // connect(): the code path that opened the socket.
            if (old, new) == (CLOSE, SYN_SENT) {
                info.stack_id = user_stack_id(ctx);
                if info.stack_id >= 0 {
                    user_sp_word(ev);
                }
            }
        }
    }
    owner_from(&info, ev);
    if new == CLOSE {
        tcp_info(skaddr, ev);
    }
    // A repeated state (FIN_WAIT1 -> FIN_WAIT1 when close() follows shutdown()) is reported,
    // but the socket has been in that state since it first entered it.
    if old != new || info.state_since_ns == 0 {
        info.state_since_ns = ev.ts_ns;
    }
    info.state = new;
    match existing {
        // Updating in place costs a store; an insert into the LRU map costs far more.
        // SAFETY: as above; the value is plain data and this program is its only writer.
        Some(p) => unsafe { *p = info },
        None => {
            if SOCKETS.insert(skaddr, info, 0).is_err() {
                count(stat::SOCKETS_FULL);
            }
        }
    }
    emit(ev);
    Some(())
}

/// The inode of the socket's network namespace (`sk->__sk_common.skc_net.net->ns.inum`), or
/// 0 when the offsets are missing or a read fails. Read once per socket (kept in `SOCKETS`).
#[inline(always)]
fn sock_netns(skaddr: u64) -> u32 {
    let o = &KERNEL_OFFSETS;
    kread::<u64>(skaddr, global(&o.skc_net))
        .and_then(|net| kread::<u32>(net, global(&o.net_ns_inum)))
        .unwrap_or(0)
}

/// Bytes and smoothed RTT from `struct tcp_sock`, for the connection record at close.
#[inline(always)]
fn tcp_info(skaddr: u64, ev: &mut RawEvent) {
    let o = &KERNEL_OFFSETS;
    if let (Some(acked), Some(received), Some(srtt)) = (
        kread::<u64>(skaddr, global(&o.tcp_bytes_acked)),
        kread::<u64>(skaddr, global(&o.tcp_bytes_received)),
        kread::<u32>(skaddr, global(&o.tcp_srtt_us)),
    ) {
        ev.bytes_acked = acked;
        ev.bytes_received = received;
        ev.srtt_us = srtt;
        ev.flags |= event_flags::TCP_INFO;
    }
}

/// `syscalls:sys_exit_accept4` and `sys_exit_accept` (`__syscall_nr`, `long ret`): in process
/// context, the accepting task is the new socket's owner. `ret` is the new fd; the socket is
/// found through `current->files->fdt->fd[ret]->private_data->sk`, with offsets from BTF.
#[tracepoint]
pub fn nw_accept(ctx: TracePointContext) -> u32 {
    try_accept(&ctx);
    0
}

#[inline(always)]
fn try_accept(ctx: &TracePointContext) -> Option<()> {
    let Scratch { rec, ev } = scratch_with_record(ctx)?;
    let fd = rec.get::<i64>(global(&ACCEPT_FIELDS.ret))?;
    if fd < 0 {
        return None;
    }
    let o = &KERNEL_OFFSETS;
    // SAFETY: a helper without arguments; the task pointer is only dereferenced through
    // bpf_probe_read_kernel (kread).
    let task = unsafe { bpf_get_current_task() };
    let Some(sk) = accepted_sock(task, fd as u32) else {
        count(stat::READ_FAILED);
        return None;
    };
    // Only sockets netwatch follows (TCP, seen in a transition) get an owner.
    let info = SOCKETS.get_ptr_mut(sk)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    reset_event(ev, event_kind::ACCEPT, sk);
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    // SAFETY: a helper without arguments.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.flags |= event_flags::OWNER_CAPTURED;
    ev.stack_id = user_stack_id(ctx);
    if ev.stack_id >= 0 {
        ev.flags |= event_flags::STACK_VALID;
        user_sp_word(ev);
    }
    // SAFETY: the pointer comes from the map lookup and is valid for this program run.
    unsafe {
        (*info).stack_id = ev.stack_id;
        (*info).tgid = ev.tgid;
        (*info).tid = ev.tid;
        (*info).comm = ev.comm;
        (*info).cgroup_id = ev.cgroup_id;
        ev.new_state = (*info).state;
        ev.netns = (*info).netns;
    }
    let family = kread::<u16>(sk, global(&o.skc_family))?;
    ev.family = family;
    ev.sport = kread::<u16>(sk, global(&o.skc_num)).unwrap_or(0);
    ev.dport = u16::from_be(kread::<u16>(sk, global(&o.skc_dport)).unwrap_or(0));
    if family == AF_INET6 {
        ev.saddr = kread::<[u8; 16]>(sk, global(&o.skc_v6_rcv_saddr)).unwrap_or([0; 16]);
        ev.daddr = kread::<[u8; 16]>(sk, global(&o.skc_v6_daddr)).unwrap_or([0; 16]);
    } else {
        if let Some(a) = kread::<[u8; 4]>(sk, global(&o.skc_rcv_saddr)) {
            ev.saddr[..4].copy_from_slice(&a);
        }
        if let Some(a) = kread::<[u8; 4]>(sk, global(&o.skc_daddr)) {
            ev.daddr[..4].copy_from_slice(&a);
        }
    }
    emit(ev);
    Some(())
}

/// `current->files->fdt->fd[fd]->private_data->sk`: the socket behind a new fd, or `None`
/// when a read fails or the fd is out of the table's range.
#[inline(always)]
fn accepted_sock(task: u64, fd: u32) -> Option<u64> {
    let o = &KERNEL_OFFSETS;
    let files = kread::<u64>(task, global(&o.task_files))?;
    let fdt = kread::<u64>(files, global(&o.files_fdt))?;
    let max_fds = kread::<u32>(fdt, global(&o.fdt_max_fds))?;
    if fd >= max_fds {
        return None;
    }
    let fd_array = kread::<u64>(fdt, global(&o.fdt_fd))?;
    let file = kread::<u64>(fd_array, fd.checked_mul(8)?)?;
    let sock = kread::<u64>(file, global(&o.file_private_data))?;
    kread::<u64>(sock, global(&o.socket_sk))
}

/// Fills the owner and last known state of a socket from `SOCKETS`.
#[inline(always)]
fn known_socket(skaddr: u64, ev: &mut RawEvent) {
    if skaddr == 0 {
        return;
    }
    if let Some(p) = SOCKETS.get_ptr(skaddr) {
        // SAFETY: the pointer comes from the map lookup and is valid for this program run.
        let info = unsafe { &*p };
        owner_from(info, ev);
        if ev.new_state == 0 {
            ev.new_state = info.state;
        }
    }
}

/// `tcp:tcp_retransmit_skb` (`skbaddr, skaddr, state, sport, dport, family, saddr, daddr,
/// saddr_v6, daddr_v6` since 4.16; `err` since 6.12).
#[tracepoint]
pub fn nw_retransmit(ctx: TracePointContext) -> u32 {
    try_simple(&ctx, global(&RETRANSMIT_FIELDS), event_kind::RETRANSMIT);
    0
}

/// `tcp:tcp_retransmit_synack` (`skaddr` is the listener, `req` the request socket).
#[tracepoint]
pub fn nw_synack_rtx(ctx: TracePointContext) -> u32 {
    try_simple(&ctx, global(&SYNACK_FIELDS), event_kind::SYNACK_RETRANSMIT);
    0
}

/// `tcp:tcp_receive_reset` (`skaddr, sport, dport, family, saddr.., sock_cookie`; no state
/// field, so the state is the last one `SOCKETS` saw).
#[tracepoint]
pub fn nw_recv_reset(ctx: TracePointContext) -> u32 {
    try_simple(&ctx, global(&RECV_RESET_FIELDS), event_kind::RESET_RECEIVED);
    0
}

/// `tcp:tcp_send_reset` (before 6.10 the classic address fields; since 6.10 `state`,
/// `reason` and sockaddr-typed `saddr`/`daddr`). `skaddr` is NULL for a reset sent for a
/// segment no socket wanted.
#[tracepoint]
pub fn nw_send_reset(ctx: TracePointContext) -> u32 {
    try_simple(&ctx, global(&SEND_RESET_FIELDS), event_kind::RESET_SENT);
    0
}

/// `tcp:tcp_destroy_sock`: the socket is freed; its `SOCKETS` entry goes with it.
#[tracepoint]
pub fn nw_destroy_sock(ctx: TracePointContext) -> u32 {
    try_simple(&ctx, global(&DESTROY_FIELDS), event_kind::DESTROY);
    0
}

#[inline(always)]
fn try_simple(ctx: &TracePointContext, f: TpFields, kind: u8) -> Option<()> {
    let Scratch { rec, ev } = scratch_with_record(ctx)?;
    let skaddr = rec.get::<u64>(f.skaddr)?;
    reset_event(ev, kind, skaddr);
    if let Some(state) = rec.get::<i32>(f.state) {
        ev.new_state = state as u8;
    }
    if let Some(reason) = rec.get::<u32>(f.reason) {
        ev.aux = reason;
        ev.flags |= event_flags::AUX_VALID;
    } else if let Some(err) = rec.get::<i32>(f.err) {
        ev.aux = err as u32;
        ev.flags |= event_flags::AUX_VALID;
    }
    rec.tuple(&f, ev);
    known_socket(skaddr, ev);
    if kind == event_kind::DESTROY {
        let seen = SOCKETS.remove(skaddr).is_ok();
        // A socket that never left CLOSE (socket() then close()) is noise, not a connection.
        if !seen && ev.sport == 0 && ev.dport == 0 {
            return None;
        }
    }
    emit(ev);
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach this; it is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}
