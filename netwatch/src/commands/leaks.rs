//! `netwatch leaks`: sockets stuck in CLOSE_WAIT (the peer closed, the application never did)
//! or FIN_WAIT2 (we closed or shut down, the peer never did), grouped by the process that
//! holds them and the code path that opened them, biggest group first.
//!
//! A snapshot merges two views of the host ([`merge`]): the kernel's list of sockets that
//! exist now (sock_diag, every network namespace) with their holders' fds (`/proc/*/fd`), and
//! what the live stream taught the tracker: the exact time a socket got stuck, the process that
//! called connect() or accept(), and its user stack. Sockets stuck before netwatch started have
//! only the first view and show an age of "at least".
mod group;
mod merge;
mod recorded;
mod render;
mod sink;

pub use sink::{LeaksSink, Replaying, Style, once};

use serde::Serialize;

/// Which kind of stuck socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StuckKind {
    /// CLOSE_WAIT: the peer closed; the process holding the socket has not.
    CloseWait,
    /// FIN_WAIT2 held by a process: it shut down its side, the peer never closed.
    FinWait2,
    /// FIN_WAIT2 held by no process: closed by us, the peer never closed; the kernel drops it
    /// after `net.ipv4.tcp_fin_timeout`.
    OrphanFinWait2,
}

impl StuckKind {
    /// The kind of a socket in kernel state `state`, held (`inode != 0`) or orphaned.
    pub fn of(state: u8, inode: u64) -> Option<StuckKind> {
        use netwatch_common::tcp_state::{CLOSE_WAIT, FIN_WAIT2};
        match state {
            CLOSE_WAIT => Some(StuckKind::CloseWait),
            FIN_WAIT2 if inode != 0 => Some(StuckKind::FinWait2),
            FIN_WAIT2 => Some(StuckKind::OrphanFinWait2),
            _ => None,
        }
    }
}

/// How the socket was opened: the syscall at which the kernel captured the code path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Opener {
    Accept,
    Connect,
}
