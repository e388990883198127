//! Tracepoint record layouts, read from the running kernel's tracefs.
//!
//! Why this exists: the records that `sock:*` and `tcp:*` tracepoints hand to BPF change
//! shape between kernel versions (5.15 → 6.18 alone added `err` to `tcp_retransmit_skb` and
//! rebuilt `tcp_send_reset` around a `reason` and `sockaddr_in6` buffers). Offsets compiled
//! into the binary would silently read the wrong bytes on another kernel, so netwatch reads
//! every event's `format` file at start-up and works from what the kernel says.
//!
//! tracefs is not mounted on a fresh machine, so [`tracefs_root`] mounts it when needed
//! instead of failing with a confusing "no such event".

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Where tracefs lives on current kernels, and where netwatch mounts it when nobody has.
const DEFAULT_ROOT: &str = "/sys/kernel/tracing";
/// Where debugfs exposes (and auto-mounts) tracefs; the only location on old kernels.
const DEBUGFS_ROOT: &str = "/sys/kernel/debug/tracing";

/// One field line of a format file: `field:__u16 sport; offset:24; size:2; signed:0;`
/// (the kernel separates the parts with tabs).
///
/// Kept as the kernel states it (type text included) so callers can both locate the bytes
/// (`offset`, `size`) and sanity-check that the field still has the type they expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// C type as printed by the kernel, without the name or array suffix
    /// (`const void *`, `enum sk_rst_reason`, `__u8`, `__data_loc char[]`).
    pub ty: String,
    /// Field name (`saddr_v6`); the last identifier of the declaration.
    pub name: String,
    /// Byte offset from the start of the record (common fields included).
    pub offset: u16,
    /// Size in bytes of the whole field (all elements, for arrays).
    pub size: u16,
    /// Whether the kernel marks the type as signed.
    pub signed: bool,
    /// Element count of a fixed-size array (`__u8 saddr[28]` → `Some(28)`); `None` for
    /// scalars and for dynamic (`__data_loc`, `[]`) fields.
    pub array_len: Option<u16>,
}

/// A parsed format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    /// Event name from the `name:` header (`tcp_send_reset`).
    pub name: String,
    /// Event id from the `ID:` header; assigned at boot, differs between kernels/builds.
    pub id: u32,
    /// All fields in file order, the `common_*` ones included: their offsets are part of
    /// the record layout even though BPF programs must not trust their contents.
    pub fields: Vec<Field>,
    /// Everything after `print fmt: ` (format string and argument list), kept verbatim so
    /// the numeric value ↔ name tables can be read from it (see [`EventFormat::symbols`]).
    pub print_fmt: String,
}

impl EventFormat {
    /// The field called `name` (e.g. `"saddr_v6"`), if this kernel's event has it.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Byte length of the record: max(offset + size) over all fields.
    ///
    /// This is how many bytes a reader must be allowed to touch; padding the kernel adds
    /// after the last field is not included.
    #[cfg(test)]
    pub fn record_len(&self) -> usize {
        self.fields
            .iter()
            .map(|f| usize::from(f.offset) + usize::from(f.size))
            .max()
            .unwrap_or(0)
    }

    /// The `{ value, "NAME" }` pairs of `__print_symbolic(REC-><field>, ...)` in print_fmt,
    /// e.g. symbols("reason") on tcp_send_reset gives [(0,"NOT_SPECIFIED"), (1,"NO_SOCKET"), ...].
    ///
    /// Why: enum values such as `sk_rst_reason` are renumbered between kernels, so names
    /// must come from the running kernel rather than from a compiled-in table.
    ///
    /// Only numeric values are returned (entries like `{ TCP_ESTABLISHED, "..." }` whose value
    /// is a bare identifier are skipped: the kernel did not resolve them, so their value is
    /// unknown here). Empty when the field has no `__print_symbolic`. Uses the first
    /// `__print_symbolic` (or `__print_symbolic_u64`) for that field; if the list is
    /// malformed, the entries read before the damage are returned.
    pub fn symbols(&self, field: &str) -> Vec<(i64, String)> {
        const MARKER: &str = "__print_symbolic";
        let fmt = self.print_fmt.as_str();
        let mut from = 0;
        while let Some(pos) = fmt[from..].find(MARKER) {
            let after = from + pos + MARKER.len();
            from = after;
            let mut sc = Scanner::new(&fmt[after..]);
            sc.eat("_u64");
            if !sc.eat("(") {
                continue;
            }
            sc.skip_ws();
            if !sc.eat("REC->") || sc.ident() != field {
                continue;
            }
            return symbol_entries(&mut sc);
        }
        Vec::new()
    }
}

