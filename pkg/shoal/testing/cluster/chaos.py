"""The tests/cluster scenarios for longer: each stack under mixed faults, then a summary table.

    scripts/chaos [--minutes N] [--seed S] [--stacks kv,state,video,compute] [--faults partition,delay,...]
                  [--scenario-seconds 40] [--out DIR]       (or python -m shoal.testing.cluster.chaos)

Runs on hosts made of network namespaces (root needed). Every scenario prints its seeded
schedule; replay one with the same --seed (docs/testing.md). Exit code 1 if any checker found
an anomaly. Histories, schedules and reports go to --out (default ./chaos-<seed>/).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from shoal.testing.cluster.nemesis import FAULTS
from shoal.testing.cluster.net import cleanup_stale
from shoal.testing.cluster.scenario import STACKS


def main() -> int:
    p = argparse.ArgumentParser(description="chaos runs of the shoal cluster")
    p.add_argument("--minutes", type=float, default=5.0, help="total time for the scenarios (default 5)")
    p.add_argument("--seed", type=int, default=None, help="seed of the whole run (default: random, printed)")
    p.add_argument("--stacks", default="kv,state,video,compute")
    p.add_argument(
        "--faults", default=",".join(FAULTS), help=f"fault kinds to mix (default {','.join(FAULTS)})"
    )
    p.add_argument("--scenario-seconds", type=float, default=40.0)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1_000_000)
    stacks = [s for s in a.stacks.split(",") if s]
    faults = [f for f in a.faults.split(",") if f]
    out = Path(a.out or f"chaos-{seed}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"chaos: seed {seed}, {a.minutes} min, stacks {stacks}, faults {faults}, out {out}", flush=True)
    cleanup_stale()
    rng = random.Random(seed)
    budget = a.minutes * 60 / len(stacks)
    reports = []
    for name in stacks:
        stack = STACKS[name](out / "cluster" / name, log=lambda s: print(s, flush=True))
        try:
            stack.start()
            t0 = time.monotonic()
            while time.monotonic() - t0 + a.scenario_seconds <= budget or not any(
                r.stack == name for r in reports
            ):
                run_seed = rng.randrange(1_000_000)
                report = stack.run(faults, a.scenario_seconds, run_seed, out / "histories")
                print(report.describe(), flush=True)
                reports.append(report)
        finally:
            stack.destroy()
    print()
    print(
        f"{'stack':7} {'seed':>7} {'ops':>6} {'ok':>6} {'fail':>5} {'unknown':>7} {'faults':>6} {'anomalies':>9}"
    )
    for r in reports:
        c = r.counts
        print(
            f"{r.stack:7} {r.seed:>7} {r.ops:>6} {c['ok']:>6} {c['fail']:>5} {c['unknown']:>7} "
            f"{len(r.events):>6} {len(r.anomalies):>9}"
        )
    total = sum(len(r.anomalies) for r in reports)
    print(
        f"\n{len(reports)} scenarios, {sum(r.ops for r in reports)} operations, "
        f"{sum(len(r.events) for r in reports)} faults, {total} anomalies (replay: --seed {seed})"
    )
    print(f"histories: {out / 'histories'}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
