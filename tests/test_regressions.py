"""Every disagreement the differential state machine or the fuzzer found between the core
and the reference, as a plain test run against both implementations. The expected value
is Linux's (6.18 x86-64); the comment says where that comes from."""

import errno

import pytest

from ptreclaim.constants import (
    MADV_COLLAPSE, MADV_DONTNEED, MADV_FREE, MADV_NORMAL, MADV_POPULATE_WRITE, MADV_DONTFORK,
    MADV_PAGEOUT, MADV_COLD, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_FIXED, MAP_FIXED_NOREPLACE,
    MAP_GROWSDOWN, MAP_HUGETLB, MAP_LOCKED, MAP_NORESERVE, MAP_POPULATE, MAP_PRIVATE, MAP_SHARED,
    MAP_SHARED_VALIDATE, MAP_SYNC, PROT_READ, PROT_WRITE, TASK_SIZE, VM_SYNC,
)

B = 0x2000_0000_0000
K = 1024
M = 1024 * K
U64 = (1 << 64) - 1
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
SHARED = MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE


def errno_of(call):
    try:
        call()
    except OSError as e:
        return e.errno
    return 0


def test_tables_are_listed_top_down_at_one_address(MM):
    # B is 512 GiB-aligned: its PUD, PMD and PTE tables all start at B (api.md order).
    mm = MM()
    mm.mmap(B, 4096, RW, ANON)
    mm.touch(B)
    assert mm.tables() == [("pud", B), ("pmd", B), ("pte", B)]


@pytest.mark.parametrize("advice", [MADV_NORMAL, MADV_DONTFORK, MADV_COLD, MADV_PAGEOUT])
def test_only_batched_advice_starts_an_mmu_gather(MM, advice):
    # mm/madvise.c madvise_init_tlb(): one gather for the call only for DONTNEED,
    # DONTNEED_LOCKED and FREE; COLD/PAGEOUT gather per VMA, nothing here has a VMA.
    mm = MM()
    assert errno_of(lambda: mm.madvise(B, 4096, advice)) == errno.ENOMEM
    assert mm.stats["mmu_gathers"] == 0


@pytest.mark.parametrize("advice", [MADV_DONTNEED, MADV_FREE])
def test_batched_advice_starts_one_gather_even_over_a_hole(MM, advice):
    mm = MM()
    assert errno_of(lambda: mm.madvise(B, 4096, advice)) == errno.ENOMEM
    assert mm.stats["mmu_gathers"] == 1


@pytest.mark.parametrize("map_type", [MAP_PRIVATE, MAP_SHARED])
def test_map_sync_sets_vm_sync_on_anonymous_memory(MM, map_type):
    # calc_vm_flag_bits() translates MAP_SYNC for every mapping; measured: smaps "sf".
    mm = MM()
    mm.mmap(B, 4096, PROT_READ, map_type | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_SYNC)
    assert mm.vmas()[0][2] & VM_SYNC


def test_map_sync_mapping_does_not_merge_with_a_plain_one(MM):
    mm = MM()
    mm.mmap(B, 4096, RW, ANON)
    mm.mmap(B + 4096, 4096, RW, ANON | MAP_SYNC)
    assert len(mm.vmas()) == 2


def test_collapse_over_a_hole_is_enomem(MM):
    # MADV_COLLAPSE is applied per VMA by madvise_walk_vmas(): no VMA, no THP question.
    mm = MM()
    assert errno_of(lambda: mm.madvise(B, 4096, MADV_COLLAPSE)) == errno.ENOMEM


def test_fixed_shared_mapping_failing_its_charge_leaves_a_gap(impl):
    # mmap_region() clears the old VMAs of a shared/file mapping before shmem_zero_setup()
    # charges it; on ENOMEM they cannot come back. Measured: 50 GiB MAP_SHARED|MAP_FIXED
    # over a written 4 MiB mapping -> ENOMEM and nothing left at the address.
    mm = impl.MM(machine=impl.Machine(max_frames=100))
    mm.mmap(B, 64 * K, RW, ANON | MAP_POPULATE)
    assert errno_of(lambda: mm.mmap(B, 8 * M, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED)) == errno.ENOMEM
    assert mm.vmas() == []
    assert mm.status()["RssAnon"] == 0
    mm.check()


