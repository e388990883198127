//! The per-CPU working memory of a program run ([`Scratch`], in the `SCRATCH` map), and a
//! classic tracepoint's record, copied once per run into it, with how fields are picked out of
//! the copy by the offsets user space hands in.
//!
//! Why a map and not the stack: the copy (128 bytes) and the event being built (136) once
//! lived on the stack, and Debian 12's 6.1 verifier, which counts the stack of every call
//! frame together against 512 bytes, rejected `nw_set_state` (combined stack size 544).
//!
//! Why one slot per nesting level: classic tracepoint programs never nest on one CPU (the
//! kernel's per-CPU `bpf_prog_active` guard skips a program that would), but raw tracepoint
//! programs are only kept from nesting into themselves (and, before 6.1, not even that): a
//! transition in process context can be interrupted by a softirq running another netwatch
//! program on the same CPU. Each run takes the slot of its depth and gives it back when it
//! ends, so a nested run never writes into the event of the run it interrupted.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_probe_read_kernel, programs::TracePointContext,
};
use netwatch_common::{ABSENT, AF_INET, AF_INET6, RECORD_COPY_LEN, RawEvent, TpFields};

use crate::{SCRATCH, helpers::read_failed, sock::SockCopy};

/// One tracepoint record, copied once from the kernel's trace buffer into [`Scratch`].
#[repr(C)]
pub(crate) struct Record {
    buf: [u8; RECORD_COPY_LEN],
}

/// The working memory of one program run: the copied record (classic tracepoints only), the
/// copied socket bytes (raw ones only) and the event being built. Kept out of the BPF stack
/// because older verifiers (6.1) count the stack of every call frame together against 512
/// bytes, and these alone take 408.
#[repr(C)]
pub(crate) struct Scratch {
    pub(crate) rec: Record,
    pub(crate) sk: SockCopy,
    pub(crate) ev: RawEvent,
}

/// Program runs that can be nested on one CPU: process context, softirq, hardirq, NMI.
pub(crate) const NEST_LEVELS: usize = 4;

/// One CPU's scratch slots, one per nesting level (the one value of the `SCRATCH` map).
#[repr(C)]
pub(crate) struct Scratches {
    /// How many program runs on this CPU hold a slot now.
    depth: u32,
    _pad: u32,
    level: [Scratch; NEST_LEVELS],
}

/// Runs `f` with this CPU's free [`Scratch`] (the slot of this run's nesting depth), and
/// frees it again; `None` (counted) when there is none.
///
/// Why a plain load and store of `depth` is enough: a run nested into this one starts and
/// ends before this one goes on. Interrupted before its store, this run finds the slot the
/// nested run used and has given back; interrupted after it, the nested run sees the deeper
/// depth. Every run puts back the depth it found, so the count cannot drift.
#[inline(always)]
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> Option<R>) -> Option<R> {
    let Some(p) = SCRATCH.get_ptr_mut(0) else {
        return read_failed();
    };
    // SAFETY: the pointer comes from the per-CPU array lookup of index 0, which always exists,
    // and is valid for this program run; `depth` is plain data.
    let depth = unsafe { (*p).depth };
    // SAFETY: as above; the slot at this depth belongs to this run until it puts the depth
    // back (see above), so no other run writes into it meanwhile.
    let Some(slot) = (unsafe { (*p).level.get_mut(depth as usize) }) else {
        return read_failed();
    };
    // SAFETY: as above.
    unsafe { (*p).depth = depth + 1 };
    let result = f(slot);
    // SAFETY: as above.
    unsafe { (*p).depth = depth };
    result
}

/// Copies the record of `ctx` into `rec`; `None` (counted) when the copy fails.
#[inline(always)]
pub(crate) fn copy_record(ctx: &TracePointContext, rec: &mut Record) -> Option<()> {
    // SAFETY: ctx points at the tracepoint's record inside the per-CPU perf trace buffer
    // (PERF_MAX_TRACE_SIZE = 8 KiB), so RECORD_COPY_LEN bytes from it are readable; the
    // helper faults safely (returns an error) if not, and writes at most RECORD_COPY_LEN
    // bytes into `buf`, which has room for them.
    let ret = unsafe {
        bpf_probe_read_kernel(
            rec.buf.as_mut_ptr().cast::<c_void>(),
            RECORD_COPY_LEN as u32,
            ctx.as_ptr().cast_const(),
        )
    };
    if ret != 0 {
        return read_failed();
    }
    Some(())
}

