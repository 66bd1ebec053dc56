//! `meter-reader`: the measurement daemon (`run`) and the probe debugging tool (`decode`).

use std::io::Write;
use std::process::ExitCode;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meter_reader::config::{parse_meters, parse_obis_list, parse_seconds, parse_ui_listen, Config};

#[derive(Debug, Parser)]
#[command(name = "meter-reader", version, about = "EnergieBroker meter reader")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Meters: `<meter uuid>=<probe>[?key=value&...]`, separated by commas; the probe is
    /// `serial:///dev/ttyUSB0`, `/dev/ttyUSB0` or `tcp://host:port`; keys: baud,
    /// data_bits, parity, stop_bits, model, pin, pin_file, expect.
    #[arg(long, env = "METER_READER_METERS")]
    meters: String,
    /// Base URL of the Data API.
    #[arg(long, env = "METER_READER_API_URL")]
    api_url: String,
    /// PEM file of the survey CA (trusted for the Data API's certificate).
    #[arg(long, env = "METER_READER_CA_CERT")]
    ca_cert: PathBuf,
    /// PEM file of this device's client certificate.
    #[arg(long, env = "METER_READER_CLIENT_CERT")]
    client_cert: PathBuf,
    /// PEM file of this device's private key.
    #[arg(long, env = "METER_READER_CLIENT_KEY")]
    client_key: PathBuf,
    /// Directory of the measurement store and the status file.
    #[arg(long, env = "METER_READER_DATA_DIR", default_value = "/data")]
    data_dir: PathBuf,
    /// Seconds between measurements.
    #[arg(long, env = "METER_READER_MEASUREMENT_INTERVAL", default_value = "900", value_parser = parse_seconds)]
    measurement_interval: Duration,
    /// Seconds between uploads.
    #[arg(long, env = "METER_READER_REPORT_INTERVAL", default_value = "3600", value_parser = parse_seconds)]
    report_interval: Duration,
    /// Longest wait in seconds between retries of a failed upload.
    #[arg(long, env = "METER_READER_RETRY_MAX", default_value = "300", value_parser = parse_seconds)]
    retry_max: Duration,
    /// OBIS codes recorded (hex or A-B:C.D.E*F), comma-separated; default: table 4.5.
    #[arg(long, env = "METER_READER_OBIS", default_value = "")]
    obis: String,
    /// Measurements per upload request (at most 1000).
    #[arg(long, env = "METER_READER_BATCH_SIZE", default_value_t = 500)]
    batch_size: usize,
    /// Seconds the expected codes may be missing before the PIN is entered.
    #[arg(long, env = "METER_READER_UNLOCK_AFTER", default_value = "3600", value_parser = parse_seconds)]
    unlock_after: Duration,
    /// Seconds after which a reading is too old for a measurement.
    #[arg(long, env = "METER_READER_READING_MAX_AGE", default_value = "60", value_parser = parse_seconds)]
    reading_max_age: Duration,
    /// Factor on the PIN entry timing (1 for real meters).
    #[arg(long, env = "METER_READER_TIMING_SCALE", default_value_t = 1.0)]
    timing_scale: f64,
    /// Address of the device frontend (web interface for the household), or `off`.
    #[arg(long, env = "METER_READER_UI_LISTEN", default_value = "0.0.0.0:8080")]
    ui_listen: String,
    /// Host names the device frontend answers to, comma-separated, besides IP addresses,
    /// `localhost`, single-label names and names under .local, .lan and .home.arpa.
    #[arg(long, env = "METER_READER_UI_HOSTS", default_value = "")]
    ui_hosts: String,
    /// Log format: text or json.
    #[arg(long, env = "METER_READER_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

impl RunArgs {
    fn config(self) -> anyhow::Result<Config> {
        let batch_size = self.batch_size;
        if !(1..=meter_reader::api::MAX_BATCH).contains(&batch_size) {
            anyhow::bail!("METER_READER_BATCH_SIZE: 1 to 1000");
        }
        if !(self.timing_scale > 0.0 && self.timing_scale <= 100.0) {
            anyhow::bail!("METER_READER_TIMING_SCALE: a factor above 0");
        }
        Ok(Config {
            meters: parse_meters(&self.meters, "METER_READER_METERS")?,
            api_url: self.api_url,
            ca_cert: self.ca_cert,
            client_cert: self.client_cert,
            client_key: self.client_key,
            data_dir: self.data_dir,
            measurement_interval: self.measurement_interval,
            report_interval: self.report_interval,
            retry_max: self.retry_max,
            obis: parse_obis_list(&self.obis, "METER_READER_OBIS")?,
            batch_size,
            unlock_after: self.unlock_after,
            reading_max_age: self.reading_max_age,
            timing_scale: self.timing_scale,
            ui_listen: parse_ui_listen(&self.ui_listen, "METER_READER_UI_LISTEN")?,
            ui_hosts: self
                .ui_hosts
                .split([',', ' '])
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the reader: measure every measurement cycle, upload every report cycle.
    Run(Box<RunArgs>),
    /// Decode SML transmissions from a capture; prints one JSON object per transmission.
    Decode {
        /// The input is hex text (whitespace ignored) instead of raw bytes.
        #[arg(long)]
        hex: bool,
        /// Capture file; `-` or nothing reads standard input.
        file: Option<String>,
    },
    /// Print the running reader's status (consent, pending measurements, latest reading
    /// per meter) as it wrote it at its last measurement cycle: a diagnostic for admins,
    /// e.g. `motey exec SERVICE reader -- meter-reader status`.
    Status {
        /// The reader's data directory.
        #[arg(long, env = "METER_READER_DATA_DIR", default_value = "/data")]
        data_dir: std::path::PathBuf,
    },
}

fn status(data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let path = data_dir.join("status.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let status: serde_json::Value = serde_json::from_str(&text)?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "no status in {}: the reader has not completed a measurement cycle yet",
                path.display()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(anyhow::anyhow!("read {}: {error}", path.display())),
    }
}

fn decode(hex: bool, file: Option<String>) -> anyhow::Result<ExitCode> {
    let input = meter_reader::decode_cmd::open_input(file.as_deref())?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let summary = meter_reader::decode_cmd::decode_stream(input, hex, &mut out)?;
    out.flush()?;
    Ok(if summary.decoded > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging(&args.log_format);
    let config = args.config()?;
    // One thread is plenty for two timers and an HTTP request now and then (the probes
    // have their own threads), and keeps the memory small on the measurement device.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(meter_reader::daemon::run(config, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode { hex, file } => decode(hex, file),
        Command::Run(args) => run(*args),
        Command::Status { data_dir } => status(&data_dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meter-reader: {e:#}");
            ExitCode::from(2)
        }
    }
}
