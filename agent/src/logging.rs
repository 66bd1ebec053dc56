//! Log output through `tracing`: human-readable on a terminal, JSON lines for log
//! collectors, to standard error or to the file `[LOGGER]` names.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Logger};

/// Installs the global subscriber. `to_file` forces the file (a daemon has no terminal).
pub fn init(settings: &Logger, data_dir: &std::path::Path, to_file: bool) -> std::io::Result<()> {
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let directory = settings
        .log_path
        .clone()
        .or_else(|| to_file.then(|| data_dir.to_path_buf()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match directory {
        Some(directory) => {
            std::fs::create_dir_all(&directory)?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(directory.join(&settings.file_name))?;
            let builder = builder.with_writer(Mutex::new(file)).with_ansi(false);
            match settings.format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Text => builder.init(),
            }
        }
        None => {
            let builder = builder
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal());
            match settings.format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Text => builder.init(),
            }
        }
    }
    Ok(())
}
