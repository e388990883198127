//! What the raw tracepoint programs read from the kernel's own structs, where a classic
//! tracepoint's record has it already: the socket's protocol, state and endpoints, and the
//! endpoints of the segment a reset answers.
//!
//! Each read mirrors the `TP_fast_assign` of the classic tracepoint it replaces
//! (`include/trace/events/{sock,tcp}.h`), so that both paths give the same event: the source
//! port and IPv4 address come from `inet_sock` (`inet_sport`, `inet_saddr`), not from
//! `sock_common` (`skc_num`, `skc_rcv_saddr`), because that is what the classic records hold;
//! an IPv6 socket's addresses come from `sk_v6_rcv_saddr` and `sk_v6_daddr`.
//!
//! Why a copy ([`SockCopy`]): each `bpf_probe_read_kernel` costs about as much as copying a
//! hundred bytes, and the endpoints are a dozen small fields. So the socket's first bytes (its
//! `sock_common`: addresses, ports, family, state, namespace) are copied in one read, and
//! `inet_saddr` with `inet_sport` in another, and the fields are picked out of the copy as
//! whole aligned words, straight into the event. User space sizes both copies from BTF
//! (`sk_head_len`, `inet_copy_*`); a field outside them is read on its own.
//!
//! Offsets come from the running kernel's BTF ([`KERNEL_OFFSETS`]); user space attaches a raw
//! program only when every offset it needs is known.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use netwatch_common::{
    ABSENT32, AF_INET, AF_INET6, INET_COPY_BYTES, RawEvent, SOCK_HEAD_BYTES, tcp_state,
};

use crate::{
    KERNEL_OFFSETS,
    helpers::{global, kread},
};

const HEAD_WORDS: usize = SOCK_HEAD_BYTES as usize / 8;
const INET_WORDS: usize = INET_COPY_BYTES as usize / 8;

/// Where a program keeps its copy of a socket's bytes (in its scratch slot: 144 bytes are too
/// many for the 6.1 verifier's stack budget): the first `sk_head_len` bytes, and the
/// `inet_copy_len` bytes at `inet_copy_off`. Words, so that every field in them is aligned as
/// it is in the kernel and is read with one load.
#[repr(C)]
pub(crate) struct SockCopy {
    head: [u64; HEAD_WORDS],
    inet: [u64; INET_WORDS],
}

/// A socket whose head (and, after [`Sock::copy_inet`], `inet` block) is copied in a
/// [`SockCopy`]; its fields come from the copy where it holds them, else from their own read.
pub(crate) struct Sock<'a> {
    sk: u64,
    copy: &'a mut SockCopy,
    inet_copied: bool,
}

/// Copies `len` kernel bytes at `src` to `dst`; `None` when the read faults.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes.
#[inline(always)]
unsafe fn read_into(dst: *mut u8, len: u32, src: u64) -> Option<()> {
    // SAFETY: the caller vouches for `dst`; bpf_probe_read_kernel faults safely on `src`.
    let ret = unsafe { bpf_probe_read_kernel(dst.cast::<c_void>(), len, src as *const c_void) };
    (ret == 0).then_some(())
}

/// The 4 bytes of an IPv4 address, as the kernel stores it, into the first 4 bytes of
/// `dst` (an event's address, whose other bytes stay as they are: zero).
#[inline(always)]
fn put_addr4(dst: &mut [u8; 16], addr: u32) {
    const {
        assert!(core::mem::offset_of!(RawEvent, saddr) % 8 == 0);
        assert!(core::mem::offset_of!(RawEvent, daddr) % 8 == 0);
    };
    // SAFETY: `dst` is an event's address (the only callers), 8-aligned as asserted above.
    unsafe { dst.as_mut_ptr().cast::<u32>().write(addr) };
}

