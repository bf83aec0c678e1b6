//! Stack traces decoded to `function+off (file:line)`, as the kernel's
//! `scripts/decode_stacktrace.sh` does, with the vmlinux's DWARF read in
//! process (addr2line/gimli) instead of shelling out.
//!
//! A trace line names a frame as `symbol+0xoff/0xsize`, which survives
//! KASLR: the symbol's address comes from the vmlinux's symbol table, the
//! offset is added, and the DWARF line table (with inlined frames) gives
//! the source. Frames in modules (`[name]`) are left as they are: their
//! debug info is not in vmlinux.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSymbol};

/// Why a vmlinux cannot decode traces.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    /// The file cannot be read or parsed.
    #[error("{path}: {why}")]
    Unreadable {
        /// The vmlinux.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// No symbol table (a stripped vmlinux, e.g. one unpacked from a bzImage).
    #[error("{0}: no symbol table (stripped); pass the build tree's vmlinux")]
    NoSymbols(PathBuf),
    /// Symbols but no DWARF: `CONFIG_DEBUG_INFO` is off.
    #[error("{0}: no debug info (CONFIG_DEBUG_INFO is off)")]
    NoDebugInfo(PathBuf),
}

/// A vmlinux loaded for decoding.
pub struct Symbolizer {
    loader: addr2line::Loader,
    /// Function symbols by name; the first of duplicates (static functions
    /// of the same name in different files) is kept, as `nm | grep` would.
    symbols: HashMap<String, u64>,
}

impl Symbolizer {
    /// Loads `vmlinux`'s symbol table and DWARF.
    pub fn new(vmlinux: &Path) -> Result<Symbolizer, SymbolizeError> {
        let unreadable = |why: String| SymbolizeError::Unreadable {
            path: vmlinux.to_owned(),
            why,
        };
        let data = std::fs::read(vmlinux).map_err(|e| unreadable(e.to_string()))?;
        let file = object::File::parse(&*data).map_err(|e| unreadable(e.to_string()))?;
        let mut symbols = HashMap::new();
        for s in file.symbols() {
            if s.kind() == object::SymbolKind::Text {
                if let Ok(name) = s.name() {
                    symbols.entry(name.to_owned()).or_insert(s.address());
                }
            }
        }
        if symbols.is_empty() {
            return Err(SymbolizeError::NoSymbols(vmlinux.to_owned()));
        }
        if file.section_by_name(".debug_info").is_none() {
            return Err(SymbolizeError::NoDebugInfo(vmlinux.to_owned()));
        }
        drop(file);
        let loader = addr2line::Loader::new(vmlinux).map_err(|e| unreadable(e.to_string()))?;
        Ok(Symbolizer { loader, symbols })
    }

    /// `text` with every decodable frame followed by its source location:
    /// `func+0x1b/0x40 (kernel/bpf/arena.c:289)`, and inlined callers as
    /// ` (inlined by) outer (file:line)`. Other lines are kept as they are.
    pub fn decode(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() * 2);
        for line in text.lines() {
            out.push_str(line);
            if let Some(frame) = TraceFrame::parse(line) {
                if let Some(where_) = self.locate(&frame) {
                    out.push_str(&format!(" ({where_})"));
                }
            }
            out.push('\n');
        }
        out
    }

    fn locate(&self, f: &TraceFrame) -> Option<String> {
        if f.module.is_some() {
            return None;
        }
        let base = *self.symbols.get(&f.symbol)?;
        // A call-trace entry is a return address: the call is the byte
        // before it. The RIP line is the faulting instruction itself.
        let probe = base + f.offset - u64::from(!f.rip && f.offset > 0);
        let mut frames = self.loader.find_frames(probe).ok()?;
        let mut parts = Vec::new();
        while let Ok(Some(frame)) = frames.next() {
            let loc = frame
                .location
                .as_ref()
                .and_then(|l| Some(format!("{}:{}", short_path(l.file?), l.line.unwrap_or(0))));
            let name = frame
                .function
                .as_ref()
                .and_then(|n| n.raw_name().ok().map(|n| n.into_owned()));
            parts.push((name, loc));
        }
        // find_frames yields the innermost (inlined) frame first: its
        // location is the source line itself; each inlined function is
        // then placed at its call in the next frame out.
        let mut s = parts.first()?.1.clone().unwrap_or_else(|| "?".into());
        for pair in parts.windows(2) {
            let name = pair[0].0.as_deref().unwrap_or("?");
            let at = pair[1].1.as_deref().unwrap_or("?");
            s.push_str(&format!(", {name} inlined at {at}"));
        }
        Some(s)
    }
}

