//! A task's command name (`comm`), held inline: every event carries one, and a replay reads
//! millions of events, so it must cost no heap allocation to make, copy or drop.
use std::{fmt, ops::Deref};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The kernel's `TASK_COMM_LEN`: a name is at most 15 bytes plus its NUL. One more byte is
/// kept here (16 bytes, no NUL), as a recording may hold names of any length.
pub const COMM_BYTES: usize = 16;

/// A command name of at most [`COMM_BYTES`] bytes of UTF-8, NUL-padded. Reads as a `str`
/// (`ev.comm.as_deref()`), and is a JSON string in every output, as a `String` was.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comm([u8; COMM_BYTES]);

impl Comm {
    /// No name: what an owner whose name was not read is kept as.
    pub const EMPTY: Comm = Comm([0; COMM_BYTES]);

    /// `name`, cut at the last character boundary that fits [`COMM_BYTES`] (the kernel never
    /// writes a longer one), and at a NUL, which ends a name.
    pub fn new(name: &str) -> Comm {
        // Only the bytes that can be kept are searched for a NUL (an ASCII byte, so always
        // at a character boundary): every event of the stream makes one.
        let head = &name.as_bytes()[..name.len().min(COMM_BYTES)];
        let mut end = head.iter().position(|&b| b == 0).unwrap_or(head.len());
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; COMM_BYTES];
        bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        Comm(bytes)
    }

    /// The name in a kernel buffer (`task->comm`): up to its NUL; bytes that are not UTF-8
    /// read as U+FFFD, as `String::from_utf8_lossy` reads them.
    pub fn from_kernel(raw: &[u8]) -> Comm {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        match std::str::from_utf8(&raw[..end]) {
            Ok(name) => Comm::new(name),
            Err(_) => Comm::new(&String::from_utf8_lossy(&raw[..end])),
        }
    }

    pub fn as_str(&self) -> &str {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_BYTES);
        // Built from a `str` cut at a character boundary (see `new`): always UTF-8.
        std::str::from_utf8(&self.0[..end]).unwrap_or_default()
    }
}

impl Deref for Comm {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Comm {
    fn from(name: &str) -> Comm {
        Comm::new(name)
    }
}

impl From<String> for Comm {
    fn from(name: String) -> Comm {
        Comm::new(&name)
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Comm, D::Error> {
        struct Name;
        impl de::Visitor<'_> for Name {
            type Value = Comm;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command name")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Comm, E> {
                Ok(Comm::new(v))
            }
        }
        d.deserialize_str(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_reads_back_as_the_str_it_was_made_from() {
        for name in ["", "curl", "a\"b\\c", "fifteen-chars-x", "sixteen-chars-xy"] {
            let c = Comm::new(name);
            assert_eq!(&*c, name);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, serde_json::to_string(name).unwrap());
            assert_eq!(serde_json::from_str::<Comm>(&json).unwrap(), c);
        }
        assert_eq!(std::mem::size_of::<Comm>(), 16);
        assert_eq!(Comm::EMPTY, Comm::new(""));
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        assert_eq!(&*Comm::new("seventeen-chars-x"), "seventeen-chars-");
        // 'é' is two bytes: the 16th byte would split the 8th.
        assert_eq!(&*Comm::new("éééééééé-"), "éééééééé");
        assert_eq!(&*Comm::new("ééééééééé"), "éééééééé");
        assert_eq!(&*Comm::new("a\0b"), "a");
    }

    #[test]
    fn kernel_names_end_at_their_nul_and_read_lossily() {
        assert_eq!(&*Comm::from_kernel(b"curl\0\0junk"), "curl");
        assert_eq!(&*Comm::from_kernel(b"a\xffb\0"), "a\u{fffd}b");
        let none: Option<Comm> = serde_json::from_str("null").unwrap();
        assert_eq!(none, None);
        assert_eq!(serde_json::to_string(&None::<Comm>).unwrap(), "null");
    }
}
