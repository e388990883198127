//! The programs that report one event per tracepoint hit and decide nothing about ownership:
//! retransmits, SYN-ACK retransmits, resets received and sent, and socket destruction. They
//! share one body, [`try_simple`], because their records differ only in which fields exist,
//! which the `*_FIELDS` globals say; the owner is whatever `SOCKETS` remembers.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use netwatch_common::{TpFields, event_flags, event_kind};

use crate::{
    DESTROY_FIELDS, RECV_RESET_FIELDS, RETRANSMIT_FIELDS, SEND_RESET_FIELDS, SOCKETS,
    SYNACK_FIELDS,
    helpers::{emit, global, known_socket, reset_event},
    record::{Scratch, scratch_with_record},
};

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

/// The shared body: the event of `kind` from a record laid out as `f` says (`skaddr`, and
/// whichever of `state`, `reason`/`err` and the address fields the tracepoint has), with the
/// owner and last state `SOCKETS` remembers. At `DESTROY` the socket's entry is removed.
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
