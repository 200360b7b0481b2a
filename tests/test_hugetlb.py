"""hugetlb mappings (MAP_HUGETLB) on a machine with a hugetlb pool, against both
implementations, rule by rule (docs/hugetlb.md). Every step checks the counters
exactly (VmPTE, HugetlbPages, RSS, the pool's HugePages_Free and _Rsvd) and check().

The SC-31 figures are the lab machine's (linux-mm-semantics.md §14); the others follow
the Linux 6.18 source (mm/hugetlb.c, fs/hugetlbfs/inode.c, mm/madvise.c, mm/vma.c),
named in each test."""

import errno

import pytest

from ptreclaim.constants import (
    MADV_COLD, MADV_COLLAPSE, MADV_DODUMP, MADV_DONTDUMP, MADV_DONTFORK, MADV_DONTNEED,
    MADV_DONTNEED_LOCKED, MADV_FREE, MADV_GUARD_INSTALL, MADV_HUGEPAGE, MADV_MERGEABLE,
    MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE, MADV_REMOVE, MADV_WILLNEED,
    MADV_WIPEONFORK, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HUGETLB, MAP_LOCKED,
    MAP_NORESERVE, MAP_POPULATE, MAP_PRIVATE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE,
    VM_DONTEXPAND, VM_HUGETLB, VM_LOCKED, VM_NORESERVE, _PAGE_DIRTY, _PAGE_PSE, _PAGE_RW,
)
from ptreclaim.errors import BusError, InvariantError, SegmentationFault

B = 0x2000_0000_0000  # 512 GiB-aligned, in an empty slot
K = 1024
M = 1024 * K
G = 1024 * M
H = 2 * M  # one huge page
RW = PROT_READ | PROT_WRITE
PRIVATE = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED_NOREPLACE
SHARED = MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED_NOREPLACE
ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE


def state(mm):
    """(VmPTE, HugetlbPages, RssAnon + RssShmem, HugePages_Free, HugePages_Rsvd)."""
    st = mm.status()
    pool = mm.machine.hugetlb_meminfo()
    return (st["VmPTE"], st["HugetlbPages"], st["RssAnon"] + st["RssShmem"],
            pool["HugePages_Free"], pool["HugePages_Rsvd"])


def expect(mm, *want):
    assert state(mm) == want
    mm.check()


def errno_of(call):
    try:
        call()
    except OSError as e:
        return e.errno
    return 0


def machine_pair(impl, pages):
    machine = impl.Machine(hugetlb_pages=pages)
    return machine, impl.MM(machine=machine)


# --- SC-31 and the pool -------------------------------------------------------------

def test_sc31_hugetlb_pages(MM):
    # SC-31, second run (s39): HugetlbPages 4096 kB after the writes, 2048 after the
    # first DONTNEED (its end B+2M+4K rounded down to B+2M), 0 after the second;
    # VmPTE +8 (PUD, PMD) at the first write and unchanged by DONTNEED; RSS 0.
    mm = MM(hugetlb_pages=4)
    mm.mmap(B, 4 * M, RW, PRIVATE)
    expect(mm, 0, 0, 0, 4, 2)           # the whole range is reserved at mmap
    mm.touch(B, 1)
    mm.touch(B + H, 1)
    expect(mm, 8, 4096, 0, 2, 0)
    mm.madvise(B, H + 4 * K, MADV_DONTNEED)
    expect(mm, 8, 2048, 0, 3, 1)        # the owner keeps its reservation
    mm.madvise(B + H, H, MADV_DONTNEED)
    expect(mm, 8, 0, 0, 4, 2)
    assert mm.tables() == [("pud", B), ("pmd", B)]
    mm.munmap(B, 4 * M)
    expect(mm, 0, 0, 0, 4, 0)


def test_pool_defaults_to_empty_and_meminfo(impl):
    assert impl.Machine().hugetlb_meminfo() == {
        "HugePages_Total": 0, "HugePages_Free": 0, "HugePages_Rsvd": 0, "HugePages_Surp": 0,
        "Hugepagesize": 2048}
    assert impl.MM(hugetlb_pages=3).machine.hugetlb_meminfo()["HugePages_Total"] == 3
    with pytest.raises(ValueError):
        impl.MM(machine=impl.Machine(), hugetlb_pages=1)


