//! What the user asked to see: the BCC-style flags (`-p`, `-L`, `-D`, `-4`, `-6`, `--comm`,
//! `--cgroup`), the container flags (`--k8s-namespace`, `--pod`, `--container`, decided in
//! user space: the kernel knows no names) and an `ss`-style filter expression, applied to events, connections and stuck
//! sockets, and the part of it the kernel can decide (pids, ports, family, cgroup), handed to
//! the programs so filtered-out events never cost a ring-buffer slot.
use std::{net::IpAddr, ops::RangeInclusive, sync::Arc};

use netwatch_common::{AF_INET, AF_INET6, FILTER_SLOTS, KernelFilter};

use crate::{
    model::event::{Event, EventKind, Family, TcpState},
    model::filter::{Expr, Side, Subject, TcpStateName},
    model::names::Container,
    model::tracker::{CloseWaitSocket, Connection, End, LiveSocket},
};

/// Everything the user filters on.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// `-p`: owners.
    pub pids: Vec<u32>,
    /// `-L`: local ports.
    pub local_ports: Vec<RangeInclusive<u16>>,
    /// `-D`: remote ports.
    pub remote_ports: Vec<RangeInclusive<u16>>,
    /// `-4` / `-6`.
    pub family: Option<Family>,
    /// `--comm`.
    pub comm: Option<String>,
    /// `--cgroup`, as the cgroup v2 id the kernel reports.
    pub cgroup_id: Option<u64>,
    /// `--k8s-namespace`, `--pod`, `--container`.
    pub containers: Option<ContainerSelection>,
    /// The ss-style expression.
    pub expr: Option<Expr>,
}

/// Names an owner's container from its cgroup id and pid (the host's lookup; tests fake it).
pub type ContainerLookup = fn(Option<u64>, Option<u32>) -> Option<Arc<Container>>;

/// The container flags: an owner passes when its container has every name asked for. An
/// owner in no container, or in one whose names are not known (yet), does not.
#[derive(Clone, Debug)]
pub struct ContainerSelection {
    /// `--k8s-namespace`: the pod's Kubernetes namespace.
    pub namespace: Option<String>,
    /// `--pod`: the Kubernetes pod name.
    pub pod: Option<String>,
    /// `--container`: the container's name, or its id (whole, or its first 12 or more digits).
    pub container: Option<String>,
    pub names: ContainerLookup,
}

impl ContainerSelection {
    fn matches(&self, cgroup_id: Option<u64>, pid: Option<u32>) -> bool {
        let Some(c) = (self.names)(cgroup_id, pid) else {
            return false;
        };
        let same = |want: &Option<String>, have: &Option<String>| {
            want.is_none() || want.as_deref() == have.as_deref()
        };
        same(&self.namespace, &c.namespace)
            && same(&self.pod, &c.pod)
            && self.container.as_deref().is_none_or(|want| {
                c.name.as_deref() == Some(want) || want.len() >= 12 && c.id.starts_with(want)
            })
    }
}

fn in_ranges(port: u16, ranges: &[RangeInclusive<u16>]) -> bool {
    ranges.is_empty() || ranges.iter().any(|r| r.contains(&port))
}

fn state_name(s: TcpState) -> Option<TcpStateName> {
    TcpStateName::from_kernel(s.kernel_number())
}

/// An event as a filter subject: its state is the one it leaves the socket in.
struct EventSubject<'a>(&'a Event);

impl Subject for EventSubject<'_> {
    fn state(&self) -> Option<TcpStateName> {
        let s = match &self.0.kind {
            EventKind::State { new_state, .. } => *new_state,
            EventKind::Retransmit { state, .. }
            | EventKind::SynackRetransmit { state }
            | EventKind::ResetReceived { state }
            | EventKind::ResetSent { state, .. }
            | EventKind::Destroy { state }
            | EventKind::Accept { state }
            | EventKind::FirstUse { state, .. } => *state,
        };
        s.and_then(state_name)
    }
    fn local(&self) -> (IpAddr, u16) {
        (self.0.saddr, self.0.sport)
    }
    fn remote(&self) -> (IpAddr, u16) {
        (self.0.daddr, self.0.dport)
    }
}

