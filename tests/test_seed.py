"""The seed patch's headline experiment, exact to the kB (§12, SC-44)."""

import pytest

from ptreclaim.constants import MADV_DONTNEED, MADV_FREE, PMD_SIZE
from ptreclaim.demo import BASE, seed_experiment

GIB = 1 << 30


@pytest.mark.parametrize("pt_reclaim, advice, vmpte, rss_anon", [
    # Measured on Linux 6.18 at B: +204 kB (50 PMD tables + 1 PUD table) with PT
    # reclaim; +102,604 kB without it or with MADV_FREE (25,600 PTE tables stay).
    (True, MADV_DONTNEED, 204, 0),
    (False, MADV_DONTNEED, 102_604, 0),
    (True, MADV_FREE, 102_604, 52_428_800),
])
def test_seed_experiment_50g(MM, impl, pt_reclaim, advice, vmpte, rss_anon):
    size = 50 * GIB
    if impl.__name__.endswith("_reference"):
        # The pure-Python model takes about 90 s for the full 13 million page
        # faults; it runs a tenth of the loop, whose figures the same formula
        # gives (§12): 1 PUD, 1 PMD per GiB, and the PTE tables that stay.
        size = 5 * GIB
        spans = size // PMD_SIZE
        vmpte = 4 * (1 + 5) + (4 * spans if vmpte > 204 else 0)
        rss_anon = rss_anon and size // 1024
    before, after, _ = seed_experiment(lambda: MM(pt_reclaim=pt_reclaim), size=size,
                                       advice=advice)
    assert before["VmPTE"] == 0 and before["VmRSS"] == 0
    assert after["VmPTE"] == vmpte
    assert after["RssAnon"] == rss_anon
    assert after["VmRSS"] == rss_anon
    assert after["VmSize"] == size // 1024


@pytest.mark.parametrize("gib", [1, 3])
def test_seed_formula(MM, gib):
    # The general formula of §12: PUD + PMD tables stay, every PTE table goes.
    mm = MM()
    size = gib * GIB
    mm.mmap(BASE, size, 3, 0x22 | 0x4000 | 0x100000)
    for i in range(size // PMD_SIZE):
        mm.touch(BASE + i * PMD_SIZE, PMD_SIZE)
        mm.madvise(BASE + i * PMD_SIZE, PMD_SIZE, MADV_DONTNEED)
        assert mm.pgtables_bytes == 4096 * (1 + 1 + i // 512)
    assert mm.status()["VmPTE"] == 4 * (1 + gib)
    stats = mm.stats
    assert stats["pte_tables_allocated"] == size // PMD_SIZE
    assert stats["pte_tables_freed_reclaim_fast"] == size // PMD_SIZE
    assert stats["pte_tables_freed_reclaim_slow"] == 0
    mm.check()
    mm.munmap(BASE, size)
    assert mm.pgtables_bytes == 0


def test_unaligned_mapping_reclaims_nothing(MM):
    # §12: with a mapping that is not 2 MiB-aligned every 2 MiB step straddles two
    # spans and never covers one whole, so every table stays (25,601 at 50 GiB).
    mm = MM()
    base = BASE + (1 << 20)
    n = 64
    mm.mmap(base, n * PMD_SIZE, 3, 0x22 | 0x4000 | 0x100000)
    for i in range(n):
        mm.touch(base + i * PMD_SIZE, PMD_SIZE)
        mm.madvise(base + i * PMD_SIZE, PMD_SIZE, MADV_DONTNEED)
    assert mm.status()["VmPTE"] == 4 * (1 + 1 + n + 1)
    assert mm.status()["VmRSS"] == 0
