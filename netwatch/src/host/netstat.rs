//! The kernel's own TcpExt counters: the listen-queue ones for this network namespace, shown
//! beside SYN-ACK retransmits (a SYN flood or a slow accept() loop shows up in both), and
//! TCPTimeWaitOverflow, the births `tcp_max_tw_buckets` refused.
use std::fs;

/// `(ListenOverflows, ListenDrops)` from `/proc/net/netstat`, if readable.
pub fn listen_counters() -> Option<(u64, u64)> {
    parse(&fs::read_to_string("/proc/net/netstat").ok()?)
}

/// TCPTimeWaitOverflow of the calling thread's network namespace (`/proc/thread-self`: a
/// thread that entered another namespace reads that one's).
pub fn time_wait_overflows() -> Option<u64> {
    tcp_ext(
        &fs::read_to_string("/proc/thread-self/net/netstat").ok()?,
        "TCPTimeWaitOverflow",
    )
}

fn parse(text: &str) -> Option<(u64, u64)> {
    Some((
        tcp_ext(text, "ListenOverflows")?,
        tcp_ext(text, "ListenDrops")?,
    ))
}

/// One TcpExt counter: `/proc/net/netstat` has a line of names, then a line of values.
fn tcp_ext(text: &str, key: &str) -> Option<u64> {
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        return names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == key)
            .and_then(|(_, v)| v.parse().ok());
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
        assert!(time_wait_overflows().is_some());
    }
}