def test_fault_maps_a_pmd_leaf_without_pte_table(MM):
    mm = MM(hugetlb_pages=2)
    mm.mmap(B, H, RW, PRIVATE)
    mm.touch(B + 5 * 4096, 3 * 4096)
    expect(mm, 8, 2048, 0, 1, 0)
    ((addr, entry),) = mm.huge_pmds()
    assert addr == B and entry & _PAGE_PSE and entry & _PAGE_RW and entry & _PAGE_DIRTY
    assert list(mm.entries()) == []
    assert mm.read_entry(B, "pmd") == entry and mm.read_entry(B) == 0
    assert mm.stats["page_faults"] == 1 and mm.stats["pte_tables_allocated"] == 0
    (start, end, flags, anon) = mm.vmas()[0]
    assert flags & VM_HUGETLB and flags & VM_DONTEXPAND and anon


def test_read_fault_allocates_a_page_then_a_write_reuses_it(MM):
    # No zero page for hugetlb: a read fault of a private mapping maps a new page,
    # write-protected (make_huge_pte()); the write then reuses it (hugetlb_wp()).
    mm = MM(hugetlb_pages=2)
    mm.mmap(B, H, RW, PRIVATE)
    mm.touch(B, 1, write=False)
    expect(mm, 8, 2048, 0, 1, 0)
    assert not mm.read_entry(B, "pmd") & _PAGE_RW
    mm.touch(B, 1)
    expect(mm, 8, 2048, 0, 1, 0)
    assert mm.read_entry(B, "pmd") & _PAGE_RW
    assert mm.stats["page_faults"] == 2


# --- reservations -------------------------------------------------------------------

def test_reservation_at_mmap_and_enomem(MM):
    mm = MM(hugetlb_pages=3)
    mm.mmap(B, 4 * M, RW, PRIVATE)
    expect(mm, 0, 0, 0, 3, 2)
    # Two more cannot be reserved: ENOMEM, nothing mapped there.
    assert errno_of(lambda: mm.mmap(B + G, 4 * M, RW, PRIVATE)) == errno.ENOMEM
    assert errno_of(lambda: mm.mmap(B + G, 2 * M, RW, SHARED)) == 0
    expect(mm, 0, 0, 0, 3, 3)
    assert errno_of(lambda: mm.mmap(B + 2 * G, 4096, PROT_READ, PRIVATE)) == errno.ENOMEM
    # MAP_NORESERVE needs no reservation; its faults take unreserved pages only.
    mm.mmap(B + 2 * G, H, RW, PRIVATE | MAP_NORESERVE)
    with pytest.raises(BusError) as info:
        mm.touch(B + 2 * G + 100, 1)
    assert info.value.address == B + 2 * G + 100
    # huge_pte_alloc() ran before the allocation failed.
    expect(mm, 8, 0, 0, 3, 3)
    mm.munmap(B + G, H)
    expect(mm, 8, 0, 0, 3, 2)
    mm.touch(B + 2 * G, 1)
    expect(mm, 8, 2048, 0, 2, 2)
    mm.touch(B, 4 * M)                  # the reserved pages are still there for it
    expect(mm, 12, 6144, 0, 0, 0)       # a PMD table for this GiB too


def test_noreserve_with_an_empty_pool(MM):
    mm = MM()
    mm.mmap(B, H, RW, PRIVATE | MAP_NORESERVE)
    (_, _, flags, anon) = mm.vmas()[0]
    assert flags & VM_NORESERVE and not anon
    with pytest.raises(BusError):
        mm.touch(B, 1, write=False)
    # hugetlb_no_page() prepared the anon_vma before the allocation failed.
    assert mm.vmas()[0][3]
    expect(mm, 8, 0, 0, 0, 0)
    assert errno_of(lambda: mm.madvise(B, H, MADV_POPULATE_WRITE)) == errno.EFAULT
    assert errno_of(lambda: mm.mlock(B, H)) == errno.ENOMEM
    mm.check()


