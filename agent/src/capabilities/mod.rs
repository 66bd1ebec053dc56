//! Capability management: what a node offers to images, and how local programs change it.

pub mod events;
