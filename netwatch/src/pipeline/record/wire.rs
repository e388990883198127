//! postcard's wire format, read by hand for the record a recording holds per event, full or
//! same-socket (the recorder writes them by hand too: [`super::encode`]).
//!
//! Why not serde: decoding a [`Compact`] through serde's generic visitors cost about 1,200
//! instructions per event (callgrind, `analyze --report` of a churn recording), a third of a
//! replay; this code takes the same bytes in a fraction of that. The bytes are postcard's
//! (<https://postcard.jamesmunns.com/wire-format>): unsigned integers above 8 bits as
//! varints, signed ones zigzagged first, `u8` and `bool` as one byte, `Option` as a 0/1 tag,
//! enums as their variant's index (a varint) then its fields, sequences as a varint length
//! then the elements, `f64` as 8 bytes little-endian, fixed arrays as their bytes. The other
//! records (timewait lists, snapshots) stay serde's; the compact and encode tests hold the
//! hand-made and serde's bytes to the same answer, both ways.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[cfg(test)]
use super::compact::{Compact, Kind};
use super::compact::{ContainerRef, Millis, OwnerRefs, Previous, Slot, Table};
use crate::model::event::{Event, EventKind, Family, TcpState, UseCall};

/// A same-socket record's flags: the event read its owner here ([`Event::owner_seen_here`]).
pub const SEEN_HERE: u8 = 1;
/// A same-socket record's flags: its task id follows (an option, as a full record writes it),
/// rather than being its slot's.
pub const OWN_TID: u8 = 2;

/// A cursor over a block's records.
pub struct Wire<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// What is wrong with a record: small and `Copy`, so that every read's `Result` stays in
/// registers; made a message only when a replay stops on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    Short,
    LongVarint(u32),
    Tag(&'static str, u64),
    StackLength(usize),
    State(u8),
    NotInTable { index: u32, len: usize },
    Slot { back: u32, len: usize },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Short => write!(f, "the record ends early (a cut or damaged block)"),
            WireError::LongVarint(bits) => write!(f, "a varint larger than {bits} bits"),
            WireError::Tag(what, v) => write!(f, "{what} of kind {v}"),
            WireError::StackLength(n) => write!(f, "a stack of {n} frames in a shorter block"),
            WireError::State(n) => write!(f, "unknown TCP state {n}"),
            WireError::NotInTable { index, len } => {
                write!(f, "string {index} is not in the block's table of {len}")
            }
            WireError::Slot { back, len } => write!(
                f,
                "a same-socket record {back} slots back, in a block of {len} written so far"
            ),
        }
    }
}

type Read<T> = Result<T, WireError>;

