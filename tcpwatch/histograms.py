"""Kernel log2 histograms to Prometheus buckets: pure, so tests feed it lists.

The eBPF program counts durations in SLOTS slots of powers of two nanoseconds: slot 0 holds
stays under 2^FIRST_SLOT ns, slot j stays in [2^(FIRST_SLOT+j-1), 2^(FIRST_SLOT+j)) ns, and the
last slot stays of 2^LAST_SLOT ns or more (bcc's bpf_log2l, clamped). The program is compiled with
these constants, so it keeps no slot that would not be exported. A Prometheus bucket is
cumulative with an upper bound, so bucket ``le = 2^(FIRST_SLOT+j) ns`` is the sum of slots 0..j.
"""

from __future__ import annotations

from itertools import accumulate

FIRST_SLOT = 10   # le = 2^10 ns, about 1 µs: shorter stays land in the first bucket
LAST_SLOT = 45    # le = 2^45 ns, about 9.8 h: longer stays count only in +Inf
SLOTS = LAST_SLOT - FIRST_SLOT + 2


# Every bucket's upper bound in seconds, +Inf last.
BOUNDS = tuple(2.0 ** (FIRST_SLOT + j) / 1e9 for j in range(SLOTS - 1)) + (float("inf"),)


def cumulative_counts(slots) -> list:
    """The cumulative count of every bucket of BOUNDS, empty ones included, +Inf last."""
    counts = list(accumulate(list(slots[:SLOTS - 1]) + [0] * (SLOTS - 1 - len(slots[:SLOTS - 1]))))
    counts.append(sum(slots))
    return counts



def quantile(q: float, buckets) -> float | None:
    """The q-quantile of cumulative buckets [(le, count)] (+Inf last), interpolated linearly
    inside the bucket as PromQL's histogram_quantile does; None when nothing was observed.
    A rank in the +Inf bucket gives the highest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0
    for le, count in buckets:
        if count >= rank and count > below:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower
