//! The programs that report one event per tracepoint hit and decide nothing about ownership:
//! retransmits, SYN-ACK retransmits, resets received and sent, and socket destruction.
//!
//! The classic programs share one body, [`classic`], because their records differ only in
//! which fields exist, which the `*_FIELDS` globals say. The raw programs read what each
//! tracepoint's arguments point at, as its classic record's `TP_fast_assign` does. Both end in
//! [`finish`]: the owner is whatever `SOCKETS` remembers.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use netwatch_common::{RawEvent, TpFields, event_flags, event_kind};

use crate::{
    DESTROY_FIELDS, KERNEL_OFFSETS, RAW_ARGS, RECV_RESET_FIELDS, RETRANSMIT_FIELDS,
    SEND_RESET_FIELDS, SOCKETS, SYNACK_FIELDS,
    helpers::{emit, global, known_socket, kread, read_failed, reset_event},
    record::{Scratch, copy_record, with_scratch},
    sock::{self, Sock},
};

/// `tcp:tcp_retransmit_skb` (`skbaddr, skaddr, state, sport, dport, family, saddr, daddr,
/// saddr_v6, daddr_v6` since 4.16; `err` since 6.12).
#[tracepoint]
pub fn nw_retransmit(ctx: TracePointContext) -> u32 {
    with_scratch(|s| classic(&ctx, s, global(&RETRANSMIT_FIELDS), event_kind::RETRANSMIT));
    0
}

/// `tcp_retransmit_skb`, raw: `(const struct sock *sk, const struct sk_buff *skb)`, and
/// `int err` where the kernel has it (`RAW_ARGS`).
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn nwr_retransmit(ctx: RawTracePointContext) -> u32 {
    with_scratch(|s| {
        let Scratch { sk: copy, ev, .. } = s;
        let sk = ctx.arg::<u64>(0);
        reset_event(ev, event_kind::RETRANSMIT, sk);
        let Some(mut sock) = Sock::copy_head(sk, copy) else {
            return read_failed();
        };
        let Some(state) = sock.state() else {
            return read_failed();
        };
        ev.new_state = state;
        if global(&RAW_ARGS.retransmit_skb) >= 3 {
            ev.aux = ctx.arg::<i32>(2) as u32;
            ev.flags |= event_flags::AUX_VALID;
        }
        if sock.tuple(ev, false).is_none() {
            return read_failed();
        }
        finish(ev, sk)
    });
    0
}

/// `tcp:tcp_retransmit_synack` (`skaddr` is the listener, `req` the request socket).
#[tracepoint]
pub fn nw_synack_rtx(ctx: TracePointContext) -> u32 {
    with_scratch(|s| {
        classic(
            &ctx,
            s,
            global(&SYNACK_FIELDS),
            event_kind::SYNACK_RETRANSMIT,
        )
    });
    0
}

/// `tcp_retransmit_synack`, raw: `(const struct sock *sk, const struct request_sock *req)`.
#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn nwr_synack_rtx(ctx: RawTracePointContext) -> u32 {
    with_scratch(|s| {
        let Scratch { sk: copy, ev, .. } = s;
        let sk = ctx.arg::<u64>(0);
        reset_event(ev, event_kind::SYNACK_RETRANSMIT, sk);
        // The request socket's endpoints under the listener's family; a request socket
        // starts with a `sock_common`.
        let Some(family) = kread::<u16>(sk, global(&KERNEL_OFFSETS.skc_family)) else {
            return read_failed();
        };
        let Some(req) = Sock::copy_head(ctx.arg::<u64>(1), copy) else {
            return read_failed();
        };
        req.common_tuple(family, ev);
        finish(ev, sk)
    });
    0
}

/// `tcp:tcp_receive_reset` (`skaddr, sport, dport, family, saddr.., sock_cookie`; no state
/// field, so the state is the last one `SOCKETS` saw).
#[tracepoint]
pub fn nw_recv_reset(ctx: TracePointContext) -> u32 {
    with_scratch(|s| {
        classic(
            &ctx,
            s,
            global(&RECV_RESET_FIELDS),
            event_kind::RESET_RECEIVED,
        )
    });
    0
}

/// `tcp_receive_reset`, raw: `(struct sock *sk)`.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn nwr_recv_reset(ctx: RawTracePointContext) -> u32 {
    with_scratch(|s| socket_only(&ctx, s, event_kind::RESET_RECEIVED));
    0
}