impl<'a> Wire<'a> {
    pub fn new(bytes: &'a [u8]) -> Wire<'a> {
        Wire { bytes, pos: 0 }
    }

    /// Bytes read so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    #[inline(always)]
    fn byte(&mut self) -> Read<u8> {
        let b = *self.bytes.get(self.pos).ok_or(WireError::Short)?;
        self.pos += 1;
        Ok(b)
    }

    fn take<const N: usize>(&mut self) -> Read<[u8; N]> {
        let b = self
            .bytes
            .get(self.pos..self.pos + N)
            .ok_or(WireError::Short)?;
        self.pos += N;
        Ok(b.try_into().expect("N bytes"))
    }

    /// A varint of at most `bits` bits: at most `ceil(bits / 7)` bytes. Most are one byte.
    #[inline(always)]
    fn varint(&mut self, bits: u32) -> Read<u64> {
        let b = self.byte()?;
        if b < 0x80 {
            return Ok(u64::from(b));
        }
        // Two bytes (up to 14 bits, within every width read) are the next most common: a
        // churn's time steps, socket steps and task ids.
        if let Some(&next) = self.bytes.get(self.pos)
            && next < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b & 0x7f) | u64::from(next) << 7);
        }
        // Three bytes (up to 21 bits) were most of the rest, about two an event: a churn's
        // socket and time differences once they pass 14 bits. Read here, where `bits` is a
        // constant, rather than in the byte loop (about 70 instructions each).
        if let Some(&[second, third]) = self.bytes.get(self.pos..self.pos + 2)
            && third < 0x80
        {
            let value =
                u64::from(b & 0x7f) | u64::from(second & 0x7f) << 7 | u64::from(third) << 14;
            if bits >= 21 || value >> bits == 0 {
                self.pos += 2;
                return Ok(value);
            }
        }
        self.long_varint(b, bits)
    }

    #[inline(never)]
    fn long_varint(&mut self, first: u8, bits: u32) -> Read<u64> {
        let mut value = u64::from(first & 0x7f);
        let mut shift = 7;
        loop {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                break;
            }
            shift += 7;
            if shift >= bits {
                return Err(WireError::LongVarint(bits));
            }
        }
        if bits < 64 && value >> bits != 0 {
            return Err(WireError::LongVarint(bits));
        }
        Ok(value)
    }

    #[inline(always)]
    fn u16(&mut self) -> Read<u16> {
        Ok(self.varint(16)? as u16)
    }

    #[inline(always)]
    fn u32(&mut self) -> Read<u32> {
        Ok(self.varint(32)? as u32)
    }

    #[inline(always)]
    fn u64(&mut self) -> Read<u64> {
        self.varint(64)
    }

    #[inline(always)]
    fn i32(&mut self) -> Read<i32> {
        let z = self.varint(32)? as u32;
        Ok(((z >> 1) as i32) ^ -((z & 1) as i32))
    }

    #[inline(always)]
    fn i64(&mut self) -> Read<i64> {
        let z = self.varint(64)?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    #[inline(always)]
    fn bool(&mut self) -> Read<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(WireError::Tag("a bool", u64::from(b))),
        }
    }

    #[inline(always)]
    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Read<T>) -> Read<Option<T>> {
        match self.byte()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            b => Err(WireError::Tag("an option tag", u64::from(b))),
        }
    }

    /// An enum's variant index.
    #[inline(always)]
    pub fn variant(&mut self) -> Read<u32> {
        self.u32()
    }

    #[inline(always)]
    fn ip(&mut self) -> Read<IpAddr> {
        match self.variant()? {
            0 => Ok(IpAddr::V4(Ipv4Addr::from(self.take::<4>()?))),
            1 => Ok(IpAddr::V6(Ipv6Addr::from(self.take::<16>()?))),
            v => Err(WireError::Tag("an address", u64::from(v))),
        }
    }

    #[inline(always)]
    fn family(&mut self) -> Read<Family> {
        match self.variant()? {
            0 => Ok(Family::Ipv4),
            1 => Ok(Family::Ipv6),
            v => Err(WireError::Tag("an address family", u64::from(v))),
        }
    }

    #[inline(always)]
    fn millis(&mut self) -> Read<Millis> {
        match self.variant()? {
            0 => Ok(Millis::Unknown),
            1 => Ok(Millis::Nanos(self.u64()?)),
            2 => Ok(Millis::Micros(self.u64()?)),
            3 => Ok(Millis::Exact(f64::from_le_bytes(self.take::<8>()?))),
            v => Err(WireError::Tag("a duration", u64::from(v))),
        }
    }

    #[cfg(test)]
    fn kind(&mut self) -> Read<Kind> {
        Ok(match self.variant()? {
            0 => Kind::State {
                old: self.byte()?,
                new: self.byte()?,
                ms_in_old: self.millis()?,
                bytes_sent: self.option(Self::u64)?,
                bytes_received: self.option(Self::u64)?,
                srtt_ms: self.millis()?,
            },
            1 => Kind::Retransmit {
                state: self.byte()?,
                err: self.option(Self::i32)?,
            },
            2 => Kind::SynackRetransmit {
                state: self.byte()?,
            },
            3 => Kind::ResetReceived {
                state: self.byte()?,
            },
            4 => Kind::ResetSent {
                state: self.byte()?,
                reason: self.option(Self::u32)?,
            },
            5 => Kind::Destroy {
                state: self.byte()?,
            },
            6 => Kind::Accept {
                state: self.byte()?,
            },
            7 => Kind::FirstUse {
                state: self.byte()?,
                call: match self.variant()? {
                    0 => UseCall::Send,
                    1 => UseCall::Recv,
                    v => return Err(WireError::Tag("a first use", u64::from(v))),
                },
            },
            v => return Err(WireError::Tag("an event", u64::from(v))),
        })
    }

    /// A state number (0: unknown).
    #[inline(always)]
    fn state(&mut self) -> Read<Option<TcpState>> {
        match self.byte()? {
            0 => Ok(None),
            n => TcpState::from_kernel(n)
                .map(Some)
                .ok_or(WireError::State(n)),
        }
    }

    #[inline(always)]
    fn millis_ms(&mut self) -> Read<Option<f64>> {
        Ok(self.millis()?.ms())
    }

    /// One event record straight into `ev` (the caller's, reused from event to event), and
    /// where its owner's names are in `table`: the same bytes as [`Wire::compact`] then
    /// [`Compact::decode`] read, without a [`Compact`] or an [`Event`] made in between and
    /// moved (copies of the 240-byte event were a tenth of a replay's instructions). After
    /// an error, `ev` holds part of the record.
    pub fn event(&mut self, ev: &mut Event, table: &Table, prev: &mut Previous) -> Read<OwnerRefs> {
        (ev.ts_ns, ev.sock) = prev.advance(self.i64()?, self.i64()?);
        ev.pid = self.option(Self::u32)?;
        ev.tid = self.option(Self::u32)?;
        ev.comm = match self.option(Self::u32)? {
            None => None,
            Some(i) => Some(table.comm_at(i).map_err(|len| not_in(i, len))?),
        };
        ev.owner_seen_here = self.bool()?;
        ev.cgroup_id = self.option(Self::u64)?;
        ev.netns = self.option(Self::u32)?;
        ev.family = self.family()?;
        ev.saddr = self.ip()?;
        ev.sport = self.u16()?;
        ev.daddr = self.ip()?;
        ev.dport = self.u16()?;
        ev.stack_id = self.option(Self::u32)?;
        let frames = self.varint(32)? as usize;
        // Each index takes at least a byte: a damaged length cannot allocate much.
        if frames > self.bytes.len() - self.pos {
            return Err(WireError::StackLength(frames));
        }
        ev.stack.clear();
        for _ in 0..frames {
            let i = self.u32()?;
            ev.stack
                .push(table.at(i).map_err(|len| not_in(i, len))?.clone());
        }
        ev.sp_word = None;
        ev.kind = self.event_kind(table)?;
        Ok(OwnerRefs {
            pid: ev.pid,
            cgroup_id: ev.cgroup_id,
            cgroup: self.option(Self::u32)?,
            container: self.container()?,
        })
    }

    /// An event's kind, as both event records end with it.
    #[inline(always)]
    fn event_kind(&mut self, table: &Table) -> Read<EventKind> {
        Ok(match self.variant()? {
            0 => EventKind::State {
                old_state: self.state()?,
                new_state: self.state()?,
                ms_in_old: self.millis_ms()?,
                bytes_sent: self.option(Self::u64)?,
                bytes_received: self.option(Self::u64)?,
                srtt_ms: self.millis_ms()?,
            },
            1 => EventKind::Retransmit {
                state: self.state()?,
                err: self.option(Self::i32)?,
            },
            2 => EventKind::SynackRetransmit {
                state: self.state()?,
            },
            3 => EventKind::ResetReceived {
                state: self.state()?,
            },
            4 => EventKind::ResetSent {
                state: self.state()?,
                reason: match self.option(Self::u32)? {
                    None => None,
                    Some(i) => Some(table.at(i).map_err(|len| not_in(i, len))?.clone()),
                },
            },
            5 => EventKind::Destroy {
                state: self.state()?,
            },
            6 => EventKind::Accept {
                state: self.state()?,
            },
            7 => EventKind::FirstUse {
                state: self.state()?,
                call: match self.variant()? {
                    0 => UseCall::Send,
                    1 => UseCall::Recv,
                    v => return Err(WireError::Tag("a first use", u64::from(v))),
                },
            },
            v => return Err(WireError::Tag("an event", u64::from(v))),
        })
    }

    /// One same-socket record (version 4, after its tag) straight into `ev`, and its owner's
    /// refs: the identity and owner of the slot it names, its own time, flags and kind.
    #[inline(always)]
    pub fn same_socket(
        &mut self,
        ev: &mut Event,
        table: &Table,
        slots: &[Slot],
        prev: &mut Previous,
    ) -> Read<OwnerRefs> {
        let back = self.u32()?;
        let slot = slots
            .len()
            .checked_sub(1 + back as usize)
            .map(|i| &slots[i])
            .ok_or(WireError::Slot {
                back,
                len: slots.len(),
            })?;
        ev.ts_ns = prev.advance_ts(self.i64()?);
        let flags = self.byte()?;
        if flags & !(SEEN_HERE | OWN_TID) != 0 {
            return Err(WireError::Tag(
                "a same-socket record's flags",
                u64::from(flags),
            ));
        }
        slot.id.put(ev);
        ev.owner_seen_here = flags & SEEN_HERE != 0;
        if flags & OWN_TID != 0 {
            ev.tid = self.option(Self::u32)?;
        }
        ev.stack.clear();
        ev.sp_word = None;
        ev.kind = self.event_kind(table)?;
        Ok(slot.owner)
    }

    #[inline(always)]
    fn container(&mut self) -> Read<Option<ContainerRef>> {
        self.option(|w| {
            Ok(ContainerRef {
                id: w.u32()?,
                name: w.option(Self::u32)?,
                pod: w.option(Self::u32)?,
                namespace: w.option(Self::u32)?,
            })
        })
    }

    /// One [`Compact`], as serde's postcard writer wrote it: the reference [`Wire::event`]
    /// is held to.
    #[cfg(test)]
    pub fn compact(&mut self) -> Read<Compact> {
        Ok(Compact {
            ts: self.i64()?,
            sock: self.i64()?,
            pid: self.option(Self::u32)?,
            tid: self.option(Self::u32)?,
            comm: self.option(Self::u32)?,
            owner_seen_here: self.bool()?,
            cgroup_id: self.option(Self::u64)?,
            netns: self.option(Self::u32)?,
            family: self.family()?,
            saddr: self.ip()?,
            sport: self.u16()?,
            daddr: self.ip()?,
            dport: self.u16()?,
            stack_id: self.option(Self::u32)?,
            stack: {
                let n = self.varint(32)? as usize;
                // Each index takes at least a byte: a damaged length cannot allocate much.
                if n > self.bytes.len() - self.pos {
                    return Err(WireError::StackLength(n));
                }
                let mut stack = Vec::new();
                for _ in 0..n {
                    stack.push(self.u32()?);
                }
                stack
            },
            kind: self.kind()?,
            cgroup: self.option(Self::u32)?,
            container: self.container()?,
        })
    }
}

