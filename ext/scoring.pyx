# cython: language_level=3
"""Latency scoring for the smart client: EWMA estimates per node and a ranking of many nodes.

Twin: shoal/_pure/scoring.py (same API, same arithmetic in the same order, so the two agree
to the last bit on IEEE doubles). The score of a node is

    bandwidth_mbps * success_rate / (1 + latency_ms / latency_scale_ms) / (1 + penalty * inflight)

so a node twice as fast scores twice as high, 10 ms of latency halves a score, and each
download already in flight on a node discounts it.
"""

from cpython.array cimport array
from libc.stdlib cimport free, qsort, realloc

cdef struct Ranked:
    double score
    Py_ssize_t index


cdef int _by_score_desc(const void *a, const void *b) noexcept nogil:
    cdef const Ranked *x = <const Ranked *> a
    cdef const Ranked *y = <const Ranked *> b
    if x.score > y.score:
        return -1
    if x.score < y.score:
        return 1
    return (x.index > y.index) - (x.index < y.index)


cpdef double ewma(double previous, double sample, double alpha):
    """Exponentially weighted moving average: alpha weighs the new sample."""
    return alpha * sample + (1.0 - alpha) * previous


cdef inline double _score(double latency_ms, double bandwidth_mbps, double success_rate,
                          double inflight, double penalty, double latency_scale_ms) noexcept nogil:
    return bandwidth_mbps * success_rate / (1.0 + latency_ms / latency_scale_ms) / (1.0 + penalty * inflight)


cpdef double score(double latency_ms, double bandwidth_mbps, double success_rate,
                   double inflight=0.0, double penalty=0.5, double latency_scale_ms=10.0):
    """The score of one node from its estimates (higher is better)."""
    return _score(latency_ms, bandwidth_mbps, success_rate, inflight, penalty, latency_scale_ms)


cdef const double[:] _doubles(object values):
    """A double buffer over `values`: used as is when it is one (array('d'), numpy), copied otherwise."""
    try:
        return values
    except (TypeError, ValueError):
        return array("d", values)


def rank_arrays(latency, bandwidth, success, inflight_counts, double penalty=0.5,
                double latency_scale_ms=10.0):
    """Indices of the nodes, best score first (ties: lower index first), and their scores.

    Takes sequences of floats or double buffers (array('d'), numpy float64) of one length.
    """
    cdef const double[:] latency_ms = _doubles(latency)
    cdef const double[:] bandwidth_mbps = _doubles(bandwidth)
    cdef const double[:] success_rate = _doubles(success)
    cdef const double[:] inflight = _doubles(inflight_counts)
    cdef Py_ssize_t n = latency_ms.shape[0], i
    if bandwidth_mbps.shape[0] != n or success_rate.shape[0] != n or inflight.shape[0] != n:
        raise ValueError("all arrays must have the same length")
    cdef Ranked *items = <Ranked *> realloc(NULL, (n if n > 0 else 1) * sizeof(Ranked))
    if items == NULL:
        raise MemoryError()
    try:
        with nogil:
            for i in range(n):
                items[i].score = _score(latency_ms[i], bandwidth_mbps[i], success_rate[i], inflight[i],
                                        penalty, latency_scale_ms)
                items[i].index = i
            qsort(items, n, sizeof(Ranked), _by_score_desc)
        return [items[i].index for i in range(n)], [items[i].score for i in range(n)]
    finally:
        free(items)


