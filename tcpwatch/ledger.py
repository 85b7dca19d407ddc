"""Pure: per-namespace counters exported under labels that never go down.

Namespaces come and go, and move in and out of the named set (--collector.netns.max-series).
A counter series must never go down, and the sum over every series must count everything
that ever happened. The ledger keeps, for each exported label (a *bucket*), what it carries
from members it no longer has, and for each member (a namespace, by an identity the kernel
never reuses) its bucket and the total from which that bucket counts it:

    export(bucket) = carry(bucket) + sum over its members of (total(member) - base(member))

- A member that moves (named -> other, other -> named, a new name, live -> gone) leaves what
  it gave its old bucket there, and counts in the new one from its current total (its base).
- A member that ends (missing from the totals) leaves its last total in its bucket.
- A named bucket with no member left vanishes; its carry is folded into the bucket its member
  went to ("gone" when it ended). So the sum over series never drops and nothing goes down.
- "other" and "gone" are accumulators: once shown they stay.
- A member whose total goes down (a reused identity) ends, and a new member begins.

Values are flat ({key: number}, any hashable keys): the caller flattens its families.
"""

from __future__ import annotations

from typing import Dict, Hashable, Mapping

GONE = "gone"
OTHER = "other"
ACCUMULATORS = (OTHER, GONE)

Flat = Dict[Hashable, float]


def _plus(into: Flat, values: Mapping) -> None:
    for key, value in values.items():
        if value:
            into[key] = into.get(key, 0) + value


def _minus(values: Mapping, base: Mapping) -> Flat:
    return {key: value - base.get(key, 0) for key, value in values.items() if value != base.get(key, 0)}


def _went_down(now: Mapping, before: Mapping) -> bool:
    return any(now.get(key, 0) < value for key, value in before.items())


class Ledger:
    def __init__(self):
        self._bucket = {}     # identity -> its bucket
        self._base = {}       # identity -> the total its bucket counts it from
        self._last = {}       # identity -> its total at the last update
        self._carry = {}      # bucket -> what it keeps of members it no longer has
        self._moved_to = {}   # bucket -> where its last member went, until the bucket is folded

    def bucket_of(self, identity):
        """The bucket ``identity`` is counted in now, or None for a new one."""
        return self._bucket.get(identity)

    def update(self, totals: Mapping[Hashable, Mapping], buckets: Mapping[Hashable, str]) -> Dict[str, Flat]:
        """{bucket: flat values to export}. ``totals``: every identity the source still has,
        each with its totals since it began; ``buckets``: where each belongs now (a missing
        one is "gone")."""
        for identity in [i for i in self._bucket if i not in totals]:
            self._leave(identity, self._last.pop(identity), GONE)
        for identity, total in totals.items():
            bucket = buckets.get(identity, GONE)
            if self._bucket.get(identity) == bucket and self._last[identity] == total:
                self._last[identity] = total   # unchanged: the common case, nothing to do
                continue
            if identity in self._bucket and _went_down(total, self._last[identity]):
                self._leave(identity, self._last.pop(identity), GONE)
            if identity not in self._bucket:
                self._bucket[identity], self._base[identity] = bucket, {}
            elif self._bucket[identity] != bucket:
                self._leave(identity, total, bucket)
                self._bucket[identity], self._base[identity] = bucket, dict(total)
            self._last[identity] = total   # the caller's: never changed here
        self._fold_empty()
        return self._exports(totals)

    def _leave(self, identity, value: Mapping, destination: str) -> None:
        """``identity`` leaves its bucket at ``value``; what it gave the bucket stays there."""
        bucket = self._bucket.pop(identity)
        _plus(self._carry.setdefault(bucket, {}), _minus(value, self._base.pop(identity)))
        self._moved_to[bucket] = destination

    def _fold_empty(self) -> None:
        held = set(self._bucket.values())
        for bucket in [b for b in self._carry if b not in held and b not in ACCUMULATORS]:
            target = self._moved_to.pop(bucket, GONE)
            if target not in held and target not in ACCUMULATORS:
                target = GONE
            _plus(self._carry.setdefault(target, {}), self._carry.pop(bucket))
        for bucket in [b for b in self._moved_to if b not in self._carry]:
            del self._moved_to[bucket]

    def _exports(self, totals: Mapping) -> Dict[str, Flat]:
        """A bucket whose only part is one member counted from 0 gets that member's totals
        themselves (the common case: no copy); the caller must not change them."""
        exports = {bucket: dict(carry) for bucket, carry in self._carry.items()}
        borrowed = set()
        for identity, bucket in self._bucket.items():
            total, base = totals[identity], self._base[identity]
            if not base and bucket not in exports:
                exports[bucket] = total
                borrowed.add(bucket)
                continue
            if bucket in borrowed:
                exports[bucket] = dict(exports[bucket])
                borrowed.discard(bucket)
            _plus(exports.setdefault(bucket, {}), _minus(total, base) if base else total)
        return exports

    def __len__(self):
        """Members and buckets remembered: bounded by the identities the source has now."""
        return len(self._bucket) + len(self._carry)
