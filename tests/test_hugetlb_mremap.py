"""mremap(2) of hugetlb mappings (MAP_HUGETLB, 2 MiB pages), on both implementations
(docs/hugetlb.md, docs/mremap.md).

The expected values were measured on Linux 6.18 x86-64 with vm.nr_hugepages=16: a
C program mapped 2 MiB-aligned private and shared MAP_HUGETLB ranges at fixed
addresses in two 512 GiB slots (A and A2 below), called mremap(2) and read errno,
VmSize, VmPTE and HugetlbPages (/proc/self/status) and HugePages_Free and
HugePages_Rsvd (/proc/meminfo) after each step, and read back one byte of each huge
page to see which page sits where. Each test names its measurement ("measured: ...").
The counts are taken relative to a process without mappings. What was not measured
follows the 6.18 source (mm/mremap.c, mm/hugetlb.c) and says so.

The host test at the end makes the private cases again as real syscalls when the
host has free hugetlb pages. It never moves a shared mapping: some such moves hang
the process for good in 6.18 (see test_shared_move_that_hangs_linux_is_refused)."""

import ctypes
import errno
import sys

import pytest

from ptreclaim.constants import (
    MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_HUGETLB, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED,
    MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE, PROT_READ, PROT_WRITE,
)

from rawsys import RawSyscalls

K, M, G = 1 << 10, 1 << 20, 1 << 30
H = 2 * M
U64 = (1 << 64) - 1
A = 0x6000_0000_0000    # the measured addresses: two 512 GiB slots
A2 = 0x6400_0000_0000
RW = PROT_READ | PROT_WRITE
PRIVATE = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED_NOREPLACE
SHARED = MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED_NOREPLACE
MOVE = MREMAP_MAYMOVE | MREMAP_FIXED
POOL = 16


def state(mm):
    """(VmSize kB, VmPTE kB, HugetlbPages kB, HugePages_Free, HugePages_Rsvd)."""
    st = mm.status()
    pool = mm.machine.hugetlb_meminfo()
    return st["VmSize"], st["VmPTE"], st["HugetlbPages"], pool["HugePages_Free"], pool["HugePages_Rsvd"]


def expect(mm, *want):
    assert state(mm) == want
    mm.check()


def pages(mm):
    """{address: pool page} of every hugetlb PMD: where each page sits."""
    return {addr: entry >> 12 for addr, entry in mm.huge_pmds()}


def flags_of(shared):
    return SHARED if shared else PRIVATE


def mapped_4m(MM, shared):
    """4 MiB at A, both pages written (the start of every errno case)."""
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, 4 * M, RW, flags_of(shared))
    mm.touch(A, 4 * M)
    return mm


# --- arguments: align_hugetlb() and the checks around it -------------------------------

