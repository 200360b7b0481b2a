"""mremap(2) on both implementations: shrink, growth in place, moves (whole tables or
entry by entry), MREMAP_DONTUNMAP, several VMAs at once, and every error with the
state left as it was. The errno cases are also made as real syscalls in this process
(in the empty 512 GiB slot at B), so the expected errno is the host kernel's. The
measured page-table counts are in tests/data/scenarios/mremap-*.txt."""

import ctypes
import errno
import os
import sys

import pytest

from ptreclaim import script as S
from ptreclaim.constants import (
    MADV_DONTNEED, MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_LOCKED, MAP_NORESERVE,
    MAP_PRIVATE, MAP_SHARED, MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE, PROT_READ,
    PROT_WRITE, TASK_SIZE, VM_ACCOUNT, VM_LOCKED,
)
from ptreclaim.errors import BusError

from rawsys import RawSyscalls

B = 0x2000_0000_0000
K, M, G = 1 << 10, 1 << 20, 1 << 30
U64 = (1 << 64) - 1
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE
SHARED = MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
CHARGED = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
MOVE = MREMAP_MAYMOVE | MREMAP_FIXED


def snapshot(mm):
    return (mm.status(), mm.vmas(), list(mm.entries()), mm.tables())


def vmas(mm, base=B):
    """The VMAs as (start, end) relative to base."""
    return [(s - base, e - base) for s, e, _, _ in mm.vmas()]


def pte(mm):
    return mm.status()["VmPTE"]


# --- the host kernel, through raw syscalls ------------------------------------------------



class Host(RawSyscalls):
    """Raw syscalls in this process, confined to the 512 GiB slot at B."""

    @staticmethod
    def vm_flags():
        """The VmFlags line of each VMA in the slot (smaps), in address order."""
        out, inside = [], False
        with open("/proc/self/smaps") as f:
            for line in f:
                first = line.split()[0]
                if "-" in first and ":" not in first:
                    lo, hi = (int(x, 16) for x in first.split("-"))
                    inside = lo < B + (512 << 30) and hi > B
                elif inside and line.startswith("VmFlags:"):
                    out.append(line[len("VmFlags:"):].strip())
        return out

    @staticmethod
    def vmas():
        out = []
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo < B + (512 << 30) and hi > B:
                    out.append((lo - B, hi - B))
        return out


@pytest.fixture
def host():
    if not sys.platform.startswith("linux"):
        pytest.skip("the host is not Linux: no kernel to compare with")
    h = Host()
    if h.vmas():
        pytest.skip("the host process already has a mapping in the 512 GiB slot at 0x200000000000")
    yield h
    h.call("munlock", B, 512 << 30)
    h.call("munmap", B, 512 << 30)


def new_mm(MM):
    mm = MM(thp="madvise")
    assert mm.mmap(B, 4 * M, RW, ANON) == B
    mm.touch(B, 4 * M)
    mm.mmap(B + 8 * M, 2 * M, RW, ANON)
    return mm


# --- errors: Linux's errno, nothing changed ---------------------------------------------

