//! Code paths of sockets: the user stacks the kernel captured at connect() and accept() (map
//! `STACKS`, deduplicated by stack id), symbolized with blazesym against the process that
//! opened the socket.
//!
//! A stack is symbolized at the first sight of its (pid, id), while the process is alive, and
//! cached: a process that exits later keeps the frames it had. Frames with debug info read
//! `function (file:line)`, frames with only a symbol `function (module)`, the rest
//! `0xADDR (module)`, JIT frames named by the runtime's perf map `function (perf map)`.
//! Reliable user stacks need frame pointers (see the README). Each code path also gets its
//! application frame (`model::frames`), the handler a leak is fixed in.
use std::{collections::HashMap, path::Path};

use crate::host::perfmap::{self, PerfMap};
use crate::model::frames::{
    Frame, Headline, Origin, Runtime, headline, module_runtime, why_not_shown,
};
use aya::maps::{MapData, StackTraceMap};
use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Process, Source},
};

/// Most (pid, stack id) pairs kept; beyond it the cache starts over (bounded memory).
const MAX_CACHED: usize = 16_384;

/// A symbolized code path: its frames as printed, and the application frame it is known by.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CodePath {
    /// One line per frame, innermost first.
    pub frames: Vec<String>,
    /// The innermost application frame (see `model::frames`).
    pub headline: Option<Headline>,
    /// Without a headline: why, and what would show one.
    pub why_not: Option<String>,
}

/// A symbolized stack and what it was symbolized from, to do it again once a runtime has
/// written (more of) its perf map.
struct Cached {
    path: std::sync::Arc<CodePath>,
    addrs: Vec<u64>,
    /// The perf map's modification time when symbolized (`None`: there was none).
    perf_map: Option<std::time::SystemTime>,
}

/// Reads stacks from the kernel map and symbolizes them, once per (pid, stack id).
pub struct Stacks {
    map: StackTraceMap<MapData>,
    symbolizer: Symbolizer,
    cache: HashMap<(u32, u32, u64), Cached>,
}

impl Stacks {
    pub fn new(map: StackTraceMap<MapData>) -> Self {
        Self {
            map,
            symbolizer: Symbolizer::new(),
            cache: HashMap::new(),
        }
    }

    /// The frames of stack `id` as seen in process `pid`, innermost first; empty when the
    /// kernel no longer holds the stack. `sp_word` is the word at the user stack pointer at
    /// the syscall (see [`caller_return_address`]).
    pub fn frames(&mut self, pid: u32, id: u32, sp_word: Option<u64>) -> &[String] {
        self.code_path(pid, id, sp_word);
        &self.cache[&(pid, id, sp_word.unwrap_or(0))].path.frames
    }

    /// [`Stacks::frames`] with the code path's application frame.
    pub fn code_path(
        &mut self,
        pid: u32,
        id: u32,
        sp_word: Option<u64>,
    ) -> std::sync::Arc<CodePath> {
        let key = (pid, id, sp_word.unwrap_or(0));
        if !self.cache.contains_key(&key) {
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
            let mut addrs: Vec<u64> = match self.map.get(&id, 0) {
                Ok(trace) => trace.frames().iter().map(|f| f.ip).collect(),
                Err(e) => {
                    log::debug!("stack {id}: {e}");
                    Vec::new()
                }
            };
            log::debug!("stack {id} of pid {pid}: {addrs:x?}, word at sp {sp_word:x?}");
            if let Some(ret) = sp_word.filter(|&w| caller_return_address(pid, &addrs, w)) {
                addrs.insert(1, ret);
            }
            let perf_map = perfmap::modified(pid);
            let path = std::sync::Arc::new(symbolize_path(&self.symbolizer, pid, &addrs));
            self.cache.insert(
                key,
                Cached {
                    path,
                    addrs,
                    perf_map,
                },
            );
        }
        self.cache[&key].path.clone()
    }

    /// The code path of (`pid`, `id`, `sp_word`) symbolized again, if it has no application
    /// frame yet and the process's perf map changed since: a JVM writes its map when asked
    /// (`jcmd PID Compiler.perfmap`), a runtime appends to it as it compiles. `None` when
    /// nothing changed (or the stack was never symbolized).
    pub fn refreshed(
        &mut self,
        pid: u32,
        id: u32,
        sp_word: Option<u64>,
    ) -> Option<std::sync::Arc<CodePath>> {
        let key = (pid, id, sp_word.unwrap_or(0));
        let cached = self.cache.get_mut(&key)?;
        if cached.path.headline.is_some() {
            return None;
        }
        let now = perfmap::modified(pid);
        if now.is_none() || now == cached.perf_map {
            return None;
        }
        cached.perf_map = now;
        let path = symbolize_path(&self.symbolizer, pid, &cached.addrs);
        if path == *cached.path {
            return None;
        }
        cached.path = std::sync::Arc::new(path);
        Some(cached.path.clone())
    }
}

