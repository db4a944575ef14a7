"""Reserved memory: PyTorch's CUDA caching allocator, replayed over a step's allocations.

``torch.cuda.max_memory_reserved`` is not the live-tensor peak. The caching allocator rounds every
request, carves small ones out of 2 MiB and 20 MiB segments, keeps freed blocks cached instead of
returning them, and reuses a cached block only when it is large enough — so blocks freed by one part
of the step (a layer's working set) cannot hold a larger tensor asked for later (the logits), and the
card holds both. This module re-implements the rules of ``c10/cuda/CUDACachingAllocator.cpp``
(PyTorch 2.x, default settings: no ``max_split_size_mb``, no ``expandable_segments``, one stream):

* sizes round up to 512 B; requests up to 1 MiB are *small* (their own pool, 2 MiB segments),
  larger ones *large* (a new segment is 20 MiB below 10 MiB, else the size rounded up to 2 MiB);
* a request takes the smallest cached free block of its pool that is large enough (best fit, then
  lowest address); a block is split when what remains is ≥ 512 B (small pool) or > 1 MiB (large);
* a freed block merges with free neighbours of its own segment; segments are never released
  (unless a ``cudaMalloc`` fails, which a replay with an unlimited card never sees).

:class:`CachingAllocator` replays alloc/free events; :func:`record_step` produces those events from
the real model run on fake tensors (:mod:`labkit.memory.trace`'s machinery), so the replay sees the
same request sizes, in the same order, with the same lifetimes, as a CUDA run of the same step.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

KB_512 = 512
SMALL_SIZE = 1 << 20  # kSmallSize: requests up to this use the small pool
SMALL_BUFFER = 2 << 20  # kSmallBuffer: a small-pool segment
LARGE_BUFFER = 20 << 20  # kLargeBuffer: a large-pool segment for requests under MIN_LARGE_ALLOC
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20  # kRoundLarge: larger segments are rounded up to this


def round_size(size: int) -> int:
    """The allocator's request size: at least 512 B, a multiple of 512 B."""
    return KB_512 if size < KB_512 else KB_512 * -(-size // KB_512)


def segment_size(size: int) -> int:
    """The ``cudaMalloc`` a request that finds no cached block makes (``get_allocation_size``)."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * -(-size // ROUND_LARGE)


@dataclass
class _Block:
    addr: int
    size: int
    segment: int
    small: bool
    free: bool = True
    prev: "_Block | None" = None
    next: "_Block | None" = None

    def key(self) -> tuple[int, int]:
        return (self.size, self.addr)


class OutOfMemory(MemoryError):
    """A request that no cached block holds and no new segment fits, even with the cache emptied."""


@dataclass
class CachingAllocator:
    """The caching allocator's bookkeeping, without memory: ``malloc`` / ``free`` and the peaks.

    ``capacity``: bytes the allocator may reserve (the card less the CUDA context), or None for no
    limit. When a new segment would not fit, the allocator releases every cached segment that is
    wholly free and tries again, as ``release_cached_blocks`` does before it raises out-of-memory.
    """

    capacity: int | None = None
    allocated: int = 0
    reserved: int = 0
    peak_allocated: int = 0
    peak_reserved: int = 0
    segments: int = 0
    _pools: dict[bool, list[tuple[int, int]]] = field(default_factory=lambda: {True: [], False: []})
    _by_key: dict[tuple[int, int], _Block] = field(default_factory=dict)
    _live: dict[int, _Block] = field(default_factory=dict)
    _next_addr: int = 0
    _ids: itertools.count = field(default_factory=itertools.count)

    def malloc(self, nbytes: int) -> int:
        """Allocate ``nbytes``; returns a handle for :meth:`free`."""
        size = round_size(max(1, nbytes))
        small = size <= SMALL_SIZE
        block = self._take_free(size, small)
        if block is None:
            seg = segment_size(size)
            if self.capacity is not None and self.reserved + seg > self.capacity:
                self._release_cached()
                if self.reserved + seg > self.capacity:
                    raise OutOfMemory(f"{size} B requested with {self.allocated} B allocated, "
                                      f"{self.reserved} B reserved of {self.capacity} B")
            block = _Block(self._next_addr, seg, self.segments, small, free=True)
            self._next_addr += seg
            self.segments += 1
            self.reserved += seg
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        else:
            self._unlist(block)
        remaining = block.size - size
        if remaining >= KB_512 if small else remaining > SMALL_SIZE:
            rest = _Block(block.addr + size, remaining, block.segment, small, True, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            self._list(rest)
        block.free = False
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        handle = next(self._ids)
        self._live[handle] = block
        return handle

    def free(self, handle: int) -> None:
        """Return a block to the cache, merged with its free neighbours in the segment."""
        block = self._live.pop(handle)
        self.allocated -= block.size
        block.free = True
        for other in (block.prev, block.next):
            if other is not None and other.free:
                self._unlist(other)
                if other is block.prev:
                    other.size += block.size
                    other.next = block.next
                    if block.next is not None:
                        block.next.prev = other
                    block = other
                else:
                    block.size += other.size
                    block.next = other.next
                    if other.next is not None:
                        other.next.prev = block
        self._list(block)

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()``: release every cached segment that is wholly free."""
        self._release_cached()

    def _release_cached(self) -> None:
        """``cudaFree`` every segment whose one block is free (a split segment in use stays)."""
        for small in (True, False):
            for key in list(self._pools[small]):
                block = self._by_key[key]
                if block.prev is None and block.next is None:
                    self._unlist(block)
                    self.reserved -= block.size

    def _take_free(self, size: int, small: bool) -> _Block | None:
        pool = self._pools[small]
        i = bisect.bisect_left(pool, (size, -1))
        return self._by_key[pool[i]] if i < len(pool) else None

    def _list(self, block: _Block) -> None:
        bisect.insort(self._pools[block.small], block.key())
        self._by_key[block.key()] = block

    def _unlist(self, block: _Block) -> None:
        pool = self._pools[block.small]
        i = bisect.bisect_left(pool, block.key())
        del pool[i]
        del self._by_key[block.key()]


def replay(events: list[tuple[str, int, int]], allocator: CachingAllocator | None = None) -> CachingAllocator:
    """Run ``("alloc", key, nbytes)`` / ``("free", key, 0)`` / ``("empty_cache", 0, 0)`` events through a
    caching allocator (``empty_cache``: ``torch.cuda.empty_cache()``, every wholly free segment released)."""
    alloc = allocator or CachingAllocator()
    handles: dict[int, int] = {}
    for kind, key, nbytes in events:
        if kind == "alloc":
            handles[key] = alloc.malloc(nbytes)
        elif kind == "empty_cache":
            alloc.empty_cache()
        elif key in handles:
            alloc.free(handles.pop(key))
    return alloc


def smallest_capacity(events: list[tuple[str, int, int]], resolution: int = 32 << 20) -> int:
    """The least ``capacity`` (to ``resolution``) the events run in without :class:`OutOfMemory`: what a
    card must leave the allocator for the step to fit — between the allocated and the reserved peak."""
    def runs(capacity: int) -> bool:
        try:
            replay(events, CachingAllocator(capacity=capacity))
            return True
        except OutOfMemory:
            return False

    free_run = replay(events)
    return least_passing(runs, free_run.peak_allocated, free_run.peak_reserved, resolution)


def least_passing(passes: Callable[[int], bool], lo: int, hi: int, resolution: int) -> int:
    """The least capacity in (``lo``, ``hi``], to ``resolution``, at which ``passes`` holds, for a ``passes``
    that fails below some capacity and holds from it on (``hi`` holds): bisection. The replay's smallest card
    and :func:`labkit.memory.measure.smallest_card`'s real one are both found with it."""
    while hi - lo > resolution:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid) else (mid, hi)
    return hi
