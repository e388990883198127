//! One list of stuck sockets from the kernel's dump and the tracker's memory.
//!
//! The dump says what exists now, in which namespace, and who holds it (fds); the tracker says
//! since when it is stuck, who opened it and from which code path. They are joined on the
//! socket's 4-tuple and network namespace (the kernel programs read the namespace of every
//! socket; where they could not, the tracked socket whose owner holds the dumped one wins).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::host::procfd::FdOwner;
use crate::host::stacks::CodePath;
pub use crate::host::stuck::Dump;
use crate::model::event::{TcpState, UseCall};
use crate::model::tracker::{Connection, End, LiveSocket, Role};

use super::{Opener, StuckKind};

/// The owner as a snapshot shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// The cgroup path (container or service), when known.
    pub cgroup: Option<String>,
}

/// One stuck socket, everything known about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Stuck {
    pub kind: StuckKind,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Inode of its network namespace, when the kernel's dump listed it.
    pub netns: Option<u64>,
    /// How long it has been stuck; a lower bound when `at_least`.
    pub age_ms: f64,
    pub at_least: bool,
    pub owner: Option<Owner>,
    /// The owner's fds that hold it.
    pub fds: Vec<u32>,
    pub opened_by: Option<Opener>,
    /// Symbolized user stack at connect()/accept(), innermost first; `None`: not seen.
    pub stack: Option<Arc<CodePath>>,
    /// The code path of its first send or receive (the handler), and which call it was;
    /// `None`: not seen.
    pub used: Option<(UseCall, Arc<CodePath>)>,
}

/// How the merge finds names: the cgroup path of an owner, and the frames of a stack.
pub trait Lookup {
    /// The cgroup path of process `pid` whose kernel cgroup id was `cgroup_id` (if known).
    fn cgroup(&mut self, cgroup_id: Option<u64>, pid: u32) -> Option<String>;
    /// The code path of stack `stack_id` captured in process `pid`; `None` if never
    /// symbolized.
    fn frames(&mut self, pid: u32, stack_id: u32) -> Option<Arc<CodePath>>;
    /// The code path of the first send or receive on the live socket at kernel address
    /// `sock`: the first of them with an application frame, else the first seen.
    fn first_use(&mut self, sock: u64) -> Option<(UseCall, Arc<CodePath>)>;
}

/// A tracked socket with what the merge needs of it (owned: the tracker moves on).
#[derive(Clone, Debug)]
pub struct Tracked {
    /// Its kernel address while it lives (`None` once closed: the address is reused).
    pub sock: Option<u64>,
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup_id: Option<u64>,
    pub netns: Option<u32>,
    pub since_ns: u64,
    pub since_exact: bool,
    pub role: Role,
    pub stack_id: Option<u32>,
    /// Built from a connection this host closed first ([`Tracked::closed_first`]): no process
    /// holds it any more.
    pub closed: bool,
}

impl Tracked {
    /// A connection this host closed first (it ended as a TIME_WAIT birth). While the peer
    /// does not close, the kernel keeps such a socket as an orphaned FIN_WAIT2 (up to
    /// `tcp_fin_timeout`); this names the process and code path that left it there. It has
    /// been in FIN_WAIT2 since it entered it, before the close the tracker saw.
    pub fn closed_first(c: &Connection) -> Option<Tracked> {
        if !matches!(c.end, End::TimeWait) {
            return None;
        }
        let in_fin_wait2_ns = c.dwell_ms.fin_wait2.map_or(0, |ms| (ms * 1e6) as u64);
        Some(Tracked {
            sock: None,
            state: TcpState::FinWait2,
            local: SocketAddr::new(c.saddr, c.sport),
            remote: SocketAddr::new(c.daddr, c.dport),
            pid: c.pid,
            comm: c.comm.map(|c| c.to_string()),
            cgroup_id: c.cgroup_id,
            netns: c.netns,
            since_ns: c.end_ns.saturating_sub(in_fin_wait2_ns),
            since_exact: c.dwell_ms.fin_wait2.is_some(),
            role: c.role,
            stack_id: c.stack_id,
            closed: true,
        })
    }

