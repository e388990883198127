//! `nw_set_state` / `nwr_set_state`: every TCP state transition. Where a socket's `SOCKETS`
//! entry is created and its state and the time it entered it are kept, and where its owner is
//! captured at transitions only a syscall on that socket can cause (connect, listen,
//! close/shutdown).

use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext, tracing::StackIdContext},
};
use netwatch_common::{
    IPPROTO_TCP, RawEvent, SockInfo, event_flags, event_kind, stat,
    tcp_state::{CLOSE, SYN_SENT},
};

use crate::{
    SET_STATE_FIELDS, SOCKETS,
    helpers::{
        count, current_comm, current_task_owns, emit, global, owner_from, read_failed, reset_event,
        sock_netns, starts_fresh, tcp_info, user_sp_word, user_stack_id, zero_words,
    },
    record::{Scratch, copy_record, with_scratch},
    sock::{self, Sock},
};

/// `sock:inet_sock_set_state`, classic: every TCP state transition (`skaddr, oldstate,
/// newstate, sport, dport, family, protocol, saddr, daddr, saddr_v6, daddr_v6` since 4.16).
#[tracepoint]
pub fn nw_set_state(ctx: TracePointContext) -> u32 {
    with_scratch(|s| classic(&ctx, s));
    0
}

/// `inet_sock_set_state`, raw: `(const struct sock *sk, const int oldstate, const int
/// newstate)`; the record's fields are read from the socket.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn nwr_set_state(ctx: RawTracePointContext) -> u32 {
    with_scratch(|s| raw(&ctx, s));
    0
}

#[inline(always)]
fn classic(ctx: &TracePointContext, s: &mut Scratch) -> Option<()> {
    let Scratch { rec, ev, .. } = s;
    copy_record(ctx, rec)?;
    let f = global(&SET_STATE_FIELDS);
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
    transition(ctx, ev, skaddr, old, new, || sock_netns(skaddr))
}

#[inline(always)]
fn raw(ctx: &RawTracePointContext, s: &mut Scratch) -> Option<()> {
    let Scratch { sk: copy, ev, .. } = s;
    let sk = ctx.arg::<u64>(0);
    let Some(protocol) = sock::protocol(sk) else {
        return read_failed();
    };
    if protocol != IPPROTO_TCP {
        return None;
    }
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    reset_event(ev, event_kind::STATE, sk);
    ev.old_state = old;
    ev.new_state = new;
    let Some(mut sock) = Sock::copy_head(sk, copy) else {
        return read_failed();
    };
    if sock.tuple(ev, false).is_none() {
        return read_failed();
    }
    transition(ctx, ev, sk, old, new, || sock.netns())
}

/// The shared body: `ev` holds the transition and the socket's endpoints; this keeps the
/// socket's `SOCKETS` entry, captures the owner where the current task is it, and emits.
/// `netns` reads the socket's namespace, once per socket.
#[inline(always)]
fn transition<C: StackIdContext>(
    ctx: &C,
    ev: &mut RawEvent,
    skaddr: u64,
    old: u8,
    new: u8,
    netns: impl FnOnce() -> u32,
) -> Option<()> {
    let existing = SOCKETS.get_ptr_mut(skaddr);
    // A known socket's entry is updated in place (no copy out and back); a new one is built
    // on the stack, without a struct literal (see `zero_words`), and inserted at the end.
    let mut slot = MaybeUninit::<SockInfo>::uninit();
    // SAFETY: `p` is either the value from the map lookup, valid for this program run and
    // 8-aligned (map values are), or `slot`, an 8-aligned `SockInfo` (it has u64 fields);
    // both are plain data, and `slot` is wholly written before it is used.
    let info = unsafe {
        let p = existing.unwrap_or(slot.as_mut_ptr());
        if existing.is_none() || starts_fresh(old, new) {
            zero_words(p);
            (*p).stack_id = -1;
        }
        &mut *p
    };
    if info.netns == 0 {
        info.netns = netns();
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
            current_comm(&mut info.comm);
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
    owner_from(info, ev);
    if new == CLOSE {
        tcp_info(skaddr, ev);
    }
    // A repeated state (FIN_WAIT1 -> FIN_WAIT1 when close() follows shutdown()) is reported,
    // but the socket has been in that state since it first entered it.
    if old != new || info.state_since_ns == 0 {
        info.state_since_ns = ev.ts_ns;
    }
    info.state = new;
    if existing.is_none() && SOCKETS.insert(skaddr, info, 0).is_err() {
        count(stat::SOCKETS_FULL);
    }
    emit(ev);
    Some(())
}
