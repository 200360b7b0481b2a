"""Swap: a Machine with a swap device, MADV_PAGEOUT to swap entries, zap, swap-in,
fork, MADV_FREE, shmem and THPs (docs/swap.md; linux-mm-semantics R6, R14, R37, R39,
R41, R50, R53, R68, SC-30), against both implementations.

Every step is followed by check() on every process involved, which also checks the
swap device: each slot's count equals the swap entries (in all page tables and
shmem objects) that refer to it. The host the tests run on has no swap, so these
expectations come from SC-30 and from the kernel source (the functions named).
"""

import errno

import pytest

from ptreclaim.constants import (
    MADV_COLLAPSE, MADV_DONTFORK, MADV_DONTNEED, MADV_FREE, MADV_GUARD_INSTALL, MADV_HUGEPAGE,
    MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE, MADV_REMOVE, MADV_WILLNEED, MADV_WIPEONFORK, MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE,
    _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, _PAGE_SWP_EXCLUSIVE, _PAGE_SWP_UFFD_WP, _PAGE_UFFD_WP,
    is_swap_pte, make_swap_pte, swp_offset, swp_type,
)
from ptreclaim.errors import InvariantError, OutOfMemory, SegmentationFault

from scenarios import SCENARIOS
from test_scenarios import apply, new_mm

K = 1024
M = 1024 * K
B = 0x2000_0000_0000
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE
ACCOUNTED = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
SHARED_ANON = MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
PAGES_2M = 512


def counts(mm):
    """(VmPTE, RssAnon, RssShmem, VmSwap) in kB."""
    st = mm.status()
    return st["VmPTE"], st["RssAnon"], st["RssShmem"], st["VmSwap"]


def delta(after, before):
    return tuple(a - b for a, b in zip(after, before))


def check(*mms):
    for mm in mms:
        mm.check()


def swapped_mm(impl, pages=8, swap_pages=64, **mm_args):
    """One process on a machine with swap: [B, B+2M) mapped, `pages` pages written
    and paged out to slots 1..pages."""
    machine = impl.Machine(swap_pages=swap_pages)
    mm = impl.MM(machine=machine, **mm_args)
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, pages * 4 * K)
    mm.madvise(B, pages * 4 * K, MADV_PAGEOUT)
    check(mm)
    return machine, mm


# --------------------------------------------------------------------------- SC-30

def test_sc30_vmswap(impl):
    """SC-30 as measured: the table's deltas, VmSwap 4096 kB after PAGEOUT and 0 after
    MADV_FREE, and every slot free again."""
    (scenario,) = [s for s in SCENARIOS if s.id == "SC-30"]
    mm = new_mm(impl, scenario)
    for op, args in scenario.setup:
        apply(mm, op, args)
    vmswap = []
    for op, args, _errno, *_ in scenario.steps:
        apply(mm, op, args)
        check(mm)
        vmswap.append(mm.status()["VmSwap"])
    assert vmswap == [0, 4096, 2048, 0, 0]
    assert mm.machine.swap_used == 0
    mm.exit()
    assert mm.pgtables_bytes == 0


# ------------------------------------------------------------------- the machine

def test_default_machine_has_no_swap(impl):
    """swap_pages=0 (the default) keeps today's behaviour: PAGEOUT leaves anonymous
    pages mapped (SC-38)."""
    machine = impl.Machine()
    assert machine.swap_pages == 0 and machine.swap_used == 0
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, 2 * M)
    before = counts(mm), list(mm.entries()), mm.stats["tlb_flushes"]
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    assert (counts(mm), list(mm.entries()), mm.stats["tlb_flushes"]) == before
    check(mm)


@pytest.mark.parametrize("ram", [dict(max_frames=100), dict(totalram_pages=100)])
def test_overcommit_limit_counts_swap(impl, ram):
    """__vm_enough_memory() (heuristic): one charge may not exceed
    totalram_pages + total_swap_pages."""
    mm = impl.MM(machine=impl.Machine(swap_pages=50, **ram))
    with pytest.raises(OSError) as info:
        mm.mmap(B, 151 * 4 * K, RW, ACCOUNTED)
    assert info.value.errno == errno.ENOMEM
    assert mm.mmap(B, 150 * 4 * K, RW, ACCOUNTED) == B
    check(mm)


def test_overcommit_unlimited_stays_unlimited(impl):
    mm = impl.MM(machine=impl.Machine(swap_pages=10))
    assert mm.mmap(B, 1 << 40, RW, ACCOUNTED) == B


