//! From what a VM session saw to a verdict: kernel splats in the console,
//! stack traces symbolised, and the judgement of a scenario.

pub mod outcome;
pub mod splat;
pub mod stall;
pub mod symbolize;
pub mod verdict;
