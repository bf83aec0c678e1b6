//! `arena:` create a `BPF_MAP_TYPE_ARENA` map.

use arena_protocol::scenario::{ArenaFlag, ArenaStep, PageSet};

use super::check_errno;
use super::{ArenaState, Ctx, Outcome, StepError, StepResult};
use crate::sys;

/// Map flags for a step.
pub fn flags_of(s: &ArenaStep) -> u32 {
    let mut flags = if s.omit_mmapable {
        0
    } else {
        sys::BPF_F_MMAPABLE
    };
    for f in &s.flags {
        flags |= match f {
            ArenaFlag::SegvOnFault => sys::BPF_F_SEGV_ON_FAULT,
            ArenaFlag::NoUserConv => sys::BPF_F_NO_USER_CONV,
            ArenaFlag::Mmapable => sys::BPF_F_MMAPABLE,
            ArenaFlag::RdonlyProg => sys::BPF_F_RDONLY_PROG,
        };
    }
    if s.numa_node.is_some() {
        flags |= sys::BPF_F_NUMA_NODE;
    }
    flags
}

/// Create the arena and remember it under its id.
pub fn create(ctx: &mut Ctx, s: &ArenaStep) -> StepResult {
    if ctx.arenas.contains_key(&s.id) {
        return Err(StepError::Error(format!("arena `{}` already exists", s.id)));
    }
    let flags = flags_of(s);
    let max_entries = u32::try_from(s.pages).map_err(|_| {
        StepError::Error(format!("pages {} does not fit max_entries (u32)", s.pages))
    })?;
    let result = sys::map_create(&sys::MapCreate {
        map_type: sys::BPF_MAP_TYPE_ARENA,
        key_size: s.key_size,
        value_size: s.value_size,
        max_entries,
        flags,
        numa_node: s.numa_node.unwrap_or(0),
        map_extra: s.map_extra,
        name: &s.id,
    });
    let what = format!("BPF_MAP_CREATE arena pages={} flags={flags:#x}", s.pages);
    match check_errno(&what, result, &s.expect)? {
        None => Ok(Outcome::said(format!("{what}: refused as expected"))),
        Some(fd) => {
            ctx.arenas.insert(
                s.id.clone(),
                ArenaState {
                    fd,
                    pages: s.pages,
                    flags,
                    addr: (s.map_extra != 0).then_some(s.map_extra),
                    mapped_pages: 0,
                    mapped: PageSet::new(),
                },
            );
            Ok(Outcome::said(format!("{what}: fd {fd}")))
        }
    }
}
