//! One event as a binary recording stores it: postcard (varints, no field names), every string
//! (comm, cgroup path, container names, stack frames, reset reasons) replaced by its index in
//! the block's string table, and the timestamp and socket address stored as differences from
//! the block's previous event (a churn's events are microseconds and a few slab objects
//! apart). Lossless: a block decodes to the very [`Event`] and owner names that were written.
//!
//! From version 4 a block also holds shorter records for a socket it already wrote in full
//! ([`Identity`]; see [`super::binary`]): those are read by hand ([`super::wire`]) and have no
//! `Compact`.
//!
//! The encoding is part of the file format ([`super::binary::VERSION`]): a change to these
//! types (field order, variant order) needs a new version and a reader for the old one. The
//! test `an_event_encodes_to_these_bytes` pins it.
use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::model::event::{EventKind, TcpState};
use crate::model::{
    comm::Comm,
    event::{Event, Family, UseCall},
    names::{Container, RecordedOwner},
};

/// A state as the kernel numbers it (`include/net/tcp_states.h`), 0 when unknown: numbers
/// the kernel fixed, rather than the order of an enum in this crate.
type StateNo = u8;

#[cfg(test)]
fn state_no(s: Option<TcpState>) -> StateNo {
    s.map_or(0, TcpState::kernel_number)
}

/// Milliseconds as the kernel's integer they were made from, when that gives the same
/// float back (a dwell in ns, an RTT in µs): 1 to 5 bytes rather than 8.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(super) enum Millis {
    Unknown,
    Nanos(u64),
    Micros(u64),
    Exact(f64),
}

impl Millis {
    pub(super) fn of(ms: Option<f64>) -> Millis {
        let Some(ms) = ms else {
            return Millis::Unknown;
        };
        if ms.is_finite() && (0.0..1e12).contains(&ms) {
            let ns = (ms * 1e6).round() as u64;
            if (ns as f64 / 1e6).to_bits() == ms.to_bits() {
                return Millis::Nanos(ns);
            }
            let us = (ms * 1e3).round() as u64;
            if (us as f64 / 1e3).to_bits() == ms.to_bits() {
                return Millis::Micros(us);
            }
        }
        Millis::Exact(ms)
    }

    pub(super) fn ms(self) -> Option<f64> {
        match self {
            Millis::Unknown => None,
            Millis::Nanos(ns) => Some(ns as f64 / 1e6),
            Millis::Micros(us) => Some(us as f64 / 1e3),
            Millis::Exact(ms) => Some(ms),
        }
    }
}

/// [`EventKind`] with states as kernel numbers and the reset reason as a string index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) enum Kind {
    State {
        old: StateNo,
        new: StateNo,
        ms_in_old: Millis,
        bytes_sent: Option<u64>,
        bytes_received: Option<u64>,
        srtt_ms: Millis,
    },
    Retransmit {
        state: StateNo,
        err: Option<i32>,
    },
    SynackRetransmit {
        state: StateNo,
    },
    ResetReceived {
        state: StateNo,
    },
    ResetSent {
        state: StateNo,
        reason: Option<u32>,
    },
    Destroy {
        state: StateNo,
    },
    Accept {
        state: StateNo,
    },
    FirstUse {
        state: StateNo,
        call: UseCall,
    },
}

/// The owner's container, its names as string indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ContainerRef {
    pub(super) id: u32,
    pub(super) name: Option<u32>,
    pub(super) pod: Option<u32>,
    pub(super) namespace: Option<u32>,
}

/// One event and its owner's names, as a block stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Compact {
    /// `ts_ns` minus the previous event's in the block, of either record (wrapping; the first:
    /// minus 0).
    pub(super) ts: i64,
    /// `sock` minus the previous full event's in the block (wrapping): a same-socket record
    /// (version 4) leaves the socket difference where it was.
    pub(super) sock: i64,
    pub(super) pid: Option<u32>,
    pub(super) tid: Option<u32>,
    pub(super) comm: Option<u32>,
    pub(super) owner_seen_here: bool,
    pub(super) cgroup_id: Option<u64>,
    pub(super) netns: Option<u32>,
    pub(super) family: Family,
    pub(super) saddr: IpAddr,
    pub(super) sport: u16,
    pub(super) daddr: IpAddr,
    pub(super) dport: u16,
    pub(super) stack_id: Option<u32>,
    pub(super) stack: Vec<u32>,
    pub(super) kind: Kind,
    /// The owner's cgroup path as the live run named it.
    pub(super) cgroup: Option<u32>,
    pub(super) container: Option<ContainerRef>,
}

