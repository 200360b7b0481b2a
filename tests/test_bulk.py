"""touch_pages(): the bulk API does exactly what the same accesses one by one do."""

import numpy as np
import pytest

from ptreclaim.constants import (MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE,
                                 MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE)
from ptreclaim.errors import SegmentationFault

B = 0x2000_0000_0000
M = 1 << 20


def layout(mm):
    mm.mmap(B, 64 * M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE)
    mm.mmap(B + 128 * M, 8 * M, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    mm.mmap(B + 256 * M, 8 * M, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    mm.madvise(B + 128 * M, 4 * M, MADV_DONTNEED)


def observe(mm):
    return mm.status(), mm.vmas(), mm.tables(), [(a, e & ~0xFFFFFFFFFF000) for a, e in mm.entries()]


def random_accesses(seed, n):
    rng = np.random.default_rng(seed)
    bases = np.array([B, B + 128 * M, B + 256 * M], dtype=np.uint64)
    sizes = np.array([64 * M, 8 * M, 8 * M], dtype=np.uint64)
    which = rng.integers(0, 3, n)
    addrs = bases[which] + (rng.integers(0, 1 << 40, n).astype(np.uint64) % sizes[which])
    writes = (rng.random(n) < 0.6) & (which != 2)
    return addrs.astype(np.uint64), writes


@pytest.mark.parametrize("seed", range(4))
def test_bulk_equals_one_by_one(MM, seed):
    addrs, writes = random_accesses(seed, 3000)
    bulk, single = MM(), MM()
    layout(bulk)
    layout(single)
    bulk.touch_pages(addrs, writes)
    for a, w in zip(addrs.tolist(), writes.tolist()):
        single.touch(a, 1, write=w)
    assert observe(bulk) == observe(single)
    assert bulk.stats["page_faults"] == single.stats["page_faults"]
    bulk.check()


def test_bulk_stops_at_the_first_sigsegv(MM):
    rng = np.random.default_rng(9)
    addrs = B + rng.integers(0, 64 * M, 100).astype(np.uint64)   # all writable
    bad = 57
    addrs[bad] = B + 256 * M + 4096            # read-only mapping, written below
    bulk, single = MM(), MM()
    layout(bulk)
    layout(single)
    with pytest.raises(SegmentationFault) as info:
        bulk.touch_pages(addrs, True)
    assert info.value.index == bad and info.value.address == int(addrs[bad])
    for a in addrs[:bad].tolist():
        single.touch(a, 1, write=True)
    assert observe(bulk) == observe(single)


def test_bulk_scalar_write_and_read(MM):
    mm = MM()
    layout(mm)
    mm.touch_pages(np.arange(B, B + 2 * M, 4096, dtype=np.uint64), False)
    assert mm.status()["VmPTE"] == 12 and mm.status()["RssAnon"] == 0
    mm.touch_pages(np.arange(B, B + 2 * M, 4096, dtype=np.uint64), True)
    assert mm.status()["RssAnon"] == 2048


@pytest.mark.parametrize("bad, error", [
    (np.array([-1], dtype=np.int64), OverflowError),
    (np.array([1.5]), TypeError),
    (np.zeros((2, 2), dtype=np.uint64), ValueError),
])
def test_bulk_rejects_bad_addresses(MM, bad, error):
    mm = MM()
    layout(mm)
    before = observe(mm)
    with pytest.raises(error):
        mm.touch_pages(bad)
    assert observe(mm) == before


def test_bulk_write_array_must_match(MM):
    mm = MM()
    layout(mm)
    with pytest.raises(ValueError):
        mm.touch_pages(np.array([B, B + 4096], dtype=np.uint64), np.array([True]))
    with pytest.raises(TypeError):
        mm.touch_pages(np.array([B], dtype=np.uint64), np.array([1]))