/// A finished connection as a filter subject: its state is the one it ended in, TIME_WAIT
/// for a TIME_WAIT birth and CLOSE otherwise.
struct ConnectionSubject<'a>(&'a Connection);

impl Subject for ConnectionSubject<'_> {
    fn state(&self) -> Option<TcpStateName> {
        Some(if self.0.end == End::TimeWait {
            TcpStateName::TimeWait
        } else {
            TcpStateName::Close
        })
    }
    fn local(&self) -> (IpAddr, u16) {
        (self.0.saddr, self.0.sport)
    }
    fn remote(&self) -> (IpAddr, u16) {
        (self.0.daddr, self.0.dport)
    }
}

struct CloseWaitSubject<'a>(&'a CloseWaitSocket);

impl Subject for CloseWaitSubject<'_> {
    fn state(&self) -> Option<TcpStateName> {
        Some(TcpStateName::CloseWait)
    }
    fn local(&self) -> (IpAddr, u16) {
        (self.0.saddr, self.0.sport)
    }
    fn remote(&self) -> (IpAddr, u16) {
        (self.0.daddr, self.0.dport)
    }
}

/// An open socket as a filter subject, in its current state (`netwatch top`).
struct LiveSubject<'a, 'b>(&'a LiveSocket<'b>);

impl Subject for LiveSubject<'_, '_> {
    fn state(&self) -> Option<TcpStateName> {
        state_name(self.0.state)
    }
    fn local(&self) -> (IpAddr, u16) {
        (self.0.saddr, self.0.sport)
    }
    fn remote(&self) -> (IpAddr, u16) {
        (self.0.daddr, self.0.dport)
    }
}

fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

