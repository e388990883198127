//! `nw_accept`: at the exit of accept4()/accept(), in process context, the accepting task
//! becomes the owner of the new socket. It walks from the new fd to the socket with struct
//! offsets from the running kernel's BTF, because the tracepoint gives only the fd.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, generated::bpf_get_current_task,
    },
    macros::tracepoint,
    programs::{TracePointContext, tracing::StackIdContext},
};
use netwatch_common::{SockInfo, event_flags, event_kind, stat};

use crate::{
    ACCEPT_FIELDS, KERNEL_OFFSETS, SOCKETS,
    helpers::{
        copy_comm, count, current_comm, emit, global, kread, reset_event, user_sp_word,
        user_stack_id,
    },
    record::{Scratch, copy_record, with_scratch},
    sock::Sock,
};

/// `syscalls:sys_exit_accept4` and `sys_exit_accept` (`__syscall_nr`, `long ret`): in process
/// context, the accepting task is the new socket's owner. `ret` is the new fd; the socket is
/// found through `current->files->fdt->fd[ret]->private_data->sk`, with offsets from BTF.
#[tracepoint]
pub fn nw_accept(ctx: TracePointContext) -> u32 {
    with_scratch(|s| try_accept(&ctx, s));
    0
}

#[inline(always)]
fn try_accept(ctx: &TracePointContext, s: &mut Scratch) -> Option<()> {
    copy_record(ctx, &mut s.rec)?;
    let rec = &s.rec;
    let fd = rec.get::<i64>(global(&ACCEPT_FIELDS.ret))?;
    if fd < 0 {
        return None;
    }
    // SAFETY: a helper without arguments; the task pointer is only dereferenced through
    // bpf_probe_read_kernel (kread).
    let task = unsafe { bpf_get_current_task() };
    let Some(sk) = accepted_sock(task, fd as u32) else {
        count(stat::READ_FAILED);
        return None;
    };
    // Only sockets netwatch follows (TCP, seen in a transition) get an owner.
    let info = SOCKETS.get_ptr_mut(sk)?;
    own(ctx, s, sk, info, true)
}

/// Makes the current task the owner of `sk` (its `SOCKETS` entry `info`) and emits an `ACCEPT`
/// event; with `stack`, also the user stack (the code path that accepted it). Shared with
/// `first_read`, which learns the same owner at the first read instead of at accept().
#[inline(always)]
pub(super) fn own<C: StackIdContext>(
    ctx: &C,
    s: &mut Scratch,
    sk: u64,
    info: *mut SockInfo,
    stack: bool,
) -> Option<()> {
    let Scratch { sk: copy, ev, .. } = s;
    let pid_tgid = bpf_get_current_pid_tgid();
    reset_event(ev, event_kind::ACCEPT, sk);
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    current_comm(&mut ev.comm);
    // SAFETY: a helper without arguments.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.flags |= event_flags::OWNER_CAPTURED;
    if stack {
        ev.stack_id = user_stack_id(ctx);
        if ev.stack_id >= 0 {
            ev.flags |= event_flags::STACK_VALID;
            user_sp_word(ev);
        }
    }
    // SAFETY: the pointer comes from the map lookup and is valid for this program run.
    unsafe {
        (*info).stack_id = ev.stack_id;
        (*info).tgid = ev.tgid;
        (*info).tid = ev.tid;
        copy_comm(&mut (*info).comm, &ev.comm);
        (*info).cgroup_id = ev.cgroup_id;
        ev.new_state = (*info).state;
        ev.netns = (*info).netns;
    }
    // `ev` is zeroed: a port or address that cannot be read stays zero.
    let sock = Sock::copy_head(sk, copy)?;
    sock.common_tuple(sock.family()?, ev);
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
