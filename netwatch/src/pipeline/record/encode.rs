//! An event written straight into a block's records: the recorder's hot path.
//!
//! The bytes are those serde's postcard writer makes of the event's [`Compact`] record (which
//! the tests build with `Compact::encode`, and `writes_what_serde_writes` holds equal), made
//! without building that record first. Why: recording is paid per event in a live run, and the way through
//! `Compact` cost about 1,150 instructions per event (callgrind, `analyze --record` of a
//! live churn recording): an allocation for the stack, a hash lookup of the task name and of
//! each owner name per event, and a capacity check per byte written.
//!
//! Here the fixed-size fields go into a buffer on the stack that is appended once; a task name
//! is looked up in the block's strings once while it repeats (it is inline in the event, a
//! 16-byte key), and an owner's names are asked for and encoded once while the owner (pid,
//! cgroup) repeats and the host's names stay of the same generation: the encoded names are
//! kept and copied.
//!
//! [`Compact`]: super::compact::Compact
use std::net::IpAddr;

use super::compact::{Millis, Strings};
use crate::{
    host::containers::{self, Names},
    model::{
        comm::Comm,
        event::{Event, EventKind, Family, TcpState, UseCall},
    },
};

/// How many task names and owners a block's encoder remembers: a churn's events alternate
/// between a few (a client and a server).
const RECENT: usize = 4;

/// Room for an event's bytes before its stack: at most 103 (every varint at its longest,
/// IPv6), and the 10 a varint is given to write into ([`Buf::varint`]).
const HEAD: usize = 128;

/// Room for an event's kind (at most 45) and owner names (at most 30), likewise.
const TAIL: usize = 96;

/// Room for an owner's encoded names: an optional cgroup index (6), an optional container of
/// an index and three optional ones (24), likewise.
const OWNER: usize = 40;

/// Room for a stack frame's index, likewise.
const FRAME: usize = 16;

/// What the block being filled needs to encode its next event: its strings, the previous
/// event's timestamp and socket (stored as differences), and the names it looked up last.
#[derive(Default)]
pub struct Encoder {
    strings: Strings,
    prev_ts_ns: u64,
    prev_sock: u64,
    comms: [Option<(Comm, u32)>; RECENT],
    next_comm: usize,
    owners: [Option<Owner>; RECENT],
    next_owner: usize,
}

/// Whom an event's owner names are asked about: (pid, cgroup v2 id).
type Who = (Option<u32>, Option<u64>);

/// An owner's names as the block encodes them, valid while the host's names keep their
/// generation ([`containers::names_generation`]).
struct Owner {
    who: Who,
    generation: (u64, u64),
    encoded: [u8; OWNER],
    encoded_len: usize,
}

impl Encoder {
    /// The block's strings, in the order of their indexes.
    pub fn strings(&self) -> &[String] {
        self.strings.list()
    }

    /// Starts a new block: nothing is known from before it.
    pub fn clear(&mut self) {
        self.strings.clear();
        self.prev_ts_ns = 0;
        self.prev_sock = 0;
        self.comms = Default::default();
        self.owners = Default::default();
    }

