//! `bpf_load:` and `bpf_run:` (libbpf integration comes with the catalogue work).

use std::sync::Arc;

use arena_protocol::scenario::{BpfLoadStep, BpfRunStep};

use crate::executor::{Ctx, StepError, StepResult};

/// A loaded BPF object.
#[derive(Clone)]
pub struct LoadedObject {
    _inner: Arc<()>,
}

/// `bpf_load:` step.
pub fn load(_ctx: &mut Ctx, s: &BpfLoadStep) -> StepResult {
    Err(StepError::Error(format!(
        "bpf_load {}: this agent build has no libbpf support",
        s.object
    )))
}

/// `bpf_run:` step.
pub fn run(_ctx: &mut Ctx, s: &BpfRunStep) -> StepResult {
    Err(StepError::Error(format!(
        "bpf_run {}: this agent build has no libbpf support",
        s.program
    )))
}
