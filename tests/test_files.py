"""File-backed mappings (docs: the files spec; linux-mm-semantics R28-R31, R36-R42, SC-17,
SC-18, SC-19, SC-38), against both implementations.

Expected counts come from §14 and from the host-kernel runs of the same operations in
tests/data/scenarios/file-*.txt (ext4, Linux 6.18); rules without a measurement cite the
kernel function they follow.
"""

import errno

import pytest

from ptreclaim.constants import (
    MADV_COLD, MADV_COLLAPSE, MADV_DONTNEED, MADV_FREE, MADV_PAGEOUT, MADV_POPULATE_READ,
    MADV_POPULATE_WRITE, MADV_REMOVE, MADV_WILLNEED,
    MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HUGETLB, MAP_POPULATE, MAP_PRIVATE,
    MAP_SHARED, MAP_SHARED_VALIDATE, MAP_SYNC, MREMAP_FIXED, MREMAP_MAYMOVE, PROT_READ,
    PROT_WRITE, PTE_PFN_MASK, VM_ACCOUNT, VM_MAYSHARE, VM_MAYWRITE, VM_SHARED, _PAGE_DIRTY,
    _PAGE_PRESENT, _PAGE_RW,
)
from ptreclaim.errors import BusError, OutOfMemory, SegmentationFault

K = 1024
M = 1024 * K
G = 1024 * M
B = 0x2000_0000_0000  # 512 GiB-aligned, in an empty slot (§14)
RW = PROT_READ | PROT_WRITE
SHARED = MAP_SHARED | MAP_FIXED_NOREPLACE
PRIVATE = MAP_PRIVATE | MAP_FIXED_NOREPLACE


def counts(mm):
    st = mm.status()
    return st["VmPTE"], st["RssAnon"], st["RssFile"], st["RssShmem"]


class Tracker:
    """Deltas of (VmPTE, RssAnon, RssFile, RssShmem) in kB, operation by operation."""

    def __init__(self, mm):
        self.mm = mm
        self.last = counts(mm)

    def __call__(self):
        now = counts(self.mm)
        delta = tuple(a - b for a, b in zip(now, self.last))
        self.last = now
        self.mm.check()
        return delta


def new(impl, size, **kw):
    """A process with a file of ``size`` bytes open O_RDWR (``write=False``: O_RDONLY)."""
    write = kw.pop("write", True)
    machine = impl.Machine(**kw.pop("machine", {}))
    mm = impl.MM(machine=machine)
    f = machine.create_file(size, **kw)
    return mm, f, mm.open(f, write=write)


def vma_flags(mm, addr):
    (flags,) = [fl for start, end, fl, _ in mm.vmas() if start <= addr < end]
    return flags


# ------------------------------------------------------------------ the File object


def test_create_file_attributes(impl):
    machine = impl.Machine()
    f = machine.create_file(20 * K + 100)
    assert (f.size, f.shmem, f.nr_cached, f.nr_dirty) == (20 * K + 100, False, 6, 0)
    # The page cache is made of the machine's frames.
    assert machine.frames_in_use == 6
    g = machine.create_file(64 * K, shmem=True)
    assert (g.shmem, g.nr_cached, g.nr_dirty) == (True, 16, 0)
    h = machine.create_file(64 * K, cached=False)
    u = machine.create_file(64 * K, shmem=True, cached=False)
    assert (h.nr_cached, u.nr_cached) == (0, 0)
    assert machine.frames_in_use == 22
    assert machine.create_file(0).nr_cached == 0


def test_create_file_argument_types(impl):
    machine = impl.Machine()
    with pytest.raises(TypeError):
        machine.create_file(4096.0)
    with pytest.raises(OverflowError):
        machine.create_file(-1)


def test_create_file_out_of_frames(impl):
    machine = impl.Machine(max_frames=4)
    with pytest.raises(OutOfMemory):
        machine.create_file(5 * 4096)
    assert machine.frames_in_use == 0
    f = machine.create_file(4 * 4096)
    assert f.nr_cached == 4 and machine.frames_in_use == 4


