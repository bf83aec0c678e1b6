//! `touch:` read or write arena pages from user space. Accesses expected to
//! kill the process run in a forked child, which maps the arena again at the
//! same address when this process has it mapped (arena mappings are
//! `VM_DONTCOPY`, so a fork does not inherit them).
//!
//! Bounds: every page must be inside the arena (else a step error). A page
//! inside the arena that this process does not have mapped (never mapped, a
//! forked worker, unmapped, beyond a shorter mmap) is accessed only by a
//! touch that expects a signal, as a fault probe, and only while nothing
//! else of the agent's lives at its address; any other touch of it is a
//! step error. So no access ever lands in the agent's own memory.

use std::ops::Range;

use arena_protocol::scenario::{
    arena_range, check_page_offset, page_pattern, AccessOp, PageOrder, PageSet, TouchStep,
    PAGE_SIZE,
};
use arena_protocol::seed;

use super::bounds;
use super::mapping::map;
use super::{ArenaState, Ctx, Outcome, StepError, StepResult};
use crate::sys;
use crate::worker;

/// Exit code of a touch child whose values did not match.
const CHILD_MISMATCH: i32 = 1;
/// Exit code of a touch child that could not map the arena again.
const CHILD_REMAP_FAILED: i32 = 100;
/// Exit code of a touch child that found other memory where it was to probe
/// an unmapped arena page.
const CHILD_NOT_FREE: i32 = 101;

/// The value a write stores into `page`.
fn write_value(s: &TouchStep, page: u64) -> u64 {
    s.value.unwrap_or_else(|| page_pattern(page))
}

/// The address of the u64 `touch` accesses in `page` (checked by [`plan`]).
fn slot(base: u64, page: u64, offset: u64) -> u64 {
    base + page * PAGE_SIZE + offset
}

/// Most pages of a shuffled order recorded in the step's data (the seed
/// regenerates the rest): keeps events and worker reports small.
const RECORDED_PAGES: usize = 256;

/// The pages in the order a touch visits them: `shuffled` (non-empty) as
/// drawn, else `page..page + count`.
fn visit<'a>(s: &TouchStep, shuffled: &'a [u64]) -> impl Iterator<Item = u64> + 'a {
    let sequential = if shuffled.is_empty() {
        s.page..s.page + s.count
    } else {
        0..0
    };
    shuffled.iter().copied().chain(sequential)
}

/// Draw the page order of a `shuffled` touch from the process's seed and
/// record it in `ctx.choices`; empty for a sequential touch. Called after
/// [`plan`] has checked `page..page + count`.
fn draw_order(ctx: &mut Ctx, s: &TouchStep) -> Vec<u64> {
    if s.order != PageOrder::Shuffled {
        return Vec::new();
    }
    let seed = ctx.draw();
    let order: Vec<u64> = seed::permutation(seed, s.count as usize)
        .into_iter()
        .map(|i| s.page + i as u64)
        .collect();
    ctx.choices.push(serde_json::json!({
        "step": "touch",
        "arena": s.arena,
        "seed": seed,
        "order": &order[..order.len().min(RECORDED_PAGES)],
        "pages": s.count,
    }));
    order
}

