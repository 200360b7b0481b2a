"""fork(): dup_mmap, copy_page_range and copy-on-write (linux-mm-semantics R66-R69, SC-25,
SC-43), against both implementations.

Child deltas are taken, as the spec does, against a child forked from the same process
before the regions existed. The host-kernel side of the same behaviour is in
tests/data/scenarios/fork*.txt (test_kernel.py).
"""

import errno

import pytest

from ptreclaim.constants import (
    MADV_DONTFORK, MADV_DONTNEED, MADV_FREE, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_PAGEOUT,
    MADV_REMOVE, MADV_WIPEONFORK,
    MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, PROT_READ,
    PROT_WRITE, PTE_PFN_MASK, VM_LOCKED, ZERO_PFN, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_RW,
    _PAGE_SPECIAL,
)
from ptreclaim.errors import OutOfMemory, SegmentationFault

from scenarios import SCENARIOS

K = 1024
M = 1024 * K
G = 1024 * M
B = 0x2000_0000_0000  # 512 GiB-aligned, in an empty slot (§14)
RW = PROT_READ | PROT_WRITE
# The harness's mapping flags (§14); ACCOUNTED is charged (no MAP_NORESERVE).
ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE
ACCOUNTED = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
SHARED_ANON = MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
PAGES_2M = 512


def counts(mm):
    st = mm.status()
    return st["VmPTE"], st["RssAnon"], st["RssShmem"]


def delta(after, before):
    return tuple(a - b for a, b in zip(after, before))


def entry_map(mm, start=0, end=1 << 47):
    return dict(mm.entries(start, end))


def pfn(entry):
    return (entry & PTE_PFN_MASK) >> 12


def check(*mms):
    for mm in mms:
        mm.check()


# --------------------------------------------------------------------------- SC-25


def test_sc25_child_gets_tables_only_for_vmas_with_an_anon_vma(MM):
    parent = MM()
    empty_child = parent.fork()
    parent.mmap(B, 4 * M, RW, ANON)                  # X
    parent.mmap(B + G, 2 * M, RW, ANON)              # Y
    parent.mmap(B + 2 * G, 2 * M, RW, SHARED_ANON)   # Z
    rows = [
        (lambda: parent.touch(B, 4 * M), (16, 4096, 0)),
        (lambda: parent.madvise(B + 2 * M, 2 * M - 4 * K, MADV_DONTNEED), (0, -2044, 0)),
        (lambda: parent.madvise(B + 4 * M - 4 * K, 4 * K, MADV_DONTNEED), (0, -4, 0)),
        (lambda: parent.touch(B + G, 2 * M, write=False), (8, 0, 0)),
        (lambda: parent.touch(B + 2 * G, 2 * M), (8, 0, 2048)),
    ]
    for op, want in rows:
        before = counts(parent)
        op()
        assert delta(counts(parent), before) == want
    before = counts(parent)
    stats = parent.stats
    child = parent.fork()
    # Nothing changes in the parent but one TLB flush (flush_tlb_mm at the end of dup_mmap).
    assert counts(parent) == before
    assert parent.stats == dict(stats, tlb_flushes=stats["tlb_flushes"] + 1)
    # Child: PUD + PMD + both PTE tables of X (the second all-none), X's 512 pages.
    assert delta(counts(child), counts(empty_child)) == (16, 2048, 0)
    assert child.tables() == [("pud", B), ("pmd", B), ("pte", B), ("pte", B + 2 * M)]
    assert [child.stats[k] for k in ("pud_tables_allocated", "pmd_tables_allocated",
                                     "pte_tables_allocated", "page_faults")] == [1, 1, 2, 0]
    assert [(s, e, av) for s, e, _, av in child.vmas()] == [
        (B, B + 4 * M, True), (B + G, B + G + 2 * M, False), (B + 2 * G, B + 2 * G + 2 * M, False)]
    assert len(entry_map(child)) == PAGES_2M
    check(parent, child, empty_child)
    # Y and Z come back by faults in the child.
    child.touch(B + G, 2 * M, write=False)
    child.touch(B + 2 * G, 2 * M, write=False)
    assert delta(counts(child), counts(empty_child)) == (32, 2048, 2048)
    check(parent, child)


