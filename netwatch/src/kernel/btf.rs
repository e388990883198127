//! A small, strict reader for the kernel's raw BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Why this exists: netwatch's kernel programs read a few `struct tcp_sock` counters
//! (`bytes_acked`, `bytes_received`, `srtt_us`, ...) straight from the socket with
//! `bpf_probe_read_kernel`. Our loader has no CO-RE relocation, and the layout of
//! `tcp_sock` changes between kernel versions and configurations (6.8 regrouped it into
//! cacheline groups), so offsets compiled into the binary would silently read the wrong
//! bytes. User space therefore looks the offsets up in the running kernel's own type
//! information at start-up and hands them to the BPF side.
//!
//! Why strict: a wrong offset does not crash anything, it quietly produces plausible
//! garbage. So every record is bounds-checked, every kind's trailing data is skipped
//! exactly as `Documentation/bpf/btf.rst` specifies, unknown kinds are rejected instead of
//! guessed at, and lookups refuse bitfields and ambiguous names rather than returning a
//! best effort. Errors say what is wrong and where (byte offset into the blob, type id).
//!
//! Scope: base BTF only (vmlinux). Module BTF (`/sys/kernel/btf/<module>`) is "split" BTF
//! whose type ids continue after vmlinux's; it is rejected as referring to unknown types.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the running kernel exposes its own BTF (raw, not wrapped in ELF).
pub const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
/// `sizeof(struct btf_header)` for version 1; `hdr_len` may be larger (extensible header).
const HEADER_LEN: usize = 24;
/// `sizeof(struct btf_type)`: name_off, info, size/type.
const TYPE_HEADER_LEN: usize = 12;
/// `BTF_MAX_TYPE`: the format cannot address more type ids than this.
const MAX_TYPE_ID: u32 = 0x000f_ffff;
/// Longest typedef/qualifier chain or anonymous-member nesting we follow. Real kernels
/// need a handful; a limit turns a malicious or corrupt reference loop into an error
/// instead of a hang or a stack overflow.
const MAX_DEPTH: usize = 64;
/// BTF does not record pointer width. netwatch only runs on 64-bit kernels (x86_64 is the
/// target), where every kernel pointer is 8 bytes.
const POINTER_SIZE: u32 = 8;

/// A BTF type kind (`BTF_KIND_*`), used in error messages and while walking types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Type id 0, which BTF reserves for `void`.
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    /// Maps `BTF_INFO_KIND(info)` to a kind; `None` for 0 (`BTF_KIND_UNKN`) and for kinds
    /// newer than this reader, whose trailing data length we cannot know.
    fn from_raw(raw: u32) -> Option<Kind> {
        Some(match raw {
            1 => Kind::Int,
            2 => Kind::Ptr,
            3 => Kind::Array,
            4 => Kind::Struct,
            5 => Kind::Union,
            6 => Kind::Enum,
            7 => Kind::Fwd,
            8 => Kind::Typedef,
            9 => Kind::Volatile,
            10 => Kind::Const,
            11 => Kind::Restrict,
            12 => Kind::Func,
            13 => Kind::FuncProto,
            14 => Kind::Var,
            15 => Kind::Datasec,
            16 => Kind::Float,
            17 => Kind::DeclTag,
            18 => Kind::TypeTag,
            19 => Kind::Enum64,
            _ => return None,
        })
    }

    /// The name bpftool and the kernel documentation use (`STRUCT`, `FUNC_PROTO`, ...).
    fn name(self) -> &'static str {
        match self {
            Kind::Void => "VOID",
            Kind::Int => "INT",
            Kind::Ptr => "PTR",
            Kind::Array => "ARRAY",
            Kind::Struct => "STRUCT",
            Kind::Union => "UNION",
            Kind::Enum => "ENUM",
            Kind::Fwd => "FWD",
            Kind::Typedef => "TYPEDEF",
            Kind::Volatile => "VOLATILE",
            Kind::Const => "CONST",
            Kind::Restrict => "RESTRICT",
            Kind::Func => "FUNC",
            Kind::FuncProto => "FUNC_PROTO",
            Kind::Var => "VAR",
            Kind::Datasec => "DATASEC",
            Kind::Float => "FLOAT",
            Kind::DeclTag => "DECL_TAG",
            Kind::TypeTag => "TYPE_TAG",
            Kind::Enum64 => "ENUM64",
        }
    }

    /// Kinds that only qualify or rename another type; looked through when descending
    /// into a member or computing a size.
    fn is_modifier(self) -> bool {
        matches!(
            self,
            Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag
        )
    }

    fn is_composite(self) -> bool {
        matches!(self, Kind::Struct | Kind::Union)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong reading BTF or looking a member up in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "BTF data truncated: {what} at byte offset {offset} needs {needed} bytes, \
         but the data is only {len} bytes long"
    )]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        len: usize,
    },
    #[error("not BTF: magic at byte offset 0 is {found:#06x}, expected 0xeb9f")]
    BadMagic { found: u16 },
    #[error("unsupported BTF version {version} at byte offset 2 (this reader knows version 1)")]
    UnsupportedVersion { version: u8 },
    #[error("invalid BTF header: hdr_len at byte offset 4 is {hdr_len}, less than 24")]
    BadHeaderLen { hdr_len: u32 },
    #[error(
        "BTF {section} section spans bytes {start}..{end}, past the end of the \
         {len}-byte data"
    )]
    SectionOutOfBounds {
        section: &'static str,
        start: u64,
        end: u64,
        len: usize,
    },
    #[error("BTF type section starts at byte offset {offset}, which is not 4-byte aligned")]
    MisalignedTypeSection { offset: usize },
    #[error(
        "BTF type section (bytes {type_start}..{type_end}) overlaps the string section \
         (bytes {str_start}..{str_end})"
    )]
    SectionsOverlap {
        type_start: usize,
        type_end: usize,
        str_start: usize,
        str_end: usize,
    },
    #[error("invalid BTF string section at byte offset {offset}: {reason}")]
    BadStringSection { offset: usize, reason: &'static str },
    #[error(
        "BTF type id {type_id} ({what}) at byte offset {offset} needs {needed} bytes, \
         but the type section ends at byte offset {section_end}"
    )]
    TypeTruncated {
        type_id: u32,
        what: &'static str,
        offset: usize,
        needed: usize,
        section_end: usize,
    },
    #[error(
        "unknown BTF kind {kind} for type id {type_id} at byte offset {offset}; \
         its length is unknown, so the types after it cannot be read"
    )]
    UnknownKind {
        kind: u32,
        type_id: u32,
        offset: usize,
    },
    #[error(
        "BTF type id {type_id} at byte offset {offset}: name offset {name_off} is outside \
         the {str_len}-byte string section"
    )]
    NameOutOfRange {
        type_id: u32,
        offset: usize,
        name_off: u32,
        str_len: usize,
    },
    #[error(
        "BTF type id {type_id} at byte offset {offset} refers to type id {referenced}, \
         but only ids 0..={max_id} exist"
    )]
    BadTypeRef {
        type_id: u32,
        offset: usize,
        referenced: u32,
        max_id: u32,
    },
    #[error("BTF type id {type_id} at byte offset {offset} is invalid: {reason}")]
    InvalidType {
        type_id: u32,
        offset: usize,
        reason: String,
    },
    #[error("BTF has more than {max} types, the limit of the format")]
    TooManyTypes { max: u32 },
    #[error("BTF string at string-section offset {name_off} is not valid UTF-8")]
    NameNotUtf8 { name_off: u32 },
    #[error("BTF string offset {name_off} is outside the {str_len}-byte string section")]
    StringOutOfRange { name_off: u32, str_len: usize },
    #[error("invalid member path {path:?}: expected names separated by single dots, like `a.b.c`")]
    InvalidPath { path: String },
    #[error("BTF has no struct or union named `{name}`")]
    StructNotFound { name: String },
    #[error(
        "`{strukt}` (type id {type_id}) has no member `{member}`, \
         not even inside its anonymous structs or unions"
    )]
    MemberNotFound {
        strukt: String,
        member: String,
        type_id: u32,
    },
    #[error(
        "`{strukt}.{member}` is a bitfield ({bits} bits at bit offset {bit_offset}); \
         it has no byte offset to read it at"
    )]
    Bitfield {
        strukt: String,
        member: String,
        bit_offset: u64,
        bits: u32,
    },
    #[error(
        "cannot descend into `{path}`: its type (id {type_id}) is a {kind}, not a struct or union"
    )]
    NotComposite {
        path: String,
        type_id: u32,
        kind: Kind,
    },
    #[error(
        "`{name}` names {} different struct/union types in BTF (ids {ids:?}) that \
         disagree about `{member}`",
        ids.len()
    )]
    Ambiguous {
        name: String,
        member: String,
        ids: Vec<u32>,
    },
    #[error("BTF type id {type_id} is a {kind}, which has no size")]
    Unsized { type_id: u32, kind: Kind },
    #[error(
        "BTF type id {type_id}: references nest deeper than {MAX_DEPTH} levels \
         (a reference loop?)"
    )]
    TooDeep { type_id: u32 },
    #[error("BTF type id {type_id}: size or offset does not fit in 32 bits")]
    Overflow { type_id: u32 },
    #[error("BTF has no typedef `btf_trace_{event}`: the kernel has no raw tracepoint `{event}`")]
    TracepointNotFound { event: String },
    #[error(
        "BTF typedef `btf_trace_{event}` (type id {type_id}) is not a pointer to a function          prototype"
    )]
    NotATracepointTypedef { event: String, type_id: u32 },
}

