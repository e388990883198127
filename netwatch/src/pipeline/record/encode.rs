//! An event written straight into a block's records: the recorder's hot path.
//!
//! A full event's bytes are those serde's postcard writer makes of the event's [`Compact`]
//! record (which the tests build with `Compact::encode`, and `writes_what_serde_writes` holds
//! equal), made without building that record first. An event of a socket the block already
//! wrote, with the same identity and owner names, is a same-socket record instead (format
//! version 4, [`super::binary`]): its slot, time, flags and kind, about 12 bytes rather than 42;
//! the block's sockets are found through a hash index from socket to newest slot. Why: recording is paid per event in a live run, and the way through
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

use super::{
    compact::{Identity, Millis, Strings},
    wire::{OWN_TID, SEEN_HERE},
};
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
    sockets: Sockets,
}

/// The record tags of a block ([`super::binary`]): a full event, and (version 4) an event of
/// a socket the block wrote in full.
pub const RECORD_EVENT: u8 = 0;
pub const RECORD_SAME_SOCKET: u8 = 2;

/// Room for a same-socket record before its kind: tag, slot, time, flags, task id, and the 10
/// a varint is given.
const SAME_HEAD: usize = 40;

/// The block's full event records, as slots (what a same-socket record copies), and from each
/// socket to its newest slot. Kept from block to block, cleared without freeing.
#[derive(Default)]
struct Sockets {
    index: hashbrown::HashTable<(u64, u32)>,
    hasher: foldhash::fast::FixedState,
    slots: Vec<Written>,
}

/// A full record's identity and its owner's names as encoded, with the generation of the
/// host's names they are valid in when the encoder may keep them ([`containers::may_keep`]).
struct Written {
    id: Identity,
    owner: [u8; OWNER],
    owner_len: usize,
    kept: Option<(u64, u64)>,
}

/// An owner's names encoded, and whether the encoder may keep them for their generation.
struct Encoded {
    bytes: [u8; OWNER],
    len: usize,
    kept: bool,
}

impl Sockets {
    fn hash(&self, sock: u64) -> u64 {
        use std::hash::BuildHasher as _;
        self.hasher.hash_one(sock)
    }

    /// The newest slot of `id`'s socket, when it holds the same identity (but maybe the task id).
    #[inline(always)]
    fn find(&self, id: &Identity) -> Option<u32> {
        let &(_, slot) = self
            .index
            .find(self.hash(id.sock), |&(s, _)| s == id.sock)?;
        self.slots[slot as usize]
            .id
            .same_but_tid(id)
            .then_some(slot)
    }