/// Do the accesses in `order` (see [`visit`]); returns what was done and
/// how many reads an `any_of` accepted through a later alternative (see
/// `TouchExpect::raced_read`), or the first mismatch as text. [`plan`] has
/// checked every address.
fn access(s: &TouchStep, base: u64, order: &[u64]) -> Result<(String, u64), String> {
    let mut last = 0;
    let mut raced = 0;
    for page in visit(s, order) {
        let ptr = slot(base, page, s.offset) as *mut u64;
        match s.op {
            AccessOp::Write => {
                // SAFETY: `plan` checked the page is inside the arena and,
                // unless this is a fault probe in a forked child, mapped
                // here; a fault is the behaviour under test and is caught by
                // the crash reporter or the forked child.
                unsafe { std::ptr::write_volatile(ptr, write_value(s, page)) };
            }
            AccessOp::Read => {
                // SAFETY: the same bounds and fault handling as the write above.
                let got = unsafe { std::ptr::read_volatile(ptr) };
                last = got;
                raced += u64::from(s.expect.raced_read(page, got));
                if !s.expect.accepts_read(page, got) {
                    return Err(format!(
                        "page {page} offset {:#x}: expected {}, read {got:#x}",
                        s.offset,
                        s.expect.describe(page)
                    ));
                }
            }
        }
    }
    let text = match s.op {
        AccessOp::Write => format!("wrote {} page(s) from page {}", s.count, s.page),
        AccessOp::Read => format!(
            "read {} page(s) from page {} (last value {last:#x})",
            s.count, s.page
        ),
    };
    Ok((text, raced))
}

/// How a touch runs, once its bounds are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The arena's user address.
    pub base: u64,
    /// The pages accessed.
    pub pages: Range<u64>,
    /// In a forked child that survives a fault (expected signal,
    /// `segv_on_fault` arena, pages not mapped here); else in this process.
    pub in_child: bool,
    /// Accessed pages not mapped here: fault probes, which need free
    /// addresses.
    pub unmapped: Vec<Range<u64>>,
}

/// Check a touch against its arena and this process's mapping, and decide
/// how it runs. Every problem is a step error naming the value and the
/// bound; nothing has been accessed yet.
pub fn plan(s: &TouchStep, a: &ArenaState) -> Result<Plan, StepError> {
    check_page_offset(s.offset).map_err(bounds::error)?;
    if s.count == 0 {
        return Err(StepError::Error("count must be at least 1".into()));
    }
    if s.op == AccessOp::Write && s.expect.expects_values() {
        return Err(StepError::Error(
            "a write cannot expect a read value".into(),
        ));
    }
    let pages = arena_range(&s.arena, a.pages, s.page, s.count).map_err(bounds::error)?;
    let base = a.addr.ok_or_else(|| {
        StepError::Error(format!(
            "arena `{}` has no user address (mmap it first)",
            s.arena
        ))
    })?;
    // The last byte accessed must have an address (no wrap-around).
    if a.addr_of(pages.end - 1, s.offset + 8).is_none() {
        return Err(StepError::Error(format!(
            "page {} of arena `{}` at {base:#x} is beyond the address space",
            pages.end - 1,
            s.arena
        )));
    }
    let unmapped = a.mapped.holes(&pages);
    if !unmapped.is_empty() && s.expect.accepted_signals().is_empty() {
        let e = a
            .mapped
            .check_mapped(&s.arena, s.page, s.count)
            .expect_err("holes mean unmapped pages");
        return Err(StepError::Error(format!(
            "{e}; only a touch that expects (or accepts) a signal may access it"
        )));
    }
    // A signal an `any_of` accepts is survived the same way.
    let in_child = !s.expect.accepted_signals().is_empty()
        || a.flags & sys::BPF_F_SEGV_ON_FAULT != 0
        || !unmapped.is_empty();
    Ok(Plan {
        base,
        pages,
        in_child,
        unmapped,
    })
}

/// `touch:` step.
pub fn touch(ctx: &mut Ctx, s: &TouchStep) -> StepResult {
    let a = ctx.arena(&s.arena)?.clone();
    let plan = plan(s, &a)?;
    if plan.in_child && ctx.shared_mm {
        return Err(StepError::Error(format!(
            "touch at page {} needs a forked child ({}), which cannot be made while the threads of a `threads:` step run (the agent forks only while it has a single thread)",
            s.page,
            why_in_child(s, &a, &plan)
        )));
    }
    let order = draw_order(ctx, s);
    if plan.in_child {
        return touch_in_child(ctx, s, &a, &plan, &order);
    }
    let (text, raced) = access(s, plan.base, &order).map_err(StepError::Fail)?;
    ctx.raced_reads += raced;
    Ok(Outcome::said(text))
}

