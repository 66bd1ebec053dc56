//! The Docker plugin of Motey's virtualization abstraction layer.
//!
//! [`DockerEngine`] implements [`motey_val::VirtualizationEngine`] over the Docker Engine
//! API (bollard, Unix socket by default): it pulls images on demand, translates a
//! [`motey_val::ContainerSpec`] into a container, maps Docker's container states to image
//! states and follows Docker's events for the containers the agent manages.

mod engine;
mod errors;
mod events;
mod image;
mod spec;
mod state;

pub use engine::DockerEngine;
