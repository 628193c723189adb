"""Framing overhead of shoal.erasure against bare pyeclib, interleaved call by call, one run.

    python bench/erasure/overhead.py [--rounds 400] [--size 2097152]

Each round times, on the same 2 MiB, one call each (so machine noise hits all alike):
- bare pyeclib (the target's baseline: what the twin wraps);
- raw ISA-L, the floor: ctypes calls into the libisal pyeclib loaded, coding into buffers
  allocated once (no allocation, no header, no checksum); encode only;
- native shoal (ext/erasure.pyx: ISA-L called directly, framed and checksummed);
- the twin (pyeclib, then shoal's framing in Python).
Medians and the ratio to bare pyeclib are printed for encode, decode with two data fragments
lost and decode with both parities lost (the copy path), then the hash and copy speeds the
framing's own cost is made of. Target (issue #7): framed within 10% of bare, ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import time

from shoal import _native
from shoal.erasure import HEADER_SIZE, K, M, N, format


def _t(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(cases: dict, rounds: int) -> dict[str, float]:
    """Median seconds per case, cases timed one after the other in every round."""
    for fn in cases.values():  # warm up (page faults, malloc)
        for _ in range(20):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(_t(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def raw_isal_encode(data: bytes):
    """A closure doing only what ISA-L must: copy the data into 3 buffers, code 2 parities."""
    path = next(
        (
            f.split()[-1]
            for f in open("/proc/self/maps")
            if os.path.basename(f.split()[-1]).startswith("libisal")
        ),
        None,
    )
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    per = -(-len(data) // K)
    matrix = (ctypes.c_ubyte * (N * K))()
    tables = (ctypes.c_ubyte * (K * M * 32))()
    lib.gf_gen_rs_matrix(matrix, N, K)
    lib.ec_init_tables(K, M, ctypes.byref(matrix, K * K), tables)
    bufs = [(ctypes.c_ubyte * per)() for _ in range(N)]
    data_ptrs = (ctypes.POINTER(ctypes.c_ubyte) * K)(
        *[ctypes.cast(b, ctypes.POINTER(ctypes.c_ubyte)) for b in bufs[:K]]
    )
    parity_ptrs = (ctypes.POINTER(ctypes.c_ubyte) * M)(
        *[ctypes.cast(b, ctypes.POINTER(ctypes.c_ubyte)) for b in bufs[K:]]
    )
    src = ctypes.c_char_p(data)
    base = ctypes.cast(src, ctypes.c_void_p).value

    def run() -> None:
        for i in range(K):
            take = max(0, min(per, len(data) - i * per))
            ctypes.memmove(bufs[i], base + i * per, take)
        lib.ec_encode_data(per, K, M, tables, data_ptrs, parity_ptrs)

    return run


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
    raw = raw_isal_encode(data)
    ops = {
        "encode": (lambda: format.DRIVER.encode(data), raw, lambda m: lambda: m.encode(data)),
        "decode, 0+1 lost": (
            lambda: format.DRIVER.decode(frags[2:]),
            None,
            lambda m: lambda: m.decode(lost01),
        ),
        "decode, 3+4 lost": (
            lambda: format.DRIVER.decode(frags[:3]),
            None,
            lambda m: lambda: m.decode(lost34),
        ),
    }
    engine = native.engine() if native is not None else "not built"
    print(
        f"{args.size} bytes, {args.rounds} interleaved rounds, backend {format.backend()}, native codes with {engine}"
    )
    print(f"{'operation':<18} {'pyeclib':>10} {'raw ISA-L':>16} {'native shoal':>16} {'twin':>16}")
    for name, (bare, floor, framed) in ops.items():
        cases = {"bare": bare, "twin": framed(twin)}
        if floor is not None:
            cases["raw"] = floor
        if native is not None:
            cases["native"] = framed(native)
        med = interleaved(cases, args.rounds)
        print(
            f"{name:<18} {med['bare'] * 1e6:>7.0f} us {_cell(med, 'raw', 16)} "
            f"{_cell(med, 'native', 16)} {_cell(med, 'twin', 16)}"
        )
    payload = memoryview(frags[3])[HEADER_SIZE:]
    hashed = interleaved({"xxh3": lambda: format.xxh3(payload), "copy": lambda: bytes(payload)}, args.rounds)
    n = len(payload)
    print(
        f"one payload of {n} bytes: xxh3 {hashed['xxh3'] * 1e6:.1f} us ({n / hashed['xxh3'] / 1e9:.1f} GB/s), "
        f"copy {hashed['copy'] * 1e6:.1f} us ({n / hashed['copy'] / 1e9:.1f} GB/s)"
    )
    print("ratio = time / bare pyeclib time (<= 1.10 is the target; < 1 is faster than bare pyeclib)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