/// Where a member lives inside a struct: what a BPF program needs for
/// `bpf_probe_read_kernel(dst, size, (void *)sk + offset)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberInfo {
    /// Byte offset from the start of the outermost struct named in the lookup.
    pub offset: u32,
    /// Size in bytes of the member's type (typedefs and qualifiers looked through).
    pub size: u32,
}

/// Byte order of the blob, from the way the magic is stored. Kernel BTF is in the
/// kernel's native order; reading both costs nothing and keeps big-endian hosts working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

/// Parsed, validated BTF.
///
/// Holds the blob itself and the byte offset of every type, so lookups decode only the
/// few types they touch; the one index built up front maps struct/union names to ids
/// (about 10k names for a 6.18 vmlinux), which is what lookups start from.
pub struct Btf {
    data: Vec<u8>,
    endian: Endian,
    /// Absolute byte range of the string section within `data`.
    str_start: usize,
    str_end: usize,
    /// `type_offsets[id - 1]` is the absolute byte offset of type `id`'s `btf_type`.
    type_offsets: Vec<usize>,
    /// Struct and union names to their type ids (a name may repeat in BTF).
    composites: HashMap<Box<str>, Vec<u32>>,
    /// `btf_trace_<tracepoint>` typedefs (the raw tracepoints' prototypes) by tracepoint name.
    trace_typedefs: HashMap<Box<str>, u32>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("bytes", &self.data.len())
            .field("endian", &self.endian)
            .field("types", &self.type_offsets.len())
            .field("named_structs_and_unions", &self.composites.len())
            .finish()
    }
}

/// One decoded `struct btf_type`, plus where it sits.
#[derive(Debug, Clone, Copy)]
struct TypeRef {
    id: u32,
    /// Absolute byte offset of the record in the blob (for error messages and for the
    /// trailing data, which starts `TYPE_HEADER_LEN` bytes later).
    offset: usize,
    name_off: u32,
    kind: Kind,
    kind_flag: bool,
    vlen: u32,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
}

/// A member found by name, with its bit offset relative to the composite searched.
#[derive(Debug, Clone, Copy)]
struct FoundMember {
    bit_offset: u64,
    type_id: u32,
    /// `BTF_MEMBER_BITFIELD_SIZE` of a `kind_flag` composite; 0 when not a bitfield or
    /// when the composite encodes bitfields in the INT type instead.
    bitfield_size: u32,
}