ERRNO_CASES = [
    # check_mremap_params(): before the VMA is looked up
    ((B, 4 * K, 4 * K, 8, B + G), errno.EINVAL),                       # unknown flag
    ((B, 4 * K, 4 * K, 1 << 40, 0), errno.EINVAL),
    ((B + 1, 4 * K, 4 * K, 0, 0), errno.EINVAL),                       # unaligned address
    ((B, 4 * K, 0, MREMAP_MAYMOVE, 0), errno.EINVAL),                  # zero new length
    ((B, 4 * K, U64, 0, 0), errno.EINVAL),                             # wraps to zero
    ((B, 4 * K, 1 << 47, 0, 0), errno.EINVAL),                         # past TASK_SIZE
    ((B + 100 * G, 4 * K, 1 << 47, 0, 0), errno.EINVAL),               # ... even unmapped
    ((B, 4 * K, 4 * K, MREMAP_FIXED, B + G), errno.EINVAL),            # FIXED without MAYMOVE
    ((B, 4 * K, 4 * K, MREMAP_DONTUNMAP, B + G), errno.EINVAL),
    ((B, 4 * K, 8 * K, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B + G), errno.EINVAL),  # resize
    ((B, 4 * K, 4 * K, MOVE, B + G + 1), errno.EINVAL),                # unaligned new address
    ((B, 4 * K, 4 * K, MOVE, TASK_SIZE), errno.EINVAL),                # past TASK_SIZE
    ((B, 8 * K, 8 * K, MOVE, B + 4 * K), errno.EINVAL),                # overlap
    ((B + 100 * G, 8 * K, 8 * K, MOVE, B + 100 * G + 4 * K), errno.EINVAL),
    # the VMA: EFAULT for no VMA or a range past its end
    ((B + 6 * M, 4 * K, 8 * K, MREMAP_MAYMOVE, 0), errno.EFAULT),
    ((B + 6 * M, 4 * K, 4 * K, MOVE, B + G), errno.EFAULT),
    ((B + 6 * M, 4 * K, 4 * K, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B + G), errno.EFAULT),
    ((B + 2 * M, 4 * M, 6 * M, MREMAP_MAYMOVE, 0), errno.EFAULT),
    ((B, 8 * M, 10 * M, MOVE, B + G), errno.EFAULT),
    # a fixed move of unchanged size takes what VMAs it finds, and may end in a hole
    ((B + 3 * M, 2 * M, 2 * M, MOVE | MREMAP_DONTUNMAP, B + G), 0),
    # a private mapping cannot be duplicated with old_len 0
    ((B, 0, 4 * K, MOVE, B + G), errno.EINVAL),
    ((B, 0, 4 * K, MREMAP_MAYMOVE, 0), errno.EINVAL),
    # growth blocked by the next VMA, and MREMAP_MAYMOVE not given
    ((B + 2 * M, 2 * M, 7 * M, 0, 0), errno.ENOMEM),
    ((B, 4 * M, 9 * M, 0, 0), errno.ENOMEM),
    # growth in place up to the next VMA
    ((B + 2 * M, 2 * M, 6 * M, 0, 0), 0),
    # no change at all: success, whatever lies in the range
    ((B, 16 * M, 16 * M, 0, 0), 0),
    ((B, 16 * M, 16 * M, MREMAP_MAYMOVE, 0), 0),
]


def _id(case):
    args, err = case
    return f"{tuple(hex(a) if a > 4096 else a for a in args)}->{errno.errorcode.get(err, err)}"


@pytest.mark.parametrize("case", ERRNO_CASES, ids=[_id(c) for c in ERRNO_CASES])
def test_errno_matches_host_kernel(MM, host, case):
    args, expected = case
    assert host.call("mmap", B, 4 * M, RW, ANON, U64, 0) == 0
    assert host.call("mmap", B + 8 * M, 2 * M, RW, ANON, U64, 0) == 0
    assert host.call("mremap", *args) == expected, "the expectation disagrees with this kernel"
    host_ret = host.last
    mm = new_mm(MM)
    before = snapshot(mm)
    try:
        got, ret = 0, mm.mremap(*args)
    except OSError as e:
        assert e.strerror == os.strerror(e.errno)
        got, ret = e.errno, None
    assert got == expected
    if expected:
        assert snapshot(mm) == before
    else:
        assert ret == host_ret
    mm.check()


@pytest.mark.parametrize("call", [
    lambda mm: mm.mremap("0", 4096, 4096),
    lambda mm: mm.mremap(B, 4096.0, 4096),
    lambda mm: mm.mremap(B, 4096, None),
    lambda mm: mm.mremap(B, 4096, 4096, "maymove"),
    lambda mm: mm.mremap(B, 4096, 4096, 0, 1.5),
])
def test_wrong_types_raise_type_error(MM, call):
    mm = new_mm(MM)
    before = snapshot(mm)
    with pytest.raises(TypeError):
        call(mm)
    assert snapshot(mm) == before


@pytest.mark.parametrize("call", [
    lambda mm: mm.mremap(-4096, 4096, 4096),
    lambda mm: mm.mremap(B, 1 << 64, 4096),
    lambda mm: mm.mremap(B, 4096, 4096, -1),
    lambda mm: mm.mremap(B, 4096, 4096, MOVE, -(1 << 30)),
])
def test_out_of_range_ints_raise_overflow_error(MM, call):
    mm = new_mm(MM)
    before = snapshot(mm)
    with pytest.raises(OverflowError):
        call(mm)
    assert snapshot(mm) == before


def test_exited_mm_refuses_mremap(MM):
    mm = MM()
    mm.exit()
    with pytest.raises(ValueError):
        mm.mremap(B, 4096, 4096)


# --- shrink and growth in place -------------------------------------------------------------

