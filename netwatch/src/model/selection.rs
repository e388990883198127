//! What the user asked to see: the BCC-style flags (`-p`, `-L`, `-D`, `-4`, `-6`, `--comm`,
//! `--cgroup`) and an `ss`-style filter expression, applied to events, connections and stuck
//! sockets, and the part of it the kernel can decide (pids, ports, family, cgroup), handed to
//! the programs so filtered-out events never cost a ring-buffer slot.
use std::{net::IpAddr, ops::RangeInclusive, os::unix::fs::MetadataExt as _, path::Path};

use netwatch_common::{AF_INET, AF_INET6, FILTER_SLOTS, KernelFilter};

use crate::{
    cli::FilterArgs,
    model::event::{Event, EventKind, Family, TcpState},
    model::filter::{self, Expr, Side, Subject, TcpStateName},
    model::tracker::{CloseWaitSocket, Connection, End, LiveSocket},
};

/// Everything the user filters on.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pids: Vec<u32>,
    local_ports: Vec<RangeInclusive<u16>>,
    remote_ports: Vec<RangeInclusive<u16>>,
    family: Option<Family>,
    comm: Option<String>,
    cgroup_id: Option<u64>,
    expr: Option<Expr>,
}

/// `80`, `8000-8080`, `22,443,8000-8080`.
pub fn parse_ports(s: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    s.split(',')
        .map(|part| {
            let num = |t: &str| {
                t.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("`{t}` in `{s}` is not a port (0-65535)"))
            };
            match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (num(lo)?, num(hi)?);
                    if lo > hi {
                        return Err(format!("range `{part}` in `{s}` runs backwards"));
                    }
                    Ok(lo..=hi)
                }
                None => num(part).map(|p| p..=p),
            }
        })
        .collect()
}