/// Why a format file could not be parsed. Every variant names the 1-based line number and
/// the text that failed, so a report from an unknown kernel can be acted on directly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The `format:` line that opens the field list was not where it should be.
    #[error("line {line}: expected the `format:` line (after `name:` and `ID:`), found {found}")]
    MissingFormatLine {
        /// Line where `format:` was expected.
        line: usize,
        /// The offending line, quoted, or `end of input`.
        found: String,
    },
    /// `name:` or `ID:` did not appear before `format:`.
    #[error("line {line}: reached `format:` without a `{key}:` header line before it")]
    MissingHeader {
        /// Line of `format:`.
        line: usize,
        /// The missing header (`name` or `ID`).
        key: &'static str,
    },
    /// A header line with an empty or unusable value.
    #[error("line {line}: malformed header line {text:?}")]
    BadHeader {
        /// Line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A number (`ID`, `offset`, `size`, `signed`, array length) that does not parse or
    /// does not fit.
    #[error("line {line}: `{key}` value {value:?} is not a valid number in {text:?}")]
    BadNumber {
        /// Line number.
        line: usize,
        /// Which value (`offset`, `size`, `signed`, `ID`, `array length`).
        key: &'static str,
        /// The value text.
        value: String,
        /// The whole line.
        text: String,
    },
    /// A field line without `offset:` or `size:`.
    #[error("line {line}: field line has no `{key}:` in {text:?}")]
    MissingAttribute {
        /// Line number.
        line: usize,
        /// The missing attribute.
        key: &'static str,
        /// The whole line.
        text: String,
    },
    /// The `field:` declaration has no recognisable type and name.
    #[error("line {line}: cannot find a type and a field name in {text:?}")]
    BadDeclaration {
        /// Line number.
        line: usize,
        /// The whole line.
        text: String,
    },
    /// A line that belongs to no part of a format file.
    #[error("line {line}: unexpected line {text:?}")]
    UnexpectedLine {
        /// Line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// `format:` was followed by no field at all.
    #[error("line {line}: the field list after `format:` is empty")]
    NoFields {
        /// Line where the field list ended.
        line: usize,
    },
    /// The file ended before `print fmt:`; the kernel always writes it, so the text was
    /// probably truncated.
    #[error("line {line}: input ended without a `print fmt:` line (truncated format file?)")]
    MissingPrintFmt {
        /// Line after the last one read.
        line: usize,
    },
}

/// Parses the text of a tracefs `format` file.
///
/// Accepts the layout every kernel since 2.6.3x writes: `name:`, `ID:` (either order),
/// `format:`, tab-indented `field:` lines with blank separators, then `print fmt:`.
/// Unknown `key:value` attributes on field lines are ignored, and `signed:` may be absent
/// (very old kernels), so newer kernels adding attributes do not break start-up.
pub fn parse_format(text: &str) -> Result<EventFormat, FormatError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut last_line = 0;

    // Header: `name:` and `ID:` up to `format:`.
    let mut name: Option<String> = None;
    let mut id: Option<u32> = None;
    let format_line = loop {
        let Some((no, raw)) = lines.next() else {
            return Err(FormatError::MissingFormatLine {
                line: last_line + 1,
                found: "end of input".to_owned(),
            });
        };
        last_line = no;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line == "format:" {
            break no;
        }
        if line.starts_with("field:") || line.starts_with("print fmt:") {
            return Err(FormatError::MissingFormatLine {
                line: no,
                found: format!("{raw:?}"),
            });
        }
        let bad_header = || FormatError::BadHeader {
            line: no,
            text: raw.to_owned(),
        };
        match line.split_once(':') {
            Some(("name", value)) => {
                let value = value.trim();
                if value.is_empty() {
                    return Err(bad_header());
                }
                name = Some(value.to_owned());
            }
            Some(("ID", value)) => {
                let value = value.trim();
                id = Some(value.parse().map_err(|_| FormatError::BadNumber {
                    line: no,
                    key: "ID",
                    value: value.to_owned(),
                    text: raw.to_owned(),
                })?);
            }
            _ => {
                return Err(FormatError::MissingFormatLine {
                    line: no,
                    found: format!("{raw:?}"),
                });
            }
        }
    };
    let name = name.ok_or(FormatError::MissingHeader {
        line: format_line,
        key: "name",
    })?;
    let id = id.ok_or(FormatError::MissingHeader {
        line: format_line,
        key: "ID",
    })?;

    // Field list, ended by `print fmt:`.
    let mut fields = Vec::new();
    let print_fmt = loop {
        let Some((no, raw)) = lines.next() else {
            if fields.is_empty() {
                return Err(FormatError::NoFields {
                    line: last_line + 1,
                });
            }
            return Err(FormatError::MissingPrintFmt {
                line: last_line + 1,
            });
        };
        last_line = no;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(body) = line.strip_prefix("field:") {
            fields.push(parse_field(no, raw, body)?);
        } else if let Some(rest) = line.strip_prefix("print fmt:") {
            if fields.is_empty() {
                return Err(FormatError::NoFields { line: no });
            }
            // print fmt is one line today; keep anything after it rather than lose it.
            let mut fmt = rest.trim_start().to_owned();
            for (_, more) in lines.by_ref() {
                fmt.push('\n');
                fmt.push_str(more);
            }
            break fmt.trim_end().to_owned();
        } else {
            return Err(FormatError::UnexpectedLine {
                line: no,
                text: raw.to_owned(),
            });
        }
    };

    Ok(EventFormat {
        name,
        id,
        fields,
        print_fmt,
    })
}

/// Parses the part of a field line after `field:`, e.g.
/// `__u8 saddr[4]; offset:32; size:4; signed:0;` (tab-separated).
fn parse_field(line: usize, raw: &str, body: &str) -> Result<Field, FormatError> {
    let mut parts = body.split(';');
    let decl = parts.next().unwrap_or_default();
    let (ty, name, bracket) =
        split_declaration(decl).ok_or_else(|| FormatError::BadDeclaration {
            line,
            text: raw.to_owned(),
        })?;

    let number = |key: &'static str, value: &str| -> Result<u16, FormatError> {
        value
            .trim()
            .parse::<u16>()
            .map_err(|_| FormatError::BadNumber {
                line,
                key,
                value: value.trim().to_owned(),
                text: raw.to_owned(),
            })
    };

    let (mut offset, mut size, mut signed) = (None, None, false);
    for attr in parts.map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = attr.split_once(':') else {
            return Err(FormatError::UnexpectedLine {
                line,
                text: raw.to_owned(),
            });
        };
        match key.trim() {
            "offset" => offset = Some(number("offset", value)?),
            "size" => size = Some(number("size", value)?),
            "signed" => {
                signed = match value.trim() {
                    "0" => false,
                    "1" => true,
                    other => {
                        return Err(FormatError::BadNumber {
                            line,
                            key: "signed",
                            value: other.to_owned(),
                            text: raw.to_owned(),
                        });
                    }
                }
            }
            // Attributes a future kernel may add do not change offset/size.
            _ => {}
        }
    }
    let missing = |key| FormatError::MissingAttribute {
        line,
        key,
        text: raw.to_owned(),
    };
    let offset = offset.ok_or_else(|| missing("offset"))?;
    let size = size.ok_or_else(|| missing("size"))?;

    let array_len = match bracket.map(str::trim) {
        None | Some("") => None,
        Some(len) if len.bytes().all(|b| b.is_ascii_digit()) => Some(number("array length", len)?),
        // 5.x kernels print some lengths unexpanded (`saddr[sizeof(struct sockaddr_in6)]`);
        // the element count then follows from the field size and the element type.
        Some(_) => element_size(ty).and_then(|e| (size % e == 0).then_some(size / e)),
    };

    Ok(Field {
        ty: ty.to_owned(),
        name: name.to_owned(),
        offset,
        size,
        signed,
        array_len,
    })
}

/// Splits a C declaration into (type, name, array-length text).
///
/// The name is the last identifier before an optional trailing `[...]`:
/// `const void * skaddr` → (`const void *`, `skaddr`, None);
/// `__u8 saddr[28]` → (`__u8`, `saddr`, Some("28"));
/// `__data_loc char[] name` → (`__data_loc char[]`, `name`, None).
fn split_declaration(decl: &str) -> Option<(&str, &str, Option<&str>)> {
    let decl = decl.trim();
    let (base, bracket) = match decl.strip_suffix(']') {
        Some(inner) => {
            let open = inner.rfind('[')?;
            (inner[..open].trim_end(), Some(&inner[open + 1..]))
        }
        None => (decl, None),
    };
    let name_start = base
        .char_indices()
        .rev()
        .take_while(|&(_, c)| c.is_ascii_alphanumeric() || c == '_')
        .last()
        .map(|(i, _)| i)?;
    let name = &base[name_start..];
    let ty = base[..name_start].trim_end();
    if ty.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((ty, name, bracket))
}