def test_two_processes_compete_for_one_pool(impl):
    machine = impl.Machine(hugetlb_pages=2)
    a, b = impl.MM(machine=machine), impl.MM(machine=machine)
    a.mmap(B, H, RW, PRIVATE)
    b.mmap(B, H, RW, PRIVATE | MAP_NORESERVE)
    b.touch(B, 1)                       # the one unreserved page
    assert errno_of(lambda: b.mmap(B + G, H, RW, PRIVATE)) == errno.ENOMEM
    a.touch(B, 1)                       # a's reservation holds
    assert machine.hugetlb_meminfo()["HugePages_Free"] == 0
    a.exit()
    b.check()
    assert machine.hugetlb_meminfo()["HugePages_Free"] == 1


def test_shared_mapping_keeps_its_pages_in_the_file(MM):
    mm = MM(hugetlb_pages=3)
    mm.mmap(B, 4 * M, RW, SHARED)
    expect(mm, 0, 0, 0, 3, 2)
    mm.touch(B, 4 * M, write=False)     # a read fault of a shared mapping is writable
    expect(mm, 8, 4096, 0, 1, 0)
    assert mm.read_entry(B, "pmd") & _PAGE_RW
    mm.madvise(B, 4 * M, MADV_DONTNEED)
    expect(mm, 8, 0, 0, 1, 0)           # unmapped, still in the page cache
    mm.touch(B, 1)
    expect(mm, 8, 2048, 0, 1, 0)        # the same page again
    mm.munmap(B, 4 * M)                 # the last VMA: the file is evicted
    expect(mm, 0, 0, 0, 3, 0)


def test_read_only_mapping_past_the_end_of_the_file(MM):
    # The hugetlbfs file is as long as the mmap; only a writable mapping extends it
    # to offset + length (hugetlbfs_file_mmap()). A fault past its end is SIGBUS.
    mm = MM(hugetlb_pages=2)
    mm.mmap(B, H, PROT_READ, PRIVATE, -1, H)
    with pytest.raises(BusError):
        mm.touch(B, 1, write=False)
    mm.mmap(B + G, H, RW, PRIVATE, -1, H)
    mm.touch(B + G, 1, write=False)
    expect(mm, 12, 2048, 0, 1, 1)


def test_offsets(MM):
    mm = MM(hugetlb_pages=1)
    # Not a whole huge page: EINVAL (existing measurements). Past loff_t: EOVERFLOW
    # (file_mmap_ok()), before anything is unmapped.
    assert errno_of(lambda: mm.mmap(B, H, RW, PRIVATE, -1, 4096)) == errno.EINVAL
    mm.mmap(B, 4096, RW, ANON)
    assert errno_of(lambda: mm.mmap(B, H, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED,
                                    -1, (1 << 64) - H)) == errno.EOVERFLOW
    assert len(mm.vmas()) == 1
    mm.check()


# --- address selection and VMAs -------------------------------------------------------

def test_address_selection_is_huge_page_aligned(MM):
    mm = MM(hugetlb_pages=2)
    a = mm.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB)
    assert a % H == 0 and mm.vmas()[0][1] - a == H
    # A hint is rounded up to a huge page boundary.
    b = mm.mmap(B + 4096, H, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB)
    assert b == B + H
    mm.check()


def test_hugetlb_vmas_never_merge(MM):
    mm = MM(hugetlb_pages=4)
    mm.mmap(B, 4 * M, RW, PRIVATE)
    mm.mprotect(B, H, PROT_READ)
    mm.mprotect(B, H, RW)
    assert [(s, e) for s, e, _, _ in mm.vmas()] == [(B, B + H), (B + H, B + 4 * M)]
    mm.mmap(B + 4 * M, H, RW, PRIVATE)
    assert len(mm.vmas()) == 3
    mm.check()


# --- munmap and mprotect alignment ------------------------------------------------------

def test_munmap_needs_huge_page_boundaries(MM):
    mm = MM(hugetlb_pages=4)
    mm.mmap(B, 4 * M, RW, PRIVATE)
    mm.touch(B, 4 * M)
    for start, length in ((B, 4096), (B + 4096, H), (B, H + 4096), (B + H - 4096, 8192)):
        assert errno_of(lambda: mm.munmap(start, length)) == errno.EINVAL
    expect(mm, 8, 4096, 0, 2, 0)
    mm.munmap(B + H, H)
    expect(mm, 8, 2048, 0, 3, 0)
    mm.munmap(B, 4 * M + 4096)          # no hugetlb VMA is cut at the end
    expect(mm, 0, 0, 0, 4, 0)


