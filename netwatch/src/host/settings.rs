//! The sysctls the TIME_WAIT population and forecast depend on. `/proc/sys/net` shows the
//! reading thread's network namespace, so a namespace's settings are read from a thread inside
//! it ([`crate::host::sockdiag`] does, with its dump).

use crate::model::timewait::HostSettings;

/// Reads the calling thread's namespace's settings; the defaults where a file cannot be read.
pub fn read() -> HostSettings {
    let sysctl = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok();
    let mut s = HostSettings::default();
    if let Some(text) = sysctl("ip_local_port_range") {
        let mut it = text.split_whitespace().filter_map(|w| w.parse().ok());
        if let (Some(lo), Some(hi)) = (it.next(), it.next()) {
            s.port_range = (lo, hi);
        }
    }
    if let Some(v) = sysctl("tcp_tw_reuse").and_then(|t| t.trim().parse().ok()) {
        s.tw_reuse = v;
    }
    if let Some(text) = sysctl("ip_local_reserved_ports") {
        s.reserved_ports = parse_port_ranges(&text);
    }
    s.max_tw_buckets = sysctl("tcp_max_tw_buckets").and_then(|t| t.trim().parse().ok());
    s
}

/// `ip_local_reserved_ports`' form: `8080,9000-9100` (empty when none).
fn parse_port_ranges(text: &str) -> Vec<(u16, u16)> {
    text.trim()
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
                None => part.parse().ok().map(|p| (p, p)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_port_ranges("\n"), vec![]);
        assert_eq!(
            parse_port_ranges("8080,9000-9100\n"),
            vec![(8080, 8080), (9000, 9100)]
        );
    }

    #[test]
    fn this_host_has_a_port_range_and_a_cap() {
        let s = read();
        assert!(s.port_range.0 <= s.port_range.1, "{s:?}");
        assert!(
            s.max_tw_buckets.is_some_and(|c| c > 0),
            "tcp_max_tw_buckets unreadable: {s:?}"
        );
    }
}