# Measured, each on a fresh 4 MiB mapping at A with both pages written, private and
# shared alike; the unaligned new addresses without MREMAP_FIXED were measured with the
# raw syscall (glibc's mremap() passes no new address then). Success leaves the
# mapping as it was: each is a no-op.
ERRNO_CASES = [
    ((A + 4 * K, H, H, MOVE, A2), errno.EINVAL),                       # unaligned old address
    ((A + M, M, M // 2, 0, 0), errno.EINVAL),                           # ... even for a shrink
    ((A + M, M, M, 0, 0), errno.EINVAL),                                # ... even for a no-op
    ((A, 4 * M, 4 * M, MOVE, A2 + 4 * K), errno.EINVAL),                # unaligned new address
    ((A, 4 * M, 6 * M, 0, 0), errno.EINVAL),                            # growth
    ((A, 4 * M, 6 * M, MREMAP_MAYMOVE, 0), errno.EINVAL),
    ((A, 4 * M, 4 * M + 4 * K, 0, 0), errno.EINVAL),                    # rounded up: growth
    ((A, H, 2 * H, MREMAP_MAYMOVE, 0), errno.EINVAL),
    ((A, H, H + 4 * K, 0, 0), errno.EINVAL),
    ((A, 4 * M, 4 * M, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, A2), errno.EINVAL),
    ((A, 4 * M, 4 * M, MOVE | MREMAP_DONTUNMAP, A2), errno.EINVAL),
    ((A, 4 * M, 4 * M, MOVE, A + H), errno.EINVAL),                     # overlap
    ((A, 0, 4 * M, MREMAP_MAYMOVE, 0), errno.EINVAL),                   # old_len 0: growth
    ((A, 0, 4 * M, MOVE, A2), errno.EINVAL),
    ((A, 4 * M, 4 * M, 0, A2 + 4 * K), errno.EINVAL),                   # checked even without flags
    ((A, 4 * M, H, 0, A2 + 4 * K), errno.EINVAL),
    ((A, 4 * M, H, MREMAP_MAYMOVE, A2 + 4 * K), errno.EINVAL),
    ((A, 4 * M - 4 * K, 4 * M, 0, 0), 0),                               # both round to 4 MiB
    ((A, H + 4 * K, 4 * M, 0, 0), 0),
    ((A, 6 * M, 6 * M, 0, 0), 0),                                       # past the VMA's end
    ((A, 6 * M, 4 * M, 0, 0), 0),                                       # unmaps [A+4M, A+6M): nothing
    ((A, 4 * M, 4 * M, MREMAP_MAYMOVE, 0), 0),
]


def _id(case):
    args, err = case
    return f"{tuple(hex(a) if a > 4096 else a for a in args)}->{errno.errorcode.get(err, err)}"


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
@pytest.mark.parametrize("case", ERRNO_CASES, ids=[_id(c) for c in ERRNO_CASES])
def test_errno_and_no_ops(MM, case, shared):
    args, expected = case
    mm = mapped_4m(MM, shared)
    before = (mm.status(), mm.vmas(), pages(mm), mm.machine.hugetlb_meminfo())
    try:
        got, ret = 0, mm.mremap(*args)
    except OSError as e:
        got, ret = e.errno, None
    assert got == expected
    if not expected:
        assert ret == A
    assert (mm.status(), mm.vmas(), pages(mm), mm.machine.hugetlb_meminfo()) == before
    mm.check()


# --- shrink in place ----------------------------------------------------------------------

@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_shrink_rounds_the_new_length_up(MM, shared):
    """Measured: 6 MiB, two pages written, then 6M -> 2M+4K (rounded to 4 MiB) and
    4M -> 2M. A private mapping gives back the reservation and the page of what it
    unmaps; a shared one's file keeps both while a VMA maps it."""
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, 6 * M, RW, flags_of(shared))
    mm.touch(A, 4 * M)
    expect(mm, 6144, 8, 4096, 14, 1)
    assert mm.mremap(A, 6 * M, H + 4 * K) == A
    expect(mm, 4096, 8, 4096, 14, 1 if shared else 0)
    assert mm.mremap(A, 4 * M, H) == A
    expect(mm, 2048, 8, 2048, 14 if shared else 15, 1 if shared else 0)
    mm.munmap(A, 6 * M)
    expect(mm, 0, 0, 0, POOL, 0)


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_shrink_past_the_end_unmaps_the_tail(MM, shared):
    # Measured: a 4 MiB VMA, (A, 6M, 2M, 0, 0): [A+2M, A+6M) is unmapped.
    mm = mapped_4m(MM, shared)
    assert mm.mremap(A, 6 * M, H) == A
    expect(mm, 2048, 8, 2048, 14 if shared else 15, 0)


# --- moves ----------------------------------------------------------------------------

@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_move_to_another_slot_keeps_pages_and_reservations(MM, shared):
    """Measured: 4 MiB at A, one page written, moved to A2 (another 512 GiB slot).
    The PUD and PMD tables at A2 are made (+8 kB) and those at A freed (-8 kB); the
    page moves; the reservation of the other page moves with the mapping and a
    fault at A2 + 2M uses it."""
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, 4 * M, RW, flags_of(shared))
    mm.touch(A, 1)
    expect(mm, 4096, 8, 2048, 15, 1)
    before = pages(mm)
    flushes = mm.stats["tlb_flushes"]
    assert mm.mremap(A, 4 * M, 4 * M, MOVE, A2) == A2
    expect(mm, 4096, 8, 2048, 15, 1)
    assert pages(mm) == {A2: before[A]}
    assert mm.tables() == [("pud", A2), ("pmd", A2)]
    assert [(s, e) for s, e, _, _ in mm.vmas()] == [(A2, A2 + 4 * M)]
    # flush_hugetlb_tlb_range() after the move, then the unmap of the old range,
    # whose gather frees the tables there.
    assert mm.stats["tlb_flushes"] == flushes + 2
    mm.touch(A2 + H, 1)
    expect(mm, 4096, 8, 4096, 14, 0)
    mm.munmap(A2, 4 * M)
    expect(mm, 0, 0, 0, POOL, 0)


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_move_within_the_same_gib(MM, shared):
    # Measured: A -> A + 512M, both pages written: same PMD table, VmPTE unchanged.
    mm = mapped_4m(MM, shared)
    before = pages(mm)
    assert mm.mremap(A, 4 * M, 4 * M, MOVE, A + 512 * M) == A + 512 * M
    expect(mm, 4096, 8, 4096, 14, 0)
    assert pages(mm) == {A + 512 * M: before[A], A + 512 * M + H: before[A + H]}


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_move_rounds_the_lengths_up(MM, shared):
    # Measured: (A, 4M-4K, 4M-4K, MOVE, A2) moves both pages.
    mm = mapped_4m(MM, shared)
    before = pages(mm)
    assert mm.mremap(A, 4 * M - 4 * K, 4 * M - 4 * K, MOVE, A2) == A2
    expect(mm, 4096, 8, 4096, 14, 0)
    assert pages(mm) == {A2: before[A], A2 + H: before[A + H]}


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_shrink_and_move(MM, shared):
    """Measured: 6 MiB, three pages written, (A, 6M, 2M, MOVE, A2): the tail goes
    first (a shared file keeps its pages while a VMA maps it), then 2 MiB moves."""
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, 6 * M, RW, flags_of(shared))
    mm.touch(A, 6 * M)
    expect(mm, 6144, 8, 6144, 13, 0)
    first = pages(mm)[A]
    assert mm.mremap(A, 6 * M, H, MOVE, A2) == A2
    expect(mm, 2048, 8, 2048, 13 if shared else 15, 0)
    assert pages(mm) == {A2: first}


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_partial_move_of_the_middle(MM, shared):
    """Measured: 6 MiB, three pages written, its middle 2 MiB moved to A2: A keeps its
    tables, A2 gets a PUD and a PMD table (+8 kB)."""
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, 6 * M, RW, flags_of(shared))
    mm.touch(A, 6 * M)
    before = pages(mm)
    assert mm.mremap(A + H, H, H, MOVE, A2) == A2
    expect(mm, 6144, 16, 6144, 13, 0)
    assert pages(mm) == {A: before[A], A + 2 * H: before[A + 2 * H], A2: before[A + H]}
    mm.munmap(A, 6 * M)
    mm.munmap(A2, H)
    expect(mm, 0, 0, 0, POOL, 0)


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_several_vmas_move_with_their_gap(MM, shared):
    # Measured: 2 MiB at A and at A+4M, both written, (A, 6M, 6M, MOVE, A2).
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, H, RW, flags_of(shared))
    mm.mmap(A + 2 * H, H, RW, flags_of(shared))
    mm.touch(A, H)
    mm.touch(A + 2 * H, H)
    before = pages(mm)
    assert mm.mremap(A, 6 * M, 6 * M, MOVE, A2) == A2
    expect(mm, 4096, 8, 4096, 14, 0)
    assert pages(mm) == {A2: before[A], A2 + 2 * H: before[A + 2 * H]}


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_fixed_move_of_unchanged_size_may_end_in_a_hole(MM, shared):
    # Measured: a 4 MiB VMA, (A, 8M, 8M, MOVE, A2) moves it.
    mm = mapped_4m(MM, shared)
    assert mm.mremap(A, 8 * M, 8 * M, MOVE, A2) == A2
    expect(mm, 4096, 8, 4096, 14, 0)


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_unfaulted_move_makes_no_table(MM, shared):
    """Measured: 4 MiB never touched (two reservations), moved to A2: no table at
    all; a fault at A2 then makes the PUD and PMD tables and uses a reservation."""
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, 4 * M, RW, flags_of(shared))
    expect(mm, 4096, 0, 0, POOL, 2)
    assert mm.mremap(A, 4 * M, 4 * M, MOVE, A2) == A2
    expect(mm, 4096, 0, 0, POOL, 2)
    mm.touch(A2, 1)
    expect(mm, 4096, 8, 2048, 15, 1)
    mm.munmap(A2, 4 * M)
    expect(mm, 0, 0, 0, POOL, 0)