def test_munmap_refused_at_the_end_keeps_the_split_at_the_start(MM):
    mm = MM(hugetlb_pages=1)
    mm.mmap(B, H, RW, ANON)
    mm.mmap(B + H, H, RW, PRIVATE)
    assert errno_of(lambda: mm.munmap(B + M, H)) == errno.EINVAL
    assert [(s, e) for s, e, _, _ in mm.vmas()] == [(B, B + M), (B + M, B + H), (B + H, B + 2 * H)]
    mm.check()


def test_munmap_of_part_gives_back_its_reservation(MM):
    mm = MM(hugetlb_pages=4)
    mm.mmap(B, 8 * M, RW, PRIVATE)
    mm.touch(B, 1)
    expect(mm, 8, 2048, 0, 3, 3)
    mm.munmap(B + 4 * M, 4 * M)
    expect(mm, 8, 2048, 0, 3, 1)
    mm.munmap(B, H)
    expect(mm, 8, 0, 0, 4, 1)


def test_mprotect(MM):
    mm = MM(hugetlb_pages=4)
    mm.mmap(B, 4 * M, RW, PRIVATE)
    mm.touch(B, 4 * M)
    flushes = mm.stats["tlb_flushes"]
    assert errno_of(lambda: mm.mprotect(B, 4096, PROT_READ)) == errno.EINVAL
    assert errno_of(lambda: mm.mprotect(B + 4096, H, PROT_READ)) == errno.EINVAL
    assert len(mm.vmas()) == 1
    mm.mprotect(B, H, PROT_READ)        # flush_hugetlb_tlb_range(), always
    assert mm.stats["tlb_flushes"] == flushes + 1
    assert not mm.read_entry(B, "pmd") & _PAGE_RW and mm.read_entry(B + H, "pmd") & _PAGE_RW
    mm.mprotect(B, H, PROT_NONE)
    with pytest.raises(SegmentationFault):
        mm.touch(B, 1, write=False)
    mm.mprotect(B, H, RW)
    # A private mapping's entry stays read-only until a write reuses the page.
    assert not mm.read_entry(B, "pmd") & _PAGE_RW
    mm.touch(B, 1)
    expect(mm, 8, 4096, 0, 2, 0)
    assert mm.read_entry(B, "pmd") & _PAGE_RW
    assert mm.stats["tlb_flushes"] == flushes + 3


def test_mprotect_refused_at_the_end_keeps_the_split_at_the_start(MM):
    mm = MM(hugetlb_pages=3)
    mm.mmap(B, 6 * M, RW, PRIVATE)
    assert errno_of(lambda: mm.mprotect(B + H, H + 4096, PROT_READ)) == errno.EINVAL
    assert [(s, e) for s, e, _, _ in mm.vmas()] == [(B, B + H), (B + H, B + 6 * M)]
    mm.check()


# --- madvise ----------------------------------------------------------------------------

def test_dontneed_rules(MM):
    mm = MM(hugetlb_pages=4)
    mm.mmap(B, 8 * M, RW, PRIVATE)
    mm.touch(B, 8 * M)
    expect(mm, 8, 8192, 0, 0, 0)
    gathers, flushes = mm.stats["mmu_gathers"], mm.stats["tlb_flushes"]
    assert errno_of(lambda: mm.madvise(B + 4096, H, MADV_DONTNEED)) == errno.EINVAL
    mm.madvise(B, H - 4096, MADV_DONTNEED)   # rounds down to nothing: 0, no zap
    assert mm.stats["mmu_gathers"] == gathers + 2
    mm.madvise(B, 3 * M, MADV_DONTNEED_LOCKED)
    expect(mm, 8, 6144, 0, 1, 1)
    # zap_page_range_single_batched(): the gather is finished and a new one started.
    assert mm.stats["mmu_gathers"] == gathers + 4
    assert mm.stats["tlb_flushes"] == flushes + 1
    for advice in (MADV_FREE, MADV_COLD, MADV_PAGEOUT, MADV_COLLAPSE, MADV_GUARD_INSTALL, MADV_WIPEONFORK):
        assert errno_of(lambda: mm.madvise(B + H, H, advice)) == errno.EINVAL
    # No table is ever freed by a hugetlb DONTNEED, even of the whole VMA.
    mm.madvise(B, 8 * M, MADV_DONTNEED)
    expect(mm, 8, 0, 0, 4, 4)
    assert not any(mm.stats[k] for k in ("pte_tables_freed_reclaim_fast", "pte_tables_freed_reclaim_slow"))