# ------------------------------------------------------------------------ pageout

def test_pageout_makes_swap_entries(impl):
    """R41: each page mapped only here becomes a swap entry; RssAnon -4, VmSwap +4,
    VmPTE 0, one flush per page (try_to_unmap_one), the frame freed."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, 8 * 4 * K)
    before, frames, flushes = counts(mm), machine.frames_in_use, mm.stats["tlb_flushes"]
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    check(mm)
    assert delta(counts(mm), before) == (0, -32, 0, 32)
    assert machine.frames_in_use == frames - 8
    assert mm.stats["tlb_flushes"] == flushes + 8
    assert machine.swap_used == 8
    # x86-64 swap entries of type 0, offsets 1..8 in address order, each
    # remembering that its page was exclusive (_PAGE_SWP_EXCLUSIVE).
    entries = list(mm.entries())
    assert entries == [(B + i * 4 * K, make_swap_pte(i + 1) | _PAGE_SWP_EXCLUSIVE) for i in range(8)]
    for _, e in entries:
        assert is_swap_pte(e) and swp_type(e) == 0 and not e & _PAGE_PRESENT
    assert mm.tables()  # the PTE table stays: PAGEOUT frees none


def test_pageout_again_is_a_noop(impl):
    machine, mm = swapped_mm(impl)
    before = counts(mm), list(mm.entries()), mm.stats["tlb_flushes"], machine.swap_used
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    assert (counts(mm), list(mm.entries()), mm.stats["tlb_flushes"], machine.swap_used) == before
    check(mm)


def test_pageout_skips_zero_page_and_shared_pages(impl):
    """The zero page has no folio; a page a fork child maps too is not reclaimed."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, 4 * K, write=False)
    mm.touch(B + 4 * K, 4 * K)
    child = mm.fork()
    before = counts(mm)
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    assert counts(mm) == before and machine.swap_used == 0
    child.exit()
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    # Mapped once again, but no longer exclusive: the entry has no exclusive bit.
    assert delta(counts(mm), before) == (0, -4, 0, 4)
    assert mm.read_entry(B + 4 * K) == make_swap_pte(1)
    check(mm)


