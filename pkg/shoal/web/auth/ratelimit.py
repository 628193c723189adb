"""Token buckets per client IP and per credential, in memory, per process.

A bucket holds up to `burst` tokens and refills at `rate` per second; a request takes one.
An empty bucket answers how long until the next token, which becomes `Retry-After`.
The number of buckets is bounded (least recently used dropped first; a dropped bucket comes
back full, so the bound errs towards letting a client through, never towards locking it out).
IPv6 clients are bucketed per /64, since one host usually holds the whole /64.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """`rate` tokens per second, up to `burst`; rate 0 means unlimited."""

    rate: float
    burst: float

    @classmethod
    def parse(cls, spec: str | Rate | None) -> Rate:
        """'100' (burst = 2 x rate), '100/300' (rate/burst), '0' or '' (off)."""
        if isinstance(spec, Rate):
            return spec
        spec = (spec or "0").strip()
        rate_s, _, burst_s = spec.partition("/")
        try:
            rate = float(rate_s)
            burst = float(burst_s) if burst_s else 2 * rate
        except ValueError:
            raise ValueError(
                f"rate limit {spec!r}: expected RATE or RATE/BURST (requests per second)"
            ) from None
        if rate < 0 or burst < 0 or (rate > 0 and burst < 1) or not math.isfinite(rate + burst):
            raise ValueError(f"rate limit {spec!r}: rate >= 0 and burst >= 1")
        return cls(rate, burst)

    @property
    def enabled(self) -> bool:
        return self.rate > 0


class RateLimiter:
    def __init__(self, rate: Rate, max_buckets: int = 100_000) -> None:
        self.limit = rate
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, stamp]

    def take(self, key: str, now: float | None = None) -> float:
        """0.0 if a token was taken, else the seconds until one is available."""
        if not self.limit.enabled:
            return 0.0
        now = time.monotonic() if now is None else now
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_buckets:
                buckets.popitem(last=False)
            bucket = buckets[key] = [self.limit.burst, now]
        else:
            buckets.move_to_end(key)
            bucket[0] = min(self.limit.burst, bucket[0] + (now - bucket[1]) * self.limit.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.limit.rate


def client_bucket(host: str | None) -> str:
    """The bucket name of a client address (IPv6 by /64)."""
    if not host:
        return "-"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