def test_dontneed_over_hugetlb_and_ordinary_vmas(MM):
    mm = MM(hugetlb_pages=1)
    mm.mmap(B, H, RW, PRIVATE)
    mm.mmap(B + H, H, RW, ANON)
    mm.touch(B, 2 * H)
    expect(mm, 12, 2048, 2048, 0, 0)
    # The hugetlb part keeps its tables, the ordinary span loses its PTE table.
    mm.madvise(B, 2 * H, MADV_DONTNEED)
    expect(mm, 8, 0, 0, 1, 1)
    assert mm.stats["pte_tables_freed_reclaim_fast"] == 1


def test_flag_advice(MM):
    mm = MM(hugetlb_pages=2)
    mm.mmap(B, 4 * M, RW, PRIVATE)
    before = mm.vmas()
    mm.madvise(B, 4 * M, MADV_MERGEABLE)       # KSM ignores hugetlb
    mm.madvise(B, 4 * M, MADV_WILLNEED)
    assert mm.vmas() == before
    assert errno_of(lambda: mm.madvise(B, H + 4096, MADV_HUGEPAGE)) == errno.EINVAL
    mm.madvise(B, 4 * M, MADV_DONTDUMP)
    mm.madvise(B, 4 * M, MADV_DODUMP)          # VM_SPECIAL, but hugetlb may be dumped
    assert mm.vmas() == before
    mm.check()


def test_madvise_remove_punches_the_file(impl):
    machine = impl.Machine(hugetlb_pages=4)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 6 * M, RW, SHARED)
    mm.touch(B, 4 * M)
    child = mm.fork()
    child.touch(B, H, write=False)
    expect(mm, 8, 4096, 0, 2, 1)
    assert child.status()["HugetlbPages"] == 2048
    assert errno_of(lambda: mm.madvise(B, M, MADV_REMOVE)) == 0   # no whole huge page
    expect(mm, 8, 4096, 0, 2, 1)
    mm.madvise(B, 4 * M + M, MADV_REMOVE)
    # Unmapped in every process, out of the page cache; the reservation of the
    # third page, never faulted, stays.
    expect(mm, 8, 0, 0, 4, 1)
    assert child.status()["HugetlbPages"] == 0
    child.check()
    # The punched indices have no reservation any more: a fault takes a free page.
    mm.touch(B, 1)
    expect(mm, 8, 2048, 0, 3, 1)
    private = impl.MM(hugetlb_pages=1)
    private.mmap(B, H, RW, PRIVATE)
    assert errno_of(lambda: private.madvise(B, H, MADV_REMOVE)) == errno.EACCES


def test_populate(MM):
    mm = MM(hugetlb_pages=4)
    mm.mmap(B, 4 * M, RW, PRIVATE | MAP_POPULATE)
    expect(mm, 8, 4096, 0, 2, 0)
    mm.mmap(B + G, 4 * M, PROT_READ, SHARED)
    mm.madvise(B + G, 4 * M, MADV_POPULATE_READ)
    expect(mm, 12, 8192, 0, 0, 0)
    assert errno_of(lambda: mm.madvise(B + G, H, MADV_POPULATE_WRITE)) == errno.EINVAL


def test_mlock_populates_but_never_locks(MM):
    mm = MM(hugetlb_pages=4)
    mm.mmap(B, 4 * M, RW, PRIVATE | MAP_LOCKED)
    expect(mm, 8, 4096, 0, 2, 0)
    assert not mm.vmas()[0][2] & VM_LOCKED and mm.status()["VmLck"] == 0
    mm.mmap(B + G, 4 * M, RW, PRIVATE)
    mm.mlock(B + G + 4096, 8192)          # no split: hugetlb is never VM_LOCKED
    expect(mm, 12, 6144, 0, 1, 1)
    assert len(mm.vmas()) == 2 and mm.status()["VmLck"] == 0
    mm.munlock(B, 4 * M)
    mm.check()