def test_lazyfree_pages_are_discarded_not_swapped(impl):
    """Clean lazy-free pages are freed, with or without swap; one written again
    since MADV_FREE is swap-backed again and goes to swap on the next PAGEOUT."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, 4 * 4 * K)
    mm.madvise(B, 4 * 4 * K, MADV_FREE)
    mm.touch(B, 1)                       # re-dirty the first page
    before, flushes = counts(mm), mm.stats["tlb_flushes"]
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    check(mm)
    assert delta(counts(mm), before) == (0, -12, 0, 0)
    assert machine.swap_used == 0
    # try_to_unmap_one() clears and flushes the re-dirtied entry too, then puts it back.
    assert mm.stats["tlb_flushes"] == flushes + 4
    assert mm.read_entry(B) & _PAGE_PRESENT
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    assert delta(counts(mm), before) == (0, -16, 0, 4)
    assert machine.swap_used == 1
    check(mm)


def test_swap_full_pages_stay(impl):
    """folio_alloc_swap() fails on a full device: the page stays mapped, no flush."""
    machine = impl.Machine(swap_pages=3)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, 5 * 4 * K)
    before, flushes = counts(mm), mm.stats["tlb_flushes"]
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    check(mm)
    assert delta(counts(mm), before) == (0, -12, 0, 12)
    assert mm.stats["tlb_flushes"] == flushes + 3
    assert machine.swap_used == 3
    assert [bool(e & _PAGE_PRESENT) for _, e in mm.entries()] == [False] * 3 + [True] * 2


def test_freed_slots_are_reused_lowest_first(impl):
    machine, mm = swapped_mm(impl, pages=6)
    mm.madvise(B + 4 * K, 4 * K, MADV_DONTNEED)      # frees slot 2
    mm.madvise(B + 3 * 4 * K, 4 * K, MADV_DONTNEED)  # frees slot 4
    mm.touch(B + 16 * 4 * K, 3 * 4 * K)
    mm.madvise(B + 16 * 4 * K, 3 * 4 * K, MADV_PAGEOUT)
    check(mm)
    assert [swp_offset(mm.read_entry(B + (16 + i) * 4 * K)) for i in range(3)] == [2, 4, 7]


# ---------------------------------------------------------------------------- zap

@pytest.mark.parametrize("split_ptlocks", [True, False])
def test_swap_entries_and_pt_reclaim(impl, split_ptlocks):
    """R50, R53: a zap frees swap entries' slots (VmSwap drops) without a flush of
    its own; a table holding swap entries is not empty: a partial DONTNEED leaves
    it, a whole-span one zaps the entries and reclaims it (fast path, or the slow
    path's rescan without split PTE locks, R57)."""
    machine, mm = swapped_mm(impl, pages=8, split_ptlocks=split_ptlocks)
    before, flushes = counts(mm), mm.stats["tlb_flushes"]
    mm.madvise(B, 4 * 4 * K, MADV_DONTNEED)
    check(mm)
    assert delta(counts(mm), before) == (0, 0, 0, -16)
    assert machine.swap_used == 4
    assert mm.stats["tlb_flushes"] == flushes    # nothing present was cleared
    mm.madvise(B, 2 * M, MADV_DONTNEED)
    check(mm)
    assert delta(counts(mm), before) == (-4, 0, 0, -32)
    assert machine.swap_used == 0
    stats = mm.stats
    assert stats["pte_tables_freed_reclaim_fast" if split_ptlocks else "pte_tables_freed_reclaim_slow"] == 1


def test_free_and_partial_zaps_never_reclaim(impl):
    """MADV_FREE clears swap entries but never frees tables (R39); the all-none
    table goes with the next whole-span DONTNEED."""
    machine, mm = swapped_mm(impl, pages=8)
    before = counts(mm)
    mm.madvise(B, 2 * M, MADV_FREE)
    check(mm)
    assert delta(counts(mm), before) == (0, 0, 0, -32)
    assert machine.swap_used == 0 and list(mm.entries()) == []
    mm.madvise(B, 2 * M, MADV_DONTNEED)
    assert delta(counts(mm), before) == (-4, 0, 0, -32)
    check(mm)


def test_munmap_and_exit_free_slots(impl):
    machine, mm = swapped_mm(impl, pages=8)
    mm.munmap(B, 4 * 4 * K)
    check(mm)
    assert mm.status()["VmSwap"] == 16 and machine.swap_used == 4
    mm.exit()
    assert machine.swap_used == 0 and mm.pgtables_bytes == 0


def test_guard_install_zaps_swap_entries(impl):
    """MADV_GUARD_INSTALL over a swap entry zaps it first (R43)."""
    machine, mm = swapped_mm(impl, pages=2)
    mm.madvise(B, 4 * K, MADV_GUARD_INSTALL)
    check(mm)
    assert mm.status()["VmSwap"] == 4 and machine.swap_used == 1
    with pytest.raises(SegmentationFault):
        mm.touch(B, 1)


# ------------------------------------------------------------------------ swap-in

def test_read_fault_swaps_in(impl):
    """do_swap_page(): a new frame, RssAnon +4, VmSwap -4, the slot freed, one
    fault. The entry was exclusive, so the page is mapped writable (the VMA is)
    but not dirty."""
    machine, mm = swapped_mm(impl, pages=2)
    before, faults, frames = counts(mm), mm.stats["page_faults"], machine.frames_in_use
    mm.touch(B, 1, write=False)
    check(mm)
    assert delta(counts(mm), before) == (0, 4, 0, -4)
    assert mm.stats["page_faults"] == faults + 1
    assert machine.frames_in_use == frames + 1 and machine.swap_used == 1
    e = mm.read_entry(B)
    assert e & _PAGE_PRESENT and e & _PAGE_RW and not e & _PAGE_DIRTY
    # Now an ordinary present page: another access faults no more.
    mm.touch(B, 1)
    assert mm.stats["page_faults"] == faults + 1
    assert mm.read_entry(B) & _PAGE_DIRTY


def test_write_fault_swaps_in_dirty(impl):
    machine, mm = swapped_mm(impl, pages=2)
    before, faults = counts(mm), mm.stats["page_faults"]
    mm.touch(B + 4 * K, 4 * K)
    check(mm)
    assert delta(counts(mm), before) == (0, 4, 0, -4)
    assert mm.stats["page_faults"] == faults + 1
    e = mm.read_entry(B + 4 * K)
    assert e & _PAGE_RW and e & _PAGE_DIRTY
    assert machine.swap_used == 1


def test_swap_in_follows_vma_protection(impl):
    """A read-only VMA gets a read-only page; a write to it is SIGSEGV before any
    swap-in; mprotect back to RW makes the exclusive page writable at once; a
    PROT_NONE VMA faults nothing in."""
    machine, mm = swapped_mm(impl, pages=3)
    mm.mprotect(B, 2 * M, PROT_READ)
    before = counts(mm)
    with pytest.raises(SegmentationFault):
        mm.touch(B, 1)
    assert counts(mm) == before
    assert mm.read_entry(B) == make_swap_pte(1) | _PAGE_SWP_EXCLUSIVE  # mprotect keeps swap entries
    mm.touch(B, 1, write=False)
    check(mm)
    assert not mm.read_entry(B) & _PAGE_RW
    mm.mprotect(B, 2 * M, RW)
    assert mm.read_entry(B) & _PAGE_RW
    mm.mprotect(B, 2 * M, PROT_NONE)
    with pytest.raises(SegmentationFault):
        mm.touch(B + 4 * K, 1, write=False)
    assert counts(mm) == delta(before, (0, -4, 0, 4))
    check(mm)


def test_swap_in_out_of_frames(impl):
    """No frame for the swap-in: OutOfMemory, and the entry is still there."""
    machine = impl.Machine(max_frames=4, swap_pages=8)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, 4 * 4 * K)
    mm.madvise(B, 4 * K, MADV_PAGEOUT)
    mm.touch(B + 8 * 4 * K, 4 * K)
    before = counts(mm)
    with pytest.raises(OutOfMemory):
        mm.touch(B, 1, write=False)
    assert counts(mm) == before and is_swap_pte(mm.read_entry(B))
    check(mm)