    pub fn of(s: &LiveSocket) -> Tracked {
        Tracked {
            sock: Some(s.sock),
            state: s.state,
            local: SocketAddr::new(s.saddr, s.sport),
            remote: SocketAddr::new(s.daddr, s.dport),
            pid: s.pid,
            comm: s.comm.map(str::to_string),
            cgroup_id: s.cgroup_id,
            netns: s.netns,
            since_ns: s.since_ns,
            since_exact: s.since_exact,
            role: s.role,
            stack_id: s.stack_id,
            closed: false,
        }
    }

    fn stuck_kind(&self) -> Option<StuckKind> {
        match self.state {
            TcpState::CloseWait => Some(StuckKind::CloseWait),
            TcpState::FinWait2 if self.closed => Some(StuckKind::OrphanFinWait2),
            // A live tracked socket is held, as far as the tracker can tell; the dump can tell
            // an orphan (inode 0).
            TcpState::FinWait2 => Some(StuckKind::FinWait2),
            _ => None,
        }
    }
}

/// Ages and first sightings of sockets the dump lists but the stream never saw get stuck.
#[derive(Debug, Default)]
pub struct FirstSeen(HashMap<(u64, u64), u64>);

impl FirstSeen {
    /// When (monotonic ns) the dumped socket `(netns, cookie)` was first listed; remembers
    /// `now_ns` for a new one.
    fn first(&mut self, key: (u64, u64), now_ns: u64) -> u64 {
        *self.0.entry(key).or_insert(now_ns)
    }

    /// Forgets sockets that are no longer listed (bounded by what exists).
    fn keep_only(&mut self, dump: &Dump) {
        let present: std::collections::HashSet<(u64, u64)> =
            dump.sockets.iter().map(|(ns, s)| (*ns, s.cookie)).collect();
        self.0.retain(|k, _| present.contains(k));
    }
}

