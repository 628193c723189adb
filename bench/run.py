"""Run shoal's benchmarks and print each comparison as a ratio measured in the same run.

    python bench/run.py [--gate] [--only NAME] [--quick]

pytest-benchmark suites (bench/**/bench_*.py) mark one member of each group as the baseline
(`benchmark.extra_info["baseline"] = True`); every other member is printed as a ratio to it.
HTTP load scripts (bench/**/load.py) run in their own process and print their own tables;
with --gate they exit non-zero when a target is missed, and so does this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

BENCH = Path(__file__).parent


def run_suites(only: str | None, quick: bool) -> int:
    suites = sorted(p for p in BENCH.glob("**/bench_*.py") if not only or only in str(p))
    if not suites:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-only"]
        cmd += [f"--benchmark-json={out}", "--benchmark-disable-gc", "-o", "timeout=1800"]
        if quick:
            cmd += ["--benchmark-max-time=0.2", "--benchmark-min-rounds=3"]
        code = subprocess.call([*cmd, *map(str, suites)])
        if out.exists():
            print_ratios(json.loads(out.read_text()))
        return code


def print_ratios(report: dict) -> None:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in report["benchmarks"]:
        groups[b["group"] or b["name"]].append(b)
    print("\n== ratios (same run; ops/s from the median; >1 means faster than the baseline)")
    for group, members in sorted(groups.items()):
        base = next((m for m in members if m["extra_info"].get("baseline")), None)
        print(f"{group}")
        for m in sorted(members, key=lambda m: m["stats"]["median"]):
            ops = 1.0 / m["stats"]["median"]
            label = m["param"] or m["name"]
            ratio = f"{base['stats']['median'] / m['stats']['median']:.2f}x" if base else "-"
            mark = " (baseline)" if m is base else ""
            print(f"  {label:<28} {ops:>14,.0f} ops/s  {ratio:>9}{mark}")


def run_load_scripts(only: str | None, gate: bool) -> int:
    code = 0
    for script in sorted(BENCH.glob("**/load.py")):
        if only and only not in str(script):
            continue
        print(f"\n== {script.relative_to(BENCH.parent)}")
        code |= subprocess.call([sys.executable, str(script), *(["--gate"] if gate else [])])
    return code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gate", action="store_true", help="exit non-zero when a gated target is missed")
    ap.add_argument("--only", help="run only benchmarks whose path contains this")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = ap.parse_args()
    code = run_suites(args.only, args.quick)
    code |= run_load_scripts(args.only, args.gate)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