impl Selection {
    /// Nothing to filter.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.local_ports.is_empty()
            && self.remote_ports.is_empty()
            && self.family.is_none()
            && self.comm.is_none()
            && self.cgroup_id.is_none()
            && self.containers.is_none()
            && self.expr.is_none()
    }

    /// `comm` is asked for only when `--comm` is given: reading a task name as text costs
    /// a UTF-8 check, and every event passes here.
    fn owner_matches<'a>(
        &self,
        pid: Option<u32>,
        comm: impl FnOnce() -> Option<&'a str>,
        cgroup: Option<u64>,
    ) -> bool {
        (self.pids.is_empty() || pid.is_some_and(|p| self.pids.contains(&p)))
            && self.comm.as_deref().is_none_or(|c| comm() == Some(c))
            && self.cgroup_id.is_none_or(|c| cgroup == Some(c))
            && self
                .containers
                .as_ref()
                .is_none_or(|c| c.matches(cgroup, pid))
    }

    fn endpoints_match(&self, local: (IpAddr, u16), remote: (IpAddr, u16)) -> bool {
        // A local port of 0 is not chosen yet (CLOSE -> SYN_SENT): the kernel lets it pass,
        // and so does this, so both agree on what a filter keeps.
        (local.1 == 0 || in_ranges(local.1, &self.local_ports))
            && in_ranges(remote.1, &self.remote_ports)
            && self.family.is_none_or(|f| family_of(local.0) == f)
    }

    pub fn event(&self, ev: &Event) -> bool {
        self.owner_matches(ev.pid, || ev.comm.as_deref(), ev.cgroup_id)
            && self.endpoints_match((ev.saddr, ev.sport), (ev.daddr, ev.dport))
            && self.family.is_none_or(|f| ev.family == f)
            && self
                .expr
                .as_ref()
                .is_none_or(|e| e.matches(&EventSubject(ev)))
    }

    pub fn connection(&self, c: &Connection) -> bool {
        self.owner_matches(c.pid, || c.comm.as_deref(), c.cgroup_id)
            && self.endpoints_match((c.saddr, c.sport), (c.daddr, c.dport))
            && self
                .expr
                .as_ref()
                .is_none_or(|e| e.matches(&ConnectionSubject(c)))
    }

    pub fn close_wait(&self, c: &CloseWaitSocket) -> bool {
        self.owner_matches(c.pid, || c.comm.as_deref(), c.cgroup_id)
            && self.endpoints_match((c.saddr, c.sport), (c.daddr, c.dport))
            && self
                .expr
                .as_ref()
                .is_none_or(|e| e.matches(&CloseWaitSubject(c)))
    }

    /// An open socket, in the state it is in now.
    pub fn socket(&self, s: &LiveSocket) -> bool {
        self.owner_matches(s.pid, || s.comm, s.cgroup_id)
            && self.endpoints_match((s.saddr, s.sport), (s.daddr, s.dport))
            && self
                .expr
                .as_ref()
                .is_none_or(|e| e.matches(&LiveSubject(s)))
    }

    /// The part the kernel can decide: never stricter than [`Selection::event`], so what the
    /// kernel keeps and user space then filters equals filtering everything in user space.
    pub fn kernel(&self) -> KernelFilter {
        let mut k = KernelFilter::ANY;
        if !self.pids.is_empty() && self.pids.len() <= FILTER_SLOTS {
            k.pids[..self.pids.len()].copy_from_slice(&self.pids);
            k.n_pids = self.pids.len() as u32;
        }
        let ports = |flag: &[RangeInclusive<u16>], side: Side| -> Vec<RangeInclusive<u16>> {
            if !flag.is_empty() {
                return flag.to_vec();
            }
            self.expr
                .as_ref()
                .and_then(|e| e.required_ports(side))
                .unwrap_or_default()
        };
        let local = ports(&self.local_ports, Side::Src);
        if !local.is_empty() && local.len() <= FILTER_SLOTS {
            for (slot, r) in k.local_ports.iter_mut().zip(&local) {
                *slot = [*r.start(), *r.end()];
            }
            k.n_local_ports = local.len() as u32;
        }
        let remote = ports(&self.remote_ports, Side::Dst);
        if !remote.is_empty() && remote.len() <= FILTER_SLOTS {
            for (slot, r) in k.remote_ports.iter_mut().zip(&remote) {
                *slot = [*r.start(), *r.end()];
            }
            k.n_remote_ports = remote.len() as u32;
        }
        k.family = match self.family {
            Some(Family::Ipv4) => AF_INET,
            Some(Family::Ipv6) => AF_INET6,
            None => 0,
        };
        k.cgroup_id = self.cgroup_id.unwrap_or(0);
        k
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A transition from ESTABLISHED to `new` of `pid` (`app`), 10.0.0.1:`sport` to
    /// 10.0.0.2:`dport`: what selection tests filter, here and in `cli`.
    pub(crate) fn event(pid: u32, sport: u16, dport: u16, new: TcpState) -> Event {
        let mut ev = Event::test_state(1);
        ev.pid = Some(pid);
        ev.comm = Some("app".into());
        ev.saddr = "10.0.0.1".parse().unwrap();
        ev.daddr = "10.0.0.2".parse().unwrap();
        (ev.sport, ev.dport) = (sport, dport);
        ev.kind = EventKind::state(TcpState::Established, new);
        ev
    }

    #[test]
    fn an_unchosen_local_port_passes_like_in_the_kernel() {
        let s = Selection {
            local_ports: vec![5000..=5000],
            ..Selection::default()
        };
        assert!(s.event(&event(1, 0, 80, TcpState::SynSent)));
        assert!(!s.event(&event(1, 4999, 80, TcpState::Established)));
    }

    /// What the README says: `-L` keeps the events whose local port is not chosen yet
    /// (`CLOSE -> SYN_SENT`), so a filtered view still sees its connects begin; the expression
    /// `sport = :PORT` keeps exactly the port. On every other event they agree.
    #[test]
    fn the_local_port_flag_and_expression_differ_only_before_the_port_is_chosen() {
        let flag = Selection {
            local_ports: vec![5000..=5000],
            ..Selection::default()
        };
        let expr = Selection {
            expr: Some("sport = :5000".parse().unwrap()),
            ..Selection::default()
        };
        let unchosen = event(1, 0, 80, TcpState::SynSent);
        assert!(flag.event(&unchosen) && !expr.event(&unchosen));
        for (sport, state) in [
            (5000, TcpState::Established),
            (4999, TcpState::Established),
            (5000, TcpState::FinWait1),
            (1, TcpState::SynSent),
        ] {
            let ev = event(1, sport, 80, state);
            assert_eq!(flag.event(&ev), expr.event(&ev), "sport {sport} {state:?}");
            assert_eq!(flag.event(&ev), sport == 5000, "sport {sport} {state:?}");
        }
    }

    const WEB_ID: &str = "1872f01e81a5e66f8fe602936808abd0a650fa4c1eba45c4196e78ef05e32840";

    /// A fake host: cgroup 1 is pod prod/shop-7f's `web`, cgroup 2 a plain container `redis`,
    /// cgroup 3 a container not named yet; anything else runs in no container.
    fn containers(cgroup_id: Option<u64>, _pid: Option<u32>) -> Option<Arc<Container>> {
        let c = match cgroup_id? {
            1 => Container {
                name: Some("web".into()),
                pod: Some("shop-7f".into()),
                namespace: Some("prod".into()),
                ..Container::unnamed(WEB_ID)
            },
            2 => Container {
                name: Some("redis".into()),
                ..Container::unnamed(&"2".repeat(64))
            },
            3 => Container::unnamed(&"3".repeat(64)),
            _ => return None,
        };
        Some(Arc::new(c))
    }

    #[test]
    fn container_flags_keep_the_owners_whose_container_has_every_name_asked() {
        let sel = |ns: Option<&str>, pod: Option<&str>, container: Option<&str>| Selection {
            containers: Some(ContainerSelection {
                namespace: ns.map(str::to_string),
                pod: pod.map(str::to_string),
                container: container.map(str::to_string),
                names: containers,
            }),
            ..Selection::default()
        };
        let kept = |s: &Selection| -> Vec<u64> {
            (1..=4)
                .filter(|&id| {
                    let mut ev = event(7, 4000, 80, TcpState::Established);
                    ev.cgroup_id = Some(id);
                    s.event(&ev)
                })
                .collect()
        };
        assert!(!sel(None, None, None).is_empty());
        assert_eq!(kept(&sel(Some("prod"), None, None)), [1]);
        assert_eq!(kept(&sel(Some("prod"), Some("shop-7f"), Some("web"))), [1]);
        assert_eq!(
            kept(&sel(Some("dev"), Some("shop-7f"), None)),
            [] as [u64; 0]
        );
        assert_eq!(kept(&sel(None, None, Some("redis"))), [2]);
        // By id: whole, or its first 12 digits or more; a shorter prefix is no id.
        assert_eq!(kept(&sel(None, None, Some(WEB_ID))), [1]);
        assert_eq!(kept(&sel(None, None, Some(&WEB_ID[..12]))), [1]);
        assert_eq!(kept(&sel(None, None, Some(&WEB_ID[..4]))), [] as [u64; 0]);
        // Connections and stuck sockets are decided by their owner the same way.
        use crate::model::tracker::{End, Role};
        let mut c = Connection::test(5, "10.0.0.2", 80, End::Closed, Role::Active);
        c.cgroup_id = Some(1);
        assert!(sel(Some("prod"), None, None).connection(&c));
        c.cgroup_id = Some(2);
        assert!(!sel(Some("prod"), None, None).connection(&c));
        // The kernel is not asked to decide any of it.
        assert_eq!(
            sel(Some("prod"), None, None).kernel(),
            Selection::default().kernel()
        );
    }
}
