//! What a person sees while a run goes: progress lines or a live display.

pub mod progress;
