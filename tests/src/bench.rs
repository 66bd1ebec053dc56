//! What every benchmark binary of the project shares: summary figures over samples, a
//! description of the machine, and writing its own section of `BENCHMARKS.md` between
//! `<!-- BEGIN name -->` and `<!-- END name -->` so that benchmarks do not clobber each other.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Median, mean, minimum and maximum of timed samples.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub median: Duration,
    pub mean: Duration,
    pub min: Duration,
    pub max: Duration,
}

impl Figures {
    /// Summarizes `samples` (at least one).
    pub fn of(mut samples: Vec<Duration>) -> Figures {
        assert!(!samples.is_empty(), "no samples");
        samples.sort();
        let total: Duration = samples.iter().sum();
        Figures {
            median: samples[samples.len() / 2],
            mean: total / samples.len() as u32,
            min: samples[0],
            max: samples[samples.len() - 1],
        }
    }

    /// `| label | median | mean | min | max |` in milliseconds.
    pub fn table_row(&self, label: &str) -> String {
        format!(
            "| {label} | {} | {} | {} | {} |",
            ms(self.median),
            ms(self.mean),
            ms(self.min),
            ms(self.max)
        )
    }
}

pub fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// Cores, CPU model and memory of this machine, for the record.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split(':').nth(1))
        .map_or("unknown CPU".to_owned(), |model| model.trim().to_owned());
    let memory_kib = meminfo_kib("MemTotal:", "/proc/meminfo");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} cores (nproc), {cpu}, {:.1} GiB memory",
        memory_kib as f64 / (1024.0 * 1024.0)
    )
}

/// Resident set size of a process, in KiB (from `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    meminfo_kib("VmRSS:", &format!("/proc/{pid}/status"))
}

fn meminfo_kib(key: &str, path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// The interpreter of a Python virtual environment under `target/bench-venv` holding
/// `packages`: the benchmarks compare against Python clients.
pub fn python_venv(packages: &[&str]) -> PathBuf {
    crate::python::venv("bench-venv", packages)
}

/// Package version of a Python module in the interpreter `python` (for the record).
pub fn python_module_version(python: &Path, module: &str) -> String {
    Command::new(python)
        .arg("-c")
        .arg("import importlib.metadata as m, sys; print(m.version(sys.argv[1]))")
        .arg(module)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The version line of an executable (`--version`-like `args`), for the record.
pub fn tool_version(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|output| {
            let text = [output.stdout, output.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `sorted[fraction × (len − 1)]`, e.g. 0.5 for the median, 0.99 for p99.
pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A duration in microseconds, one decimal.
pub fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

/// Replaces the content between the section's markers in `BENCHMARKS.md` at the
/// repository root, appending the section if it is missing.
pub fn write_section(section: &str, content: &str) {
    let path = crate::docker::repo_root().join("BENCHMARKS.md");
    write_section_to(&path, section, content);
    println!("wrote section {section} of {}", path.display());
}

fn write_section_to(path: &Path, section: &str, content: &str) {
    let begin = format!("<!-- BEGIN {section} -->");
    let end = format!("<!-- END {section} -->");
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let block = format!("{begin}\n## {section}\n\n{content}{end}");
    let updated = match (existing.find(&begin), existing.find(&end)) {
        (Some(start), Some(stop)) if stop > start => {
            format!(
                "{}{block}{}",
                &existing[..start],
                &existing[stop + end.len()..]
            )
        }
        _ => format!("{}\n\n{block}\n", existing.trim_end()),
    };
    std::fs::write(path, updated).expect("write BENCHMARKS.md");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_or_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("B.md");
        write_section_to(&path, "a", "one\n");
        write_section_to(&path, "b", "two\n");
        write_section_to(&path, "a", "three\n");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("## a\n\nthree\n<!-- END a -->"), "{text}");
        assert!(text.contains("two"));
        assert!(!text.contains("one"));
        assert!(text.find("BEGIN a").unwrap() < text.find("BEGIN b").unwrap());
    }

    #[test]
    fn figures_summarize_samples() {
        let figures = Figures::of(vec![
            Duration::from_millis(3),
            Duration::from_millis(1),
            Duration::from_millis(2),
        ]);
        assert_eq!(figures.median, Duration::from_millis(2));
        assert_eq!(figures.min, Duration::from_millis(1));
        assert_eq!(figures.max, Duration::from_millis(3));
    }
}