def test_fixed_private_mapping_failing_its_charge_keeps_the_old_one(impl):
    # The private accountable check comes before the clean-up: vms_abort_munmap_vmas()
    # puts the old VMAs back.
    mm = impl.MM(machine=impl.Machine(max_frames=100))
    mm.mmap(B, 64 * K, RW, ANON | MAP_POPULATE)
    before = mm.vmas()
    assert errno_of(lambda: mm.mmap(B, 8 * M, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)) == errno.ENOMEM
    assert mm.vmas() == before
    assert mm.status()["RssAnon"] == 64
    mm.check()


def test_mprotect_read_only_of_writable_shared_ptes_flushes_once(MM):
    # Populated shmem PTEs are writable (PAGE_SHARED, no write-notify); clearing _PAGE_RW
    # needs a flush (pte_needs_flush), done once by tlb_finish_mmu().
    mm = MM()
    mm.mmap(B, 2 * M, RW, SHARED | MAP_POPULATE)
    flushes = mm.stats["tlb_flushes"]
    mm.mprotect(B, 2 * M, PROT_READ)
    assert mm.stats["tlb_flushes"] - flushes == 1


def test_populate_write_leaves_a_writable_clean_pte_clean(MM):
    # GUP needs no fault for a present PTE that allows the write; FOLL_TOUCH dirties the
    # folio, not the PTE (mm/gup.c follow_page_pte).
    mm = MM()
    mm.mmap(B, 2 * M, RW, SHARED)
    mm.touch(B, 4096, write=False)
    (_, before), = mm.entries()
    mm.madvise(B, 4096, MADV_POPULATE_WRITE)
    (_, after), = mm.entries()
    assert after == before


@pytest.mark.parametrize("how", ["touch", "map_populate", "madv_populate"])
def test_a_fault_that_finds_no_frame_is_still_a_page_fault(impl, how):
    # handle_mm_fault() counts PGFAULT on entry, before VM_FAULT_OOM.
    mm = impl.MM(machine=impl.Machine(max_frames=10, totalram_pages=1 << 20))
    flags = ANON | (MAP_POPULATE if how == "map_populate" else 0)
    mm.mmap(B, 2 * M, RW, flags)
    if how == "touch":
        with pytest.raises(MemoryError):
            mm.touch(B, 64 * K)
    elif how == "madv_populate":
        assert errno_of(lambda: mm.madvise(B, 64 * K, MADV_POPULATE_WRITE)) == errno.ENOMEM
    assert mm.stats["page_faults"] == 11
    assert mm.status()["RssAnon"] == 40


