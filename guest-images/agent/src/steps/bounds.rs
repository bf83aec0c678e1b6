//! Run-time bounds, checked before every access, mmap, munmap, mremap and
//! madvise of arena pages: a page outside the arena is a step error, and so
//! is an address that is not this arena's mapping but something else of the
//! agent's (a `MAP_FIXED`, `munmap` or `madvise` there, or a touch, would act
//! on the agent's own memory and could make a scenario pass falsely). Pages
//! inside the arena that are not mapped here are legitimate fault probes only
//! while their addresses are free.

use std::ops::Range;

use arena_protocol::scenario::{BoundsError, PAGE_SIZE};

use super::{ArenaState, StepError};

/// A step error from a bounds problem.
pub fn error(e: BoundsError) -> StepError {
    StepError::Error(e.to_string())
}

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// Addresses it covers.
    pub range: Range<u64>,
    /// The line, for messages.
    pub line: String,
}

/// Parse `/proc/<pid>/maps` text; unparsable lines are skipped.
pub fn parse_maps(text: &str) -> Vec<Vma> {
    text.lines()
        .filter_map(|line| {
            let span = line.split_whitespace().next()?;
            let (a, b) = span.split_once('-')?;
            let start = u64::from_str_radix(a, 16).ok()?;
            let end = u64::from_str_radix(b, 16).ok()?;
            Some(Vma {
                range: start..end,
                line: line.split_whitespace().collect::<Vec<_>>().join(" "),
            })
        })
        .collect()
}

/// The first mapping in `vmas` that overlaps `want` and is not one of
/// `own` (this arena's own mapping, which may be replaced or unmapped).
pub fn foreign_overlap<'v>(
    vmas: &'v [Vma],
    want: &Range<u64>,
    own: &[Range<u64>],
) -> Option<&'v Vma> {
    vmas.iter().find(|v| {
        let overlaps = v.range.start < want.end && want.start < v.range.end;
        let ours = own
            .iter()
            .any(|o| o.start <= v.range.start && v.range.end <= o.end);
        overlaps && !ours
    })
}

/// The byte addresses of `pages` (relative to the arena's address).
pub fn byte_range(a: &ArenaState, pages: &Range<u64>) -> Option<Range<u64>> {
    Some(a.addr_of(pages.start, 0)?..a.addr_of(pages.end, 0)?)
}

/// The byte ranges this process has the arena mapped at.
pub fn own_ranges(a: &ArenaState) -> Vec<Range<u64>> {
    a.mapped
        .ranges()
        .iter()
        .filter_map(|r| byte_range(a, r))
        .collect()
}

/// Check that the addresses of `pages` of arena `id`, which this process
/// does not have mapped, hold nothing else of the agent's: `what` would act
/// on them (fault there, map over them, unmap or advise them).
pub fn check_free(
    id: &str,
    a: &ArenaState,
    pages: &[Range<u64>],
    what: &str,
) -> Result<(), StepError> {
    if pages.is_empty() {
        return Ok(());
    }
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| StepError::Error(format!("/proc/self/maps: {e}")))?;
    check_free_in(&parse_maps(&maps), id, a, pages, what)
}

/// [`check_free`] against a given address space (testable).
pub fn check_free_in(
    vmas: &[Vma],
    id: &str,
    a: &ArenaState,
    pages: &[Range<u64>],
    what: &str,
) -> Result<(), StepError> {
    let own = own_ranges(a);
    for r in pages {
        let bytes = byte_range(a, r).ok_or_else(|| {
            StepError::Error(format!(
                "{what}: pages {}..{} of arena `{id}` have no address here",
                r.start, r.end
            ))
        })?;
        if let Some(v) = foreign_overlap(vmas, &bytes, &own) {
            return Err(StepError::Error(format!(
                "{what}: pages {}..{} of arena `{id}` ({:#x}..{:#x}) are not mapped by the arena in this process, and other memory of the agent is there ({}); refusing to act on it",
                r.start, r.end, bytes.start, bytes.end, v.line
            )));
        }
    }
    Ok(())
}

/// Whether nothing is mapped at the page holding `addr` (`mincore` fails
/// with ENOMEM there). Async-signal-safe: usable in a forked child right
/// before an access.
pub fn page_unmapped(addr: u64) -> bool {
    let mut vec = 0u8;
    let page = addr & !(PAGE_SIZE - 1);
    // SAFETY: mincore only reads the page tables; `vec` has room for the one
    // page asked about.
    let rc = unsafe { libc::mincore(page as *mut libc::c_void, PAGE_SIZE as usize, &mut vec) };
    rc != 0 && crate::sys::errno() == libc::ENOMEM
}

#[cfg(test)]
// Lists of one page range are what the API takes.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use arena_protocol::scenario::PageSet;

    const MAPS: &str = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon
