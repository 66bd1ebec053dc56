//! schemathesis, the OpenAPI-driven fuzzer the agent's and the Data API's documents are
//! checked with: installed from PyPI into `target/openapi-venv` on first use, and run
//! with every check and phase (examples, coverage, fuzzing, and the stateful phase that
//! follows the links between operations).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::docker::repo_root;

/// The schemathesis release line the options below are written for.
const SCHEMATHESIS: &str = "schemathesis>=4.1,<5";

/// `target/openapi-venv/bin/schemathesis`, installed with pip the first time.
pub fn schemathesis() -> PathBuf {
    crate::python::venv("openapi-venv", &[SCHEMATHESIS]).with_file_name("schemathesis")
}

/// A schemathesis run against `base` with the document `openapi` (a file or a URL).
pub struct Fuzz {
    command: Command,
}

impl Fuzz {
    /// Every check, every phase, deterministic generation; `config` is a schemathesis
    /// TOML file of per-operation settings.
    pub fn new(openapi: &str, base: &str, config: &Path, max_examples: u32) -> Fuzz {
        let mut command = Command::new(schemathesis());
        // Its cache of failing cases goes beside the virtual environment, not into the tree.
        command
            .current_dir(repo_root().join("target"))
            .arg("--config-file")
            .arg(config)
            .arg("run")
            .arg(openapi)
            .args(["--url", base])
            .args(["--checks", "all"])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--max-examples", &max_examples.to_string()])
            .args(["--request-timeout", "20"])
            .args(["--generation-deterministic"]);
        Fuzz { command }
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Fuzz {
        self.command.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Fuzz
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Fuzz {
        self.command.env(key, value);
        self
    }

    pub fn header(self, header: &str) -> Fuzz {
        self.arg("--header").arg(header)
    }

    /// Runs it off the async workers; panics with its report unless it found nothing.
    pub async fn passes(mut self, what: &str) {
        let output: Output = tokio::task::spawn_blocking(move || self.command.output())
            .await
            .expect("schemathesis task")
            .expect("run schemathesis");
        assert!(
            output.status.success(),
            "schemathesis found answers the OpenAPI document does not describe ({what}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