/// A block's strings, as the writer collects them: each stored once, in order of first use.
#[derive(Default)]
pub struct Strings {
    /// foldhash rather than SipHash: every event looks up its task name here.
    index: HashMap<String, u32, foldhash::fast::RandomState>,
    list: Vec<String>,
}

impl Strings {
    pub(super) fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as u32;
        self.index.insert(s.to_string(), i);
        self.list.push(s.to_string());
        i
    }

    pub fn list(&self) -> &[String] {
        &self.list
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.list.clear();
    }
}

/// What the previous event of a block left for the next one's differences.
#[derive(Clone, Copy, Debug, Default)]
pub struct Previous {
    ts_ns: u64,
    sock: u64,
}

impl Previous {
    /// The next event's time and socket, from their differences to this one's.
    #[inline(always)]
    pub(super) fn advance(&mut self, ts: i64, sock: i64) -> (u64, u64) {
        self.ts_ns = self.ts_ns.wrapping_add(ts as u64);
        self.sock = self.sock.wrapping_add(sock as u64);
        (self.ts_ns, self.sock)
    }

    /// A same-socket record's time, from its difference to the previous event's: its socket
    /// comes from its slot, and the next full event's socket difference stays from the last
    /// full event's.
    #[inline(always)]
    pub(super) fn advance_ts(&mut self, ts: i64) -> u64 {
        self.ts_ns = self.ts_ns.wrapping_add(ts as u64);
        self.ts_ns
    }
}

/// What a socket's events share, as a full event record writes it: a same-socket record
/// (version 4) takes it from the block's earlier full record of its socket (its slot), and
/// `tid` unless the record gives its own. Compared whole by the writer, copied whole into the
/// event by the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) sock: u64,
    pub(super) pid: Option<u32>,
    pub(super) tid: Option<u32>,
    pub(super) comm: Option<Comm>,
    pub(super) cgroup_id: Option<u64>,
    pub(super) netns: Option<u32>,
    pub(super) family: Family,
    pub(super) saddr: IpAddr,
    pub(super) sport: u16,
    pub(super) daddr: IpAddr,
    pub(super) dport: u16,
    pub(super) stack_id: Option<u32>,
}

impl Identity {
    #[inline(always)]
    pub(super) fn of(ev: &Event) -> Identity {
        Identity {
            sock: ev.sock,
            pid: ev.pid,
            tid: ev.tid,
            comm: ev.comm,
            cgroup_id: ev.cgroup_id,
            netns: ev.netns,
            family: ev.family,
            saddr: ev.saddr,
            sport: ev.sport,
            daddr: ev.daddr,
            dport: ev.dport,
            stack_id: ev.stack_id,
        }
    }

    /// Equal but for `tid`, which a same-socket record may give apart.
    #[inline(always)]
    pub(super) fn same_but_tid(&self, other: &Identity) -> bool {
        Identity {
            tid: other.tid,
            ..*self
        } == *other
    }

    /// Into `ev`, whose other fields the record gives.
    #[inline(always)]
    pub(super) fn put(&self, ev: &mut Event) {
        ev.sock = self.sock;
        ev.pid = self.pid;
        ev.tid = self.tid;
        ev.comm = self.comm;
        ev.cgroup_id = self.cgroup_id;
        ev.netns = self.netns;
        ev.family = self.family;
        ev.saddr = self.saddr;
        ev.sport = self.sport;
        ev.daddr = self.daddr;
        ev.dport = self.dport;
        ev.stack_id = self.stack_id;
    }
}

/// A reader's slot: the identity and owner of one full event record of the block.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub(super) id: Identity,
    pub(super) owner: OwnerRefs,
}

