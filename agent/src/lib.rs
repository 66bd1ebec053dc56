//! Motey: a fog orchestration agent. One agent runs on every node; it takes YAML service
//! blueprints over REST, places each image on a node whose capabilities fit and runs it
//! through a virtualization engine plugin (Docker by default).
//!
//! The orchestrator is a reconcile loop: the desired state lives in the store (sled), the
//! observed state comes from the engine (containers found by their labels), and each pass
//! converges the two, so a restarted agent adopts what still runs.

pub mod api;
pub mod app;
pub mod blueprint;
pub mod capabilities;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod domain;
pub mod front;
pub mod lifecycle;
pub mod logging;
pub mod orchestrator;
pub mod peer;
pub mod policy;
pub mod private_fs;
pub mod store;
pub mod val;
pub mod validation;