impl<'a> Sock<'a> {
    /// Copies the head of `sk` (one read); `None` when `sk` is NULL or the read faults.
    #[inline(always)]
    pub(crate) fn copy_head(sk: u64, copy: &'a mut SockCopy) -> Option<Self> {
        if sk == 0 {
            return None;
        }
        let len = global(&KERNEL_OFFSETS.sk_head_len);
        if len > 0 && len <= SOCK_HEAD_BYTES {
            // SAFETY: `head` has room for SOCK_HEAD_BYTES >= len bytes.
            unsafe { read_into(copy.head.as_mut_ptr().cast(), len, sk)? };
        }
        Some(Self {
            sk,
            copy,
            inet_copied: false,
        })
    }

    /// Copies the `inet_saddr`/`inet_sport` block (one read), for a full socket only: the
    /// other kinds end after their `sock_common`.
    #[inline(always)]
    pub(crate) fn copy_inet(&mut self) -> Option<()> {
        let o = &KERNEL_OFFSETS;
        let (off, len) = (global(&o.inet_copy_off), global(&o.inet_copy_len));
        if off != ABSENT32 && len > 0 && len <= INET_COPY_BYTES {
            // SAFETY: `inet` has room for INET_COPY_BYTES >= len bytes.
            unsafe {
                read_into(
                    self.copy.inet.as_mut_ptr().cast(),
                    len,
                    self.sk + u64::from(off),
                )?
            };
            self.inet_copied = true;
        }
        Some(())
    }

    /// The `T` (a 1-, 2-, 4- or 8-byte integer) at `off` in the head: from the copy when it
    /// holds it, aligned (always, as the kernel lays structs out), else read on its own.
    #[inline(always)]
    pub(crate) fn head<T: Copy>(&self, off: u32) -> Option<T> {
        let len = global(&KERNEL_OFFSETS.sk_head_len);
        // SAFETY: `head` is an array of words, so `head + off` is aligned for `T` when `off`
        // is a multiple of its size; `off + size <= len <= SOCK_HEAD_BYTES` keeps the read
        // inside the copy, which holds the kernel's bytes there: any bytes are a valid `T`.
        unsafe { Self::pick(self.copy.head.as_ptr().cast(), u64::from(off), len) }
            .or_else(|| kread::<T>(self.sk, off))
    }

    /// The `T` at `off` in the socket (an `inet_sock` member): from the `inet` copy when it
    /// holds it, else read on its own.
    #[inline(always)]
    fn inet<T: Copy>(&self, off: u32) -> Option<T> {
        let o = &KERNEL_OFFSETS;
        if self.inet_copied {
            // An offset before the block, or absent, wraps to past its end.
            let at = u64::from(off.wrapping_sub(global(&o.inet_copy_off)));
            // SAFETY: as in `head`, for the `inet` block, which starts at `inet_copy_off`.
            let v = unsafe {
                Self::pick::<T>(self.copy.inet.as_ptr().cast(), at, global(&o.inet_copy_len))
            };
            if v.is_some() {
                return v;
            }
        }
        kread::<T>(self.sk, off)
    }

    /// The `T` (1, 2, 4 or 8 bytes) at `off` in the copy at `base` holding `len` bytes, when
    /// it holds it aligned. In 64 bits, so that an absent offset ([`ABSENT32`]) fails the
    /// bounds check without a test of its own: these checks run for every field of every
    /// event (the offsets are constants to the verifier, but the JIT still runs them).
    ///
    /// # Safety
    /// `base` must be 8-aligned and hold `len` readable bytes.
    #[inline(always)]
    unsafe fn pick<T: Copy>(base: *const u8, off: u64, len: u32) -> Option<T> {
        let size = const {
            assert!(core::mem::size_of::<T>().is_power_of_two() && core::mem::size_of::<T>() <= 8);
            core::mem::size_of::<T>() as u64
        };
        if off & (size - 1) != 0 || off + size > u64::from(len) {
            return None;
        }
        // SAFETY: the caller vouches for `base` and `len`; the checks above keep the read
        // inside and aligned.
        Some(unsafe { base.add(off as usize).cast::<T>().read() })
    }