impl Compact {
    /// `ev` and its owner's names (cgroup path, container), with its strings put into
    /// `strings`: what the recorder writes ([`super::encode`] writes its bytes directly).
    #[cfg(test)]
    pub fn encode(
        ev: &Event,
        cgroup: Option<&str>,
        container: Option<&Container>,
        strings: &mut Strings,
        prev: &mut Previous,
    ) -> Compact {
        let mut s = |v: &str| strings.intern(v);
        let kind = match &ev.kind {
            EventKind::State {
                old_state,
                new_state,
                ms_in_old,
                bytes_sent,
                bytes_received,
                srtt_ms,
            } => Kind::State {
                old: state_no(*old_state),
                new: state_no(*new_state),
                ms_in_old: Millis::of(*ms_in_old),
                bytes_sent: *bytes_sent,
                bytes_received: *bytes_received,
                srtt_ms: Millis::of(*srtt_ms),
            },
            EventKind::Retransmit { state, err } => Kind::Retransmit {
                state: state_no(*state),
                err: *err,
            },
            EventKind::SynackRetransmit { state } => Kind::SynackRetransmit {
                state: state_no(*state),
            },
            EventKind::ResetReceived { state } => Kind::ResetReceived {
                state: state_no(*state),
            },
            EventKind::ResetSent { state, reason } => Kind::ResetSent {
                state: state_no(*state),
                reason: reason.as_deref().map(&mut s),
            },
            EventKind::Destroy { state } => Kind::Destroy {
                state: state_no(*state),
            },
            EventKind::Accept { state } => Kind::Accept {
                state: state_no(*state),
            },
            EventKind::FirstUse { state, call } => Kind::FirstUse {
                state: state_no(*state),
                call: *call,
            },
        };
        let compact = Compact {
            ts: ev.ts_ns.wrapping_sub(prev.ts_ns) as i64,
            sock: ev.sock.wrapping_sub(prev.sock) as i64,
            pid: ev.pid,
            tid: ev.tid,
            comm: ev.comm.as_deref().map(&mut s),
            owner_seen_here: ev.owner_seen_here,
            cgroup_id: ev.cgroup_id,
            netns: ev.netns,
            family: ev.family,
            saddr: ev.saddr,
            sport: ev.sport,
            daddr: ev.daddr,
            dport: ev.dport,
            stack_id: ev.stack_id,
            stack: ev.stack.iter().map(|f| s(f)).collect(),
            kind,
            cgroup: cgroup.map(&mut s),
            container: container.map(|c| ContainerRef {
                id: s(&c.id),
                name: c.name.as_deref().map(&mut s),
                pod: c.pod.as_deref().map(&mut s),
                namespace: c.namespace.as_deref().map(&mut s),
            }),
        };
        *prev = Previous {
            ts_ns: ev.ts_ns,
            sock: ev.sock,
        };
        compact
    }

    /// The event back, and where its owner's names are in the block's string table (see
    /// [`OwnerRefs::names`]: a replay reads them only when they change); an error names the
    /// index or number that does not fit. The reference that the replay's reader
    /// ([`super::wire::Wire::event`], which makes no `Compact`) is held to.
    #[cfg(test)]
    pub fn decode(&self, table: &Table, prev: &mut Previous) -> Result<(Event, OwnerRefs), String> {
        let st = |n: StateNo| -> Result<Option<TcpState>, String> {
            match n {
                0 => Ok(None),
                n => TcpState::from_kernel(n)
                    .map(Some)
                    .ok_or_else(|| format!("unknown TCP state {n}")),
            }
        };
        let kind = match &self.kind {
            Kind::State {
                old,
                new,
                ms_in_old,
                bytes_sent,
                bytes_received,
                srtt_ms,
            } => EventKind::State {
                old_state: st(*old)?,
                new_state: st(*new)?,
                ms_in_old: ms_in_old.ms(),
                bytes_sent: *bytes_sent,
                bytes_received: *bytes_received,
                srtt_ms: srtt_ms.ms(),
            },
            Kind::Retransmit { state, err } => EventKind::Retransmit {
                state: st(*state)?,
                err: *err,
            },
            Kind::SynackRetransmit { state } => EventKind::SynackRetransmit { state: st(*state)? },
            Kind::ResetReceived { state } => EventKind::ResetReceived { state: st(*state)? },
            Kind::ResetSent { state, reason } => EventKind::ResetSent {
                state: st(*state)?,
                reason: table.opt(*reason)?,
            },
            Kind::Destroy { state } => EventKind::Destroy { state: st(*state)? },
            Kind::Accept { state } => EventKind::Accept { state: st(*state)? },
            Kind::FirstUse { state, call } => EventKind::FirstUse {
                state: st(*state)?,
                call: *call,
            },
        };
        let (ts_ns, sock) = prev.advance(self.ts, self.sock);
        let ev = Event {
            ts_ns,
            sock,
            pid: self.pid,
            tid: self.tid,
            comm: self.comm.map(|i| table.comm(i)).transpose()?,
            owner_seen_here: self.owner_seen_here,
            cgroup_id: self.cgroup_id,
            netns: self.netns,
            family: self.family,
            saddr: self.saddr,
            sport: self.sport,
            daddr: self.daddr,
            dport: self.dport,
            stack_id: self.stack_id,
            stack: if self.stack.is_empty() {
                Vec::new()
            } else {
                self.stack
                    .iter()
                    .map(|&i| table.string(i))
                    .collect::<Result<_, _>>()?
            },
            sp_word: None,
            kind,
        };
        let owner = OwnerRefs {
            pid: self.pid,
            cgroup_id: self.cgroup_id,
            cgroup: self.cgroup,
            container: self.container,
        };
        Ok((ev, owner))
    }
}

