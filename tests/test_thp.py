"""Anonymous transparent huge pages (docs/thp.md), against both implementations.

The counts themselves are measured on the host kernel in tests/data/scenarios/thp-*.txt;
these tests pin down what the status fields cannot show: huge_pmds(), the deposits in
tables(), entry bits after a split, the frames of a THP, the stats, and the model's
invariants (check()) along the way.
"""

import errno

import pytest

from ptreclaim.constants import (
    MADV_COLD, MADV_COLLAPSE, MADV_DONTNEED, MADV_FREE, MADV_GUARD_INSTALL, MADV_HUGEPAGE,
    MADV_NOHUGEPAGE, MADV_PAGEOUT, MADV_POPULATE_WRITE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE,
    MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, PMD_SIZE, PROT_READ, PROT_WRITE, PTE_PFN_MASK, ZERO_PFN,
    _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PSE, _PAGE_RW, _PAGE_SPECIAL,
)
from ptreclaim.errors import SegmentationFault

K = 1024
M = 1024 * K
B = 0x2000_0000_0000  # 512 GiB-aligned, in an empty slot
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE
HUGE_ZERO_PFN = 2


def pfn(entry):
    return (entry & PTE_PFN_MASK) >> 12


def thp_region(MM, size=4 * M, advise=True, **kw):
    mm = MM(**kw)
    mm.mmap(B, size, RW, ANON)
    if advise:
        mm.madvise(B, size, MADV_HUGEPAGE)
    return mm


def stat_delta(mm, before):
    return {k: v - before[k] for k, v in mm.stats.items() if v != before[k]}


# ------------------------------------------------------------------------ faults


def test_write_fault_maps_a_thp_with_a_deposit(MM):
    mm = thp_region(MM)
    before = mm.stats
    mm.touch(B + 5 * K, 1)
    [(addr, entry)] = mm.huge_pmds()
    assert addr == B
    assert entry & _PAGE_PSE and entry & _PAGE_RW and entry & _PAGE_DIRTY
    assert mm.tables() == [("pud", B), ("pmd", B), ("deposit", B)]
    assert list(mm.entries()) == []  # PTEs only
    assert mm.read_entry(B, "pmd") == entry and mm.read_entry(B + 4 * K) == 0
    assert stat_delta(mm, before) == {"page_faults": 1, "thp_fault_alloc": 1, "pte_tables_allocated": 1,
                                      "pmd_tables_allocated": 1, "pud_tables_allocated": 1}
    assert mm.status()["RssAnon"] == 2048 and mm.status()["VmPTE"] == 12
    mm.check()