def test_shrink_unmaps_the_tail_like_munmap(MM):
    mm = MM()
    mm.mmap(B, 4 * M, RW, ANON)
    mm.touch(B, 4 * M)
    assert pte(mm) == 16
    assert mm.mremap(B, 4 * M, 1 * M) == B
    st = mm.status()
    assert (st["VmPTE"], st["RssAnon"], st["VmSize"]) == (12, 1024, 1024)
    assert vmas(mm) == [(0, 1 * M)]
    assert mm.stats["pte_tables_freed_unmap"] == 1
    mm.check()


def test_growth_in_place_and_merge_with_next(MM):
    mm = MM()
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, 4 * K)
    mm.mmap(B + 3 * M, 3 * M, RW, ANON)
    assert mm.mremap(B, 2 * M, 3 * M) == B
    assert vmas(mm) == [(0, 6 * M)]                 # vma_merge_extend took the next VMA in
    assert mm.status()["VmSize"] == 6 * 1024
    mm.touch(B + 2 * M, 2 * M)
    before = pte(mm)
    mm.madvise(B + 2 * M, 2 * M, MADV_DONTNEED)     # one VMA over the span: reclaimed
    assert pte(mm) == before - 4
    mm.check()


def test_growth_that_cannot_stay_in_place_moves(MM):
    mm = MM()
    mm.mmap(B, 4 * M, RW, ANON)
    mm.touch(B, 4 * M)
    mm.mmap(B + 4 * M, 2 * M, RW, ANON)
    with pytest.raises(OSError) as info:
        mm.mremap(B, 4 * M, 8 * M)
    assert info.value.errno == errno.ENOMEM
    new = mm.mremap(B, 4 * M, 8 * M, MREMAP_MAYMOVE)
    assert new != B and new % (2 * M) == 0
    assert mm.status()["RssAnon"] == 4096
    assert [(s, e) for s, e, _, _ in mm.vmas()] == [(B + 4 * M, B + 6 * M), (new, new + 8 * M)]
    mm.check()


def test_moved_address_is_2m_aligned_like_the_host(MM, host):
    """A private anonymous mapping moved to an address the kernel chooses gets one
    aligned to 2 MiB when its length is a multiple of 2 MiB, as a new mmap would,
    wherever it was (no page offset counts for anonymous memory)."""
    assert host.call("mmap", B + 1 * M, 2 * M, RW, ANON, U64, 0) == 0
    assert host.call("mmap", B + 3 * M, 1 * M, RW, ANON, U64, 0) == 0
    assert host.call("mremap", B + 1 * M, 2 * M, 4 * M, MREMAP_MAYMOVE, 0) == 0
    host_new = host.last
    host.call("munmap", host_new, 4 * M)
    mm = MM()
    mm.mmap(B + 1 * M, 2 * M, RW, ANON)
    mm.mmap(B + 3 * M, 1 * M, RW, ANON)
    new = mm.mremap(B + 1 * M, 2 * M, 4 * M, MREMAP_MAYMOVE)
    assert host_new % (2 * M) == new % (2 * M) == 0
    # Not a multiple of 2 MiB: packed top-down below it, like mmap.
    mm.mmap(B + 4 * M, 1 * M, RW, ANON)
    assert mm.mremap(B + 3 * M, 1 * M, 3 * M, MREMAP_MAYMOVE) == new - 3 * M
    mm.check()


def test_locked_growth_is_populated(MM):
    mm = MM()
    mm.mmap(B, 2 * M, RW, ANON | MAP_LOCKED)
    assert mm.mremap(B, 2 * M, 4 * M) == B
    st = mm.status()
    assert (st["RssAnon"], st["VmLck"], st["VmPTE"]) == (4096, 4096, 16)
    mm.check()


# --- moves ------------------------------------------------------------------------------------

def test_aligned_move_moves_the_pte_table(MM):
    """SC-27: the PTE table itself changes place; no table is allocated for it."""
    mm = MM()
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, 2 * M)
    entries = [e for _, e in mm.entries()]
    pte_allocs = mm.stats["pte_tables_allocated"]
    assert mm.mremap(B, 2 * M, 2 * M, MOVE, B + G) == B + G
    assert pte(mm) == 12
    assert mm.tables() == [("pud", B), ("pmd", B + G), ("pte", B + G)]
    assert mm.stats["pte_tables_allocated"] == pte_allocs
    assert [a for a, _ in mm.entries()] == [B + G + i * 4 * K for i in range(512)]
    assert [e for _, e in mm.entries()] == entries            # the same entries
    assert mm.mremap(B + G, 2 * M, 2 * M, MOVE, B + G + 5 * M) == B + G + 5 * M
    assert pte(mm) == 16
    assert mm.status()["RssAnon"] == 2048
    mm.check()
    mm.exit()
    assert mm.pgtables_bytes == 0


