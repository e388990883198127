//! `nw_first_read` / `nwr_first_read`: the owner of an accepted socket, learnt at its first
//! read instead of at accept(), in the modes that do not ask for code paths.
//!
//! Why: any program on a `syscalls:*` tracepoint (`nw_accept`) switches every task on the host
//! to the slow syscall path, about +20% on every syscall of every process. `tcp_rcv_space_adjust`
//! runs in the reading task's context, from tcp_recvmsg(), and costs only TCP reads a socket
//! look-up. A server that never reads a socket gets its owner at close() instead.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext, tracing::StackIdContext},
};

use crate::{
    FIRST_READ_FIELDS, SOCKETS,
    helpers::{global, read_failed},
    record::with_scratch,
};
use netwatch_common::ABSENT;

/// `tcp:tcp_rcv_space_adjust` (`skaddr, sport, dport, family, saddr.., sock_cookie`, the
/// `tcp_event_sk` layout): only `skaddr` is read (8 bytes, not the whole record), because this
/// runs at every read of every TCP socket.
#[tracepoint]
pub fn nw_first_read(ctx: TracePointContext) -> u32 {
    let off = global(&FIRST_READ_FIELDS.skaddr);
    if off != ABSENT {
        // SAFETY: the offset comes from this tracepoint's format on the running kernel; the
        // read goes through bpf_probe_read, which faults safely.
        match unsafe { ctx.read_at::<u64>(usize::from(off)) } {
            Ok(sk) => {
                first_read(&ctx, sk);
            }
            Err(_) => {
                read_failed::<()>();
            }
        }
    }
    0
}

/// `tcp_rcv_space_adjust`, raw: `(struct sock *sk)`.
#[raw_tracepoint(tracepoint = "tcp_rcv_space_adjust")]
pub fn nwr_first_read(ctx: RawTracePointContext) -> u32 {
    first_read(&ctx, ctx.arg::<u64>(0));
    0
}

/// Makes the reading task the owner of `sk` if netwatch follows it and knows no owner yet.
#[inline(always)]
fn first_read<C: StackIdContext>(ctx: &C, sk: u64) -> Option<()> {
    let info = SOCKETS.get_ptr_mut(sk)?;
    // SAFETY: the pointer comes from the map lookup and is valid for this program run.
    if unsafe { (*info).tgid } != 0 {
        // The usual case: the owner is known (connect, accept, an earlier read).
        return None;
    }
    with_scratch(|s| super::accept::own(ctx, s, sk, info, false))
}
