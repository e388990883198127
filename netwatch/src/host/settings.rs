//! The sysctls the TIME_WAIT forecast depends on, read at start-up (and recorded with the
//! events, so a replay forecasts with the live run's settings).

use crate::model::analysis::HostSettings;

/// Reads the running host's settings; the defaults where a file cannot be read.
pub fn read() -> HostSettings {
    let mut s = HostSettings::default();
    if let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let mut it = text.split_whitespace().filter_map(|w| w.parse().ok());
        if let (Some(lo), Some(hi)) = (it.next(), it.next()) {
            s.port_range = (lo, hi);
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_tw_reuse")
        && let Ok(v) = text.trim().parse()
    {
        s.tw_reuse = v;
    }
    s
}
