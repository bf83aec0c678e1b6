//! `mmap:`, `munmap:`, `mremap:`, `madvise:` on an arena's user mapping.
//!
//! Bounds: lengths and ranges are checked against the arena (a step that
//! expects an errno may pass any length or offset to probe the kernel's own
//! checks), byte arithmetic is checked, and no call may act on addresses
//! that hold other memory of the agent: `MAP_FIXED` replaces, `munmap` and
//! `madvise` act on whatever is there. The resulting mapping is recorded as
//! the kernel left it, whatever the expectation, so later steps check
//! against the truth.

use arena_protocol::scenario::{
    arena_range, pages_to_bytes, Advice, DestroyStep, MadviseStep, MmapStep, MremapStep,
    MunmapStep, PageSet, PAGE_SIZE,
};

use super::{bounds, check_errno};
use super::{ArenaState, Ctx, Outcome, StepError, StepResult};
use crate::sys::errno;

/// Map `len` bytes of the arena `fd` at `addr` (0 = anywhere).
pub fn map(fd: i32, addr: u64, len: u64, flags: i32, offset: u64) -> Result<u64, i32> {
    // SAFETY: mmap of a map fd; the kernel validates every argument, and
    // callers passing MAP_FIXED have checked the range holds nothing else.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p as u64)
    }
}

/// Check an mmap's length and offset against the arena. A step that expects
/// an errno may ask for anything (it probes the kernel's checks).
pub fn check_mmap(s: &MmapStep, a: &ArenaState) -> Result<(u64, u64), StepError> {
    let pages = s.pages.unwrap_or(a.pages);
    let len = pages_to_bytes("pages", pages).map_err(bounds::error)?;
    let offset = pages_to_bytes("offset_pages", s.offset_pages).map_err(bounds::error)?;
    if s.expect.errno.is_none() {
        if s.offset_pages != 0 {
            return Err(StepError::Error(format!(
                "offset_pages {} must be 0 unless the step expects an errno: the kernel maps only offset 0, and page numbers count from the arena's start",
                s.offset_pages
            )));
        }
        if pages == 0 || pages > a.pages {
            return Err(StepError::Error(format!(
                "pages {pages} must be 1..={} (the size of arena `{}`) unless the step expects an errno",
                a.pages, s.arena
            )));
        }
    }
    Ok((len, offset))
}

/// `mmap:` step.
pub fn mmap(ctx: &mut Ctx, s: &MmapStep) -> StepResult {
    let a = ctx.arena(&s.arena)?.clone();
    let (len, offset) = check_mmap(s, &a)?;
    let addr = if s.same_address {
        a.addr.ok_or_else(|| {
            StepError::Error(format!("arena `{}` has no address yet to map at", s.arena))
        })?
    } else {
        // An arena never mapped yet knows an address only from its
        // `map_extra`, which the kernel wants as the hint (EINVAL else).
        let map_extra = (a.mapped_pages == 0).then_some(a.addr).flatten();
        s.addr.or(map_extra).unwrap_or(0)
    };
    let mut flags = if s.private {
        libc::MAP_PRIVATE
    } else {
        libc::MAP_SHARED
    };
    if s.fixed || s.same_address {
        flags |= libc::MAP_FIXED;
        // MAP_FIXED replaces whatever is there: only free addresses or this
        // arena's own mapping.
        let end = addr.checked_add(len).ok_or_else(|| {
            StepError::Error(format!("mmap at {addr:#x} of {len:#x} bytes wraps around"))
        })?;
        let maps = std::fs::read_to_string("/proc/self/maps")
            .map_err(|e| StepError::Error(format!("/proc/self/maps: {e}")))?;
        let vmas = bounds::parse_maps(&maps);
        if let Some(v) = bounds::foreign_overlap(&vmas, &(addr..end), &bounds::own_ranges(&a)) {
            return Err(StepError::Error(format!(
                "mmap with MAP_FIXED at {addr:#x}..{end:#x} would replace other memory of the agent ({}); refusing",
                v.line
            )));
        }
    }
    let result = map(a.fd, addr, len, flags, offset);
    let what = format!(
        "mmap(addr={addr:#x}, len={len:#x}, {}{}, offset={offset:#x})",
        if s.private {
            "MAP_PRIVATE"
        } else {
            "MAP_SHARED"
        },
        if flags & libc::MAP_FIXED != 0 {
            "|MAP_FIXED"
        } else {
            ""
        },
    );
    if let Ok(p) = result {
        if offset != 0 {
            // Only a step expecting an errno gets here, and it fails below;
            // page numbers assume offset 0, so do not keep such a mapping.
            // SAFETY: unmapping the mapping just made.
            unsafe { libc::munmap(p as *mut libc::c_void, len as usize) };
        } else {
            let st = ctx.arena_mut(&s.arena)?;
            st.addr = Some(p);
            st.mapped_pages = len / PAGE_SIZE;
            st.mapped = PageSet::prefix(len / PAGE_SIZE);
        }
    }
    match check_errno(&what, result, &s.expect)? {
        None => Ok(Outcome::said(format!("{what}: refused as expected"))),
        Some(p) => Ok(Outcome::said(format!("{what} = {p:#x}"))),
    }
}

