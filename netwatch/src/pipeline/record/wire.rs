//! postcard's wire format, read by hand for the one record a recording holds per event (the
//! recorder writes it by hand too: [`super::encode`]).
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

use super::compact::{Compact, ContainerRef, Kind, Millis};
use crate::model::event::{Family, UseCall};

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
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Short => write!(f, "the record ends early (a cut or damaged block)"),
            WireError::LongVarint(bits) => write!(f, "a varint larger than {bits} bits"),
            WireError::Tag(what, v) => write!(f, "{what} of kind {v}"),
            WireError::StackLength(n) => write!(f, "a stack of {n} frames in a shorter block"),
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

    #[inline(always)]
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

    /// One [`Compact`], as serde's postcard writer wrote it.
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
            container: self.option(|w| {
                Ok(ContainerRef {
                    id: w.u32()?,
                    name: w.option(Self::u32)?,
                    pod: w.option(Self::u32)?,
                    namespace: w.option(Self::u32)?,
                })
            })?,
        })
    }
}