/// Byte size of common fixed-width element types, for arrays whose length the kernel
/// printed as an expression. `None` for anything else (the caller then reports no length).
fn element_size(ty: &str) -> Option<u16> {
    let ty = ty.strip_prefix("const ").unwrap_or(ty).trim();
    Some(match ty {
        "char" | "signed char" | "unsigned char" | "u8" | "s8" | "__u8" | "__s8" | "bool" => 1,
        "short" | "unsigned short" | "u16" | "s16" | "__u16" | "__s16" | "__be16" | "__le16" => 2,
        "int" | "unsigned int" | "u32" | "s32" | "__u32" | "__s32" | "__be32" | "__le32" => 4,
        "u64" | "s64" | "__u64" | "__s64" | "__be64" | "__le64" => 8,
        _ => return None,
    })
}

/// Reads the `, { VALUE, "NAME" }` entries after `__print_symbolic(REC->field` up to `)`.
fn symbol_entries(sc: &mut Scanner<'_>) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    loop {
        sc.skip_ws();
        if !sc.eat(",") {
            return out; // `)` (end of the list) or something malformed
        }
        sc.skip_ws();
        if !sc.eat("{") {
            return out;
        }
        let value = sc.until_top_level_comma();
        if !sc.eat(",") {
            return out;
        }
        sc.skip_ws();
        let Some(name) = sc.quoted() else {
            return out;
        };
        sc.skip_ws();
        if !sc.eat("}") {
            return out;
        }
        if let Some(v) = parse_c_integer(value) {
            out.push((v, name));
        }
    }
}

/// Parses a C integer literal as the kernel prints resolved enum values:
/// `10`, `-1`, `0x1f`, `(3)`, `4U`. Identifiers and other expressions give `None`.
fn parse_c_integer(text: &str) -> Option<i64> {
    let mut t = text.trim();
    while let Some(inner) = t.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
        t = inner.trim();
    }
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, t),
    };
    let t = t.trim_end_matches(['u', 'U', 'l', 'L']);
    let magnitude = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()?
    } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>().ok()?
    } else {
        return None;
    };
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        // Large unsigned values (flag masks) keep their bit pattern.
        Some(magnitude as i64)
    }
}

/// A tiny cursor over the `print fmt` text. All delimiters it looks for are ASCII, so byte
/// positions always fall on character boundaries.
struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> &'a str {
        let rest = self.rest();
        let len = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        self.pos += len;
        &rest[..len]
    }

    /// Text up to (not including) the next `,` outside parentheses, or up to an
    /// unbalanced `}` / `)` / end of input.
    fn until_top_level_comma(&mut self) -> &'a str {
        let rest = self.rest();
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, b) in rest.bytes().enumerate() {
            match b {
                b'(' => depth += 1,
                b')' if depth > 0 => depth -= 1,
                b',' | b'}' | b')' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        self.pos += end;
        &rest[..end]
    }

    /// A C string literal, unescaping `\"` and `\\`.
    fn quoted(&mut self) -> Option<String> {
        if !self.eat("\"") {
            return None;
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Some(out);
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    Some((_, e)) => {
                        out.push('\\');
                        out.push(e);
                    }
                    None => return None,
                },
                c => out.push(c),
            }
        }
        None
    }
}

/// Why tracefs could not be found, mounted or read.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// mount(2) of tracefs failed.
    #[error(
        "cannot mount tracefs at {}: {}: {source}{}; mounting tracefs needs root \
         (CAP_SYS_ADMIN): run netwatch as root, or mount it first with \
         `mount -t tracefs nodev {}`",
        .path.display(), errno_name(.errno), mount_hint(.errno), .path.display()
    )]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// errno from mount(2).
        errno: i32,
        /// The same error as an `io::Error`.
        #[source]
        source: io::Error,
    },
    /// tracefs is there but has no `events/` directory, so no tracepoint can be attached.
    #[error(
        "tracefs at {} has no events/ directory: this kernel appears to be built without \
         tracepoint events (CONFIG_EVENT_TRACING)",
        .root.display()
    )]
    NoEvents {
        /// The tracefs root that was examined.
        root: PathBuf,
    },
    /// A format file exists but could not be read.
    #[error("cannot read {}: {source}{}", .path.display(), read_hint(.source))]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A format file was read but is not in the expected shape.
    #[error("cannot parse {}: {source}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong, with line number.
        #[source]
        source: FormatError,
    },
    /// A system or event name that would not name a single directory under `events/`.
    #[error(
        "invalid tracepoint {what} name {name:?}: expected a plain name such as \"tcp\" or \"tcp_send_reset\""
    )]
    InvalidName {
        /// `system` or `event`.
        what: &'static str,
        /// The rejected name.
        name: String,
    },
}

fn mount_hint(errno: &i32) -> &'static str {
    match *errno {
        libc::ENODEV => " - this kernel has no tracefs (CONFIG_TRACING is off)",
        libc::ENOENT => " - the mount point does not exist (is sysfs mounted on /sys?)",
        _ => "",
    }
}

/// Symbolic name of the errno values mount(2) commonly returns, for error messages.
fn errno_name(errno: &i32) -> String {
    match *errno {
        libc::EPERM => "EPERM".to_owned(),
        libc::EACCES => "EACCES".to_owned(),
        libc::ENOENT => "ENOENT".to_owned(),
        libc::ENODEV => "ENODEV".to_owned(),
        libc::EBUSY => "EBUSY".to_owned(),
        libc::ENOTDIR => "ENOTDIR".to_owned(),
        other => format!("errno {other}"),
    }
}

fn read_hint(err: &io::Error) -> &'static str {
    if err.kind() == io::ErrorKind::PermissionDenied {
        " (tracefs event files are readable only by root)"
    } else {
        ""
    }
}

/// Finds a mounted tracefs (checks /proc/self/mounts for fstype tracefs; also accepts
/// /sys/kernel/tracing/events or /sys/kernel/debug/tracing/events existing), or mounts it at
/// /sys/kernel/tracing with libc::mount("nodev", "/sys/kernel/tracing", "tracefs", 0, null) and
/// logs `log::info!` that it did. Returns the tracefs root directory.
///
/// Why mount: tracefs is not mounted on a fresh machine, and attaching tracepoints through
/// perf does not need it, but reading the record layouts does. The mount is left in place
/// on exit, as `mount -t tracefs` would; it is harmless and other tools expect it.
pub fn tracefs_root() -> Result<PathBuf, TracefsError> {
    if let Some(root) = find_mounted_tracefs()? {
        log::debug!("using tracefs at {}", root.display());
        return Ok(root);
    }
    let root = PathBuf::from(DEFAULT_ROOT);
    mount_tracefs()?;
    log::info!(
        "tracefs was not mounted; mounted it at {} to read tracepoint formats",
        root.display()
    );
    if !root.join("events").is_dir() {
        return Err(TracefsError::NoEvents { root });
    }
    Ok(root)
}