@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared"])
def test_fixed_move_over_a_mapping_unmaps_what_it_covers(MM, shared):
    """Measured: 2 MiB at A (written) moved over the first half of 4 MiB at A2 (both
    written). The page it covers is freed, unless (shared) its file is still mapped."""
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, H, RW, flags_of(shared))
    mm.touch(A, H)
    mm.mmap(A2, 4 * M, RW, flags_of(shared))
    mm.touch(A2, 4 * M)
    expect(mm, 6144, 16, 6144, 13, 0)
    before = pages(mm)
    assert mm.mremap(A, H, H, MOVE, A2) == A2
    expect(mm, 4096, 8, 4096, 13 if shared else 14, 0)
    assert pages(mm) == {A2: before[A], A2 + H: before[A2 + H]}


def test_walk_over_a_missing_pmd_table_shifts_the_pages(MM):
    """Measured: MAP_NORESERVE 2 GiB at A (1 GiB-aligned), only A + 1G written, moved
    to A2 + 512M. No PMD table covers [A, A+1G), so the walk skips to A + 1G and moves
    the new address to the next 1 GiB boundary too, A2 + 1G, not A2 + 512M + 1G: the
    page lands 512 MiB lower in the new mapping, and a read of A2 + 512M + 1G finds no
    page there (it faults a new one in)."""
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, 2 * G, RW, PRIVATE | MAP_NORESERVE)
    mm.touch(A + G, 1)
    page = pages(mm)[A + G]
    expect(mm, 2 * G // K, 8, 2048, 15, 0)
    assert mm.mremap(A, 2 * G, 2 * G, MOVE, A2 + 512 * M) == A2 + 512 * M
    expect(mm, 2 * G // K, 8, 2048, 15, 0)
    assert pages(mm) == {A2 + G: page}
    mm.touch(A2 + 512 * M + G, 1, write=False)
    expect(mm, 2 * G // K, 8, 4096, 14, 0)


def test_shared_move_that_hangs_linux_is_refused(MM):
    """Measured: the same move of a shared mapping never returned: the process hung in
    huge_pmd_share(), called by huge_pte_alloc() from move_hugetlb_page_tables(),
    which waits for the i_mmap_rwsem that the move holds. Not simulated: it raises
    NotImplementedError and changes nothing."""
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, 2 * G, RW, SHARED | MAP_NORESERVE)
    mm.touch(A + G, 1)
    before = (mm.status(), mm.vmas(), pages(mm), mm.machine.hugetlb_meminfo())
    with pytest.raises(NotImplementedError):
        mm.mremap(A, 2 * G, 2 * G, MOVE, A2 + 512 * M)
    assert (mm.status(), mm.vmas(), pages(mm), mm.machine.hugetlb_meminfo()) == before
    mm.check()
    # The private mapping makes the same move (test_walk_over_a_missing_pmd_table_...).


def test_partial_move_leaves_the_rest_without_reservations(MM):
    """Not measured (it would leak the host's reservations): 6.18's copy_vma_and_data()
    calls clear_vma_resv_huge_pages() on the whole old VMA, so a private mapping whose
    middle moves hands its reserve map to the copy, and the parts left behind own no
    reservation. Their unconsumed reservations are never given back: HugePages_Rsvd
    keeps them after everything is unmapped."""
    mm = MM(hugetlb_pages=POOL)
    mm.mmap(A, 6 * M, RW, PRIVATE)
    expect(mm, 6144, 0, 0, POOL, 3)
    assert mm.mremap(A + H, H, H, MOVE, A2) == A2
    expect(mm, 6144, 0, 0, POOL, 3)
    # The copy uses its reservation; a part left behind needs an unreserved page.
    mm.touch(A2, 1)
    expect(mm, 6144, 8, 2048, POOL - 1, 2)
    mm.touch(A, 1)
    expect(mm, 6144, 16, 4096, POOL - 2, 2)
    mm.munmap(A, 6 * M)
    mm.munmap(A2, H)
    expect(mm, 0, 0, 0, POOL, 2)


# --- the host kernel ----------------------------------------------------------------



def _host_pool():
    """(vm.nr_hugepages, free hugetlb pages no one has reserved) of the host."""
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith("HugePages_")}
    try:
        with open("/proc/sys/vm/nr_hugepages") as f:
            nr = int(f.read())
    except OSError:
        nr = info.get("HugePages_Total", 0)
    return nr, info.get("HugePages_Free", 0) - info.get("HugePages_Rsvd", 0)


class Host(RawSyscalls):
    """Raw syscalls in this process, at A and A2."""

    @staticmethod
    def counts():
        """(VmSize, VmPTE, HugetlbPages) of this process, in kB."""
        with open("/proc/self/status") as f:
            st = {line.split(":")[0]: int(line.split()[1]) for line in f
                  if line.startswith(("VmSize", "VmPTE", "HugetlbPages"))}
        return st["VmSize"], st["VmPTE"], st["HugetlbPages"]

    @staticmethod
    def vmas():
        out = []
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo < A2 + (512 << 30) and hi > A:
                    out.append((lo, hi))
        return out

    @staticmethod
    def write(addr, value):
        ctypes.c_char.from_address(addr).value = value

    @staticmethod
    def read(addr):
        return ctypes.c_char.from_address(addr).value


@pytest.fixture
def host():
    if not sys.platform.startswith("linux"):
        pytest.skip("the host is not Linux: no kernel to compare with")
    nr, free = _host_pool()
    if free < 4:
        pytest.skip(f"no free hugetlb pages: vm.nr_hugepages is {nr}" if nr == 0 else
                    f"too few free hugetlb pages: {free} unreserved of vm.nr_hugepages={nr}, 4 needed")
    h = Host()
    if h.vmas():
        pytest.skip("the host process already has a mapping between 0x600000000000 and 0x648000000000")
    yield h
    h.call("munmap", A, 512 << 30)
    h.call("munmap", A2, 512 << 30)


@pytest.mark.parametrize("case", ERRNO_CASES, ids=[_id(c) for c in ERRNO_CASES])
def test_private_errno_matches_host_kernel(MM, host, case):
    args, expected = case
    assert host.call("mmap", A, 4 * M, RW, PRIVATE, U64, 0) == 0
    host.write(A, b"a")
    host.write(A + H, b"b")
    assert host.call("mremap", *args) == expected, "the expectation disagrees with this kernel"
    mm = mapped_4m(MM, False)
    try:
        got = 0
        mm.mremap(*args)
    except OSError as e:
        got = e.errno
    assert got == expected


def test_private_moves_match_host_kernel(MM, host):
    """The same calls on the kernel and the model: the result or errno, the change
    of VmPTE and HugetlbPages each call makes, and which page ends up where (each
    page holds its own letter on the host)."""
    mm = MM(hugetlb_pages=POOL)
    assert host.call("mmap", A, 6 * M, RW, PRIVATE, U64, 0) == 0
    mm.mmap(A, 6 * M, RW, PRIVATE)
    for i in range(3):
        host.write(A + i * H, bytes([ord("a") + i]))
        mm.touch(A + i * H, 1)
    letter = {pages(mm)[A + i * H]: bytes([ord("a") + i]) for i in range(3)}

    def both(*args):
        before = host.counts()
        err = host.call("mremap", *args)
        after = host.counts()
        old = state(mm)
        try:
            got = mm.mremap(*args)
        except OSError as e:
            got = e.errno
        assert got == (err or host.last)
        new = state(mm)
        assert (after[1] - before[1], after[2] - before[2]) == (new[1] - old[1], new[2] - old[2])

    both(A + H, H, H, MOVE, A2)                  # the middle page goes to A2
    both(A, H, H, MOVE, A2 + 512 * M)            # the first next to it, same GiB
    both(A2, 4 * M, 4 * M, MOVE, A)              # A2's VMA back to A; the range ends in a hole
    both(A + 2 * H, H, H // 2, 0, 0)             # rounded up to 2 MiB: a no-op
    both(A2 + 512 * M, H, 4 * M, MREMAP_MAYMOVE, 0)   # growth: EINVAL
    where = pages(mm)
    assert sorted(where) == [A, A + 2 * H, A2 + 512 * M]
    for addr, page in where.items():
        assert host.read(addr) == letter[page]