# MAP_HUGETLB with an empty pool (nr_hugepages=0, only the 2 MiB hstate), measured on
# the lab machine with raw mmap calls in the 512 GiB slot at B holding [B, B+4M).
HUGE = MAP_ANONYMOUS | MAP_HUGETLB
HUGETLB_CASES = [
    ("private 2M", (B + 8 * M, 2 * M, RW, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE, -1, 0), errno.ENOMEM),
    ("private 4K", (B + 8 * M, 4096, RW, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE, -1, 0), errno.ENOMEM),
    ("shared", (B + 8 * M, 2 * M, RW, HUGE | MAP_SHARED | MAP_FIXED_NOREPLACE, -1, 0), errno.ENOMEM),
    ("read-only", (B + 8 * M, 2 * M, PROT_READ, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE, -1, 0), errno.ENOMEM),
    ("locked", (B + 8 * M, 2 * M, RW, HUGE | MAP_PRIVATE | MAP_LOCKED | MAP_FIXED_NOREPLACE, -1, 0),
     errno.ENOMEM),
    ("hint 0", (0, 2 * M, RW, HUGE | MAP_PRIVATE, -1, 0), errno.ENOMEM),
    ("size log 21", (B + 8 * M, 2 * M, RW, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE | (21 << 26), -1, 0),
     errno.ENOMEM),
    ("size log 30: no 1G hstate", (B + 8 * M, 2 * M, RW, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE | (30 << 26),
                                   -1, 0), errno.EINVAL),
    ("len 0", (B + 8 * M, 0, RW, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE, -1, 0), errno.EINVAL),
    ("len -1 aligns to 0", (B + 8 * M, U64, RW, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE, -1, 0), errno.EINVAL),
    ("len -2M-1", (B + 8 * M, U64 - 2 * M, RW, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE, -1, 0), errno.ENOMEM),
    ("offset 4K", (B + 8 * M, 2 * M, RW, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE, -1, 4096), errno.EINVAL),
    ("overlap", (B, 2 * M, RW, HUGE | MAP_FIXED_NOREPLACE, -1, 0), errno.EEXIST),
    ("fixed 4K-aligned", (B + 8 * M + 4096, 2 * M, RW, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE, -1, 0),
     errno.EINVAL),
    ("fixed near the top", (TASK_SIZE - 2 * M, 4 * M, RW, HUGE | MAP_PRIVATE | MAP_FIXED_NOREPLACE, -1, 0),
     errno.EINVAL),
    ("type 0", (B + 8 * M, 2 * M, RW, HUGE | MAP_FIXED_NOREPLACE, -1, 0), errno.EINVAL),
    ("droppable", (B + 8 * M, 2 * M, RW, HUGE | MAP_DROPPABLE | MAP_FIXED_NOREPLACE, -1, 0), errno.EINVAL),
    ("shared_validate + noreplace", (B + 8 * M, 2 * M, RW, HUGE | MAP_SHARED_VALIDATE | MAP_FIXED_NOREPLACE, -1, 0),
     errno.EOPNOTSUPP),
    ("shared_validate + fixed", (B + 8 * M, 2 * M, RW, HUGE | MAP_SHARED_VALIDATE | MAP_FIXED, -1, 0),
     errno.ENOMEM),
    ("growsdown", (B + 8 * M, 2 * M, RW, HUGE | MAP_PRIVATE | MAP_GROWSDOWN | MAP_FIXED_NOREPLACE, -1, 0),
     errno.EINVAL),
]


@pytest.mark.parametrize("case", HUGETLB_CASES, ids=[c[0] for c in HUGETLB_CASES])
def test_hugetlb_with_an_empty_pool(MM, case):
    _, args, expected = case
    mm = MM()
    mm.mmap(B, 4 * M, RW, ANON | MAP_NORESERVE)
    before = mm.vmas()
    assert errno_of(lambda: mm.mmap(*args)) == expected
    assert mm.vmas() == before
    mm.check()


def test_hugetlb_fixed_over_a_mapping_fails_and_leaves_a_gap(MM):
    # Measured: MAP_HUGETLB|MAP_FIXED over [B, B+2M) of [B, B+4M) -> ENOMEM, and
    # /proc/self/maps then shows only [B+2M, B+4M).
    mm = MM()
    mm.mmap(B, 4 * M, RW, ANON | MAP_NORESERVE)
    assert errno_of(lambda: mm.mmap(B, 2 * M, RW, HUGE | MAP_PRIVATE | MAP_FIXED)) == errno.ENOMEM
    assert [(s, e) for s, e, _, _ in mm.vmas()] == [(B + 2 * M, B + 4 * M)]
    mm.check()


def test_hugetlb_noreserve_with_an_empty_pool_maps_and_faults_sigbus(MM):
    # MAP_NORESERVE reserves nothing, so the mapping is made; a fault then finds no
    # huge page (docs/hugetlb.md, tests/test_hugetlb.py).
    from ptreclaim.errors import BusError
    mm = MM()
    mm.mmap(B, 2 * M, RW, HUGE | MAP_PRIVATE | MAP_NORESERVE | MAP_FIXED_NOREPLACE)
    assert [(s, e) for s, e, _, _ in mm.vmas()] == [(B, B + 2 * M)]
    with pytest.raises(BusError):
        mm.touch(B)
    mm.check()


@pytest.mark.parametrize("extra", [MAP_LOCKED, MAP_GROWSDOWN])
def test_droppable_refuses_locked_and_growsdown(MM, extra):
    # do_mmap(), case MAP_DROPPABLE: EINVAL before anything droppable happens.
    mm = MM()
    assert errno_of(lambda: mm.mmap(B, 4096, RW, MAP_DROPPABLE | MAP_ANONYMOUS | extra)) == errno.EINVAL


