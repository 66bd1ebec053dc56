//! The orchestrator (skeleton).
pub mod remote;