/// The arena's address and its state, if this process has it mapped.
fn mapped(ctx: &Ctx, arena: &str) -> Result<(u64, ArenaState), StepError> {
    let a = ctx.arena(arena)?;
    match (a.is_mapped(), a.addr) {
        (true, Some(addr)) => Ok((addr, a.clone())),
        _ => Err(StepError::Error(format!(
            "arena `{arena}` is not mapped in this process"
        ))),
    }
}

/// A `threads:` worker must not take the mapping from its siblings.
fn not_in_threads(ctx: &Ctx, what: &str) -> Result<(), StepError> {
    if ctx.shared_mm {
        return Err(StepError::Error(format!(
            "{what} is not allowed inside threads: it would change the mapping under the other threads of the process"
        )));
    }
    Ok(())
}

/// `munmap:` step.
pub fn munmap(ctx: &mut Ctx, s: &MunmapStep) -> StepResult {
    not_in_threads(ctx, "munmap")?;
    let (base, a) = mapped(ctx, &s.arena)?;
    // Default: from `page` to the end of the mapping.
    let count = s.pages.unwrap_or(a.mapped_pages.saturating_sub(s.page));
    let range = arena_range(&s.arena, a.pages, s.page, count).map_err(bounds::error)?;
    bounds::check_free(&s.arena, &a, &a.mapped.holes(&range), "munmap")?;
    let addr = a.addr_of(s.page, 0).ok_or_else(|| {
        StepError::Error(format!(
            "page {} of arena `{}` has no address",
            s.page, s.arena
        ))
    })?;
    let len = pages_to_bytes("pages", count).map_err(bounds::error)?;
    // SAFETY: unmapping (part of) an arena mapping this process made, or
    // free addresses (checked above); no Rust references into it exist.
    let rc = unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) };
    let result = if rc == 0 { Ok(()) } else { Err(errno()) };
    if result.is_ok() {
        ctx.arena_mut(&s.arena)?.mapped.remove(range);
    }
    let what = format!("munmap({addr:#x}, {count} pages) of the mapping at {base:#x}");
    match check_errno(&what, result, &s.expect)? {
        None => Ok(Outcome::said(format!("{what}: refused as expected"))),
        Some(()) => Ok(Outcome::said(format!("{what}: done"))),
    }
}

/// `destroy:` step: unmap every range this process has mapped of the
/// arena, close its map fd, and forget it.
pub fn destroy(ctx: &mut Ctx, s: &DestroyStep) -> StepResult {
    not_in_threads(ctx, "destroy")?;
    let a = ctx.arena(&s.arena)?.clone();
    let mut unmapped = 0;
    for r in a.mapped.ranges() {
        let (Some(addr), Ok(len)) = (
            a.addr_of(r.start, 0),
            pages_to_bytes("pages", r.end - r.start),
        ) else {
            return Err(StepError::Error(format!(
                "arena `{}`: pages {r:?} have no address",
                s.arena
            )));
        };
        // SAFETY: a range this process mapped of the arena (its PageSet);
        // no Rust references into it exist.
        if unsafe { libc::munmap(addr as *mut libc::c_void, len as usize) } != 0 {
            return Err(StepError::Error(format!(
                "munmap({addr:#x}, {} pages) of arena `{}`: errno {}",
                r.end - r.start,
                s.arena,
                errno()
            )));
        }
        unmapped += r.end - r.start;
    }
    // SAFETY: the arena's map fd, owned by this process's state, closed once.
    unsafe { libc::close(a.fd) };
    ctx.arenas.remove(&s.arena);
    let held = if ctx.objects.is_empty() {
        ""
    } else {
        " (a loaded BPF object may still hold the map)"
    };
    Ok(Outcome::said(format!(
        "arena `{}`: {unmapped} pages unmapped, fd {} closed{held}",
        s.arena, a.fd
    )))
}

