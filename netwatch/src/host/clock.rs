//! Kernel timestamps are CLOCK_MONOTONIC; people read wall-clock time. One offset, taken at
//! start-up, converts the one to the other (UTC, so output does not depend on the host's zone).
use std::time::{SystemTime, UNIX_EPOCH};

/// Converts CLOCK_MONOTONIC nanoseconds to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Unix-epoch ns minus monotonic ns, sampled once.
    offset_ns: i128,
}

/// CLOCK_MONOTONIC now, in ns: the clock `bpf_ktime_get_ns()` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct we own; CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl WallClock {
    pub fn now() -> Self {
        let mono = monotonic_ns();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Self {
            offset_ns: wall - i128::from(mono),
        }
    }

    /// A clock with a known offset (from a recording's header).
    pub fn from_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// Unix-epoch nanoseconds of a monotonic timestamp.
    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) + self.offset_ns
    }

    /// `HH:MM:SS.mmm` (UTC).
    pub fn hms(&self, mono_ns: u64) -> String {
        let ns = self.unix_ns(mono_ns).max(0) as u128;
        let secs = ns / 1_000_000_000;
        let ms = (ns / 1_000_000) % 1000;
        let day_secs = secs % 86_400;
        format!(
            "{:02}:{:02}:{:02}.{ms:03}",
            day_secs / 3600,
            (day_secs / 60) % 60,
            day_secs % 60
        )
    }

    /// RFC 3339 UTC with microseconds, e.g. `2026-11-23T16:21:27.123456Z`.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        rfc3339_from_unix_ns(self.unix_ns(mono_ns).max(0) as u128)
    }

    /// Appends [`WallClock::rfc3339`]'s text to `out`, digit by digit: `--json` writes one
    /// per event, and fmt's padded integers cost more than the rest of the line's numbers.
    pub fn push_rfc3339(&self, out: &mut String, mono_ns: u64) {
        let ns = self.unix_ns(mono_ns).max(0) as u128;
        let secs = (ns / 1_000_000_000) as i64;
        let micros = ((ns / 1000) % 1_000_000) as u64;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        if !(0..=9999).contains(&y) {
            out.push_str(&rfc3339_from_unix_ns(ns));
            return;
        }
        let s = secs.rem_euclid(86_400) as u64;
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        put_digits(&mut text[0..4], y as u64);
        put_digits(&mut text[5..7], m.into());
        put_digits(&mut text[8..10], d.into());
        put_digits(&mut text[11..13], s / 3600);
        put_digits(&mut text[14..16], (s / 60) % 60);
        put_digits(&mut text[17..19], s % 60);
        put_digits(&mut text[20..26], micros);
        out.push_str(std::str::from_utf8(&text).unwrap_or_default());
    }
}

/// Writes the last `digits.len()` decimal digits of `n` into `digits`, zero-padded.
fn put_digits(digits: &mut [u8], mut n: u64) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn rfc3339_from_unix_ns(ns: u128) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let micros = (ns / 1000) % 1_000_000;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digit-by-digit form is the formatted one, across days, years and the epoch.
    #[test]
    fn pushed_rfc3339_is_the_formatted_one() {
        for offset_ns in [
            0i128,
            1_700_000_000_123_456_789,
            253_402_300_799_999_999_000,
            -5,
        ] {
            let clock = WallClock::from_offset(offset_ns);
            for mono in [0u64, 999, 1_000, 86_399_999_999_000, 31_622_400_000_000_123] {
                let mut out = String::from("x");
                clock.push_rfc3339(&mut out, mono);
                assert_eq!(
                    out,
                    format!("x{}", clock.rfc3339(mono)),
                    "{offset_ns} {mono}"
                );
            }
        }
    }

    #[test]
    fn formats_known_instants() {
        // 2026-11-23T16:21:27.123456Z = 1795450887 s (date -u -d @1795450887).
        assert_eq!(
            rfc3339_from_unix_ns(1_795_450_887_123_456_789),
            "2026-11-23T16:21:27.123456Z"
        );
        assert_eq!(rfc3339_from_unix_ns(0), "1970-01-01T00:00:00.000000Z");
        // A leap day: 2024-02-29T00:00:00Z = 1709164800 s.
        assert_eq!(
            rfc3339_from_unix_ns(1_709_164_800_000_000_000),
            "2024-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn wall_clock_is_close_to_system_time() {
        let c = WallClock::now();
        let unix = c.unix_ns(monotonic_ns());
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((sys - unix).abs() < 1_000_000_000, "{sys} vs {unix}");
    }
}
