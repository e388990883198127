//! A snapshot's names, recorded and replayed: [`Answering`] asks the host and keeps every
//! answer in the snapshot's [`StuckSnapshot`]; [`Recorded`] answers from it, so a replay names
//! what the live run named and never asks the machine it runs on.
use std::collections::HashMap;
use std::sync::Arc;

use super::merge::Lookup;
use crate::host::stacks::CodePath;
use crate::host::stuck::StuckSnapshot;
use crate::model::event::UseCall;

/// Asks `host` and writes each answer into `into` (code paths once each, by identity).
pub struct Answering<'a> {
    pub host: &'a mut dyn Lookup,
    pub into: &'a mut StuckSnapshot,
    /// Code paths already in `into.paths`, by address.
    indexes: HashMap<*const CodePath, u32>,
}

impl<'a> Answering<'a> {
    pub fn new(host: &'a mut dyn Lookup, into: &'a mut StuckSnapshot) -> Self {
        Self {
            host,
            into,
            indexes: HashMap::new(),
        }
    }

    fn index(&mut self, path: &Arc<CodePath>) -> u32 {
        let paths = &mut self.into.paths;
        *self.indexes.entry(Arc::as_ptr(path)).or_insert_with(|| {
            paths.push(path.as_ref().clone());
            (paths.len() - 1) as u32
        })
    }

    /// The containers the recorded cgroup paths name now (what the snapshot's groups show).
    pub fn name_containers(&mut self) {
        let mut paths: Vec<&str> = self
            .into
            .cgroups
            .iter()
            .filter_map(|(_, _, p)| p.as_deref())
            .collect();
        paths.sort_unstable();
        paths.dedup();
        let found: Vec<_> = paths
            .into_iter()
            .filter_map(crate::host::containers::container_of_path)
            .map(|c| c.as_ref().clone())
            .collect();
        self.into.containers = found;
    }
}

impl Lookup for Answering<'_> {
    fn cgroup(&mut self, cgroup_id: Option<u64>, pid: u32) -> Option<String> {
        let answer = self.host.cgroup(cgroup_id, pid);
        self.into.cgroups.push((cgroup_id, pid, answer.clone()));
        answer
    }

    fn frames(&mut self, pid: u32, stack_id: u32) -> Option<Arc<CodePath>> {
        let answer = self.host.frames(pid, stack_id);
        let index = answer.as_ref().map(|p| self.index(p));
        self.into.stacks.push((pid, stack_id, index));
        answer
    }

    fn first_use(&mut self, sock: u64) -> Option<(UseCall, Arc<CodePath>)> {
        let answer = self.host.first_use(sock);
        let index = answer.as_ref().map(|(call, p)| (*call, self.index(p)));
        self.into.first_uses.push((sock, index));
        answer
    }
}

/// Answers from a recorded snapshot; a question the live run never asked gets `None`.
pub struct Recorded {
    cgroups: HashMap<(Option<u64>, u32), Option<String>>,
    stacks: HashMap<(u32, u32), Option<Arc<CodePath>>>,
    first_uses: HashMap<u64, Option<(UseCall, Arc<CodePath>)>>,
}

impl Recorded {
    /// The answers of `s`; its containers become what this process knows of them.
    pub fn of(s: &StuckSnapshot) -> Recorded {
        for c in &s.containers {
            crate::host::containers::learn(Some(c.clone()));
        }
        let paths: Vec<Arc<CodePath>> = s.paths.iter().cloned().map(Arc::new).collect();
        let path = |i: u32| paths.get(i as usize).cloned();
        Recorded {
            cgroups: s
                .cgroups
                .iter()
                .map(|(id, pid, p)| ((*id, *pid), p.clone()))
                .collect(),
            stacks: s
                .stacks
                .iter()
                .map(|&(pid, id, i)| ((pid, id), i.and_then(path)))
                .collect(),
            first_uses: s
                .first_uses
                .iter()
                .map(|&(sock, u)| (sock, u.and_then(|(call, i)| Some((call, path(i)?)))))
                .collect(),
        }
    }
}

impl Lookup for Recorded {
    fn cgroup(&mut self, cgroup_id: Option<u64>, pid: u32) -> Option<String> {
        self.cgroups.get(&(cgroup_id, pid)).cloned().flatten()
    }

    fn frames(&mut self, pid: u32, stack_id: u32) -> Option<Arc<CodePath>> {
        self.stacks.get(&(pid, stack_id)).cloned().flatten()
    }

    fn first_use(&mut self, sock: u64) -> Option<(UseCall, Arc<CodePath>)> {
        self.first_uses.get(&sock).cloned().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names as a host would give them: each code path one `Arc`, handed out again.
    struct Host(Arc<CodePath>);

    impl Lookup for Host {
        fn cgroup(&mut self, id: Option<u64>, pid: u32) -> Option<String> {
            (pid != 0).then(|| format!("/cg{}-{pid}", id.unwrap_or(0)))
        }
        fn frames(&mut self, _pid: u32, id: u32) -> Option<Arc<CodePath>> {
            (id != 0).then(|| self.0.clone())
        }
        fn first_use(&mut self, sock: u64) -> Option<(UseCall, Arc<CodePath>)> {
            (sock != 0).then(|| (UseCall::Recv, self.0.clone()))
        }
    }

    #[test]
    fn a_replay_gets_every_answer_the_live_run_got_and_nothing_else() {
        let path = Arc::new(CodePath {
            frames: vec!["handle (srv.c:12)".into(), "main".into()],
            ..CodePath::default()
        });
        let mut host = Host(path.clone());
        let mut snap = StuckSnapshot::default();
        let mut live = Answering::new(&mut host, &mut snap);
        let asked = (
            live.cgroup(Some(7), 42),
            live.cgroup(None, 0),
            live.frames(42, 3),
            live.frames(42, 0),
            live.first_use(77),
            live.first_use(0),
        );
        live.name_containers();
        assert_eq!(snap.paths.len(), 1, "one code path, recorded once");
        // Through the frame's JSON, as a recording holds it.
        let back: StuckSnapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap())
            .expect("a snapshot reads back");
        assert_eq!(back, snap);
        let mut replay = Recorded::of(&back);
        let replayed = (
            replay.cgroup(Some(7), 42),
            replay.cgroup(None, 0),
            replay.frames(42, 3),
            replay.frames(42, 0),
            replay.first_use(77),
            replay.first_use(0),
        );
        assert_eq!(replayed, asked);
        assert_eq!(replay.frames(42, 4), None, "never asked live");
        assert_eq!(replay.cgroup(Some(7), 43), None, "never asked live");
    }
}
