//! Column padding for values that are written piece by piece (`addr:port`, `OLD -> NEW`): a
//! `str` pads itself with [`fmt::Formatter::pad`], such a value must be whole before it can
//! be measured. Text outputs write one line per event, so this costs no heap allocation.
//!
//! And the columns of a text line written into a `String` and padded at once ([`push_left`],
//! [`push_right`]), as `{:<w$}` and `{:>w$}` would write them, for the per-event outputs.
use std::{
    fmt::{self, Write as _},
    net::{IpAddr, Ipv4Addr},
};

use crate::model::event::Endpoint;

/// Longest value measured without a heap string: any endpoint, any event description but one
/// with an unusually long reset reason.
const INLINE_BYTES: usize = 128;

/// Writes what `write` writes, within `f`'s width and alignment (`{:<21}`, `{:>10}`), as
/// [`fmt::Formatter::pad`] writes a `str`; unpadded straight to `f` when no width is asked for.
pub fn pad(
    f: &mut fmt::Formatter<'_>,
    write: impl Fn(&mut dyn fmt::Write) -> fmt::Result,
) -> fmt::Result {
    if f.width().is_none() && f.precision().is_none() {
        return write(f);
    }
    let mut inline = Inline::default();
    if write(&mut inline).is_ok() {
        return f.pad(inline.as_str());
    }
    let mut long = String::new();
    write(&mut long)?;
    f.pad(&long)
}

/// A string of at most [`INLINE_BYTES`] bytes on the stack; writing more fails.
struct Inline {
    bytes: [u8; INLINE_BYTES],
    len: usize,
}

impl Default for Inline {
    fn default() -> Self {
        Self {
            bytes: [0; INLINE_BYTES],
            len: 0,
        }
    }
}

