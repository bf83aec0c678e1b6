//! `mmap:`, `munmap:`, `mremap:`, `madvise:` on an arena's user mapping.

use arena_protocol::scenario::{Advice, MadviseStep, MmapStep, MremapStep, MunmapStep, PAGE_SIZE};

use super::check_errno;
use crate::executor::{Ctx, Outcome, StepError, StepResult};
use crate::sys::errno;

/// Map `len` bytes of the arena `fd` at `addr` (0 = anywhere).
pub fn map(fd: i32, addr: u64, len: u64, flags: i32, offset: u64) -> Result<u64, i32> {
    // SAFETY: mmap of a map fd; the kernel validates every argument.
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

/// `mmap:` step.
pub fn mmap(ctx: &mut Ctx, s: &MmapStep) -> StepResult {
    let a = ctx.arena(&s.arena)?.clone();
    let len = s.pages.unwrap_or(a.pages) * PAGE_SIZE;
    let addr = if s.same_address {
        a.addr.ok_or_else(|| {
            StepError::Error(format!("arena `{}` has no address yet to map at", s.arena))
        })?
    } else {
        s.addr.unwrap_or(0)
    };
    let mut flags = if s.private {
        libc::MAP_PRIVATE
    } else {
        libc::MAP_SHARED
    };
    if s.fixed || s.same_address {
        flags |= libc::MAP_FIXED;
    }
    let result = map(a.fd, addr, len, flags, s.offset_pages * PAGE_SIZE);
    let what = format!(
        "mmap(addr={addr:#x}, len={len:#x}, {}{}, offset={:#x})",
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
        s.offset_pages * PAGE_SIZE
    );
    match check_errno(&what, result, &s.expect)? {
        None => Ok(Outcome::said(format!("{what}: refused as expected"))),
        Some(p) => {
            let st = ctx.arena_mut(&s.arena)?;
            st.addr = Some(p);
            st.mapped = true;
            st.mapped_pages = len / PAGE_SIZE;
            Ok(Outcome::said(format!("{what} = {p:#x}")))
        }
    }
}

fn mapped_base(ctx: &Ctx, arena: &str) -> Result<(u64, u64), StepError> {
    let a = ctx.arena(arena)?;
    match (a.mapped, a.addr) {
        (true, Some(addr)) => Ok((addr, a.mapped_pages)),
        _ => Err(StepError::Error(format!(
            "arena `{arena}` is not mapped in this process"
        ))),
    }
}

/// `munmap:` step.
pub fn munmap(ctx: &mut Ctx, s: &MunmapStep) -> StepResult {
    let (base, pages) = mapped_base(ctx, &s.arena)?;
    let count = s.pages.unwrap_or(pages.saturating_sub(s.page));
    let addr = base + s.page * PAGE_SIZE;
    // SAFETY: unmapping (part of) an arena mapping this process made; no Rust
    // references into it exist.
    let rc = unsafe { libc::munmap(addr as *mut libc::c_void, (count * PAGE_SIZE) as usize) };
    let result = if rc == 0 { Ok(()) } else { Err(errno()) };
    let what = format!("munmap({addr:#x}, {} pages)", count);
    match check_errno(&what, result, &s.expect)? {
        None => Ok(Outcome::said(format!("{what}: refused as expected"))),
        Some(()) => {
            if s.page == 0 && count >= pages {
                ctx.arena_mut(&s.arena)?.mapped = false;
            }
            Ok(Outcome::said(format!("{what}: done")))
        }
    }
}

/// `mremap:` step.
pub fn mremap(ctx: &mut Ctx, s: &MremapStep) -> StepResult {
    let (base, pages) = mapped_base(ctx, &s.arena)?;
    let flags = if s.may_move { libc::MREMAP_MAYMOVE } else { 0 };
    // SAFETY: remapping an arena mapping this process made.
    let p = unsafe {
        libc::mremap(
            base as *mut libc::c_void,
            (pages * PAGE_SIZE) as usize,
            (s.pages * PAGE_SIZE) as usize,
            flags,
        )
    };
    let result = if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p as u64)
    };
    let what = format!("mremap({base:#x}, {pages} -> {} pages)", s.pages);
    match check_errno(&what, result, &s.expect)? {
        None => Ok(Outcome::said(format!("{what}: refused as expected"))),
        Some(p) => {
            let st = ctx.arena_mut(&s.arena)?;
            st.addr = Some(p);
            st.mapped_pages = s.pages;
            Ok(Outcome::said(format!("{what} = {p:#x}")))
        }
    }
}

/// `madvise:` step.
pub fn madvise(ctx: &mut Ctx, s: &MadviseStep) -> StepResult {
    let (base, _) = mapped_base(ctx, &s.arena)?;
    let advice = match s.advice {
        Advice::Dontneed => libc::MADV_DONTNEED,
        Advice::Dontfork => libc::MADV_DONTFORK,
        Advice::Dofork => libc::MADV_DOFORK,
    };
    let addr = base + s.page * PAGE_SIZE;
    // SAFETY: madvise on an arena mapping this process made.
    let rc = unsafe {
        libc::madvise(
            addr as *mut libc::c_void,
            (s.pages * PAGE_SIZE) as usize,
            advice,
        )
    };
    let result = if rc == 0 { Ok(()) } else { Err(errno()) };
    let what = format!("madvise({addr:#x}, {} pages, {:?})", s.pages, s.advice);
    match check_errno(&what, result, &s.expect)? {
        None => Ok(Outcome::said(format!("{what}: refused as expected"))),
        Some(()) => Ok(Outcome::said(format!("{what}: done"))),
    }
}
