"""Framing overhead of shoal.erasure against bare pyeclib, interleaved call by call, one run.

    python bench/erasure/overhead.py [--rounds 400] [--size 2097152]

Each round times bare pyeclib, the native framing (as shipped: worker thread or inline, whichever
it measures faster; forced inline, "1 thread"; forced worker, "2 threads") and the twin on the
same 2 MiB, one call each, so machine noise hits all of them alike; the medians and the
ratio framed/bare are printed for encode and for decode with two data fragments lost, and with
both parities lost (the copy path). Also prints the hash and copy speeds the overhead is made
of. Target (issue #7): framed within 10% of bare, i.e. ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from shoal import _native
from shoal.erasure import HEADER_SIZE, format


def _t(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(cases: dict, rounds: int) -> dict[str, float]:
    """Median seconds per case, cases timed one after the other in every round."""
    for fn in cases.values():  # warm up (page faults, the worker thread, malloc)
        for _ in range(20):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(_t(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _cell(med: dict[str, float], key: str, width: int) -> str:
    if key not in med:
        return f"{'-':>{width}}"
    return f"{med[key] * 1e6:>7.0f} us {med[key] / med['bare']:.3f}".rjust(width)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--size", type=int, default=2 << 20)
    args = ap.parse_args()
    data = random.Random(5).randbytes(args.size)
    native, twin = _native.native("erasure"), _native.pure("erasure")
    frags = (native or twin).encode(data)
    lost01 = {2: frags[2], 3: frags[3], 4: frags[4]}
    lost34 = {0: frags[0], 1: frags[1], 2: frags[2]}

    def with_worker(on: bool, fn, adaptive: bool = True):
        def run():
            native.use_worker(on, adaptive)
            return fn()

        return run

    ops = {
        "encode": (lambda: format.DRIVER.encode(data), lambda m: lambda: m.encode(data)),
        "decode, 0+1 lost": (lambda: format.DRIVER.decode(frags[2:]), lambda m: lambda: m.decode(lost01)),
        "decode, 3+4 lost": (lambda: format.DRIVER.decode(frags[:3]), lambda m: lambda: m.decode(lost34)),
    }
    print(f"{args.size} bytes, {args.rounds} interleaved rounds, backend {format.backend()}")
    print(
        f"{'operation':<18} {'pyeclib':>10} {'native':>16} {'native, 1 thread':>18} "
        f"{'native, 2 threads':>18} {'twin':>16}"
    )
    for name, (bare, framed) in ops.items():
        cases = {"bare": bare, "twin": framed(twin)}
        if native is not None:
            cases["native"] = with_worker(True, framed(native))
            cases["native-1"] = with_worker(False, framed(native))
            cases["native-2"] = with_worker(True, framed(native), adaptive=False)
        med = interleaved(cases, args.rounds)
        if native is not None:
            native.use_worker(True)

        print(
            f"{name:<18} {med['bare'] * 1e6:>7.0f} us {_cell(med, 'native', 16)} "
            f"{_cell(med, 'native-1', 18)} {_cell(med, 'native-2', 18)} {_cell(med, 'twin', 16)}"
        )
    payload = memoryview(frags[3])[HEADER_SIZE:]
    hashed = interleaved({"xxh3": lambda: format.xxh3(payload), "copy": lambda: bytes(payload)}, args.rounds)
    n = len(payload)
    print(
        f"one payload of {n} bytes: xxh3 {hashed['xxh3'] * 1e6:.1f} us ({n / hashed['xxh3'] / 1e9:.1f} GB/s), "
        f"copy {hashed['copy'] * 1e6:.1f} us ({n / hashed['copy'] / 1e9:.1f} GB/s)"
    )
    if native is not None:
        figures = native.worker_figures()
        print(
            "worker choice (ns/byte, moving averages): "
            + "; ".join(
                f"{op}: worker {f['worker']:.3f}, inline {f['inline']:.3f}" for op, f in figures.items()
            )
        )
    print("ratio = framed / bare time (<= 1.10 is the target; < 1 is faster than bare pyeclib)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