cdef class NodeScores:
    """Per-node estimates (latency, bandwidth, success rate, downloads in flight) and a ranking."""

    cdef public double alpha, penalty, latency_scale_ms, prior_latency_ms, prior_bandwidth_mbps
    cdef double *latency
    cdef double *bandwidth
    cdef double *success
    cdef double *inflight
    cdef long *samples
    cdef Py_ssize_t n, capacity
    cdef dict index
    cdef list names

    def __cinit__(self):
        self.latency = self.bandwidth = self.success = self.inflight = NULL
        self.samples = NULL
        self.n = self.capacity = 0

    def __init__(self, double alpha=0.3, double penalty=0.5, double latency_scale_ms=10.0,
                 double prior_latency_ms=50.0, double prior_bandwidth_mbps=10.0):
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.penalty = penalty
        self.latency_scale_ms = latency_scale_ms
        self.prior_latency_ms = prior_latency_ms
        self.prior_bandwidth_mbps = prior_bandwidth_mbps
        self.index = {}
        self.names = []

    def __dealloc__(self):
        free(self.latency); free(self.bandwidth); free(self.success); free(self.inflight); free(self.samples)

    cdef void _grow(self) except *:
        cdef Py_ssize_t cap = self.capacity * 2 if self.capacity else 16
        cdef double *lat = <double *> realloc(self.latency, cap * sizeof(double))
        if lat == NULL: raise MemoryError()
        self.latency = lat
        lat = <double *> realloc(self.bandwidth, cap * sizeof(double))
        if lat == NULL: raise MemoryError()
        self.bandwidth = lat
        lat = <double *> realloc(self.success, cap * sizeof(double))
        if lat == NULL: raise MemoryError()
        self.success = lat
        lat = <double *> realloc(self.inflight, cap * sizeof(double))
        if lat == NULL: raise MemoryError()
        self.inflight = lat
        cdef long *smp = <long *> realloc(self.samples, cap * sizeof(long))
        if smp == NULL: raise MemoryError()
        self.samples = smp
        self.capacity = cap

    cpdef Py_ssize_t add(self, str node):
        """Track `node` (idempotent); returns its slot."""
        cdef object slot = self.index.get(node)
        if slot is not None:
            return slot
        if self.n == self.capacity:
            self._grow()
        cdef Py_ssize_t i = self.n
        self.latency[i] = self.prior_latency_ms
        self.bandwidth[i] = self.prior_bandwidth_mbps
        self.success[i] = 1.0
        self.inflight[i] = 0.0
        self.samples[i] = 0
        self.index[node] = i
        self.names.append(node)
        self.n += 1
        return i

    @property
    def nodes(self):
        return list(self.names)

    def __len__(self):
        return self.n

    def __contains__(self, node):
        return node in self.index

    cpdef void record_ping(self, str node, double seconds, bint ok=True) except *:
        """A HEAD /ping round trip: updates latency (when ok) and success rate."""
        cdef Py_ssize_t i = self.add(node)
        if ok:
            self._latency_sample(i, seconds * 1000.0)
        self.success[i] = ewma(self.success[i], 1.0 if ok else 0.0, self.alpha)

    cpdef void record_download(self, str node, double seconds, long nbytes, bint ok=True) except *:
        """A finished (or failed) download: updates bandwidth, latency and success rate."""
        cdef Py_ssize_t i = self.add(node)
        cdef double mbps
        if ok and seconds > 0.0 and nbytes > 0:
            mbps = nbytes * 8.0 / seconds / 1e6
            if self.samples[i] == 0:
                self.bandwidth[i] = mbps
            else:
                self.bandwidth[i] = ewma(self.bandwidth[i], mbps, self.alpha)
            self.samples[i] += 1
        self.success[i] = ewma(self.success[i], 1.0 if ok else 0.0, self.alpha)

    cdef void _latency_sample(self, Py_ssize_t i, double ms):
        if self.samples[i] == 0 and self.latency[i] == self.prior_latency_ms:
            self.latency[i] = ms
        else:
            self.latency[i] = ewma(self.latency[i], ms, self.alpha)

    cpdef void set_inflight(self, str node, double count) except *:
        self.inflight[self.add(node)] = count

    cpdef double score(self, str node) except? -1.0:
        cdef Py_ssize_t i = self.index[node]
        return _score(self.latency[i], self.bandwidth[i], self.success[i], self.inflight[i],
                      self.penalty, self.latency_scale_ms)

    def stats(self, str node):
        cdef Py_ssize_t i = self.index[node]
        return {
            "latency_ms": self.latency[i],
            "bandwidth_mbps": self.bandwidth[i],
            "success_rate": self.success[i],
            "inflight": self.inflight[i],
            "samples": self.samples[i],
            "score": self.score(node),
        }

    def rank(self, nodes=None):
        """Nodes best first (ties: the order they were added). `nodes` limits the ranking."""
        cdef Py_ssize_t m, k, i
        cdef Ranked *items
        if nodes is None:
            m = self.n
        else:
            nodes = list(nodes)
            m = len(nodes)
        items = <Ranked *> realloc(NULL, (m if m > 0 else 1) * sizeof(Ranked))
        if items == NULL:
            raise MemoryError()
        try:
            for k in range(m):
                i = k if nodes is None else self.index[nodes[k]]
                items[k].score = _score(self.latency[i], self.bandwidth[i], self.success[i],
                                        self.inflight[i], self.penalty, self.latency_scale_ms)
                items[k].index = i
            with nogil:
                qsort(items, m, sizeof(Ranked), _by_score_desc)
            return [self.names[items[k].index] for k in range(m)]
        finally:
            free(items)