def test_file_lifetime(impl):
    """The page cache lives while the file is open, mapped, or referenced."""
    mm, f, fd = new(impl, 64 * K)
    machine = mm.machine
    mm.mmap(B, 64 * K, RW, SHARED, fd, 0)
    mm.close(fd)
    del f
    # The mapping keeps the file alive after close.
    mm.touch(B, 1, write=False)
    assert counts(mm)[2] == 64
    assert machine.frames_in_use == 16
    mm.munmap(B, 64 * K)
    assert machine.frames_in_use == 0
    mm.check()


def test_cache_survives_munmap_and_exit(impl):
    mm, f, fd = new(impl, 2 * M)
    mm.mmap(B, 2 * M, RW, SHARED, fd, 0)
    mm.touch(B, 8 * K)
    assert (f.nr_cached, f.nr_dirty) == (512, 2)
    mm.munmap(B, 2 * M)
    assert (f.nr_cached, f.nr_dirty) == (512, 2)
    mm.exit()
    mm.check()
    assert f.nr_cached == 512 and mm.machine.frames_in_use == 512


# ------------------------------------------------------------------ the fd table


def test_open_close(impl):
    machine = impl.Machine()
    mm = impl.MM(machine=machine)
    f = machine.create_file(4096)
    assert [mm.open(f), mm.open(f, write=False), mm.open(f)] == [3, 4, 5]
    mm.close(4)
    assert mm.open(f) == 4  # the lowest free number
    with pytest.raises(OSError) as e:
        mm.close(9)
    assert e.value.errno == errno.EBADF
    mm.close(3)
    with pytest.raises(OSError) as e:
        mm.close(3)
    assert e.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        mm.open(4096)
    mm.check()


def test_fork_copies_fd_table(impl):
    mm, f, fd = new(impl, 64 * K)
    child = mm.fork()
    mm.close(fd)
    # The child has the file open under the same number.
    assert child.mmap(B, 64 * K, PROT_READ, SHARED, fd, 0) == B
    child.touch(B, 1, write=False)
    assert counts(child)[2] == 64
    with pytest.raises(OSError) as e:
        mm.mmap(B, 64 * K, PROT_READ, SHARED, fd, 0)
    assert e.value.errno == errno.EBADF
    child.exit()
    mm.check()


# ------------------------------------------------------------------ mmap


def test_mmap_errors(impl):
    """do_mmap()'s checks (file-errno.txt on the host kernel)."""
    mm, f, fd = new(impl, 64 * K, write=False)
    cases = [
        (dict(fd=fd + 1), errno.EBADF),                       # nothing open there
        (dict(offset=100), errno.EINVAL),                     # not page-aligned
        (dict(offset=0x7FFFFFFFFFFFF000), errno.EOVERFLOW),   # file_mmap_ok()
        (dict(offset=(1 << 64) - 4096), errno.EOVERFLOW),
        (dict(length=0), errno.EINVAL),
        (dict(prot=RW), errno.EACCES),                        # shared writable, O_RDONLY fd
        (dict(flags=SHARED | MAP_HUGETLB), errno.EINVAL),     # not a hugetlbfs file
        (dict(flags=MAP_SHARED_VALIDATE | MAP_SYNC), errno.EOPNOTSUPP),
    ]
    for kw, code in cases:
        args = dict(addr=B, length=64 * K, prot=PROT_READ, flags=SHARED, fd=fd, offset=0)
        args.update(kw)
        with pytest.raises(OSError) as e:
            mm.mmap(args["addr"], args["length"], args["prot"], args["flags"], args["fd"], args["offset"])
        assert e.value.errno == code, kw
    assert mm.vmas() == []
    # Without MAP_ANONYMOUS and with a negative fd: EBADF.
    with pytest.raises(OSError) as e:
        mm.mmap(B, 4096, PROT_READ, MAP_PRIVATE, -1, 0)
    assert e.value.errno == errno.EBADF
    mm.check()


def test_readonly_fd_shared_mapping(impl):
    """A MAP_SHARED mapping of an O_RDONLY fd loses VM_MAYWRITE and VM_SHARED and keeps
    VM_MAYSHARE: mprotect(PROT_WRITE) fails with EACCES; a private one may become writable."""
    mm, f, fd = new(impl, 64 * K, write=False)
    mm.mmap(B, 64 * K, PROT_READ, SHARED, fd, 0)
    flags = vma_flags(mm, B)
    assert flags & VM_MAYSHARE and not flags & (VM_SHARED | VM_MAYWRITE)
    with pytest.raises(OSError) as e:
        mm.mprotect(B, 64 * K, RW)
    assert e.value.errno == errno.EACCES
    mm.mmap(B + 2 * M, 64 * K, RW, PRIVATE, fd, 0)
    mm.mprotect(B + 2 * M, 64 * K, PROT_READ)
    mm.mprotect(B + 2 * M, 64 * K, RW)
    # A read-only shared mapping can still be read.
    mm.touch(B, 1, write=False)
    assert counts(mm)[2] == 64
    mm.check()


