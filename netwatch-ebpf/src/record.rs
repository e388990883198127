//! The tracepoint record, copied once per program run into this CPU's [`Scratch`] (the
//! `SCRATCH` map), and how fields are picked out of the copy by the offsets user space hands in.
//!
//! Why a map and not the stack: the copy (128 bytes) and the event being built (136) once
//! lived on the stack, and Debian 12's 6.1 verifier, which counts the stack of every call
//! frame together against 512 bytes, rejected `nw_set_state` (combined stack size 544).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_probe_read_kernel, programs::TracePointContext,
};
use netwatch_common::{ABSENT, AF_INET, AF_INET6, RECORD_COPY_LEN, RawEvent, TpFields, stat};

use crate::{SCRATCH, helpers::count};

/// One tracepoint record, copied once from the kernel's trace buffer into [`Scratch`].
#[repr(C)]
pub(crate) struct Record {
    buf: [u8; RECORD_COPY_LEN],
}

/// The per-CPU working memory of one program run: the copied record and the event being
/// built. Kept out of the BPF stack because older verifiers (6.1) count the stack of every
/// call frame together against 512 bytes, and these two alone take 264.
#[repr(C)]
pub(crate) struct Scratch {
    pub(crate) rec: Record,
    pub(crate) ev: RawEvent,
}

/// This CPU's [`Scratch`], with the record of `ctx` copied into it; `None` (counted) when the
/// copy fails.
#[inline(always)]
pub(crate) fn scratch_with_record(ctx: &TracePointContext) -> Option<&'static mut Scratch> {
    let Some(p) = SCRATCH.get_ptr_mut(0) else {
        count(stat::READ_FAILED);
        return None;
    };
    // SAFETY: the pointer comes from the per-CPU array lookup of index 0, which always exists,
    // and is valid for this program run; no other program uses this CPU's slot meanwhile
    // (classic tracepoint programs do not nest on one CPU).
    let s = unsafe { &mut *p };
    // SAFETY: ctx points at the tracepoint's record inside the per-CPU perf trace buffer
    // (PERF_MAX_TRACE_SIZE = 8 KiB), so RECORD_COPY_LEN bytes from it are readable; the
    // helper faults safely (returns an error) if not, and writes at most RECORD_COPY_LEN
    // bytes into `buf`, which has room for them.
    let ret = unsafe {
        bpf_probe_read_kernel(
            s.rec.buf.as_mut_ptr().cast::<c_void>(),
            RECORD_COPY_LEN as u32,
            ctx.as_ptr().cast_const(),
        )
    };
    if ret != 0 {
        count(stat::READ_FAILED);
        return None;
    }
    Some(s)
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
            if let Some(a) = self.get::<[u8; 16]>(f.saddr_v6) {
                ev.saddr = a;
            }
            if let Some(a) = self.get::<[u8; 16]>(f.daddr_v6) {
                ev.daddr = a;
            }
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
            if let Some(a) = self.get::<[u8; 16]>(off.wrapping_add(8)) {
                *addr = a;
            }
        } else if fam == AF_INET
            && let Some(a) = self.get::<[u8; 4]>(off.wrapping_add(4))
        {
            addr[..4].copy_from_slice(&a);
        }
    }
}