/// A tracefs already visible to this process, if any. A tracefs that is mounted but has no
/// `events/` is an error rather than a reason to mount a second copy on top.
fn find_mounted_tracefs() -> Result<Option<PathBuf>, TracefsError> {
    let mut mounted = match fs::read_to_string("/proc/self/mounts") {
        Ok(text) => tracefs_mount_points(&text),
        Err(e) => {
            log::debug!("cannot read /proc/self/mounts ({e}); probing the usual tracefs paths");
            Vec::new()
        }
    };
    // Prefer the canonical location when tracefs is mounted in several places.
    mounted.sort_by_key(|p| p != Path::new(DEFAULT_ROOT));
    if let Some(root) = mounted.iter().find(|p| p.join("events").is_dir()) {
        return Ok(Some(root.clone()));
    }
    // Checking the debugfs path also triggers the kernel's tracefs automount there.
    for candidate in [DEFAULT_ROOT, DEBUGFS_ROOT] {
        if Path::new(candidate).join("events").is_dir() {
            return Ok(Some(PathBuf::from(candidate)));
        }
    }
    match mounted.into_iter().next() {
        Some(root) => Err(TracefsError::NoEvents { root }),
        None => Ok(None),
    }
}

/// Mount points of all tracefs entries in a /proc/self/mounts text.
fn tracefs_mount_points(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_ascii_whitespace();
            let _device = cols.next()?;
            let mount_point = cols.next()?;
            let fs_type = cols.next()?;
            (fs_type == "tracefs").then(|| unescape_mount_field(mount_point))
        })
        .collect()
}

/// Undoes the kernel's octal escaping of mount paths (`\040` space, `\011` tab,
/// `\012` newline, `\134` backslash). Paths need not be UTF-8, hence bytes.
fn unescape_mount_field(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0')));
        match octal.and_then(|v| u8::try_from(v).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Mounts tracefs at [`DEFAULT_ROOT`].
fn mount_tracefs() -> Result<(), TracefsError> {
    // SAFETY: every pointer comes from a NUL-terminated C string literal that lives for the
    // whole program, so each is valid for reads up to its terminator while mount(2) runs and
    // the kernel does not keep them afterwards. `data` may be null: tracefs takes no
    // options. The call touches no memory of ours beyond those strings.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    Err(TracefsError::Mount {
        path: PathBuf::from(DEFAULT_ROOT),
        errno: source.raw_os_error().unwrap_or(0),
        source,
    })
}

/// Reads and parses `<root>/events/<system>/<event>/format`. Ok(None) when the event does not
/// exist on this kernel (ENOENT) — the caller degrades that feature with a warning.
///
/// A root with no `events/` directory at all is reported as [`TracefsError::NoEvents`]
/// instead of `Ok(None)`: otherwise a wrong root would quietly disable every feature.
pub fn read_format(
    root: &Path,
    system: &str,
    event: &str,
) -> Result<Option<EventFormat>, TracefsError> {
    check_name("system", system)?;
    check_name("event", event)?;
    let events = root.join("events");
    let path = events.join(system).join(event).join("format");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let format = parse_format(&text).map_err(|source| TracefsError::Parse {
                path: path.clone(),
                source,
            })?;
            if format.name != event {
                log::warn!(
                    "{} names its event {:?}, expected {event:?}",
                    path.display(),
                    format.name
                );
            }
            Ok(Some(format))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if events.is_dir() {
                Ok(None)
            } else {
                Err(TracefsError::NoEvents {
                    root: root.to_path_buf(),
                })
            }
        }
        Err(source) => Err(TracefsError::Read { path, source }),
    }
}

