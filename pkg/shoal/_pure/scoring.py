"""Pure-Python twin of ext/scoring.pyx: same API, same arithmetic in the same order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def ewma(previous: float, sample: float, alpha: float) -> float:
    """Exponentially weighted moving average: alpha weighs the new sample."""
    return alpha * sample + (1.0 - alpha) * previous


def score(
    latency_ms: float,
    bandwidth_mbps: float,
    success_rate: float,
    inflight: float = 0.0,
    penalty: float = 0.5,
    latency_scale_ms: float = 10.0,
) -> float:
    """The score of one node from its estimates (higher is better)."""
    return bandwidth_mbps * success_rate / (1.0 + latency_ms / latency_scale_ms) / (1.0 + penalty * inflight)


def rank_arrays(
    latency: Sequence[float],
    bandwidth: Sequence[float],
    success: Sequence[float],
    inflight_counts: Sequence[float],
    penalty: float = 0.5,
    latency_scale_ms: float = 10.0,
) -> tuple[list[int], list[float]]:
    """Indices of the nodes, best score first (ties: lower index first), and their scores.

    Takes sequences of floats or double buffers (array('d'), numpy float64) of one length.
    """
    latency_ms, bandwidth_mbps, success_rate, inflight = latency, bandwidth, success, inflight_counts
    n = len(latency_ms)
    if len(bandwidth_mbps) != n or len(success_rate) != n or len(inflight) != n:
        raise ValueError("all arrays must have the same length")
    scores = [
        score(latency_ms[i], bandwidth_mbps[i], success_rate[i], inflight[i], penalty, latency_scale_ms)
        for i in range(n)
    ]
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    return order, [scores[i] for i in order]


class NodeScores:
    """Per-node estimates (latency, bandwidth, success rate, downloads in flight) and a ranking."""

    def __init__(
        self,
        alpha: float = 0.3,
        penalty: float = 0.5,
        latency_scale_ms: float = 10.0,
        prior_latency_ms: float = 50.0,
        prior_bandwidth_mbps: float = 10.0,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.penalty = penalty
        self.latency_scale_ms = latency_scale_ms
        self.prior_latency_ms = prior_latency_ms
        self.prior_bandwidth_mbps = prior_bandwidth_mbps
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        self._latency: list[float] = []
        self._bandwidth: list[float] = []
        self._success: list[float] = []
        self._inflight: list[float] = []
        self._samples: list[int] = []

    def add(self, node: str) -> int:
        """Track `node` (idempotent); returns its slot."""
        slot = self._index.get(node)
        if slot is not None:
            return slot
        self._index[node] = len(self._names)
        self._names.append(node)
        self._latency.append(self.prior_latency_ms)
        self._bandwidth.append(self.prior_bandwidth_mbps)
        self._success.append(1.0)
        self._inflight.append(0.0)
        self._samples.append(0)
        return self._index[node]

    @property
    def nodes(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, node: object) -> bool:
        return node in self._index

    def record_ping(self, node: str, seconds: float, ok: bool = True) -> None:
        """A HEAD /ping round trip: updates latency (when ok) and success rate."""
        i = self.add(node)
        if ok:
            self._latency_sample(i, seconds * 1000.0)
        self._success[i] = ewma(self._success[i], 1.0 if ok else 0.0, self.alpha)

    def record_download(self, node: str, seconds: float, nbytes: int, ok: bool = True) -> None:
        """A finished (or failed) download: updates bandwidth, latency and success rate."""
        i = self.add(node)
        if ok and seconds > 0.0 and nbytes > 0:
            mbps = nbytes * 8.0 / seconds / 1e6
            if self._samples[i] == 0:
                self._bandwidth[i] = mbps
            else:
                self._bandwidth[i] = ewma(self._bandwidth[i], mbps, self.alpha)
            self._samples[i] += 1
        self._success[i] = ewma(self._success[i], 1.0 if ok else 0.0, self.alpha)

    def _latency_sample(self, i: int, ms: float) -> None:
        if self._samples[i] == 0 and self._latency[i] == self.prior_latency_ms:
            self._latency[i] = ms
        else:
            self._latency[i] = ewma(self._latency[i], ms, self.alpha)

    def set_inflight(self, node: str, count: float) -> None:
        self._inflight[self.add(node)] = float(count)

    def score(self, node: str) -> float:
        i = self._index[node]
        return score(
            self._latency[i],
            self._bandwidth[i],
            self._success[i],
            self._inflight[i],
            self.penalty,
            self.latency_scale_ms,
        )

    def stats(self, node: str) -> dict:
        i = self._index[node]
        return {
            "latency_ms": self._latency[i],
            "bandwidth_mbps": self._bandwidth[i],
            "success_rate": self._success[i],
            "inflight": self._inflight[i],
            "samples": self._samples[i],
            "score": self.score(node),
        }

    def rank(self, nodes: Iterable[str] | None = None) -> list[str]:
        """Nodes best first (ties: the order they were added). `nodes` limits the ranking."""
        slots = range(len(self._names)) if nodes is None else [self._index[n] for n in nodes]
        scored = [(self.score(self._names[i]), i) for i in slots]
        scored.sort(key=lambda t: (-t[0], t[1]))
        return [self._names[i] for _, i in scored]
