from tcpwatch import histograms


def cumulative_buckets(slots):
    return list(zip(histograms.BOUNDS, histograms.cumulative_counts(slots)))


def test_slots_become_cumulative_second_buckets_with_empty_ones_filled():
    slots = [0] * histograms.SLOTS
    slots[0] = 2      # below the first bound: counted in every bucket
    slots[10] = 5     # [2^19, 2^20) ns
    slots[-1] = 1     # beyond the last bound: only in +Inf
    buckets = cumulative_buckets(slots)
    assert len(buckets) == histograms.LAST_SLOT - histograms.FIRST_SLOT + 2
    assert buckets[0] == (2 ** 10 / 1e9, 2)
    as_dict = dict(buckets)
    assert as_dict[2 ** 19 / 1e9] == 2 and as_dict[2 ** 20 / 1e9] == 7
    assert buckets[-2][1] == 7 and buckets[-1] == (float("inf"), 8)
    counts = [c for _, c in buckets]
    assert counts == sorted(counts)

    assert buckets[0][0] < 2e-6 and buckets[-2][0] > 3600 * 9   # about 1 µs to 9.8 h


def test_an_empty_state_has_every_bucket_at_zero():
    buckets = cumulative_buckets([])
    assert len(buckets) == histograms.SLOTS and all(count == 0 for _, count in buckets)