impl Inline {
    fn as_str(&self) -> &str {
        // Only whole `str`s are ever written (see `write_str`): always UTF-8.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl fmt::Write for Inline {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Spaces to pad a column with, taken at once: `{:<N}` into a `String` writes its fill one
/// character at a time, and that was a fifth of a text trace's instructions.
pub const SPACES: &str = "                                                                ";

/// Appends `value` left-aligned in `width` characters, as `{value:<width}` would.
pub fn push_left(line: &mut String, value: impl fmt::Display, width: usize) {
    let start = line.len();
    // Writing to a `String` cannot fail.
    let _ = write!(line, "{value}");
    fill_left(line, start, width);
}

/// Pads what was written to `line` from `start` on to `width` characters.
fn fill_left(line: &mut String, start: usize, width: usize) {
    push_spaces(line, width.saturating_sub(chars(&line[start..])));
}

/// [`fill_left`] of what is ASCII by construction (an IPv4 address's digits, dots and
/// colon): its bytes are its characters, without the scan that checks it (most of the
/// padding's instructions in a text trace).
fn fill_left_ascii(line: &mut String, start: usize, width: usize) {
    push_spaces(line, width.saturating_sub(line.len() - start));
}

/// Appends `fill` spaces, as much of [`SPACES`] at a time as it takes.
fn push_spaces(line: &mut String, mut fill: usize) {
    while fill > 0 {
        let n = fill.min(SPACES.len());
        line.push_str(&SPACES[..n]);
        fill -= n;
    }
}

/// Appends `value` right-aligned in `width` characters, as `{value:>width}` would.
pub fn push_right(line: &mut String, value: impl fmt::Display, width: usize) {
    let start = line.len();
    let _ = write!(line, "{value}");
    right_align(line, start, width);
}

/// Pads what was written to `line` from `start` on to `width` characters, on its left.
fn right_align(line: &mut String, start: usize, width: usize) {
    let mut fill = width.saturating_sub(chars(&line[start..]));
    while fill > 0 {
        let n = fill.min(SPACES.len());
        line.insert_str(start, &SPACES[..n]);
        fill -= n;
    }
}

/// Characters in `s`, as a width counts them: its bytes when ASCII, as nearly always.
fn chars(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// Appends `n` in decimal: fmt's integer path (sign, prefix, padding checks) cost more than
/// the digits in a trace line's nine numbers.
pub fn push_decimal(line: &mut String, n: u32) {
    line.push_str(itoa::Buffer::new().format(n));
}

/// Appends `v` with three decimals, as `{v:.3}` writes it (rounded to nearest, ties to even,
/// from the float's exact binary value), right-aligned in `width` characters. fmt's exact
/// float path (Grisu, then Dragon when Grisu cannot decide) was a sixth of a text trace's
/// instructions; a float of the two columns that use it (seconds since the start, ms in the
/// old state) is `m * 2^e` with `m < 2^53`, so `m * 1000 / 2^-e` is integer arithmetic.
pub fn push_millis(line: &mut String, v: f64, width: usize) {
    let start = line.len();
    match thousandths(v) {
        Some(t) => {
            line.push_str(itoa::Buffer::new().format(t / 1000));
            let frac = (t % 1000) as u16;
            let digits = [
                b'.',
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ];
            line.push_str(std::str::from_utf8(&digits).unwrap_or_default());
        }
        None => {
            let _ = write!(line, "{v:.3}");
        }
    }
    right_align(line, start, width);
}

/// `v * 1000` rounded to nearest, ties to even, for `0 <= v < 2^53 / 1000`; `None` for
/// anything else (negative, huge, not finite), which fmt then writes.
fn thousandths(v: f64) -> Option<u64> {
    if !(0.0..9_007_199_254_740.0).contains(&v) || v.is_sign_negative() {
        return None;
    }
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1 << 52) - 1);
    // v = mantissa * 2^(exp - 1075), subnormals included.
    let (mantissa, shift) = if exp == 0 {
        (frac, 1074)
    } else {
        (frac | (1 << 52), 1075 - exp)
    };
    let scaled = u128::from(mantissa) * 1000;
    if shift <= 0 {
        // An integer (v < 2^53 / 1000 keeps this in range).
        return u64::try_from(scaled << (-shift) as u32).ok();
    }
    if shift >= 100 {
        return Some(0); // below 2^-47 * 1000: rounds to 0
    }
    let shift = shift as u32;
    let q = scaled >> shift;
    let rest = scaled & ((1u128 << shift) - 1);
    let half = 1u128 << (shift - 1);
    let up = rest > half || (rest == half && q & 1 == 1);
    u64::try_from(q + u128::from(up)).ok()
}

/// Appends `addr:port` left-aligned in `width` characters, as `{:<width}` of [`Endpoint`]
/// would; an IPv4 one digit by digit.
pub fn push_endpoint(line: &mut String, addr: IpAddr, port: u16, width: usize) {
    let IpAddr::V4(v4) = addr else {
        return push_left(line, Endpoint(addr, port), width);
    };
    let start = line.len();
    push_v4(line, v4);
    line.push(':');
    push_decimal(line, port.into());
    fill_left_ascii(line, start, width);
}

/// Appends `addr` left-aligned in `width` characters, as `{:<width}` would; an IPv4 one
/// digit by digit.
pub fn push_ip(line: &mut String, addr: IpAddr, width: usize) {
    let IpAddr::V4(v4) = addr else {
        return push_left(line, addr, width);
    };
    let start = line.len();
    push_v4(line, v4);
    fill_left_ascii(line, start, width);
}

fn push_v4(line: &mut String, v4: Ipv4Addr) {
    let [a, b, c, d] = v4.octets();
    push_decimal(line, a.into());
    for octet in [b, c, d] {
        line.push('.');
        push_decimal(line, octet.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text columns, padded at once and written digit by digit, are what `{:<w$}` and
    /// `{:>w$}` of the same values write.
    #[test]
    fn columns_are_what_fmt_pads() {
        let addrs = [
            "0.0.0.0",
            "10.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "::ffff:1.2.3.4",
        ];
        for addr in addrs {
            let ip: IpAddr = addr.parse().unwrap();
            for port in [0, 9, 80, 65535] {
                for width in [0, 5, 21, 47, 100] {
                    let mut line = String::from("x");
                    push_endpoint(&mut line, ip, port, width);
                    assert_eq!(line, format!("x{:<width$}", Endpoint(ip, port)));
                }
            }
        }
        // Every length, and both sides of each power of ten.
        for n in [0, 7, 9, 10, 42, 99, 100, 255, 999, 1000, 65_535, u32::MAX] {
            let mut line = String::new();
            push_decimal(&mut line, n);
            assert_eq!(line, n.to_string());
        }
        for (value, width) in [("é-", 5), ("-", 7), ("longer than seven", 7), ("", 70)] {
            let (mut left, mut right) = (String::new(), String::new());
            push_left(&mut left, value, width);
            push_right(&mut right, value, width);
            assert_eq!(left, format!("{value:<width$}"));
            assert_eq!(right, format!("{value:>width$}"));
        }
    }

    /// `{:.3}`, exactly: ties (which only binary fractions can be), both directions of
    /// rounding, carries into the integer part, subnormals, and the values fmt keeps.
    #[test]
    fn millis_are_what_fmt_writes() {
        let mut values = vec![
            0.0,
            -0.0,
            0.0005,
            0.0015,
            0.0025,
            0.125,
            0.0625,
            0.03125,
            0.9995,
            0.99949999,
            1.0,
            999.9995,
            1234.5675,
            5e-324,
            1e-300,
            2.5e-4,
            9_007_199_254.740_991,
            9_007_199_254_739.999,
            9_007_199_254_740.0,
            1e300,
            -1.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        // Nanosecond counts as the trace makes them (s and ms), and a spread of magnitudes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push((x % 100_000_000_000_000) as f64 / 1e9);
            values.push((x % 10_000_000_000) as f64 / 1e6);
            values.push(f64::from_bits(x >> 2));
            values.push((x % 4096) as f64 / 2048.0);
        }
        for v in values {
            for width in [0, 10, 12] {
                let mut line = String::from("x");
                push_millis(&mut line, v, width);
                assert_eq!(line, format!("x{v:>width$.3}"), "{v:e}");
            }
        }
    }

    struct Pieces<'a>(&'a [&'a str]);

    impl fmt::Display for Pieces<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            pad(f, |w| self.0.iter().try_for_each(|p| w.write_str(p)))
        }
    }

    /// Padded as the joined string would be, by characters (not bytes), whatever its length.
    #[test]
    fn pieces_pad_as_their_joined_string() {
        let long = "x".repeat(200);
        let long = long.as_str();
        for pieces in [
            &["a", "é", ":1"][..],
            &[],
            &["wider than ten"],
            &[long, "é"],
        ] {
            let joined = pieces.concat();
            let p = Pieces(pieces);
            assert_eq!(format!("{p:<10}|"), format!("{joined:<10}|"));
            assert_eq!(format!("{p:>10}|"), format!("{joined:>10}|"));
            assert_eq!(format!("{p}|"), format!("{joined}|"));
        }
    }
}