    /// The next slot, for a full record of `id`: its socket's newest.
    fn add(&mut self, id: Identity, owner: &Encoded, generation: (u64, u64)) {
        let slot = self.slots.len() as u32;
        self.slots.push(Written {
            id,
            owner: owner.bytes,
            owner_len: owner.len,
            kept: owner.kept.then_some(generation),
        });
        let hash = self.hash(id.sock);
        let hasher = &self.hasher;
        match self.index.entry(
            hash,
            |&(s, _)| s == id.sock,
            |&(s, _)| {
                use std::hash::BuildHasher as _;
                hasher.hash_one(s)
            },
        ) {
            hashbrown::hash_table::Entry::Occupied(mut o) => o.get_mut().1 = slot,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert((id.sock, slot));
            }
        }
    }

    /// The slot of the block's last full record.
    fn newest(&self) -> u32 {
        self.slots.len() as u32 - 1
    }

    fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
    }
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
        self.sockets.clear();
    }

    /// Appends `ev`'s record, tag first, with its owner's names as the host knows them now, to
    /// `out`: `names` ([`containers::owner_names`] in a run) is asked only when the block has
    /// not encoded this owner's names in this `generation` ([`containers::names_generation`]).
    /// A same-socket record when the block wrote this socket in full with the same identity
    /// and owner names, and the event has no stack; else a full one, which takes the next slot.
    pub fn event(
        &mut self,
        out: &mut Vec<u8>,
        ev: &Event,
        generation: (u64, u64),
        names: impl FnOnce() -> Names,
    ) {
        let id = Identity::of(ev);
        let slot = if ev.stack.is_empty() {
            self.sockets.find(&id)
        } else {
            None
        };
        let Some(slot) = slot else {
            return self.full(out, ev, id, generation, names);
        };
        // The kind before the owner, and the full record's head (which interns nothing new
        // here: its task name is the slot's) after both: the strings in the order a full
        // record meets them.
        let mut tail = [0; TAIL];
        let mut t = Buf::new(&mut tail);
        self.kind(&mut t, &ev.kind);
        let kind_len = t.len;
        // The slot's owner names, kept in this generation of the host's names, are those the
        // owner (the slot's too) would be asked for: not asked, not compared.
        if self.sockets.slots[slot as usize].kept != Some(generation) {
            let owner = self.owner((ev.pid, ev.cgroup_id), generation, names);
            let written = &mut self.sockets.slots[slot as usize];
            if written.owner[..written.owner_len] != owner.bytes[..owner.len] {
                t.extend(&owner.bytes[..owner.len]);
                let mut head = [0; HEAD];
                let head_len = self.head(&mut head, ev);
                out.push(RECORD_EVENT);
                out.extend_from_slice(&head[..head_len]);
                out.extend_from_slice(t.bytes());
                self.sockets.add(id, &owner, generation);
                return;
            }
            written.kept = owner.kept.then_some(generation);
        }
        let written = &self.sockets.slots[slot as usize];
        let mut head = [0; SAME_HEAD];
        let mut b = Buf::new(&mut head);
        b.byte(RECORD_SAME_SOCKET);
        b.varint(u64::from(self.sockets.newest() - slot));
        b.zigzag(ev.ts_ns.wrapping_sub(self.prev_ts_ns) as i64);
        self.prev_ts_ns = ev.ts_ns;
        let seen = if ev.owner_seen_here { SEEN_HERE } else { 0 };
        if ev.tid == written.id.tid {
            b.byte(seen);
        } else {
            b.byte(seen | OWN_TID);
            b.opt_u32(ev.tid);
        }
        out.extend_from_slice(b.bytes());
        out.extend_from_slice(&tail[..kind_len]);
    }

    /// A full event record, tag first: it takes the block's next slot.
    fn full(
        &mut self,
        out: &mut Vec<u8>,
        ev: &Event,
        id: Identity,
        generation: (u64, u64),
        names: impl FnOnce() -> Names,
    ) {
        let mut head = [0; HEAD];
        let head_len = self.head(&mut head, ev);
        out.push(RECORD_EVENT);
        out.extend_from_slice(&head[..head_len]);
        for frame in &ev.stack {
            let mut frame_bytes = [0; FRAME];
            let mut f = Buf::new(&mut frame_bytes);
            f.varint(u64::from(self.strings.intern(frame)));
            out.extend_from_slice(f.bytes());
        }
        let mut tail = [0; TAIL];
        let mut t = Buf::new(&mut tail);
        self.kind(&mut t, &ev.kind);
        let owner = self.owner((ev.pid, ev.cgroup_id), generation, names);
        t.extend(&owner.bytes[..owner.len]);
        out.extend_from_slice(t.bytes());
        self.sockets.add(id, &owner, generation);
    }

    /// A full record's fields from its time to its stack's length, into `head`; their length.
    fn head(&mut self, head: &mut [u8; HEAD], ev: &Event) -> usize {
        let mut b = Buf::new(head);
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
        b.varint(ev.stack.len() as u64);
        b.len
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
    ) -> Encoded {
        let known = self
            .owners
            .iter()
            .flatten()
            .find(|o| o.who == who && o.generation == generation);
        if let Some(o) = known {
            return Encoded {
                bytes: o.encoded,
                len: o.encoded_len,
                kept: true,
            };
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
        let kept = containers::may_keep(&names);
        if kept {
            self.owners[self.next_owner] = Some(Owner {
                who,
                generation,
                encoded: bytes,
                encoded_len,
            });
            self.next_owner = (self.next_owner + 1) % RECENT;
        }
        Encoded {
            bytes,
            len: encoded_len,
            kept,
        }
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
pub(in crate::pipeline::record) mod tests {
    use super::*;
    use crate::{
        model::names::{Container, RecordedOwner},
        pipeline::record::{
            compact::{Compact, Previous, Slot, Table},
            wire::{Wire, WireError},
        },
    };
    use std::sync::Arc;

    /// What serde's postcard writer appends for `c` as a block's record: its tag, then it.
    fn put_compact(out: &mut Vec<u8>, c: &Compact) {
        out.push(RECORD_EVENT);
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
                // A socket per event: full records only (same-socket ones have no `Compact`).
                ev.sock = 0xffff_8881_0000_0000 + n * 4096;
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

    /// Sockets' lives, interleaved as a host's are: `n` sockets (clients and servers, a third
    /// IPv6), a few open at once, their addresses reused by later sockets. What changes within
    /// a life: the local port at connect, the owner at accept (unknown before), the task id,
    /// `owner_seen_here`, stacks at connect and first use. Each event with its owner's
    /// generation of the host's names ([`lives_names`]).
    pub(in crate::pipeline::record) fn lives(n: usize) -> Vec<(Event, (u64, u64))> {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut open, mut started, mut out) = (Vec::<(usize, usize)>::new(), 0, Vec::new());
        let mut ts = 1_000_000_000u64;
        while started < n || !open.is_empty() {
            if started < n && open.len() < 8 {
                open.push((started, 0));
                started += 1;
            }
            let pick = (next() % open.len() as u64) as usize;
            let (i, step) = open[pick];
            ts += next() % 3_000;
            let client = i % 2 == 0;
            let mut ev = Event::test_state(ts);
            ev.sock = 0xffff_8881_0000_0000 + (i as u64 % 37) * 256;
            let pid = 1000 + (i % 5) as u32;
            (ev.pid, ev.tid, ev.comm) =
                (Some(pid), Some(pid), Some(["curl", "nginx"][i % 2].into()));
            (ev.cgroup_id, ev.netns) = (Some(u64::from(pid % 4)), Some(4_026_531_840));
            if i % 3 == 0 {
                ev.family = Family::Ipv6;
                (ev.saddr, ev.daddr) = ("fd31::1".parse().unwrap(), "fd31::2".parse().unwrap());
            } else {
                (ev.saddr, ev.daddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
            }
            (ev.sport, ev.dport) = (40_000 + i as u16, 80);
            let stack = || vec!["__libc_connect (connect.c:26)".to_string(), "main".into()];
            let state = |old, new| EventKind::State {
                old_state: Some(old),
                new_state: Some(new),
                ms_in_old: Some((ts % 10_000) as f64 / 1e3),
                bytes_sent: None,
                bytes_received: None,
                srtt_ms: None,
            };
            use TcpState::*;
            let last;
            (ev.kind, last) = if client {
                ev.stack_id = Some(i as u32);
                match step {
                    0 => {
                        (ev.sport, ev.owner_seen_here) = (0, true);
                        if i % 4 == 0 {
                            ev.stack = stack();
                        }
                        (state(Close, SynSent), false)
                    }
                    1 => (state(SynSent, Established), false),
                    2 => {
                        if i % 4 == 0 {
                            ev.stack = stack();
                        }
                        let call = UseCall::Send;
                        (
                            EventKind::FirstUse {
                                state: Some(Established),
                                call,
                            },
                            false,
                        )
                    }
                    3 => {
                        ev.tid = Some(pid + 1);
                        let err = Some(-11);
                        (
                            EventKind::Retransmit {
                                state: Some(Established),
                                err,
                            },
                            false,
                        )
                    }
                    4 => {
                        ev.owner_seen_here = true;
                        (state(Established, FinWait1), false)
                    }
                    5 => (state(FinWait1, FinWait2), false),
                    _ => (EventKind::Destroy { state: Some(Close) }, true),
                }
            } else {
                (ev.sport, ev.dport) = (80, 40_000 + i as u16);
                if step < 2 {
                    (ev.pid, ev.tid, ev.comm, ev.cgroup_id) = (None, None, None, None);
                }
                match step {
                    0 => (state(Listen, SynRecv), false),
                    1 => (state(SynRecv, Established), false),
                    2 => {
                        ev.owner_seen_here = true;
                        (
                            EventKind::Accept {
                                state: Some(Established),
                            },
                            false,
                        )
                    }
                    3 => {
                        let reason = Some("NOT_SPECIFIED".into());
                        (
                            EventKind::ResetSent {
                                state: Some(Established),
                                reason,
                            },
                            false,
                        )
                    }
                    _ => (EventKind::Destroy { state: Some(Close) }, true),
                }
            };
            if last {
                open.swap_remove(pick);
            } else {
                open[pick].1 += 1;
            }
            // The host's names change generation every 61 events.
            out.push((ev, (out.len() as u64 / 61, 7)));
        }
        out
    }

    /// The host's names of an event's owner in a generation: a container unnamed in every
    /// third (asked again at each event), named in the others; another's name changing.
    pub(in crate::pipeline::record) fn lives_names(ev: &Event, generation: (u64, u64)) -> Names {
        let named = |name: String| {
            Arc::new(Container {
                name: Some(name),
                pod: Some("shop-7f".into()),
                namespace: Some("prod".into()),
                ..Container::unnamed(&"ab".repeat(32))
            })
        };
        match (ev.pid.map(|p| p % 5), generation.0) {
            (None, _) => (None, None),
            (Some(0), _) => (None, None),
            (Some(1), _) => (Some(Arc::from("/system.slice/shop.service")), None),
            (Some(2), g) if g % 3 == 0 => (
                Some(Arc::from("/kubepods/x")),
                Some(Arc::new(Container::unnamed(&"ab".repeat(32)))),
            ),
            (Some(2), _) => (Some(Arc::from("/kubepods/x")), Some(named("web".into()))),
            (Some(_), g) => (None, Some(named(format!("db-{}", g / 2)))),
        }
    }

    /// A block's records read as the replay reads them ([`super::super::binary`]): each
    /// event, its owner's names, and whether it was a same-socket record.
    fn read_block(
        strings: &[String],
        records: &[u8],
    ) -> Result<Vec<(Event, RecordedOwner, bool)>, WireError> {
        let table = Table::new(strings.to_vec());
        let (mut slots, mut prev, mut pos, mut out) = (Vec::new(), Previous::default(), 0, vec![]);
        while pos < records.len() {
            let mut wire = Wire::new(&records[pos..]);
            let mut ev = Event::default();
            let same = match wire.variant()? {
                0 => {
                    let owner = wire.event(&mut ev, &table, &mut prev)?;
                    slots.push(Slot {
                        id: Identity::of(&ev),
                        owner,
                    });
                    (owner, false)
                }
                2 => (wire.same_socket(&mut ev, &table, &slots, &mut prev)?, true),
                v => return Err(WireError::Tag("a record", u64::from(v))),
            };
            let names = same.0.names(&table).expect("names in the table");
            out.push((ev, names, same.1));
            pos += wire.pos();
        }
        Ok(out)
    }

    fn recorded(names: Names) -> RecordedOwner {
        RecordedOwner {
            cgroup: names.0.as_deref().map(String::from),
            container: names.1.as_deref().cloned(),
        }
    }

    /// Interleaved sockets' lives, in blocks small enough that lives cross them: every event
    /// and owner's names come back as written, most of them from same-socket records.
    #[test]
    fn interleaved_lives_come_back_across_blocks() {
        let events = lives(400);
        let mut encoder = Encoder::default();
        let (mut blocks, mut records) = (Vec::new(), Vec::new());
        let (mut unnamed_asked, mut unnamed) = (0, 0);
        for (ev, generation) in &events {
            let unkept = !containers::may_keep(&lives_names(ev, *generation));
            unnamed += usize::from(unkept);
            encoder.event(&mut records, ev, *generation, || {
                unnamed_asked += usize::from(unkept);
                lives_names(ev, *generation)
            });
            if records.len() >= 4000 {
                blocks.push((encoder.strings().to_vec(), std::mem::take(&mut records)));
                encoder.clear();
            }
        }
        blocks.push((encoder.strings().to_vec(), records));
        assert!(blocks.len() >= 5, "{} blocks", blocks.len());
        assert!(unnamed > 50, "{unnamed}");
        assert_eq!(
            unnamed_asked, unnamed,
            "an unnamed container is asked for at each event"
        );
        let mut back = Vec::new();
        for (strings, records) in &blocks {
            back.extend(read_block(strings, records).unwrap());
        }
        assert_eq!(back.len(), events.len());
        let mut same = 0;
        for (i, ((ev, generation), (read, names, was_same))) in events.iter().zip(&back).enumerate()
        {
            assert_eq!(read, ev, "event {i}");
            assert_eq!(*names, recorded(lives_names(ev, *generation)), "event {i}");
            assert!(!was_same || ev.stack.is_empty(), "event {i}");
            same += usize::from(*was_same);
        }
        // Most events repeat their socket; a life's first event in a block, a changed port,
        // owner or names, and a stack are written in full.
        assert!(
            same * 2 > events.len(),
            "{same} of {} same-socket",
            events.len()
        );
        assert!(same < events.len() - 400, "{same} of {}", events.len());
    }

    /// The bytes of same-socket records, written from the format's description
    /// ([`super::super::binary`]): a change here needs a new format version.
    #[test]
    fn a_same_socket_record_encodes_to_these_bytes() {
        let mut ev = Event::test_state(1_000);
        (ev.sock, ev.pid, ev.tid, ev.comm) = (0x1000, Some(300), Some(300), Some("a".into()));
        (ev.saddr, ev.sport) = ("10.0.0.1".parse().unwrap(), 80);
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        let mut write = |ev: &Event| {
            let at = out.len();
            encoder.event(&mut out, ev, (0, 0), || (None, None));
            out[at..].to_vec()
        };
        let first = write(&ev);
        assert_eq!(first[0], 0, "a full event: {first:?}");
        // Another event of the socket, of another task, the owner read here.
        (ev.ts_ns, ev.tid, ev.owner_seen_here) = (1_500, Some(301), true);
        ev.kind = EventKind::State {
            old_state: Some(TcpState::SynSent),
            new_state: Some(TcpState::Established),
            ms_in_old: Some(0.5),
            bytes_sent: None,
            bytes_received: None,
            srtt_ms: None,
        };
        assert_eq!(
            write(&ev),
            [
                2, // same socket
                0, // the newest slot
                0xe8, 0x07, // ts +500, zigzag varint
                3,    // flags: owner_seen_here, a task id follows
                1, 0xad, 0x02, // tid Some(301)
                0, 2, 1, // State SYN_SENT -> ESTABLISHED
                1, 0xa0, 0xc2, 0x1e, // ms_in_old: 500,000 ns
                0, 0, 0, // bytes sent, received, srtt unknown
            ]
        );
        // Another socket in full, then the first one's again: one slot back; the slot's tid.
        let mut other = ev.clone();
        (other.ts_ns, other.sock) = (1_400, 0x2000);
        assert_eq!(write(&other)[0], 0);
        (ev.ts_ns, ev.tid, ev.owner_seen_here) = (1_401, Some(300), false);
        ev.kind = EventKind::Destroy {
            state: Some(TcpState::Close),
        };
        assert_eq!(
            write(&ev),
            [
                2,    // same socket
                1,    // one slot before the newest
                0x02, // ts +1
                0,    // flags: none
                5, 7, // Destroy in CLOSE
            ]
        );
        // A changed identity is a full record again.
        ev.dport = 443;
        assert_eq!(write(&ev)[0], 0);
        let read = read_block(encoder.strings(), &out).unwrap();
        let same: Vec<bool> = read.iter().map(|r| r.2).collect();
        assert_eq!(same, [false, true, false, true, false]);
        assert_eq!(read[3].0.sock, 0x1000);
        assert_eq!(read[3].0.tid, Some(300));
        assert_eq!(read[4].0, ev);
    }

    /// Damage in a same-socket record is an error, never a panic: cut at every length, a slot
    /// past those the block wrote, unknown flags.
    #[test]
    fn a_damaged_same_socket_record_is_an_error() {
        let mut ev = Event::test_state(5);
        (ev.pid, ev.tid, ev.comm) = (Some(7), Some(7), Some("x".into()));
        let mut encoder = Encoder::default();
        let mut out = Vec::new();
        encoder.event(&mut out, &ev, (0, 0), || (None, None));
        let full = out.len();
        (ev.ts_ns, ev.tid) = (1 << 40, Some(u32::MAX));
        ev.kind = EventKind::ResetSent {
            state: Some(TcpState::Established),
            reason: Some("NO_SOCKET".into()),
        };
        encoder.event(&mut out, &ev, (0, 0), || (None, None));
        let strings = encoder.strings().to_vec();
        assert_eq!(read_block(&strings, &out).unwrap()[1].0, ev);
        assert_eq!(out[full], 2, "{out:?}");
        for cut in full + 1..out.len() {
            assert_eq!(
                read_block(&strings, &out[..cut]).err(),
                Some(WireError::Short),
                "cut at {cut}"
            );
        }
        // Past the slots: one slot back where there is only one, and in a block of none.
        let mut past = out.clone();
        past[full + 1] = 1;
        let err = read_block(&strings, &past).unwrap_err();
        assert_eq!(err, WireError::Slot { back: 1, len: 1 });
        assert_eq!(
            err.to_string(),
            "a same-socket record 1 slots back, in a block of 1 written so far"
        );
        let err = read_block(&strings, &out[full..]).unwrap_err();
        assert_eq!(err, WireError::Slot { back: 0, len: 0 });
        // A slot number too long for 32 bits.
        let mut long = out.clone();
        long.splice(full + 1..full + 2, [0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(
            read_block(&strings, &long).err(),
            Some(WireError::LongVarint(32))
        );
        // Flags this version does not know.
        let flags = full + 1 + 1 + 6;
        assert_eq!(out[flags], OWN_TID, "{out:?}");
        let mut unknown = out.clone();
        unknown[flags] |= 4;
        assert_eq!(
            read_block(&strings, &unknown).err(),
            Some(WireError::Tag("a same-socket record's flags", 6))
        );
    }
}