impl Record {
    /// The field at `off`, or `None` when the kernel lacks it ([`ABSENT`]).
    #[inline(always)]
    pub(crate) fn get<T: Copy>(&self, off: u16) -> Option<T> {
        let off = off as usize;
        if off == ABSENT as usize || off + core::mem::size_of::<T>() > RECORD_COPY_LEN {
            return None;
        }
        // SAFETY: the bounds check above keeps the read inside `buf`; `T` is a plain integer
        // or byte array, valid for any bytes; `read_unaligned` needs no alignment.
        Some(unsafe { core::ptr::read_unaligned(self.buf.as_ptr().add(off) as *const T) })
    }

    /// The 16-byte field at `off` (an IPv6 address) into `dst`, left as it is when the kernel
    /// lacks the field. Byte by byte, unrolled: the field need not be aligned in the record,
    /// and an array assignment compiles to a call of a `memmove` subprogram that loops per byte.
    #[inline(always)]
    fn addr16(&self, off: u16, dst: &mut [u8; 16]) {
        let off = off as usize;
        if off == ABSENT as usize || off + 16 > RECORD_COPY_LEN {
            return;
        }
        let mut i = 0;
        while i < 16 {
            // SAFETY: the bounds check above keeps `off + i` inside `buf`; `i` is inside `dst`.
            unsafe {
                let b = core::ptr::read_volatile(self.buf.as_ptr().add(off + i));
                core::ptr::write_volatile(dst.as_mut_ptr().add(i), b);
            }
            i += 1;
        }
    }

    /// Fills family, addresses and ports from the classic `family/sport/dport/saddr/daddr/
    /// saddr_v6/daddr_v6` fields, or from the sockaddr fields `tcp_send_reset` has on 6.10+.
    #[inline(always)]
    pub(crate) fn tuple(&self, f: &TpFields, ev: &mut RawEvent) {
        if f.src_sockaddr != ABSENT {
            self.sockaddr(f.src_sockaddr, &mut ev.family, &mut ev.sport, &mut ev.saddr);
            self.sockaddr(f.dst_sockaddr, &mut ev.family, &mut ev.dport, &mut ev.daddr);
            return;
        }
        ev.family = self.get::<u16>(f.family).unwrap_or(0);
        ev.sport = self.get::<u16>(f.sport).unwrap_or(0);
        ev.dport = self.get::<u16>(f.dport).unwrap_or(0);
        if ev.family == AF_INET6 {
            self.addr16(f.saddr_v6, &mut ev.saddr);
            self.addr16(f.daddr_v6, &mut ev.daddr);
        } else {
            if let Some(a) = self.get::<[u8; 4]>(f.saddr) {
                ev.saddr[..4].copy_from_slice(&a);
            }
            if let Some(a) = self.get::<[u8; 4]>(f.daddr) {
                ev.daddr[..4].copy_from_slice(&a);
            }
        }
    }

    /// A `struct sockaddr_in` / `sockaddr_in6` stored as bytes: family (host order), port
    /// (network order), then the address at 4 (IPv4) or 8 (IPv6).
    #[inline(always)]
    fn sockaddr(&self, off: u16, family: &mut u16, port: &mut u16, addr: &mut [u8; 16]) {
        let Some(fam) = self.get::<u16>(off) else {
            return;
        };
        *family = fam;
        *port = u16::from_be(self.get::<u16>(off.wrapping_add(2)).unwrap_or(0));
        if fam == AF_INET6 {
            self.addr16(off.wrapping_add(8), addr);
        } else if fam == AF_INET
            && let Some(a) = self.get::<[u8; 4]>(off.wrapping_add(4))
        {
            addr[..4].copy_from_slice(&a);
        }
    }
}
