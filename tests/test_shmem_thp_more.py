"""Shmem huge folios (SC-39, R31, R44): rules that no measured script shows line by line,
checked on both implementations through their state (PMDs, tables, status, check()).
The measured scripts are tests/data/scenarios/shmem-thp-*.txt (test_shmem_thp.py,
test_script.py, test_kernel.py)."""

import errno

import pytest

from ptreclaim.constants import (
    MADV_COLLAPSE, MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_NOHUGEPAGE,
    MADV_PAGEOUT, MADV_REMOVE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, MAP_SHARED,
    MREMAP_FIXED, MREMAP_MAYMOVE, PROT_READ, PROT_WRITE, _PAGE_DIRTY, _PAGE_RW,
)
from ptreclaim.script import run

K = 1024
M = 1024 * K
G = 1024 * M
B = 0x2000_0000_0000
RW = PROT_READ | PROT_WRITE


class Checked:
    """An MM whose every call is followed by check() of all the machine's processes."""

    def __init__(self, mm):
        self._mm = mm

    def __getattr__(self, name):
        attr = getattr(self._mm, name)
        if not callable(attr) or name in ("check", "status"):
            return attr

        def call(*args, **kwargs):
            try:
                ret = attr(*args, **kwargs)
            finally:
                for mm in list(self._mm.machine.mms):
                    mm.check()
            if name == "fork":
                return Checked(ret)
            return ret

        return call


def test_status_shmem_pmd_mapped(impl):
    """ShmemPmdMapped counts the 2 MiB of a PMD-mapped shmem folio, not PTE-mapped ones
    (SC-39: write, COLLAPSE, then a DONTNEED and a read fault map it again by PMD)."""
    results = run("mmap 0 2M rw shared\ntouch 0 2M write\nmadvise 0 2M COLLAPSE\n", mm := impl.MM())
    assert [r.errno for r in results] == [0, 0, 0]
    assert mm.status()["ShmemPmdMapped"] == 2048
    assert not [t for t in mm.tables() if t[0] == "deposit"]
    mm.madvise(B, 1 * M, MADV_DONTNEED)
    assert mm.status()["ShmemPmdMapped"] == 0
    mm.check()


# --------------------------------------------------------------- rules without a script



def counts(mm):
    st = mm.status()
    return st["VmPTE"], st["RssAnon"], st["RssShmem"], st["ShmemPmdMapped"]


def collapsed(impl, machine=None, size=2 * M, flags=MAP_SHARED):
    """A process mapping a shmem file at B whose first 2 MiB were written and
    collapsed, so B is PMD-mapped (SC-39)."""
    machine = machine or impl.Machine()
    mm = impl.MM(machine=machine)
    f = machine.create_file(size, shmem=True, cached=False)
    fd = mm.open(f)
    mm.mmap(B, size, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd)
    mm.touch(B, 2 * M)
    mm.madvise(B, 2 * M, MADV_COLLAPSE)
    assert counts(mm) == (8, 0, 2048, 2048)
    if flags != MAP_SHARED:
        mm.munmap(B, size)
        mm.mmap(B, size, RW, flags | MAP_FIXED_NOREPLACE, fd)
    mm.check()
    return machine, mm, f, fd


def test_fork_does_not_copy_a_file_pmd(impl):
    """copy_huge_pmd(): a file PMD is not copied (D, fork), even in a private VMA
    whose anon_vma makes fork copy its tables; the COW copy next to it is copied."""
    machine, mm, f, fd = collapsed(impl, size=4 * M, flags=MAP_PRIVATE)
    mm.touch(B, 1, write=False)          # B: read fault with the PMD none -> PMD (B)
    mm.touch(B + 2 * M, 1, write=True)   # anon_vma, a COW copy in the second span
    assert counts(mm) == (12, 4, 2048, 2048)
    child = mm.fork()
    # The child: PUD + PMD table + the PTE table of the second span; no deposit.
    assert counts(child) == (12, 4, 0, 0)
    assert counts(mm) == (12, 4, 2048, 2048)
    child.touch(B, 1, write=False)       # the child faults the PMD in
    assert counts(child) == (12, 4, 2048, 2048)
    for p in (mm, child):
        p.check()