def test_fixed_over_an_existing_mapping_unmaps_it(MM):
    mm = MM()
    mm.mmap(B, 2 * M, RW, ANON)
    mm.touch(B, 2 * M)
    mm.mmap(B + G, 4 * M, RW, ANON)
    mm.touch(B + G, 4 * M)
    assert mm.mremap(B, 2 * M, 2 * M, MOVE, B + G + 1 * M) == B + G + 1 * M
    st = mm.status()
    assert (st["RssAnon"], st["VmPTE"], st["VmSize"]) == (4096, 16, 4096)
    assert vmas(mm) == [(G, G + 1 * M), (G + 1 * M, G + 3 * M), (G + 3 * M, G + 4 * M)]
    mm.check()


def test_several_vmas_move_with_their_gaps(MM):
    mm = MM()
    mm.mmap(B, 2 * M, RW, ANON)
    mm.mmap(B + 3 * M, 1 * M, RW, ANON)
    mm.mmap(B + 6 * M, 2 * M, PROT_READ, ANON)
    mm.touch(B, 2 * M)
    assert mm.mremap(B, 8 * M, 8 * M, MOVE, B + G) == B + G
    assert vmas(mm) == [(G, G + 2 * M), (G + 3 * M, G + 4 * M), (G + 6 * M, G + 8 * M)]
    # Starting inside a VMA is fine; starting in a hole is EFAULT.
    assert mm.mremap(B + G + 1 * M, 8 * M, 8 * M, MOVE, B + 2 * G) == B + 2 * G
    assert vmas(mm) == [(G, G + 1 * M), (2 * G, 2 * G + 1 * M), (2 * G + 2 * M, 2 * G + 3 * M),
                        (2 * G + 5 * M, 2 * G + 7 * M)]
    before = snapshot(mm)
    with pytest.raises(OSError) as info:
        mm.mremap(B + G + 1 * M, 4 * M, 4 * M, MOVE, B + 3 * G)
    assert info.value.errno == errno.EFAULT
    assert snapshot(mm) == before
    assert mm.status()["RssAnon"] == 2048
    mm.check()


def test_unfaulted_vma_merges_where_it_lands(MM):
    mm = MM()
    mm.mmap(B, 2 * M, RW, ANON)
    mm.mmap(B + 4 * M, 2 * M, RW, ANON)
    mm.mremap(B + 4 * M, 2 * M, 2 * M, MOVE, B + 2 * M)
    assert vmas(mm) == [(0, 4 * M)]
    # A faulted one keeps its page offset: no merge at the new place.
    mm.mmap(B + G, 2 * M, RW, ANON)
    mm.mmap(B + G + 4 * M, 2 * M, RW, ANON)
    mm.touch(B + G + 4 * M, 4 * K)
    mm.mremap(B + G + 4 * M, 2 * M, 2 * M, MOVE, B + G + 2 * M)
    assert vmas(mm)[1:] == [(G, G + 2 * M), (G + 2 * M, G + 4 * M)]
    mm.check()


def test_move_back_merges_only_outside_a_forked_child(MM):
    """copy_vma(): a faulted VMA moved back next to where it came from merges with a
    neighbour without an anon_vma, except in a fork child (its anon_vma came from fork)."""
    for forked in (False, True):
        mm = MM()
        mm.mmap(B, 1 * M, RW, ANON)
        mm.touch(B, 4 * K)
        mm.mremap(B, 1 * M, 1 * M, MOVE, B + G)
        mm.mmap(B + 1 * M, 3 * M, RW, ANON)
        if forked:
            if not hasattr(mm, "fork"):
                continue
            mm = mm.fork()
        mm.mremap(B + G, 1 * M, 1 * M, MOVE, B)
        assert vmas(mm) == ([(0, 1 * M), (1 * M, 4 * M)] if forked else [(0, 4 * M)])
        mm.check()