def test_read_fault_maps_the_huge_zero_page_and_prepares_the_anon_vma(MM):
    mm = thp_region(MM)
    mm.touch(B, 1, write=False)
    [(_, entry)] = mm.huge_pmds()
    assert pfn(entry) == HUGE_ZERO_PFN and entry & _PAGE_SPECIAL and not entry & _PAGE_RW
    assert mm.vmas()[0][3]  # the anon_vma, unlike a small zero page's VMA
    assert mm.stats["thp_zero_page"] == 1 and mm.status()["RssAnon"] == 0
    mm.touch(B + PMD_SIZE // 2, 1)  # a write: a THP replaces it, the deposit stays
    [(_, entry)] = mm.huge_pmds()
    assert pfn(entry) != HUGE_ZERO_PFN and entry & _PAGE_RW
    assert mm.stats["thp_fault_alloc"] == 1 and mm.stats["pte_tables_allocated"] == 1
    mm.check()


@pytest.mark.parametrize("thp, advise, huge", [
    ("never", True, False), ("madvise", False, False), ("madvise", True, True), ("always", False, True),
])
def test_thp_modes(MM, thp, advise, huge):
    mm = thp_region(MM, advise=advise, thp=thp)
    mm.touch(B, 1)
    assert bool(mm.huge_pmds()) == huge
    mm.check()


def test_a_thp_is_512_consecutive_frames_and_falls_back_without_room(MM, impl):
    machine = impl.Machine(max_frames=700)
    mm = MM(machine=machine)
    mm.mmap(B, 4 * M, RW, ANON)
    mm.madvise(B, 4 * M, MADV_HUGEPAGE)
    mm.touch(B, 1)
    assert machine.frames_in_use == 512
    mm.madvise(B + 4 * K, 4 * K, MADV_DONTNEED)  # split the PMD, zap one page
    pfns = {addr: pfn(e) for addr, e in mm.entries()}
    head = pfns[B]
    assert all(pfns[B + i * 4 * K] == head + i for i in range(2, 512))
    mm.touch(B + PMD_SIZE, 1)  # 511 + 512 > 700: a small page instead
    assert len(mm.huge_pmds()) == 0 and mm.status()["RssAnon"] == 4 * 512
    mm.check()


# ------------------------------------------------------------------------ splits


def test_split_entries_take_write_young_dirty_from_the_pmd(MM):
    mm = thp_region(MM)
    mm.touch(B, 1)
    [(_, huge)] = mm.huge_pmds()
    mm.madvise(B, 4 * K, MADV_DONTNEED)
    entries = dict(mm.entries())
    assert len(entries) == 511 and mm.huge_pmds() == []
    for i in range(1, 512):
        e = entries[B + i * 4 * K]
        assert pfn(e) == pfn(huge) + i
        assert e & (_PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED) == huge & (_PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED)
        assert not e & _PAGE_PSE
    assert mm.stats["thp_split_pmd"] == 1 and mm.tables()[-1] == ("pte", B)
    mm.check()


def test_vma_boundary_inside_a_span_splits_the_pmd(MM):
    mm = thp_region(MM)
    mm.touch(B, 1)
    mm.touch(B + PMD_SIZE, 1)
    mm.madvise(B + PMD_SIZE + 64 * K, 4 * K, MADV_NOHUGEPAGE)  # a VMA split inside span 2
    mm.mprotect(0 + B, PMD_SIZE, PROT_READ)  # whole span 1: changed in place
    assert [a for a, _ in mm.huge_pmds()] == [B]
    assert not mm.huge_pmds()[0][1] & _PAGE_RW
    assert mm.stats["thp_split_pmd"] == 1
    mm.mprotect(B, PMD_SIZE, RW)  # back: the exclusive THP is writable again
    assert mm.huge_pmds()[0][1] & _PAGE_RW
    mm.check()


def test_folio_split_maps_never_written_pages_to_the_zero_page(MM):
    mm = thp_region(MM)
    mm.touch(B, 3 * 4 * K)  # pages 0, 1, 2 written
    mm.madvise(B + PMD_SIZE, 4 * K, MADV_POPULATE_WRITE)  # populated: nothing written
    mm.madvise(B + 8 * K, 4 * K, MADV_FREE)
    zero = [a for a, e in mm.entries(B, B + PMD_SIZE) if pfn(e) == ZERO_PFN and e & _PAGE_SPECIAL]
    assert len(zero) == 509 and B + 8 * K not in zero
    assert mm.status()["RssAnon"] == 2048 + 12
    mm.madvise(B + PMD_SIZE, PMD_SIZE, MADV_PAGEOUT)  # not lazy-free: split, all zero
    assert mm.status()["RssAnon"] == 12 and mm.huge_pmds() == []
    mm.check()


def test_cold_of_a_whole_thp_only_ages_it(MM):
    mm = thp_region(MM)
    mm.touch(B, 1)
    mm.madvise(B, PMD_SIZE, MADV_COLD)
    [(_, entry)] = mm.huge_pmds()
    assert not entry & _PAGE_ACCESSED and mm.status()["RssAnon"] == 2048
    mm.check()


def test_pageout_discards_a_clean_lazy_free_thp(MM):
    mm = thp_region(MM)
    mm.touch(B, PMD_SIZE)
    mm.madvise(B, PMD_SIZE, MADV_FREE)
    assert mm.huge_pmds()
    before = mm.stats
    mm.madvise(B, PMD_SIZE, MADV_PAGEOUT)
    assert mm.huge_pmds() == [] and mm.status()["RssAnon"] == 0 and mm.status()["VmPTE"] == 8
    assert stat_delta(mm, before) == {"thp_deposits_freed": 1, "tlb_flushes": 1, "mmu_gathers": 1}
    mm.check()


# ---------------------------------------------------------------------- collapse


def test_collapse_turns_the_table_into_the_deposit(MM):
    mm = thp_region(MM, advise=False)
    mm.touch(B, 4 * K)
    mm.touch(B + 8 * K, 4 * K, write=False)  # a zero-page entry
    before = mm.stats
    mm.madvise(B, PMD_SIZE, MADV_COLLAPSE)
    assert [a for a, _ in mm.huge_pmds()] == [B] and mm.tables()[-1] == ("deposit", B)
    assert stat_delta(mm, before) == {"thp_collapse_alloc": 1, "tlb_flushes": 1}
    assert mm.status()["RssAnon"] == 2048 and mm.status()["VmPTE"] == 12
    mm.check()


def test_collapse_errors(MM):
    mm = thp_region(MM, advise=False)
    mm.touch(B, 1)
    with pytest.raises(OSError) as e:
        mm.madvise(B, 4 * M, MADV_COLLAPSE)  # the second span's PMD entry is none
    assert e.value.errno == errno.EINVAL and [a for a, _ in mm.huge_pmds()] == [B]
    mm.madvise(B + 4 * K, PMD_SIZE, MADV_COLLAPSE)  # no whole span in the range: nothing
    mm.madvise(B, 4 * M, MADV_NOHUGEPAGE)
    with pytest.raises(OSError) as e:
        mm.madvise(B, PMD_SIZE, MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    shared = MM()
    shared.mmap(B, PMD_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    with pytest.raises(OSError) as e:  # nothing in the page cache: SCAN_TRUNCATED (shmem-thp-collapse.txt)
        shared.madvise(B, PMD_SIZE, MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    mm.check()


def test_collapse_without_an_anon_vma_fails(MM):
    mm = thp_region(MM, advise=False, thp="never")
    mm.touch(B, PMD_SIZE, write=False)  # small zero pages only: no anon_vma
    with pytest.raises(OSError) as e:
        mm.madvise(B, PMD_SIZE, MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    assert mm.huge_pmds() == [] and not mm.vmas()[0][3]
    mm.check()


# -------------------------------------------------------------------------- fork


def test_fork_shares_thps_write_protected(MM):
    mm = thp_region(MM)
    mm.touch(B, 1)
    mm.touch(B + PMD_SIZE, 1, write=False)
    child = mm.fork()
    assert [a for a, _ in child.huge_pmds()] == [B, B + PMD_SIZE]
    assert child.tables() == mm.tables()
    for proc in (mm, child):
        thp, zero = (e for _, e in proc.huge_pmds())
        assert not thp & _PAGE_RW and pfn(zero) == HUGE_ZERO_PFN
    assert pfn(child.huge_pmds()[0][1]) == pfn(mm.huge_pmds()[0][1])
    assert not child.huge_pmds()[0][1] & _PAGE_ACCESSED
    # A write in the child splits its PMD and copies one page; the parent's THP is
    # still shared with the child's other 511 pages, so its write splits too.
    child.touch(B, 1)
    assert [a for a, _ in child.huge_pmds()] == [B + PMD_SIZE] and child.status()["RssAnon"] == 2048
    mm.touch(B + 4 * K, 1)
    assert [a for a, _ in mm.huge_pmds()] == [B + PMD_SIZE]
    child.exit()
    mm.touch(B + 8 * K, 1)  # the child is gone: reused in place
    mm.check()


# ------------------------------------------------------------- guard markers


def test_guard_install_over_a_thp_zaps_the_page_first(MM):
    mm = thp_region(MM)
    mm.touch(B, 1)
    mm.madvise(B + 4 * K, 4 * K, MADV_GUARD_INSTALL)
    assert mm.huge_pmds() == [] and mm.status()["RssAnon"] == 2044
    with pytest.raises(SegmentationFault):
        mm.touch(B + 4 * K, 1, write=False)
    mm.check()