def test_sc25_scenario_rows(MM):
    """The SC-25 scenario of scenarios.py."""
    from test_scenarios import run_scenario

    (scenario,) = [s for s in SCENARIOS if s.id == "SC-25"]
    mm = MM()
    assert run_scenario(mm, scenario) == []
    mm.exit()
    mm.check()


# --------------------------------------------------------------------------- SC-43


@pytest.mark.parametrize("advice", [None, MADV_WIPEONFORK, MADV_DONTFORK], ids=["plain", "wipeonfork", "dontfork"])
def test_sc43(MM, advice):
    parent = MM()
    empty_child = parent.fork()
    parent.mmap(B, 2 * M, RW, ANON)
    if advice is not None:
        parent.madvise(B, 2 * M, advice)
    before = counts(parent)
    parent.touch(B, 2 * M)
    assert delta(counts(parent), before) == (12, 2048, 0)
    parent_state = (counts(parent), entry_map(parent))
    frames = parent.machine.frames_in_use
    child = parent.fork()
    base = counts(empty_child)
    at_fork = {None: (12, 2048, 0), MADV_WIPEONFORK: (0, 0, 0), MADV_DONTFORK: (0, 0, 0)}[advice]
    assert delta(counts(child), base) == at_fork
    assert parent.machine.frames_in_use == frames  # nothing is copied at fork
    if advice == MADV_DONTFORK:
        assert child.vmas() == []
        assert child.status()["VmSize"] == empty_child.status()["VmSize"]
        with pytest.raises(SegmentationFault):
            child.touch(B)
    else:
        ((start, end, flags, has_anon_vma),) = child.vmas()
        assert (start, end) == (B, B + 2 * M)
        assert has_anon_vma == (advice is None)
        assert child.status()["VmSize"] - empty_child.status()["VmSize"] == 2048
        child.touch(B, 2 * M)
        after_write = {None: (12, 2048, 0), MADV_WIPEONFORK: (12, 2048, 0)}[advice]
        assert delta(counts(child), base) == after_write
        # Either way the child now has 512 pages of its own.
        assert parent.machine.frames_in_use == frames + PAGES_2M
        assert not set(map(pfn, entry_map(child).values())) & set(map(pfn, parent_state[1].values()))
    check(parent, child)
    child.exit()
    # The parent saw no change when the child exited (its entries are still write-protected
    # after a plain fork, but map the same pages).
    assert counts(parent) == parent_state[0]
    assert {a: pfn(e) for a, e in entry_map(parent).items()} == {a: pfn(e) for a, e in parent_state[1].items()}
    assert parent.machine.frames_in_use == frames
    check(parent, child)


# --------------------------------------------------------------------------- entries


def test_fork_entries_and_sharing(MM):
    """R68: the child's entries are old copies; both sides lose the write bit."""
    parent = MM()
    parent.mmap(B, 2 * M, RW, ANON)
    parent.touch(B, 8 * K)                            # two anonymous pages
    parent.touch(B + 8 * K, 8 * K, write=False)       # two zero-page entries
    old = entry_map(parent)
    child = parent.fork()
    new = entry_map(parent)
    copied = entry_map(child)
    assert sorted(copied) == sorted(old) == [B, B + 4 * K, B + 8 * K, B + 12 * K]
    for addr in (B, B + 4 * K):
        assert old[addr] & (_PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED) == _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED
        assert new[addr] == old[addr] & ~_PAGE_RW                        # parent: write-protected
        assert copied[addr] == old[addr] & ~(_PAGE_RW | _PAGE_ACCESSED)  # child: also old, still dirty
    for addr in (B + 8 * K, B + 12 * K):
        assert pfn(old[addr]) == ZERO_PFN and old[addr] & _PAGE_SPECIAL
        assert new[addr] == old[addr]
        assert copied[addr] == old[addr] & ~_PAGE_ACCESSED
    assert child.status()["RssAnon"] == 8
    check(parent, child)
    # A write to a copied zero-page entry makes a private page, as without fork.
    child.touch(B + 8 * K)
    assert child.status()["RssAnon"] == 12 and parent.status()["RssAnon"] == 8
    check(parent, child)