/// `tcp:tcp_send_reset` (before 6.10 the classic address fields; since 6.10 `state`,
/// `reason` and sockaddr-typed `saddr`/`daddr`). `skaddr` is NULL for a reset sent for a
/// segment no socket wanted.
#[tracepoint]
pub fn nw_send_reset(ctx: TracePointContext) -> u32 {
    with_scratch(|s| classic(&ctx, s, global(&SEND_RESET_FIELDS), event_kind::RESET_SENT));
    0
}

/// `tcp_send_reset`, raw: `(const struct sock *sk, const struct sk_buff *skb)`, and
/// `enum sk_rst_reason reason` since 6.10 (`RAW_ARGS`). Since 6.10 `sk` may be NULL or a
/// timewait or request socket, and the endpoints are then those of the segment `skb` that the
/// reset answers; before, the tracepoint fires for full sockets only.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn nwr_send_reset(ctx: RawTracePointContext) -> u32 {
    with_scratch(|s| {
        let Scratch { sk: copy, ev, .. } = s;
        let sk = ctx.arg::<u64>(0);
        let skb = ctx.arg::<u64>(1);
        let since_6_10 = global(&RAW_ARGS.send_reset) >= 3;
        reset_event(ev, event_kind::RESET_SENT, sk);
        let mut full_sock = None;
        if sk != 0 {
            let Some(sock) = Sock::copy_head(sk, copy) else {
                return read_failed();
            };
            let Some(state) = sock.state() else {
                return read_failed();
            };
            ev.new_state = state;
            if sock::is_full(state) {
                full_sock = Some(sock);
            }
        }
        if since_6_10 {
            ev.aux = ctx.arg::<u32>(2);
            ev.flags |= event_flags::AUX_VALID;
        }
        let read = if let Some(mut sock) = full_sock {
            sock.tuple(ev, since_6_10)
        } else if skb != 0 {
            sock::segment_tuple(skb, ev)
        } else {
            Some(())
        };
        if read.is_none() {
            return read_failed();
        }
        finish(ev, sk)
    });
    0
}

/// `tcp:tcp_destroy_sock`: the socket is freed; its `SOCKETS` entry goes with it.
#[tracepoint]
pub fn nw_destroy_sock(ctx: TracePointContext) -> u32 {
    with_scratch(|s| classic(&ctx, s, global(&DESTROY_FIELDS), event_kind::DESTROY));
    0
}

/// `tcp_destroy_sock`, raw: `(struct sock *sk)`.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn nwr_destroy_sk(ctx: RawTracePointContext) -> u32 {
    with_scratch(|s| socket_only(&ctx, s, event_kind::DESTROY));
    0
}

/// The classic body: the event of `kind` from a record laid out as `f` says (`skaddr`, and
/// whichever of `state`, `reason`/`err` and the address fields the tracepoint has).
#[inline(always)]
fn classic(ctx: &TracePointContext, s: &mut Scratch, f: TpFields, kind: u8) -> Option<()> {
    let Scratch { rec, ev, .. } = s;
    copy_record(ctx, rec)?;
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
    finish(ev, skaddr)
}

/// The raw body of the `tcp_event_sk` tracepoints (`(struct sock *sk)`): the socket's
/// endpoints, no state (their records have none).
#[inline(always)]
fn socket_only(ctx: &RawTracePointContext, s: &mut Scratch, kind: u8) -> Option<()> {
    let Scratch { sk: copy, ev, .. } = s;
    let sk = ctx.arg::<u64>(0);
    reset_event(ev, kind, sk);
    let read = Sock::copy_head(sk, copy).and_then(|mut sock| sock.tuple(ev, false));
    if read.is_none() {
        return read_failed();
    }
    finish(ev, sk)
}

/// The shared end: the owner and last state `SOCKETS` remembers, then the event. At `DESTROY`
/// the socket's entry is removed.
#[inline(always)]
fn finish(ev: &mut RawEvent, skaddr: u64) -> Option<()> {
    known_socket(skaddr, ev);
    if ev.kind == event_kind::DESTROY {
        let seen = SOCKETS.remove(skaddr).is_ok();
        // A socket that never left CLOSE (socket() then close()) is noise, not a connection.
        if !seen && ev.sport == 0 && ev.dport == 0 {
            return None;
        }
    }
    emit(ev);
    Some(())
}