impl Btf {
    /// Reads the running kernel's BTF from [`VMLINUX_BTF_PATH`].
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Btf::from_file(Path::new(VMLINUX_BTF_PATH))
    }

    /// The kernel BTF netwatch runs with: the file `NETWATCH_BTF` names if set (for tests that
    /// stand in a kernel whose BTF lacks what netwatch reads), else the running kernel's.
    pub fn for_netwatch() -> Result<Btf, BtfError> {
        match std::env::var_os("NETWATCH_BTF") {
            Some(path) => Btf::from_file(Path::new(&path)),
            None => Btf::from_sys_fs(),
        }
    }

    /// Reads raw BTF from a file (not an ELF object: the bare header + types + strings).
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // One extra copy (~1 ms for vmlinux) keeps a single parsing entry point.
        Btf::from_bytes(&data)
    }

    /// Parses and validates a raw BTF blob: header, string section, and every type
    /// record, so that later lookups work on data known to be well-formed.
    pub fn from_bytes(data: &[u8]) -> Result<Btf, BtfError> {
        let len = data.len();
        let Some(&[m0, m1]) = data.get(0..2) else {
            return Err(BtfError::Truncated {
                what: "BTF magic",
                offset: 0,
                needed: 2,
                len,
            });
        };
        let endian = match [m0, m1] {
            m if u16::from_le_bytes(m) == BTF_MAGIC => Endian::Little,
            m if u16::from_be_bytes(m) == BTF_MAGIC => Endian::Big,
            m => {
                return Err(BtfError::BadMagic {
                    found: u16::from_le_bytes(m),
                });
            }
        };
        if len < HEADER_LEN {
            return Err(BtfError::Truncated {
                what: "BTF header",
                offset: 0,
                needed: HEADER_LEN,
                len,
            });
        }
        let header = |pos: usize| read_u32(data, endian, pos, "BTF header", len);
        let version = data[2];
        if version != BTF_VERSION {
            return Err(BtfError::UnsupportedVersion { version });
        }
        // data[3] holds flags; version 1 defines none and the kernel writes 0. Ignoring
        // them is safe: they cannot change where anything is.
        let hdr_len = header(4)?;
        if (hdr_len as usize) < HEADER_LEN {
            return Err(BtfError::BadHeaderLen { hdr_len });
        }
        if hdr_len as usize > len {
            return Err(BtfError::Truncated {
                what: "BTF header (hdr_len)",
                offset: 0,
                needed: hdr_len as usize,
                len,
            });
        }
        let (type_off, type_len) = (header(8)?, header(12)?);
        let (str_off, str_len) = (header(16)?, header(20)?);
        let (type_start, type_end) = section_range("type", hdr_len, type_off, type_len, len)?;
        let (str_start, str_end) = section_range("string", hdr_len, str_off, str_len, len)?;
        if type_start % 4 != 0 {
            return Err(BtfError::MisalignedTypeSection { offset: type_start });
        }
        if type_start < str_end && str_start < type_end {
            return Err(BtfError::SectionsOverlap {
                type_start,
                type_end,
                str_start,
                str_end,
            });
        }
        if str_start == str_end {
            return Err(BtfError::BadStringSection {
                offset: str_start,
                reason: "it is empty, but must start with the empty string (a NUL byte)",
            });
        }
        if data[str_start] != 0 {
            return Err(BtfError::BadStringSection {
                offset: str_start,
                reason: "its first string is not the empty string",
            });
        }
        if data[str_end - 1] != 0 {
            return Err(BtfError::BadStringSection {
                offset: str_end - 1,
                reason: "its last string is not NUL-terminated",
            });
        }

        let mut btf = Btf {
            data: data.to_vec(),
            endian,
            str_start,
            str_end,
            type_offsets: Vec::new(),
            composites: HashMap::new(),
            trace_typedefs: HashMap::new(),
        };
        btf.scan_types(type_start, type_end)?;
        btf.index_composites()?;
        Ok(btf)
    }

    /// Walks the type section once: records where each type starts, checks that each
    /// record (with its kind-specific trailing data) fits, and that every name offset and
    /// type reference points somewhere real.
    fn scan_types(&mut self, start: usize, end: usize) -> Result<(), BtfError> {
        let str_len = self.str_end - self.str_start;
        let mut pos = start;
        // References can point forward, so remember the largest and check at the end.
        let mut max_ref: Option<(u32, u32, usize)> = None; // (referenced, from id, offset)
        while pos < end {
            let id = u32::try_from(self.type_offsets.len() + 1)
                .ok()
                .filter(|&id| id <= MAX_TYPE_ID)
                .ok_or(BtfError::TooManyTypes { max: MAX_TYPE_ID })?;
            if end - pos < TYPE_HEADER_LEN {
                return Err(BtfError::TypeTruncated {
                    type_id: id,
                    what: "type header",
                    offset: pos,
                    needed: TYPE_HEADER_LEN,
                    section_end: end,
                });
            }
            let t = self.decode_type(id, pos)?;
            let vlen = t.vlen as usize;
            // Trailing data per Documentation/bpf/btf.rst, section 2.2.
            let extra = match t.kind {
                Kind::Int | Kind::Var | Kind::DeclTag => 4,
                Kind::Array => 12,
                Kind::Struct | Kind::Union | Kind::Datasec | Kind::Enum64 => 12 * vlen,
                Kind::Enum | Kind::FuncProto => 8 * vlen,
                // FUNC's vlen is its linkage, not a count.
                Kind::Ptr
                | Kind::Fwd
                | Kind::Typedef
                | Kind::Volatile
                | Kind::Const
                | Kind::Restrict
                | Kind::Func
                | Kind::Float
                | Kind::TypeTag
                | Kind::Void => 0,
            };
            let needed = TYPE_HEADER_LEN + extra;
            if end - pos < needed {
                return Err(BtfError::TypeTruncated {
                    type_id: id,
                    what: t.kind.name(),
                    offset: pos,
                    needed,
                    section_end: end,
                });
            }
            let check_name = |name_off: u32| {
                if (name_off as usize) < str_len {
                    Ok(())
                } else {
                    Err(BtfError::NameOutOfRange {
                        type_id: id,
                        offset: pos,
                        name_off,
                        str_len,
                    })
                }
            };
            let mut note_ref = |referenced: u32| {
                if max_ref.is_none_or(|(max, _, _)| referenced > max) {
                    max_ref = Some((referenced, id, pos));
                }
            };
            check_name(t.name_off)?;
            let body = pos + TYPE_HEADER_LEN;
            match t.kind {
                Kind::Int => self.check_int(&t)?,
                Kind::Ptr
                | Kind::Typedef
                | Kind::Volatile
                | Kind::Const
                | Kind::Restrict
                | Kind::Func
                | Kind::Var
                | Kind::DeclTag
                | Kind::TypeTag
                | Kind::FuncProto => note_ref(t.size_or_type),
                _ => {}
            }
            match t.kind {
                Kind::Array => {
                    note_ref(self.u32_at(body)?);
                    note_ref(self.u32_at(body + 4)?);
                }
                Kind::Struct | Kind::Union => {
                    for i in 0..vlen {
                        let m = body + 12 * i;
                        check_name(self.u32_at(m)?)?;
                        note_ref(self.u32_at(m + 4)?);
                    }
                }
                Kind::Enum | Kind::Enum64 => {
                    let stride = if t.kind == Kind::Enum { 8 } else { 12 };
                    for i in 0..vlen {
                        check_name(self.u32_at(body + stride * i)?)?;
                    }
                }
                Kind::FuncProto => {
                    for i in 0..vlen {
                        check_name(self.u32_at(body + 8 * i)?)?;
                        note_ref(self.u32_at(body + 8 * i + 4)?);
                    }
                }
                Kind::Datasec => {
                    for i in 0..vlen {
                        note_ref(self.u32_at(body + 12 * i)?);
                    }
                }
                _ => {}
            }
            self.type_offsets.push(pos);
            pos += needed;
        }
        let max_id = self.max_id();
        if let Some((referenced, type_id, offset)) = max_ref
            && referenced > max_id
        {
            return Err(BtfError::BadTypeRef {
                type_id,
                offset,
                referenced,
                max_id,
            });
        }
        Ok(())
    }

    /// An INT's encoding word must describe bits that fit in its size (btf.rst 2.2.1);
    /// otherwise "size of this member" would be a lie.
    fn check_int(&self, t: &TypeRef) -> Result<(), BtfError> {
        let word = self.u32_at(t.offset + TYPE_HEADER_LEN)?;
        let (bit_off, bits) = ((word >> 16) & 0xff, word & 0xff);
        let size_bits = u64::from(t.size_or_type) * 8;
        if bits == 0 || bits > 128 || u64::from(bit_off + bits) > size_bits {
            return Err(BtfError::InvalidType {
                type_id: t.id,
                offset: t.offset,
                reason: format!(
                    "INT of {} bytes claims {bits} bits at bit offset {bit_off}",
                    t.size_or_type
                ),
            });
        }
        Ok(())
    }

    /// Builds the name → ids index for named structs and unions, the only kinds member
    /// lookups start from, and the index of the raw tracepoints' `btf_trace_*` typedefs;
    /// indexing all ~100k vmlinux types would cost more than it saves.
    fn index_composites(&mut self) -> Result<(), BtfError> {
        let mut index: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut traces: HashMap<Box<str>, u32> = HashMap::new();
        for id in 1..=self.max_id() {
            let t = self.ty(id)?;
            if t.kind.is_composite() && t.name_off != 0 {
                let name = self.name(t.name_off)?;
                index.entry(name.into()).or_default().push(id);
            } else if t.kind == Kind::Typedef
                && let Some(event) = self.name(t.name_off)?.strip_prefix("btf_trace_")
            {
                traces.insert(event.into(), id);
            }
        }
        self.composites = index;
        self.trace_typedefs = traces;
        Ok(())
    }

    /// The `TP_PROTO` arguments of the raw tracepoint `event`, spelled as C types
    /// (`const struct sock *`, `const int`, `enum sk_rst_reason`), from its
    /// `btf_trace_<event>` typedef: a pointer to a function prototype whose first parameter
    /// (`void *__data`) the kernel adds, and which is left out here.
    pub fn tracepoint_args(&self, event: &str) -> Result<Vec<String>, BtfError> {
        let &id = self
            .trace_typedefs
            .get(event)
            .ok_or_else(|| BtfError::TracepointNotFound {
                event: event.to_string(),
            })?;
        let not_proto = || BtfError::NotATracepointTypedef {
            event: event.to_string(),
            type_id: id,
        };
        let ptr = self.strip_modifiers(id)?;
        if ptr.kind != Kind::Ptr {
            return Err(not_proto());
        }
        let proto = self.strip_modifiers(ptr.size_or_type)?;
        if proto.kind != Kind::FuncProto || proto.vlen == 0 {
            return Err(not_proto());
        }
        let body = proto.offset + TYPE_HEADER_LEN;
        (1..proto.vlen as usize)
            .map(|i| self.spell(self.u32_at(body + 8 * i + 4)?, 0))
            .collect()
    }

    /// A type as C spells it, enough to tell argument lists apart: qualifiers, pointers and
    /// the names of structs, unions, enums, typedefs and integers.
    fn spell(&self, id: u32, depth: usize) -> Result<String, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::TooDeep { type_id: id });
        }
        let t = self.ty(id)?;
        let name = || self.name(t.name_off);
        Ok(match t.kind {
            Kind::Void => "void".to_owned(),
            Kind::Int | Kind::Float | Kind::Typedef => name()?.to_owned(),
            Kind::Struct => format!("struct {}", name()?),
            Kind::Union => format!("union {}", name()?),
            Kind::Fwd if t.kind_flag => format!("union {}", name()?),
            Kind::Fwd => format!("struct {}", name()?),
            Kind::Enum | Kind::Enum64 => format!("enum {}", name()?),
            Kind::Ptr => format!("{} *", self.spell(t.size_or_type, depth + 1)?),
            Kind::Const => format!("const {}", self.spell(t.size_or_type, depth + 1)?),
            Kind::Volatile => format!("volatile {}", self.spell(t.size_or_type, depth + 1)?),
            Kind::Restrict | Kind::TypeTag => self.spell(t.size_or_type, depth + 1)?,
            Kind::Array => {
                let elem = self.u32_at(t.offset + TYPE_HEADER_LEN)?;
                format!("{}[]", self.spell(elem, depth + 1)?)
            }
            kind => kind.name().to_ascii_lowercase(),
        })
    }

    /// Byte offset and size of `member` inside struct (or union) `strukt`.
    ///
    /// `member` may be a dotted path of named members (`inet_conn.icsk_inet.sk`); offsets
    /// add up along it. Each step also finds members that sit inside anonymous structs or
    /// unions (C lets code name those directly, and `tcp_sock`/`sock_common` use them).
    /// Typedefs and qualifiers are looked through both when descending and for the size.
    ///
    /// Fails when the struct or a member does not exist, when the final member is a
    /// bitfield (no byte offset to read), or when several different structs share the
    /// name and disagree about the answer.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<MemberInfo, BtfError> {
        let path: Vec<&str> = member.split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(BtfError::InvalidPath {
                path: member.to_string(),
            });
        }
        let ids = self
            .composites
            .get(strukt)
            .ok_or_else(|| BtfError::StructNotFound {
                name: strukt.to_string(),
            })?;
        let mut results = ids.iter().map(|&id| self.resolve_path(id, strukt, &path));
        let first = results.next().ok_or_else(|| BtfError::StructNotFound {
            name: strukt.to_string(),
        })?;
        // vmlinux normally has one definition per name; when it has several, answer only
        // if they all give the same answer (otherwise we cannot know which one a given
        // socket really is).
        let mut agreed = true;
        for other in results {
            agreed &= match (&first, &other) {
                (Ok(a), Ok(b)) => a == b,
                (Err(_), Err(_)) => true,
                _ => false,
            };
        }
        if !agreed {
            return Err(BtfError::Ambiguous {
                name: strukt.to_string(),
                member: member.to_string(),
                ids: ids.clone(),
            });
        }
        first
    }

    /// Follows `path` from composite `root`, summing bit offsets.
    fn resolve_path(
        &self,
        root: u32,
        root_name: &str,
        path: &[&str],
    ) -> Result<MemberInfo, BtfError> {
        let mut current = root;
        let mut bits: u64 = 0;
        let mut walked = root_name.to_string();
        for name in path {
            let t = self.strip_modifiers(current)?;
            if !t.kind.is_composite() {
                return Err(BtfError::NotComposite {
                    path: walked,
                    type_id: t.id,
                    kind: t.kind,
                });
            }
            let found = self
                .find_member(&t, name, 0)?
                .ok_or_else(|| BtfError::MemberNotFound {
                    strukt: walked.clone(),
                    member: name.to_string(),
                    type_id: t.id,
                })?;
            let bitfield_bits = self.bitfield_bits(&found)?;
            if bitfield_bits != 0 || found.bit_offset % 8 != 0 {
                let whole = self.type_size(found.type_id, 0).unwrap_or(0);
                return Err(BtfError::Bitfield {
                    strukt: walked,
                    member: name.to_string(),
                    bit_offset: bits + found.bit_offset,
                    bits: if bitfield_bits != 0 {
                        bitfield_bits
                    } else {
                        whole.saturating_mul(8)
                    },
                });
            }
            bits += found.bit_offset;
            current = found.type_id;
            walked.push('.');
            walked.push_str(name);
        }
        let offset = u32::try_from(bits / 8).map_err(|_| BtfError::Overflow { type_id: root })?;
        let size = self.type_size(current, 0)?;
        Ok(MemberInfo { offset, size })
    }

    /// Finds `name` among `composite`'s members, descending into anonymous struct/union
    /// members. Returns the bit offset relative to `composite`.
    fn find_member(
        &self,
        composite: &TypeRef,
        name: &str,
        depth: usize,
    ) -> Result<Option<FoundMember>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::TooDeep {
                type_id: composite.id,
            });
        }
        let body = composite.offset + TYPE_HEADER_LEN;
        for i in 0..composite.vlen as usize {
            let m = body + 12 * i;
            let (name_off, type_id, raw) =
                (self.u32_at(m)?, self.u32_at(m + 4)?, self.u32_at(m + 8)?);
            // btf.rst 2.2.4: with kind_flag set, the top 8 bits hold the bitfield size.
            let (bit_offset, bitfield_size) = if composite.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            if name_off == 0 {
                let inner = self.strip_modifiers(type_id)?;
                if inner.kind.is_composite()
                    && let Some(found) = self.find_member(&inner, name, depth + 1)?
                {
                    return Ok(Some(FoundMember {
                        bit_offset: u64::from(bit_offset) + found.bit_offset,
                        ..found
                    }));
                }
            } else if self.name(name_off)? == name {
                return Ok(Some(FoundMember {
                    bit_offset: u64::from(bit_offset),
                    type_id,
                    bitfield_size,
                }));
            }
        }
        Ok(None)
    }

    /// Width in bits when the member is a bitfield, else 0. Covers both encodings: the
    /// `kind_flag` one (size in the member) and the older one, where the member's INT
    /// type itself says it holds fewer bits than its size, or starts at a bit offset.
    fn bitfield_bits(&self, m: &FoundMember) -> Result<u32, BtfError> {
        if m.bitfield_size != 0 {
            return Ok(m.bitfield_size);
        }
        let t = self.strip_modifiers(m.type_id)?;
        if t.kind == Kind::Int {
            let word = self.u32_at(t.offset + TYPE_HEADER_LEN)?;
            let (bit_off, bits) = ((word >> 16) & 0xff, word & 0xff);
            if bit_off != 0 || u64::from(bits) != u64::from(t.size_or_type) * 8 {
                return Ok(bits);
            }
        }
        Ok(0)
    }

    /// Size in bytes of a type, looking through typedefs and qualifiers.
    fn type_size(&self, id: u32, depth: usize) -> Result<u32, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::TooDeep { type_id: id });
        }
        let t = self.strip_modifiers(id)?;
        match t.kind {
            Kind::Int | Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 | Kind::Float => {
                Ok(t.size_or_type)
            }
            Kind::Ptr => Ok(POINTER_SIZE),
            Kind::Array => {
                let body = t.offset + TYPE_HEADER_LEN;
                let (elem, nelems) = (self.u32_at(body)?, self.u32_at(body + 8)?);
                self.type_size(elem, depth + 1)?
                    .checked_mul(nelems)
                    .ok_or(BtfError::Overflow { type_id: t.id })
            }
            kind => Err(BtfError::Unsized {
                type_id: t.id,
                kind,
            }),
        }
    }

    /// Follows TYPEDEF/VOLATILE/CONST/RESTRICT/TYPE_TAG links to the underlying type.
    fn strip_modifiers(&self, id: u32) -> Result<TypeRef, BtfError> {
        let mut t = self.ty(id)?;
        for _ in 0..MAX_DEPTH {
            if !t.kind.is_modifier() {
                return Ok(t);
            }
            t = self.ty(t.size_or_type)?;
        }
        Err(BtfError::TooDeep { type_id: id })
    }

    /// Largest valid type id.
    fn max_id(&self) -> u32 {
        // scan_types stops at MAX_TYPE_ID, so the count always fits.
        u32::try_from(self.type_offsets.len()).unwrap_or(MAX_TYPE_ID)
    }

    /// Decodes type `id` (0 is `void`).
    fn ty(&self, id: u32) -> Result<TypeRef, BtfError> {
        if id == 0 {
            return Ok(TypeRef {
                id,
                offset: 0,
                name_off: 0,
                kind: Kind::Void,
                kind_flag: false,
                vlen: 0,
                size_or_type: 0,
            });
        }
        let offset = self
            .type_offsets
            .get(id as usize - 1)
            .copied()
            .ok_or_else(|| BtfError::BadTypeRef {
                type_id: id,
                offset: 0,
                referenced: id,
                max_id: self.max_id(),
            })?;
        self.decode_type(id, offset)
    }

    fn decode_type(&self, id: u32, offset: usize) -> Result<TypeRef, BtfError> {
        let info = self.u32_at(offset + 4)?;
        // Current kernels use bits 24-28 for the kind and 0-15 for vlen and keep the bits
        // in between zero; the newest btf.rst widens both fields (kind 24-30, vlen 0-23).
        // Reading the wide fields decodes both layouts identically.
        let raw_kind = (info >> 24) & 0x7f;
        // (let-else rather than `ok_or`: this runs for every type, and building an
        // error value that is then dropped showed up in profiles.)
        let Some(kind) = Kind::from_raw(raw_kind) else {
            return Err(BtfError::UnknownKind {
                kind: raw_kind,
                type_id: id,
                offset,
            });
        };
        Ok(TypeRef {
            id,
            offset,
            name_off: self.u32_at(offset)?,
            kind,
            kind_flag: info >> 31 == 1,
            vlen: info & 0x00ff_ffff,
            size_or_type: self.u32_at(offset + 8)?,
        })
    }

    /// The NUL-terminated string at `name_off` in the string section.
    fn name(&self, name_off: u32) -> Result<&str, BtfError> {
        let strings = &self.data[self.str_start..self.str_end];
        let tail = strings
            .get(name_off as usize..)
            .filter(|tail| !tail.is_empty())
            .ok_or(BtfError::StringOutOfRange {
                name_off,
                str_len: strings.len(),
            })?;
        // The section ends in a NUL (checked at parse time), so a terminator exists.
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).map_err(|_| BtfError::NameNotUtf8 { name_off })
    }

    fn u32_at(&self, pos: usize) -> Result<u32, BtfError> {
        read_u32(&self.data, self.endian, pos, "BTF record", self.data.len())
    }
}