def test_dontunmap_leaves_the_old_range_mapped_and_empty(MM, host):
    """The pages and tables move; the old VMA stays, empty, without its anon_vma (all
    of it moved) and still charged (VM_ACCOUNT, as in 6.18 since the fix of Oct 2025)."""
    mm = MM()
    mm.mmap(B, 2 * M, RW, CHARGED)
    mm.touch(B, 2 * M)
    assert mm.mremap(B, 2 * M, 2 * M, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B + G) == B + G
    st = mm.status()
    assert (st["VmSize"], st["RssAnon"], st["VmPTE"]) == (4096, 2048, 16)
    (s0, e0, f0, anon0), (s1, e1, f1, anon1) = mm.vmas()
    assert (s0, e0, s1, e1) == (B, B + 2 * M, B + G, B + G + 2 * M)
    assert not anon0 and anon1          # the whole VMA moved: the old one lost its anon_vma
    assert f0 & VM_ACCOUNT and f1 & VM_ACCOUNT
    assert list(mm.entries(B, B + 2 * M)) == []
    mm.touch(B, 4 * K)
    assert mm.status()["RssAnon"] == 2052
    mm.check()
    # The same on the host: the old range is still there, and still charged ("ac").
    assert host.call("mmap", B, 2 * M, RW, CHARGED, U64, 0) == 0
    assert host.call("mremap", B, 2 * M, 2 * M, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B + G) == 0
    assert host.last == B + G
    assert host.vmas() == [(0, 2 * M), (G, G + 2 * M)]
    assert [("ac" in f.split()) for f in host.vm_flags()] == [True, True]


def test_dontunmap_of_a_locked_vma_leaves_vmlck_counted(MM, host):
    """Measured: the old VMA loses VM_LOCKED, unsplit, and VmLck is not lowered; VmLck
    also counts the new VMA, so it grows by the length moved, and it stays counted
    after the old VMA is unmapped. The VMA boundaries this leaves mergeable stay."""
    mm = MM()
    mm.mmap(B, 4 * M, RW, ANON | MAP_LOCKED)
    mm.mmap(B + 4 * M, 2 * M, RW, ANON)
    mm.touch(B + 4 * M, 4 * K)
    assert mm.status()["VmLck"] == 4096
    mm.mremap(B, 1 * M, 1 * M, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B + G)
    assert mm.status()["VmLck"] == 5120
    flags = [f & VM_LOCKED for _, _, f, _ in mm.vmas()]
    assert flags == [0, 0, VM_LOCKED]
    assert vmas(mm) == [(0, 4 * M), (4 * M, 6 * M), (G, G + 1 * M)]   # not merged
    mm.check()
    mm.munmap(B, 6 * M)
    assert mm.status()["VmLck"] == 5120
    mm.munmap(B + G, 1 * M)
    assert mm.status()["VmLck"] == 4096
    mm.check()
    # The host keeps the two VMAs apart too.
    assert host.call("mmap", B, 4 * M, RW, ANON | MAP_LOCKED, U64, 0) == 0
    assert host.call("mmap", B + 4 * M, 2 * M, RW, ANON, U64, 0) == 0
    ctypes.c_char.from_address(B + 4 * M).value = b"\x01"
    assert host.call("mremap", B, 1 * M, 1 * M, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B + G) == 0
    assert host.vmas() == [(0, 4 * M), (4 * M, 6 * M), (G, G + 1 * M)]


def test_shmem_moves_and_faults_past_its_object_with_sigbus(MM):
    mm = MM()
    mm.mmap(B, 2 * M, RW, SHARED)
    mm.touch(B, 2 * M)
    assert mm.mremap(B, 2 * M, 2 * M, MOVE, B + G) == B + G
    assert mm.status()["RssShmem"] == 2048
    assert mm.mremap(B + G, 2 * M, 4 * M) == B + G
    before = snapshot(mm)
    with pytest.raises(BusError) as info:
        mm.touch(B + G + 2 * M + 5, 1)
    assert info.value.address == B + G + 2 * M + 5
    assert snapshot(mm) == before
    mm.touch(B + G, 2 * M, write=False)
    # DONTUNMAP: the old range faults the same pages back from the object.
    mm.mremap(B + G, 4 * M, 4 * M, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B + 2 * G)
    assert mm.status()["RssShmem"] == 2048
    mm.touch(B + G, 4 * K, write=False)
    assert mm.status()["RssShmem"] == 2048 + 64    # fault-around: 16 pages
    assert mm.machine.frames_in_use == 512
    mm.check()