/// A block's string table as a reader holds it, with each string also as a task name: an
/// event holds its task name inline, made once per block rather than once per event.
#[derive(Default)]
pub struct Table {
    strings: Vec<String>,
    comms: Vec<Comm>,
}

impl Table {
    pub fn new(strings: Vec<String>) -> Table {
        let comms = strings.iter().map(|s| Comm::new(s)).collect();
        Table { strings, comms }
    }

    /// String `i`; past the table, the table's length.
    #[inline(always)]
    pub(super) fn at(&self, i: u32) -> Result<&String, usize> {
        self.strings.get(i as usize).ok_or(self.strings.len())
    }

    /// String `i` as a task name; past the table, the table's length.
    #[inline(always)]
    pub(super) fn comm_at(&self, i: u32) -> Result<Comm, usize> {
        self.comms.get(i as usize).copied().ok_or(self.comms.len())
    }

    fn get(&self, i: u32) -> Result<&String, String> {
        self.at(i)
            .map_err(|len| format!("string {i} is not in the block's table of {len}"))
    }

    fn string(&self, i: u32) -> Result<String, String> {
        self.get(i).cloned()
    }

    fn opt(&self, i: Option<u32>) -> Result<Option<String>, String> {
        i.map(|i| self.string(i)).transpose()
    }

    #[cfg(test)]
    fn comm(&self, i: u32) -> Result<Comm, String> {
        self.get(i)?;
        Ok(self.comms[i as usize])
    }
}

/// Where an event's owner's names are in its block's string table, with the owner they name:
/// equal refs in one block are equal names, so a replay learns each owner once per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerRefs {
    pub(super) pid: Option<u32>,
    pub(super) cgroup_id: Option<u64>,
    pub(super) cgroup: Option<u32>,
    pub(super) container: Option<ContainerRef>,
}