fn not_in(index: u32, len: usize) -> WireError {
    WireError::NotInTable { index, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every varint length reads back, in every width it fits, and is refused in one it does
    /// not fit; cut anywhere, it is short.
    #[test]
    fn varints_read_back_at_every_length() {
        let values = [
            0,
            127,
            128,
            16_383,
            16_384,
            65_535,
            65_536,
            (1 << 21) - 1,
            1 << 21,
            (1 << 49) - 1,
            1 << 49,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ];
        for v in values {
            // postcard's varint: 7 bits a byte, low first, the high bit saying more follow.
            let mut bytes = Vec::new();
            let mut rest = v;
            while rest >= 0x80 {
                bytes.push(rest as u8 | 0x80);
                rest >>= 7;
            }
            bytes.push(rest as u8);
            // Alone, and followed by more of a block (the short forms look one byte ahead).
            for after in [&[][..], &[0x00; 9], &[0xff; 9]] {
                let mut block = bytes.clone();
                block.extend_from_slice(after);
                for bits in [16, 32, 64] {
                    let mut wire = Wire::new(&block);
                    let read = wire.varint(bits);
                    if bits == 64 || v >> bits == 0 {
                        assert_eq!(read, Ok(v), "{v} in {bits} bits");
                        assert_eq!(wire.pos(), bytes.len(), "{v} in {bits} bits");
                    } else {
                        assert_eq!(read, Err(WireError::LongVarint(bits)), "{v} in {bits} bits");
                    }
                }
            }
            for cut in 0..bytes.len() {
                assert_eq!(Wire::new(&bytes[..cut]).varint(64), Err(WireError::Short));
            }
        }
    }
}
