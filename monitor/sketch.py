"""A mergeable quantile sketch with relative accuracy (DDSketch, Masson et al., VLDB 2019).

Positive values fall into logarithmic buckets `(gamma^(i-1), gamma^i]`; a quantile is answered
with its bucket's midpoint in relative terms, so it is within `ALPHA` (0.5%) of the exact value
of the same rank, whatever the distribution. Count, sum, min and max are exact. Two sketches
merge by adding bucket counts, so an hour's sketch merged with the next hour's is the sketch of
both hours: that is what lets reports answer percentiles over any range from stored rollups.

Quantiles use the nearest-rank definition: `quantile(q)` is (within 0.5% of) the value of rank
`ceil(q * count)` in sorted order. Values at or below 0 count in a bucket of their own, answered
as 0; NaN and infinities are ignored. The relative guarantee holds in [MIN_VALUE, MAX_VALUE]:
values outside are bucketed at the edge (a sub-microsecond latency is noise, and the cap keeps a
server sending an absurd header from inflating every merge).

Pure stdlib. Buckets are a dense list from the lowest index used, so decoding and merging run
as C loops (array, map): a year-long report merges tens of thousands of them.
"""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate
from operator import add

ALPHA = 0.005
GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(GAMMA)
MIN_VALUE = 1e-3
MAX_VALUE = 1e12
_MIN_INDEX = math.ceil(math.log(MIN_VALUE) / _LOG_GAMMA)
_MAX_INDEX = math.ceil(math.log(MAX_VALUE) / _LOG_GAMMA)

# version, lane type, count, zeros, sum, min, max, first bucket index, buckets
_HEADER = struct.Struct("<BcQQdddhH")
_VERSION = 1


def _index(value: float) -> int:
    return min(max(math.ceil(math.log(value) / _LOG_GAMMA), _MIN_INDEX), _MAX_INDEX)


def _lanes(blob: bytes) -> tuple[str, int, int]:
    """(array type code, first bucket index, buckets) of an encoding."""
    _, lane, _, _, _, _, _, offset, size = _HEADER.unpack_from(blob)
    return lane.decode(), offset, size


def _value(index: int) -> float:
    """The point of bucket `index` within ALPHA of every value in it."""
    return 2 * GAMMA**index / (GAMMA + 1)


class Sketch:
    """Values added one at a time or merged from other sketches; see the module docstring."""

    __slots__ = ("count", "counts", "encoded", "max", "min", "offset", "sum", "zeros")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.zeros = 0
        self.offset = 0  # bucket index of counts[0]
        self.counts: list[int] = []
        # Encodings (from_bytes) merged in but not decoded yet: a year's report merges tens of
        # thousands of sketches, and decoding each once at the end halves the work.
        self.encoded: list[bytes] = []

    def __bool__(self) -> bool:
        return self.count > 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return (self.count, self.zeros, self.min, self.max, self._buckets()) == (
            other.count, other.zeros, other.min, other.max, other._buckets()
        ) and math.isclose(self.sum, other.sum, rel_tol=1e-12, abs_tol=1e-9)

    def __repr__(self) -> str:
        return f"Sketch(count={self.count}, min={self.min}, max={self.max})"

    def _buckets(self) -> dict[int, int]:
        self._decode()
        return {self.offset + i: c for i, c in enumerate(self.counts) if c}

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        if value <= 0:
            self.zeros += 1
            return
        self._add_counts(_index(value), (1,))

    def merge(self, other: Sketch) -> None:
        """Add every value of `other` to this sketch."""
        if not other.count:
            return
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.zeros += other.zeros
        self.encoded.extend(other.encoded)
        if other.counts:
            self._add_counts(other.offset, other.counts)

    def _add_counts(self, offset: int, counts: Sequence[int]) -> None:
        if not self.counts:
            self.offset, self.counts = offset, list(counts)
            return
        if offset < self.offset:
            self.counts[0:0] = [0] * (self.offset - offset)
            self.offset = offset
        start = offset - self.offset
        end = start + len(counts)
        if end > len(self.counts):
            self.counts.extend([0] * (end - len(self.counts)))
        self.counts[start:end] = map(add, self.counts[start:end], counts)

    def _decode(self) -> None:
        for blob in self.encoded:
            lane, offset, size = _lanes(blob)
            counts = array(lane)
            counts.frombytes(blob[_HEADER.size:])
            if len(counts) != size:
                raise ValueError(f"sketch holds {len(counts)} buckets, its header says {size}")
            self._add_counts(offset, counts)
        self.encoded = []

    def quantile(self, q: float) -> float | None:
        """The value of rank ceil(q * count), within ALPHA; None for an empty sketch."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """quantile(q) for each q, walking the buckets once."""
        if not self.count:
            return [None] * len(qs)
        self._decode()
        cumulative = list(accumulate(self.counts))
        result: list[float | None] = []
        for q in qs:
            rank = min(max(math.ceil(q * self.count), 1), self.count)
            # The extremes are known exactly.
            if rank == 1:
                result.append(self.min)
            elif rank == self.count:
                result.append(self.max)
            elif rank <= self.zeros:
                result.append(min(max(0.0, self.min), self.max))
            else:
                position = bisect_left(cumulative, rank - self.zeros)
                result.append(min(max(_value(self.offset + position), self.min), self.max))
        return result

    def cumulative_at(self, bounds: Sequence[float]) -> list[int]:
        """How many values are at most each bound (Prometheus `le` buckets). A value within
        ALPHA of a bound may be counted on the wrong side of it."""
        self._decode()
        cumulative = list(accumulate(self.counts))
        result = []
        for bound in bounds:
            if bound >= self.max:
                result.append(self.count)
            elif bound < self.min:
                result.append(0)
            elif bound <= 0:
                result.append(self.zeros)
            else:
                index = _index(bound)
                # Buckets below the bound's own are wholly under it; its own counts if its
                # point is.
                last = index - self.offset - (1 if _value(index) > bound else 0)
                below = cumulative[min(last, len(cumulative) - 1)] if last >= 0 else 0
                result.append(self.zeros + below)
        return result

    def to_bytes(self) -> bytes:
        """A compact encoding: a fixed header, then one count per bucket in the narrowest
        unsigned lane that fits (a canary hour's counts fit in a byte each)."""
        self._decode()
        top = max(self.counts, default=0)
        lane = "B" if top < 1 << 8 else "H" if top < 1 << 16 else "I" if top < 1 << 32 else "Q"
        header = _HEADER.pack(_VERSION, lane.encode(), self.count, self.zeros, self.sum,
                              self.min, self.max, self.offset, len(self.counts))
        return header + array(lane, self.counts).tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Sketch:
        """The sketch `to_bytes` encoded; its buckets are decoded when first needed."""
        version, _, count, zeros, total, low, high, _, size = _HEADER.unpack_from(blob)
        if version != _VERSION:
            raise ValueError(f"unknown sketch encoding version {version}")
        sketch = cls()
        sketch.count, sketch.zeros, sketch.sum = count, zeros, total
        sketch.min, sketch.max = low, high
        if size:
            sketch.encoded = [blob]
        return sketch

    @classmethod
    def of(cls, values: Sequence[float]) -> Sketch:
        sketch = cls()
        for value in values:
            sketch.add(value)
        return sketch
