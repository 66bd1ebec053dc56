#!/usr/bin/env bash
# Measures line coverage of the unit tests of every crate with cargo-tarpaulin and writes
# coverage/tarpaulin-report.html, coverage/tarpaulin-report.json and coverage/SUMMARY.md.
# The end-to-end suites run separately (scripts/test.sh): under ptrace they would be slow
# and their child processes (agents, workloads in containers) are not measured anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-tarpaulin.sh
mkdir -p coverage
cargo tarpaulin --workspace --lib --skip-clean --timeout 300 \
  --target-dir target/tarpaulin \
  --out Html --out Json --output-dir coverage 2>&1 | tee coverage/tarpaulin.log | grep -E '^\|\||coverage' | tail -40
python3 - <<'PY'
import json, collections, pathlib
report = json.load(open("coverage/tarpaulin-report.json"))
per_crate = collections.defaultdict(lambda: [0, 0])
for f in report["files"]:
    path = pathlib.Path(*f["path"]).as_posix()
    crate = next((c for c in ("agent", "plugins/val-docker", "plugins/val", "workloads/meter-reader", "workloads/data-api", "webclient", "tests") if f"/{c}/" in path), "other")
    per_crate[crate][0] += f["covered"]
    per_crate[crate][1] += f["coverable"]
lines = ["# Coverage (unit tests, cargo-tarpaulin)", "", "| crate | covered | coverable | % |", "|---|---:|---:|---:|"]
total = [0, 0]
for crate, (cov, all_) in sorted(per_crate.items()):
    total[0] += cov; total[1] += all_
    lines.append(f"| {crate} | {cov} | {all_} | {100*cov/max(all_,1):.1f} |")
lines.append(f"| **all** | {total[0]} | {total[1]} | {100*total[0]/max(total[1],1):.1f} |")
summary = "\n".join(lines) + "\n"
pathlib.Path("coverage/SUMMARY.md").write_text(summary)
# The committed copy, so the figures can be read without running the suite.
pathlib.Path("COVERAGE.md").write_text(summary.replace("# Coverage", "# Coverage (last recorded run)", 1)
    + "\nRegenerate with `scripts/coverage.sh` (run by `scripts/test.sh`); the HTML report is written to `coverage/`.\n")
print("\n".join(lines))
PY