    /// The 16 bytes at `off` in the head (an IPv6 address) into `dst`, as two words from the
    /// copy when it holds them, else in one read straight into `dst`.
    #[inline(always)]
    fn head_addr16(&self, off: u32, dst: &mut [u8; 16]) -> Option<()> {
        const {
            assert!(core::mem::offset_of!(RawEvent, saddr) % 8 == 0);
            assert!(core::mem::offset_of!(RawEvent, daddr) % 8 == 0);
        };
        let len = global(&KERNEL_OFFSETS.sk_head_len);
        let base = self.copy.head.as_ptr().cast::<u8>();
        // SAFETY: as in `head`, for the two words at `off` and `off + 8`.
        let words = unsafe {
            (
                Self::pick::<u64>(base, u64::from(off), len),
                Self::pick(base, u64::from(off) + 8, len),
            )
        };
        if let (Some(a), Some(b)) = words {
            let d = dst.as_mut_ptr().cast::<u64>();
            // SAFETY: `dst` is an event's address (the only callers), 8-aligned as asserted
            // above, 16 bytes: two words.
            unsafe {
                d.write(a);
                d.add(1).write(b);
            }
            return Some(());
        }
        if off == ABSENT32 {
            return None;
        }
        // SAFETY: `dst` has room for the 16 bytes.
        unsafe { read_into(dst.as_mut_ptr(), 16, self.sk + u64::from(off)) }
    }

    /// `sk->sk_state` (`sock_common`, so also right for timewait and request sockets).
    #[inline(always)]
    pub(crate) fn state(&self) -> Option<u8> {
        self.head::<u8>(global(&KERNEL_OFFSETS.skc_state))
    }

    /// The inode of the socket's network namespace (`skc_net.net->ns.inum`), or 0 when the
    /// offsets are missing or a read fails.
    #[inline(always)]
    pub(crate) fn netns(&self) -> u32 {
        let o = &KERNEL_OFFSETS;
        self.head::<u64>(global(&o.skc_net))
            .and_then(|net| kread::<u32>(net, global(&o.net_ns_inum)))
            .unwrap_or(0)
    }

    /// Family, ports and addresses of a full socket, as `tcp_event_sk`, `tcp_event_sk_skb`
    /// and `inet_sock_set_state` store them (`TP_STORE_ADDRS`). With `np_saddr`, an IPv6
    /// source address comes from `inet6_sk(sk)->saddr` instead of `sk_v6_rcv_saddr`, as
    /// `tcp_send_reset` stores it since 6.10 (`TP_STORE_ADDR_PORTS`). `None` when a read
    /// fails. Copies the `inet` block first.
    #[inline(always)]
    pub(crate) fn tuple(&mut self, ev: &mut RawEvent, np_saddr: bool) -> Option<()> {
        let o = &KERNEL_OFFSETS;
        self.copy_inet()?;
        let family = self.head::<u16>(global(&o.skc_family))?;
        ev.family = family;
        ev.sport = u16::from_be(self.inet::<u16>(global(&o.inet_sport))?);
        ev.dport = u16::from_be(self.head::<u16>(global(&o.skc_dport))?);
        if family == AF_INET6 {
            if np_saddr {
                let np = self.inet::<u64>(global(&o.inet_pinet6))?;
                let off = global(&o.ipv6_pinfo_saddr);
                if off == ABSENT32 || np == 0 {
                    return None;
                }
                // SAFETY: `ev.saddr` has room for the 16 bytes.
                unsafe { read_into(ev.saddr.as_mut_ptr(), 16, np + u64::from(off))? };
            } else {
                self.head_addr16(global(&o.skc_v6_rcv_saddr), &mut ev.saddr)?;
            }
            self.head_addr16(global(&o.skc_v6_daddr), &mut ev.daddr)?;
        } else {
            put_addr4(&mut ev.saddr, self.inet::<u32>(global(&o.inet_saddr))?);
            put_addr4(&mut ev.daddr, self.head::<u32>(global(&o.skc_daddr))?);
        }
        Some(())
    }

