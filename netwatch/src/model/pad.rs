//! Column padding for values that are written piece by piece (`addr:port`, `OLD -> NEW`): a
//! `str` pads itself with [`fmt::Formatter::pad`], such a value must be whole before it can
//! be measured. Text outputs write one line per event, so this costs no heap allocation.
use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

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