def test_mmap_accounting(impl):
    """accountable_mapping(): private writable file mappings are charged, shared ones not."""
    mm, f, fd = new(impl, 4 * M)
    mm.mmap(B, 64 * K, RW, PRIVATE, fd, 0)
    mm.mmap(B + 2 * M, 64 * K, PROT_READ, PRIVATE, fd, 0)
    mm.mmap(B + 4 * M, 64 * K, RW, SHARED, fd, 0)
    assert vma_flags(mm, B) & VM_ACCOUNT
    assert not vma_flags(mm, B + 2 * M) & VM_ACCOUNT
    assert not vma_flags(mm, B + 4 * M) & VM_ACCOUNT
    assert vma_flags(mm, B + 4 * M) & VM_SHARED


def test_mmap_past_eof_allowed(impl):
    mm, f, fd = new(impl, 8 * K)
    assert mm.mmap(B, 1 * M, PROT_READ, SHARED, fd, 1 * G) == B
    mm.check()


def test_kernel_chosen_address_follows_file_offset(impl):
    """thp_get_unmapped_area(): a disk file's mapping that holds an aligned 2 MiB of the file
    is placed so that the address and the file offset agree modulo 2 MiB."""
    mm, f, fd = new(impl, 8 * M)
    a = mm.mmap(0, 4 * M, PROT_READ, MAP_SHARED, fd, 0)
    assert a % (2 * M) == 0
    b = mm.mmap(0, 4 * M, PROT_READ, MAP_PRIVATE, fd, 4 * K)
    assert b % (2 * M) == 4 * K
    c = mm.mmap(0, 4 * M + 8 * K, PROT_READ, MAP_SHARED, fd, 2 * M - 8 * K)
    assert c % (2 * M) == 2 * M - 8 * K
    mm.check()


def test_vma_merge(impl):
    """Same file, contiguous offsets and the same flags merge; anything else does not."""
    machine = impl.Machine()
    mm = impl.MM(machine=machine)
    f = machine.create_file(4 * M)
    g = machine.create_file(4 * M)
    fd, gd = mm.open(f), mm.open(g)
    mm.mmap(B, 64 * K, RW, SHARED, fd, 0)
    mm.mmap(B + 64 * K, 64 * K, RW, SHARED, fd, 64 * K)
    assert [(s, e) for s, e, _, _ in mm.vmas()] == [(B, B + 128 * K)]
    # Not contiguous in the file, another file, another mapping type: three more VMAs.
    mm.mmap(B + 128 * K, 64 * K, RW, SHARED, fd, 1 * M)
    mm.mmap(B + 192 * K, 64 * K, RW, SHARED, gd, 256 * K)
    mm.mmap(B + 256 * K, 64 * K, RW, PRIVATE, gd, 320 * K)
    assert len(mm.vmas()) == 4
    # Filling the gap in front of a VMA at the right offset merges both sides.
    mm.munmap(B + 64 * K, 64 * K)
    mm.mmap(B + 64 * K, 64 * K, RW, SHARED, fd, 64 * K)
    assert len(mm.vmas()) == 4
    mm.check()


# ------------------------------------------------------------------ faults