    /// The endpoints of a socket as `sock_common` holds them (`skc_num` as the source port,
    /// already in host order; `skc_dport`; `skc_rcv_saddr`/`skc_daddr`, or the IPv6 pair),
    /// under `family`: a request socket's, as `tcp_retransmit_synack` stores them (under its
    /// listener's family), and an accepted socket's. A port or address that cannot be read
    /// stays as it was (zero).
    #[inline(always)]
    pub(crate) fn common_tuple(&self, family: u16, ev: &mut RawEvent) {
        let o = &KERNEL_OFFSETS;
        ev.family = family;
        ev.sport = self.head::<u16>(global(&o.skc_num)).unwrap_or(0);
        ev.dport = u16::from_be(self.head::<u16>(global(&o.skc_dport)).unwrap_or(0));
        if family == AF_INET6 {
            let _ = self.head_addr16(global(&o.skc_v6_rcv_saddr), &mut ev.saddr);
            let _ = self.head_addr16(global(&o.skc_v6_daddr), &mut ev.daddr);
        } else {
            if let Some(a) = self.head::<u32>(global(&o.skc_rcv_saddr)) {
                put_addr4(&mut ev.saddr, a);
            }
            if let Some(a) = self.head::<u32>(global(&o.skc_daddr)) {
                put_addr4(&mut ev.daddr, a);
            }
        }
    }

    /// `sk->sk_family`.
    #[inline(always)]
    pub(crate) fn family(&self) -> Option<u16> {
        self.head::<u16>(global(&KERNEL_OFFSETS.skc_family))
    }
}

/// `sk->sk_protocol`.
#[inline(always)]
pub(crate) fn protocol(sk: u64) -> Option<u16> {
    kread::<u16>(sk, global(&KERNEL_OFFSETS.sk_protocol))
}

/// `sk_fullsock()`: neither a timewait nor a request socket, whose structs end after
/// `sock_common`.
#[inline(always)]
pub(crate) fn is_full(state: u8) -> bool {
    state != tcp_state::TIME_WAIT && state != tcp_state::NEW_SYN_RECV
}

/// The endpoints of the segment `skb` a reset answers, reversed (the reset goes back to its
/// sender), as `tcp_send_reset` stores them since 6.10 when there is no full socket
/// (`TP_STORE_ADDR_PORTS_SKB`): the IP header at `head + network_header` (version 6: source
/// at byte 8, destination at 24; else IPv4: 12 and 16), the TCP header at `data` (source port
/// at 0, destination at 2).
#[inline(always)]
pub(crate) fn segment_tuple(skb: u64, ev: &mut RawEvent) -> Option<()> {
    let o = &KERNEL_OFFSETS;
    let head = kread::<u64>(skb, global(&o.skb_head))?;
    let network = kread::<u16>(skb, global(&o.skb_network_header))?;
    let th = kread::<u64>(skb, global(&o.skb_data))?;
    let ip = head + u64::from(network);
    let ports = kread::<u32>(th, 0)?.to_ne_bytes();
    ev.sport = u16::from_be_bytes([ports[2], ports[3]]);
    ev.dport = u16::from_be_bytes([ports[0], ports[1]]);
    if kread::<u8>(ip, 0)? >> 4 == 6 {
        ev.family = AF_INET6;
        // SAFETY: each address has room for the 16 bytes.
        unsafe {
            read_into(ev.saddr.as_mut_ptr(), 16, ip + 24)?;
            read_into(ev.daddr.as_mut_ptr(), 16, ip + 8)?;
        }
    } else {
        ev.family = AF_INET;
        let addrs = kread::<u64>(ip, 12)?;
        // Little-endian target: the word's low half is the first address in memory.
        put_addr4(&mut ev.saddr, (addrs >> 32) as u32);
        put_addr4(&mut ev.daddr, addrs as u32);
    }
    Some(())
}