/// Why a touch runs in a forked child (see [`Plan::in_child`]).
fn why_in_child(s: &TouchStep, a: &ArenaState, plan: &Plan) -> String {
    if !s.expect.accepted_signals().is_empty() {
        "its expect accepts a signal".into()
    } else if a.flags & sys::BPF_F_SEGV_ON_FAULT != 0 {
        format!("arena `{}` is segv_on_fault", s.arena)
    } else {
        let unmapped = plan.unmapped.iter().fold(PageSet::new(), |mut set, r| {
            set.insert(r.clone());
            set
        });
        format!("pages {unmapped} are not mapped here")
    }
}

fn touch_in_child(
    ctx: &mut Ctx,
    s: &TouchStep,
    a: &ArenaState,
    plan: &Plan,
    order: &[u64],
) -> StepResult {
    let base = plan.base;
    // An expected signal must come from the first access, in visiting order.
    let first_page = visit(s, order).next().unwrap_or(s.page);
    let first = slot(base, first_page, s.offset);
    // What the child maps again: the mapping's whole length, then the holes
    // this process has in it are unmapped again so the child sees the same.
    let remap = if a.is_mapped() {
        let len = a.mapped_pages.checked_mul(PAGE_SIZE).ok_or_else(|| {
            StepError::Error(format!("mapping of {} pages overflows", a.mapped_pages))
        })?;
        let holes = a.mapped.holes(&(0..a.mapped_pages));
        bounds::check_free(
            &s.arena,
            a,
            &holes,
            "touch (mapping the arena again in a child)",
        )?;
        Some((len, holes))
    } else {
        None
    };
    // The probed pages must hold nothing else (checked again in the child).
    bounds::check_free(&s.arena, a, &plan.unmapped, "touch")?;
    // The child only maps, touches, reports and exits.
    let child = worker::spawn(|text_tx| {
        if let Some((len, holes)) = &remap {
            let flags = libc::MAP_SHARED | libc::MAP_FIXED;
            let mut ok = map(a.fd, base, *len, flags, 0).is_ok();
            for h in holes {
                // SAFETY: unmapping part of the mapping this child just made.
                ok &= unsafe {
                    libc::munmap(
                        slot(base, h.start, 0) as *mut libc::c_void,
                        ((h.end - h.start) * PAGE_SIZE) as usize,
                    )
                } == 0;
            }
            if !ok {
                // SAFETY: _exit has no preconditions; the forked child skips
                // destructors that belong to the parent's state.
                unsafe { libc::_exit(CHILD_REMAP_FAILED) };
            }
        }
        // Last check before a probe: its pages must still be free.
        for page in plan.unmapped.iter().flat_map(Clone::clone) {
            if !bounds::page_unmapped(slot(base, page, 0)) {
                // SAFETY: as for CHILD_REMAP_FAILED above.
                unsafe { libc::_exit(CHILD_NOT_FREE) };
            }
        }
        // Raced reads in the child are not counted (its counters die with it).
        let (code, text) = match access(s, base, order) {
            Ok((t, _)) => (0, t),
            Err(t) => (CHILD_MISMATCH, t),
        };
        // SAFETY: `text` is live and holds `text.len()` initialised bytes.
        unsafe { libc::write(text_tx, text.as_ptr().cast(), text.len()) };
        code
    })
    .map_err(|e| StepError::Error(format!("fork: {e}")))?;
    let status = sys::wait_child(child.pid, ctx.deadline);
    let fault = child.fault();
    let text = String::from_utf8_lossy(&child.output()).into_owned();
    let Some(status) = status else {
        return Err(StepError::Fail(format!(
            "the access at {first:#x} did not finish in time"
        )));
    };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == CHILD_NOT_FREE {
        return Err(StepError::Error(format!(
            "touch: an unmapped page of arena `{}` in {} was taken by other memory of the agent before the probe; refusing to access it",
            s.arena,
            plan.unmapped.iter().fold(PageSet::new(), |mut set, r| {
                set.insert(r.clone());
                set
            })
        )));
    }
    let killed_by = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    let fault_text = |sig: i32| {
        let at = fault.map(|f| format!(" at {f:#x}")).unwrap_or_default();
        format!("{}{at}", sys::signal_name(sig))
    };
    // Which page came first matters to an expected fault: say when drawn.
    let drawn = if order.is_empty() {
        String::new()
    } else {
        format!(" (page {first_page}, first in the shuffled order)")
    };
    // A signal an `any_of` accepts: the race went that way; counted for
    // the worker's report (`signals`).
    let accepted = s
        .expect
        .accepted_signals()
        .into_iter()
        .find(|a| Some(a.number()) == killed_by);
    if let (None, Some(sig)) = (s.expect.signal, accepted) {
        *ctx.signals.entry(sig).or_default() += 1;
        return Ok(Outcome::said(format!(
            "{}, accepted by any_of",
            fault_text(sig.number())
        )));
    }
    match (s.expect.signal, killed_by) {
        (Some(want), Some(got)) if got == want.number() => match fault {
            Some(addr) if addr != first => Err(StepError::Fail(format!(
                "expected {} at {first:#x}{drawn}, got it at {addr:#x}",
                sys::signal_name(got)
            ))),
            _ => {
                *ctx.signals.entry(want).or_default() += 1;
                Ok(Outcome::said(format!(
                    "{} (page {first_page}) as expected",
                    fault_text(got),
                )))
            }
        },
        (Some(want), _) if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 => {
            Err(StepError::Fail(format!(
                "expected {} at {first:#x}, but the access succeeded ({text})",
                sys::signal_name(want.number())
            )))
        }
        (Some(want), _) => Err(StepError::Fail(format!(
            "expected {} at {first:#x}, but {}",
            sys::signal_name(want.number()),
            describe(status, &text)
        ))),
        (None, Some(got)) => Err(StepError::Fail(format!(
            "expected the access at {first:#x} to succeed, got {}",
            fault_text(got)
        ))),
        (None, None) if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 => {
            Ok(Outcome::said(text))
        }
        (None, None) => Err(StepError::Fail(describe(status, &text))),
    }
}