/// The function a splat happened in: the frame of its `RIP:` line, else
/// the first frame of its trace that is not the reporting machinery itself
/// (dump_stack, warn/bug helpers). Needs no vmlinux.
pub fn culprit(text: &str) -> Option<String> {
    let frames: Vec<TraceFrame> = text.lines().filter_map(TraceFrame::parse).collect();
    frames
        .iter()
        .find(|f| f.rip)
        .or_else(|| {
            frames
                .iter()
                .find(|f| !f.uncertain && !is_reporting(&f.symbol))
        })
        .map(|f| f.symbol.clone())
}

/// Builds' absolute paths are long and machine-specific; from the tree's
/// top-level directories on, they read like the kernel's own messages.
fn short_path(file: &str) -> &str {
    const TOP: &[&str] = &[
        "/kernel/",
        "/mm/",
        "/include/",
        "/arch/",
        "/lib/",
        "/fs/",
        "/net/",
        "/drivers/",
        "/block/",
        "/security/",
        "/init/",
        "/ipc/",
        "/crypto/",
    ];
    TOP.iter()
        .filter_map(|t| file.find(t))
        .min()
        .map_or(file, |i| &file[i + 1..])
}

/// Functions that report a splat rather than cause it, and the page
/// allocator's free path that finds a bad page: the title should name the
/// caller under test (`bpf_arena_free_pages`), not `bad_page.cold` or
/// `free_unref_page`. Compiler suffixes (`.cold`, `.isra.0`,
/// `.constprop.0`) name the same function.
fn is_reporting(symbol: &str) -> bool {
    const REPORTING: &[&str] = &[
        "dump_stack",
        "dump_stack_lvl",
        "show_stack",
        "__warn",
        "report_bug",
        "handle_bug",
        "exc_invalid_op",
        "asm_exc_invalid_op",
        "bad_page",
        "__dump_page",
        "dump_page",
        "panic",
        "die",
        "oops_end",
        // The free path that checks a page and calls bad_page().
        "free_page_is_bad",
        "free_page_is_bad_report",
        "free_pages_prepare",
        "free_unref_page",
        "free_unref_folios",
        "free_frozen_pages",
        "__free_frozen_pages",
        "__free_pages_ok",
        "__free_pages",
        "__free_page",
        "__folio_put",
        "folio_put",
        "put_page",
    ];
    let base = symbol.split('.').next().unwrap_or(symbol);
    REPORTING.contains(&base)
        || base.starts_with("__pfx_")
        || base.starts_with("warn_")
        || base.starts_with("__warn_")
}

/// One `symbol+0xoff/0xsize [module]` frame of a trace line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TraceFrame {
    symbol: String,
    offset: u64,
    module: Option<String>,
    /// A `RIP: 0010:` line: the faulting instruction, not a return address.
    rip: bool,
    /// `? ` frames are stack leftovers the unwinder is unsure about.
    uncertain: bool,
}

