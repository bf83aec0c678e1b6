//! The commands built on a run: each uses the layers below it.

pub mod ab;
pub mod bench;
pub mod bisect;
pub mod compare;
pub mod kcidb;
pub mod kernel_cmd;
pub mod kernel_step;
pub mod merge;
pub mod multi_kernel;
pub mod mutate;
pub mod nested;
pub mod nightly;
pub mod report;
pub mod repro;