def test_guard_markers_are_copied(MM):
    parent = MM()
    parent.mmap(B, 2 * M, RW, ANON)
    parent.madvise(B + 4 * K, 4 * K, MADV_GUARD_INSTALL)
    child = parent.fork()
    assert entry_map(child) == entry_map(parent)
    with pytest.raises(SegmentationFault):
        child.touch(B + 4 * K)
    child.touch(B)
    check(parent, child)


def test_guard_markers_in_shmem_are_copied(MM):
    """VM_MAYBE_GUARD makes fork copy a shmem VMA (no anon_vma); the child's copy of a
    shared mapping's entry is clean. Measured: tests/data/scenarios/fork-guard-shmem.txt."""
    parent = MM()
    parent.mmap(B, 2 * M, RW, SHARED_ANON)
    parent.madvise(B + 4 * K, 4 * K, MADV_GUARD_INSTALL)
    parent.touch(B + 8 * K)
    shmem_entry = entry_map(parent)[B + 8 * K]
    assert shmem_entry & (_PAGE_RW | _PAGE_DIRTY) == _PAGE_RW | _PAGE_DIRTY
    child = parent.fork()
    assert counts(child) == (12, 0, 4)
    assert entry_map(parent)[B + 8 * K] == shmem_entry  # shared: not write-protected
    assert entry_map(child)[B + 8 * K] == shmem_entry & ~(_PAGE_DIRTY | _PAGE_ACCESSED)
    with pytest.raises(SegmentationFault):
        child.touch(B + 4 * K, write=False)
    check(parent, child)


def test_fork_of_an_all_none_table(MM):
    """R67: a PTE table whose entries are all none is still copied."""
    parent = MM()
    parent.mmap(B, 2 * M, RW, ANON)
    parent.touch(B)
    parent.madvise(B, 4 * K, MADV_DONTNEED)  # not a full span: the table stays
    assert counts(parent) == (12, 0, 0) and entry_map(parent) == {}
    child = parent.fork()
    assert counts(child) == (12, 0, 0)
    assert child.tables() == [("pud", B), ("pmd", B), ("pte", B)]
    assert entry_map(child) == {}
    # A full-span DONTNEED in the child reclaims its (empty) table; the parent keeps its own.
    child.madvise(B, 2 * M, MADV_DONTNEED)
    assert counts(child) == (8, 0, 0) and counts(parent) == (12, 0, 0)
    check(parent, child)


# --------------------------------------------------------------------------- COW (R69)


@pytest.mark.parametrize("first", ["child", "parent"])
def test_cow_write_then_reuse(MM, first):
    parent = MM()
    parent.mmap(B, 2 * M, RW, ANON)
    parent.touch(B, 2 * M)
    child = parent.fork()
    frames = parent.machine.frames_in_use
    writer, other = (child, parent) if first == "child" else (parent, child)
    shared = pfn(entry_map(other)[B])
    faults = writer.stats["page_faults"]
    before = counts(writer)
    writer.touch(B)
    # wp_page_copy(): a new page for the writer; RSS and tables unchanged.
    assert counts(writer) == before
    assert writer.stats["page_faults"] == faults + 1
    assert parent.machine.frames_in_use == frames + 1
    mine = entry_map(writer)[B]
    assert pfn(mine) != shared and mine & _PAGE_RW
    assert pfn(entry_map(other)[B]) == shared and not entry_map(other)[B] & _PAGE_RW
    check(parent, child)
    # The other side now holds the old page alone: its write reuses it (no new page).
    faults = other.stats["page_faults"]
    other.touch(B)
    assert parent.machine.frames_in_use == frames + 1
    assert entry_map(other)[B] & (_PAGE_RW | _PAGE_DIRTY) == _PAGE_RW | _PAGE_DIRTY
    assert pfn(entry_map(other)[B]) == shared
    assert other.stats["page_faults"] == faults + 1
    check(parent, child)