/// Rejects names that are empty or would leave their directory (`/`, `.`, `..`, NUL).
fn check_name(what: &'static str, name: &str) -> Result<(), TracefsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(TracefsError::InvalidName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixtures: 6.18 copied from this machine's tracefs; 5.15 reconstructed from the 5.15
    // sources (see tests/fixtures/README.md). Expected numbers below were read off those
    // files and the kernel's TP_STRUCT__entry definitions, not produced by this parser.
    const V618_SET_STATE: &str =
        include_str!("../../tests/fixtures/6.18/sock__inet_sock_set_state.format");
    const V618_RETRANSMIT_SKB: &str =
        include_str!("../../tests/fixtures/6.18/tcp__tcp_retransmit_skb.format");
    const V618_RETRANSMIT_SYNACK: &str =
        include_str!("../../tests/fixtures/6.18/tcp__tcp_retransmit_synack.format");
    const V618_RECEIVE_RESET: &str =
        include_str!("../../tests/fixtures/6.18/tcp__tcp_receive_reset.format");
    const V618_SEND_RESET: &str =
        include_str!("../../tests/fixtures/6.18/tcp__tcp_send_reset.format");
    const V618_DESTROY_SOCK: &str =
        include_str!("../../tests/fixtures/6.18/tcp__tcp_destroy_sock.format");

    const V515_SET_STATE: &str =
        include_str!("../../tests/fixtures/5.15/sock__inet_sock_set_state.format");
    const V515_RETRANSMIT_SKB: &str =
        include_str!("../../tests/fixtures/5.15/tcp__tcp_retransmit_skb.format");
    const V515_RETRANSMIT_SYNACK: &str =
        include_str!("../../tests/fixtures/5.15/tcp__tcp_retransmit_synack.format");
    const V515_RECEIVE_RESET: &str =
        include_str!("../../tests/fixtures/5.15/tcp__tcp_receive_reset.format");
    const V515_SEND_RESET: &str =
        include_str!("../../tests/fixtures/5.15/tcp__tcp_send_reset.format");
    const V515_DESTROY_SOCK: &str =
        include_str!("../../tests/fixtures/5.15/tcp__tcp_destroy_sock.format");

    const ALL_FIXTURES: [(&str, &str); 12] = [
        ("6.18 inet_sock_set_state", V618_SET_STATE),
        ("6.18 tcp_retransmit_skb", V618_RETRANSMIT_SKB),
        ("6.18 tcp_retransmit_synack", V618_RETRANSMIT_SYNACK),
        ("6.18 tcp_receive_reset", V618_RECEIVE_RESET),
        ("6.18 tcp_send_reset", V618_SEND_RESET),
        ("6.18 tcp_destroy_sock", V618_DESTROY_SOCK),
        ("5.15 inet_sock_set_state", V515_SET_STATE),
        ("5.15 tcp_retransmit_skb", V515_RETRANSMIT_SKB),
        ("5.15 tcp_retransmit_synack", V515_RETRANSMIT_SYNACK),
        ("5.15 tcp_receive_reset", V515_RECEIVE_RESET),
        ("5.15 tcp_send_reset", V515_SEND_RESET),
        ("5.15 tcp_destroy_sock", V515_DESTROY_SOCK),
    ];

    fn parse(text: &str) -> EventFormat {
        parse_format(text).expect("fixture parses")
    }

    /// Asserts one field: (name, type, offset, size, signed, array_len).
    #[track_caller]
    fn check(
        ev: &EventFormat,
        name: &str,
        ty: &str,
        offset: u16,
        size: u16,
        signed: bool,
        array_len: Option<u16>,
    ) {
        let f = ev
            .field(name)
            .unwrap_or_else(|| panic!("{}: no field {name}", ev.name));
        let want = Field {
            ty: ty.to_owned(),
            name: name.to_owned(),
            offset,
            size,
            signed,
            array_len,
        };
        assert_eq!(f, &want, "{}: field {name}", ev.name);
    }

    #[track_caller]
    fn check_absent(ev: &EventFormat, names: &[&str]) {
        for name in names {
            assert!(
                ev.field(name).is_none(),
                "{}: unexpected field {name}",
                ev.name
            );
        }
    }

    /// The 8 common bytes, identical on both kernels and kept in `fields`.
    #[track_caller]
    fn check_common(ev: &EventFormat) {
        check(ev, "common_type", "unsigned short", 0, 2, false, None);
        check(ev, "common_flags", "unsigned char", 2, 1, false, None);
        check(
            ev,
            "common_preempt_count",
            "unsigned char",
            3,
            1,
            false,
            None,
        );
        check(ev, "common_pid", "int", 4, 4, true, None);
    }

    /// sport/dport/family/saddr/daddr/saddr_v6/daddr_v6 starting at `sport`, as laid out
    /// by every class that has them: three u16, then 4+4+16+16 bytes of u8 arrays.
    #[track_caller]
    fn check_tuple(ev: &EventFormat, sport: u16) {
        check(ev, "sport", "__u16", sport, 2, false, None);
        check(ev, "dport", "__u16", sport + 2, 2, false, None);
        check(ev, "family", "__u16", sport + 4, 2, false, None);
        check(ev, "saddr", "__u8", sport + 6, 4, false, Some(4));
        check(ev, "daddr", "__u8", sport + 10, 4, false, Some(4));
        check(ev, "saddr_v6", "__u8", sport + 14, 16, false, Some(16));
        check(ev, "daddr_v6", "__u8", sport + 30, 16, false, Some(16));
    }

    fn tcp_state_symbols() -> Vec<(i64, String)> {
        [
            "TCP_ESTABLISHED",
            "TCP_SYN_SENT",
            "TCP_SYN_RECV",
            "TCP_FIN_WAIT1",
            "TCP_FIN_WAIT2",
            "TCP_TIME_WAIT",
            "TCP_CLOSE",
            "TCP_CLOSE_WAIT",
            "TCP_LAST_ACK",
            "TCP_LISTEN",
            "TCP_CLOSING",
            "TCP_NEW_SYN_RECV",
        ]
        .iter()
        .zip(1..)
        .map(|(n, v)| (v, (*n).to_owned()))
        .collect()
    }

    fn owned(pairs: &[(i64, &str)]) -> Vec<(i64, String)> {
        pairs.iter().map(|(v, n)| (*v, (*n).to_owned())).collect()
    }

    #[test]
    fn inet_sock_set_state_6_18() {
        let ev = parse(V618_SET_STATE);
        assert_eq!((ev.name.as_str(), ev.id), ("inet_sock_set_state", 2287));
        assert_eq!(ev.fields.len(), 15);
        check_common(&ev);
        check(&ev, "skaddr", "const void *", 8, 8, false, None);
        check(&ev, "oldstate", "int", 16, 4, true, None);
        check(&ev, "newstate", "int", 20, 4, true, None);
        check(&ev, "sport", "__u16", 24, 2, false, None);
        check(&ev, "dport", "__u16", 26, 2, false, None);
        check(&ev, "family", "__u16", 28, 2, false, None);
        check(&ev, "protocol", "__u16", 30, 2, false, None);
        check(&ev, "saddr", "__u8", 32, 4, false, Some(4));
        check(&ev, "daddr", "__u8", 36, 4, false, Some(4));
        check(&ev, "saddr_v6", "__u8", 40, 16, false, Some(16));
        check(&ev, "daddr_v6", "__u8", 56, 16, false, Some(16));
        assert_eq!(ev.record_len(), 72);
        assert!(ev.print_fmt.starts_with("\"family=%s protocol=%s"));
        assert!(ev.print_fmt.ends_with("{ 12, \"TCP_NEW_SYN_RECV\" })"));
    }

    #[test]
    fn inet_sock_set_state_5_15() {
        let ev = parse(V515_SET_STATE);
        assert_eq!(ev.name, "inet_sock_set_state");
        assert_eq!(ev.fields.len(), 15);
        check_common(&ev);
        check(&ev, "skaddr", "const void *", 8, 8, false, None);
        check(&ev, "oldstate", "int", 16, 4, true, None);
        check(&ev, "newstate", "int", 20, 4, true, None);
        check(&ev, "sport", "__u16", 24, 2, false, None);
        check(&ev, "dport", "__u16", 26, 2, false, None);
        check(&ev, "family", "__u16", 28, 2, false, None);
        check(&ev, "protocol", "__u16", 30, 2, false, None);
        check(&ev, "saddr", "__u8", 32, 4, false, Some(4));
        check(&ev, "daddr", "__u8", 36, 4, false, Some(4));
        check(&ev, "saddr_v6", "__u8", 40, 16, false, Some(16));
        check(&ev, "daddr_v6", "__u8", 56, 16, false, Some(16));
        assert_eq!(ev.record_len(), 72);
    }

    #[test]
    fn inet_sock_set_state_symbols_both_kernels() {
        for text in [V618_SET_STATE, V515_SET_STATE] {
            let ev = parse(text);
            let old = ev.symbols("oldstate");
            assert_eq!(old.len(), 12);
            assert!(old.contains(&(10, "TCP_LISTEN".to_owned())));
            assert_eq!(old, tcp_state_symbols());
            assert_eq!(ev.symbols("newstate"), tcp_state_symbols());
            assert_eq!(
                ev.symbols("family"),
                owned(&[(2, "AF_INET"), (10, "AF_INET6")])
            );
            // Fields printed without __print_symbolic have no table.
            assert!(ev.symbols("sport").is_empty());
            assert!(ev.symbols("no_such_field").is_empty());
        }
        // DCCP left the protocol table between 5.15 and 6.18.
        assert_eq!(
            parse(V618_SET_STATE).symbols("protocol"),
            owned(&[
                (6, "IPPROTO_TCP"),
                (132, "IPPROTO_SCTP"),
                (262, "IPPROTO_MPTCP")
            ])
        );
        assert_eq!(
            parse(V515_SET_STATE).symbols("protocol"),
            owned(&[
                (6, "IPPROTO_TCP"),
                (33, "IPPROTO_DCCP"),
                (132, "IPPROTO_SCTP"),
                (262, "IPPROTO_MPTCP")
            ])
        );
    }

    #[test]
    fn tcp_retransmit_skb_6_18_has_err() {
        let ev = parse(V618_RETRANSMIT_SKB);
        assert_eq!((ev.name.as_str(), ev.id), ("tcp_retransmit_skb", 2281));
        check_common(&ev);
        check(&ev, "skbaddr", "const void *", 8, 8, false, None);
        check(&ev, "skaddr", "const void *", 16, 8, false, None);
        check(&ev, "state", "int", 24, 4, true, None);
        check_tuple(&ev, 28);
        check(&ev, "err", "int", 76, 4, true, None);
        assert_eq!(ev.record_len(), 80);
        check_absent(&ev, &["reason", "sock_cookie"]);
    }

    #[test]
    fn tcp_retransmit_skb_5_15_lacks_err() {
        let ev = parse(V515_RETRANSMIT_SKB);
        assert_eq!(ev.name, "tcp_retransmit_skb");
        check_common(&ev);
        check(&ev, "skbaddr", "const void *", 8, 8, false, None);
        check(&ev, "skaddr", "const void *", 16, 8, false, None);
        check(&ev, "state", "int", 24, 4, true, None);
        check_tuple(&ev, 28);
        check_absent(&ev, &["err", "reason", "sock_cookie"]);
        assert_eq!(ev.record_len(), 74);
    }

    #[test]
    fn tcp_state_symbols_in_tcp_events_are_unresolved_identifiers() {
        // In tcp:* events the kernel leaves `{ TCP_ESTABLISHED, "TCP_ESTABLISHED" }` as is
        // (the enum is exported for the sock system only), so no numeric entry remains.
        for text in [
            V618_RETRANSMIT_SKB,
            V515_RETRANSMIT_SKB,
            V618_SEND_RESET,
            V515_SEND_RESET,
        ] {
            let ev = parse(text);
            assert!(ev.print_fmt.contains("{ TCP_LISTEN, \"TCP_LISTEN\" }"));
            assert!(ev.symbols("state").is_empty(), "{}", ev.name);
        }
    }

    #[test]
    fn tcp_send_reset_6_18_reason_and_sockaddr_layout() {
        let ev = parse(V618_SEND_RESET);
        assert_eq!((ev.name.as_str(), ev.id), ("tcp_send_reset", 2280));
        assert_eq!(ev.fields.len(), 10);
        check_common(&ev);
        check(&ev, "skbaddr", "const void *", 8, 8, false, None);
        check(&ev, "skaddr", "const void *", 16, 8, false, None);
        check(&ev, "state", "int", 24, 4, true, None);
        check(&ev, "reason", "enum sk_rst_reason", 28, 4, false, None);
        check(&ev, "saddr", "__u8", 32, 28, false, Some(28));
        check(&ev, "daddr", "__u8", 60, 28, false, Some(28));
        check_absent(
            &ev,
            &[
                "sport",
                "dport",
                "family",
                "saddr_v6",
                "daddr_v6",
                "sock_cookie",
                "err",
            ],
        );
        assert_eq!(ev.record_len(), 88);
    }

    #[test]
    fn tcp_send_reset_6_18_reason_symbols() {
        let ev = parse(V618_SEND_RESET);
        let want = [
            "NOT_SPECIFIED",
            "NO_SOCKET",
            "TCP_INVALID_ACK_SEQUENCE",
            "TCP_RFC7323_PAWS",
            "TCP_TOO_OLD_ACK",
            "TCP_ACK_UNSENT_DATA",
            "TCP_FLAGS",
            "TCP_OLD_ACK",
            "TCP_ABORT_ON_DATA",
            "TCP_TIMEWAIT_SOCKET",
            "INVALID_SYN",
            "TCP_ABORT_ON_CLOSE",
            "TCP_ABORT_ON_LINGER",
            "TCP_ABORT_ON_MEMORY",
            "TCP_STATE",
            "TCP_KEEPALIVE_TIMEOUT",
            "TCP_DISCONNECT_WITH_DATA",
            "MPTCP_RST_EUNSPEC",
            "MPTCP_RST_EMPTCP",
            "MPTCP_RST_ERESOURCE",
            "MPTCP_RST_EPROHIBIT",
            "MPTCP_RST_EWQ2BIG",
            "MPTCP_RST_EBADPERF",
            "MPTCP_RST_EMIDDLEBOX",
            "ERROR",
            "MAX",
        ];
        let got = ev.symbols("reason");
        assert_eq!(got.len(), 26);
        assert_eq!(got[1], (1, "NO_SOCKET".to_owned()));
        let want: Vec<(i64, String)> = want
            .iter()
            .zip(0..)
            .map(|(n, v)| (v, (*n).to_owned()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn tcp_send_reset_5_15_old_class_without_reason() {
        let ev = parse(V515_SEND_RESET);
        assert_eq!(ev.name, "tcp_send_reset");
        check_common(&ev);
        check(&ev, "skbaddr", "const void *", 8, 8, false, None);
        check(&ev, "skaddr", "const void *", 16, 8, false, None);
        check(&ev, "state", "int", 24, 4, true, None);
        check_tuple(&ev, 28);
        check_absent(&ev, &["reason", "sock_cookie", "err"]);
        assert_eq!(ev.record_len(), 74);
        assert!(ev.symbols("reason").is_empty());
    }

    #[test]
    fn tcp_receive_reset_and_destroy_sock_both_kernels() {
        for (text, name) in [
            (V618_RECEIVE_RESET, "tcp_receive_reset"),
            (V515_RECEIVE_RESET, "tcp_receive_reset"),
            (V618_DESTROY_SOCK, "tcp_destroy_sock"),
            (V515_DESTROY_SOCK, "tcp_destroy_sock"),
        ] {
            let ev = parse(text);
            assert_eq!(ev.name, name);
            check_common(&ev);
            check(&ev, "skaddr", "const void *", 8, 8, false, None);
            check_tuple(&ev, 16);
            // 62 rounded up to the u64's 8-byte alignment.
            check(&ev, "sock_cookie", "__u64", 64, 8, false, None);
            check_absent(&ev, &["skbaddr", "state", "reason", "err"]);
            assert_eq!(ev.record_len(), 72);
        }
        assert_eq!(parse(V618_RECEIVE_RESET).id, 2279);
        assert_eq!(parse(V618_DESTROY_SOCK).id, 2278);
    }

    #[test]
    fn tcp_retransmit_synack_both_kernels() {
        for text in [V618_RETRANSMIT_SYNACK, V515_RETRANSMIT_SYNACK] {
            let ev = parse(text);
            assert_eq!(ev.name, "tcp_retransmit_synack");
            check_common(&ev);
            check(&ev, "skaddr", "const void *", 8, 8, false, None);
            check(&ev, "req", "const void *", 16, 8, false, None);
            check_tuple(&ev, 24);
            check_absent(&ev, &["state", "sock_cookie", "reason", "err"]);
            assert_eq!(ev.record_len(), 70);
        }
        assert_eq!(parse(V618_RETRANSMIT_SYNACK).id, 2275);
    }

    #[test]
    fn fixtures_are_naturally_aligned_and_non_overlapping() {
        // A self-check of the hand-made 5.15 files (and the parser on the real ones): fields
        // ascend, never overlap, and sit at the alignment the kernel would give them.
        for (what, text) in ALL_FIXTURES {
            let ev = parse(text);
            let mut end = 0;
            for f in &ev.fields {
                let align = if f.array_len.is_some() {
                    element_size(&f.ty).unwrap_or(1)
                } else {
                    f.size.min(8)
                };
                assert_eq!(f.offset % align, 0, "{what}: {} misaligned", f.name);
                assert!(f.offset >= end, "{what}: {} overlaps", f.name);
                end = f.offset + f.size;
            }
            assert_eq!(usize::from(end), ev.record_len(), "{what}");
        }
    }

    #[test]
    fn declaration_shapes() {
        assert_eq!(
            split_declaration("const void * skaddr"),
            Some(("const void *", "skaddr", None))
        );
        assert_eq!(
            split_declaration("enum sk_rst_reason reason"),
            Some(("enum sk_rst_reason", "reason", None))
        );
        assert_eq!(
            split_declaration("unsigned char common_flags"),
            Some(("unsigned char", "common_flags", None))
        );
        assert_eq!(
            split_declaration("__u8 saddr[28]"),
            Some(("__u8", "saddr", Some("28")))
        );
        assert_eq!(
            split_declaration("__data_loc char[] name"),
            Some(("__data_loc char[]", "name", None))
        );
        assert_eq!(split_declaration("skaddr"), None, "no type");
        assert_eq!(
            split_declaration("int 4x"),
            None,
            "name starts with a digit"
        );
        assert_eq!(split_declaration("int *"), None, "no name");
    }

    #[test]
    fn special_field_lines() {
        let text = "name: demo\nID: 7\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \n\
            \tfield:__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;\n\
            \tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\
            \tfield:__u8 saddr[sizeof(struct sockaddr_in6)];\toffset:28;\tsize:28;\tsigned:0;\n\
            \tfield:long weird[N];\toffset:56;\tsize:24;\tsigned:1;\n\
            \tfield:__u16 old_kernel_no_signed;\toffset:80;\tsize:2;\n\
            \tfield:__u32 future;\toffset:84;\tsize:4;\tsigned:0;\tnewattr:1;\n\
            \n\
            print fmt: \"name=%s\", __get_str(name)\n";
        let ev = parse(text);
        check(&ev, "name", "__data_loc char[]", 8, 4, false, None);
        check(&ev, "comm", "char", 12, 16, false, Some(16));
        check(&ev, "saddr", "__u8", 28, 28, false, Some(28));
        check(&ev, "weird", "long", 56, 24, true, None);
        check(&ev, "old_kernel_no_signed", "__u16", 80, 2, false, None);
        check(&ev, "future", "__u32", 84, 4, false, None);
        assert_eq!(ev.record_len(), 88);
        assert_eq!(ev.print_fmt, "\"name=%s\", __get_str(name)");
    }

    #[test]
    fn symbols_edge_cases() {
        let ev = EventFormat {
            name: "x".into(),
            id: 1,
            fields: Vec::new(),
            print_fmt: "\"%s %s %s\", __print_symbolic(REC->saddr_v6, { 1, \"WRONG\" }), \
                        __print_symbolic(REC->saddr, { -1, \"NEG\" }, { 0x10, \"HEX\" }, \
                        { (3), \"PAREN\" }, { FOO, \"IDENT\" }, { 4U, \"a, \\\"b\\\" })\" }), \
                        __print_symbolic_u64(REC->big, { 5, \"FIVE\" })"
                .into(),
        };
        assert_eq!(
            ev.symbols("saddr"),
            owned(&[(-1, "NEG"), (16, "HEX"), (3, "PAREN"), (4, "a, \"b\" })")])
        );
        assert_eq!(ev.symbols("saddr_v6"), owned(&[(1, "WRONG")]));
        assert_eq!(ev.symbols("big"), owned(&[(5, "FIVE")]));
        assert!(ev.symbols("sadd").is_empty());
    }

    #[test]
    fn non_numeric_offset_names_line_and_text() {
        let text = "name: bad\nID: 1\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int x;\toffset:abc;\tsize:4;\tsigned:1;\n\
            \nprint fmt: \"\"\n";
        let err = parse_format(text).expect_err("bad offset");
        assert_eq!(
            err,
            FormatError::BadNumber {
                line: 5,
                key: "offset",
                value: "abc".into(),
                text: "\tfield:int x;\toffset:abc;\tsize:4;\tsigned:1;".into(),
            }
        );
        let msg = err.to_string();
        assert!(msg.starts_with("line 5: `offset` value \"abc\""), "{msg}");
        assert!(msg.contains("field:int x;"), "{msg}");
    }

    #[test]
    fn missing_format_section_names_line() {
        // Real header, then the field list without its `format:` line.
        let mut text: Vec<&str> = V618_RECEIVE_RESET.lines().collect();
        assert_eq!(text.remove(2), "format:");
        let err = parse_format(&text.join("\n")).expect_err("no format:");
        assert!(
            matches!(&err, FormatError::MissingFormatLine { line: 3, found } if found.contains("common_type")),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("line 3: expected the `format:` line")
        );

        // Headers only: the error points past the last line.
        let err = parse_format("name: x\nID: 3\n").expect_err("no format:");
        assert_eq!(
            err,
            FormatError::MissingFormatLine {
                line: 3,
                found: "end of input".into()
            }
        );
        assert_eq!(
            parse_format("").expect_err("empty"),
            FormatError::MissingFormatLine {
                line: 1,
                found: "end of input".into()
            }
        );
    }

    #[test]
    fn other_malformed_inputs() {
        let e = parse_format("name: x\nformat:\n").expect_err("no ID");
        assert_eq!(e, FormatError::MissingHeader { line: 2, key: "ID" });
        let e = parse_format("ID: 3\nformat:\n").expect_err("no name");
        assert_eq!(
            e,
            FormatError::MissingHeader {
                line: 2,
                key: "name"
            }
        );
        let e = parse_format("name: x\nID: 3x\nformat:\n").expect_err("bad ID");
        assert!(
            matches!(
                e,
                FormatError::BadNumber {
                    line: 2,
                    key: "ID",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse_format("name:\nID: 3\nformat:\n").expect_err("empty name");
        assert!(matches!(e, FormatError::BadHeader { line: 1, .. }), "{e:?}");
        let e = parse_format("name: x\nID: 3\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\n")
            .expect_err("truncated");
        assert_eq!(e, FormatError::MissingPrintFmt { line: 5 });
        let e =
            parse_format("name: x\nID: 3\nformat:\n\nprint fmt: \"\"\n").expect_err("no fields");
        assert_eq!(e, FormatError::NoFields { line: 5 });
        let e = parse_format("name: x\nID: 3\nformat:\n\tfield:int a;\tsize:4;\n")
            .expect_err("no offset");
        assert!(
            matches!(
                e,
                FormatError::MissingAttribute {
                    line: 4,
                    key: "offset",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse_format("name: x\nID: 3\nformat:\n\tfield:int a;\toffset:70000;\tsize:4;\n")
            .expect_err("offset overflows u16");
        assert!(matches!(e, FormatError::BadNumber { line: 4, .. }), "{e:?}");
        let e = parse_format(
            "name: x\nID: 3\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:2;\n",
        )
        .expect_err("signed 2");
        assert!(
            matches!(
                e,
                FormatError::BadNumber {
                    line: 4,
                    key: "signed",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse_format("name: x\nID: 3\nformat:\n\tfield:a;\toffset:8;\tsize:4;\n")
            .expect_err("no type");
        assert!(
            matches!(e, FormatError::BadDeclaration { line: 4, .. }),
            "{e:?}"
        );
        let e = parse_format("name: x\nID: 3\nformat:\ngarbage\n").expect_err("garbage");
        assert_eq!(
            e,
            FormatError::UnexpectedLine {
                line: 4,
                text: "garbage".into()
            }
        );
    }

    #[test]
    fn mounts_parsing_finds_tracefs_and_unescapes() {
        let mounts = "sysfs /sys sysfs rw,nosuid 0 0\n\
            nodev /sys/kernel/tracing tracefs rw,relatime 0 0\n\
            debugfs /sys/kernel/debug debugfs rw 0 0\n\
            tracefs /mnt/my\\040trace\\134dir tracefs rw 0 0\n\
            none /tracefs tmpfs rw 0 0\n";
        assert_eq!(
            tracefs_mount_points(mounts),
            vec![
                PathBuf::from("/sys/kernel/tracing"),
                PathBuf::from("/mnt/my trace\\dir")
            ]
        );
        assert!(tracefs_mount_points("").is_empty());
        assert_eq!(unescape_mount_field("a\\01"), PathBuf::from("a\\01"));
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "netwatch-tracefs-{tag}-{}-{nanos}",
                std::process::id()
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn read_format_missing_event_is_none() {
        let root = TempDir::new("missing");
        fs::create_dir_all(root.0.join("events/tcp")).expect("mkdir");
        let got = read_format(&root.0, "tcp", "tcp_no_such_event").expect("not an error");
        assert!(got.is_none());
        let got = read_format(&root.0, "no_such_system", "x").expect("not an error");
        assert!(got.is_none());
    }

    #[test]
    fn read_format_reads_and_reports() {
        let root = TempDir::new("read");
        let dir = root.0.join("events/tcp/tcp_send_reset");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("format"), V618_SEND_RESET).expect("write");
        let ev = read_format(&root.0, "tcp", "tcp_send_reset")
            .expect("reads")
            .expect("exists");
        assert_eq!(ev.field("reason").map(|f| f.offset), Some(28));

        let bad = root.0.join("events/tcp/broken");
        fs::create_dir_all(&bad).expect("mkdir");
        fs::write(bad.join("format"), "name: broken\nID: 1\n").expect("write");
        let err = read_format(&root.0, "tcp", "broken").expect_err("parse error");
        assert!(matches!(err, TracefsError::Parse { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("events/tcp/broken/format") && msg.contains("line 3"),
            "{msg}"
        );

        for (system, event) in [("tcp", "../x"), ("..", "x"), ("", "x"), ("tcp", "")] {
            let err = read_format(&root.0, system, event).expect_err("bad name");
            assert!(matches!(err, TracefsError::InvalidName { .. }), "{err:?}");
        }
    }

    #[test]
    fn read_format_without_events_dir_is_an_error() {
        let root = TempDir::new("noevents");
        let err = read_format(&root.0, "tcp", "tcp_send_reset").expect_err("no events/");
        assert!(matches!(err, TracefsError::NoEvents { .. }), "{err:?}");
    }

    #[test]
    fn mount_error_message_names_errno_path_and_privilege() {
        let err = TracefsError::Mount {
            path: PathBuf::from(DEFAULT_ROOT),
            errno: libc::EPERM,
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        let msg = err.to_string();
        for needle in [
            "/sys/kernel/tracing",
            "EPERM",
            "os error 1",
            "CAP_SYS_ADMIN",
            "root",
        ] {
            assert!(msg.contains(needle), "{needle:?} missing from {msg}");
        }
    }

    /// Parses this machine's own formats, mounting tracefs as netwatch does (as root); skips
    /// loudly elsewhere, and fails under CI, which runs as root.
    #[test]
    fn live_kernel_formats_parse_when_available() {
        let root = match tracefs_root() {
            Ok(root) => root,
            Err(e) => return crate::host::skip::skip(&format!("no tracefs: {e}")),
        };
        let root = root.as_path();
        for (system, event) in [
            ("sock", "inet_sock_set_state"),
            ("tcp", "tcp_retransmit_skb"),
            ("tcp", "tcp_retransmit_synack"),
            ("tcp", "tcp_receive_reset"),
            ("tcp", "tcp_send_reset"),
            ("tcp", "tcp_destroy_sock"),
        ] {
            match read_format(root, system, event) {
                Ok(Some(ev)) => {
                    assert_eq!(ev.name, event);
                    assert!(ev.field("skaddr").is_some(), "{event}");
                }
                Ok(None) => {}
                Err(e @ TracefsError::Read { .. }) => {
                    return crate::host::skip::skip(&format!("tracefs not readable: {e}"));
                }
                Err(e) => panic!("{system}/{event}: {e}"),
            }
        }
    }
}