def test_populate_and_mlock_swap_in(impl):
    """GUP faults swap entries in: MADV_POPULATE_READ, and mlock (write faults)."""
    machine, mm = swapped_mm(impl, pages=8)
    mm.madvise(B, 4 * 4 * K, MADV_POPULATE_READ)
    check(mm)
    assert mm.status()["VmSwap"] == 16
    mm.mlock(B, 2 * M)
    check(mm)
    st = mm.status()
    assert st["VmSwap"] == 0 and machine.swap_used == 0
    assert all(e & _PAGE_RW for _, e in mm.entries())


def test_willneed_maps_nothing(impl):
    """R42: WILLNEED only starts reading swap (into the swap cache, not modelled)."""
    machine, mm = swapped_mm(impl, pages=4)
    before = counts(mm), list(mm.entries())
    mm.madvise(B, 2 * M, MADV_WILLNEED)
    assert (counts(mm), list(mm.entries())) == before


# ---------------------------------------------------------------------------- fork

def test_fork_shares_swap_entries(impl):
    """R68: copy_nonpresent_pte(): swap count +1, child VmSwap +4 per entry, the
    parent's entry loses its exclusive bit; the child's is the same entry."""
    machine, mm = swapped_mm(impl, pages=4)
    child = mm.fork()
    check(mm, child)
    assert counts(child) == (12, 0, 0, 16)
    assert counts(mm)[3] == 16 and machine.swap_used == 4
    assert list(mm.entries()) == list(child.entries()) == \
        [(B + i * 4 * K, make_swap_pte(i + 1)) for i in range(4)]
    # A shared slot is read in as a page of its own, mapped read-only (not
    # exclusive); the other side's reference keeps the slot.
    child.touch(B, 1, write=False)
    check(mm, child)
    assert not child.read_entry(B) & _PAGE_RW and machine.swap_used == 4
    # The parent is now the slot's only user: its page is exclusive again.
    mm.touch(B, 1, write=False)
    check(mm, child)
    assert mm.read_entry(B) & _PAGE_RW and machine.swap_used == 3
    # A write to the child's read-only page: the page is its own, reused (R69).
    child.touch(B, 1)
    check(mm, child)
    assert child.read_entry(B) & _PAGE_RW and counts(child)[1:] == (4, 0, 12)
    # A write fault on a shared entry.
    before = counts(child)
    child.touch(B + 4 * K, 1)
    check(mm, child)
    assert delta(counts(child), before) == (0, 4, 0, -4)
    child.exit()
    check(mm)
    assert machine.swap_used == 3 and counts(mm)[3] == 12
    mm.exit()
    assert machine.swap_used == 0


def test_free_of_a_shared_entry_keeps_the_other(impl):
    machine, mm = swapped_mm(impl, pages=2)
    child = mm.fork()
    mm.madvise(B, 2 * M, MADV_FREE)
    check(mm, child)
    assert counts(mm)[3] == 0 and counts(child)[3] == 8 and machine.swap_used == 2
    child.madvise(B, 2 * M, MADV_DONTNEED)
    check(mm, child)
    assert machine.swap_used == 0