100000000-100010000 rw-s 00000000 00:0e 12         anon_inode:bpf-map
100010000-100020000 rw-p 00000000 00:00 0
7ffd6e9b0000-7ffd6e9d1000 rw-p 00000000 00:00 0  [stack]
garbage
";

    fn arena(mapped: PageSet) -> ArenaState {
        ArenaState {
            fd: -1,
            pages: 32,
            flags: 0,
            addr: Some(0x1_0000_0000),
            mapped_pages: 16,
            mapped,
        }
    }

    #[test]
    fn maps_are_parsed() {
        let v = parse_maps(MAPS);
        assert_eq!(v.len(), 4);
        assert_eq!(v[1].range, 0x1_0000_0000..0x1_0001_0000);
        assert!(v[3].line.ends_with("[stack]"));
    }

    #[test]
    fn free_means_no_other_mapping() {
        let vmas = parse_maps(MAPS);
        // Pages 0..16 are the arena's own mapping; 16..32 hold something else.
        let a = arena(PageSet::prefix(16));
        assert!(check_free_in(&vmas, "a", &a, &[0..16], "mmap").is_ok());
        let e = check_free_in(&vmas, "a", &a, &[16..17], "touch").unwrap_err();
        assert!(matches!(e, StepError::Error(_)));
        assert!(e.text().contains("pages 16..17 of arena `a`"), "{e:?}");
        assert!(e.text().contains("100010000-100020000"), "{e:?}");
        // Without a mapping here, the arena's addresses are someone else's.
        let a = arena(PageSet::new());
        assert!(check_free_in(&vmas, "a", &a, &[0..1], "touch").is_err());
        assert!(check_free_in(&vmas, "a", &a, &[32..40], "touch").is_ok());
        assert!(check_free_in(&vmas, "a", &a, &[], "touch").is_ok());
    }

    #[test]
    fn addresses_do_not_overflow() {
        let mut a = arena(PageSet::prefix(1));
        a.addr = Some(!(PAGE_SIZE - 1));
        assert_eq!(a.addr_of(1, 0), None);
        assert_eq!(byte_range(&a, &(0..2)), None);
        assert!(check_free_in(&[], "a", &a, &[0..2], "touch").is_err());
        a.addr = None;
        assert_eq!(a.addr_of(0, 0), None);
    }

    #[test]
    fn mincore_sees_mappings() {
        // SAFETY: an anonymous mapping this test owns, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE_SIZE as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        assert!(!page_unmapped(p));
        assert!(!page_unmapped(p + PAGE_SIZE + 8));
        // SAFETY: the second page of the 2-page mapping made above; no Rust
        // reference points into it.
        unsafe { libc::munmap((p + PAGE_SIZE) as *mut libc::c_void, PAGE_SIZE as usize) };
        assert!(page_unmapped(p + PAGE_SIZE));
        // SAFETY: the first page of the same mapping, the only part left.
        unsafe { libc::munmap(p as *mut libc::c_void, PAGE_SIZE as usize) };
    }
}

/// A stand-in arena for host tests: a memfd of `pages` pages, the first
/// `mapped` of them mapped shared at a fixed, otherwise unused address
/// (slot `n` of a region far from anything the process allocates), so the
/// pages after the mapping are reliably free.
#[cfg(test)]
pub mod testing {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use arena_protocol::scenario::{PageSet, PAGE_SIZE};

    use crate::steps::{ArenaState, Ctx};

    /// The test arena's id.
    pub const ID: &str = "a";

    /// A context with arena `a` as described; returns it and the address.
    pub fn fake_arena(n: u64, pages: u64, mapped: u64) -> (Ctx, u64) {
        let base = 0x3000_0000_0000 + n * 0x1_0000_0000;
        // SAFETY: plain syscalls on a new fd and a fixed address nobody uses
        // (MAP_FIXED_NOREPLACE fails rather than replace anything).
        let fd = unsafe {
            let fd = libc::memfd_create(c"arena-test".as_ptr(), 0);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, (pages * PAGE_SIZE) as libc::off_t), 0);
            if mapped > 0 {
                let p = libc::mmap(
                    base as *mut libc::c_void,
                    (mapped * PAGE_SIZE) as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
                    fd,
                    0,
                );
                assert_eq!(p as u64, base);
            }
            fd
        };
        let arena = ArenaState {
            fd,
            pages,
            flags: 0,
            addr: Some(base),
            mapped_pages: mapped,
            mapped: PageSet::prefix(mapped),
        };
        let ctx = Ctx {
            arenas: HashMap::from([(ID.to_owned(), arena)]),
            objects: HashMap::new(),
            seed: 1,
            deadline: Instant::now() + Duration::from_secs(30),
            last_out: [0; 4],
            shared_mm: false,
            baselines: HashMap::new(),
            choices: Vec::new(),
            signals: Default::default(),
            raced_reads: 0,
            at: "steps[0]".into(),
            run_nested: crate::steps::run_steps,
        };
        (ctx, base)
    }

    /// The u64 at byte `offset` of `page` of the memfd behind arena `a`,
    /// read with pread (not through any mapping).
    pub fn backing(ctx: &Ctx, page: u64, offset: u64) -> u64 {
        let mut v = 0u64;
        // SAFETY: `v` is a live, writable u64 local: exactly the 8 bytes read.
        let n = unsafe {
            libc::pread(
                ctx.arenas[ID].fd,
                (&mut v as *mut u64).cast(),
                8,
                (page * PAGE_SIZE + offset) as libc::off_t,
            )
        };
        assert_eq!(n, 8);
        v
    }
}
