//! The kernel's own list of timewait sockets, in every network namespace, for the live
//! TIME_WAIT table to reconcile with ([`crate::model::timewait::TimeWaits::reconcile`]).
//!
//! Why: no tracepoint fires when a reset kills a timewait socket, or when a birth is refused
//! at a cap netwatch did not know. Each dump also brings the namespace's sysctls (port range,
//! reserved ports, tcp_tw_reuse, tcp_max_tw_buckets) and its TCPTimeWaitOverflow counter.
//!
//! Cost: the kernel walks the whole established hash for each namespace and family (child
//! namespaces share the host's table): about 4 ms of system time per namespace here, so a
//! round every 30 s, not faster. A state-filtered sock_diag dump per namespace (what
//! `ss -tan state time-wait` asks for) is cheap next to the 30 s between dumps, and it runs on
//! a thread of its own so the ring buffer is never left waiting for it.
use std::{
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread::JoinHandle,
    time::Duration,
};

use crate::{
    host::{clock::monotonic_ns, netns, sockdiag},
    model::timewait::Observed,
};

/// How often every namespace is dumped.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// A dump is handed over only once the stream has had this long to deliver the events that
/// happened before it (the stream drains at least every 50 ms): a kill read after the dump
/// would otherwise count as drift.
const SETTLE_NS: u64 = 200_000_000;

/// A running dumper; dropping it stops the thread.
pub struct TimeWaitFeed {
    dumps: Receiver<Observed>,
    held: Vec<Observed>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TimeWaitFeed {
    /// Dumps every namespace now, on the caller's thread, and returns those dumps to apply at
    /// once: each namespace's settings (its cap above all) must be known before the first
    /// birth in it is counted. Then dumps every [`INTERVAL`] on a thread of its own.
    pub fn start() -> (Self, Vec<Observed>) {
        let first = dump_all();
        let (tx, dumps) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("netwatch-timewait".into())
            .spawn(move || {
                loop {
                    match stopped.recv_timeout(INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    for obs in dump_all() {
                        if tx.send(obs).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| {
                log::warn!("TIME_WAIT reconciliation disabled: cannot start its thread: {e}")
            })
            .ok();
        let feed = Self {
            dumps,
            held: Vec::new(),
            stop: Some(stop),
            thread,
        };
        (feed, first)
    }

    /// The dumps that are ready to apply now (old enough that the stream has caught up).
    pub fn ready(&mut self) -> Vec<Observed> {
        self.held.extend(self.dumps.try_iter());
        let now = monotonic_ns();
        let (ready, held) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|o| o.taken_ns + SETTLE_NS <= now);
        self.held = held;
        ready
    }
}

impl Drop for TimeWaitFeed {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every namespace's timewait sockets, now. Namespaces that cannot be dumped (gone, or no
/// privilege) are skipped, with a debug line.
pub fn dump_all() -> Vec<Observed> {
    let own = netns::own();
    netns::all()
        .into_iter()
        .filter_map(|ns| {
            let taken_ns = monotonic_ns();
            let path = (Some(ns.inode) != own).then_some(ns.path.as_path());
            match sockdiag::time_waits(path) {
                Ok(d) => Some(Observed {
                    netns: ns.inode as u32,
                    taken_ns,
                    settings: d.settings,
                    sockets: d
                        .sockets
                        .into_iter()
                        .map(|s| (s.src, s.dst, s.expires_ms))
                        .collect(),
                    kernel_overflows: d.time_wait_overflows,
                }),
                Err(e) => {
                    log::debug!("TIME_WAIT dump of {}: {e}", ns.path.display());
                    None
                }
            }
        })
        .collect()
}