def test_fault_around_window(impl):
    """R29: 16 PTEs aligned on the virtual address, clipped to the VMA, the PTE table and
    EOF (file-faultaround.txt)."""
    mm, f, fd = new(impl, 4 * M)
    d = Tracker(mm)
    mm.mmap(B + 8 * K, 40 * K, PROT_READ, SHARED, fd, 0)
    mm.touch(B + 8 * K, 1, write=False)
    assert d() == (12, 0, 40, 0)
    mm.mmap(B + 2 * M - 32 * K, 64 * K, PROT_READ, SHARED, fd, 1 * M)
    mm.touch(B + 2 * M - 4 * K, 1, write=False)
    assert d() == (0, 0, 32, 0)
    mm.touch(B + 2 * M, 1, write=False)
    assert d() == (4, 0, 32, 0)
    # The window follows the address, not the file offset.
    mm.mmap(B + G, 64 * K, PROT_READ, SHARED, fd, 4 * K)
    mm.touch(B + G + 60 * K, 1, write=False)
    assert d() == (8, 0, 64, 0)
    # Pages already mapped are skipped.
    mm.mmap(B + 2 * G, 128 * K, PROT_READ, SHARED, fd, 0)
    mm.touch(B + 2 * G + 64 * K, 1, write=False)
    assert d() == (8, 0, 64, 0)
    mm.touch(B + 2 * G, 4 * K, write=False)
    assert d() == (0, 0, 64, 0)


def test_fault_around_maps_cached_pages_only(impl):
    """filemap_map_pages() maps what the cache holds; the faulting page is then read in
    alone (no readahead is simulated)."""
    mm, f, fd = new(impl, 2 * M, cached=False)
    d = Tracker(mm)
    mm.mmap(B, 2 * M, PROT_READ, SHARED, fd, 0)
    mm.touch(B + 8 * K, 1, write=False)
    assert d() == (12, 0, 4, 0)
    assert f.nr_cached == 1
    mm.madvise(B, 2 * M, MADV_WILLNEED)
    assert d() == (0, 0, 0, 0) and f.nr_cached == 512
    mm.touch(B + 100 * K, 1, write=False)
    assert d() == (0, 0, 64, 0)


def test_sigbus_past_eof(impl):
    """An access at or past ceil(size/4096) pages raises SIGBUS after the pages before it;
    the tables the fault allocated stay (file-sigbus.txt)."""
    mm, f, fd = new(impl, 8 * K)
    d = Tracker(mm)
    mm.mmap(B, 16 * K, RW, SHARED, fd, 0)
    with pytest.raises(BusError) as e:
        mm.touch(B, 16 * K, write=True)
    assert e.value.address == B + 8 * K
    assert d() == (12, 0, 8, 0)
    mm.mmap(B + M, 16 * K, RW, PRIVATE, fd, 0)
    with pytest.raises(BusError):
        mm.touch(B + M, 16 * K, write=False)
    assert d() == (0, 0, 8, 0)
    with pytest.raises(BusError):
        mm.touch(B + M, 16 * K, write=True)
    assert d() == (0, 8, -8, 0)
    # An offset far past EOF: the PUD/PMD walk allocates, then SIGBUS.
    mm.mmap(B + G, 64 * K, PROT_READ, SHARED, fd, G)
    with pytest.raises(BusError):
        mm.touch(B + G, 1, write=False)
    assert d() == (4, 0, 0, 0)


def test_sigbus_after_mremap_growth(impl):
    mm, f, fd = new(impl, 8 * K)
    d = Tracker(mm)
    mm.mmap(B, 8 * K, RW, SHARED, fd, 0)
    mm.touch(B, 8 * K)
    assert d() == (12, 0, 8, 0)
    assert mm.mremap(B, 8 * K, 16 * K) == B
    with pytest.raises(BusError):
        mm.touch(B + 8 * K, 1)
    mm.touch(B + 4 * K, 1, write=False)
    assert d() == (0, 0, 0, 0)


def test_shared_write_fault(impl):
    """R30: one page, writable and dirty, no fault-around; the page is dirty in the cache."""
    mm, f, fd = new(impl, 2 * M)
    d = Tracker(mm)
    mm.mmap(B, 2 * M, RW, SHARED, fd, 0)
    mm.touch(B + M, 1, write=True)
    assert d() == (12, 0, 4, 0)
    assert f.nr_dirty == 1
    pte = mm.read_entry(B + M)
    assert pte & (_PAGE_PRESENT | _PAGE_RW | _PAGE_DIRTY) == _PAGE_PRESENT | _PAGE_RW | _PAGE_DIRTY


