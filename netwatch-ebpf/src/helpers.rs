//! What more than one program needs, so that each program file holds only its own decisions:
//! reading kernel memory and load-time globals, counting, the socket's owner (capturing it,
//! remembering it, copying it into an event), reading a socket's namespace and close-time
//! counters, the kernel-side filter, and the ring-buffer write.
//!
//! Every function here is `#[inline(always)]`, as it was when all of this was one file: a
//! BPF-to-BPF call would add a call frame, and the 6.1 verifier counts the stack of all frames
//! together against 512 bytes.

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel as probe_read, bpf_probe_read_user,
        generated::{bpf_get_current_comm, bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    programs::tracing::StackIdContext,
};
use netwatch_common::{
    ABSENT32, COMM_LEN, FILTER_SLOTS, RawEvent, SockInfo, event_flags, stat,
    tcp_state::{CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT1, LAST_ACK, LISTEN, SYN_RECV, SYN_SENT},
};

use crate::{CAPTURE_STACKS, EVENTS, FILTER, KERNEL_OFFSETS, SOCKETS, STACKS, STATS, WAKEUP_BYTES};

/// Reads a `T` at `base + off` in kernel memory; `None` when the offset is unknown or the
/// read faults.
#[inline(always)]
pub(crate) fn kread<T: Copy>(base: u64, off: u32) -> Option<T> {
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
pub(crate) fn global<T: Copy>(g: &'static T) -> T {
    // SAFETY: `g` is a reference to an initialised static; a volatile read of it is always valid.
    unsafe { core::ptr::read_volatile(g) }
}

/// The frame-pointer walk starts at the caller's caller when the libc wrapper of the syscall
/// (a leaf) made no frame: hand user space the word at the user stack pointer, which is then
/// the return address into the caller (user space checks that it follows a call).
///
/// User space leaves `pt_regs_sp` absent on kernels without `bpf_task_pt_regs` (before 5.15):
/// the check comes first, so on those kernels the verifier prunes the helper calls as dead
/// code (the offset is a frozen `.rodata` constant) instead of rejecting the program.
#[inline(always)]
pub(crate) fn user_sp_word(ev: &mut RawEvent) {
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
pub(crate) fn user_stack_id<C: StackIdContext>(ctx: &C) -> i32 {
    if global(&CAPTURE_STACKS) == 0 {
        return -1;
    }
    match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as i32,
        Err(_) => -1,
    }
}

/// Adds one to a `STATS` counter, in one atomic add (`lock xadd`): a raw tracepoint program
/// may interrupt another program on the same CPU between a load and a store, and an
/// increment lost that way would break the exact produced = delivered + lost accounting.
/// (`AtomicU64::fetch_add` does not exist for BPF targets, whose atomics Rust does not model.)
#[inline(always)]
pub(crate) fn count(index: u32) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from the per-CPU array lookup and is valid and aligned for
        // this program run; every access to the counters is this atomic add.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
    }
}

/// Counts a read that failed ([`stat::READ_FAILED`]) and stops the program run.
#[inline(always)]
pub(crate) fn read_failed<T>() -> Option<T> {
    count(stat::READ_FAILED);
    None
}

/// Zeroes `*dst` 8 bytes at a time.
///
/// Why: the BPF backend turns a zeroed struct or array of more than a few words into a call
/// of a `memset` subprogram that stores one byte per loop turn (zeroing an event took some 350
/// instructions, 15% of `nwr_set_state`'s time in a profile). Volatile stores keep the
/// compiler from folding these back into such a call.
///
/// # Safety
/// `dst` must be valid for writes of a `T`, 8-aligned, and zero must be a valid `T`.
#[inline(always)]
pub(crate) unsafe fn zero_words<T>(dst: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let d = dst.cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: within `*dst` (whole words, asserted above), which the caller vouches for.
        unsafe { core::ptr::write_volatile(d.add(i), 0) };
        i += 1;
    }
}

/// Copies `*src` to `*dst` 8 bytes at a time, for the same reason as [`zero_words`]: a plain
/// assignment of an event or a `SockInfo` compiles to a byte-at-a-time `memmove` call.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of a `T`, both 8-aligned.
#[inline(always)]
pub(crate) unsafe fn copy_words<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: within `*src` and `*dst` (whole words, asserted above), which the caller
        // vouches for; `T: Copy`, so a bitwise copy is a valid `T`.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Copies a task name between a [`SockInfo`] and a [`RawEvent`] as two words (see