/// The cgroup v2 id of a cgroup path: the inode number of its directory.
fn cgroup_id(path: &Path) -> Result<u64, String> {
    let full = if path.starts_with("/sys/fs/cgroup") {
        path.to_path_buf()
    } else {
        Path::new("/sys/fs/cgroup").join(path.strip_prefix("/").unwrap_or(path))
    };
    std::fs::metadata(&full)
        .map(|m| m.ino())
        .map_err(|e| format!("--cgroup {}: {} ({e})", path.display(), full.display()))
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
            | EventKind::Accept { state } => *state,
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
    /// Parses and checks everything before anything is attached.
    pub fn from_args(a: &FilterArgs) -> anyhow::Result<Self> {
        let expr = filter::parse_args(&a.filter)?;
        Ok(Self {
            pids: a.pids.clone(),
            local_ports: a.local_ports.iter().flatten().cloned().collect(),
            remote_ports: a.remote_ports.iter().flatten().cloned().collect(),
            family: if a.ipv4 {
                Some(Family::Ipv4)
            } else if a.ipv6 {
                Some(Family::Ipv6)
            } else {
                None
            },
            comm: a.comm.clone(),
            cgroup_id: a
                .cgroup
                .as_deref()
                .map(cgroup_id)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            expr,
        })
    }

    /// Nothing to filter.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.local_ports.is_empty()
            && self.remote_ports.is_empty()
            && self.family.is_none()
            && self.comm.is_none()
            && self.cgroup_id.is_none()
            && self.expr.is_none()
    }

    fn owner_matches(&self, pid: Option<u32>, comm: Option<&str>, cgroup: Option<u64>) -> bool {
        (self.pids.is_empty() || pid.is_some_and(|p| self.pids.contains(&p)))
            && self.comm.as_deref().is_none_or(|c| comm == Some(c))
            && self.cgroup_id.is_none_or(|c| cgroup == Some(c))
    }

    fn endpoints_match(&self, local: (IpAddr, u16), remote: (IpAddr, u16)) -> bool {
        // A local port of 0 is not chosen yet (CLOSE -> SYN_SENT): the kernel lets it pass,
        // and so does this, so both agree on what a filter keeps.
        (local.1 == 0 || in_ranges(local.1, &self.local_ports))
            && in_ranges(remote.1, &self.remote_ports)
            && self.family.is_none_or(|f| family_of(local.0) == f)
    }

    pub fn event(&self, ev: &Event) -> bool {
        self.owner_matches(ev.pid, ev.comm.as_deref(), ev.cgroup_id)
            && self.endpoints_match((ev.saddr, ev.sport), (ev.daddr, ev.dport))
            && self.family.is_none_or(|f| ev.family == f)
            && self
                .expr
                .as_ref()
                .is_none_or(|e| e.matches(&EventSubject(ev)))
    }

    pub fn connection(&self, c: &Connection) -> bool {
        self.owner_matches(c.pid, c.comm.as_deref(), c.cgroup_id)
            && self.endpoints_match((c.saddr, c.sport), (c.daddr, c.dport))
            && self
                .expr
                .as_ref()
                .is_none_or(|e| e.matches(&ConnectionSubject(c)))
    }

    pub fn close_wait(&self, c: &CloseWaitSocket) -> bool {
        self.owner_matches(c.pid, c.comm.as_deref(), c.cgroup_id)
            && self.endpoints_match((c.saddr, c.sport), (c.daddr, c.dport))
            && self
                .expr
                .as_ref()
                .is_none_or(|e| e.matches(&CloseWaitSubject(c)))
    }

    /// An open socket, in the state it is in now.
    pub fn socket(&self, s: &LiveSocket) -> bool {
        self.owner_matches(s.pid, s.comm, s.cgroup_id)
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
mod tests {
    use super::*;

    fn sel(args: &[&str]) -> Selection {
        use clap::Parser as _;
        let cli =
            crate::cli::Cli::try_parse_from(["netwatch", "trace"].iter().chain(args).copied())
                .unwrap_or_else(|e| panic!("{e}"));
        let Some(crate::cli::Command::Trace(t)) = cli.command else {
            panic!("trace")
        };
        Selection::from_args(&t.filter).unwrap()
    }

    fn event(pid: u32, sport: u16, dport: u16, new: TcpState) -> Event {
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
    fn ports_lists_and_ranges() {
        assert_eq!(parse_ports("80"), Ok(vec![80..=80]));
        assert_eq!(parse_ports("22,8000-8080"), Ok(vec![22..=22, 8000..=8080]));
        assert_eq!(
            parse_ports("9-1").unwrap_err(),
            "range `9-1` in `9-1` runs backwards"
        );
        assert_eq!(
            parse_ports("http").unwrap_err(),
            "`http` in `http` is not a port (0-65535)"
        );
    }

    #[test]
    fn flags_and_expression_combine() {
        let s = sel(&["-p", "42", "-D", "5432", "state", "close-wait"]);
        assert!(s.event(&event(42, 40000, 5432, TcpState::CloseWait)));
        assert!(!s.event(&event(43, 40000, 5432, TcpState::CloseWait)));
        assert!(!s.event(&event(42, 40000, 5433, TcpState::CloseWait)));
        assert!(!s.event(&event(42, 40000, 5432, TcpState::Established)));
        let k = s.kernel();
        assert_eq!((k.n_pids, k.pids[0]), (1, 42));
        assert_eq!((k.n_remote_ports, k.remote_ports[0]), (1, [5432, 5432]));
        assert_eq!(k.n_local_ports, 0);
    }

    #[test]
    fn expression_ports_go_to_the_kernel() {
        let s = sel(&["( dport = :80 or dport = :443 )"]);
        let k = s.kernel();
        assert_eq!(k.n_remote_ports, 2);
        assert_eq!(&k.remote_ports[..2], &[[80, 80], [443, 443]]);
        let s = sel(&["-4", "dst", "10.0.0.0/8", "and", "not", "dport", "=", ":22"]);
        let k = s.kernel();
        assert_eq!(k.family, AF_INET);
        assert_eq!(&k.remote_ports[..2], &[[0, 21], [23, 65535]]);
        assert!(s.event(&event(1, 1, 80, TcpState::Established)));
        assert!(!s.event(&event(1, 1, 22, TcpState::Established)));
    }

    #[test]
    fn a_bad_expression_names_the_token_and_column() {
        use clap::Parser as _;
        let cli =
            crate::cli::Cli::try_parse_from(["netwatch", "trace", "dport", "=", "80x"]).unwrap();
        let Some(crate::cli::Command::Trace(t)) = cli.command else {
            panic!()
        };
        let err = Selection::from_args(&t.filter).unwrap_err().to_string();
        assert_eq!(err, "expected ':PORT' after 'dport =' at column 9");
    }

    #[test]
    fn an_unchosen_local_port_passes_like_in_the_kernel() {
        let s = sel(&["-L", "5000"]);
        assert!(s.event(&event(1, 0, 80, TcpState::SynSent)));
        assert!(!s.event(&event(1, 4999, 80, TcpState::Established)));
    }
}