/// The stuck sockets of `dump` joined with `tracked` (any state: the stream may have lost the
/// transition into the stuck state but still knows the owner), plus, when the dump is not
/// complete, tracked sockets it does not list.
pub fn merge(
    dump: &Dump,
    tracked: &[Tracked],
    now_ns: u64,
    first_seen: &mut FirstSeen,
    lookup: &mut dyn Lookup,
) -> Vec<Stuck> {
    let mut by_tuple: HashMap<(SocketAddr, SocketAddr), Vec<usize>> = HashMap::new();
    for (i, t) in tracked.iter().enumerate() {
        by_tuple.entry((t.local, t.remote)).or_default().push(i);
    }
    let mut used = vec![false; tracked.len()];
    let mut out = Vec::new();
    for (netns, d) in &dump.sockets {
        let Some(kind) = StuckKind::of(d.state, d.inode) else {
            continue;
        };
        let holders = dump.holders.get(&d.inode).map_or(&[][..], Vec::as_slice);
        let candidates = by_tuple.get(&(d.src, d.dst)).map_or(&[][..], Vec::as_slice);
        let chosen = pick(candidates, tracked, *netns, holders);
        if let Some(i) = chosen {
            used[i] = true;
        }
        let t = chosen.map(|i| &tracked[i]);
        // Exact only when the stream saw it enter the state the kernel reports now.
        let exact = t.filter(|t| t.since_exact && t.state.kernel_number() == d.state);
        let (age_ms, at_least) = match exact {
            Some(t) => (ms(now_ns.saturating_sub(t.since_ns)), false),
            None => {
                let watched =
                    ms(now_ns.saturating_sub(first_seen.first((*netns, d.cookie), now_ns)));
                let kernel = d.kernel_age_ms().map_or(0.0, f64::from);
                (watched.max(kernel), true)
            }
        };
        let owner_pid = owner_pid(t, holders);
        let comm = |pid: u32| {
            holders
                .iter()
                .find(|h| h.pid == pid)
                .map(|h| h.comm.clone())
                .or_else(|| t.and_then(|t| t.comm.clone()))
                .unwrap_or_default()
        };
        let owner = owner_pid.map(|pid| Owner {
            pid,
            comm: comm(pid),
            cgroup: lookup.cgroup(
                t.filter(|t| t.pid == Some(pid)).and_then(|t| t.cgroup_id),
                pid,
            ),
        });
        let fds = match owner_pid {
            Some(pid) => holders
                .iter()
                .filter(|h| h.pid == pid)
                .map(|h| h.fd)
                .collect(),
            None => Vec::new(),
        };
        out.push(Stuck {
            kind,
            local: d.src,
            remote: d.dst,
            netns: Some(*netns),
            age_ms,
            at_least,
            owner,
            fds,
            opened_by: t.and_then(opener),
            stack: t.and_then(|t| lookup.frames(t.pid?, t.stack_id?)),
            used: t.and_then(|t| lookup.first_use(t.sock?)),
        });
    }
    first_seen.keep_only(dump);
    if !dump.complete {
        for (t, _) in tracked.iter().zip(&used).filter(|(_, used)| !**used) {
            let Some(kind) = t.stuck_kind() else {
                continue;
            };
            out.push(Stuck {
                kind,
                local: t.local,
                remote: t.remote,
                netns: None,
                age_ms: ms(now_ns.saturating_sub(t.since_ns)),
                at_least: !t.since_exact,
                owner: t.pid.map(|pid| Owner {
                    pid,
                    comm: t.comm.clone().unwrap_or_default(),
                    cgroup: lookup.cgroup(t.cgroup_id, pid),
                }),
                fds: Vec::new(),
                opened_by: opener(t),
                stack: t.pid.zip(t.stack_id).and_then(|(p, s)| lookup.frames(p, s)),
                used: t.sock.and_then(|s| lookup.first_use(s)),
            });
        }
    }
    out
}

/// Of the tracked sockets with the dumped socket's tuple and not of another namespace, the
/// one in its namespace, else the one whose owner holds it, else the only one.
fn pick(
    candidates: &[usize],
    tracked: &[Tracked],
    netns: u64,
    holders: &[FdOwner],
) -> Option<usize> {
    let same_ns = |i: &usize| tracked[*i].netns.map(u64::from) == Some(netns);
    let possible: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|i| tracked[*i].netns.is_none() || same_ns(i))
        .collect();
    let held = |i: &usize| {
        tracked[*i]
            .pid
            .is_some_and(|p| holders.iter().any(|h| h.pid == p))
    };
    possible
        .iter()
        .copied()
        .find(same_ns)
        .or_else(|| possible.iter().copied().find(held))
        .or_else(|| (possible.len() == 1).then(|| possible[0]))
}

/// Who the snapshot names: the process that connected or accepted, while it still holds the
/// socket (or nobody is known to); otherwise the process holding it now, which is the one
/// that must close it.
fn owner_pid(t: Option<&Tracked>, holders: &[FdOwner]) -> Option<u32> {
    let opener = t.and_then(|t| t.pid);
    match opener {
        Some(p) if holders.is_empty() || holders.iter().any(|h| h.pid == p) => Some(p),
        _ => holders.first().map(|h| h.pid),
    }
}