/// [`zero_words`]: a 16-byte array assignment compiles to a byte-at-a-time `memmove` call).
#[inline(always)]
pub(crate) fn copy_comm(dst: &mut [u8; COMM_LEN], src: &[u8; COMM_LEN]) {
    // Both structs keep `comm` at an 8-aligned offset, so the words below are aligned.
    const {
        assert!(core::mem::offset_of!(RawEvent, comm) % 8 == 0);
        assert!(core::mem::offset_of!(SockInfo, comm) % 8 == 0);
        assert!(COMM_LEN == 16);
    };
    // SAFETY: `dst` and `src` are the `comm` fields of a `RawEvent` or `SockInfo` (the only
    // callers), 8-aligned as asserted above, 16 bytes each: two u64 words.
    unsafe {
        let (d, s) = (dst.as_mut_ptr().cast::<u64>(), src.as_ptr().cast::<u64>());
        core::ptr::write_volatile(d, core::ptr::read_volatile(s));
        core::ptr::write_volatile(d.add(1), core::ptr::read_volatile(s.add(1)));
    }
}

/// Starts a new event in place (in a [`Scratch`](crate::record::Scratch), never on the stack).
#[inline(always)]
pub(crate) fn reset_event(ev: &mut RawEvent, kind: u8, skaddr: u64) {
    // SAFETY: `ev` is a valid `RawEvent` (8-aligned: it has u64 fields), all plain data.
    unsafe { zero_words(ev) };
    // SAFETY: a helper without arguments or side effects.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.skaddr = skaddr;
    ev.kind = kind;
    ev.stack_id = -1;
}

/// The current task's name into `comm`, written by the helper itself (it pads with zeroes);
/// aya's `bpf_get_current_comm()` zeroes a buffer of its own first (a `memset` call) and then
/// copies it. All zeroes when the helper fails.
#[inline(always)]
pub(crate) fn current_comm(comm: &mut [u8; COMM_LEN]) {
    // SAFETY: the helper writes at most COMM_LEN bytes into `comm`, which has room for them.
    let ret = unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32) };
    if ret != 0 {
        let mut i = 0;
        while i < COMM_LEN {
            // SAFETY: i < COMM_LEN, inside `comm`.
            unsafe { core::ptr::write_volatile(comm.as_mut_ptr().add(i), 0) };
            i += 1;
        }
    }
}

/// Copies the remembered owner of the socket into the event.
#[inline(always)]
pub(crate) fn owner_from(info: &SockInfo, ev: &mut RawEvent) {
    ev.tgid = info.tgid;
    ev.tid = info.tid;
    copy_comm(&mut ev.comm, &info.comm);
    ev.cgroup_id = info.cgroup_id;
    ev.netns = info.netns;
    if info.stack_id >= 0 {
        ev.stack_id = info.stack_id;
        ev.flags |= event_flags::STACK_VALID;
    }
}

/// Fills the owner and last known state of a socket from `SOCKETS`.
#[inline(always)]
pub(crate) fn known_socket(skaddr: u64, ev: &mut RawEvent) {
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
pub(crate) fn emit(ev: &RawEvent) {
    if !admitted(ev) {
        count(stat::FILTERED);
        return;
    }
    count(stat::PRODUCED);
    match EVENTS.reserve::<RawEvent>(0) {
        Some(mut slot) => {
            // SAFETY: the slot is a reserved, 8-aligned `RawEvent`; `ev` is a valid one.
            unsafe { copy_words(slot.as_mut_ptr(), ev) };
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
pub(crate) fn current_task_owns(old: u8, new: u8) -> bool {
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
pub(crate) fn starts_fresh(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (CLOSE, SYN_SENT) | (CLOSE, LISTEN) | (LISTEN, SYN_RECV)
    )
}

/// The inode of the socket's network namespace (`sk->__sk_common.skc_net.net->ns.inum`), or
/// 0 when the offsets are missing or a read fails. Read once per socket (kept in `SOCKETS`).
#[inline(always)]
pub(crate) fn sock_netns(skaddr: u64) -> u32 {
    let o = &KERNEL_OFFSETS;
    kread::<u64>(skaddr, global(&o.skc_net))
        .and_then(|net| kread::<u32>(net, global(&o.net_ns_inum)))
        .unwrap_or(0)
}

/// Bytes and smoothed RTT from `struct tcp_sock`, for the connection record at close.
#[inline(always)]
pub(crate) fn tcp_info(skaddr: u64, ev: &mut RawEvent) {
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