impl TraceFrame {
    fn parse(line: &str) -> Option<TraceFrame> {
        let line = crate::judge::splat::strip_timestamp(line.trim_end_matches('\r'));
        let (rest, rip) = match line.split_once("RIP: ") {
            // `RIP: 0010:func+0x1b/0x40`
            Some((_, r)) => (r.split_once(':').map_or(r, |(_, f)| f), true),
            None => (line.trim_start(), false),
        };
        let (rest, uncertain) = match rest.strip_prefix("? ") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let mut words = rest.split_whitespace();
        let frame = words.next()?;
        let module = words
            .next()
            .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
            .map(str::to_owned);
        let (symbol, off_size) = frame.split_once('+')?;
        let (off, size) = off_size.split_once('/')?;
        let offset = u64::from_str_radix(off.strip_prefix("0x")?, 16).ok()?;
        u64::from_str_radix(size.strip_prefix("0x")?, 16).ok()?;
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
        if symbol.is_empty() || !symbol.chars().all(valid) {
            return None;
        }
        Some(TraceFrame {
            symbol: symbol.to_owned(),
            offset,
            module,
            rip,
            uncertain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trace_frames_and_nothing_else() {
        let f = TraceFrame::parse("[  5.1]  bpf_arena_free_pages+0x12d/0x300").unwrap();
        assert_eq!(
            (f.symbol.as_str(), f.offset, f.rip),
            ("bpf_arena_free_pages", 0x12d, false)
        );
        let f = TraceFrame::parse("[  5.1] RIP: 0010:arena_vm_fault+0x1b1/0x1c0").unwrap();
        assert!(f.rip);
        assert_eq!(f.symbol, "arena_vm_fault");
        let f = TraceFrame::parse("  ? __pfx_kthread+0x10/0x10").unwrap();
        assert!(f.uncertain);
        let f = TraceFrame::parse(" kvm_arch_vcpu_ioctl_run+0x1e/0x40 [kvm]").unwrap();
        assert_eq!(f.module.as_deref(), Some("kvm"));
        for not_a_frame in [
            "[  5.1] Call Trace:",
            "  <TASK>",
            "[  5.1] BUG: Bad page state in process init  pfn:05c23",
            "x+0xzz/0x10",
            "a+b/c",
            "rm -rf+0x1/0x2",
        ] {
            assert_eq!(TraceFrame::parse(not_a_frame), None, "{not_a_frame}");
        }
    }

    #[test]
    fn the_culprit_is_the_rip_or_the_first_real_frame() {
        let warn = "WARNING: CPU: 0 PID: 1 at kernel/bpf/arena.c:289 arena_vm_fault+0x1b1/0x1c0\n\
                    RIP: 0010:arena_vm_fault+0x1b1/0x1c0\n Call Trace:\n  do_fault+0x1/0x2\n";
        assert_eq!(culprit(warn).as_deref(), Some("arena_vm_fault"));
        let bad_page = "BUG: Bad page state in process init\n Call Trace:\n  <TASK>\n  \
                        dump_stack_lvl+0x5d/0x80\n  bad_page+0x70/0x110\n  ? __pfx_x+0x10/0x10\n  \
                        free_unref_page+0x1/0x2\n  bpf_arena_free_pages+0x12d/0x300\n";
        assert_eq!(culprit(bad_page).as_deref(), Some("bpf_arena_free_pages"));
        // 7.2's report: `bad_page.cold`, the free path, then the arena.
        let bad_page_72 = "BUG: Bad page state in process init\n Call Trace:\n  <TASK>\n  \
                           dump_stack_lvl+0x5d/0x80\n  bad_page.cold+0x7b/0x91\n  \
                           free_frozen_pages+0x3a3/0x5a0\n  arena_free_pages+0x1e0/0x300\n";
        assert_eq!(culprit(bad_page_72).as_deref(), Some("arena_free_pages"));
        let warned = "WARNING: at x\n Call Trace:\n  warn_slowpath_fmt.isra.0+0x1/0x2\n  \
                      __warn_printk+0x1/0x2\n  arena_map_free+0x1/0x2\n";
        assert_eq!(culprit(warned).as_deref(), Some("arena_map_free"));
    }

    #[test]
    fn paths_start_at_the_tree_top() {
        assert_eq!(
            short_path("/root/ksrc/linux/kernel/bpf/arena.c"),
            "kernel/bpf/arena.c"
        );
        assert_eq!(
            short_path("/x/linux/include/linux/mm.h"),
            "include/linux/mm.h"
        );
        assert_eq!(short_path("arena.c"), "arena.c");
    }

    #[test]
    fn a_stripped_vmlinux_is_refused_by_name() {
        // Any ELF without symbols will do: the test binary's own sections
        // are not a kernel's, but a file that is not ELF must be unreadable.
        let dir = std::env::temp_dir().join(format!("arena-sym-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_elf = dir.join("vmlinux");
        std::fs::write(&not_elf, b"not an elf").unwrap();
        assert!(matches!(
            Symbolizer::new(&not_elf),
            Err(SymbolizeError::Unreadable { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
