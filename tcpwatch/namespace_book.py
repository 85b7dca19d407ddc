"""What tcpwatch remembers of network namespaces from one scrape to the next, so that pods
coming and going lose no count and no counter series goes down.

- Identity: a namespace is its cookie (the kernel never hands one out twice), or its inode
  where the cookie is unknown. Two namespaces that share an inode over time are two.
- Labels over time (LabelHistory): a label is never passed from one namespace to another
  while tcpwatch runs. A namespace whose name was carried by another one before gets
  ``NAME~2`` (then ``~3``...), so its counters start a series of their own.
- Buckets: each namespace is counted under its label, under "other" past
  --collector.netns.max-series, or under "gone" once it is no longer found (ledger.py keeps
  every series monotone through these moves). eBPF counts of a namespace never found (it
  lived between two scrapes) go to "gone" directly; those of no namespace at all (slot 0:
  unknown, or every slot taken) to "other".
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from . import histograms, namespaces
from .ledger import GONE, OTHER, Ledger
from .model import NetnsActivity

REMEMBERED_LABELS = 10_000   # labels of gone namespaces kept from reuse (oldest forgotten first)


class LabelHistory:
    def __init__(self, remembered: int = REMEMBERED_LABELS):
        self._carrier = OrderedDict()   # label -> the identity that carried it
        self._label_of = {}             # identity -> (wanted name, label), for namespaces found now
        self._remembered = remembered

    def labels(self, wanted: dict) -> dict:
        """{identity: label} for {identity: the name the naming rules give it now}."""
        labels = {}
        for identity, name in wanted.items():
            previous = self._label_of.get(identity)
            label = previous[1] if previous and previous[0] == name else self._fresh(identity, name)
            labels[identity] = label
            self._carrier[label] = identity
            self._carrier.move_to_end(label)
        self._label_of = {identity: (wanted[identity], label) for identity, label in labels.items()}
        while len(self._carrier) > max(self._remembered, len(labels)):
            self._carrier.popitem(last=False)
        return labels

    def _fresh(self, identity, name: str) -> str:
        label, n = name, 1
        while self._carrier.get(label, identity) != identity:
            n += 1
            label = f"{name}~{n}"
        return label


def flatten_activity(activity: NetnsActivity) -> dict:
    flat = {("t",) + pair: n for pair, n in activity.transitions.items() if n}
    for state, slots in activity.duration_slots.items():
        flat.update((("d", state, i), n) for i, n in enumerate(slots) if n)
    flat.update((("s", state), ns) for state, ns in activity.duration_sum_ns.items() if ns)
    flat.update((("c", name), n) for name, n in activity.counters.items() if n)
    return flat


def activity_of(flat: dict, slots: int) -> NetnsActivity:
    activity = NetnsActivity()
    for key, value in flat.items():
        kind = key[0]
        if kind == "t":
            activity.transitions[key[1:]] = value
        elif kind == "d":
            activity.duration_slots.setdefault(key[1], [0] * slots)[key[2]] = value
        elif kind == "s":
            activity.duration_sum_ns[key[1]] = value
        else:
            activity.counters[key[1]] = value
    return activity


def flatten_kernel(counters: dict) -> dict:
    return {(group, name): value for group, fields in counters.items() for name, value in fields.items()}


def kernel_of(flat: dict) -> dict:
    groups = {}
    for (group, name), value in flat.items():
        groups.setdefault(group, Counter())[name] = value
    return groups


class NamespaceBook:
    """The persistent half of NamespaceGroups (snapshot.py): label history and ledgers."""

    def __init__(self):
        self.labels = LabelHistory()
        self.activity = Ledger()   # the eBPF program's counts, by slot key (cookie)
        self._flat_cache = {}      # slot key -> (NetnsActivity, its flat values) of the last scrape
        self.kernel = Ledger()     # /proc/net/netstat and snmp, by namespace identity

    def name_dumps(self, dumps) -> dict:
        """{inode: label} of the dumped namespaces, over time (LabelHistory)."""
        labels = self.labels.labels({dump.identity: dump.info.name for dump in dumps})
        return {dump.info.inode: labels[dump.identity] for dump in dumps}

    def activity_buckets(self, reading, label_of_inode: dict, dumps) -> dict:
        """{slot key: bucket} for the eBPF reading: by cookie for dumped namespaces, by inode
        for those found without a cookie, "other" for slot 0, "gone" for the rest. Without
        dumps (discovery or the dumps failed) each key stays where it was: nothing moves on
        a failed read."""
        if dumps is None:
            return {key: self.activity.bucket_of(key) or (GONE if key else OTHER) for key in reading.netns}
        by_key = {dump.cookie: label_of_inode[dump.info.inode] for dump in dumps.dumps if dump.cookie}
        with_cookie = {dump.info.inode for dump in dumps.dumps if dump.cookie}
        buckets = {}
        for key in reading.netns:
            inode = reading.netns_inodes.get(key, 0)
            if not key:
                buckets[key] = OTHER
            elif key in by_key:
                buckets[key] = by_key[key]
            elif inode in label_of_inode and inode not in with_cookie:
                buckets[key] = label_of_inode[inode]
            else:
                buckets[key] = GONE
        return buckets

    def activity_exports(self, reading, label_of_inode: dict, dumps) -> dict:
        """{bucket: NetnsActivity} of the eBPF program's counts, monotone (ledger.py). A
        namespace whose counts did not change since the last scrape is not flattened again,
        and a bucket that is one namespace's own counts is that namespace's activity."""
        buckets = self.activity_buckets(reading, label_of_inode, dumps)
        flat, activity_of_flat, cache = {}, {}, {}
        for key, activity in reading.netns.items():
            previous = self._flat_cache.get(key)
            values = previous[1] if previous is not None and previous[0] == activity else flatten_activity(activity)
            flat[key], cache[key] = values, (activity, values)
            activity_of_flat[id(values)] = activity
        self._flat_cache = cache
        exports = self.activity.update(flat, buckets)
        return {bucket: activity_of_flat.get(id(values)) or activity_of(values, histograms.SLOTS)
                for bucket, values in exports.items()}

    def kernel_exports(self, label_of_inode: dict, dumps) -> dict:
        """{bucket: {"TcpExt": Counter, "Tcp": Counter}} of the kernel's counter files."""
        flat = self.kernel.update({d.identity: flatten_kernel(d.kernel_counters) for d in dumps.dumps},
                                  {d.identity: label_of_inode[d.info.inode] for d in dumps.dumps})
        return {bucket: kernel_of(values) for bucket, values in flat.items()}


def cap(label_of_inode: dict, weights: dict, max_series: int) -> dict:
    """The named set: the top --collector.netns.max-series by socket count keep their label,
    the rest are "other"."""
    kept = namespaces.kept_names(weights, max_series)
    return {inode: namespaces.label_of(label, kept) for inode, label in label_of_inode.items()}