@pytest.mark.parametrize("how", ["exit", "munmap", "dontneed"])
def test_reuse_after_the_other_side_dropped_the_pages(MM, how):
    parent = MM()
    parent.mmap(B, 2 * M, RW, ANON)
    parent.touch(B, 2 * M)
    child = parent.fork()
    if how == "exit":
        child.exit()
    elif how == "munmap":
        child.munmap(B, 2 * M)
    else:
        child.madvise(B, 2 * M, MADV_DONTNEED)
    before = entry_map(parent)
    assert all(not e & _PAGE_RW for e in before.values())
    faults = parent.stats["page_faults"]
    parent.touch(B, 2 * M)
    assert parent.machine.frames_in_use == PAGES_2M  # every page reused
    after = entry_map(parent)
    assert {a: pfn(e) for a, e in after.items()} == {a: pfn(e) for a, e in before.items()}
    assert all(e & _PAGE_RW for e in after.values())
    assert parent.stats["page_faults"] == faults + PAGES_2M
    check(parent, child)
    # Exclusive again: mprotect may now restore the write bit without a fault.
    parent.mprotect(B, 2 * M, PROT_READ)
    parent.mprotect(B, 2 * M, RW)
    assert all(e & _PAGE_RW for e in entry_map(parent).values())
    check(parent, child)


def test_mprotect_does_not_make_shared_pages_writable(MM):
    parent = MM()
    parent.mmap(B, 2 * M, RW, ANON)
    parent.touch(B, 4 * K)
    child = parent.fork()
    for mm in (parent, child):
        mm.mprotect(B, 2 * M, PROT_READ)
        mm.mprotect(B, 2 * M, RW)
        assert not entry_map(mm)[B] & _PAGE_RW
    check(parent, child)


def test_cow_needs_a_frame(impl):
    machine = impl.Machine(max_frames=PAGES_2M, totalram_pages=1 << 20)
    parent = impl.MM(machine=machine)
    parent.mmap(B, 2 * M, RW, ANON)
    parent.touch(B, 2 * M)
    child = parent.fork()  # fork itself needs no data frame
    shared = entry_map(child)[B]
    faults = child.stats["page_faults"]
    with pytest.raises(OutOfMemory):
        child.touch(B)
    assert child.stats["page_faults"] == faults + 1
    assert entry_map(child)[B] == shared
    check(parent, child)


# --------------------------------------------------------------------------- freeing


def test_dontneed_in_the_child_drops_only_its_references(MM):
    parent = MM()
    parent.mmap(B, 2 * M, RW, ANON)
    parent.touch(B, 2 * M)
    child = parent.fork()
    parent_entries = entry_map(parent)
    child.madvise(B, 2 * M, MADV_DONTNEED)
    assert counts(child) == (8, 0, 0)  # PT reclaim in the child
    assert entry_map(parent) == parent_entries and counts(parent) == (12, 2048, 0)
    assert parent.machine.frames_in_use == PAGES_2M
    check(parent, child)
    parent.madvise(B, 2 * M, MADV_DONTNEED)
    assert parent.machine.frames_in_use == 0
    check(parent, child)


def test_frames_are_freed_when_both_processes_drop_them(MM):
    parent = MM()
    parent.mmap(B, 4 * M, RW, ANON)
    parent.touch(B, 4 * M)
    child = parent.fork()
    machine = parent.machine
    assert machine.frames_in_use == 2 * PAGES_2M
    parent.munmap(B, 4 * M)
    assert machine.frames_in_use == 2 * PAGES_2M
    check(parent, child)
    child.madvise(B, 2 * M, MADV_DONTNEED)
    assert machine.frames_in_use == PAGES_2M
    child.exit()
    assert machine.frames_in_use == 0
    check(parent, child)


