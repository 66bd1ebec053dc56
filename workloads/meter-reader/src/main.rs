//! `meter-reader`: the measurement daemon (`run`) and the probe debugging tool (`decode`).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "meter-reader", version, about = "EnergieBroker meter reader")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode SML transmissions from a capture; prints one JSON object per transmission.
    Decode {
        /// The input is hex text (whitespace ignored) instead of raw bytes.
        #[arg(long)]
        hex: bool,
        /// Capture file; `-` or nothing reads standard input.
        file: Option<String>,
    },
}

fn decode(hex: bool, file: Option<String>) -> anyhow::Result<ExitCode> {
    let input = meter_reader::decode_cmd::read_input(file.as_deref())?;
    let bytes = if hex {
        let text = String::from_utf8_lossy(&input);
        meter_reader::decode_cmd::parse_hex(&text)?
    } else {
        input
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let summary = meter_reader::decode_cmd::decode_to(&bytes, &mut out)?;
    out.flush()?;
    Ok(if summary.decoded > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode { hex, file } => decode(hex, file),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meter-reader: {e:#}");
            ExitCode::from(2)
        }
    }
}
