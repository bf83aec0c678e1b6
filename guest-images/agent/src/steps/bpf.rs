//! `bpf_load:`, `bpf_run:` and `user_walk:`: BPF objects built from
//! `guest-images/bpf/*.bpf.c` loaded with libbpf, syscall programs run with
//! `BPF_PROG_TEST_RUN`, and BPF-built structures walked from user space.

use std::ffi::CString;
use std::sync::Arc;

use arena_protocol::paths::BPF_DIR;
use arena_protocol::scenario::{
    check_bpf_page_args, errno_name, BpfLoadStep, BpfRunStep, PageSet, ReadPointerStep, Structure,
    SyscallExpect, UserWalkStep, PAGE_SIZE,
};
use libbpf_sys as bpf;

use super::check_errno;
use super::object::{LoadedObject, ObjectHandle};
use super::{ArenaState, Ctx, Outcome, StepError, StepResult};
use crate::sys::BPF_MAP_TYPE_ARENA;

/// Nodes a walk follows before it calls the structure corrupt (a cycle).
const WALK_LIMIT: u64 = 1 << 20;
/// Buckets of the hash table `htab_build` makes (see arena_ops.bpf.c).
const HTAB_BUCKETS: u64 = 64;

/// The context every syscall program takes (`struct arena_args`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct ProgArgs {
    base: u64,
    arg: [u64; 4],
    out: [u64; 4],
}

fn arena_map(obj: *mut bpf::bpf_object) -> Option<*mut bpf::bpf_map> {
    let mut m: *mut bpf::bpf_map = std::ptr::null_mut();
    loop {
        // SAFETY: `obj` is a non-null object from bpf_object__open_file, and
        // `m` is null or the map this loop last got from it.
        m = unsafe { bpf::bpf_object__next_map(obj, m) };
        if m.is_null() {
            return None;
        }
        // SAFETY: `m` is non-null (checked above) and owned by `obj`.
        if unsafe { bpf::bpf_map__type(m) } == BPF_MAP_TYPE_ARENA {
            return Some(m);
        }
    }
}

/// Each program's verifier log buffer at load: libbpf loads without a log
/// and, when the kernel refuses a program, loads it again at level 1 into
/// its buffer (the kernel keeps the log's end when it is longer).
const LOG_BUF: usize = 1 << 20;
/// The level-2 log (every state) of a refused program, or of every program
/// when the scenario expects messages of an accepted load.
const LOG2_BUF: usize = 4 << 20;
/// Bytes of each log kept in the step's data (its end, where the verdict is).
const LOG_KEEP: usize = 64 << 10;
/// Lines of a refused program's log quoted in a failure.
const LOG_LINES: usize = 20;