def test_three_processes_share_a_slot(impl):
    machine, mm = swapped_mm(impl, pages=1)
    c1 = mm.fork()
    c2 = c1.fork()
    check(mm, c1, c2)
    assert [counts(p)[3] for p in (mm, c1, c2)] == [4, 4, 4] and machine.swap_used == 1
    c1.exit()
    mm.munmap(B, 2 * M)
    check(mm, c2)
    assert machine.swap_used == 1
    c2.touch(B, 1, write=False)             # the last reference: exclusive, writable
    check(c2)
    assert c2.read_entry(B) & _PAGE_RW and machine.swap_used == 0


@pytest.mark.parametrize("advice", [MADV_DONTFORK, MADV_WIPEONFORK])
def test_fork_skips_dontfork_and_wipeonfork(impl, advice):
    machine, mm = swapped_mm(impl, pages=2)
    mm.madvise(B, 2 * M, advice)
    child = mm.fork()
    check(mm, child)
    assert counts(child)[3] == 0 and machine.swap_used == 2


# --------------------------------------------------------------------------- shmem

def test_shmem_pageout_goes_to_swap(impl):
    """Dirty shmem pages are written to swap (shmem_writeout()): RssShmem -4, the
    PTE none (no swap entry), VmSwap unchanged (R14: shmem swap is not in
    MM_SWAPENTS), the object keeps the slot. A read brings the page back (its
    slot freed); fault-around maps only cached pages."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, SHARED_ANON)
    mm.touch(B, 16 * 4 * K)
    before, frames = counts(mm), machine.frames_in_use
    mm.madvise(B, 16 * 4 * K, MADV_PAGEOUT)
    check(mm)
    assert delta(counts(mm), before) == (0, 0, -64, 0)
    assert machine.swap_used == 16 and machine.frames_in_use == frames - 16
    assert list(mm.entries()) == []
    mm.touch(B + 5 * 4 * K, 1, write=False)
    check(mm)
    assert delta(counts(mm), before) == (0, 0, -60, 0)
    assert machine.swap_used == 15
    # The page came back dirty: the next PAGEOUT writes it again.
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    assert machine.swap_used == 16
    check(mm)


def test_shmem_clean_pages_are_dropped(impl):
    """A page never written (read fault on a hole) is clean: reclaim drops it
    from the page cache, no slot."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, SHARED_ANON)
    mm.touch(B, 4 * 4 * K, write=False)
    frames = machine.frames_in_use
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    check(mm)
    assert machine.swap_used == 0 and machine.frames_in_use == frames - 4


def test_shmem_swap_full_stays_in_page_cache(impl):
    machine = impl.Machine(swap_pages=2)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, SHARED_ANON)
    mm.touch(B, 4 * 4 * K)
    frames = machine.frames_in_use
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    check(mm)
    assert machine.swap_used == 2 and machine.frames_in_use == frames - 2
    assert mm.status()["RssShmem"] == 0


def test_shmem_remove_and_unmap_free_slots(impl):
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, SHARED_ANON)
    mm.touch(B, 8 * 4 * K)
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    mm.madvise(B, 4 * 4 * K, MADV_REMOVE)
    check(mm)
    assert machine.swap_used == 4
    # A hole punched over a swapped page reads back as a new zeroed page.
    mm.touch(B, 1, write=False)
    assert machine.swap_used == 4
    mm.munmap(B, 2 * M)               # the last mapping: the object is evicted
    check(mm)
    assert machine.swap_used == 0