/// Whether `word`, read at the user stack pointer when the syscall returned, is the return
/// address into the function that called the libc wrapper: a wrapper that makes no frame (a
/// leaf, as glibc's are) leaves that return address on top of the stack, and the
/// frame-pointer walk, starting from the caller's saved frame pointer, never sees it. It is
/// taken only when it is not the walk's next frame already and follows a call instruction
/// (`call rel32`, `e8 xx xx xx xx`, or `call *rel32(%rip)`, `ff 15 xx xx xx xx`).
fn caller_return_address(pid: u32, addrs: &[u64], word: u64) -> bool {
    if addrs.len() < 2 || addrs[1] == word || word < 6 {
        return false;
    }
    let mut bytes = [0u8; 6];
    let read = std::fs::File::open(format!("/proc/{pid}/mem")).and_then(|f| {
        use std::os::unix::fs::FileExt as _;
        f.read_exact_at(&mut bytes, word - 6)
    });
    read.is_ok() && (bytes[1] == 0xe8 || bytes[..2] == [0xff, 0x15])
}

/// Symbolizes the user addresses `addrs` of process `pid`: one line per frame, and the
/// application frame among them. Addresses no file backs are looked up in the process's perf
/// map ([`perfmap`]), where JIT runtimes name their code; such frames print as
/// `name (perf map)`.
pub fn symbolize_path(symbolizer: &Symbolizer, pid: u32, addrs: &[u64]) -> CodePath {
    if addrs.is_empty() {
        return CodePath::default();
    }
    // Every frame but the innermost is a return address, the instruction after the call: the
    // byte before it belongs to the call's line. (The innermost is just past the syscall
    // instruction, so the same holds for it.)
    let lookup: Vec<u64> = addrs.iter().map(|a| a.saturating_sub(1)).collect();
    let maps = Modules::read(pid);
    // Perf maps are read by `perfmap`, not by blazesym (which refuses the JVM's).
    let mut process = Process::new(pid.into());
    process.perf_map = false;
    let src = Source::Process(process);
    let mut perf_map: Option<Option<PerfMap>> = None;
    let symbolized = symbolizer
        .symbolize(&src, Input::AbsAddr(&lookup))
        .unwrap_or_else(|e| {
            log::debug!("symbolizing stack of pid {pid}: {e}");
            Vec::new()
        });
    let mut lines = Vec::with_capacity(addrs.len());
    let mut found = Vec::with_capacity(addrs.len());
    for (i, &addr) in addrs.iter().enumerate() {
        let mapped = maps.path(addr);
        match symbolized.get(i) {
            Some(Symbolized::Sym(sym)) => {
                let module = sym
                    .module
                    .as_deref()
                    .map(|m| m.to_string_lossy().into_owned());
                // blazesym looks in the perf map only for addresses no file backs.
                let origin_module = module.clone().or_else(|| mapped.map(str::to_string));
                let file = sym.code_info.as_ref().map(|ci| {
                    ci.dir.as_deref().map_or_else(
                        || ci.file.to_string_lossy().into_owned(),
                        |d| d.join(&ci.file).to_string_lossy().into_owned(),
                    )
                });
                let line = sym.code_info.as_ref().and_then(|ci| ci.line);
                lines.push(match (&sym.code_info, &origin_module) {
                    (Some(ci), _) if ci.line.is_some() => format!(
                        "{} ({}:{})",
                        sym.name,
                        Path::new(&ci.file).display(),
                        line.unwrap_or(0)
                    ),
                    (_, Some(m)) => format!("{} ({})", sym.name, base_name(Path::new(m))),
                    (_, None) if maps.is_empty() => format!("{} (process exited)", sym.name),
                    (_, None) => format!("{} (?)", sym.name),
                });
                found.push((sym.name.to_string(), file, line, origin_module));
            }
            _ => {
                // Code no file backs: the runtime's perf map may name it.
                let jit = mapped
                    .is_none()
                    .then(|| perf_map.get_or_insert_with(|| PerfMap::read(pid)).as_ref())
                    .flatten()
                    .and_then(|m| m.lookup(lookup[i]));
                match jit {
                    Some(name) => {
                        lines.push(format!("{name} (perf map)"));
                        found.push((name.to_string(), None, None, None));
                    }
                    None => {
                        lines.push(format!("{addr:#x} ({})", maps.module(addr)));
                        found.push((String::new(), None, None, mapped.map(str::to_string)));
                    }
                }
            }
        }
    }
    let frames = found.iter().map(|(name, file, line, module)| Frame {
        name,
        file: file.as_deref(),
        line: *line,
        origin: match module {
            Some(m) => Origin::Module(m),
            None if name.is_empty() => Origin::Unknown,
            None => Origin::PerfMap,
        },
    });
    let (headline, mut runtimes) = headline(frames);
    if runtimes.is_empty() {
        // The walk may have left the runtime's frames out (no frame pointers): the process's
        // mappings still say what it runs on.
        runtimes.extend(maps.runtime());
    }
    let why_not = match headline {
        Some(_) => None,
        None if maps.is_empty() => {
            Some("the process exited before its code path could be symbolized".to_string())
        }
        None => Some(why_not_shown(&runtimes)),
    };
    CodePath {
        why_not,
        headline,
        frames: lines,
    }
}

