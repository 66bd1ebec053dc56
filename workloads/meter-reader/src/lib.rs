//! The EnergieBroker meter reader: the edge workload that reads SML telegrams from the
//! optical probes of electricity and generation meters, keeps a measurement of the codes
//! of interest every measurement cycle in a local append-only store, and uploads them to
//! the Data API over mutual TLS while the household's consent is granted.
//!
//! The binary `meter-reader` runs the daemon, with the household's device frontend, and
//! decodes captures for debugging; the binary `meter-sim` emits real SML transmissions
//! for tests and demos.

pub mod api;
pub mod config;
pub mod consent;
pub mod daemon;
pub mod decode_cmd;
pub mod frontend;
pub mod meter;
pub mod obis;
pub mod probe;
pub mod sim;
pub mod sml;
pub mod store;