def test_shmem_swap_survives_a_fork_child(impl):
    """The shmem object, not the process, holds its swap: a child's exit keeps it."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, SHARED_ANON)
    mm.touch(B, 2 * 4 * K)
    child = mm.fork()
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    check(mm, child)
    assert machine.swap_used == 2
    child.touch(B, 1, write=False)
    check(mm, child)
    assert machine.swap_used == 1 and counts(child)[2] == 4
    child.exit()
    mm.exit()
    assert machine.swap_used == 0


# ------------------------------------------------------------------------ check()

def _corrupt(impl, mm, kind):
    if impl.__name__.endswith("_core"):
        mm._corrupt(kind)
    elif kind == "vmswap_off_by_one":
        mm._rss[impl.MM_SWAPENTS] += 1
    else:
        offset = min(mm.machine.swap.count)
        mm.machine.swap.count[offset] += 1


@pytest.mark.parametrize("kind", ["vmswap_off_by_one", "swap_count_off"])
def test_check_catches_swap_corruption(impl, kind):
    machine, mm = swapped_mm(impl, pages=2)
    _corrupt(impl, mm, kind)
    with pytest.raises(InvariantError):
        mm.check()


# -------------------------------------------------------------------------- THP

def thp_mm(impl, swap_pages=2048):
    machine = impl.Machine(swap_pages=swap_pages)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 4 * M, RW, ANON)
    mm.madvise(B, 4 * M, MADV_HUGEPAGE)
    mm.touch(B, 1)                  # a THP written at one byte
    mm.touch(B + 2 * M, 2 * M)      # a THP written on every page
    check(mm)
    return machine, mm


def test_thp_pageout_splits_and_swaps_pages(impl):
    """A swap file gets no order-9 slots, so reclaim splits the THP
    (THP_SWPOUT_FALLBACK); the split maps never-written pages to the zero page, and
    the written ones go to swap one by one. VmPTE stays (the deposit became the table)."""
    machine, mm = thp_mm(impl)
    before = counts(mm)
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    check(mm)
    assert delta(counts(mm), before) == (0, -2048, 0, 4)
    mm.madvise(B + 2 * M, 2 * M, MADV_PAGEOUT)
    check(mm)
    assert delta(counts(mm), before) == (0, -4096, 0, 2052)
    assert machine.swap_used == 513 and mm.huge_pmds() == []


def test_thp_pageout_with_a_small_swap(impl):
    """Not enough slots: the THP is split all the same, the rest stays mapped."""
    machine, mm = thp_mm(impl, swap_pages=100)
    before = counts(mm)
    mm.madvise(B + 2 * M, 2 * M, MADV_PAGEOUT)
    check(mm)
    assert delta(counts(mm), before) == (0, -400, 0, 400)


def test_collapse_swaps_in_first(impl):
    """MADV_COLLAPSE reads a span's swap entries back in
    (__collapse_huge_page_swapin()), then collapses: VmSwap 0, RssAnon 2048."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, 8 * 4 * K)
    mm.madvise(B, 4 * 4 * K, MADV_PAGEOUT)
    mm.madvise(B, 2 * M, MADV_COLLAPSE)
    check(mm)
    assert counts(mm) == (12, 2048, 0, 0) and machine.swap_used == 0
    assert len(mm.huge_pmds()) == 1


def test_a_zero_filled_page_stays_zero_filled_through_swap(impl):
    """A page populated but never stored to is all zeroes when it comes back from
    swap: collapsed into a THP and split again, it is mapped to the zero page (the
    split compares page contents, try_to_map_unused_to_zeropage())."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B + 8 * 4 * K, 1)
    mm.madvise(B, 8 * 4 * K, MADV_POPULATE_WRITE)
    mm.madvise(B, 8 * 4 * K, MADV_PAGEOUT)
    mm.touch(B, 8 * 4 * K, write=False)
    mm.madvise(B, 2 * M, MADV_COLLAPSE)
    check(mm)
    mm.madvise(B, 4 * K, MADV_PAGEOUT)
    check(mm)
    assert counts(mm) == (12, 4, 0, 0) and machine.swap_used == 0


# -------------------------------------------------------------- userfaultfd (core)

def test_uffd_wp_travels_with_swap_entries():
    """Core only (the reference has no userfaultfd): UFFDIO_WRITEPROTECT marks swap
    entries too; the page comes back write-protected, and a write to it waits
    for the monitor after the swap-in."""
    import ptreclaim._core as core
    from ptreclaim.errors import UserfaultfdFault

    machine, mm = swapped_mm(core, pages=2)
    mm.uffd_register_wp(B, 2 * M)
    mm.uffd_wp(B, 2 * M)
    assert mm.read_entry(B) == make_swap_pte(1) | _PAGE_SWP_EXCLUSIVE | _PAGE_SWP_UFFD_WP
    with pytest.raises(UserfaultfdFault):
        mm.touch(B, 1)
    check(mm)
    e = mm.read_entry(B)
    assert e & _PAGE_PRESENT and e & _PAGE_UFFD_WP and not e & _PAGE_RW
    assert counts(mm)[1:] == (4, 0, 4)
    mm.uffd_wp(B, 2 * M, enable=False)
    assert mm.read_entry(B + 4 * K) == make_swap_pte(2) | _PAGE_SWP_EXCLUSIVE
    mm.touch(B + 4 * K, 1)
    check(mm)
