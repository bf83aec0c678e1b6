//! The results model and the run folder: `summary.json` (written and read
//! through the same types), JUnit and KTAP.

pub mod attempts;
pub mod history;
pub mod kcidb;
pub mod ktap;
pub mod results;
pub mod run_dir;
pub mod shards;