def test_prot_none_entries_store_the_pfn_inverted(MM):
    # x86-64 pte_modify()/flip_protnone_guard(): a PROT_NONE entry (PROTNONE, not
    # PRESENT) keeps its PFN inverted (L1TF); pte_pfn() undoes it. Zero page included.
    from ptreclaim.constants import PROT_NONE, PTE_PFN_MASK, ZERO_PFN, _PAGE_PRESENT, _PAGE_PROTNONE
    mm = MM()
    mm.mmap(B, 8192, RW, ANON)
    mm.touch(B, 4096, write=False)
    mm.touch(B + 4096, 4096)
    before = dict(mm.entries())
    mm.mprotect(B, 8192, PROT_NONE)
    after = dict(mm.entries())
    assert before[B] & PTE_PFN_MASK == ZERO_PFN << 12
    for addr in (B, B + 4096):
        assert after[addr] & (_PAGE_PRESENT | _PAGE_PROTNONE) == _PAGE_PROTNONE
        assert after[addr] & PTE_PFN_MASK == (before[addr] & PTE_PFN_MASK) ^ PTE_PFN_MASK
    mm.mprotect(B, 8192, RW)
    assert {a: e & PTE_PFN_MASK for a, e in mm.entries()} == {a: e & PTE_PFN_MASK for a, e in before.items()}


def test_top_down_placement_keeps_the_stack_guard_gap(MM):
    # unmapped_area_topdown() ends a gap at vm_start_gap() of the VMA above: 1 MiB
    # below a VM_GROWSDOWN VMA, even one above mmap_base (measured, spec Q2).
    mm = MM()
    mm.mmap(0x7FFF_F800_F000, M, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_FIXED_NOREPLACE)
    assert mm.mmap(0, 64 * K, RW, MAP_PRIVATE | MAP_ANONYMOUS) == 0x7FFF_F800_F000 - M - 64 * K


def test_populate_write_makes_lazy_free_pages_stay(MM):
    # GUP dirties the folio of a writable present PTE; PAGEOUT then keeps re-dirtied
    # lazy-free pages and discards clean ones. Measured: +64 kB written, FREE, populate
    # the first 32 kB, PAGEOUT all -> +32 kB left.
    from ptreclaim.constants import MADV_PAGEOUT
    mm = MM()
    mm.mmap(B, 64 * K, RW, ANON)
    mm.touch(B, 64 * K)
    mm.madvise(B, 64 * K, MADV_FREE)
    mm.madvise(B, 32 * K, MADV_POPULATE_WRITE)
    mm.madvise(B, 64 * K, MADV_PAGEOUT)
    assert mm.status()["RssAnon"] == 32
    mm.check()


def test_pageout_flushes_once_per_unmapped_page(MM):
    # try_to_unmap_one() in a single-threaded process does not defer the flush
    # (arch_tlbbatch_should_defer: no other CPU runs the mm): ptep_clear_flush() per page.
    # Dirty shmem pages are unmapped (kept in the page cache); clean private anon pages
    # without swap are not unmapped at all.
    from ptreclaim.constants import MADV_PAGEOUT
    mm = MM()
    mm.mmap(B, 6 * M, RW, SHARED)
    mm.touch(B, 64 * K)
    mm.mmap(B + 8 * M, 64 * K, RW, ANON)
    mm.touch(B + 8 * M, 64 * K)
    flushes = mm.stats["tlb_flushes"]
    mm.madvise(B, 64 * K, MADV_PAGEOUT)
    assert mm.stats["tlb_flushes"] - flushes == 16
    assert mm.status()["RssShmem"] == 0
    mm.madvise(B + 8 * M, 64 * K, MADV_PAGEOUT)
    assert mm.stats["tlb_flushes"] - flushes == 16
    assert mm.status()["RssAnon"] == 64


def test_stack_guard_gap_limits_only_the_gap_right_below_it(MM):
    # unmapped_area_topdown() checks vm_start_gap() of the VMA just above the gap it
    # found, nothing higher: a stack's guard gap reaching over a lower VMA does not push
    # a mapping placed below that VMA further down. (Found by the state machine.)
    mm = MM()
    mm.mmap(0x7FFF_F7DF_F000, 4 * M, PROT_READ, ANON)
    mm.mmap(0x7FFF_F7CE_0000, 0x11F000, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_FIXED_NOREPLACE)
    mm.mmap(0x7FFF_F7BE_F000, 0x10000, PROT_READ, ANON)  # inside the stack's 1 MiB guard gap
    assert mm.mmap(0, 0x11E000, PROT_READ, MAP_SHARED | MAP_ANONYMOUS) == 0x7FFF_F7BE_F000 - 0x11E000