def test_fork_then_pt_reclaim_in_the_child(MM):
    """The seed loop in a child: its tables go, the parent's stay."""
    spans = 32
    parent = MM()
    parent.mmap(B, spans * 2 * M, RW, ANON)
    parent.touch(B, spans * 2 * M)
    parent_counts = counts(parent)
    assert parent_counts == (4 * (2 + spans), spans * 2048, 0)
    child = parent.fork()
    assert counts(child) == parent_counts
    for i in range(spans):
        child.madvise(B + i * 2 * M, 2 * M, MADV_DONTNEED)
    assert counts(child) == (8, 0, 0)
    assert child.stats["pte_tables_freed_reclaim_fast"] == spans
    assert counts(parent) == parent_counts
    assert parent.stats["pte_tables_freed_reclaim_fast"] == 0
    assert parent.machine.frames_in_use == spans * PAGES_2M
    check(parent, child)
    for i in range(spans):
        parent.madvise(B + i * 2 * M, 2 * M, MADV_DONTNEED)
    assert counts(parent) == (8, 0, 0) and parent.machine.frames_in_use == 0
    check(parent, child)


def test_pageout_and_free_of_shared_pages(MM):
    """COLD/PAGEOUT leave pages other processes map alone; MADV_FREE still makes a clean
    shared page lazy-free (only a dirty folio must be exclusive), so it can be discarded
    once the child is its last user."""
    parent = MM()
    parent.mmap(B, 2 * M, RW, ANON)
    parent.touch(B, 2 * M)
    child = parent.fork()
    entries = entry_map(child)
    child.madvise(B, 2 * M, MADV_PAGEOUT)
    assert entry_map(child) == entries and counts(child) == (12, 2048, 0)
    child.madvise(B, 2 * M, MADV_FREE)
    assert all(not e & (_PAGE_DIRTY | _PAGE_ACCESSED) for e in entry_map(child).values())
    assert counts(child) == (12, 2048, 0)
    check(parent, child)
    parent.exit()
    child.madvise(B, 2 * M, MADV_PAGEOUT)
    assert counts(child) == (12, 0, 0)
    assert child.machine.frames_in_use == 0
    check(parent, child)


def test_shmem_hole_punch_unmaps_in_both_processes(MM):
    parent = MM()
    parent.mmap(B, 2 * M, RW, SHARED_ANON)
    parent.madvise(B, 2 * M, MADV_GUARD_INSTALL)  # so that fork copies the tables
    parent.madvise(B, 2 * M, MADV_GUARD_REMOVE)   # VM_MAYBE_GUARD stays (sticky)
    parent.touch(B, 64 * K)
    child = parent.fork()
    assert counts(child) == (12, 0, 64)
    parent.madvise(B, 64 * K, MADV_REMOVE)
    assert counts(parent) == (12, 0, 0) and counts(child) == (12, 0, 0)
    assert parent.machine.frames_in_use == 0
    check(parent, child)


# --------------------------------------------------------------------------- VMAs


def test_child_vmas_lose_mlock_and_stay_unmerged(MM):
    """R66: VM_LOCKED is not inherited; the copies are never merged, even where only
    VM_LOCKED kept them apart (measured: fork-unlocked-split.txt)."""
    parent = MM()
    parent.mmap(B, 2 * M, PROT_READ, ANON)
    parent.mlock(B, M)
    assert parent.status()["VmLck"] == 1024
    child = parent.fork()
    assert child.status()["VmLck"] == 0
    assert [(s, e) for s, e, _, _ in child.vmas()] == [(B, B + M), (B + M, B + 2 * M)]
    assert all(not f & VM_LOCKED for _, _, f, _ in child.vmas())
    check(parent, child)
    with pytest.raises(OSError) as info:
        parent.madvise(B, M, MADV_DONTNEED)
    assert info.value.errno == errno.EINVAL
    child.touch(B, 2 * M, write=False)
    child.madvise(B, 2 * M, MADV_DONTNEED)  # two VMAs in the span: no reclaim
    assert counts(child) == (12, 0, 0)
    check(parent, child)


def test_forked_vma_does_not_merge_with_a_vma_without_anon_vma(MM):
    """is_mergeable_anon_vma(): the child's VMA has a non-singular anon_vma_chain
    (measured: fork-merge.txt and forkp-merge.txt)."""
    results = {}
    for side in ("child", "parent"):
        parent = MM()
        parent.mmap(B, 2 * M, RW, ANON)
        parent.touch(B, M)
        child = parent.fork()
        mm = child if side == "child" else parent
        mm.munmap(B + M, M)
        mm.mmap(B + M, M, RW, ANON)
        mm.touch(B + M)
        before = counts(mm)
        mm.madvise(B, 2 * M, MADV_DONTNEED)
        results[side] = (len(mm.vmas()), delta(counts(mm), before))
        check(parent, child)
    assert results == {"child": (2, (0, -1028, 0)), "parent": (1, (-4, -1028, 0))}


