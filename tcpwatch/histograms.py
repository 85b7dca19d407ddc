"""Kernel log2 histograms to Prometheus buckets: pure, so tests feed it lists.

The eBPF program counts durations in slots of powers of two nanoseconds: slot k holds
values in [2^(k-1), 2^k) ns (bcc's bpf_log2l). A Prometheus bucket is cumulative with an
upper bound, so bucket ``le = 2^k ns`` is the sum of slots 0..k.
"""

from __future__ import annotations

FIRST_SLOT = 10   # le = 2^10 ns, about 1 µs: shorter stays land in the first bucket
LAST_SLOT = 45    # le = 2^45 ns, about 9.8 h: longer stays count only in +Inf


def cumulative_buckets(slots) -> list:
    """[(le seconds, cumulative count)] for every bound, empty ones included, then +Inf."""
    running = sum(slots[:FIRST_SLOT])
    buckets = []
    for k in range(FIRST_SLOT, LAST_SLOT + 1):
        running += slots[k] if k < len(slots) else 0
        buckets.append((2.0 ** k / 1e9, running))
    buckets.append((float("inf"), sum(slots)))
    return buckets
