//! Cross-crate integration and end-to-end tests of the Motey agent and the metering
//! workloads, plus `testbox`, the tiny workload the Docker tests run as their container
//! image (no image can be pulled from outside, so tests build their own).
//!
//! The library holds what every end-to-end suite needs: the Docker CLI, the test images,
//! free ports, polling with a deadline, a local image registry, a private PostgreSQL server
//! (`postgres`), Python tools in virtual environments (`python`, `openapi`), the metering
//! survey's processes (`survey`), the Raspberry Pi's aarch64 binaries under emulation
//! (`cross`) and a real headless Chromium for the frontends (`browser`).

pub mod bench;
pub mod browser;
pub mod cross;
pub mod docker;
pub mod openapi;
pub mod postgres;
pub mod python;
pub mod registry;
pub mod survey;

use std::future::Future;
use std::time::{Duration, Instant};

/// A TCP port on loopback that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Polls `check` until it gives a value, panicking with `what` after `limit`. The limit
/// is generous: CI machines are small and busy, and this is not a timing assertion.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