def test_child_inherits_the_settings(MM):
    for kwargs, fast, slow, vmpte in (({}, 1, 0, 8), ({"split_ptlocks": False}, 0, 1, 8),
                                      ({"pt_reclaim": False}, 0, 0, 12)):
        parent = MM(**kwargs)
        parent.mmap(B, 2 * M, RW, ANON)
        parent.touch(B, 2 * M)
        child = parent.fork()
        child.madvise(B, 2 * M, MADV_DONTNEED)
        assert (child.stats["pte_tables_freed_reclaim_fast"], child.stats["pte_tables_freed_reclaim_slow"],
                child.status()["VmPTE"]) == (fast, slow, vmpte), kwargs
        check(parent, child)


def test_fork_of_a_fork(MM):
    parent = MM()
    parent.mmap(B, 2 * M, RW, ANON)
    parent.touch(B, 2 * M)
    child = parent.fork()
    grandchild = child.fork()
    assert counts(grandchild) == (12, 2048, 0)
    assert parent.machine.frames_in_use == PAGES_2M
    child.exit()
    grandchild.touch(B, 4 * K)  # still shared with the parent: copied
    assert parent.machine.frames_in_use == PAGES_2M + 1
    parent.exit()  # frees the old page at B, which only the parent still mapped
    assert grandchild.machine.frames_in_use == PAGES_2M
    grandchild.touch(B + 4 * K, 4 * K)  # now the grandchild's alone: reused
    assert grandchild.machine.frames_in_use == PAGES_2M
    check(parent, child, grandchild)


# --------------------------------------------------------------------------- errors


def test_fork_of_an_exited_mm(MM):
    mm = MM()
    mm.exit()
    with pytest.raises(ValueError):
        mm.fork()


@pytest.mark.parametrize("advice", [None, MADV_WIPEONFORK, MADV_DONTFORK], ids=["plain", "wipeonfork", "dontfork"])
def test_fork_refused_by_overcommit(impl, advice):
    """dup_mmap() charges each VM_ACCOUNT VMA it copies (heuristic overcommit). A VMA
    bigger than RAM can exist after merges of mappings that each passed; fork fails on
    it with ENOMEM unless it is not copied at all (DONTFORK)."""
    machine = impl.Machine(totalram_pages=1000)
    parent = impl.MM(machine=machine)
    parent.mmap(B, 64 * K, RW, ACCOUNTED)  # copied before the failure
    parent.touch(B, 64 * K)
    big = B + G
    parent.mmap(big, 600 * 4 * K, RW, ACCOUNTED)
    parent.mmap(big + 600 * 4 * K, 600 * 4 * K, RW, ACCOUNTED)
    assert len(parent.vmas()) == 2  # merged: 1200 pages > totalram
    if advice is not None:
        parent.madvise(big, 1200 * 4 * K, advice)
    state = (parent.status(), parent.vmas(), parent.tables(), machine.frames_in_use)
    entries = entry_map(parent)
    stats = parent.stats
    if advice == MADV_DONTFORK:
        child = parent.fork()
        assert len(child.vmas()) == 1
        check(parent, child)
        return
    with pytest.raises(OSError) as info:
        parent.fork()
    assert info.value.errno == errno.ENOMEM
    assert (parent.status(), parent.vmas(), parent.tables(), machine.frames_in_use) == state
    assert parent.stats == dict(stats, tlb_flushes=stats["tlb_flushes"] + 1)
    # As in Linux, the entries of the VMA copied before the failure stay write-protected.
    assert entry_map(parent) == {a: e & ~_PAGE_RW for a, e in entries.items()}
    check(parent)
    # Their pages are the parent's alone again: writes reuse them.
    parent.touch(B, 64 * K)
    assert machine.frames_in_use == state[3]
    assert entry_map(parent) == entries
    check(parent)
