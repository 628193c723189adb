"""How much glibc's malloc thresholds matter to pyeclib: each setting in a fresh process.

    python bench/erasure/malloc_effect.py

mallopt() cannot be undone inside one process, so every configuration runs in its own
interpreter: glibc defaults (SHOAL_ERASURE_MALLOC_TUNING=0), shoal's mallopt at import
(the default), and the same thresholds given as MALLOC_*_ environment variables.
Prints the median time of an encode and of a decode with two data fragments lost, and the
speedup over glibc's defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import json, random, statistics, time
from shoal import erasure
from shoal.erasure import format
data = random.Random(5).randbytes(2 << 20)
def median_us(fn, rounds=400):
    for _ in range(50):
        fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6
# encodes first, with nothing large alive but the input: live buffers left at the top of the
# heap would stop glibc from trimming it and hide the effect (as they may, by luck, in a service)
res = {"tuned": erasure.MALLOC_TUNED}
res["pyeclib encode"] = median_us(lambda: format.DRIVER.encode(data))
res["shoal encode"] = median_us(lambda: erasure.encode(data))
inner = format.DRIVER.encode(data)[2:]
res["pyeclib decode 0+1 lost"] = median_us(lambda: format.DRIVER.decode(inner))
framed = erasure.encode(data)[2:]
res["shoal decode 0+1 lost"] = median_us(lambda: erasure.decode(framed))
print(json.dumps(res))
"""

CONFIGS = {
    "glibc defaults": {"SHOAL_ERASURE_MALLOC_TUNING": "0"},
    "mallopt at import": {},
    "MALLOC_*_ env": {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)},
}


def main() -> int:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    base_env.pop("SHOAL_ERASURE_MALLOC_TUNING", None)
    results = {}
    for name, env in CONFIGS.items():
        out = subprocess.run(
            [sys.executable, "-c", PROBE], env={**base_env, **env}, capture_output=True, text=True, check=True
        )
        results[name] = json.loads(out.stdout)
    base = results["glibc defaults"]
    metrics = [k for k in base if k != "tuned"]
    print(f"{'config':<20}" + "".join(f"{m:>26}" for m in metrics))
    for name, res in results.items():
        cells = "".join(f"{res[m]:>10.0f} us {base[m] / res[m]:>6.1f}x    " for m in metrics)
        print(f"{name:<20}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