fn base_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The file-backed mappings of a process (`/proc/<pid>/maps`), to name the module of a frame
/// that could not be symbolized.
struct Modules(Vec<(u64, u64, String)>);

impl Modules {
    fn read(pid: u32) -> Self {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        Self(text.lines().filter_map(parse_maps_line).collect())
    }

    /// The language runtime the process runs on, from its mapped executables and libraries.
    fn runtime(&self) -> Option<Runtime> {
        self.0
            .iter()
            .find_map(|(_, _, path)| module_runtime(&base_name(Path::new(path))))
    }

    /// Whether no mapping could be read (the process is gone).
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The path of the file mapped at `addr`, if a file is (not `[heap]` or `[vdso]`).
    fn path(&self, addr: u64) -> Option<&str> {
        self.0
            .iter()
            .find(|(lo, hi, _)| (*lo..*hi).contains(&addr))
            .map(|(_, _, path)| path.as_str())
            .filter(|p| p.starts_with('/') || p.starts_with('['))
    }

    /// The module mapped at `addr`; `?` when none is, `process exited` when the process had
    /// no mappings left to read (it exited before its stack could be symbolized).
    fn module(&self, addr: u64) -> String {
        if self.0.is_empty() {
            return "process exited".to_string();
        }
        self.0
            .iter()
            .find(|(lo, hi, _)| (*lo..*hi).contains(&addr))
            .map_or_else(|| "?".to_string(), |(_, _, m)| base_name(Path::new(m)))
    }
}

/// `lo-hi perms offset dev inode path` -> (lo, hi, path); `None` for anonymous.
fn parse_maps_line(line: &str) -> Option<(u64, u64, String)> {
    let mut parts = line.split_whitespace();
    let range = parts.next()?;
    let path = parts.nth(4)?;
    let (lo, hi) = range.split_once('-')?;
    let name = path.to_string();
    Some((
        u64::from_str_radix(lo, 16).ok()?,
        u64::from_str_radix(hi, 16).ok()?,
        name,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_name_their_module() {
        let l = "55d0c1a00000-55d0c1a21000 r-xp 00001000 08:01 123 /usr/bin/leaky_server";
        assert_eq!(
            parse_maps_line(l),
            Some((
                0x55d0c1a00000,
                0x55d0c1a21000,
                "/usr/bin/leaky_server".to_string()
            ))
        );
        assert_eq!(
            parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]"),
            Some((0x7ffd1000, 0x7ffd2000, "[stack]".to_string()))
        );
        assert_eq!(
            parse_maps_line("7f0000000000-7f0000001000 rw-p 00000000 00:00 0"),
            None
        );
    }

    #[test]
    fn frames_of_a_process_that_is_gone_say_so() {
        // Pids are at most 2^22 on Linux: this one cannot exist.
        let path = symbolize_path(&Symbolizer::new(), 99_999_999, &[0x7f00_0000_1234]);
        assert_eq!(
            path.frames,
            vec!["0x7f0000001234 (process exited)".to_string()]
        );
        assert_eq!(path.headline, None);
        assert_eq!(
            path.why_not.as_deref(),
            Some("the process exited before its code path could be symbolized")
        );
        assert_eq!(Modules(vec![(1, 2, "m".into())]).module(5), "?");
    }

    /// This very test process, symbolized as a stranger would: its own function shows up.
    #[test]
    fn symbolizes_an_address_of_this_process() {
        #[inline(never)]
        fn marker() -> u64 {
            marker as *const () as u64
        }
        let addr = marker() + 1; // as a return address inside `marker` would be
        let frames = symbolize_path(&Symbolizer::new(), std::process::id(), &[addr]).frames;
        assert_eq!(frames.len(), 1);
        assert!(frames[0].contains("marker"), "{frames:?}");
    }
}
