//! The Raspberry Pi's binaries (aarch64), cross-compiled on the build machine and run under
//! qemu-user (`qemu-aarch64-static`, Debian's qemu-user-static) with the aarch64 C library
//! of Debian's cross packages, and the architecture an ELF file's header names.
//!
//! **Finding the binaries.** Those that `scripts/build-images.sh --platform linux/arm64`
//! built in the running test's profile (`target/aarch64-unknown-linux-gnu/debug/`), as CI
//! does before the tests: asking Cargo again from every test process would cost each a
//! minute of fingerprinting and relinking. When one is missing, the test binary builds them
//! once with `cargo build --target aarch64-unknown-linux-gnu -p motey -p meter-reader -p
//! data-api --bins`, the script's build set. After changing a crate, run the script (or
//! that command) before these tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Rust's name of the Raspberry Pi's platform (64-bit Raspberry Pi OS).
pub const AARCH64: &str = "aarch64-unknown-linux-gnu";
const QEMU: &str = "/usr/bin/qemu-aarch64-static";
/// Where Debian's libc6-arm64-cross keeps the aarch64 loader and C library.
const SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// The aarch64 executables of the agent and the metering workloads.
#[derive(Debug, Clone)]
pub struct Aarch64Binaries {
    pub motey: PathBuf,
    pub meter_reader: PathBuf,
    pub meter_sim: PathBuf,
    pub data_api: PathBuf,
}

/// The aarch64 executables, built once per test binary (see the module documentation).
pub fn aarch64_binaries() -> &'static Aarch64Binaries {
    static BINARIES: OnceLock<Aarch64Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| built_binaries().unwrap_or_else(build_binaries))
}

/// The binaries of the running test's profile in the aarch64 target directory, if all are
/// there.
fn built_binaries() -> Option<Aarch64Binaries> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let dir = profile_dir
        .parent()?
        .join(AARCH64)
        .join(profile_dir.file_name()?);
    let binaries = Aarch64Binaries {
        motey: dir.join("motey"),
        meter_reader: dir.join("meter-reader"),
        meter_sim: dir.join("meter-sim"),
        data_api: dir.join("data-api"),
    };
    [
        &binaries.motey,
        &binaries.meter_reader,
        &binaries.meter_sim,
        &binaries.data_api,
    ]
    .iter()
    .all(|path| path.is_file())
    .then_some(binaries)
}

fn build_binaries() -> Aarch64Binaries {
    {
        let found = crate::survey::cargo_build(
            &[
                "-p",
                "motey",
                "-p",
                "meter-reader",
                "-p",
                "data-api",
                "--bins",
            ],
            Some(AARCH64),
        );
        let take = |name: &str| {
            found
                .get(name)
                .cloned()
                .unwrap_or_else(|| panic!("cargo build --target {AARCH64} reported no {name}"))
        };
        Aarch64Binaries {
            motey: take("motey"),
            meter_reader: take("meter-reader"),
            meter_sim: take("meter-sim"),
            data_api: take("data-api"),
        }
    }
}

/// A command running the aarch64 executable `binary` under emulation. The sysroot is an
/// argument, not `QEMU_LD_PREFIX`, so that it holds for commands that clear their
/// environment.
pub fn emulated(binary: &Path) -> Command {
    assert!(
        Path::new(QEMU).is_file(),
        "{QEMU} missing (package qemu-user-static)"
    );
    let mut command = Command::new(QEMU);
    command.arg("-L").arg(SYSROOT).arg(binary);
    command
}

/// The processor an ELF executable is built for (`e_machine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    X86_64,
    Aarch64,
    Other(u16),
}

/// The machine of a 64-bit little-endian ELF file, `None` if `bytes` is not one.
pub fn elf_machine(bytes: &[u8]) -> Option<Machine> {
    const ELFCLASS64: u8 = 2;
    const ELFDATA2LSB: u8 = 1;
    let header = bytes.get(..20)?;
    if header[..4] != *b"\x7fELF" || header[4] != ELFCLASS64 || header[5] != ELFDATA2LSB {
        return None;
    }
    Some(match u16::from_le_bytes([header[18], header[19]]) {
        62 => Machine::X86_64,
        183 => Machine::Aarch64,
        other => Machine::Other(other),
    })
}

/// The machine of the ELF executable at `path`.
pub fn elf_machine_of(path: &Path) -> Option<Machine> {
    elf_machine(&std::fs::read(path).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, machine: u16) -> Vec<u8> {
        let mut bytes = b"\x7fELF".to_vec();
        bytes.extend([class, 1, 1, 0]);
        bytes.extend([0; 10]);
        bytes.extend(machine.to_le_bytes());
        bytes
    }

    #[test]
    fn reads_the_machine_of_64_bit_executables() {
        assert_eq!(elf_machine(&header(2, 62)), Some(Machine::X86_64));
        assert_eq!(elf_machine(&header(2, 183)), Some(Machine::Aarch64));
        assert_eq!(elf_machine(&header(2, 40)), Some(Machine::Other(40)));
    }

    #[test]
    fn refuses_what_is_not_a_64_bit_elf_file() {
        assert_eq!(elf_machine(&header(1, 40)), None);
        assert_eq!(elf_machine(b"#!/bin/sh\necho hello world\n"), None);
        assert_eq!(elf_machine(b"\x7fELF"), None);
    }

    #[test]
    fn this_test_is_a_native_executable() {
        let exe = std::env::current_exe().unwrap();
        let expected = if cfg!(target_arch = "x86_64") {
            Machine::X86_64
        } else {
            Machine::Aarch64
        };
        assert_eq!(elf_machine_of(&exe), Some(expected));
    }
}