def test_script_reports_sigbus(MM):
    res = S.run("mmap 0 2M rw shared\nmremap 0 2M 4M 0\ntouch 2M+4K 4K write\n", MM())
    assert [r.errno for r in res] == [0, 0, S.SIGBUS_ERRNO]
    assert res[1].ret == B and res[2].fault == B + 2 * M + 4 * K


def test_huge_pmd_moves_whole_or_is_split(MM):
    mm = MM(thp="madvise")
    if not hasattr(mm, "huge_pmds"):
        pytest.skip("this implementation has no transparent huge pages yet")
    mm.mmap(B, 4 * M, RW, ANON)
    mm.madvise(B, 4 * M, MADV_HUGEPAGE)
    mm.touch(B, 4 * M)
    heads = [e for _, e in mm.huge_pmds()]
    assert len(heads) == 2
    mm.mremap(B, 4 * M, 4 * M, MOVE, B + G)
    assert [a for a, _ in mm.huge_pmds()] == [B + G, B + G + 2 * M]
    assert [e for _, e in mm.huge_pmds()] == heads
    assert pte(mm) == 16
    # Not 2 MiB-aligned: split, and the entries move one by one.
    mm.mremap(B + G, 4 * M, 4 * M, MOVE, B + 2 * G + 1 * M)
    assert mm.huge_pmds() == []
    assert mm.stats["thp_split_pmd"] == 2
    st = mm.status()
    assert (st["RssAnon"], st["VmPTE"]) == (4096, 20)
    mm.check()
    mm.exit()
    assert mm.pgtables_bytes == 0


# --- the script operation and the runner's window ------------------------------------------

@pytest.mark.parametrize("line, op", [
    ("mremap 0 2M 4M", S.Mremap(0, 2 * M, 4 * M)),
    ("mremap 0 2M 2M maymove|fixed 1G", S.Mremap(0, 2 * M, 2 * M, MOVE, G)),
    ("MREMAP 4K 4K 8K MayMove", S.Mremap(4 * K, 4 * K, 8 * K, MREMAP_MAYMOVE)),
    ("mremap 0 4K 4K dontunmap|maymove 1G-4K", S.Mremap(0, 4 * K, 4 * K, 5, G - 4 * K)),
    ("mremap 0 4K 4K 8 -4K", S.Mremap(0, 4 * K, 4 * K, 8, -4 * K)),
    ("mremap 0 -1 4K 0x10", S.Mremap(0, U64, 4 * K, 0x10)),
])
def test_parse_mremap(line, op):
    assert S.parse_line(line) == op
    assert S.parse(S.dumps([op])) == [op]


@pytest.mark.parametrize("line, reason", [
    ("mremap 0 2M", "mremap needs ADDR OLD_LEN NEW_LEN"),
    ("mremap 0 2M 2M move", "bad FLAGS 'move'"),
    ("mremap 0 2M 2M maymove 1G 2G", "mremap needs"),
    ("mremap 0 2M 2M -1", "does not fit an unsigned long"),
])
def test_parse_mremap_errors(line, reason):
    with pytest.raises(S.ScriptError, match=reason):
        S.parse_line(line)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the host-kernel runner needs Linux")
@pytest.mark.parametrize("line", [
    "mremap 511G 2M 2M maymove|fixed -2M",       # a destination below the window
    "mremap 0 2M 2M maymove|fixed 512G",         # ... above it
    "mremap 0 2M 2M maymove|dontunmap 1T",       # a hint outside it
    "mremap 511G 2M 2G 0",                       # a growth past its end
    "mremap -4K 8K 4K 0",                        # a shrink of memory below it
])
def test_runner_refuses_mremap_outside_the_window(line):
    from ptreclaim import kernel
    with pytest.raises(S.ScriptError, match="line 2: .* reaches outside"):
        kernel.run(f"madvise 0 0 NORMAL\n{line}\n")


@pytest.mark.kernel
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the host-kernel runner needs Linux")
def test_runner_reports_a_move_out_of_the_window():
    """A growth that must move goes where the kernel chooses, outside the window: the
    counts are not the script's alone any more, so the run is an error."""
    from ptreclaim import kernel
    try:
        kernel.run("madvise 0 0 NORMAL\n")
    except kernel.WindowBusy as e:
        pytest.skip(f"the base cannot be mapped: {e}")
    with pytest.raises(kernel.KernelRunError, match="line 3: .* outside the window") as info:
        kernel.run("mmap 0 2M rw private noreserve\nmmap 2M 2M rw private noreserve\n"
                   "mremap 0 2M 4M maymove\n")
    assert len(info.value.results) == 3