def test_shared_read_then_write(impl):
    """A disk file wants write notification (vma_wants_writenotify()): read faults map it
    read-only; the first store goes through do_wp_page()/wp_page_shared() and makes the PTE
    writable and the page dirty, with no RSS change. shmem maps read faults writable."""
    mm, f, fd = new(impl, 2 * M)
    d = Tracker(mm)
    mm.mmap(B, 2 * M, RW, SHARED, fd, 0)
    mm.touch(B, 1, write=False)
    assert d() == (12, 0, 64, 0)
    assert not mm.read_entry(B) & _PAGE_RW
    pfn = mm.read_entry(B) & PTE_PFN_MASK
    mm.touch(B, 1, write=True)
    assert d() == (0, 0, 0, 0)
    pte = mm.read_entry(B)
    assert pte & _PAGE_RW and pte & _PAGE_DIRTY and pte & PTE_PFN_MASK == pfn
    assert f.nr_dirty == 1
    s = mm.machine.create_file(2 * M, shmem=True)
    sd = mm.open(s)
    mm.mmap(B + G, 2 * M, RW, SHARED, sd, 0)
    mm.touch(B + G, 1, write=False)
    assert d() == (8, 0, 0, 64)
    assert mm.read_entry(B + G) & _PAGE_RW


def test_mprotect_shared_file(impl):
    """change_pte_range() on a write-notify mapping makes only dirty PTEs writable
    (can_change_shared_pte_writable())."""
    mm, f, fd = new(impl, 2 * M)
    mm.mmap(B, 2 * M, RW, SHARED, fd, 0)
    mm.touch(B, 1, write=True)
    mm.touch(B + 4 * K, 1, write=False)
    mm.mprotect(B, 2 * M, PROT_READ)
    assert not mm.read_entry(B) & _PAGE_RW
    mm.mprotect(B, 2 * M, RW)
    assert mm.read_entry(B) & _PAGE_RW
    assert not mm.read_entry(B + 4 * K) & _PAGE_RW
    mm.check()


def test_private_cow(impl):
    """SC-19 (R30): a write to a read-mapped page copies it (RssAnon +4, RssFile -4); a write
    to an unmapped page copies at once, without fault-around; the cache stays clean."""
    mm, f, fd = new(impl, 2 * M)
    d = Tracker(mm)
    mm.mmap(B, 2 * M, RW, PRIVATE, fd, 0)
    mm.touch(B + 100 * K, 1, write=False)
    assert d() == (12, 0, 64, 0)
    mm.touch(B + 100 * K, 1, write=True)
    assert d() == (0, 4, -4, 0)
    mm.touch(B + M, 1, write=True)
    assert d() == (0, 4, 0, 0)
    assert mm.vmas()[0][3]  # do_cow_fault() prepared an anon_vma
    assert (f.nr_cached, f.nr_dirty) == (512, 0)
    with pytest.raises(OSError) as e:
        mm.madvise(B, 2 * M, MADV_FREE)
    assert e.value.errno == errno.EINVAL
    mm.madvise(B, 2 * M, MADV_DONTNEED)
    assert d() == (-4, -8, -60, 0)


def test_private_cow_of_uncached_page(impl):
    """do_cow_fault() reads the page into the cache (clean) before copying it."""
    mm, f, fd = new(impl, 2 * M, cached=False)
    d = Tracker(mm)
    mm.mmap(B, 2 * M, RW, PRIVATE, fd, 0)
    mm.touch(B, 1, write=True)
    assert d() == (12, 4, 0, 0)
    assert (f.nr_cached, f.nr_dirty) == (1, 0)


def test_read_only_mapping_write_segfaults(impl):
    mm, f, fd = new(impl, 128 * K)
    d = Tracker(mm)
    mm.mmap(B, 128 * K, PROT_READ, SHARED, fd, 0)
    with pytest.raises(SegmentationFault):
        mm.touch(B + 68 * K, 1, write=True)
    assert d() == (0, 0, 0, 0)


def test_private_mapping_of_shmem(impl):
    """file-memfd.txt: shmem pages count in RssShmem until a write copies them."""
    mm, f, fd = new(impl, 1 * M, shmem=True)
    d = Tracker(mm)
    mm.mmap(B, 1 * M, RW, PRIVATE, fd, 0)
    mm.touch(B + 100 * K, 1, write=False)
    assert d() == (12, 0, 0, 64)
    mm.touch(B + 100 * K, 1, write=True)
    assert d() == (0, 4, 0, -4)
    mm.touch(B + 512 * K, 1, write=True)
    assert d() == (0, 4, 0, 0)
    # The VMA covers half of its PTE table: no table is freed.
    mm.madvise(B, 1 * M, MADV_DONTNEED)
    assert d() == (0, -8, 0, -60)


