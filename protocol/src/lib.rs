//! Shared between the runner (host) and the guest agent (PID 1), so the two
//! ends cannot drift: the typed scenario model ([`scenario`]), the messages
//! exchanged over the virtio console ([`message`]), the one serial-console
//! line the runner looks for ([`console`]) and their framing
//! ([`framing`]), the seed derivation both ends share ([`seed`]), the expansion of
//! `sweep:` templates ([`sweep`]), how reasons name a step ([`step_ref`]), and where
//! the guest image puts what the agent reads ([`paths`]).

#![warn(missing_docs)]

pub mod console;
pub mod framing;
pub mod message;
pub mod paths;
pub mod scenario;
pub mod seed;
pub mod step_ref;
pub mod sweep;

pub use framing::{FrameError, LineReader, MAX_LINE_BYTES};
pub use message::{GuestMessage, Hello, HostMessage, StepStatus, WorkerProgress};
pub use scenario::Scenario;
pub use step_ref::{StepLines, StepRef};