fn opener(t: &Tracked) -> Option<Opener> {
    match t.role {
        Role::Active => Some(Opener::Connect),
        Role::Passive => Some(Opener::Accept),
        Role::Unknown => None,
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sockdiag::DiagSocket;
    use netwatch_common::tcp_state::{CLOSE_WAIT, ESTABLISHED, FIN_WAIT2};

    struct Names;

    impl Lookup for Names {
        fn cgroup(&mut self, id: Option<u64>, pid: u32) -> Option<String> {
            Some(format!("/cg{}-{pid}", id.unwrap_or(0)))
        }
        fn frames(&mut self, pid: u32, id: u32) -> Option<Arc<CodePath>> {
            Some(Arc::new(CodePath {
                frames: vec![format!("f{id} of {pid}")],
                ..CodePath::default()
            }))
        }
        fn first_use(&mut self, sock: u64) -> Option<(UseCall, Arc<CodePath>)> {
            (sock == 77).then(|| {
                let path = CodePath {
                    frames: vec!["write".into()],
                    ..CodePath::default()
                };
                (UseCall::Send, Arc::new(path))
            })
        }
    }

    fn diag(state: u8, local: &str, remote: &str, inode: u64, cookie: u64) -> DiagSocket {
        DiagSocket {
            family: libc::AF_INET as u8,
            state,
            src: local.parse().unwrap(),
            dst: remote.parse().unwrap(),
            inode,
            uid: 0,
            cookie,
            last_ack_recv_ms: Some(1500),
            expires_ms: 0,
            fin_timeout_ms: Some(60_000),
            timer: 0,
        }
    }

    fn tracked(state: TcpState, local: &str, remote: &str, pid: u32) -> Tracked {
        Tracked {
            sock: Some(77),
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            pid: Some(pid),
            comm: Some("tracked".into()),
            cgroup_id: Some(7),
            netns: None,
            since_ns: 1_000_000_000,
            since_exact: true,
            role: Role::Passive,
            stack_id: Some(3),
            closed: false,
        }
    }

    fn holder(pid: u32, fd: u32) -> FdOwner {
        FdOwner {
            pid,
            comm: "holder".into(),
            fd,
        }
    }

    /// A complete dump of `sockets` with `holders`.
    fn dump(sockets: Vec<(u64, DiagSocket)>, holders: HashMap<u64, Vec<FdOwner>>) -> Dump {
        Dump {
            sockets,
            holders,
            complete: true,
            warnings: vec![],
        }
    }

    /// One CLOSE_WAIT socket `L -> R` held by pid 42 as fd 7, merged with `t` at 4 s.
    fn one_close_wait_held_by_42(t: Tracked) -> Vec<Stuck> {
        let dump = dump(
            vec![(11, diag(CLOSE_WAIT, L, R, 500, 1))],
            HashMap::from([(500, vec![holder(42, 7)])]),
        );
        merge(
            &dump,
            &[t],
            4_000_000_000,
            &mut FirstSeen::default(),
            &mut Names,
        )
    }

    const L: &str = "10.0.0.1:80";
    const R: &str = "10.0.0.2:40000";

    #[test]
    fn a_tracked_socket_gets_its_exact_age_owner_stack_and_fds() {
        let s = one_close_wait_held_by_42(tracked(TcpState::CloseWait, L, R, 42));
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(
            (s.kind, s.age_ms, s.at_least),
            (StuckKind::CloseWait, 3000.0, false)
        );
        let o = s.owner.as_ref().unwrap();
        assert_eq!((o.pid, o.comm.as_str()), (42, "holder"));
        assert_eq!(o.cgroup.as_deref(), Some("/cg7-42"));
        assert_eq!(s.fds, vec![7]);
        assert_eq!(s.netns, Some(11));
        assert_eq!(s.opened_by, Some(Opener::Accept));
        assert_eq!(
            s.stack.as_ref().map(|p| p.frames.clone()),
            Some(vec!["f3 of 42".to_string()])
        );
        let (call, used) = s.used.as_ref().expect("first use of socket 77");
        assert_eq!(
            (*call, used.frames.clone()),
            (UseCall::Send, vec!["write".into()])
        );
    }

    #[test]
    fn an_untracked_socket_is_at_least_as_old_as_the_kernel_and_the_watch_say() {
        let mut dump = dump(
            vec![(11, diag(CLOSE_WAIT, L, R, 500, 1))],
            HashMap::from([(500, vec![holder(42, 7), holder(43, 3)])]),
        );
        let mut seen = FirstSeen::default();
        let s = merge(&dump, &[], 10_000_000_000, &mut seen, &mut Names);
        assert_eq!((s[0].age_ms, s[0].at_least), (1500.0, true));
        // The first holder is named, with its fds only; no code path, no opener.
        let o = s[0].owner.as_ref().unwrap();
        assert_eq!((o.pid, o.cgroup.as_deref()), (42, Some("/cg0-42")));
        assert_eq!(s[0].fds, vec![7]);
        assert_eq!((s[0].opened_by, s[0].stack.as_ref()), (None, None));
        // 5 s later the watch is the better bound.
        let s = merge(&dump, &[], 15_000_000_000, &mut seen, &mut Names);
        assert_eq!(s[0].age_ms, 5000.0);
        // Gone from the dump: forgotten, so a new socket with that cookie starts over.
        dump.sockets.clear();
        merge(&dump, &[], 16_000_000_000, &mut seen, &mut Names);
        assert!(seen.0.is_empty());
    }

    #[test]
    fn the_stream_knows_the_opener_even_when_it_missed_the_transition() {
        let s = one_close_wait_held_by_42(tracked(TcpState::Established, L, R, 42));
        assert!(s[0].at_least);
        assert_eq!(s[0].opened_by, Some(Opener::Accept));
        assert!(s[0].stack.is_some());
    }

    #[test]
    fn a_reused_tuple_in_another_namespace_goes_to_the_process_that_holds_it() {
        let dump = dump(
            vec![
                (11, diag(CLOSE_WAIT, L, R, 500, 1)),
                (12, diag(CLOSE_WAIT, L, R, 600, 2)),
            ],
            HashMap::from([(500, vec![holder(42, 7)]), (600, vec![holder(43, 9)])]),
        );
        let t = [
            tracked(TcpState::CloseWait, L, R, 43),
            tracked(TcpState::CloseWait, L, R, 42),
        ];
        let s = merge(
            &dump,
            &t,
            4_000_000_000,
            &mut FirstSeen::default(),
            &mut Names,
        );
        let pids: Vec<_> = s
            .iter()
            .map(|s| (s.netns, s.owner.as_ref().unwrap().pid))
            .collect();
        assert_eq!(pids, vec![(Some(11), 42), (Some(12), 43)]);
    }

    #[test]
    fn the_kernels_namespace_decides_before_the_holders() {
        let dump = dump(
            vec![
                (11, diag(CLOSE_WAIT, L, R, 500, 1)),
                (12, diag(CLOSE_WAIT, L, R, 600, 2)),
            ],
            // Both held by one process (it entered both namespaces).
            HashMap::from([(500, vec![holder(42, 7)]), (600, vec![holder(42, 9)])]),
        );
        let mut a = tracked(TcpState::CloseWait, L, R, 42);
        let mut b = a.clone();
        (a.netns, a.stack_id) = (Some(12), Some(1));
        (b.netns, b.stack_id) = (Some(11), Some(2));
        let s = merge(
            &dump,
            &[a, b],
            4_000_000_000,
            &mut FirstSeen::default(),
            &mut Names,
        );
        let stacks: Vec<_> = s
            .iter()
            .map(|s| (s.netns, s.stack.as_ref().map(|p| p.frames.clone())))
            .collect();
        assert_eq!(
            stacks,
            vec![
                (Some(11), Some(vec!["f2 of 42".to_string()])),
                (Some(12), Some(vec!["f1 of 42".to_string()])),
            ]
        );
        // A tracked socket of a third namespace matches neither.
        let mut c = tracked(TcpState::CloseWait, L, R, 42);
        c.netns = Some(13);
        let s = merge(
            &dump,
            &[c],
            4_000_000_000,
            &mut FirstSeen::default(),
            &mut Names,
        );
        assert!(s.iter().all(|s| s.at_least && s.stack.is_none()), "{s:?}");
    }

    #[test]
    fn an_accepted_socket_handed_to_another_process_names_the_holder() {
        let dump = dump(
            vec![(11, diag(CLOSE_WAIT, L, R, 500, 1))],
            HashMap::from([(500, vec![holder(99, 4)])]),
        );
        let t = [tracked(TcpState::CloseWait, L, R, 42)];
        let s = merge(
            &dump,
            &t,
            4_000_000_000,
            &mut FirstSeen::default(),
            &mut Names,
        );
        assert_eq!(s[0].owner.as_ref().unwrap().pid, 99);
        assert_eq!(s[0].fds, vec![4]);
    }

    #[test]
    fn orphans_and_held_fin_wait2_and_other_states() {
        let dump = dump(
            vec![
                (11, diag(FIN_WAIT2, L, R, 0, 1)),
                (11, diag(FIN_WAIT2, L, "10.0.0.3:1", 501, 2)),
                (11, diag(ESTABLISHED, L, "10.0.0.3:2", 502, 3)),
            ],
            HashMap::new(),
        );
        let s = merge(&dump, &[], 1, &mut FirstSeen::default(), &mut Names);
        let kinds: Vec<_> = s.iter().map(|s| (s.kind, s.owner.is_none())).collect();
        assert_eq!(
            kinds,
            vec![
                (StuckKind::OrphanFinWait2, true),
                (StuckKind::FinWait2, true)
            ]
        );
    }

    #[test]
    fn an_orphan_is_named_by_the_connection_that_closed_first_here() {
        use crate::model::tracker::{Connection, End};
        let mut c = Connection::test(
            3_000_000_000,
            "10.0.0.2",
            40000,
            End::TimeWait,
            Role::Active,
        );
        (c.stack_id, c.dwell_ms.fin_wait2) = (Some(5), Some(500.0));
        let t = Tracked::closed_first(&c).expect("a TIME_WAIT birth");
        let (l, r) = ("10.0.0.1:40000", "10.0.0.2:40000");
        let dump = dump(vec![(11, diag(FIN_WAIT2, l, r, 0, 1))], HashMap::new());
        let s = merge(
            &dump,
            &[t],
            4_000_000_000,
            &mut FirstSeen::default(),
            &mut Names,
        );
        let s = &s[0];
        assert_eq!(s.kind, StuckKind::OrphanFinWait2);
        assert_eq!(s.owner.as_ref().map(|o| o.pid), Some(10));
        assert_eq!((s.opened_by, s.fds.len()), (Some(Opener::Connect), 0));
        assert_eq!(
            s.stack.as_ref().map(|p| p.frames.clone()),
            Some(vec!["f5 of 10".to_string()])
        );
        assert!(
            s.used.is_none(),
            "a closed socket's address is not looked up"
        );
        // In FIN_WAIT2 since 0.5 s before the close at 3 s: 1.5 s at 4 s, exactly.
        assert_eq!((s.age_ms, s.at_least), (1500.0, false));
        // Only connections this host closed first can leave an orphan.
        let closed_by_peer = Connection::test(1, "10.0.0.2", 1, End::Closed, Role::Active);
        assert!(Tracked::closed_first(&closed_by_peer).is_none());
    }

    #[test]
    fn tracked_only_sockets_count_only_when_the_dump_is_incomplete() {
        let t = [tracked(TcpState::CloseWait, L, R, 42)];
        let mut dump = Dump {
            complete: true,
            ..Dump::default()
        };
        assert!(
            merge(
                &dump,
                &t,
                2_000_000_000,
                &mut FirstSeen::default(),
                &mut Names
            )
            .is_empty()
        );
        dump.complete = false;
        let s = merge(
            &dump,
            &t,
            2_000_000_000,
            &mut FirstSeen::default(),
            &mut Names,
        );
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].netns, s[0].age_ms, s[0].at_least),
            (None, 1000.0, false)
        );
    }
}