/// Open the object file at `path` (not loaded).
fn open_object(path: &str) -> Result<Arc<ObjectHandle>, StepError> {
    let cpath = CString::new(path).map_err(|e| StepError::Error(e.to_string()))?;
    // SAFETY: `cpath` is a NUL-terminated string live for the call; null
    // options mean libbpf's defaults.
    let obj = unsafe { bpf::bpf_object__open_file(cpath.as_ptr(), std::ptr::null()) };
    if obj.is_null() {
        return Err(StepError::Error(format!(
            "open {path}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(Arc::new(ObjectHandle(obj)))
}

/// The programs of an open object, with their names.
fn programs(obj: *mut bpf::bpf_object) -> Vec<(*mut bpf::bpf_program, String)> {
    let mut out = Vec::new();
    let mut p: *mut bpf::bpf_program = std::ptr::null_mut();
    loop {
        // SAFETY: `obj` is an open object and `p` null or its program.
        p = unsafe { bpf::bpf_object__next_program(obj, p) };
        if p.is_null() {
            return out;
        }
        // SAFETY: `p` is a program of `obj`; its name lives as long as it.
        let name = unsafe { std::ffi::CStr::from_ptr(bpf::bpf_program__name(p)) };
        out.push((p, name.to_string_lossy().into_owned()));
    }
}

/// Point the object's arena map at the map of `reuse_arena`, if asked.
fn reuse_arena(
    ctx: &Ctx,
    s: &BpfLoadStep,
    map: Option<*mut bpf::bpf_map>,
    path: &str,
) -> Result<(), StepError> {
    let Some(reuse) = &s.reuse_arena else {
        return Ok(());
    };
    let fd = ctx.arena(reuse)?.fd;
    let map = map.ok_or_else(|| StepError::Error(format!("{path} declares no arena map")))?;
    // SAFETY: map belongs to an open object, fd is an open arena map.
    let rc = unsafe { bpf::bpf_map__reuse_fd(map, fd) };
    if rc != 0 {
        return Err(StepError::Error(format!(
            "reusing arena `{reuse}`: error {rc}"
        )));
    }
    Ok(())
}

/// A log buffer's text (up to its NUL), its last [`LOG_KEEP`] bytes.
fn log_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut from = text.len().saturating_sub(LOG_KEEP);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    text[from..].to_owned()
}

/// The last `n` non-empty lines of a log, indented.
fn last_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Load a second copy of the object at `path` only to read verifier logs
/// at `level`: of the program `only` (the others not loaded), or of every
/// program. The load's return code and each loaded program's log.
fn load_for_logs(
    ctx: &Ctx,
    s: &BpfLoadStep,
    path: &str,
    only: Option<&str>,
    level: u32,
) -> Result<(i32, Vec<(String, String)>), StepError> {
    let handle = open_object(path)?;
    let progs = programs(handle.0);
    let mut bufs: Vec<(String, Vec<u8>)> = Vec::new();
    for (p, name) in &progs {
        let wanted = only.is_none_or(|o| o == name);
        // SAFETY: `p` is a program of the open, not yet loaded object; the
        // buffer outlives the load below (the handle is dropped after it).
        unsafe {
            if !wanted {
                bpf::bpf_program__set_autoload(*p, false);
                continue;
            }
            let mut buf = vec![0u8; LOG2_BUF];
            bpf::bpf_program__set_log_buf(*p, buf.as_mut_ptr().cast(), buf.len() as _);
            bpf::bpf_program__set_log_level(*p, level);
            bufs.push((name.clone(), buf));
        }
    }
    reuse_arena(ctx, s, arena_map(handle.0), path)?;
    // SAFETY: the object is open and unloaded; every log buffer set above
    // lives in `bufs` until after the call.
    let rc = unsafe { bpf::bpf_object__load(handle.0) };
    drop(handle);
    Ok((
        rc,
        bufs.into_iter()
            .map(|(name, buf)| (name, log_text(&buf)))
            .collect(),
    ))
}

/// The result of a load the kernel refused (`errno`); `refusal`: the
/// program the verifier refused and its log, if one was.
fn refused(
    what: &str,
    s: &BpfLoadStep,
    errno: i32,
    refusal: Option<(String, String)>,
) -> StepResult {
    let e = errno_name(errno);
    let Some((prog, log)) = refusal else {
        if s.expect.rejected || s.expect.errno.is_none() {
            return Err(StepError::Fail(format!(
                "{what}: failed with {e} before the verifier refused any program{}",
                if s.expect.rejected {
                    " (expected a verifier refusal)"
                } else {
                    ""
                }
            )));
        }
        check_errno(what, Err::<(), _>(errno), &errno_expect(s))?;
        return Ok(Outcome::said(format!("{what}: refused as expected ({e})")));
    };
    let tail = last_lines(&log, LOG_LINES);
    if !s.expect.rejected && s.expect.errno.is_none() {
        return Err(StepError::Fail(format!(
            "{what}: the verifier refused program `{prog}` ({e}); its log ends:\n{tail}"
        )));
    }
    if s.expect.errno.is_some() {
        check_errno(what, Err::<(), _>(errno), &errno_expect(s))?;
    }
    if let Some(missing) = s.expect.log.iter().find(|w| !log.contains(w.as_str())) {
        return Err(StepError::Fail(format!(
            "{what}: the verifier refused `{prog}` as expected, but its log lacks {missing:?}; it ends:\n{tail}"
        )));
    }
    // The verdict's line: the last before the statistics.
    let last = log
        .lines()
        .rev()
        .find(|l| {
            !l.trim().is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
        })
        .unwrap_or("");
    Ok(Outcome {
        detail: format!("{what}: the verifier refused `{prog}` as expected ({e}): {last}"),
        data: serde_json::json!({
            "refused": prog,
            "errno": e,
            "verifier_log": { prog: log },
        }),
    })
}

/// The errno part of a load's expectation.
fn errno_expect(s: &BpfLoadStep) -> SyscallExpect {
    SyscallExpect {
        errno: s.expect.errno,
    }
}

/// `bpf_load:` step: open and load the object (the lab's, or compiled
/// from the scenario's `source`); the verifier's refusal of a program is
/// judged against `expect` (`rejected`, `log`), with its log (level 2)
/// in the step's data.
pub fn load(ctx: &mut Ctx, s: &BpfLoadStep) -> StepResult {
    if ctx.objects.contains_key(&s.id) {
        return Err(StepError::Error(format!(
            "object id `{}` already loaded",
            s.id
        )));
    }
    let file = s.object_file();
    let path = format!("{BPF_DIR}/{file}");
    let handle = open_object(&path)?;
    let obj = handle.0;
    let progs = programs(obj);
    let mut bufs: Vec<Vec<u8>> = progs.iter().map(|_| vec![0u8; LOG_BUF]).collect();
    for ((p, _), buf) in progs.iter().zip(&mut bufs) {
        // SAFETY: `p` is a program of the open object; the buffer lives in
        // `bufs` until after the load below. Level 0: no log unless refused.
        unsafe { bpf::bpf_program__set_log_buf(*p, buf.as_mut_ptr().cast(), buf.len() as _) };
    }
    let map = arena_map(obj);
    reuse_arena(ctx, s, map, &path)?;
    // SAFETY: `obj` is non-null (checked above) and still owned by `handle`.
    let rc = unsafe { bpf::bpf_object__load(obj) };
    let what = format!("load {}", s.source.as_deref().unwrap_or(&s.object));
    if rc != 0 {
        // The refused program is the one libbpf logged (at level 1).
        let level1 = progs
            .iter()
            .zip(&bufs)
            .find(|(_, b)| b[0] != 0)
            .map(|((_, name), b)| (name.clone(), log_text(b)));
        drop(handle);
        let refusal = level1.map(|(prog, log1)| {
            let log2 = load_for_logs(ctx, s, &path, Some(&prog), 2)
                .ok()
                .and_then(|(_, logs)| logs.into_iter().next())
                .map(|(_, log)| log)
                .filter(|log| !log.is_empty());
            (prog, log2.unwrap_or(log1))
        });
        return refused(&what, s, -rc, refusal);
    }
    let names: Vec<&str> = progs.iter().map(|(_, n)| n.as_str()).collect();
    if s.expect.rejected {
        return Err(StepError::Fail(format!(
            "{what}: expected the verifier to refuse a program, but it accepted all: {}",
            names.join(", ")
        )));
    }
    check_errno(&what, Ok(()), &errno_expect(s))?;
    let mut data = serde_json::Value::Null;
    if !s.expect.log.is_empty() {
        let (rc, logs) = load_for_logs(ctx, s, &path, None, 2)?;
        if rc != 0 {
            return Err(StepError::Error(format!(
                "{what}: loading it again for its verifier logs (level 2, {} MiB each) failed: {}",
                LOG2_BUF >> 20,
                errno_name(-rc)
            )));
        }
        if let Some(missing) = s
            .expect
            .log
            .iter()
            .find(|w| !logs.iter().any(|(_, l)| l.contains(w.as_str())))
        {
            let ends: Vec<String> = logs
                .iter()
                .map(|(p, l)| format!("`{p}`:\n{}", last_lines(l, 5)))
                .collect();
            return Err(StepError::Fail(format!(
                "{what}: no program's verifier log has {missing:?}; they end:\n{}",
                ends.join("\n")
            )));
        }
        let map: serde_json::Map<String, serde_json::Value> = logs
            .into_iter()
            .map(|(p, l)| (p, serde_json::Value::String(l)))
            .collect();
        data = serde_json::json!({ "verifier_log": map });
    }
    drop(bufs);
    let mut arena = s.reuse_arena.clone();
    let mut detail = format!("{what}: loaded");
    if let (Some(id), Some(map)) = (&s.arena_id, map) {
        let mut size: bpf::size_t = 0;
        // SAFETY: map belongs to the loaded obj; libbpf mmapped arenas it created.
        let (fd, pages, flags, addr) = unsafe {
            (
                bpf::bpf_map__fd(map),
                u64::from(bpf::bpf_map__max_entries(map)),
                bpf::bpf_map__map_flags(map),
                bpf::bpf_map__initial_value(map, &mut size) as u64,
            )
        };
        ctx.arenas.insert(
            id.clone(),
            ArenaState {
                fd,
                pages,
                flags,
                addr: (addr != 0).then_some(addr),
                mapped_pages: if addr != 0 { pages } else { 0 },
                mapped: if addr != 0 {
                    PageSet::prefix(pages)
                } else {
                    PageSet::new()
                },
            },
        );
        detail.push_str(&format!(
            "; arena `{id}`: {pages} pages mapped at {addr:#x} by libbpf"
        ));
        arena = Some(id.clone());
    }
    ctx.objects.insert(
        s.id.clone(),
        LoadedObject {
            handle,
            object: file,
            arena,
        },
    );
    Ok(Outcome { detail, data })
}

/// Check the page, count and offset arguments a known program is given
/// against its arena (the programs would silently wrap, mask or cap them).
fn check_page_args(ctx: &Ctx, obj: &LoadedObject, s: &BpfRunStep) -> Result<(), StepError> {
    let arena = obj.arena.as_deref().unwrap_or_default();
    let pages = ctx.arenas.get(arena).map(|a| a.pages);
    check_bpf_page_args(&obj.object, &s.program, &s.args, arena, pages)
        .map_err(|(i, e)| StepError::Error(format!("{}: args[{i}]: {e}", s.program)))
}

/// `bpf_run:` step.
pub fn run(ctx: &mut Ctx, s: &BpfRunStep) -> StepResult {
    let obj = ctx
        .objects
        .get(&s.object)
        .ok_or_else(|| StepError::Error(format!("unknown object `{}`", s.object)))?
        .clone();
    check_page_args(ctx, &obj, s)?;
    let name = CString::new(s.program.clone()).map_err(|e| StepError::Error(e.to_string()))?;
    // SAFETY: the handle keeps the object open; `name` is a NUL-terminated
    // string live for the call.
    let prog = unsafe { bpf::bpf_object__find_program_by_name(obj.handle.0, name.as_ptr()) };
    if prog.is_null() {
        return Err(StepError::Error(format!(
            "no program `{}` in object `{}`",
            s.program, s.object
        )));
    }
    // SAFETY: `prog` is non-null (checked above) and owned by `obj`, which
    // the cloned handle keeps open.
    let fd = unsafe { bpf::bpf_program__fd(prog) };
    let mut args = ProgArgs::default();
    if let Some(id) = &obj.arena {
        args.base = ctx.arena(id)?.addr.unwrap_or(0);
    }
    for (i, a) in s.args.iter().take(4).enumerate() {
        args.arg[i] = *a;
    }
    // SAFETY: `prog` is a valid program of the open object.
    let retval = match unsafe { bpf::bpf_program__type(prog) } {
        bpf::BPF_PROG_TYPE_SCHED_CLS => {
            run_with_bss(&obj, fd, &mut args, &s.program, Input::Packet)?
        }
        bpf::BPF_PROG_TYPE_RAW_TRACEPOINT => {
            run_with_bss(&obj, fd, &mut args, &s.program, Input::Nothing)?
        }
        _ => run_syscall(fd, &mut args, &s.program)?,
    };
    ctx.last_out = args.out;
    let what = format!(
        "{}({:?}) = {retval}, out [{:#x}, {:#x}, {:#x}, {:#x}]",
        s.program, s.args, args.out[0], args.out[1], args.out[2], args.out[3]
    );
    if let Some(want) = s.expect_retval {
        if want != retval {
            return Err(StepError::Fail(format!(
                "{what}: expected return value {want}, got {retval}"
            )));
        }
    }
    for (i, want) in s.expect_out.iter().enumerate() {
        let Some(want) = want else { continue };
        if args.out[i] != *want {
            return Err(StepError::Fail(format!(
                "{what}: expected out[{i}] = {want:#x}, got {:#x}",
                args.out[i]
            )));
        }
    }
    if s.expect_stderr.is_empty() {
        return Ok(Outcome::said(what));
    }
    let stderr = read_stderr_stream(fd).map_err(StepError::Error)?;
    if let Some(missing) = s
        .expect_stderr
        .iter()
        .find(|w| !stderr.contains(w.as_str()))
    {
        return Err(StepError::Fail(format!(
            "{what}: the program's stderr stream lacks {missing:?}; it has {:?}",
            stderr.chars().take(500).collect::<String>()
        )));
    }
    let first = stderr.lines().next().unwrap_or_default();
    Ok(Outcome::said(format!("{what}; stderr: {first}")))
}

/// Run a syscall program with `args` as its context; its return value.
fn run_syscall(fd: i32, args: &mut ProgArgs, program: &str) -> Result<i64, StepError> {
    // Syscall programs get their context copied back to `ctx_in` (the kernel
    // refuses `ctx_out` for them), so the pointer must allow writes.
    let mut opts = bpf::bpf_test_run_opts {
        sz: std::mem::size_of::<bpf::bpf_test_run_opts>() as _,
        ctx_in: std::ptr::from_mut(args).cast_const().cast(),
        ctx_size_in: std::mem::size_of::<ProgArgs>() as u32,
        ..Default::default()
    };
    // SAFETY: ctx_in points to `args`, live and of the declared size for
    // the whole call; the kernel writes the context back through it.
    let rc = unsafe { bpf::bpf_prog_test_run_opts(fd, &mut opts) };
    if rc != 0 {
        return Err(StepError::Error(format!(
            "BPF_PROG_TEST_RUN {program}: error {rc}"
        )));
    }
    Ok(opts.retval as i32 as i64)
}

/// A zeroed Ethernet-sized packet: what a tc program runs on.
const TC_PACKET: [u8; 64] = [0; 64];

/// What a program that takes its arguments in `.bss` is test-run on.
enum Input {
    /// A tc program: [`TC_PACKET`].
    Packet,
    /// A raw_tp program: no data and no context (the kernel refuses data
    /// for it, and the programs read no tracepoint argument).
    Nothing,
}

/// Run a non-sleepable program (tc, raw_tp): `args` goes into the
/// object's `.bss` (which must be exactly one `struct arena_args`) before
/// the run and is read back after it.
fn run_with_bss(
    obj: &LoadedObject,
    fd: i32,
    args: &mut ProgArgs,
    program: &str,
    input: Input,
) -> Result<i64, StepError> {
    // SAFETY: the handle keeps the object open; the name is NUL-terminated.
    let map = unsafe { bpf::bpf_object__find_map_by_name(obj.handle.0, c".bss".as_ptr()) };
    if map.is_null() {
        return Err(StepError::Error(format!(
            "{program}: a tc or raw_tp program takes its arguments in a .bss `args`, and `{}` has no .bss",
            obj.object
        )));
    }
    // SAFETY: `map` is a non-null map of the open object.
    let (map_fd, size) = unsafe { (bpf::bpf_map__fd(map), bpf::bpf_map__value_size(map)) };
    if size as usize != std::mem::size_of::<ProgArgs>() {
        return Err(StepError::Error(format!(
            "{program}: .bss of `{}` is {size} bytes, not one struct arena_args",
            obj.object
        )));
    }
    let key = 0u32;
    // SAFETY: key and value point to live data of the map's key and value sizes.
    let rc = unsafe {
        bpf::bpf_map_update_elem(
            map_fd,
            std::ptr::from_ref(&key).cast(),
            std::ptr::from_ref(args).cast(),
            0,
        )
    };
    if rc != 0 {
        return Err(StepError::Error(format!(
            "{program}: writing .bss: error {rc}"
        )));
    }
    let mut opts = bpf::bpf_test_run_opts {
        sz: std::mem::size_of::<bpf::bpf_test_run_opts>() as _,
        ..Default::default()
    };
    if let Input::Packet = input {
        opts.data_in = TC_PACKET.as_ptr().cast();
        opts.data_size_in = TC_PACKET.len() as u32;
    }
    // SAFETY: data_in is null or points to a static packet of the declared size.
    let rc = unsafe { bpf::bpf_prog_test_run_opts(fd, &mut opts) };
    if rc != 0 {
        return Err(StepError::Error(format!(
            "BPF_PROG_TEST_RUN {program}: error {rc}"
        )));
    }
    // SAFETY: as for the update: live buffers of the map's sizes.
    let rc = unsafe {
        bpf::bpf_map_lookup_elem(
            map_fd,
            std::ptr::from_ref(&key).cast(),
            std::ptr::from_mut(args).cast(),
        )
    };
    if rc != 0 {
        return Err(StepError::Error(format!(
            "{program}: reading .bss: error {rc}"
        )));
    }
    Ok(opts.retval as i32 as i64)
}

/// `BPF_STDERR` of `include/uapi/linux/bpf.h`.
const BPF_STDERR: u32 = 2;
/// Most of a stream read back: the reports asserted on are short.
const STREAM_READ_MAX: usize = 64 << 10;

/// What the program's BPF stderr stream holds (reading drains it).
fn read_stderr_stream(prog_fd: i32) -> Result<String, String> {
    let mut buf = vec![0u8; STREAM_READ_MAX];
    // SAFETY: `buf` is writable for its whole length, which is what we pass;
    // libbpf accepts NULL options.
    let n = unsafe {
        bpf::bpf_prog_stream_read(
            prog_fd,
            BPF_STDERR,
            buf.as_mut_ptr().cast(),
            buf.len() as u32,
            std::ptr::null_mut(),
        )
    };
    let len = usize::try_from(n).map_err(|_| {
        format!(
            "reading the program's stderr stream: error {n} (the kernel needs BPF streams, 6.17+)"
        )
    })?;
    buf.truncate(len.min(STREAM_READ_MAX));
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Read a u64 at a user address inside the arena and this process's
/// mapping of it; anything else (a corrupt or foreign pointer) fails the
/// step instead of reading the agent's memory.
fn read_u64(id: &str, a: &ArenaState, addr: u64) -> Result<u64, StepError> {
    check_pointer(id, a, addr).map_err(StepError::Fail)?;
    // SAFETY: inside the mapped arena and aligned (checked above).
    Ok(unsafe { std::ptr::read_volatile(addr as *const u64) })
}

/// Whether an aligned u64 at `addr` lies in a page of the arena that this
/// process has mapped; the reason if not.
pub fn check_pointer(id: &str, a: &ArenaState, addr: u64) -> Result<(), String> {
    let outside = |why: &str| format!("pointer {addr:#x} {why}");
    let (true, Some(start)) = (a.is_mapped(), a.addr) else {
        return Err(outside(&format!(
            "cannot be read: arena `{id}` is not mapped in this process"
        )));
    };
    if !addr.is_multiple_of(8) {
        return Err(outside("is not 8-byte aligned"));
    }
    let Some(page) = addr.checked_sub(start).map(|off| off / PAGE_SIZE) else {
        return Err(outside(&format!(
            "is below arena `{id}` (at {start:#x}, {} pages)",
            a.pages
        )));
    };
    if page >= a.pages {
        return Err(outside(&format!(
            "is past the end of arena `{id}` (at {start:#x}, {} pages; it points into page {page})",
            a.pages
        )));
    }
    a.mapped
        .check_mapped(id, page, 1)
        .map_err(|e| outside(&format!("points into {e}")))
}

/// Follow a `next`-linked chain from `head`; (count, sum of the word at
/// `value_off`).
fn walk_chain(
    id: &str,
    a: &ArenaState,
    mut node: u64,
    value_off: u64,
    budget: &mut u64,
) -> Result<(u64, u64), StepError> {
    let (mut count, mut sum) = (0u64, 0u64);
    while node != 0 {
        if *budget == 0 {
            return Err(StepError::Fail(format!(
                "more than {WALK_LIMIT} nodes: a cycle?"
            )));
        }
        *budget -= 1;
        let value = node
            .checked_add(value_off)
            .ok_or_else(|| StepError::Fail(format!("node pointer {node:#x} wraps around")))?;
        sum = sum.wrapping_add(read_u64(id, a, value)?);
        count += 1;
        node = read_u64(id, a, node)?;
    }
    Ok((count, sum))
}

/// `user_walk:` step.
pub fn walk(ctx: &mut Ctx, s: &UserWalkStep) -> StepResult {
    let a = ctx.arena(&s.arena)?.clone();
    let root = ctx.last_out[0];
    let mut budget = WALK_LIMIT;
    let (count, sum) = match s.structure {
        Structure::List => walk_chain(&s.arena, &a, root, 8, &mut budget)?,
        Structure::Htab => {
            let (mut count, mut sum) = (0, 0u64);
            for b in 0..HTAB_BUCKETS {
                let bucket = root.checked_add(b * 8).ok_or_else(|| {
                    StepError::Fail(format!("table pointer {root:#x} wraps around"))
                })?;
                let head = read_u64(&s.arena, &a, bucket)?;
                let (c, v) = walk_chain(&s.arena, &a, head, 16, &mut budget)?;
                count += c;
                sum = sum.wrapping_add(v);
            }
            (count, sum)
        }
    };
    let what = format!(
        "walked {:?} at {root:#x}: {count} nodes, sum {sum}",
        s.structure
    );
    if count != s.expect_count || sum != s.expect_sum {
        return Err(StepError::Fail(format!(
            "{what}; expected {} nodes, sum {}",
            s.expect_count, s.expect_sum
        )));
    }
    Ok(Outcome::said(what))
}

/// `read_pointer:` step.
pub fn read_pointer(ctx: &mut Ctx, s: &ReadPointerStep) -> StepResult {
    let a = ctx.arena(&s.arena)?.clone();
    let addr = *ctx
        .last_out
        .get(s.out)
        .ok_or_else(|| StepError::Error(format!("out[{}] does not exist", s.out)))?;
    let got = read_u64(&s.arena, &a, addr)?;
    let what = format!("*out[{}] = *{addr:#x} = {got:#x}", s.out);
    if got != s.expect_value {
        return Err(StepError::Fail(format!(
            "{what}; expected {:#x}",
            s.expect_value
        )));
    }
    Ok(Outcome::said(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena(mapped: PageSet) -> ArenaState {
        ArenaState {
            fd: -1,
            pages: 32,
            flags: 0,
            addr: Some(0x1_0000_0000),
            mapped_pages: 32,
            mapped,
        }
    }

    #[test]
    fn pointers_must_be_in_mapped_arena_pages() {
        let a = arena(PageSet::prefix(32));
        assert!(check_pointer("a", &a, 0x1_0000_0000).is_ok());
        assert!(check_pointer("a", &a, 0x1_0001_fff8).is_ok());
        let e = check_pointer("a", &a, 0x1_0002_0000).unwrap_err();
        assert!(e.contains("past the end of arena `a`"), "{e}");
        assert!(e.contains("page 32"), "{e}");
        assert!(check_pointer("a", &a, 0xffff_fff8)
            .unwrap_err()
            .contains("below"));
        assert!(check_pointer("a", &a, 0x1_0000_0004)
            .unwrap_err()
            .contains("aligned"));
        assert!(check_pointer("a", &a, u64::MAX - 7).is_err());
        let mut holed = PageSet::prefix(32);
        holed.remove(3..4);
        let e = check_pointer("a", &arena(holed), 0x1_0000_3008).unwrap_err();
        assert!(e.contains("page 3 of arena `a` is not mapped"), "{e}");
        let e = check_pointer("a", &arena(PageSet::new()), 0x1_0000_0000).unwrap_err();
        assert!(e.contains("not mapped in this process"), "{e}");
    }
}