    /// Appends `ev`, with its owner's names as the host knows them now, to `out`: `names`
    /// ([`containers::owner_names`] in a run) is asked only when the block has not encoded
    /// this owner's names in this `generation` ([`containers::names_generation`]).
    pub fn event(
        &mut self,
        out: &mut Vec<u8>,
        ev: &Event,
        generation: (u64, u64),
        names: impl FnOnce() -> Names,
    ) {
        let mut head = [0; HEAD];
        let mut b = Buf::new(&mut head);
        b.zigzag(ev.ts_ns.wrapping_sub(self.prev_ts_ns) as i64);
        b.zigzag(ev.sock.wrapping_sub(self.prev_sock) as i64);
        (self.prev_ts_ns, self.prev_sock) = (ev.ts_ns, ev.sock);
        b.opt_u32(ev.pid);
        b.opt_u32(ev.tid);
        b.opt_u32(ev.comm.map(|c| self.comm(c)));
        b.byte(u8::from(ev.owner_seen_here));
        b.opt_u64(ev.cgroup_id);
        b.opt_u32(ev.netns);
        b.byte(match ev.family {
            Family::Ipv4 => 0,
            Family::Ipv6 => 1,
        });
        b.ip(ev.saddr);
        b.varint(u64::from(ev.sport));
        b.ip(ev.daddr);
        b.varint(u64::from(ev.dport));
        b.opt_u32(ev.stack_id);
        if ev.stack.is_empty() {
            b.byte(0);
            out.extend_from_slice(b.bytes());
        } else {
            b.varint(ev.stack.len() as u64);
            out.extend_from_slice(b.bytes());
            for frame in &ev.stack {
                let mut frame_bytes = [0; FRAME];
                let mut f = Buf::new(&mut frame_bytes);
                f.varint(u64::from(self.strings.intern(frame)));
                out.extend_from_slice(f.bytes());
            }
        }
        let mut tail = [0; TAIL];
        let mut t = Buf::new(&mut tail);
        self.kind(&mut t, &ev.kind);
        let (owner, owner_len) = self.owner((ev.pid, ev.cgroup_id), generation, names);
        t.extend(&owner[..owner_len]);
        out.extend_from_slice(t.bytes());
    }

    /// The index of a task name, looked up in the strings only when it is not one of the last.
    fn comm(&mut self, comm: Comm) -> u32 {
        if let Some((_, i)) = self.comms.iter().flatten().find(|(c, _)| *c == comm) {
            return *i;
        }
        let i = self.strings.intern(comm.as_str());
        self.comms[self.next_comm] = Some((comm, i));
        self.next_comm = (self.next_comm + 1) % RECENT;
        i
    }

    /// An owner's names encoded: asked for, and their strings looked up, only when they are
    /// not the last owners' names of this generation. An answer [`containers::may_keep`] does
    /// not allow to keep (an unnamed container) is asked for again at the owner's next event,
    /// as the host's own cache does.
    fn owner(
        &mut self,
        who: Who,
        generation: (u64, u64),
        names: impl FnOnce() -> Names,
    ) -> ([u8; OWNER], usize) {
        let known = self
            .owners
            .iter()
            .flatten()
            .find(|o| o.who == who && o.generation == generation);
        if let Some(o) = known {
            return (o.encoded, o.encoded_len);
        }
        let names = names();
        let (cgroup, container) = &names;
        let mut bytes = [0; OWNER];
        let mut encoded = Buf::new(&mut bytes);
        encoded.opt_u32(cgroup.as_deref().map(|c| self.strings.intern(c)));
        match container {
            None => encoded.byte(0),
            Some(c) => {
                encoded.byte(1);
                encoded.varint(u64::from(self.strings.intern(&c.id)));
                for name in [&c.name, &c.pod, &c.namespace] {
                    encoded.opt_u32(name.as_deref().map(|n| self.strings.intern(n)));
                }
            }
        }
        let encoded_len = encoded.len;
        if containers::may_keep(&names) {
            self.owners[self.next_owner] = Some(Owner {
                who,
                generation,
                encoded: bytes,
                encoded_len,
            });
            self.next_owner = (self.next_owner + 1) % RECENT;
        }
        (bytes, encoded_len)
    }

    fn kind(&mut self, t: &mut Buf<'_, TAIL>, kind: &EventKind) {
        let st = |s: &Option<TcpState>| s.map_or(0, TcpState::kernel_number);
        match kind {
            EventKind::State {
                old_state,
                new_state,
                ms_in_old,
                bytes_sent,
                bytes_received,
                srtt_ms,
            } => {
                t.extend(&[0, st(old_state), st(new_state)]);
                t.millis(Millis::of(*ms_in_old));
                t.opt_u64(*bytes_sent);
                t.opt_u64(*bytes_received);
                t.millis(Millis::of(*srtt_ms));
            }
            EventKind::Retransmit { state, err } => {
                t.extend(&[1, st(state)]);
                t.opt_u32(err.map(|v| ((v << 1) ^ (v >> 31)) as u32));
            }
            EventKind::SynackRetransmit { state } => t.extend(&[2, st(state)]),
            EventKind::ResetReceived { state } => t.extend(&[3, st(state)]),
            EventKind::ResetSent { state, reason } => {
                t.extend(&[4, st(state)]);
                t.opt_u32(reason.as_deref().map(|r| self.strings.intern(r)));
            }
            EventKind::Destroy { state } => t.extend(&[5, st(state)]),
            EventKind::Accept { state } => t.extend(&[6, st(state)]),
            EventKind::FirstUse { state, call } => t.extend(&[
                7,
                st(state),
                match call {
                    UseCall::Send => 0,
                    UseCall::Recv => 1,
                },
            ]),
        }
    }
}