/// `mremap:` step.
pub fn mremap(ctx: &mut Ctx, s: &MremapStep) -> StepResult {
    not_in_threads(ctx, "mremap")?;
    let (base, a) = mapped(ctx, &s.arena)?;
    let pages = a.mapped_pages;
    let old_len = pages_to_bytes("pages", pages).map_err(bounds::error)?;
    let new_len = pages_to_bytes("pages", s.pages).map_err(bounds::error)?;
    if s.expect.errno.is_none() && (s.pages == 0 || s.pages > a.pages) {
        return Err(StepError::Error(format!(
            "pages {} must be 1..={} (the size of arena `{}`) unless the step expects an errno",
            s.pages, a.pages, s.arena
        )));
    }
    let flags = if s.may_move { libc::MREMAP_MAYMOVE } else { 0 };
    // SAFETY: remapping an arena mapping this process made; without
    // MREMAP_FIXED the kernel never moves or grows it over other mappings.
    let p = unsafe {
        libc::mremap(
            base as *mut libc::c_void,
            old_len as usize,
            new_len as usize,
            flags,
        )
    };
    let result = if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p as u64)
    };
    if let Ok(p) = result {
        let st = ctx.arena_mut(&s.arena)?;
        st.addr = Some(p);
        st.mapped_pages = s.pages;
        st.mapped = PageSet::prefix(s.pages);
    }
    let what = format!("mremap({base:#x}, {pages} -> {} pages)", s.pages);
    match check_errno(&what, result, &s.expect)? {
        None => Ok(Outcome::said(format!("{what}: refused as expected"))),
        Some(p) => Ok(Outcome::said(format!("{what} = {p:#x}"))),
    }
}

