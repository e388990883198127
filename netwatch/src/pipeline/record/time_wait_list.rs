//! A namespace's timewait list as a block stores it from version 4 on: its few settings as
//! JSON (so a later netwatch can add fields to them without a new version), then every socket
//! in a fixed binary form.
//!
//! ```text
//! list   = varint(json length) json(Observed without its sockets) varint(count) socket*
//! socket = families (u8: bit 0 local is IPv6, bit 1 remote is IPv6)
//!          local ip (4 or 16 bytes) local port (u16 LE)
//!          remote ip (4 or 16 bytes) remote port (u16 LE) varint(ms left)
//! ```
//!
//! Why: versions 1 to 3 stored the whole list as JSON, each address through `Display`. A list
//! holds every timewait socket of the namespace (a churn keeps a minute of its connections
//! there) and is written at every reconciliation, so on a live churn recording the JSON was
//! 470 instructions per recorded event, a fifth of what recording cost (callgrind, `analyze
//! --record` of a 195,000-event live churn recording), and about 50 bytes a socket rather
//! than 15.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::model::timewait::{HostSettings, Observed};

/// The list's fields but its sockets, as written.
#[derive(Serialize)]
struct HeadOut<'a> {
    netns: u32,
    taken_ns: u64,
    settings: &'a HostSettings,
    kernel_overflows: Option<u64>,
}

/// The same, as read.
#[derive(Deserialize)]
struct HeadIn {
    netns: u32,
    taken_ns: u64,
    settings: HostSettings,
    kernel_overflows: Option<u64>,
}

/// Appends `obs` to `out` in the form above.
pub fn write(out: &mut Vec<u8>, obs: &Observed) -> serde_json::Result<()> {
    let head = serde_json::to_vec(&HeadOut {
        netns: obs.netns,
        taken_ns: obs.taken_ns,
        settings: &obs.settings,
        kernel_overflows: obs.kernel_overflows,
    })?;
    varint(out, head.len() as u64);
    out.extend_from_slice(&head);
    varint(out, obs.sockets.len() as u64);
    out.reserve(obs.sockets.len() * 15);
    for (local, remote, ms_left) in &obs.sockets {
        out.push(u8::from(local.is_ipv6()) | u8::from(remote.is_ipv6()) << 1);
        address(out, local);
        address(out, remote);
        varint(out, u64::from(*ms_left));
    }
    Ok(())
}

fn address(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_le_bytes());
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one list from the start of `bytes`: the list and how many bytes it took, or what is
/// wrong with it and at which byte of `bytes`.
pub fn read(bytes: &[u8]) -> Result<(Observed, usize), String> {
    let mut r = Reader { bytes, pos: 0 };
    let head_len = r.varint()? as usize;
    let json = r.take(head_len, "its settings")?;
    let head: HeadIn = serde_json::from_slice(json)
        .map_err(|e| format!("a timewait list's settings do not parse: {e}"))?;
    let count = r.varint()? as usize;
    // Each socket takes at least 13 bytes: a damaged count cannot allocate much.
    if count > (bytes.len() - r.pos) / 13 {
        return Err(format!(
            "a timewait list of {count} sockets in {} bytes: the count is damaged",
            bytes.len() - r.pos
        ));
    }
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let families = r.byte()?;
        if families > 3 {
            return Err(format!(
                "byte {}: {families} is not an address family pair",
                r.pos - 1
            ));
        }
        let local = r.address(families & 1 != 0)?;
        let remote = r.address(families & 2 != 0)?;
        let ms_left = u32::try_from(r.varint()?)
            .map_err(|_| format!("byte {}: a time left past 32 bits", r.pos))?;
        sockets.push((local, remote, ms_left));
    }
    let obs = Observed {
        netns: head.netns,
        taken_ns: head.taken_ns,
        settings: head.settings,
        sockets,
        kernel_overflows: head.kernel_overflows,
    };
    Ok((obs, r.pos))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let bytes = self
            .bytes
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or_else(|| format!("byte {}: the timewait list ends inside {what}", self.pos))?;
        self.pos += n;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1, "a socket")?[0])
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1, "a number")?[0];
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(format!("byte {}: a number longer than 64 bits", self.pos))
    }

    fn address(&mut self, v6: bool) -> Result<SocketAddr, String> {
        let ip = if v6 {
            let octets: [u8; 16] = self.take(16, "an address")?.try_into().expect("16 bytes");
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            let octets: [u8; 4] = self.take(4, "an address")?.try_into().expect("4 bytes");
            IpAddr::V4(Ipv4Addr::from(octets))
        };
        let port: [u8; 2] = self.take(2, "a port")?.try_into().expect("2 bytes");
        Ok(SocketAddr::new(ip, u16::from_le_bytes(port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Observed {
        Observed {
            netns: 4026531840,
            taken_ns: 123_456_789_012,
            settings: HostSettings {
                port_range: (10000, 10999),
                tw_reuse: 1,
                reserved_ports: vec![(10500, 10510)],
                max_tw_buckets: Some(262144),
            },
            sockets: vec![
                (
                    "10.0.0.1:40000".parse().unwrap(),
                    "10.0.0.2:80".parse().unwrap(),
                    59_999,
                ),
                (
                    "[fd00::1]:40001".parse().unwrap(),
                    "[fd00::2]:443".parse().unwrap(),
                    0,
                ),
                (
                    "[::ffff:10.0.0.1]:65535".parse().unwrap(),
                    "10.0.0.3:1".parse().unwrap(),
                    u32::MAX,
                ),
            ],
            kernel_overflows: Some(7),
        }
    }

    #[test]
    fn a_list_comes_back_the_same_and_says_how_long_it_was() {
        for obs in [
            list(),
            Observed {
                sockets: Vec::new(),
                kernel_overflows: None,
                ..list()
            },
        ] {
            let mut out = vec![0xEE];
            write(&mut out, &obs).unwrap();
            out.push(0xFF);
            let (back, len) = read(&out[1..]).unwrap();
            assert_eq!(back, obs);
            assert_eq!(
                len,
                out.len() - 2,
                "the byte after the list is not part of it"
            );
        }
    }

    #[test]
    fn a_socket_takes_its_bytes_as_documented() {
        let obs = Observed {
            sockets: vec![(
                "10.0.0.1:40000".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap(),
                300,
            )],
            ..list()
        };
        let mut out = Vec::new();
        write(&mut out, &obs).unwrap();
        // families, 10.0.0.1, 40000 LE, 10.0.0.2, 80 LE, 300 as a varint.
        let socket = [0, 10, 0, 0, 1, 0x40, 0x9c, 10, 0, 0, 2, 80, 0, 0xac, 0x02];
        assert_eq!(out[out.len() - socket.len()..], socket);
        assert_eq!(out[out.len() - socket.len() - 1], 1, "the count");
    }

    #[test]
    fn a_cut_or_damaged_list_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        write(&mut out, &list()).unwrap();
        for cut in 0..out.len() {
            assert!(read(&out[..cut]).is_err(), "cut at {cut} read");
        }
        // The first socket starts where an empty list ends (both counts take one byte).
        let mut empty = Vec::new();
        write(
            &mut empty,
            &Observed {
                sockets: Vec::new(),
                ..list()
            },
        )
        .unwrap();
        let mut bad = out.clone();
        bad[empty.len()] = 9;
        let err = read(&bad).unwrap_err();
        assert!(err.contains("address family"), "{err}");
    }
}
