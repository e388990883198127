//! `nw_first_read`: the owner of an accepted socket, learnt at its first read instead of at
//! accept(), in the modes that do not ask for code paths.
//!
//! Why: any program on a `syscalls:*` tracepoint (`nw_accept`) switches every task on the host
//! to the slow syscall path, about +20% on every syscall of every process. `tcp_rcv_space_adjust`
//! runs in the reading task's context, from tcp_recvmsg(), and costs only TCP reads a socket
//! look-up. A server that never reads a socket gets its owner at close() instead.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    FIRST_READ_FIELDS, SCRATCH, SOCKETS,
    helpers::{count, global},
};
use netwatch_common::{ABSENT, stat};

/// `tcp:tcp_rcv_space_adjust` (`skaddr, sport, dport, family, saddr.., sock_cookie`, the
/// `tcp_event_sk` layout): only `skaddr` is read (8 bytes, not the whole record), because this
/// runs at every read of every TCP socket.
#[tracepoint]
pub fn nw_first_read(ctx: TracePointContext) -> u32 {
    try_first_read(&ctx);
    0
}

#[inline(always)]
fn try_first_read(ctx: &TracePointContext) -> Option<()> {
    let off = global(&FIRST_READ_FIELDS.skaddr);
    if off == ABSENT {
        return None;
    }
    // SAFETY: the offset comes from this tracepoint's format on the running kernel; the read
    // goes through bpf_probe_read, which faults safely.
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(usize::from(off)) }) else {
        count(stat::READ_FAILED);
        return None;
    };
    let info = SOCKETS.get_ptr_mut(sk)?;
    // SAFETY: the pointer comes from the map lookup and is valid for this program run.
    if unsafe { (*info).tgid } != 0 {
        // The usual case: the owner is known (connect, accept, an earlier read).
        return None;
    }
    let Some(p) = SCRATCH.get_ptr_mut(0) else {
        count(stat::READ_FAILED);
        return None;
    };
    // SAFETY: this CPU's scratch slot, valid for this program run; classic tracepoint
    // programs do not nest on one CPU.
    let scratch = unsafe { &mut *p };
    super::accept::own(ctx, &mut scratch.ev, sk, info, false)
}
