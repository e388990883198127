//! netwatch's kernel side: two programs per TCP event, a raw tracepoint program (`nwr_*`) that
//! reads the socket through the tracepoint's arguments, and a classic tracepoint program
//! (`nw_*`) that copies the formatted record once. User space attaches one of the two per
//! tracepoint: the raw one where the kernel takes it (the classic path formats the whole
//! record before any program runs, which costs more), else the classic one. Both build the
//! same event, decide, reserve a ring-buffer slot, write and submit.
//!
//! Offsets are not compiled in: user space reads the record layouts from the running kernel's
//! tracefs `format` files and the struct offsets from its BTF, and hands them in as the
//! `*_FIELDS` and `KERNEL_OFFSETS` globals (`.rodata`, frozen at load, so the verifier sees
//! them as constants).
//!
//! Owner attribution: many transitions run in softirq context, where the current task is a
//! bystander (ksoftirqd, swapper, or the peer on loopback). The record's `common_pid` is not
//! usable (the kernel overwrites the first 8 bytes of the record with a pt_regs pointer before
//! running BPF). So the current task is read only at transitions that only a syscall on this
//! very socket can cause (connect, listen, close/shutdown), remembered in `SOCKETS`, and reported
//! with every later event of that socket. Everything else reports what was remembered, or
//! nothing (`tgid == 0`).
//!
//! What lives where:
//! - this file: the maps (`EVENTS`, `SOCKETS`, `STATS`, `STACKS`, `SCRATCH`) and the load-time
//!   globals user space sets, i.e. everything user space finds by name besides the programs,
//!   and the panic handler;
//! - [`programs`]: the tracepoint programs, one file per program (or family of programs),
//!   each with its classic and its raw entry point;
//! - [`record`]: the per-CPU working memory ([`SCRATCH`], one slot per nesting level), the
//!   classic tracepoint record copied into it, and how fields are picked out of it;
//! - [`sock`]: what the raw programs read from the socket (and segment) themselves;
//! - [`helpers`]: what several programs share: kernel reads, counters, the socket's owner,
//!   the kernel-side filter and the ring-buffer write.
//!
//! Every helper is `#[inline(always)]`: a BPF-to-BPF call would add a call frame, and the 6.1
//! verifier counts the stack of all frames together against 512 bytes.
#![no_std]
#![no_main]
// For `core::intrinsics::atomic_xadd` (see `helpers::count`); the crate builds with nightly
// (build-std) anyway.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only atomic add on BPF targets"
)]

mod helpers;
mod programs;
mod record;
mod sock;

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf, StackTrace},
};
use netwatch_common::{
    DEFAULT_RING_BYTES, KernelFilter, KernelOffsets, RawArgs, SOCKETS_MAX_ENTRIES,
    STACKS_MAX_ENTRIES, SockInfo, TpFields, stat,
};

use crate::record::Scratches;

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

/// Each CPU's working memory: one [`Scratch`](record::Scratch) per nesting level, because raw
/// tracepoint programs can interrupt each other (and classic ones) on one CPU.
#[map]
static SCRATCH: PerCpuArray<Scratches> = PerCpuArray::with_max_entries(1, 0);

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
#[unsafe(no_mangle)]
static FIRST_READ_FIELDS: TpFields = TpFields::NONE;
#[unsafe(no_mangle)]
static FIRST_USE_FIELDS: TpFields = TpFields::NONE;
/// What to drop before the ring buffer (`--pid`, ports, family, cgroup).
#[unsafe(no_mangle)]
static FILTER: KernelFilter = KernelFilter::ANY;
/// Struct offsets from the kernel's BTF; `ABSENT32` where BTF did not give them.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets::NONE;
/// How many arguments the raw tracepoints whose argument list changed take on this kernel.
#[unsafe(no_mangle)]
static RAW_ARGS: RawArgs = RawArgs::OLDEST;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach this; it is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}