/// Reads a u32 in the blob's byte order, or says where the data ran out.
fn read_u32(
    data: &[u8],
    endian: Endian,
    pos: usize,
    what: &'static str,
    len: usize,
) -> Result<u32, BtfError> {
    // let-else keeps the hot path free of a constructed-then-dropped error value.
    let Some(&[b0, b1, b2, b3]) = pos.checked_add(4).and_then(|end| data.get(pos..end)) else {
        return Err(BtfError::Truncated {
            what,
            offset: pos,
            needed: 4,
            len,
        });
    };
    let bytes = [b0, b1, b2, b3];
    Ok(match endian {
        Endian::Little => u32::from_le_bytes(bytes),
        Endian::Big => u32::from_be_bytes(bytes),
    })
}

/// Absolute byte range of a section (offsets in the header are relative to its end).
fn section_range(
    section: &'static str,
    hdr_len: u32,
    off: u32,
    len: u32,
    data_len: usize,
) -> Result<(usize, usize), BtfError> {
    let start = u64::from(hdr_len) + u64::from(off);
    let end = start + u64::from(len);
    match (usize::try_from(start), usize::try_from(end)) {
        (Ok(s), Ok(e)) if e <= data_len => Ok((s, e)),
        _ => Err(BtfError::SectionOutOfBounds {
            section,
            start,
            end,
            len: data_len,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    // Raw BTF_KIND_* numbers, written out here rather than taken from `Kind` so the tests
    // encode the documented format independently of the parser.
    const INT: u32 = 1;
    const PTR: u32 = 2;
    const ARRAY: u32 = 3;
    const STRUCT: u32 = 4;
    const UNION: u32 = 5;
    const ENUM: u32 = 6;
    const FWD: u32 = 7;
    const TYPEDEF: u32 = 8;
    const VOLATILE: u32 = 9;
    const CONST: u32 = 10;
    const RESTRICT: u32 = 11;
    const FUNC: u32 = 12;
    const FUNC_PROTO: u32 = 13;
    const VAR: u32 = 14;
    const DATASEC: u32 = 15;
    const FLOAT: u32 = 16;
    const DECL_TAG: u32 = 17;
    const TYPE_TAG: u32 = 18;
    const ENUM64: u32 = 19;

    /// Writes raw BTF exactly as Documentation/bpf/btf.rst lays it out.
    struct Builder {
        strings: Vec<u8>,
        types: Vec<u32>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                strings: vec![0],
                types: Vec::new(),
                next_id: 1,
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        /// Appends one type: `btf_type` then `extra` (already-encoded trailing words).
        fn raw(
            &mut self,
            name: &str,
            kind: u32,
            kflag: bool,
            vlen: u32,
            st: u32,
            extra: &[u32],
        ) -> u32 {
            let name_off = self.str(name);
            let info = (u32::from(kflag) << 31) | (kind << 24) | vlen;
            self.types.extend([name_off, info, st]);
            self.types.extend_from_slice(extra);
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.raw(name, INT, false, 0, size, &[size * 8])
        }

        fn refers(&mut self, kind: u32, name: &str, to: u32) -> u32 {
            self.raw(name, kind, false, 0, to, &[])
        }

        /// `members`: (name, type id, offset word as stored).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kflag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut extra = Vec::new();
            for &(n, ty, off) in members {
                extra.extend([self.str(n), ty, off]);
            }
            self.raw(name, kind, kflag, members.len() as u32, size, &extra)
        }

        fn header(&self, hdr_len: u32, big_endian: bool) -> Vec<u8> {
            let type_len = (self.types.len() * 4) as u32;
            let words = [hdr_len, 0, type_len, type_len, self.strings.len() as u32];
            let mut out = Vec::new();
            let put = |out: &mut Vec<u8>, w: u32| {
                out.extend(if big_endian {
                    w.to_be_bytes()
                } else {
                    w.to_le_bytes()
                })
            };
            out.extend(if big_endian {
                0xeb9fu16.to_be_bytes()
            } else {
                0xeb9fu16.to_le_bytes()
            });
            out.extend([1, 0]);
            for w in words {
                put(&mut out, w);
            }
            out.resize(hdr_len as usize, 0);
            for &w in &self.types {
                put(&mut out, w);
            }
            out.extend(&self.strings);
            out
        }

        fn bytes(&self) -> Vec<u8> {
            self.header(24, false)
        }
    }

    /// A bitfield member's offset word in a `kind_flag` composite.
    fn bitfield(size: u32, bit_offset: u32) -> u32 {
        (size << 24) | bit_offset
    }

    /// One of every kind, placed before the structs so any mis-skipped trailing data
    /// shifts every later type, plus structs exercising the lookup rules.
    fn sample() -> Builder {
        let mut b = Builder::new();
        let u8_ = b.int("unsigned char", 1); // 1
        let u16_ = b.int("u16", 2); // 2
        let u32_ = b.int("u32", 4); // 3
        let u64_ = b.int("u64", 8); // 4
        let (established, close) = (b.str("ESTABLISHED"), b.str("CLOSE"));
        let state = b.raw("state", ENUM, false, 2, 4, &[established, 1, close, 7]); // 5
        let big = b.str("BIG");
        b.raw("wide", ENUM64, false, 1, 8, &[big, 0, 1]); // 6
        let sk = b.str("sk");
        b.raw("", FUNC_PROTO, false, 2, u32_, &[sk, 13, 0, 0]); // 7 (13 is a forward ref)
        b.raw("f", FUNC, false, 1, 7, &[]); // 8
        b.raw("v", VAR, false, 0, u32_, &[1]); // 9
        b.raw(".bss", DATASEC, false, 1, 4, &[9, 0, 4]); // 10
        b.raw("double", FLOAT, false, 0, 8, &[]); // 11
        let fwd = b.raw("later", FWD, false, 0, 0, &[]); // 12
        let ptr = b.refers(PTR, "", fwd); // 13
        b.refers(RESTRICT, "", ptr); // 14
        let tagged = b.refers(TYPE_TAG, "user", u32_); // 15
        b.raw("tag", DECL_TAG, false, 0, 28, &[u32::MAX]); // 16 (28 is `demo`)
        let t1 = b.refers(TYPEDEF, "__u64", u64_); // 17
        let t2 = b.refers(TYPEDEF, "u64_t", t1); // 18
        let v = b.refers(VOLATILE, "", t2); // 19
        let chain = b.refers(CONST, "", v); // 20: const volatile u64_t -> __u64 -> u64
        let vol_u8 = b.refers(VOLATILE, "", u8_); // 21
        let inner = b.composite(
            STRUCT,
            "inner",
            4,
            false,
            &[("family", u16_, 0), ("state", vol_u8, 16)],
        ); // 22
        let halves = b.composite(STRUCT, "", 4, false, &[("lo", u16_, 0), ("hi", u16_, 16)]); // 23
        let word = b.composite(UNION, "", 4, false, &[("word", u32_, 0), ("", halves, 0)]); // 24
        let const_word = b.refers(CONST, "", word); // 25
        let three_bits = b.raw("unsigned int", INT, false, 0, 4, &[3]); // 26
        let arr = b.raw("", ARRAY, false, 0, 0, &[u32_, u32_, 4]); // 27
        let demo = b.composite(
            STRUCT,
            "demo",
            56,
            true,
            &[
                ("inner", inner, 0),
                ("", const_word, 32),
                ("flags", u8_, bitfield(3, 64)),
                ("big", chain, 128),
                ("next", ptr, 192),
                ("arr", arr, 256),
                ("tagged", tagged, 384),
                ("e", state, 416),
            ],
        ); // 28
        assert_eq!(demo, 28);
        b.composite(
            STRUCT,
            "legacy",
            8,
            false,
            &[("x", u32_, 0), ("bf", three_bits, 32)],
        ); // 29
        b.composite(STRUCT, "dup", 4, false, &[("a", u32_, 0)]); // 30
        b.composite(STRUCT, "dup", 8, false, &[("b", u32_, 0), ("a", u32_, 32)]); // 31
        b.composite(STRUCT, "same", 4, false, &[("a", u32_, 0)]); // 32
        b.composite(STRUCT, "same", 4, false, &[("a", u32_, 0)]); // 33
        b
    }

    fn info(offset: u32, size: u32) -> MemberInfo {
        MemberInfo { offset, size }
    }

    #[test]
    fn parses_every_kind_and_skips_trailing_data() {
        let btf = Btf::from_bytes(&sample().bytes()).expect("sample parses");
        assert_eq!(btf.type_offsets.len(), 33);
        // If any kind's trailing data were mis-sized, later ids would decode as garbage.
        assert_eq!(btf.ty(28).expect("demo").kind, Kind::Struct);
        assert_eq!(
            btf.name(btf.ty(28).expect("demo").name_off).expect("name"),
            "demo"
        );
        assert_eq!(btf.ty(16).expect("decl tag").kind, Kind::DeclTag);
        assert_eq!(btf.ty(6).expect("enum64").kind, Kind::Enum64);
    }

    #[test]
    fn finds_members_through_anonymous_unions_qualifiers_and_typedef_chains() {
        let btf = Btf::from_bytes(&sample().bytes()).expect("sample parses");
        let m = |name: &str| btf.member_offset("demo", name).expect(name);
        assert_eq!(m("inner"), info(0, 4));
        assert_eq!(m("word"), info(4, 4)); // anonymous union behind a CONST
        assert_eq!(m("lo"), info(4, 2)); // anonymous struct inside that union
        assert_eq!(m("hi"), info(6, 2));
        assert_eq!(m("big"), info(16, 8)); // const volatile typedef typedef u64
        assert_eq!(m("next"), info(24, 8)); // pointer to a FWD
        assert_eq!(m("arr"), info(32, 16)); // u32[4]
        assert_eq!(m("tagged"), info(48, 4)); // TYPE_TAG looked through
        assert_eq!(m("e"), info(52, 4)); // enum
        assert_eq!(m("inner.state"), info(2, 1)); // dotted path, volatile u8
        assert_eq!(
            btf.member_offset("inner", "state").expect("inner.state"),
            info(2, 1)
        );
    }

    #[test]
    fn lookup_errors_are_specific() {
        let btf = Btf::from_bytes(&sample().bytes()).expect("sample parses");
        let err = |s: &str, m: &str| btf.member_offset(s, m).expect_err(m);

        let e = err("demo", "flags");
        assert!(
            matches!(
                e,
                BtfError::Bitfield {
                    bits: 3,
                    bit_offset: 64,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("`demo.flags` is a bitfield"), "{e}");
        let e = err("legacy", "bf"); // bitfield encoded in the INT type (no kind_flag)
        assert!(
            matches!(
                e,
                BtfError::Bitfield {
                    bits: 3,
                    bit_offset: 32,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(btf.member_offset("legacy", "x").expect("x"), info(0, 4));

        let e = err("demo", "missing");
        assert!(
            matches!(e, BtfError::MemberNotFound { type_id: 28, .. }),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("`demo` (type id 28) has no member `missing`"),
            "{e}"
        );
        // Named members are not searched implicitly: only anonymous ones are.
        assert!(matches!(
            err("demo", "family"),
            BtfError::MemberNotFound { .. }
        ));
        let e = err("demo", "inner.nope");
        assert!(
            e.to_string()
                .contains("`demo.inner` (type id 22) has no member `nope`"),
            "{e}"
        );

        let e = err("nosuch", "x");
        assert!(matches!(e, BtfError::StructNotFound { .. }), "{e}");
        let e = err("demo", "big.x");
        assert!(
            matches!(
                e,
                BtfError::NotComposite {
                    type_id: 4,
                    kind: Kind::Int,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("`demo.big`"), "{e}");
        for bad in ["", ".a", "a.", "inner..state"] {
            assert!(
                matches!(err("demo", bad), BtfError::InvalidPath { .. }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn raw_tracepoint_arguments_come_from_btf_trace_typedefs() {
        let mut b = Builder::new();
        let u32_ = b.int("u32", 4); // 1
        let sock = b.composite(STRUCT, "sock", 4, false, &[("x", u32_, 0)]); // 2
        let const_sock = b.refers(CONST, "", sock); // 3
        let sk_ptr = b.refers(PTR, "", const_sock); // 4
        let void_ptr = b.refers(PTR, "", 0); // 5
        let const_u32 = b.refers(CONST, "", u32_); // 6
        let (data, sk, state) = (b.str("__data"), b.str("sk"), b.str("state"));
        let proto = b.raw(
            "",
            FUNC_PROTO,
            false,
            3,
            0,
            &[data, void_ptr, sk, sk_ptr, state, const_u32],
        ); // 7
        let to_proto = b.refers(PTR, "", proto); // 8
        b.refers(TYPEDEF, "btf_trace_demo", to_proto); // 9
        b.refers(TYPEDEF, "btf_trace_bad", u32_); // 10
        let btf = Btf::from_bytes(&b.bytes()).expect("parses");
        assert_eq!(
            btf.tracepoint_args("demo").expect("demo"),
            ["const struct sock *", "const u32"]
        );
        assert!(matches!(
            btf.tracepoint_args("missing"),
            Err(BtfError::TracepointNotFound { .. })
        ));
        assert!(matches!(
            btf.tracepoint_args("bad"),
            Err(BtfError::NotATracepointTypedef { type_id: 10, .. })
        ));
    }

    #[test]
    fn duplicate_struct_names_must_agree() {
        let btf = Btf::from_bytes(&sample().bytes()).expect("sample parses");
        assert_eq!(
            btf.member_offset("same", "a").expect("agreeing duplicates"),
            info(0, 4)
        );
        let e = btf.member_offset("dup", "a").expect_err("offsets differ");
        assert!(
            matches!(&e, BtfError::Ambiguous { ids, .. } if ids == &[30, 31]),
            "{e}"
        );
        // Present in one definition, missing in the other: still ambiguous.
        assert!(matches!(
            btf.member_offset("dup", "b"),
            Err(BtfError::Ambiguous { .. })
        ));
    }

    #[test]
    fn big_endian_and_extended_header_read_the_same() {
        let b = sample();
        for bytes in [b.header(24, true), b.header(32, false), b.header(32, true)] {
            let btf = Btf::from_bytes(&bytes).expect("parses");
            assert_eq!(btf.member_offset("demo", "hi").expect("hi"), info(6, 2));
            assert_eq!(btf.member_offset("demo", "big").expect("big"), info(16, 8));
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = sample().bytes();
        for n in 0..full.len() {
            assert!(
                Btf::from_bytes(&full[..n]).is_err(),
                "prefix of {n} bytes parsed"
            );
        }
        let e = Btf::from_bytes(&full[..10]).expect_err("short header");
        assert!(
            matches!(
                e,
                BtfError::Truncated {
                    offset: 0,
                    needed: 24,
                    len: 10,
                    ..
                }
            ),
            "{e}"
        );
        let e = Btf::from_bytes(&full[..100]).expect_err("sections cut");
        assert!(
            matches!(e, BtfError::SectionOutOfBounds { len: 100, .. }),
            "{e}"
        );
    }

    #[test]
    fn record_cut_by_the_type_section_end_names_the_type_and_offset() {
        let mut b = sample();
        // Keep `demo`'s header and 2 of its 8 members; the rest of the types disappear.
        let full = Btf::from_bytes(&b.bytes()).expect("sample parses");
        let demo_at = full.type_offsets[27]; // absolute offset of type 28
        let keep_words = (demo_at - HEADER_LEN) / 4 + 3 + 2 * 3;
        b.types.truncate(keep_words);
        let e = Btf::from_bytes(&b.bytes()).expect_err("cut struct");
        assert!(
            matches!(e, BtfError::TypeTruncated { type_id: 28, what: "STRUCT", needed: 108, offset, .. } if offset == demo_at),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("type id 28 (STRUCT)") && msg.contains(&format!("byte offset {demo_at}")),
            "{msg}"
        );
    }

    #[test]
    fn header_and_section_errors() {
        let good = sample().bytes();

        let mut elf = good.clone();
        elf[..4].copy_from_slice(b"\x7fELF");
        let e = Btf::from_bytes(&elf).expect_err("ELF is not raw BTF");
        assert!(matches!(e, BtfError::BadMagic { found: 0x457f }), "{e}");
        assert!(e.to_string().contains("0x457f"), "{e}");

        let mut v2 = good.clone();
        v2[2] = 2;
        assert!(matches!(
            Btf::from_bytes(&v2),
            Err(BtfError::UnsupportedVersion { version: 2 })
        ));

        let mut short_hdr = good.clone();
        short_hdr[4] = 20;
        assert!(matches!(
            Btf::from_bytes(&short_hdr),
            Err(BtfError::BadHeaderLen { hdr_len: 20 })
        ));

        let mut misaligned = good.clone();
        misaligned[8] = 2; // type_off = 2
        let e = Btf::from_bytes(&misaligned).expect_err("misaligned");
        assert!(
            matches!(e, BtfError::MisalignedTypeSection { offset: 26 }),
            "{e}"
        );

        let mut overlap = good.clone();
        overlap[16..20].copy_from_slice(&4u32.to_le_bytes()); // str_off inside types
        assert!(matches!(
            Btf::from_bytes(&overlap),
            Err(BtfError::SectionsOverlap { .. })
        ));

        let mut unterminated = good.clone();
        let last = unterminated.len() - 1;
        unterminated[last] = b'x';
        let e = Btf::from_bytes(&unterminated).expect_err("unterminated");
        assert!(
            matches!(e, BtfError::BadStringSection { offset, .. } if offset == last),
            "{e}"
        );

        let mut b = Builder::new();
        b.strings[0] = b'x';
        b.strings.push(0);
        assert!(matches!(
            Btf::from_bytes(&b.bytes()),
            Err(BtfError::BadStringSection { offset: 24, .. })
        ));
    }

    #[test]
    fn type_errors_name_the_type_id() {
        let mut b = Builder::new();
        b.int("int", 4);
        b.raw("future", 20, false, 0, 0, &[]);
        let e = Btf::from_bytes(&b.bytes()).expect_err("unknown kind");
        assert!(
            matches!(
                e,
                BtfError::UnknownKind {
                    kind: 20,
                    type_id: 2,
                    offset: 40
                }
            ),
            "{e}"
        );

        let mut b = Builder::new();
        b.int("int", 4);
        b.refers(PTR, "", 99);
        let e = Btf::from_bytes(&b.bytes()).expect_err("dangling");
        assert!(
            matches!(
                e,
                BtfError::BadTypeRef {
                    type_id: 2,
                    referenced: 99,
                    max_id: 2,
                    ..
                }
            ),
            "{e}"
        );

        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.composite(STRUCT, "s", 4, false, &[("a", int, 0)]);
        let a_name = b.types.len() - 3;
        b.types[a_name] = 1000;
        let e = Btf::from_bytes(&b.bytes()).expect_err("name offset");
        assert!(
            matches!(
                e,
                BtfError::NameOutOfRange {
                    type_id: 2,
                    name_off: 1000,
                    ..
                }
            ),
            "{e}"
        );

        let mut b = Builder::new();
        b.raw("int", INT, false, 0, 4, &[40]); // 40 bits in 4 bytes
        let e = Btf::from_bytes(&b.bytes()).expect_err("int bits");
        assert!(matches!(e, BtfError::InvalidType { type_id: 1, .. }), "{e}");
    }

    #[test]
    fn reference_loops_are_errors_not_hangs() {
        let mut b = Builder::new();
        b.refers(TYPEDEF, "a", 2); // 1 -> 2
        b.refers(TYPEDEF, "b", 1); // 2 -> 1
        b.composite(STRUCT, "s", 4, false, &[("x", 1, 0)]); // 3
        b.composite(STRUCT, "", 4, false, &[("", 4, 0)]); // 4: anonymous, contains itself
        b.composite(STRUCT, "t", 4, false, &[("", 4, 0)]); // 5
        let btf = Btf::from_bytes(&b.bytes()).expect("loops are well-formed BTF");
        assert!(matches!(
            btf.member_offset("s", "x"),
            Err(BtfError::TooDeep { .. })
        ));
        assert!(matches!(
            btf.member_offset("t", "y"),
            Err(BtfError::TooDeep { .. })
        ));
    }

    /// BTF written by another producer (GCC's `-gbtf`, see tests/fixtures/btf/README.md),
    /// checked against offsets the C compiler itself reported with `offsetof`.
    #[test]
    fn gcc_generated_fixture_matches_offsetof() {
        let btf = Btf::from_bytes(include_bytes!("../../tests/fixtures/btf/mini_tcp.btf"))
            .expect("fixture parses");
        let cases = [
            ("mini_sock_common", "skc_daddr", 0, 4),
            ("mini_sock_common", "skc_rcv_saddr", 4, 4),
            ("mini_sock_common", "skc_u16hashes", 8, 4),
            ("mini_sock_common", "skc_dport", 12, 2),
            ("mini_sock_common", "skc_num", 14, 2),
            ("mini_sock_common", "skc_family", 16, 2),
            ("mini_sock_common", "skc_state", 18, 1),
            ("mini_sock_common", "skc_next", 24, 8),
            ("mini_sock_common", "skc_enum_state", 32, 4),
            ("mini_tcp_sock", "__cacheline_group_begin__mini_tx", 56, 0),
            ("mini_tcp_sock", "segs_out", 56, 4),
            ("mini_tcp_sock", "bytes_sent", 64, 8),
            ("mini_tcp_sock", "rcv_rtt_est", 72, 16),
            ("mini_tcp_sock", "rcv_rtt_est.time", 80, 8),
            ("mini_tcp_sock", "bytes_received", 88, 8),
            ("mini_tcp_sock", "segs_in", 96, 4),
            ("mini_tcp_sock", "alias_view", 88, 8),
            ("mini_tcp_sock", "srtt_us", 104, 4),
            ("mini_tcp_sock", "bytes_acked", 112, 8),
            ("mini_tcp_sock", "chrono_stat", 120, 12),
            ("mini_tcp_sock", "wide", 136, 8),
            ("mini_tcp_sock", "total_retrans", 148, 4),
            ("mini_tcp_sock", "sk.__sk_common.skc_state", 18, 1),
            ("mini_tcp_sock", "sk.sk_state_change", 48, 8),
        ];
        for (strukt, member, offset, size) in cases {
            let got = btf
                .member_offset(strukt, member)
                .unwrap_or_else(|e| panic!("{strukt}.{member}: {e}"));
            assert_eq!(got, info(offset, size), "{strukt}.{member}");
        }
        for (strukt, member) in [
            ("mini_sock_common", "skc_reuse"),
            ("mini_tcp_sock", "rate_app_limited"),
        ] {
            let e = btf.member_offset(strukt, member).expect_err(member);
            assert!(matches!(e, BtfError::Bitfield { .. }), "{e}");
        }
    }

    fn vmlinux() -> Option<Btf> {
        if !Path::new(VMLINUX_BTF_PATH).exists() {
            crate::host::skip::skip(&format!(
                "{VMLINUX_BTF_PATH} does not exist (kernel built without CONFIG_DEBUG_INFO_BTF?)"
            ));
            return None;
        }
        Some(Btf::from_sys_fs().expect("the running kernel's BTF parses"))
    }

    /// The prototypes of the raw tracepoints netwatch attaches to, as `include/trace/events/
    /// {sock,tcp}.h` declare them (the optional last arguments depend on the kernel).
    #[test]
    fn vmlinux_raw_tracepoint_arguments() {
        let Some(btf) = vmlinux() else { return };
        let args = |e: &str| {
            btf.tracepoint_args(e)
                .unwrap_or_else(|err| panic!("{e}: {err}"))
        };
        assert_eq!(
            args("inet_sock_set_state"),
            ["const struct sock *", "const int", "const int"]
        );
        assert_eq!(args("tcp_destroy_sock"), ["struct sock *"]);
        assert_eq!(
            args("tcp_retransmit_synack"),
            ["const struct sock *", "const struct request_sock *"]
        );
        let reset = args("tcp_send_reset");
        assert_eq!(
            reset[..2],
            ["const struct sock *", "const struct sk_buff *"],
            "{reset:?}"
        );
    }

    /// Fields netwatch reads, with the C types include/linux/tcp.h gives them
    /// (u64 bytes_received/bytes_acked/bytes_sent, u32 srtt_us/segs_in/segs_out/
    /// total_retrans) and include/net/sock.h's `volatile unsigned char skc_state`.
    #[test]
    fn vmlinux_tcp_sock_fields() {
        let Some(btf) = vmlinux() else { return };
        let tcp = |m: &str| {
            btf.member_offset("tcp_sock", m)
                .unwrap_or_else(|e| panic!("tcp_sock.{m}: {e}"))
        };

        let inet_conn = tcp("inet_conn");
        assert_eq!(
            inet_conn.offset, 0,
            "tcp.h: inet_conn has to be the first member"
        );
        for (field, size) in [
            ("bytes_received", 8),
            ("bytes_acked", 8),
            ("srtt_us", 4),
            ("bytes_sent", 8),
        ] {
            let m = tcp(field);
            assert_eq!(m.size, size, "tcp_sock.{field}");
            assert!(
                m.offset >= inet_conn.size,
                "tcp_sock.{field} must follow inet_conn: {m:?}"
            );
            assert_eq!(m.offset % size, 0, "tcp_sock.{field} is naturally aligned");
        }
        for field in ["total_retrans", "segs_in", "segs_out"] {
            match btf.member_offset("tcp_sock", field) {
                Ok(m) => assert_eq!(m.size, 4, "tcp_sock.{field}"),
                Err(BtfError::MemberNotFound { .. }) => {
                    eprintln!("tcp_sock.{field}: absent on this kernel")
                }
                Err(e) => panic!("tcp_sock.{field}: {e}"),
            }
        }
        // sock.h: the socket structs nest as first members, so one path equals the others.
        let state = btf
            .member_offset("sock_common", "skc_state")
            .expect("skc_state");
        assert_eq!(state.size, 1);
        assert_eq!(
            btf.member_offset("sock", "__sk_common.skc_state")
                .expect("sock"),
            state
        );
        assert_eq!(tcp("inet_conn.icsk_inet.sk.__sk_common.skc_state"), state);
        // skc_dport sits in an anonymous struct in an anonymous union, after the 8-byte
        // address pair and the 4-byte hash.
        assert_eq!(
            btf.member_offset("sock_common", "skc_dport")
                .expect("skc_dport"),
            info(12, 2)
        );
        // sock.h: `unsigned char skc_reuse:4;`
        let e = btf
            .member_offset("sock_common", "skc_reuse")
            .expect_err("bitfield");
        assert!(matches!(e, BtfError::Bitfield { bits: 4, .. }), "{e}");
    }

    /// A member line of `bpftool btf dump ... format raw`:
    /// `\t'name' type_id=N bits_offset=M[ bitfield_size=K]`.
    struct RawMember {
        name: String,
        type_id: u32,
        bits_offset: u64,
        bitfield: bool,
    }

    /// The parts of bpftool's raw dump needed to locate a member independently.
    #[derive(Default)]
    struct RawDump {
        /// id -> (kind, name, target type id for modifiers, members for composites)
        types: HashMap<u32, (String, String, u32, Vec<RawMember>)>,
    }

    impl RawDump {
        fn parse(text: &str) -> RawDump {
            let mut dump = RawDump::default();
            let mut current = None;
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix('[') {
                    let (id, rest) = rest.split_once("] ").expect("type line");
                    let id: u32 = id.parse().expect("type id");
                    let mut words = rest.split_whitespace();
                    let kind = words.next().expect("kind").to_string();
                    let name = words.next().expect("name").trim_matches('\'').to_string();
                    let target = rest
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("type_id="))
                        .map_or(0, |t| t.trim_end_matches(',').parse().expect("type_id"));
                    dump.types.insert(id, (kind, name, target, Vec::new()));
                    current = Some(id);
                } else if let (Some(id), Some(rest)) = (current, line.strip_prefix('\t')) {
                    let field =
                        |key: &str| rest.split_whitespace().find_map(|w| w.strip_prefix(key));
                    let (Some(type_id), Some(bits)) = (field("type_id="), field("bits_offset="))
                    else {
                        continue; // enum values, params, datasec entries
                    };
                    let member = RawMember {
                        name: rest
                            .split_whitespace()
                            .next()
                            .expect("name")
                            .trim_matches('\'')
                            .to_string(),
                        type_id: type_id.parse().expect("member type_id"),
                        bits_offset: bits.parse().expect("bits_offset"),
                        bitfield: field("bitfield_size=").is_some(),
                    };
                    if let Some(entry) = dump.types.get_mut(&id) {
                        entry.3.push(member);
                    }
                }
            }
            dump
        }

        fn struct_id(&self, name: &str) -> u32 {
            let ids: Vec<u32> = self
                .types
                .iter()
                .filter(|(_, (kind, n, _, _))| kind == "STRUCT" && n == name)
                .map(|(&id, _)| id)
                .collect();
            assert_eq!(ids.len(), 1, "bpftool shows exactly one struct {name}");
            ids[0]
        }

        /// bits_offset of `member` in composite `id`, descending into `(anon)` members.
        fn bits_offset(&self, id: u32, member: &str) -> Option<(u64, bool)> {
            let mut id = id;
            while let Some((kind, _, target, _)) = self.types.get(&id)
                && matches!(
                    kind.as_str(),
                    "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG"
                )
            {
                id = *target;
            }
            let (_, _, _, members) = self.types.get(&id)?;
            members.iter().find_map(|m| {
                if m.name == member {
                    Some((m.bits_offset, m.bitfield))
                } else if m.name == "(anon)" {
                    self.bits_offset(m.type_id, member)
                        .map(|(b, bf)| (b + m.bits_offset, bf))
                } else {
                    None
                }
            })
        }
    }

    /// Cross-check against bpftool (libbpf's parser), an implementation independent of ours.
    #[test]
    fn vmlinux_offsets_match_bpftool() {
        let Some(btf) = vmlinux() else { return };
        // `bpftool` may be missing, outside a non-root PATH, or (on Ubuntu) a wrapper that
        // fails without linux-tools for this kernel: skip, saying why, in all of those cases.
        let mut problems = Vec::new();
        let mut stdout = None;
        for cmd in ["bpftool", "/usr/sbin/bpftool"] {
            match Command::new(cmd)
                .args(["btf", "dump", "file", VMLINUX_BTF_PATH, "format", "raw"])
                .output()
            {
                Ok(out) if out.status.success() => {
                    stdout = Some(out.stdout);
                    break;
                }
                Ok(out) => problems.push(format!(
                    "{cmd}: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => problems.push(format!("{cmd}: {e}")),
            }
        }
        let Some(stdout) = stdout else {
            crate::host::skip::skip(&format!("no working bpftool ({})", problems.join("; ")));
            return;
        };
        let dump = RawDump::parse(&String::from_utf8(stdout).expect("bpftool output is UTF-8"));

        let tcp_sock = dump.struct_id("tcp_sock");
        let sock_common = dump.struct_id("sock_common");
        let fields = [
            (tcp_sock, "tcp_sock", "bytes_received"),
            (tcp_sock, "tcp_sock", "bytes_acked"),
            (tcp_sock, "tcp_sock", "bytes_sent"),
            (tcp_sock, "tcp_sock", "srtt_us"),
            (tcp_sock, "tcp_sock", "total_retrans"),
            (tcp_sock, "tcp_sock", "segs_in"),
            (tcp_sock, "tcp_sock", "segs_out"),
            (sock_common, "sock_common", "skc_state"),
            (sock_common, "sock_common", "skc_dport"),
        ];
        for (id, strukt, member) in fields {
            let Some((bits, is_bitfield)) = dump.bits_offset(id, member) else {
                assert!(
                    matches!(
                        btf.member_offset(strukt, member),
                        Err(BtfError::MemberNotFound { .. })
                    ),
                    "bpftool lacks {strukt}.{member}, we do not"
                );
                continue;
            };
            assert!(!is_bitfield, "{strukt}.{member} is not a bitfield");
            assert_eq!(bits % 8, 0);
            let ours = btf
                .member_offset(strukt, member)
                .unwrap_or_else(|e| panic!("{strukt}.{member}: {e}"));
            assert_eq!(
                u64::from(ours.offset),
                bits / 8,
                "{strukt}.{member}: ours vs bpftool bits_offset={bits}"
            );
        }
    }
}