impl OwnerRefs {
    /// The owner's names.
    pub fn names(&self, table: &Table) -> Result<RecordedOwner, String> {
        let container = match &self.container {
            None => None,
            Some(c) => Some(Container {
                id: table.string(c.id)?,
                name: table.opt(c.name)?,
                pod: table.opt(c.pod)?,
                namespace: table.opt(c.namespace)?,
            }),
        };
        Ok(RecordedOwner {
            cgroup: table.opt(self.cgroup)?,
            container,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::pipeline::record::wire::{Wire, WireError};

    fn round_trip(events: &[(Event, RecordedOwner)]) -> Vec<(Event, RecordedOwner)> {
        let mut strings = Strings::default();
        let mut prev = Previous::default();
        let compact: Vec<Compact> = events
            .iter()
            .map(|(ev, owner)| {
                Compact::encode(
                    ev,
                    owner.cgroup.as_deref(),
                    owner.container.as_ref(),
                    &mut strings,
                    &mut prev,
                )
            })
            .collect();
        let mut prev = Previous::default();
        let mut prev_read = Previous::default();
        let table = Table::new(strings.list().to_vec());
        compact
            .iter()
            .map(|c| {
                let bytes = postcard::to_stdvec(c).unwrap();
                let back: Compact = postcard::from_bytes(&bytes).unwrap();
                // The replay's own reader takes the same bytes to the same record.
                let mut wire = Wire::new(&bytes);
                assert_eq!(wire.compact().unwrap(), back);
                assert_eq!(wire.pos(), bytes.len());
                let (ev, owner) = back.decode(&table, &mut prev).unwrap();
                // The replay reads the same event straight from the bytes.
                let mut wire = Wire::new(&bytes);
                let mut read = Event::default();
                assert_eq!(wire.event(&mut read, &table, &mut prev_read), Ok(owner));
                assert_eq!(read, ev);
                assert_eq!(wire.pos(), bytes.len());
                (ev, owner.names(&table).unwrap())
            })
            .collect()
    }

    /// One event kind of each variant, and the edge values of their fields (the recorder's
    /// tests in `encode.rs` take them too).
    pub(in crate::pipeline::record) fn every_kind() -> Vec<EventKind> {
        let st = Some(TcpState::Established);
        vec![
            EventKind::State {
                old_state: Some(TcpState::SynSent),
                new_state: Some(TcpState::Established),
                ms_in_old: Some(1_234_567.0 / 1e6),
                bytes_sent: Some(1 << 40),
                bytes_received: Some(0),
                srtt_ms: Some(f64::from(2500u32) / 1000.0),
            },
            EventKind::State {
                old_state: None,
                new_state: Some(TcpState::Close),
                ms_in_old: Some(0.1 + 0.2),
                bytes_sent: None,
                bytes_received: None,
                srtt_ms: Some(-0.0),
            },
            EventKind::Retransmit {
                state: st,
                err: Some(-11),
            },
            EventKind::Retransmit {
                state: st,
                err: Some(i32::MAX),
            },
            EventKind::SynackRetransmit { state: None },
            EventKind::ResetReceived { state: st },
            EventKind::ResetSent {
                state: st,
                reason: Some("NO_SOCKET".into()),
            },
            EventKind::Destroy {
                state: Some(TcpState::Close),
            },
            EventKind::Accept { state: st },
            EventKind::FirstUse {
                state: st,
                call: UseCall::Recv,
            },
        ]
    }

    #[test]
    fn every_kind_and_field_comes_back_the_same() {
        let mut events = Vec::new();
        for (i, kind) in every_kind().into_iter().enumerate() {
            let mut ev = Event::test_state(5_000_000_000 - i as u64 * 7);
            ev.kind = kind;
            ev.sock = 0xffff_8881_0000_0000 + (i as u64 % 3) * 4096;
            if i % 2 == 0 {
                (ev.pid, ev.tid, ev.comm) = (Some(42), Some(43), Some("curl".into()));
                (ev.cgroup_id, ev.netns) = (Some(77), Some(4_026_531_840));
                ev.owner_seen_here = true;
                ev.stack_id = Some(9);
                ev.stack = vec!["main (a.c:1)".into(), "start".into()];
            }
            if i % 3 == 0 {
                ev.family = Family::Ipv6;
                ev.saddr = "fd31::1".parse().unwrap();
                ev.daddr = "fd31::2".parse().unwrap();
            }
            (ev.sport, ev.dport) = (40000 + i as u16, 80);
            let owner = RecordedOwner {
                cgroup: (i % 2 == 0).then(|| "/system.slice/shop.service".to_string()),
                container: (i % 4 == 0).then(|| Container {
                    name: Some("web".into()),
                    pod: Some("shop-7f".into()),
                    namespace: Some("prod".into()),
                    ..Container::unnamed(&"ab".repeat(32))
                }),
            };
            events.push((ev, owner));
        }
        let back = round_trip(&events);
        assert_eq!(back.len(), events.len());
        for (a, b) in events.iter().zip(&back) {
            assert_eq!(a, b);
            // Floats bit for bit (PartialEq would take -0.0 for 0.0).
            assert_eq!(
                serde_json::to_string(&a.0).unwrap(),
                serde_json::to_string(&b.0).unwrap()
            );
        }
    }

    #[test]
    fn kernel_made_milliseconds_are_stored_as_integers() {
        assert_eq!(
            Millis::of(Some(1_500_000.0 / 1e6)),
            Millis::Nanos(1_500_000)
        );
        assert_eq!(Millis::of(None), Millis::Unknown);
        assert!(matches!(Millis::of(Some(f64::NAN)), Millis::Exact(_)));
        assert!(matches!(Millis::of(Some(-1.0)), Millis::Exact(_)));
        for ms in [0.0, 0.064396, 2.5, 1e-7, 123_456.789_012, 0.1 + 0.2] {
            assert_eq!(
                Millis::of(Some(ms)).ms().unwrap().to_bits(),
                f64::to_bits(ms)
            );
        }
    }

    #[test]
    fn an_index_past_the_table_is_an_error_not_a_panic() {
        let mut strings = Strings::default();
        let mut ev = Event::test_state(1);
        ev.comm = Some("curl".into());
        let c = Compact::encode(&ev, None, None, &mut strings, &mut Previous::default());
        let err = c
            .decode(&Table::default(), &mut Previous::default())
            .unwrap_err();
        assert_eq!(err, "string 0 is not in the block's table of 0");
        let bytes = postcard::to_stdvec(&c).unwrap();
        let err = Wire::new(&bytes)
            .event(
                &mut Event::default(),
                &Table::default(),
                &mut Previous::default(),
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "string 0 is not in the block's table of 0");
    }

    /// The bytes of one event: a change here breaks every recording already written, so it
    /// needs a new format version (and the old reader kept).
    #[test]
    fn an_event_encodes_to_these_bytes() {
        let mut ev = Event::test_state(1_000);
        (ev.sock, ev.pid, ev.tid, ev.comm) = (0x1000, Some(300), Some(300), Some("a".into()));
        (ev.saddr, ev.sport) = ("10.0.0.1".parse().unwrap(), 80);
        let mut strings = Strings::default();
        let c = Compact::encode(&ev, None, None, &mut strings, &mut Previous::default());
        let bytes = postcard::to_stdvec(&c).unwrap();
        assert_eq!(
            bytes,
            [
                0xd0, 0x0f, // ts 1000, zigzag varint
                0x80, 0x40, // sock 0x1000, zigzag varint
                1, 0xac, 0x02, // pid Some(300)
                1, 0xac, 0x02, // tid
                1, 0, // comm: string 0
                0, // owner_seen_here
                0, 0, // cgroup_id, netns
                0, // family ipv4
                0, 10, 0, 0, 1, 80, // saddr, sport
                0, 0, 0, 0, 0, 0, // daddr, dport
                0, 0, // stack_id, stack
                0, 7, 2, 0, 0, 0, 0, // State CLOSE -> SYN_SENT, nothing else known
                0, 0, // cgroup, container
            ]
        );
        assert_eq!(strings.list(), ["a"]);
    }

    /// Damage in a record is an error of the hand reader, never a panic, at every cut.
    #[test]
    fn a_cut_record_is_an_error_at_every_length() {
        let mut ev = Event::test_state(123_456_789);
        (ev.pid, ev.comm, ev.stack) = (Some(7), Some("x".into()), vec!["f".into()]);
        let c = Compact::encode(
            &ev,
            Some("/"),
            None,
            &mut Strings::default(),
            &mut Previous::default(),
        );
        let bytes = postcard::to_stdvec(&c).unwrap();
        let table = Table::new(vec!["x".into(), "f".into(), "/".into()]);
        let read = |bytes: &[u8]| {
            Wire::new(bytes).event(&mut Event::default(), &table, &mut Previous::default())
        };
        assert!(read(&bytes).is_ok());
        for cut in 0..bytes.len() {
            assert!(Wire::new(&bytes[..cut]).compact().is_err(), "cut at {cut}");
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long[0] |= 0x80;
        long.splice(1..1, [0xff; 12]);
        assert!(Wire::new(&long).compact().is_err());
        assert_eq!(read(&long).err(), Some(WireError::LongVarint(64)));
    }
}