def test_memfd_holes(impl):
    """SC-17 on an uncached memfd: a read of a hole allocates one page (R28)."""
    mm, f, fd = new(impl, 4 * M, shmem=True, cached=False)
    d = Tracker(mm)
    mm.mmap(B, 4 * M, RW, SHARED, fd, 0)
    mm.touch(B, 2 * M, write=True)
    assert d() == (12, 0, 0, 2048)
    mm.madvise(B, 2 * M, MADV_DONTNEED)
    assert d() == (-4, 0, 0, -2048)
    mm.touch(B + 100 * K, 1, write=False)
    assert d() == (4, 0, 0, 64)
    mm.touch(B + 2 * M, 1, write=False)
    assert d() == (4, 0, 0, 4)
    mm.madvise(B, 2 * M, MADV_REMOVE)
    assert d() == (0, 0, 0, -64)
    assert f.nr_cached == 1


def test_populate(impl):
    """GUP population writes only in private writable mappings (populate_vma_page_range();
    file-populate.txt)."""
    mm, f, fd = new(impl, 4 * M)
    d = Tracker(mm)
    mm.mmap(B, 1 * M, RW, PRIVATE | MAP_POPULATE, fd, 0)
    assert d() == (12, 1024, 0, 0)
    mm.mmap(B + G, 1 * M, PROT_READ, PRIVATE | MAP_POPULATE, fd, 0)
    assert d() == (8, 0, 1024, 0)
    mm.mmap(B + 2 * G, 1 * M, RW, SHARED | MAP_POPULATE, fd, M)
    assert d() == (8, 0, 1024, 0)
    mm.mmap(B + 3 * G, 1 * M, PROT_READ, PRIVATE, fd, 0)
    mm.madvise(B + 3 * G, 1 * M, MADV_POPULATE_READ)
    assert d() == (8, 0, 1024, 0)
    with pytest.raises(OSError) as e:
        mm.madvise(B + 3 * G, 1 * M, MADV_POPULATE_WRITE)
    assert e.value.errno == errno.EINVAL
    mm.mprotect(B + 3 * G, 1 * M, RW)
    mm.madvise(B + 3 * G, 64 * K, MADV_POPULATE_WRITE)
    assert d() == (0, 64, -64, 0)


# ------------------------------------------------------------------ madvise


def test_dontneed_keeps_cache(impl):
    """SC-18: DONTNEED unmaps, the pages stay cached, PT reclaim frees the table."""
    mm, f, fd = new(impl, 4 * M)
    d = Tracker(mm)
    mm.mmap(B, 4 * M, RW, SHARED, fd, 0)
    mm.touch(B + 100 * K, 1, write=False)
    mm.touch(B + 2 * M - 4 * K, 1, write=False)
    mm.touch(B + M, 1, write=True)
    assert d() == (12, 0, 132, 0)
    mm.madvise(B, 2 * M, MADV_DONTNEED)
    assert d() == (-4, 0, -132, 0)
    assert (f.nr_cached, f.nr_dirty) == (1024, 1)


def test_remove(impl):
    """R40 (file-remove.txt): the hole leaves every mapping (the private COW copies stay)
    and the page cache; no table is freed; a private mapping gets EACCES."""
    mm, f, fd = new(impl, 4 * M)
    d = Tracker(mm)
    mm.mmap(B, 4 * M, RW, SHARED, fd, 0)
    mm.mmap(B + G, 4 * M, PROT_READ, SHARED, fd, 0)
    mm.mmap(B + 2 * G, 4 * M, RW, PRIVATE, fd, 0)
    mm.touch(B, 2 * M, write=False)
    mm.touch(B + G, 64 * K, write=False)
    mm.touch(B + 2 * G, 128 * K, write=False)
    mm.touch(B + 2 * G + 64 * K, 8 * K, write=True)
    assert d() == (28, 8, 2048 + 64 + 128 - 8, 0)
    mm.madvise(B, 128 * K, MADV_REMOVE)
    assert d() == (0, 0, -312, 0)
    assert f.nr_cached == 1024 - 32
    # A read-only shared mapping of an O_RDWR fd may punch too (VM_SHARED|VM_MAYWRITE).
    mm.madvise(B + G, 64 * K, MADV_REMOVE)
    assert d() == (0, 0, 0, 0)
    with pytest.raises(OSError) as e:
        mm.madvise(B + 2 * G, 64 * K, MADV_REMOVE)
    assert e.value.errno == errno.EACCES
    mm.madvise(B, 2 * M, MADV_DONTNEED)
    assert d() == (-4, 0, -1920, 0)
    # A punched page is read in again: one page.
    mm.touch(B, 1, write=False)
    assert d() == (4, 0, 4, 0)