/// Postcard's wire format (see [`super::wire`]) written into `N` bytes on the stack. The
/// bytes are held apart from the count written so far, which then stays in a register rather
/// than being stored and loaded again at each byte.
struct Buf<'a, const N: usize> {
    bytes: &'a mut [u8; N],
    len: usize,
}

impl<'a, const N: usize> Buf<'a, N> {
    fn new(bytes: &'a mut [u8; N]) -> Self {
        Buf { bytes, len: 0 }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    #[inline(always)]
    fn extend(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Written into the next 10 bytes, the longest a varint takes, checked once: a buffer is
    /// sized for its longest content plus these 10.
    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        if v < 0x80 {
            return self.byte(v as u8);
        }
        let out: &mut [u8; 10] = (&mut self.bytes[self.len..self.len + 10])
            .try_into()
            .expect("10 bytes");
        let mut i = 0;
        while v >= 0x80 {
            out[i] = v as u8 | 0x80;
            v >>= 7;
            i += 1;
        }
        out[i] = v as u8;
        self.len += i + 1;
    }

    #[inline(always)]
    fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    #[inline(always)]
    fn opt_u32(&mut self, v: Option<u32>) {
        self.opt_u64(v.map(u64::from));
    }

    #[inline(always)]
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.byte(0),
            Some(v) => {
                self.byte(1);
                self.varint(v);
            }
        }
    }

    #[inline(always)]
    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.byte(0);
                self.extend(&a.octets());
            }
            IpAddr::V6(a) => {
                self.byte(1);
                self.extend(&a.octets());
            }
        }
    }

    #[inline(always)]
    fn millis(&mut self, m: Millis) {
        match m {
            Millis::Unknown => self.byte(0),
            Millis::Nanos(ns) => {
                self.byte(1);
                self.varint(ns);
            }
            Millis::Micros(us) => {
                self.byte(2);
                self.varint(us);
            }
            Millis::Exact(ms) => {
                self.byte(3);
                self.extend(&ms.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::names::Container,
        pipeline::record::compact::{Compact, Previous},
    };
    use std::sync::Arc;

    /// What serde's postcard writer appends for `c`.
    fn put_compact(out: &mut Vec<u8>, c: &Compact) {
        out.extend(postcard::to_stdvec(c).unwrap());
    }

    use crate::pipeline::record::compact::tests::every_kind as kinds;

    /// Every kind and field, owners that repeat, within a generation of the host's names and
    /// across one, in one block: the same bytes and strings as serde makes of `Compact`, which
    /// the replay reads; the names asked for once per owner and generation, except an unnamed
    /// container's.
    #[test]
    fn writes_what_serde_writes() {
        let named = |name: &str| Container {
            name: Some(name.into()),
            pod: Some("shop-7f".into()),
            namespace: Some("prod".into()),
            ..Container::unnamed(&"ab".repeat(32))
        };
        // Owner `j`'s names in generation `g` (owner 2's container is named in generation 1).
        let names_of = |j: u64, g: u64| -> Names {
            match (j, g) {
                (0, _) => (None, None),
                (1, _) => (Some(Arc::from("/system.slice/shop.service")), None),
                (2, 0) => (
                    Some(Arc::from("/kubepods/x")),
                    Some(Arc::new(Container::unnamed(&"ab".repeat(32)))),
                ),
                (2, _) => (Some(Arc::from("/kubepods/x")), Some(Arc::new(named("web")))),
                (_, _) => (None, Some(Arc::new(named("db")))),
            }
        };
        let mut encoder = Encoder::default();
        let (mut strings, mut prev) = (Strings::default(), Previous::default());
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let mut asked = Vec::new();
        for round in 0..4u64 {
            for (i, kind) in kinds().into_iter().enumerate() {
                let n = round * 100 + i as u64;
                let mut ev = Event::test_state(5_000_000_000 - n * 7);
                ev.kind = kind;
                ev.sock = 0xffff_8881_0000_0000 + (n % 3) * 4096;
                let j = (n * 7) % 4;
                (ev.pid, ev.cgroup_id) = (Some(1000 + j as u32), Some(j));
                if i % 2 == 0 {
                    ev.tid = Some(u32::MAX);
                    ev.comm = Some(["curl", "nginx", "a", "b", "c", "d"][i % 6].into());
                    ev.netns = Some(4_026_531_840);
                    ev.owner_seen_here = true;
                    ev.stack_id = Some(9);
                }
                if i % 5 == 0 {
                    ev.stack = vec!["main (a.c:1)".into(), "start".into(), "curl".into()];
                }
                if i % 3 == 0 {
                    ev.family = Family::Ipv6;
                    ev.saddr = "fd31::1".parse().unwrap();
                    ev.daddr = "fd31::2".parse().unwrap();
                }
                (ev.sport, ev.dport) = (40000 + i as u16, 80);
                let g = round / 2;
                encoder.event(&mut ours, &ev, (g, 7), || {
                    asked.push((j, g));
                    names_of(j, g)
                });
                let (cgroup, container) = names_of(j, g);
                let c = Compact::encode(
                    &ev,
                    cgroup.as_deref(),
                    container.as_deref(),
                    &mut strings,
                    &mut prev,
                );
                put_compact(&mut theirs, &c);
                assert_eq!(ours, theirs, "event {n}");
            }
        }
        assert_eq!(encoder.strings(), strings.list());
        let unnamed = asked.iter().filter(|&&a| a == (2, 0)).count();
        assert!(
            unnamed > 1,
            "an unnamed container is asked for at each event"
        );
        asked.retain(|&a| a != (2, 0));
        let asks = asked.len();
        asked.sort();
        asked.dedup();
        assert_eq!(
            asked.len(),
            asks,
            "the others once per generation: {asked:?}"
        );
        assert_eq!(
            asks,
            3 + 4,
            "three in generation 0, all four in generation 1"
        );

        encoder.clear();
        let ev = Event::test_state(1);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        encoder.event(&mut ours, &ev, (1, 7), || names_of(1, 1));
        let c = Compact::encode(
            &ev,
            Some("/system.slice/shop.service"),
            None,
            &mut Strings::default(),
            &mut Previous::default(),
        );
        put_compact(&mut theirs, &c);
        assert_eq!(ours, theirs, "a new block starts from nothing");
        assert_eq!(encoder.strings(), ["/system.slice/shop.service"]);
    }

    /// Integers of every length, differences of both signs: serde's varints, byte for byte.
    #[test]
    fn varints_of_every_length() {
        let mut encoder = Encoder::default();
        let (mut strings, mut prev) = (Strings::default(), Previous::default());
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for k in 0..64 {
            let mut ev = Event::test_state(1 << k);
            ev.sock = !(1 << k) ^ (k % 2);
            (ev.pid, ev.tid, ev.cgroup_id) = (
                Some(1 << (k % 32)),
                Some(!0 >> (k % 32)),
                Some((1 << k) - 1),
            );
            ev.kind = EventKind::State {
                old_state: None,
                new_state: Some(TcpState::Close),
                ms_in_old: Some((1u64 << k) as f64 / 1e6),
                bytes_sent: Some(1 << k),
                bytes_received: Some(!0 >> k),
                srtt_ms: None,
            };
            encoder.event(&mut ours, &ev, (0, 0), || (None, None));
            let c = Compact::encode(&ev, None, None, &mut strings, &mut prev);
            put_compact(&mut theirs, &c);
            assert_eq!(ours, theirs, "at 2^{k}");
        }
    }
}
