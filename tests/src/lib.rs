//! Cross-crate integration and end-to-end tests of the Motey agent and the metering
//! workloads, plus `testbox`, the tiny workload the Docker tests run as their container
//! image (no image can be pulled from outside, so tests build their own).