def test_touch_pages_reports_sigbus_index(MM):
    import numpy as np
    mm = MM(hugetlb_pages=1)
    mm.mmap(B, 4 * M, RW, PRIVATE | MAP_NORESERVE)
    with pytest.raises(BusError) as info:
        mm.touch_pages(np.array([B, B + 4096, B + H + 8], dtype=np.uint64))
    assert info.value.index == 2 and info.value.address == B + H + 8
    expect(mm, 8, 2048, 0, 0, 0)


# --- fork -----------------------------------------------------------------------------

def test_fork_private_copy_on_write(MM):
    parent = MM(hugetlb_pages=3)
    parent.mmap(B, H, RW, PRIVATE)
    parent.touch(B, 1)
    child = parent.fork()
    # copy_hugetlb_page_range(): the child shares the page, both write-protected.
    expect(parent, 8, 2048, 0, 2, 0)
    expect(child, 8, 2048, 0, 2, 0)
    assert not parent.read_entry(B, "pmd") & _PAGE_RW and not child.read_entry(B, "pmd") & _PAGE_RW
    assert child.read_entry(B, "pmd") == parent.read_entry(B, "pmd")
    parent.touch(B, 1)                  # a copy for the parent
    expect(parent, 8, 2048, 0, 1, 0)
    child.touch(B, 1)                   # the old page is the child's alone now
    expect(child, 8, 2048, 0, 1, 0)
    child.exit()
    expect(parent, 8, 2048, 0, 2, 0)


def test_fork_owner_takes_the_page_back_when_the_pool_is_empty(MM):
    # hugetlb_wp(): the owner of the mapping cannot copy (no free page), so
    # unmap_ref_private() takes the page from the child, whose later faults in
    # the VMA get SIGBUS ("killed due to inadequate hugepage pool").
    parent = MM(hugetlb_pages=1)
    parent.mmap(B, H, RW, PRIVATE)
    parent.touch(B, 1)
    child = parent.fork()
    gathers = child.stats["mmu_gathers"]
    parent.touch(B, 1)
    expect(parent, 8, 2048, 0, 0, 0)
    expect(child, 8, 0, 0, 0, 0)
    assert child.stats["mmu_gathers"] == gathers + 1
    with pytest.raises(BusError):
        child.touch(B, 1, write=False)


def test_fork_child_copy_fails_with_sigbus(MM):
    # A fork child has no reservation of its own (hugetlb_dup_vma_private()).
    parent = MM(hugetlb_pages=1)
    parent.mmap(B, H, RW, PRIVATE)
    parent.touch(B, 1)
    child = parent.fork()
    with pytest.raises(BusError):
        child.touch(B, 1)
    expect(child, 8, 2048, 0, 0, 0)
    parent.touch(B, 1, write=False)
    expect(parent, 8, 2048, 0, 0, 0)


def test_fork_shared_mapping_is_not_copied(MM):
    parent = MM(hugetlb_pages=2)
    parent.mmap(B, H, RW, SHARED)
    parent.touch(B, 1)
    child = parent.fork()
    expect(child, 0, 0, 0, 1, 0)        # no anon_vma: the child faults it back
    child.touch(B, 1, write=False)
    expect(child, 8, 2048, 0, 1, 0)
    assert child.read_entry(B, "pmd") & ~0x60 == parent.read_entry(B, "pmd") & ~0x60


def test_dontfork(MM):
    parent = MM(hugetlb_pages=1)
    parent.mmap(B, H, RW, PRIVATE)
    parent.touch(B, 1)
    parent.madvise(B, H, MADV_DONTFORK)
    child = parent.fork()
    assert child.vmas() == []
    child.check()


def test_owner_dontneed_of_a_page_a_child_shares(MM):
    # Follows the source, not measured: the owner's zap marks the page to give its
    # reservation back when freed and forgets it in the reserve map; a new fault
    # then consumes a reservation the pool does not count yet, and HugePages_Rsvd,
    # unsigned, wraps until the child lets the page go.
    parent = MM(hugetlb_pages=2)
    parent.mmap(B, H, RW, PRIVATE)
    parent.touch(B, 1)
    child = parent.fork()
    parent.madvise(B, H, MADV_DONTNEED)
    expect(parent, 8, 0, 0, 1, 0)
    parent.touch(B, 1)
    expect(parent, 8, 2048, 0, 0, (1 << 64) - 1)
    child.exit()
    expect(parent, 8, 2048, 0, 1, 0)
    parent.exit()
    assert parent.machine.hugetlb_meminfo()["HugePages_Free"] == 2
    assert parent.machine.hugetlb_meminfo()["HugePages_Rsvd"] == 0


