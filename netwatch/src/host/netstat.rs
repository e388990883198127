//! The kernel's own listen-queue counters for this network namespace, shown beside SYN-ACK
//! retransmits: a SYN flood or a slow accept() loop shows up in both.
use std::fs;

/// `(ListenOverflows, ListenDrops)` from `/proc/net/netstat`, if readable.
pub fn listen_counters() -> Option<(u64, u64)> {
    parse(&fs::read_to_string("/proc/net/netstat").ok()?)
}

fn parse(text: &str) -> Option<(u64, u64)> {
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let get = |key: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == key)
                .and_then(|(_, v)| v.parse().ok())
        };
        return Some((get("ListenOverflows")?, get("ListenDrops")?));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tcpext_pair() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 1 7 9\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse(text), Some((7, 9)));
        assert_eq!(parse("IpExt: A\nIpExt: 1\n"), None);
    }

    #[test]
    fn this_machine_has_them() {
        assert!(listen_counters().is_some());
    }
}