def test_remove_unmaps_other_processes(impl):
    mm, f, fd = new(impl, 2 * M)
    mm.mmap(B, 2 * M, RW, SHARED, fd, 0)
    other = impl.MM(machine=mm.machine)
    ofd = other.open(f)
    other.mmap(B, 2 * M, RW, SHARED, ofd, 0)
    other.touch(B, 64 * K, write=False)
    assert counts(other)[2] == 64
    mm.madvise(B, 2 * M, MADV_REMOVE)
    assert counts(other)[2] == 0 and f.nr_cached == 0
    other.check()
    mm.check()


def test_pageout(impl):
    """R41 (file-pageout.txt): clean pages mapped once leave the cache; dirty ones stay
    cached and unmapped; pages mapped twice are skipped; COLD changes nothing."""
    mm, f, fd = new(impl, 4 * M)
    d = Tracker(mm)
    mm.mmap(B, 4 * M, RW, SHARED, fd, 0)
    mm.touch(B, 1 * M, write=False)
    assert d() == (12, 0, 1024, 0)
    mm.madvise(B, 1 * M, MADV_PAGEOUT)
    assert d() == (0, 0, -1024, 0)
    assert f.nr_cached == 1024 - 256
    mm.touch(B + M, 64 * K, write=True)
    assert d() == (0, 0, 64, 0)
    mm.madvise(B + M, 64 * K, MADV_PAGEOUT)
    assert d() == (0, 0, -64, 0)
    assert (f.nr_cached, f.nr_dirty) == (1024 - 256, 16)
    mm.touch(B + M, 64 * K, write=False)
    assert d() == (0, 0, 64, 0)
    mm.touch(B + 2 * M, 64 * K, write=True)
    mm.madvise(B + 2 * M, 64 * K, MADV_COLD)
    assert d() == (4, 0, 64, 0)
    mm.mmap(B + G, 64 * K, PROT_READ, SHARED, fd, 3 * M)
    mm.touch(B + G, 64 * K, write=False)
    mm.touch(B + 3 * M, 64 * K, write=False)
    assert d() == (8, 0, 128, 0)
    mm.madvise(B + 3 * M, 64 * K, MADV_PAGEOUT)
    mm.madvise(B + G, 64 * K, MADV_PAGEOUT)
    assert d() == (0, 0, 0, 0)


def test_pageout_readonly_fd(impl):
    """can_do_file_pageout(): the owner of the file may page it out whatever the fd's mode
    (inode_owner_or_capable()); the process owns the files it creates."""
    mm, f, fd = new(impl, 64 * K, write=False)
    d = Tracker(mm)
    mm.mmap(B, 64 * K, PROT_READ, SHARED, fd, 0)
    mm.touch(B, 64 * K, write=False)
    mm.madvise(B, 64 * K, MADV_PAGEOUT)
    assert d() == (12, 0, 0, 0)
    assert f.nr_cached == 0


def test_willneed(impl):
    """R42: maps nothing; a disk file's range is read into the cache, up to EOF."""
    mm, f, fd = new(impl, 20 * K + 100, cached=False)
    d = Tracker(mm)
    mm.mmap(B, 64 * K, PROT_READ, PRIVATE, fd, 0)
    mm.madvise(B + 4 * K, 64 * K - 4 * K, MADV_WILLNEED)
    assert d() == (0, 0, 0, 0)
    assert f.nr_cached == 5