def test_exit_gives_everything_back(MM):
    mm = MM(hugetlb_pages=4)
    mm.mmap(B, 4 * M, RW, PRIVATE)
    mm.mmap(B + 4 * M, 4 * M, RW, SHARED)
    mm.touch(B, 6 * M)
    expect(mm, 8, 6144, 0, 1, 1)
    mm.exit()
    expect(mm, 0, 0, 0, 4, 0)


def test_tables_shared_with_ordinary_vmas(MM):
    # free_pgtables(): a hugetlb VMA is freed on its own; the PMD table under an
    # ordinary neighbour stays while the hugetlb VMA uses it.
    mm = MM(hugetlb_pages=1)
    mm.mmap(B, H, RW, ANON)
    mm.mmap(B + H, H, RW, PRIVATE)
    mm.touch(B, 2 * H)
    expect(mm, 12, 2048, 2048, 0, 0)
    mm.munmap(B, H)
    expect(mm, 8, 2048, 0, 0, 0)
    mm.munmap(B + H, H)
    expect(mm, 0, 0, 0, 1, 0)


def test_fixed_mapping_over_hugetlb(MM):
    mm = MM(hugetlb_pages=2)
    mm.mmap(B, 4 * M, RW, PRIVATE)
    mm.touch(B, 4 * M)
    # An ordinary MAP_FIXED that would cut the hugetlb VMA off a huge page
    # boundary: EINVAL before anything else (vms_gather_munmap_vmas()).
    assert errno_of(lambda: mm.mmap(B + 4096, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)) \
        == errno.EINVAL
    expect(mm, 8, 4096, 0, 0, 0)
    mm.mmap(B, H, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
    expect(mm, 8, 2048, 0, 1, 0)
    mm.mmap(B, H, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED)
    expect(mm, 8, 2048, 0, 1, 1)


# --- check() -----------------------------------------------------------------------------

def _hugetlb_state(impl):
    mm = impl.MM(hugetlb_pages=3)
    mm.mmap(B, 4 * M, RW, PRIVATE)
    mm.touch(B, 1)
    mm.check()
    return mm


@pytest.mark.parametrize("kind,invariant", [
    ("hugetlb_usage_off", "HugetlbPages equals the hugetlb pages mapped"),
    ("hugetlb_free_off", "HugePages_Free equals the free huge pages"),
    ("hugetlb_resv_off", "HugePages_Rsvd equals the reservations the maps hold"),
    ("hugetlb_mapcount_off", "a huge page's mapcount equals its mappings in all mms"),
])
def test_core_check_finds_hugetlb_corruption(kind, invariant):
    import ptreclaim._core as core
    mm = _hugetlb_state(core)
    mm._corrupt(kind)
    with pytest.raises(InvariantError) as info:
        mm.check()
    assert info.value.invariant == invariant


@pytest.mark.parametrize("kind,invariant", [
    ("usage", "hugetlb-usage"), ("free", "hugetlb-free"), ("resv", "hugetlb-resv"),
    ("mapcount", "hugetlb-page"), ("pmd", "hugetlb-pmd"),
])
def test_reference_check_finds_hugetlb_corruption(kind, invariant):
    import ptreclaim._reference as ref
    mm = _hugetlb_state(ref)
    h = mm.machine.hstate
    if kind == "usage":
        mm._hugetlb_usage += 512
    elif kind == "free":
        h.free_huge_pages -= 1
    elif kind == "resv":
        h.resv_huge_pages += 1
    elif kind == "mapcount":
        h.pages[0].mapcount += 1
    else:
        mm._vmas[0].hugetlb = None      # the leaf no longer lies in a hugetlb VMA
    with pytest.raises(InvariantError) as info:
        mm.check()
    assert info.value.invariant == invariant