/// `madvise:` step.
pub fn madvise(ctx: &mut Ctx, s: &MadviseStep) -> StepResult {
    let (_, a) = mapped(ctx, &s.arena)?;
    let advice = match s.advice {
        Advice::Dontneed => libc::MADV_DONTNEED,
        Advice::Dontfork => libc::MADV_DONTFORK,
        Advice::Dofork => libc::MADV_DOFORK,
    };
    let range = arena_range(&s.arena, a.pages, s.page, s.pages).map_err(bounds::error)?;
    let holes = a.mapped.holes(&range);
    if !holes.is_empty() {
        if s.expect.errno.is_none() {
            let e = a
                .mapped
                .check_mapped(&s.arena, s.page, s.pages)
                .expect_err("holes mean unmapped pages");
            return Err(StepError::Error(format!(
                "{e}; madvise fails there with ENOMEM (say so with expect: {{ errno: ENOMEM }})"
            )));
        }
        bounds::check_free(&s.arena, &a, &holes, "madvise")?;
    }
    let addr = a.addr_of(s.page, 0).ok_or_else(|| {
        StepError::Error(format!(
            "page {} of arena `{}` has no address",
            s.page, s.arena
        ))
    })?;
    let len = pages_to_bytes("pages", s.pages).map_err(bounds::error)?;
    // SAFETY: madvise on an arena mapping this process made, or on free
    // addresses (checked above).
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, advice) };
    let result = if rc == 0 { Ok(()) } else { Err(errno()) };
    let what = format!("madvise({addr:#x}, {} pages, {:?})", s.pages, s.advice);
    match check_errno(&what, result, &s.expect)? {
        None => Ok(Outcome::said(format!("{what}: refused as expected"))),
        Some(()) => Ok(Outcome::said(format!("{what}: done"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::bounds::testing::{fake_arena, ID};
    use arena_protocol::scenario::{Errno, SyscallExpect};

    fn errno(e: Errno) -> SyscallExpect {
        SyscallExpect { errno: Some(e) }
    }

    fn mmap_step(pages: Option<u64>, offset_pages: u64, expect: SyscallExpect) -> MmapStep {
        MmapStep {
            arena: ID.into(),
            addr: None,
            same_address: false,
            fixed: false,
            pages,
            offset_pages,
            private: false,
            expect,
        }
    }

    fn munmap_step(page: u64, pages: Option<u64>) -> MunmapStep {
        MunmapStep {
            arena: ID.into(),
            page,
            pages,
            expect: SyscallExpect::default(),
        }
    }

    fn madvise_step(page: u64, pages: u64, expect: SyscallExpect) -> MadviseStep {
        MadviseStep {
            arena: ID.into(),
            page,
            pages,
            advice: Advice::Dontneed,
            expect,
        }
    }

    fn error_text(r: Result<impl std::fmt::Debug, StepError>) -> String {
        match r {
            Err(StepError::Error(t)) => t,
            other => panic!("expected a step error, got {other:?}"),
        }
    }

    #[test]
    fn mmap_lengths_and_offsets_fit_the_arena() {
        let (ctx, _) = fake_arena(10, 32, 0);
        let a = &ctx.arenas[ID];
        let ok = SyscallExpect::default();
        assert_eq!(
            check_mmap(&mmap_step(None, 0, ok.clone()), a),
            Ok((32 * 4096, 0))
        );
        assert!(check_mmap(&mmap_step(Some(16), 0, ok.clone()), a).is_ok());
        let e = error_text(check_mmap(&mmap_step(Some(33), 0, ok.clone()), a));
        assert!(e.starts_with("pages 33 must be 1..=32"), "{e}");
        assert!(check_mmap(&mmap_step(Some(0), 0, ok.clone()), a).is_err());
        let e = error_text(check_mmap(&mmap_step(None, 1, ok), a));
        assert!(e.starts_with("offset_pages 1 must be 0"), "{e}");
        // Probes of the kernel's checks may ask for anything that fits u64.
        assert!(check_mmap(&mmap_step(Some(33), 1, errno(Errno::EINVAL)), a).is_ok());
        let e = error_text(check_mmap(
            &mmap_step(Some(u64::MAX), 0, errno(Errno::EINVAL)),
            a,
        ));
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn map_fixed_never_replaces_other_memory() {
        let (mut ctx, base) = fake_arena(11, 32, 0);
        // SAFETY: a fresh mapping at a free address of the test region.
        let p = unsafe {
            libc::mmap(
                (base + 4 * PAGE_SIZE) as *mut libc::c_void,
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(p as u64, base + 4 * PAGE_SIZE);
        let mut s = mmap_step(None, 0, SyscallExpect::default());
        s.same_address = true;
        let e = error_text(mmap(&mut ctx, &s));
        assert!(e.contains("would replace other memory"), "{e}");
        assert!(!ctx.arenas[ID].is_mapped());
        // Over its own mapping (a remap at the same address) is fine.
        let (mut ctx, base) = fake_arena(12, 32, 32);
        mmap(&mut ctx, &s).unwrap();
        assert_eq!(ctx.arenas[ID].addr, Some(base));
        assert_eq!(ctx.arenas[ID].mapped, PageSet::prefix(32));
    }

    #[test]
    fn munmap_ranges_are_checked_and_tracked() {
        let (mut ctx, _) = fake_arena(13, 32, 32);
        let e = error_text(munmap(&mut ctx, &munmap_step(30, Some(4))));
        assert_eq!(e, "pages 30..34 run past the end of arena `a` (32 pages)");
        let e = error_text(munmap(&mut ctx, &munmap_step(40, None)));
        assert!(e.contains("page 40 is outside"), "{e}");
        munmap(&mut ctx, &munmap_step(8, Some(2))).unwrap();
        assert_eq!(ctx.arenas[ID].mapped.ranges(), &[0..8, 10..32]);
        // Threads share the mapping: no unmapping from one of them.
        let mut t = ctx.clone_for_thread(1);
        assert!(error_text(munmap(&mut t, &munmap_step(0, None))).contains("inside threads"));
        // The default is the rest of the mapping; the hole is free space.
        munmap(&mut ctx, &munmap_step(0, None)).unwrap();
        assert!(!ctx.arenas[ID].is_mapped());
        let e = error_text(munmap(&mut ctx, &munmap_step(0, None)));
        assert!(e.contains("not mapped in this process"), "{e}");
    }

    #[test]
    fn madvise_and_mremap_ranges() {
        let (mut ctx, _) = fake_arena(14, 32, 16);
        let ok = SyscallExpect::default();
        let e = error_text(madvise(&mut ctx, &madvise_step(31, 2, ok.clone())));
        assert_eq!(e, "pages 31..33 run past the end of arena `a` (32 pages)");
        let e = error_text(madvise(&mut ctx, &madvise_step(15, 2, ok.clone())));
        assert!(
            e.starts_with("pages 15..17 of arena `a` are not mapped"),
            "{e}"
        );
        madvise(&mut ctx, &madvise_step(0, 16, ok)).unwrap();
        // Probing the kernel's ENOMEM on free addresses is allowed.
        madvise(&mut ctx, &madvise_step(15, 2, errno(Errno::ENOMEM))).unwrap();
        let s = MremapStep {
            arena: ID.into(),
            pages: 64,
            may_move: false,
            expect: SyscallExpect::default(),
        };
        let e = error_text(mremap(&mut ctx, &s));
        assert!(e.starts_with("pages 64 must be 1..=32"), "{e}");
    }
}
