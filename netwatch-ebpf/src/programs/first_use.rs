//! `nw_first_send` / `nwr_first_send` and `nw_first_recv` / `nwr_first_recv`: the user stack
//! of the task that first sends on, and first receives from, a socket netwatch follows.
//!
//! Why: the stack at accept() or connect() names the event loop or the pool, not the code that
//! handles the connection (Node's `uv__server_io`, a JVM acceptor thread). The first send or
//! receive runs in the task that handles the socket, usually from the handler itself (a
//! `write()` from a Node callback, a Java pool thread's `OutputStream.write`), so its stack
//! names the handler. Sends and receives are captured apart: an event loop receives from its
//! poll loop (no handler on the stack) but sends from the handler, and a client may send from
//! one place and read from another.
//!
//! Cost: these tracepoints run at every `sendmsg`/`recvmsg` of every socket on the host, so the
//! program reads only its argument and looks the socket up in `SOCKETS` (TCP sockets netwatch
//! follows); only the first send and the first receive of each socket go further. Attached in
//! the code-path modes only (`leaks`, `trace --stacks`).
//!
//! `sock_send_length` and `sock_recv_length` exist since Linux 6.3; on older kernels user space
//! warns and the other code path (at accept()/connect()) is still shown.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext, tracing::StackIdContext},
};
use netwatch_common::{ABSENT, event_flags, event_kind, first_use};

use crate::{
    FIRST_USE_FIELDS, SOCKETS,
    helpers::{current_comm, emit, global, read_failed, reset_event, user_stack_id},
    record::{Scratch, with_scratch},
    sock::Sock,
};

/// `sock:sock_send_length` (`sk, family, protocol, ret, flags`): only `sk` is read (8 bytes,
/// not the whole record), because this runs at every send of every socket.
#[tracepoint]
pub fn nw_first_send(ctx: TracePointContext) -> u32 {
    classic(&ctx, first_use::SENT);
    0
}

/// `sock:sock_recv_length`: the same layout as `sock_send_length`.
#[tracepoint]
pub fn nw_first_recv(ctx: TracePointContext) -> u32 {
    classic(&ctx, first_use::RECEIVED);
    0
}

/// `sock_send_length`, raw: `(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn nwr_first_send(ctx: RawTracePointContext) -> u32 {
    first_use(&ctx, ctx.arg::<u64>(0), first_use::SENT);
    0
}

/// `sock_recv_length`, raw: `(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn nwr_first_recv(ctx: RawTracePointContext) -> u32 {
    first_use(&ctx, ctx.arg::<u64>(0), first_use::RECEIVED);
    0
}

#[inline(always)]
fn classic(ctx: &TracePointContext, bit: u8) {
    let off = global(&FIRST_USE_FIELDS.skaddr);
    if off == ABSENT {
        return;
    }
    // SAFETY: the offset comes from this tracepoint's format on the running kernel; the read
    // goes through bpf_probe_read, which faults safely.
    match unsafe { ctx.read_at::<u64>(usize::from(off)) } {
        Ok(sk) => {
            first_use(ctx, sk, bit);
        }
        Err(_) => {
            read_failed::<()>();
        }
    }
}

/// At the first send (`bit` = `SENT`) or receive (`RECEIVED`) on a socket netwatch follows:
/// marks it used that way and emits a `FIRST_USE` event with the current task and its user
/// stack.
#[inline(always)]
fn first_use<C: StackIdContext>(ctx: &C, sk: u64, bit: u8) -> Option<()> {
    let info = SOCKETS.get_ptr_mut(sk)?;
    // SAFETY: the pointer comes from the map lookup and is valid for this program run. Two
    // tasks racing here may both capture: two events, no harm.
    let used = unsafe { (*info).used };
    if used & bit != 0 {
        // The usual case: this socket's first use that way was captured already.
        return None;
    }
    // SAFETY: as above; `used` is plain data.
    unsafe { (*info).used = used | bit };
    with_scratch(|s| {
        let Scratch { sk: copy, ev, .. } = s;
        reset_event(ev, event_kind::FIRST_USE, sk);
        let pid_tgid = bpf_get_current_pid_tgid();
        ev.tgid = (pid_tgid >> 32) as u32;
        ev.tid = pid_tgid as u32;
        current_comm(&mut ev.comm);
        // SAFETY: a helper without arguments.
        ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        ev.flags |= event_flags::OWNER_CAPTURED | event_flags::AUX_VALID;
        ev.aux = if bit == first_use::SENT {
            first_use::SEND
        } else {
            first_use::RECV
        };
        // SAFETY: as above.
        unsafe {
            ev.new_state = (*info).state;
            ev.netns = (*info).netns;
        }
        ev.stack_id = user_stack_id(ctx);
        if ev.stack_id >= 0 {
            ev.flags |= event_flags::STACK_VALID;
        }
        // The endpoints, for the kernel-side filter and the reader; a failed read leaves them
        // empty (the socket is known by its address).
        if let Some(mut sock) = Sock::copy_head(sk, copy) {
            let _ = sock.tuple(ev, false);
        }
        emit(ev);
        Some(())
    })
}