fn describe(status: i32, text: &str) -> String {
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == CHILD_REMAP_FAILED {
        "the child could not map the arena again at the same address".into()
    } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == CHILD_MISMATCH {
        text.to_owned()
    } else {
        sys::describe_status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::bounds::testing::{backing, fake_arena, ID};
    use crate::worker::testing::in_single_threaded_child;
    use arena_protocol::scenario::{PageSet, Signal, TouchExpect};

    fn step(page: u64, count: u64, op: AccessOp) -> TouchStep {
        TouchStep {
            arena: ID.into(),
            page,
            count,
            offset: 0,
            op,
            value: None,
            order: PageOrder::Sequential,
            expect: TouchExpect::default(),
        }
    }

    fn probe(page: u64) -> TouchStep {
        let mut s = step(page, 1, AccessOp::Read);
        s.expect.signal = Some(Signal::SIGSEGV);
        s
    }

    fn arena(pages: u64, mapped: PageSet) -> ArenaState {
        ArenaState {
            fd: -1,
            pages,
            flags: 0,
            addr: Some(0x1_0000_0000),
            mapped_pages: mapped.end(),
            mapped,
        }
    }

    fn error_text(r: Result<impl std::fmt::Debug, StepError>) -> String {
        match r {
            Err(StepError::Error(t)) => t,
            other => panic!("expected a step error, got {other:?}"),
        }
    }

    #[test]
    fn plan_refuses_pages_outside_the_arena() {
        let a = arena(32, PageSet::prefix(32));
        let e = error_text(plan(&step(100, 1, AccessOp::Write), &a));
        assert_eq!(e, "page 100 is outside arena `a` (32 pages)");
        let e = error_text(plan(&step(32, 1, AccessOp::Write), &a));
        assert_eq!(e, "page 32 is outside arena `a` (32 pages)");
        let e = error_text(plan(&step(30, 4, AccessOp::Read), &a));
        assert_eq!(e, "pages 30..34 run past the end of arena `a` (32 pages)");
        // Even as a fault probe: outside the arena is never arena memory.
        let e = error_text(plan(&probe(32), &a));
        assert!(e.contains("outside arena"), "{e}");
        assert!(plan(&step(1, u64::MAX, AccessOp::Read), &a).is_err());
        assert!(plan(&step(u64::MAX, 2, AccessOp::Read), &a).is_err());
        let ok = plan(&step(28, 4, AccessOp::Write), &a).unwrap();
        assert_eq!(ok.pages, 28..32);
        assert!(!ok.in_child);
    }

    #[test]
    fn plan_checks_offset_count_and_address() {
        let a = arena(32, PageSet::prefix(32));
        let mut s = step(0, 1, AccessOp::Read);
        s.offset = 0x1000;
        assert!(error_text(plan(&s, &a)).contains("offset 0x1000"));
        s.offset = 0xffc;
        assert!(plan(&s, &a).is_err());
        s.offset = 0xff8;
        assert!(plan(&s, &a).is_ok());
        assert!(error_text(plan(&step(0, 0, AccessOp::Read), &a)).contains("count"));
        let mut far = a.clone();
        far.addr = Some(!(PAGE_SIZE - 1));
        assert!(error_text(plan(&step(1, 1, AccessOp::Read), &far)).contains("address space"));
        let mut none = a;
        none.addr = None;
        assert!(error_text(plan(&step(1, 1, AccessOp::Read), &none)).contains("no user address"));
    }

    #[test]
    fn unmapped_pages_inside_the_arena_are_only_fault_probes() {
        // mmap of 16 pages of a 32-page arena, then pages 8..10 unmapped.
        let mut mapped = PageSet::prefix(16);
        mapped.remove(8..10);
        let a = arena(32, mapped);
        let e = error_text(plan(&step(20, 1, AccessOp::Write), &a));
        assert_eq!(
            e,
            "page 20 of arena `a` is not mapped in this process (mapped: pages 0..8, 10..16); only a touch that expects (or accepts) a signal may access it"
        );
        assert!(plan(&step(7, 2, AccessOp::Read), &a).is_err());
        let p = plan(&probe(20), &a).unwrap();
        assert!(p.in_child);
        assert_eq!(p.unmapped, vec![20..21]);
        let p = plan(&probe(9), &a).unwrap();
        assert_eq!(p.unmapped, vec![9..10]);
        // Nothing mapped here (a forked worker): still a probe.
        let p = plan(&probe(0), &arena(32, PageSet::new())).unwrap();
        assert_eq!(p.unmapped, vec![0..1]);
    }

    // The issue-10 false PASS, end to end on a memfd standing in for the
    // arena: page 100 of 32 is refused and nothing is written anywhere.
    #[test]
    fn touch_outside_the_arena_is_an_error_not_a_stray_write() {
        let (mut ctx, base) = fake_arena(0, 32, 32);
        let e = error_text(touch(&mut ctx, &step(100, 1, AccessOp::Write)));
        assert_eq!(e, "page 100 is outside arena `a` (32 pages)");
        assert!(bounds::page_unmapped(slot(base, 100, 0)));
        // In bounds: written through the mapping, seen in the backing file.
        touch(&mut ctx, &step(31, 1, AccessOp::Write)).unwrap();
        assert_eq!(backing(&ctx, 31, 0), page_pattern(31));
        let mut read = step(31, 1, AccessOp::Read);
        read.expect.pattern = true;
        touch(&mut ctx, &read).unwrap();
    }

    #[test]
    fn shorter_mapping_and_holes_fault_in_a_child() {
        in_single_threaded_child(shorter_mapping_and_holes_fault_in_a_child_body);
    }

    fn shorter_mapping_and_holes_fault_in_a_child_body() {
        let (mut ctx, base) = fake_arena(1, 32, 16);
        // Beyond the 16 mapped pages but inside the arena.
        let e = error_text(touch(&mut ctx, &step(20, 1, AccessOp::Write)));
        assert!(e.contains("not mapped in this process"), "{e}");
        let ok = touch(&mut ctx, &probe(20)).unwrap();
        assert!(ok.detail.contains("SIGSEGV"), "{}", ok.detail);
        // A hole punched into the mapping: the child reproduces it.
        // SAFETY: pages 8..10 lie inside the 16 pages `fake_arena` mapped at
        // `base` for this test only; no Rust reference points into them, and
        // `mapped` is updated right below so nothing touches them in-process.
        let rc = unsafe { libc::munmap(slot(base, 8, 0) as *mut libc::c_void, 2 * 4096) };
        assert_eq!(rc, 0);
        ctx.arenas.get_mut(ID).unwrap().mapped.remove(8..10);
        assert!(touch(&mut ctx, &step(9, 1, AccessOp::Read)).is_err());
        let ok = touch(&mut ctx, &probe(9)).unwrap();
        assert!(ok.detail.contains("SIGSEGV"), "{}", ok.detail);
        // Mapped pages around the hole still work, in a child too.
        let mut s = step(10, 1, AccessOp::Write);
        s.value = Some(0x5ca1ab1e);
        touch(&mut ctx, &s).unwrap();
        assert_eq!(backing(&ctx, 10, 0), 0x5ca1ab1e);
        let mut s = probe(7);
        s.op = AccessOp::Read;
        let e = touch(&mut ctx, &s).unwrap_err();
        assert!(e.text().contains("but the access succeeded"), "{e:?}");
    }

    #[test]
    fn shuffled_order_replays_from_the_seed_and_is_recorded() {
        let (mut ctx, _) = fake_arena(3, 32, 32);
        let mut s = step(4, 8, AccessOp::Write);
        s.order = PageOrder::Shuffled;
        touch(&mut ctx, &s).unwrap();
        let first = ctx.choices.clone();
        assert_eq!(first.len(), 1);
        let order: Vec<u64> = serde_json::from_value(first[0]["order"].clone()).unwrap();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (4..12).collect::<Vec<_>>());
        for p in 4..12 {
            assert_eq!(backing(&ctx, p, 0), page_pattern(p));
        }
        // The same seed draws the same order; the next draw a new seed.
        let (mut again, _) = fake_arena(4, 32, 32);
        touch(&mut again, &s).unwrap();
        assert_eq!(again.choices, first);
        touch(&mut again, &s).unwrap();
        assert_ne!(again.choices[1]["seed"], first[0]["seed"]);
        // Sequential touches record nothing.
        let (mut seq, _) = fake_arena(5, 32, 32);
        touch(&mut seq, &step(0, 4, AccessOp::Write)).unwrap();
        assert!(seq.choices.is_empty());
    }

    fn any_of(alts: &[TouchExpect]) -> TouchExpect {
        TouchExpect {
            any_of: alts.to_vec(),
            ..TouchExpect::default()
        }
    }

    #[test]
    fn any_of_accepts_each_page_by_one_alternative() {
        let (mut ctx, _) = fake_arena(6, 32, 32);
        let pattern = TouchExpect {
            pattern: true,
            ..TouchExpect::default()
        };
        let zero = TouchExpect {
            zero: true,
            ..TouchExpect::default()
        };
        // Page 1 written, page 0 and 2 still zero: "my write or a zero page".
        touch(&mut ctx, &step(1, 1, AccessOp::Write)).unwrap();
        let mut read = step(0, 3, AccessOp::Read);
        read.expect = any_of(&[pattern.clone(), zero.clone()]);
        touch(&mut ctx, &read).unwrap();
        // A value that is neither is a failure naming the alternatives.
        let mut w = step(2, 1, AccessOp::Write);
        w.value = Some(7);
        touch(&mut ctx, &w).unwrap();
        let e = touch(&mut ctx, &read).unwrap_err();
        assert!(
            matches!(&e, StepError::Fail(t) if t.contains("page 2") && t.contains("one of [")),
            "{e:?}"
        );
        // A write may not expect values, even among alternatives.
        let mut bad = step(0, 1, AccessOp::Write);
        bad.expect = any_of(&[zero]);
        assert!(error_text(plan(&bad, ctx.arena(ID).unwrap())).contains("a write"));
        assert!(ctx.signals.is_empty());
    }

    #[test]
    fn an_accepted_signal_passes_and_is_counted() {
        in_single_threaded_child(an_accepted_signal_passes_and_is_counted_body);
    }

    fn an_accepted_signal_passes_and_is_counted_body() {
        let (mut ctx, _) = fake_arena(7, 32, 16);
        let segv = TouchExpect {
            signal: Some(Signal::SIGSEGV),
            ..TouchExpect::default()
        };
        let zero = TouchExpect {
            zero: true,
            ..TouchExpect::default()
        };
        // Page 20 is not mapped: the read faults, which any_of accepts.
        let mut s = step(20, 1, AccessOp::Read);
        s.expect = any_of(&[zero.clone(), segv.clone()]);
        let ok = touch(&mut ctx, &s).unwrap();
        assert!(ok.detail.contains("accepted by any_of"), "{}", ok.detail);
        assert_eq!(ctx.signals.get(&Signal::SIGSEGV), Some(&1));
        // Page 3 is mapped and zero: the value alternative holds, in a child.
        let mut s = step(3, 1, AccessOp::Read);
        s.expect = any_of(&[zero, segv]);
        assert!(plan(&s, ctx.arena(ID).unwrap()).unwrap().in_child);
        touch(&mut ctx, &s).unwrap();
        assert_eq!(ctx.signals.get(&Signal::SIGSEGV), Some(&1));
    }

    #[test]
    fn a_probe_never_lands_in_other_memory() {
        in_single_threaded_child(a_probe_never_lands_in_other_memory_body);
    }

    fn a_probe_never_lands_in_other_memory_body() {
        let (mut ctx, base) = fake_arena(2, 32, 16);
        // Something else of the process's now lives at page 24's address.
        // SAFETY: a fresh mapping at a free address of the test region.
        let p = unsafe {
            libc::mmap(
                slot(base, 24, 0) as *mut libc::c_void,
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(p as u64, slot(base, 24, 0));
        let e = error_text(touch(&mut ctx, &probe(24)));
        assert!(e.contains("other memory of the agent"), "{e}");
        // The probe of a free page next to it still works.
        assert!(touch(&mut ctx, &probe(25)).is_ok());
    }

    #[test]
    fn a_touch_that_needs_a_child_is_an_error_inside_threads() {
        let (ctx, _) = fake_arena(8, 32, 16);
        let mut t = ctx.clone_for_thread(1);
        // Not forked: an error at once, even in the multi-threaded harness.
        let e = error_text(touch(&mut t, &probe(20)));
        assert_eq!(
            e,
            "touch at page 20 needs a forked child (its expect accepts a signal), which cannot be made while the threads of a `threads:` step run (the agent forks only while it has a single thread)"
        );
        t.arenas.get_mut(ID).unwrap().flags |= sys::BPF_F_SEGV_ON_FAULT;
        let e = error_text(touch(&mut t, &step(3, 1, AccessOp::Read)));
        assert!(e.contains("(arena `a` is segv_on_fault)"), "{e}");
        // Touches of mapped pages run in the thread itself.
        let mut t = ctx.clone_for_thread(2);
        touch(&mut t, &step(3, 1, AccessOp::Write)).unwrap();
    }
}
