//! Code paths of sockets: the user stacks the kernel captured at connect() and accept() (map
//! `STACKS`, deduplicated by stack id), symbolized with blazesym against the process that
//! opened the socket.
//!
//! A stack is symbolized at the first sight of its (pid, id), while the process is alive, and
//! cached: a process that exits later keeps the frames it had. Frames with debug info read
//! `function (file:line)`, frames with only a symbol `function (module)`, the rest
//! `0xADDR (module)`. Reliable user stacks need frame pointers (see the README).
use std::{collections::HashMap, path::Path};

use aya::maps::{MapData, StackTraceMap};
use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Process, Source},
};

/// Most (pid, stack id) pairs kept; beyond it the cache starts over (bounded memory).
const MAX_CACHED: usize = 16_384;

/// Reads stacks from the kernel map and symbolizes them, once per (pid, stack id).
pub struct Stacks {
    map: StackTraceMap<MapData>,
    symbolizer: Symbolizer,
    cache: HashMap<(u32, u32, u64), Vec<String>>,
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
            let frames = symbolize(&self.symbolizer, pid, &addrs);
            self.cache.insert(key, frames);
        }
        &self.cache[&key]
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

/// Symbolizes the user addresses `addrs` of process `pid`, one line per frame.
pub fn symbolize(symbolizer: &Symbolizer, pid: u32, addrs: &[u64]) -> Vec<String> {
    if addrs.is_empty() {
        return Vec::new();
    }
    // Every frame but the innermost is a return address, the instruction after the call: the
    // byte before it belongs to the call's line. (The innermost is just past the syscall
    // instruction, so the same holds for it.)
    let lookup: Vec<u64> = addrs.iter().map(|a| a.saturating_sub(1)).collect();
    let maps = Modules::read(pid);
    let src = Source::Process(Process::new(pid.into()));
    let symbolized = symbolizer
        .symbolize(&src, Input::AbsAddr(&lookup))
        .unwrap_or_else(|e| {
            log::debug!("symbolizing stack of pid {pid}: {e}");
            Vec::new()
        });
    addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| match symbolized.get(i) {
            Some(Symbolized::Sym(sym)) => match &sym.code_info {
                Some(ci) if ci.line.is_some() => format!(
                    "{} ({}:{})",
                    sym.name,
                    Path::new(&ci.file).display(),
                    ci.line.unwrap_or(0)
                ),
                _ => format!(
                    "{} ({})",
                    sym.name,
                    sym.module
                        .as_deref()
                        .map(|m| base_name(Path::new(m)))
                        .unwrap_or_else(|| maps.module(addr))
                ),
            },
            _ => format!("{addr:#x} ({})", maps.module(addr)),
        })
        .collect()
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

    /// The module mapped at `addr`; `?` when none is, `process exited` when the process had
    /// no mappings left to read (it exited before its stack could be symbolized).
    fn module(&self, addr: u64) -> String {
        if self.0.is_empty() {
            return "process exited".to_string();
        }
        self.0
            .iter()
            .find(|(lo, hi, _)| (*lo..*hi).contains(&addr))
            .map_or_else(|| "?".to_string(), |(_, _, m)| m.clone())
    }
}

/// `lo-hi perms offset dev inode path` -> (lo, hi, base name of path); `None` for anonymous.
fn parse_maps_line(line: &str) -> Option<(u64, u64, String)> {
    let mut parts = line.split_whitespace();
    let range = parts.next()?;
    let path = parts.nth(4)?;
    let (lo, hi) = range.split_once('-')?;
    let name = if path.starts_with('/') {
        base_name(Path::new(path))
    } else {
        path.to_string()
    };
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
            Some((0x55d0c1a00000, 0x55d0c1a21000, "leaky_server".to_string()))
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
        let frames = symbolize(&Symbolizer::new(), 99_999_999, &[0x7f00_0000_1234]);
        assert_eq!(frames, vec!["0x7f0000001234 (process exited)".to_string()]);
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
        let frames = symbolize(&Symbolizer::new(), std::process::id(), &[addr]);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].contains("marker"), "{frames:?}");
    }
}