def test_munmap_keeps_the_folio_huge(impl):
    """A zap of the whole PMD drops the mapping only; the folio stays huge (A), so a
    new suitable VMA maps it by PMD again on a read (B)."""
    machine, mm, f, fd = collapsed(impl)
    mm.munmap(B, 2 * M)
    assert counts(mm) == (0, 0, 0, 0) and f.nr_cached == 512
    mm.mmap(B + G, 2 * M, PROT_READ, MAP_SHARED | MAP_FIXED_NOREPLACE, fd)
    mm.touch(B + G + 64 * K, 1, write=False)
    assert counts(mm) == (8, 0, 2048, 2048)
    (addr, entry), = mm.huge_pmds()
    assert addr == B + G and not entry & _PAGE_RW
    mm.check()


def test_mprotect_whole_pmd_changes_it_in_place(impl):
    """change_huge_pmd() keeps a PMD that mprotect covers whole (D)."""
    machine, mm, f, fd = collapsed(impl)
    mm.mprotect(B, 2 * M, PROT_READ)
    assert counts(mm) == (8, 0, 2048, 2048)
    assert not mm.huge_pmds()[0][1] & _PAGE_RW
    mm.mprotect(B, 2 * M, RW)   # a shared shmem mapping's vm_page_prot is writable
    assert mm.huge_pmds()[0][1] & _PAGE_RW
    mm.touch(B, 1)
    assert counts(mm) == (8, 0, 2048, 2048)
    mm.check()


def test_write_fault_on_read_only_shared_pmd_maps_it_again(impl):
    """wp_huge_pmd() of a shared mapping: cleared, then B again, writable and dirty
    (net RSS 0, D)."""
    machine, mm, f, fd = collapsed(impl)
    mm.mmap(B + G, 2 * M, PROT_READ, MAP_SHARED | MAP_FIXED_NOREPLACE, fd)
    mm.touch(B + G, 1, write=False)
    mm.mprotect(B + G, 2 * M, RW)
    before = counts(mm)
    mm.touch(B + G + 4 * K, 1)
    assert counts(mm) == before
    entry = dict(mm.huge_pmds())[B + G]
    assert entry & _PAGE_RW and entry & _PAGE_DIRTY
    mm.check()


def test_pmd_is_skipped_when_another_process_maps_the_folio(impl):
    """folio_maybe_mapped_shared(): COLD/PAGEOUT leave a folio that another mm maps,
    whole or in part (A, D)."""
    machine, mm, f, fd = collapsed(impl)
    child = mm.fork()      # a shared VMA without anon_vma: nothing copied
    child.touch(B, 1, write=False)
    assert counts(child) == (8, 0, 2048, 2048)
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    mm.madvise(B, 1 * M, MADV_PAGEOUT)
    assert counts(mm) == (8, 0, 2048, 2048) and counts(child) == (8, 0, 2048, 2048)
    child.exit()
    mm.madvise(B, 2 * M, MADV_PAGEOUT)   # this mm alone: unmapped, still huge
    assert counts(mm) == (8, 0, 0, 0)
    mm.touch(B, 1, write=False)
    assert counts(mm) == (8, 0, 2048, 2048)
    mm.check()


def test_pageout_of_a_pte_mapped_whole_folio_without_swap(impl):
    """A folio mapped whole by PTEs and covered whole by PAGEOUT is unmapped and
    stays huge (D, no swap); the next read maps all of it by PTEs again (C)."""
    machine, mm, f, fd = collapsed(impl)
    mm.madvise(B, 2 * M, MADV_DONTNEED)
    mm.madvise(B + 2 * M - 4 * K, 4 * K, MADV_GUARD_INSTALL)   # a PTE table (+4)
    mm.madvise(B + 2 * M - 4 * K, 4 * K, MADV_GUARD_REMOVE)
    mm.touch(B, 1, write=False)
    assert counts(mm) == (12, 0, 2048, 0)
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    assert counts(mm) == (12, 0, 0, 0) and f.nr_cached == 512
    mm.touch(B + 8 * K, 1, write=False)
    assert counts(mm) == (12, 0, 2048, 0)
    mm.check()


def test_pageout_with_swap_splits_and_writes_the_pages_out(impl):
    """With a swap device, PAGEOUT of a whole PMD-mapped folio splits it and writes
    its 512 pages out like small dirty shmem pages (the choice documented for the
    simulator, D); they come back small."""
    machine, mm, f, fd = collapsed(impl, machine=impl.Machine(swap_pages=1024))
    mm.madvise(B, 2 * M, MADV_PAGEOUT)
    assert counts(mm) == (8, 0, 0, 0)
    assert (machine.swap_used, f.nr_cached) == (512, 0)
    mm.touch(B, 1, write=False)   # one small page back, a PTE table for it
    assert counts(mm) == (12, 0, 4, 0) and machine.swap_used == 511
    mm.check()


