//! The host's side of a `leaks` snapshot: the kernel's list of stuck sockets with their
//! holders ([`take_dump`]), and everything else the snapshot asked of this host
//! ([`StuckSnapshot`]): when it was taken, and the names (cgroup paths, containers, code paths)
//! it looked up.
//!
//! Why one recordable value: a recording keeps each snapshot's [`StuckSnapshot`] beside the
//! event stream, so that a replay, on any machine, merges the same inputs at the same place in
//! the stream and prints what the live run printed, without asking this host anything.
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::host::netns;
use crate::host::procfd::{self, FdOwner};
use crate::host::sockdiag::{self, DiagSocket, SockDiagError, StateMask};
use crate::host::stacks::CodePath;
use crate::model::event::UseCall;
use crate::model::names::Container;

/// The states a leak sits in.
const STUCK: StateMask = StateMask::CLOSE_WAIT.union(StateMask::FIN_WAIT2);

/// What the kernel listed at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dump {
    /// Stuck sockets, each with the inode of its network namespace.
    pub sockets: Vec<(u64, DiagSocket)>,
    /// Socket inode -> the fds that hold it (`/proc/*/fd`), for the listed sockets only.
    pub holders: HashMap<u64, Vec<FdOwner>>,
    /// Whether every namespace was listed: then a socket the tracker believes stuck but the
    /// dump lacks is gone (its closing events were lost), not hidden.
    pub complete: bool,
    /// Namespaces that could not be listed, and other reasons the picture may be partial.
    pub warnings: Vec<String>,
}

/// Lists the stuck sockets of every network namespace, and their holders.
pub fn take_dump() -> Dump {
    let mut dump = Dump {
        complete: true,
        ..Dump::default()
    };
    let own = netns::own();
    for ns in netns::all() {
        let path = (Some(ns.inode) != own).then_some(ns.path.as_path());
        match sockdiag::tcp_sockets(STUCK, path) {
            Ok(socks) => dump
                .sockets
                .extend(socks.into_iter().map(|s| (ns.inode, s))),
            // Its last process exited between the listing and now: nothing left to see.
            Err(SockDiagError::Netns { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                dump.complete = false;
                dump.warnings
                    .push(format!("network namespace {}: {e}", ns.inode));
            }
        }
    }
    let listed: HashSet<u64> = dump
        .sockets
        .iter()
        .map(|(_, s)| s.inode)
        .filter(|&inode| inode != 0)
        .collect();
    if !listed.is_empty() {
        // Every socket of the host has its holders in `/proc`: keep the stuck ones' only.
        dump.holders = procfd::socket_owners();
        dump.holders.retain(|inode, _| listed.contains(inode));
    }
    dump
}

/// Everything one `leaks` snapshot took from this host, as the host answered: the dump, the
/// clock, and each name the merge looked up (a recording's `SNAPSHOT` frame).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StuckSnapshot {
    /// CLOCK_MONOTONIC ns of the snapshot: the ages it shows are up to this moment.
    pub taken_ns: u64,
    /// Unix-epoch ns minus monotonic ns at the snapshot (its wall-clock time).
    pub wall_offset_ns: i128,
    /// How long the live run had watched the stream.
    pub watched_ns: u64,
    /// The run's last snapshot, printed whatever changed.
    pub last: bool,
    /// What the live run showed: sockets stuck at least this long, held by these processes
    /// (empty: any) of this command name. A replay shows the same unless told otherwise.
    pub min_age_ns: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    pub dump: Dump,
    /// The code paths the answers below name, each once.
    pub paths: Vec<CodePath>,
    /// (cgroup id, pid) -> the owner's cgroup path.
    pub cgroups: Vec<(Option<u64>, u32, Option<String>)>,
    /// (pid, stack id) -> its code path, an index in `paths`.
    pub stacks: Vec<(u32, u32, Option<u32>)>,
    /// Socket address -> its first send or receive, and that call's code path in `paths`.
    pub first_uses: Vec<(u64, Option<(UseCall, u32)>)>,
    /// The containers the cgroup paths above named then.
    pub containers: Vec<Container>,
}