def test_collapse_of_disk_file(impl):
    """thp_vma_allowable_order(): a disk file's VMA qualifies only via
    CONFIG_READ_ONLY_THP_FOR_FS, which the model does not have: EINVAL."""
    mm, f, fd = new(impl, 2 * M)
    mm.mmap(B, 2 * M, PROT_READ, PRIVATE, fd, 0)
    with pytest.raises(OSError) as e:
        mm.madvise(B, 2 * M, MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL


# ------------------------------------------------------------------ fork, mremap, exit


def test_fork(impl):
    """R66 (file-fork.txt): only the file VMA with an anon_vma is copied, file PTEs included."""
    mm, f, fd = new(impl, 4 * M)
    d = Tracker(mm)
    mm.mmap(B, 2 * M, RW, PRIVATE, fd, 0)
    mm.touch(B, 64 * K, write=False)
    mm.touch(B + 4 * K, 8 * K, write=True)
    mm.mmap(B + 2 * M, 64 * K, RW, SHARED, fd, 2 * M)
    mm.touch(B + 2 * M, 64 * K, write=False)
    mm.mmap(B + G, 64 * K, PROT_READ, PRIVATE, fd, 0)
    mm.touch(B + G, 1, write=False)
    assert d() == (24, 8, 184, 0)
    empty = impl.MM(machine=mm.machine)
    child = mm.fork()
    base = counts(empty)
    assert tuple(a - b for a, b in zip(counts(child), base)) == (12, 8, 56, 0)
    cd = Tracker(child)
    child.touch(B + 4 * K, 1, write=True)   # shared with the parent: a new copy
    assert cd() == (0, 0, 0, 0)
    child.touch(B + 16 * K, 1, write=True)
    assert cd() == (0, 4, -4, 0)
    child.touch(B + 2 * M, 1, write=False)
    assert cd() == (4, 0, 64, 0)
    child.munmap(B, 2 * M)
    assert cd() == (-4, -12, -52, 0)
    mm.check()
    child.exit()
    mm.check()


def test_mremap(impl):
    """file-mremap.txt: moves keep the pages mapped, shrinking unmaps the tail."""
    mm, f, fd = new(impl, 4 * M)
    d = Tracker(mm)
    mm.mmap(B, 1 * M, RW, SHARED, fd, 0)
    mm.touch(B, 1 * M, write=False)
    assert d() == (12, 0, 1024, 0)
    assert mm.mremap(B, M, M, MREMAP_MAYMOVE | MREMAP_FIXED, B + G) == B + G
    mm.touch(B + G, 64 * K, write=True)
    assert d() == (0, 0, 0, 0)
    mm.mremap(B + G, M, 512 * K)
    assert d() == (0, 0, -512, 0)
    mm.mremap(B + G, 512 * K, 2 * M)
    mm.touch(B + G + M, 4 * K, write=False)
    assert d() == (0, 0, 64, 0)


def test_exit_closes_files(impl):
    mm, f, fd = new(impl, 64 * K)
    machine = mm.machine
    mm.mmap(B, 64 * K, RW, SHARED, fd, 0)
    mm.touch(B, 64 * K, write=False)
    mm.exit()
    mm.check()
    assert machine.frames_in_use == 16
    del f
    assert machine.frames_in_use == 0


def test_anonymous_mmap_unchanged(impl):
    """MAP_ANONYMOUS ignores fd and offset alignment rules apart from the offset check."""
    mm = impl.MM()
    assert mm.mmap(B, 64 * K, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, 7, 0) == B
    with pytest.raises(OSError) as e:
        mm.mmap(B, 64 * K, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 100)
    assert e.value.errno == errno.EINVAL


def test_read_fault_maps_dirty_shmem_page_dirty(impl):
    """set_pte_range(): a read fault that maps a folio writable (a shared shmem mapping) sets
    the dirty bit when the folio is dirty; a clean one (a hole read in) is mapped clean."""
    mm, f, fd = new(impl, 2 * M, shmem=True, cached=False)
    mm.mmap(B, 2 * M, RW, SHARED, fd, 0)
    mm.touch(B, 4 * K, write=True)
    mm.madvise(B, 4 * K, MADV_DONTNEED)  # the PTE's dirty bit moves to the folio
    mm.touch(B, 1, write=False)
    pte = mm.read_entry(B)
    assert pte & _PAGE_RW and pte & _PAGE_DIRTY
    mm.touch(B + 64 * K, 1, write=False)
    pte = mm.read_entry(B + 64 * K)
    assert pte & _PAGE_RW and not pte & _PAGE_DIRTY
    mm.check()