def test_remove_of_a_whole_folio_and_of_part_of_one(impl):
    """A hole punch that covers a huge folio whole takes it out whole; one covering a
    part splits it, unmapping it everywhere (A), into the largest folios around the
    hole (folio_split(), measured in k-punch-split)."""
    machine, mm, f, fd = collapsed(impl, size=4 * M)
    mm.touch(B + 2 * M, 2 * M)
    mm.madvise(B + 2 * M, 2 * M, MADV_COLLAPSE)
    assert counts(mm) == (8, 0, 4096, 4096)   # the second span's table retracted too
    mm.madvise(B, 2 * M, MADV_REMOVE)
    assert counts(mm) == (8, 0, 2048, 2048) and f.nr_cached == 512
    mm.madvise(B + 3 * M, 4 * K, MADV_REMOVE)
    assert counts(mm) == (8, 0, 0, 0) and f.nr_cached == 511
    mm.touch(B + 2 * M, 1, write=False)   # the 1 MiB folio before the hole, whole
    assert counts(mm) == (12, 0, 1024, 0)
    mm.check()


def test_nohugepage_vma_maps_the_folio_by_ptes(impl):
    """VM_NOHUGEPAGE: no PMD (B) and COLLAPSE is EINVAL (E), but the read fault maps
    the whole folio by PTEs (C)."""
    machine, mm, f, fd = collapsed(impl)
    mm.madvise(B, 2 * M, MADV_DONTNEED)
    mm.madvise(B, 2 * M, MADV_NOHUGEPAGE)
    with pytest.raises(OSError) as e:
        mm.madvise(B, 2 * M, MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    mm.touch(B, 1, write=False)
    assert counts(mm) == (12, 0, 2048, 0)
    mm.check()


def test_aligned_mremap_moves_the_pmd_without_deposit(impl):
    """move_huge_pmd() of a file PMD: no deposit moves (D, m-i line 4)."""
    machine, mm, f, fd = collapsed(impl)
    mm.mremap(B, 2 * M, 2 * M, MREMAP_MAYMOVE | MREMAP_FIXED, B + G)
    assert counts(mm) == (8, 0, 2048, 2048)
    assert [t for t in mm.tables() if t[0] == "deposit"] == []
    mm.check()


def test_collapse_without_frames_is_enomem(impl):
    """ENOMEM when the new folio cannot be allocated (E), nothing changed."""
    machine = impl.Machine(max_frames=600)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    mm.touch(B, 2 * M)
    with pytest.raises(OSError) as e:
        mm.madvise(B, 2 * M, MADV_COLLAPSE)
    assert e.value.errno == errno.ENOMEM
    assert counts(mm) == (12, 0, 2048, 0)
    mm.check()


def test_collapse_reads_swapped_pages_back(impl):
    """collapse_file() takes swapped-out pages of the span too (E): the span is
    collapsed and their slots are freed."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    mm.mmap(B, 2 * M, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    mm.touch(B, 64 * K)
    mm.madvise(B, 64 * K, MADV_PAGEOUT)
    assert machine.swap_used == 16 and counts(mm) == (12, 0, 0, 0)
    mm.madvise(B, 2 * M, MADV_COLLAPSE)
    assert machine.swap_used == 0 and counts(mm) == (8, 0, 2048, 2048)
    mm.check()


def test_exit_frees_everything(impl):
    machine, mm, f, fd = collapsed(impl)
    mm.exit()
    mm.check()
    del f
    assert machine.frames_in_use == 0


def test_collapse_range_inside_one_span_is_einval_for_anonymous_memory_too(impl):
    """madvise_collapse()'s final thps == (hend - hstart) >> HPAGE_PMD_SHIFT wraps when
    the range reaches no 2 MiB boundary: EINVAL, as for shmem (k-collapse-walk line 13);
    measured on the host for a private anonymous VMA with an anon_vma too."""
    mm = impl.MM()
    mm.mmap(B, 4 * M + 512 * K, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    mm.touch(B, 4 * K)
    mm.madvise(B + 1 * M + 252 * K, 2 * M + 176 * K, MADV_COLLAPSE)   # hend == hstart: 0
    with pytest.raises(OSError) as e:
        mm.madvise(B + 1 * M, 4 * K, MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    mm.check()