def test_hugetlb_fixed_with_unaligned_offset_leaves_a_hole(MM):
    # __mmap_region() clears the old range before hugetlbfs_file_mmap() refuses
    # an offset that is not a whole huge page. Measured on the host: a 4 KiB
    # mapping at B, then mmap(B, 4K, RW, MAP_FIXED|MAP_PRIVATE|MAP_ANONYMOUS|
    # MAP_HUGETLB|MAP_NONBLOCK, -1, 4096) -> EINVAL, and nothing is left at B.
    import errno as _errno
    mm = MM()
    mm.mmap(B, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    with pytest.raises(OSError) as info:
        mm.mmap(B, 4096, RW, 0x50032, -1, 4096)
    assert info.value.errno == _errno.EINVAL
    assert mm.vmas() == [] and mm.status()["VmSize"] == 0
    mm.check()


def test_mprotect_keeps_an_old_entry_old(MM):
    # x86 pte_modify() keeps _PAGE_CHG_MASK (accessed included) from the old entry and
    # takes only the other bits from the new protection: an entry MADV_FREE made old
    # and clean stays old through mprotect. (Found by the state machine.)
    from ptreclaim.constants import _PAGE_ACCESSED, _PAGE_DIRTY
    mm = MM()
    mm.mmap(B, 64 * K, RW, ANON)
    mm.touch(B, 64 * K)
    mm.madvise(B, 64 * K, MADV_FREE)
    mm.mprotect(B, 64 * K, PROT_READ)
    mm.mprotect(B, 64 * K, RW | 4)
    assert not any(e & (_PAGE_ACCESSED | _PAGE_DIRTY) for _, e in mm.entries())
    mm.check()


def test_pageout_flushes_a_redirtied_lazyfree_page(MM):
    # try_to_unmap_one() clears the entry with ptep_clear_flush() before it sees that a
    # lazy-free page was written again; it then puts the entry back and the page is
    # swap-backed again. The flush has happened all the same. (Found by the state machine.)
    mm = MM()
    mm.mmap(B, 64 * K, RW, ANON)
    mm.touch(B, 64 * K)
    mm.madvise(B, 64 * K, MADV_FREE)
    mm.touch(B, 4 * K)
    flushes = mm.stats["tlb_flushes"]
    mm.madvise(B, 64 * K, MADV_PAGEOUT)
    assert mm.stats["tlb_flushes"] - flushes == 16
    assert mm.status()["RssAnon"] == 4
    mm.check()


def test_dropping_a_guard_marker_flushes_nothing(MM):
    # zap_nonpresent_ptes() clears a non-present entry with clear_not_present_full_ptes(),
    # not tlb_remove_tlb_entry(): munmap of a guard marker alone, in a span another VMA
    # keeps (no table freed), leaves the gather with nothing to flush.
    from ptreclaim.constants import MADV_GUARD_INSTALL
    mm = MM()
    mm.mmap(B, 2 * M, RW, ANON)
    mm.madvise(B, 4 * K, MADV_GUARD_INSTALL)
    mm.touch(B + 8 * K, 1)
    flushes = mm.stats["tlb_flushes"]
    mm.munmap(B, 4 * K)
    assert mm.stats["tlb_flushes"] == flushes


def test_mprotect_keeps_the_accessed_bit(MM):
    # x86 pte_modify()/pmd_modify(): A (like D) comes from the old entry, not from the
    # new protection. Found by the state machine: MADV_COLD clears A, mprotect must
    # not set it again.
    mm = MM()
    mm.mmap(B, 4096, RW, ANON)
    mm.touch(B)
    mm.madvise(B, 4096, MADV_COLD)
    mm.mprotect(B, 4096, PROT_READ)
    assert not mm.read_entry(B) & 0x20
    mm.check()


def test_a_store_to_a_guard_marker_makes_no_anon_vma(MM):
    # handle_pte_marker() answers a guard marker with SIGSEGV before the fault
    # reaches do_cow_fault(), where a first store to a private file mapping
    # makes the anon_vma; madvise_guard_install() makes none for a file VMA.
    from ptreclaim.constants import MADV_GUARD_INSTALL
    from ptreclaim.errors import SegmentationFault
    mm = MM()
    fd = mm.open(mm.machine.create_file(64 * K))
    mm.mmap(B, 64 * K, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0)
    mm.madvise(B, 4 * K, MADV_GUARD_INSTALL)
    with pytest.raises(SegmentationFault):
        mm.touch(B, 4 * K, write=True)
    assert [v[3] for v in mm.vmas()] == [False]
    mm.touch(B + 4 * K, 4 * K, write=True)
    assert [v[3] for v in mm.vmas()] == [True]
    mm.check()


def test_population_stopped_by_a_guard_marker_makes_no_anon_vma(MM):
    # GUP's write fault meets the marker first (-EFAULT) in a private file
    # mapping: nothing reaches do_cow_fault(), so no anon_vma either.
    from ptreclaim.constants import MADV_GUARD_INSTALL, MADV_POPULATE_WRITE
    mm = MM()
    fd = mm.open(mm.machine.create_file(64 * K))
    mm.mmap(B, 64 * K, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0)
    mm.madvise(B, 8 * K, MADV_GUARD_INSTALL)
    assert errno_of(lambda: mm.madvise(B, 64 * K, MADV_POPULATE_WRITE)) == errno.EFAULT
    assert [v[3] for v in mm.vmas()] == [False]
    mm.madvise(B + 8 * K, 8 * K, MADV_POPULATE_WRITE)
    assert [v[3] for v in mm.vmas()] == [True]
    mm.check()


def test_kernel_chosen_address_falls_back_to_the_bottom_up_search(MM):
    # arch_get_unmapped_area_topdown(): with no gap below mmap_base, the search
    # starts again bottom-up from TASK_UNMAPPED_BASE (PAGE_ALIGN(TASK_SIZE / 3))
    # and ends at TASK_SIZE, so the space above mmap_base is used.
    from ptreclaim.constants import PROT_NONE
    mmap_base = 0x7FFF_F7FF_F000
    mm = MM()
    low = 0x1_0000
    mm.mmap(low, mmap_base - low, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    assert mm.mmap(0, 12 * K, RW, MAP_PRIVATE | MAP_ANONYMOUS) == mmap_base
    # A 2 MiB multiple searches for 2 MiB more, then takes the aligned address
    # in it (__thp_get_unmapped_area()): the gap now starts at mmap_base + 12K.
    assert mm.mmap(0, 2 * M, RW, MAP_PRIVATE | MAP_ANONYMOUS) == 0x7FFF_F820_0000
    # Past TASK_SIZE nothing fits any more.
    assert errno_of(lambda: mm.mmap(0, 128 * M, RW, MAP_PRIVATE | MAP_ANONYMOUS)) == errno.ENOMEM
    mm.check()


def test_private_file_write_out_of_memory_reads_nothing_into_the_page_cache(impl):
    # do_cow_fault() allocates the copy (folio_prealloc()) before __do_fault() reads
    # the file's page: with one frame left, the copy takes it, the read fails, the copy
    # is freed, and the page cache stays empty. The core used to read the page first
    # and keep it (the state machine: frames_in_use one higher than the reference's).
    from ptreclaim.errors import OutOfMemory
    from ptreclaim.constants import MAP_FIXED
    machine = impl.Machine(max_frames=3, totalram_pages=1 << 20)
    mm = impl.MM(machine=machine)
    f = machine.create_file(64 * K, cached=False)
    fd = mm.open(f)
    mm.mmap(B, 64 * K, RW, MAP_PRIVATE | MAP_FIXED, fd, 0)
    mm.mmap(B + M, 8 * K, RW, ANON)
    mm.touch(B + M, 8 * K, write=True)  # two of the three frames
    with pytest.raises(OutOfMemory):
        mm.touch(B, 1, write=True)
    assert (f.nr_cached, machine.frames_in_use, mm.status()["RssAnon"]) == (0, 2, 8)
    mm.check()
