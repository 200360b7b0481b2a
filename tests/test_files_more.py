"""File-backed mappings beyond the shared spec's tests: do_mmap's errno order with fds, the
fd table across open/close/fork/exit, SIGBUS past EOF, fault-around windows, COW, PAGEOUT
and REMOVE, fork of private file mappings, and check().

Expected counts are the kernel's: the rows of SC-18 and SC-19 (linux-mm-semantics.md §14,
with the RssFile deltas of R29-R30), and scripts measured on the host kernel (Linux 6.18,
ext4 temp directory, THP madvise, CONFIG_PT_RECLAIM=y) with the script runner's `file`
operation; each test names the rule it checks.
"""

import errno
import gc

import pytest

from ptreclaim.constants import (
    MADV_COLD, MADV_DONTNEED, MADV_FREE, MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE,
    MADV_REMOVE, MADV_WILLNEED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_HUGETLB, MAP_PRIVATE,
    MAP_SHARED, MAP_SHARED_VALIDATE, MAP_SYNC, PROT_READ, PROT_WRITE, VM_ACCOUNT, VM_MAYSHARE,
    VM_MAYWRITE, VM_SHARED,
)
from ptreclaim.errors import BusError, SegmentationFault

K = 1024
M = 1024 * K
G = 1024 * M
B = 0x2000_0000_0000          # 1 GiB- and 512 GiB-aligned, in an empty PGD slot
R = PROT_READ
RW = PROT_READ | PROT_WRITE
SHARED = MAP_SHARED | MAP_FIXED_NOREPLACE
PRIVATE = MAP_PRIVATE | MAP_FIXED_NOREPLACE
FIELDS = ("VmPTE", "RssAnon", "RssFile", "RssShmem")


@pytest.fixture
def machine(impl):
    return impl.Machine()


@pytest.fixture
def mm(impl, machine):
    return impl.MM(machine=machine)


class Steps:
    """Apply operations and compare (errno, ΔVmPTE, ΔRssAnon, ΔRssFile, ΔRssShmem) in kB."""

    def __init__(self, mm):
        self.mm = mm

    def __call__(self, fn, *args, want=(0, 0, 0, 0, 0), **kw):
        before = self.mm.status()
        try:
            fn(*args, **kw)
            got_errno = 0
        except OSError as exc:
            got_errno = exc.errno
        except SegmentationFault:
            got_errno = "SIGSEGV"
        except BusError:
            got_errno = "SIGBUS"
        after = self.mm.status()
        got = (got_errno,) + tuple(after[f] - before[f] for f in FIELDS)
        assert got == tuple(want), f"{fn.__name__}{args}"
        self.mm.check()


def read(mm, addr, length=1):
    mm.touch(addr, length, write=False)


def write(mm, addr, length=1):
    mm.touch(addr, length, write=True)


# --- the spec's measured scenarios, with their RssFile deltas -----------------------------

def test_sc18_shared_file(mm):
    """SC-18: fault-around of 16 pages, a shared write maps one page, DONTNEED reclaims the
    table, PAGEOUT drops clean pages (R29, R30, R37, R41)."""
    f = mm.machine.create_file(4 * M)
    fd = mm.open(f)
    s = Steps(mm)
    s(mm.mmap, B, 4 * M, RW, SHARED, fd, 0)
    s(read, mm, B + 100 * K, want=(0, 12, 0, 64, 0))
    s(read, mm, B + 2 * M - 4 * K, want=(0, 0, 0, 64, 0))
    s(write, mm, B + M, want=(0, 0, 0, 4, 0))
    s(mm.madvise, B, 2 * M, MADV_DONTNEED, want=(0, -4, 0, -132, 0))
    s(mm.madvise, B + 2 * M, 2 * M, MADV_PAGEOUT)
    s(read, mm, B + 2 * M, 2 * M, want=(0, 4, 0, 2048, 0))
    s(mm.madvise, B + 2 * M, 2 * M, MADV_PAGEOUT, want=(0, 0, 0, -2048, 0))
    s(mm.munmap, B, 4 * M, want=(0, -12, 0, 0, 0))
    # The page cache keeps every page but the 512 clean ones paged out; the one written
    # page is dirty.
    assert f.nr_cached == 512 and f.nr_dirty == 1


def test_sc19_private_file_cow(mm):
    """SC-19: a write to a mapped file page COWs it (RssFile -4, RssAnon +4); a write to an
    unmapped one is a COW fault without fault-around (R30)."""
    f = mm.machine.create_file(2 * M)
    fd = mm.open(f)
    s = Steps(mm)
    s(mm.mmap, B, 2 * M, RW, PRIVATE, fd, 0)
    s(read, mm, B + 100 * K, want=(0, 12, 0, 64, 0))
    s(write, mm, B + 100 * K, want=(0, 0, 4, -4, 0))
    s(write, mm, B + M, want=(0, 0, 4, 0, 0))
    s(mm.madvise, B, 2 * M, MADV_FREE, want=(errno.EINVAL, 0, 0, 0, 0))
    s(mm.madvise, B, 2 * M, MADV_DONTNEED, want=(0, -4, -8, -60, 0))
    # The copies never reached the file.
    assert f.nr_dirty == 0 and f.nr_cached == 512


# --- do_mmap with a file ---------------------------------------------------------------------

def test_mmap_errno_order(mm):
    """do_mmap's checks in Linux's order (sys_mmap, ksys_mmap_pgoff, do_mmap, file_mmap_ok);
    errnos measured on the host kernel."""
    f = mm.machine.create_file(64 * K)
    ro = mm.open(f, write=False)
    rw = mm.open(f)
    s = Steps(mm)
    # sys_mmap: the offset's alignment comes before the fd.
    s(mm.mmap, B, 64 * K, R, SHARED, 99, 100, want=(errno.EINVAL, 0, 0, 0, 0))
    s(mm.mmap, B, 64 * K, R, SHARED, 99, 0, want=(errno.EBADF, 0, 0, 0, 0))
    s(mm.mmap, B, 64 * K, R, SHARED, -1, 0, want=(errno.EBADF, 0, 0, 0, 0))
    # ksys_mmap_pgoff: MAP_HUGETLB of a file that is not on hugetlbfs.
    s(mm.mmap, B, 64 * K, R, SHARED | MAP_HUGETLB, rw, 0, want=(errno.EINVAL, 0, 0, 0, 0))
    # do_mmap: a zero length, then file_mmap_ok()'s loff_t limit.
    s(mm.mmap, B, 0, R, SHARED, rw, 0, want=(errno.EINVAL, 0, 0, 0, 0))
    s(mm.mmap, B, 64 * K, R, SHARED, rw, 0x7FFF_FFFF_FFFF_F000, want=(errno.EOVERFLOW, 0, 0, 0, 0))
    s(mm.mmap, B, 64 * K, R, SHARED, rw, 2**64 - 4096, want=(errno.EOVERFLOW, 0, 0, 0, 0))
    # An existing mapping wins over the file checks (EEXIST comes first).
    s(mm.mmap, B, 64 * K, R, SHARED, rw, 0)
    s(mm.mmap, B, 64 * K, RW, SHARED, ro, 0, want=(errno.EEXIST, 0, 0, 0, 0))
    # MAP_SHARED_VALIDATE refuses flags the file cannot do; MAP_SHARED drops them.
    s(mm.mmap, B + M, 64 * K, R, MAP_SHARED_VALIDATE | MAP_SYNC | MAP_FIXED_NOREPLACE, rw, 0,
      want=(errno.EOPNOTSUPP, 0, 0, 0, 0))
    s(mm.mmap, B + M, 64 * K, R, SHARED | MAP_SYNC, rw, 0, want=(0, 0, 0, 0, 0))
    # A writable shared mapping needs FMODE_WRITE; a private one does not.
    s(mm.mmap, B + 2 * M, 64 * K, RW, SHARED, ro, 0, want=(errno.EACCES, 0, 0, 0, 0))
    s(mm.mmap, B + 2 * M, 64 * K, RW, PRIVATE, ro, 0)
    # Neither shared nor private.
    s(mm.mmap, B + 3 * M, 64 * K, R, 0x0F | MAP_FIXED_NOREPLACE, rw, 0, want=(errno.EINVAL, 0, 0, 0, 0))
    # Far past EOF is fine for mmap (the access is what fails).
    s(mm.mmap, B + 3 * M, 64 * K, R, SHARED, rw, G)


def test_mmap_flags_of_file_mappings(mm):
    """A shared mapping of an O_RDONLY fd loses VM_SHARED and VM_MAYWRITE (keeps VM_MAYSHARE),
    so it can never become writable; private writable file mappings are charged."""
    f = mm.machine.create_file(64 * K)
    ro = mm.open(f, write=False)
    rw = mm.open(f)
    mm.mmap(B, 64 * K, R, SHARED, ro, 0)
    mm.mmap(B + M, 64 * K, R, SHARED, rw, 0)
    mm.mmap(B + 2 * M, 64 * K, RW, PRIVATE, ro, 0)
    mm.mmap(B + 3 * M, 64 * K, RW, SHARED, rw, 0)
    flags = {v[0]: v[2] for v in mm.vmas()}
    assert flags[B] & (VM_SHARED | VM_MAYWRITE | VM_MAYSHARE) == VM_MAYSHARE
    assert flags[B + M] & (VM_SHARED | VM_MAYWRITE | VM_MAYSHARE) == VM_SHARED | VM_MAYWRITE | VM_MAYSHARE
    assert flags[B + 2 * M] & (VM_ACCOUNT | VM_SHARED) == VM_ACCOUNT
    assert not flags[B + 3 * M] & VM_ACCOUNT
    with pytest.raises(OSError) as exc:
        mm.mprotect(B, 64 * K, RW)
    assert exc.value.errno == errno.EACCES
    mm.mprotect(B + M, 64 * K, RW)              # VM_MAYWRITE: allowed
    mm.check()


def test_thp_aligned_address_for_disk_files(mm):
    """thp_get_unmapped_area(): a disk file range holding a whole 2 MiB block maps at an
    address congruent to its offset modulo 2 MiB; shmem (huge=never) and short ranges do not
    pad."""
    f = mm.machine.create_file(8 * M)
    fd = mm.open(f)
    a = mm.mmap(0, 4 * M, R, MAP_SHARED, fd, 0)
    assert a % (2 * M) == 0
    b = mm.mmap(0, 4 * M, R, MAP_SHARED, fd, 64 * K)
    assert (b - 64 * K) % (2 * M) == 0
    mm.check()


# --- the fd table ----------------------------------------------------------------------------

def test_fd_numbers_and_close(mm):
    f = mm.machine.create_file(8 * K)
    assert [mm.open(f), mm.open(f, write=False), mm.open(f)] == [3, 4, 5]
    mm.close(4)
    assert mm.open(f) == 4                      # the lowest free number
    with pytest.raises(OSError) as exc:
        mm.close(42)
    assert exc.value.errno == errno.EBADF
    mm.close(3)
    with pytest.raises(OSError) as exc:
        mm.close(3)
    assert exc.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        mm.open("not a file")
    with pytest.raises(TypeError):
        mm.close(3.0)


def test_fork_copies_the_fd_table(mm):
    f = mm.machine.create_file(64 * K)
    fd = mm.open(f)
    child = mm.fork()
    # The child has the same descriptor; closing it there leaves the parent's open.
    child.mmap(B, 64 * K, R, SHARED, fd, 0)
    child.close(fd)
    with pytest.raises(OSError) as exc:
        child.mmap(B + M, 64 * K, R, SHARED, fd, 0)
    assert exc.value.errno == errno.EBADF
    mm.mmap(B, 64 * K, R, SHARED, fd, 0)
    # A descriptor opened after the fork is the parent's alone.
    fd2 = mm.open(f)
    with pytest.raises(OSError):
        child.close(fd2)
    child.exit()
    mm.check()


def test_mapping_keeps_the_file_after_close(impl, mm):
    """The VMA holds its own file reference: close() and dropping every Python reference
    leave the page cache in place while the mapping lives, and free it after."""
    machine = mm.machine
    f = machine.create_file(64 * K)
    fd = mm.open(f)
    mm.mmap(B, 64 * K, RW, SHARED, fd, 0)
    mm.close(fd)
    del f
    gc.collect()
    assert machine.frames_in_use == 16
    s = Steps(mm)
    s(write, mm, B, 64 * K, want=(0, 12, 0, 64, 0))
    s(mm.munmap, B, 64 * K, want=(0, -12, 0, -64, 0))
    assert machine.frames_in_use == 0


def test_exit_closes_every_fd(mm):
    machine = mm.machine
    f = machine.create_file(16 * K)
    mm.open(f)
    mm.exit()
    del f
    gc.collect()
    assert machine.frames_in_use == 0


def test_page_cache_frames_are_bounded(impl):
    from ptreclaim.errors import OutOfMemory
    machine = impl.Machine(max_frames=8)
    with pytest.raises(OutOfMemory):
        machine.create_file(64 * K)
    f = machine.create_file(64 * K, cached=False)
    assert f.nr_cached == 0 and machine.frames_in_use == 0
    assert (f.size, f.shmem) == (64 * K, False)
    with pytest.raises(OverflowError):
        machine.create_file(-1)
    with pytest.raises(TypeError):
        machine.create_file(4096.0)


# --- SIGBUS past EOF ---------------------------------------------------------------------------

def test_sigbus_past_eof(mm):
    """An access at a page index >= ceil(size / 4 KiB) is SIGBUS after the pages before it;
    a mapping grown past EOF by mremap faults the same (measured on the host kernel)."""
    f = mm.machine.create_file(8 * K)
    fd = mm.open(f)
    s = Steps(mm)
    s(mm.mmap, B, 16 * K, RW, SHARED, fd, 0)
    s(write, mm, B, 16 * K, want=("SIGBUS", 12, 0, 8, 0))
    s(read, mm, B + 12 * K, want=("SIGBUS", 0, 0, 0, 0))
    s(mm.mmap, B + M, 16 * K, RW, PRIVATE, fd, 0)
    s(read, mm, B + M, 16 * K, want=("SIGBUS", 0, 0, 8, 0))
    s(write, mm, B + M, 16 * K, want=("SIGBUS", 0, 8, -8, 0))
    s(mm.mmap, B + 2 * M, 8 * K, RW, SHARED, fd, 8 * K)
    s(read, mm, B + 2 * M, want=("SIGBUS", 0, 0, 0, 0))
    s(write, mm, B + 2 * M + 4 * K, want=("SIGBUS", 0, 0, 0, 0))
    s(mm.mmap, B + 3 * M, 8 * K, RW, SHARED, fd, 0)
    s(write, mm, B + 3 * M, 8 * K, want=(0, 4, 0, 8, 0))
    s(mm.mremap, B + 3 * M, 8 * K, 16 * K)
    s(write, mm, B + 3 * M + 8 * K, want=("SIGBUS", 0, 0, 0, 0))
    s(read, mm, B + 3 * M + 4 * K)
    # Far past EOF: the fault allocates the PMD table, then SIGBUS before any PTE table.
    s(mm.mmap, B + G, 64 * K, R, SHARED, fd, G)
    s(read, mm, B + G, want=("SIGBUS", 4, 0, 0, 0))


def test_bus_error_address(mm):
    f = mm.machine.create_file(4 * K + 1)        # two pages: the second is partial
    fd = mm.open(f)
    mm.mmap(B, 16 * K, R, SHARED, fd, 0)
    with pytest.raises(BusError) as exc:
        read(mm, B, 16 * K)
    assert exc.value.address == B + 8 * K
    assert mm.status()["RssFile"] == 8


# --- fault-around windows (R29) -------------------------------------------------------------

def test_fault_around_windows(mm):
    """16 PTEs aligned on the virtual address, clipped to the VMA, to the PTE table and to
    EOF; only cached pages with none PTEs (measured on the host kernel)."""
    f = mm.machine.create_file(4 * M)
    fd = mm.open(f)
    s = Steps(mm)
    s(mm.mmap, B + 8 * K, 40 * K, R, SHARED, fd, 0)
    s(read, mm, B + 8 * K, want=(0, 12, 0, 40, 0))
    s(read, mm, B + 8 * K, 40 * K)
    s(mm.mmap, B + 2 * M - 32 * K, 64 * K, R, SHARED, fd, M)
    s(read, mm, B + 2 * M - 4 * K, want=(0, 0, 0, 32, 0))
    s(read, mm, B + 2 * M, want=(0, 4, 0, 32, 0))
    s(read, mm, B + 2 * M + 28 * K)
    # The window follows the address, not the file offset.
    s(mm.mmap, B + G, 64 * K, R, SHARED, fd, 4 * K)
    s(read, mm, B + G + 60 * K, want=(0, 8, 0, 64, 0))
    # A write to a read-only mapping maps nothing; mapped pages are skipped.
    s(mm.mmap, B + 2 * G, 128 * K, R, SHARED, fd, 0)
    s(write, mm, B + 2 * G + 68 * K, want=("SIGSEGV", 0, 0, 0, 0))
    s(read, mm, B + 2 * G + 64 * K, want=(0, 8, 0, 64, 0))
    s(read, mm, B + 2 * G, 4 * K, want=(0, 0, 0, 64, 0))
    s(read, mm, B + 2 * G, 128 * K)
    # EOF: 20K+100 bytes are 6 pages.
    e = mm.machine.create_file(20 * K + 100)
    fe = mm.open(e)
    s(mm.mmap, B + 3 * G, 64 * K, R, SHARED, fe, 0)
    s(read, mm, B + 3 * G + 4 * K, want=(0, 8, 0, 24, 0))
    s(read, mm, B + 3 * G + 20 * K + 200)
    s(read, mm, B + 3 * G + 24 * K, want=("SIGBUS", 0, 0, 0, 0))
    s(mm.mmap, B + 4 * G, 16 * K, R, PRIVATE, fe, 16 * K)
    s(read, mm, B + 4 * G, want=(0, 8, 0, 8, 0))
    s(read, mm, B + 4 * G + 4 * K)
    s(read, mm, B + 4 * G + 8 * K, want=("SIGBUS", 0, 0, 0, 0))


def test_uncached_file_reads_one_page(mm):
    """With nothing cached, fault-around maps nothing and the fault reads in one page (no
    readahead is simulated); the next read in the window finds it and its neighbours."""
    f = mm.machine.create_file(64 * K, cached=False)
    fd = mm.open(f)
    s = Steps(mm)
    s(mm.mmap, B, 64 * K, R, SHARED, fd, 0)
    s(read, mm, B + 8 * K, want=(0, 12, 0, 4, 0))
    assert f.nr_cached == 1
    s(mm.madvise, B, 64 * K, MADV_WILLNEED)
    assert f.nr_cached == 16
    s(read, mm, B, want=(0, 0, 0, 60, 0))


# --- shared writes, dirty pages and write notification --------------------------------------

def test_shared_write_notify(mm):
    """A read fault maps a shared disk-file page read-only (write notify); the first write
    makes it writable and dirties the page without an RSS change (wp_page_shared)."""
    f = mm.machine.create_file(64 * K)
    fd = mm.open(f)
    s = Steps(mm)
    s(mm.mmap, B, 64 * K, RW, SHARED, fd, 0)
    s(read, mm, B, want=(0, 12, 0, 64, 0))
    pte = mm.read_entry(B)
    assert pte & 1 and not pte & 2                # present, read-only
    assert f.nr_dirty == 0
    s(write, mm, B)
    assert mm.read_entry(B) & 2 and f.nr_dirty == 1
    # A shmem file needs no notification: its read faults map writable entries.
    sh = mm.machine.create_file(64 * K, shmem=True)
    fs = mm.open(sh)
    s(mm.mmap, B + M, 64 * K, RW, SHARED, fs, 0)
    s(read, mm, B + M, want=(0, 0, 0, 0, 64))
    assert mm.read_entry(B + M) & 2
    assert sh.nr_dirty == 0 and sh.shmem


# --- PAGEOUT, COLD, REMOVE ----------------------------------------------------------------------

def test_pageout_of_file_pages(mm):
    """Pages mapped only here are unmapped; clean ones leave the cache, dirty ones stay; a
    page mapped twice is skipped; the owner of a file may page out through an O_RDONLY fd
    (can_do_file_pageout); COLD changes no count (measured on the host kernel)."""
    f = mm.machine.create_file(4 * M)
    fd = mm.open(f)
    s = Steps(mm)
    s(mm.mmap, B, 4 * M, RW, SHARED, fd, 0)
    s(read, mm, B, M, want=(0, 12, 0, 1024, 0))
    s(mm.madvise, B, M, MADV_PAGEOUT, want=(0, 0, 0, -1024, 0))
    assert f.nr_cached == 1024 - 256
    s(write, mm, B + M, 64 * K, want=(0, 0, 0, 64, 0))
    s(mm.madvise, B + M, 64 * K, MADV_PAGEOUT, want=(0, 0, 0, -64, 0))
    assert f.nr_cached == 768 and f.nr_dirty == 16
    s(read, mm, B + M, 64 * K, want=(0, 0, 0, 64, 0))
    s(write, mm, B + 2 * M, 64 * K, want=(0, 4, 0, 64, 0))
    s(mm.madvise, B + 2 * M, 64 * K, MADV_COLD)
    s(read, mm, B + 2 * M, 64 * K)
    s(mm.mmap, B + G, 64 * K, R, SHARED, fd, 3 * M)
    s(read, mm, B + G, 64 * K, want=(0, 8, 0, 64, 0))
    s(read, mm, B + 3 * M, 64 * K, want=(0, 0, 0, 64, 0))
    s(mm.madvise, B + 3 * M, 64 * K, MADV_PAGEOUT)
    s(mm.madvise, B + G, 64 * K, MADV_PAGEOUT)
    r = mm.machine.create_file(64 * K)
    rd = mm.open(r, write=False)
    s(mm.mmap, B + 2 * G, 64 * K, R, SHARED, rd, 0)
    s(read, mm, B + 2 * G, 64 * K, want=(0, 8, 0, 64, 0))
    s(mm.madvise, B + 2 * G, 64 * K, MADV_PAGEOUT, want=(0, 0, 0, -64, 0))
    assert r.nr_cached == 0


def test_remove_punches_every_mapping(mm):
    """MADV_REMOVE (R40): the pages leave every mapping of the file, private COW copies stay,
    no table is freed; it needs VM_SHARED and VM_MAYWRITE (measured on the host kernel)."""
    f = mm.machine.create_file(4 * M)
    fd = mm.open(f)
    s = Steps(mm)
    s(mm.mmap, B, 4 * M, RW, SHARED, fd, 0)
    s(mm.mmap, B + G, 4 * M, R, SHARED, fd, 0)
    s(mm.mmap, B + 2 * G, 4 * M, RW, PRIVATE, fd, 0)
    s(read, mm, B, 2 * M, want=(0, 12, 0, 2048, 0))
    s(read, mm, B + G, 64 * K, want=(0, 8, 0, 64, 0))
    s(read, mm, B + 2 * G, 128 * K, want=(0, 8, 0, 128, 0))
    s(write, mm, B + 2 * G + 64 * K, 8 * K, want=(0, 0, 8, -8, 0))
    s(mm.madvise, B, 128 * K, MADV_REMOVE, want=(0, 0, 0, -312, 0))
    assert f.nr_cached == 1024 - 32
    s(mm.madvise, B + G, 64 * K, MADV_REMOVE)
    s(mm.madvise, B + 2 * G, 64 * K, MADV_REMOVE, want=(errno.EACCES, 0, 0, 0, 0))
    s(mm.madvise, B, 2 * M, MADV_DONTNEED, want=(0, -4, 0, -1920, 0))
    s(write, mm, B, want=(0, 4, 0, 4, 0))
    assert f.nr_cached == 1024 - 31


def test_remove_of_shmem_file_keeps_private_copies(mm):
    s = Steps(mm)
    sh = mm.machine.create_file(M, shmem=True)
    fd = mm.open(sh)
    s(mm.mmap, B, M, RW, SHARED, fd, 0)
    s(mm.mmap, B + G, M, RW, PRIVATE, fd, 0)
    s(read, mm, B, M, want=(0, 12, 0, 0, 1024))
    s(read, mm, B + G, 64 * K, want=(0, 8, 0, 0, 64))
    s(write, mm, B + G, 4 * K, want=(0, 0, 4, 0, -4))
    s(mm.madvise, B, 64 * K, MADV_REMOVE, want=(0, 0, 0, 0, -124))
    s(read, mm, B, want=(0, 0, 0, 0, 4))
    s(mm.madvise, B, M, MADV_DONTNEED, want=(0, 0, 0, 0, -964))


# --- population -----------------------------------------------------------------------------

def test_populate_of_file_mappings(mm):
    """GUP writes only to private writable mappings (populate_vma_page_range); a shared one is
    populated with read faults, read-only until written."""
    f = mm.machine.create_file(64 * K)
    fd = mm.open(f)
    s = Steps(mm)
    s(mm.mmap, B, 64 * K, RW, SHARED, fd, 0)
    s(mm.madvise, B, 64 * K, MADV_POPULATE_READ, want=(0, 12, 0, 64, 0))
    assert f.nr_dirty == 0
    s(mm.mmap, B + M, 64 * K, RW, PRIVATE, fd, 0)
    s(mm.madvise, B + M, 64 * K, MADV_POPULATE_WRITE, want=(0, 0, 64, 0, 0))
    s(mm.madvise, B + M + 64 * K - 4096, 8 * K, MADV_POPULATE_READ, want=(errno.ENOMEM, 0, 0, 0, 0))


# --- fork -------------------------------------------------------------------------------------------

def test_fork_of_private_file_mappings(mm):
    """vma_needs_copy(): only file VMAs with an anon_vma are copied, file PTEs with them; the
    child's shared COW copy is reused once the parent's goes (measured on the host kernel:
    the deltas of the child against its own start)."""
    f = mm.machine.create_file(4 * M)
    fd = mm.open(f)
    mm.mmap(B, 2 * M, RW, PRIVATE, fd, 0)
    read(mm, B, 64 * K)
    write(mm, B + 4 * K, 8 * K)
    mm.mmap(B + 2 * M, 64 * K, RW, SHARED, fd, 2 * M)
    read(mm, B + 2 * M, 64 * K)
    mm.mmap(B + G, 64 * K, R, PRIVATE, fd, 0)
    read(mm, B + G, 1)
    parent = mm.status()
    child = mm.fork()
    c = child.status()
    assert (parent["VmPTE"] - c["VmPTE"], parent["RssFile"] - c["RssFile"]) == (12, 128)
    assert c["RssAnon"] == parent["RssAnon"] == 8
    s = Steps(child)
    s(read, child, B, 64 * K)
    s(write, child, B + 4 * K, want=(0, 0, 0, 0, 0))
    s(write, child, B + 16 * K, want=(0, 0, 4, -4, 0))
    s(read, child, B + 2 * M, want=(0, 4, 0, 64, 0))
    s(read, child, B + G, want=(0, 8, 0, 64, 0))
    s(child.munmap, B, 2 * M, want=(0, -4, -12, -52, 0))
    mm.check()


# --- mprotect and merging ---------------------------------------------------------------------

def test_mprotect_write_upgrade_of_dirty_shared_pages(mm):
    """vma_wants_manual_pte_write_upgrade() for a write-notify mapping: mprotect back to RW
    makes dirty entries writable at once, clean ones stay read-only."""
    f = mm.machine.create_file(64 * K)
    fd = mm.open(f)
    mm.mmap(B, 64 * K, RW, SHARED, fd, 0)
    read(mm, B, 64 * K)
    write(mm, B)
    mm.mprotect(B, 64 * K, R)
    assert not mm.read_entry(B) & 2
    mm.mprotect(B, 64 * K, RW)
    assert mm.read_entry(B) & 2 and not mm.read_entry(B + 4 * K) & 2
    mm.check()


def test_file_vmas_merge_on_contiguous_offsets(mm):
    f = mm.machine.create_file(M)
    g = mm.machine.create_file(M)
    fd, gd = mm.open(f), mm.open(g)
    mm.mmap(B, 64 * K, R, SHARED, fd, 0)
    mm.mmap(B + 64 * K, 64 * K, R, SHARED, fd, 64 * K)       # contiguous: merges
    assert [v[:2] for v in mm.vmas()] == [(B, B + 128 * K)]
    mm.mmap(B + 128 * K, 64 * K, R, SHARED, fd, 256 * K)     # offset gap: no merge
    mm.mmap(B + 192 * K, 64 * K, R, SHARED, gd, 448 * K)     # another file: no merge
    mm.mmap(B + 256 * K, 64 * K, R, PRIVATE, gd, 512 * K)    # other flags: no merge
    assert len(mm.vmas()) == 4
    mm.check()


# --- check() ---------------------------------------------------------------------------------------

def test_check_counts_file_pages(mm):
    """check() recomputes RssFile and RssShmem from the page tables and the page-cache
    references (cache + mappings) over every mm of the machine."""
    f = mm.machine.create_file(M)
    sh = mm.machine.create_file(M, shmem=True)
    fd, sd = mm.open(f), mm.open(sh)
    mm.mmap(B, M, RW, PRIVATE, fd, 0)
    mm.mmap(B + G, M, RW, SHARED, sd, 0)
    read(mm, B, M)
    write(mm, B, 4 * K)
    read(mm, B + G, M)
    child = mm.fork()
    mm.check()
    child.check()
    st = mm.status()
    assert (st["RssAnon"], st["RssFile"], st["RssShmem"]) == (4, M // K - 4, M // K)
    child.exit()
    mm.exit()
    mm.check()


def test_check_counts_swap_of_unmapped_shmem_files(impl):
    """A shmem file's pages paged out to swap keep their slots while the file lives, mapped
    or not; its eviction frees them (shmem_evict_inode())."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    sh = machine.create_file(64 * K, shmem=True)
    fd = mm.open(sh)
    mm.mmap(B, 64 * K, RW, SHARED, fd, 0)
    read(mm, B, 64 * K)
    mm.madvise(B, 64 * K, MADV_PAGEOUT)
    # Written pages are dirty: each goes to a swap slot (R41).
    assert (machine.swap_used, sh.nr_cached, mm.status()["RssShmem"]) == (16, 0, 0)
    mm.munmap(B, 64 * K)
    mm.close(fd)
    mm.check()
    assert machine.swap_used == 16
    del sh
    gc.collect()
    assert machine.swap_used == 0
    mm.check()


def test_hugepage_advice_on_files(mm):
    """HUGEPAGE/NOHUGEPAGE only set flags; MADV_COLLAPSE of a disk file is EINVAL
    (thp_vma_allowable_order() needs CONFIG_READ_ONLY_THP_FOR_FS, not modelled)."""
    from ptreclaim.constants import MADV_COLLAPSE, MADV_HUGEPAGE, VM_HUGEPAGE
    f = mm.machine.create_file(4 * M)
    fd = mm.open(f)
    s = Steps(mm)
    s(mm.mmap, B, 4 * M, RW, SHARED, fd, 0)
    s(read, mm, B, 2 * M, want=(0, 12, 0, 2048, 0))
    s(mm.madvise, B, 4 * M, MADV_HUGEPAGE)
    assert mm.vmas()[0][2] & VM_HUGEPAGE
    s(mm.madvise, B, 4 * M, MADV_COLLAPSE, want=(errno.EINVAL, 0, 0, 0, 0))
    assert mm.huge_pmds() == []


def test_pageout_swaps_cow_copies_of_private_file_mappings(impl):
    """PAGEOUT of a private file mapping: the anonymous COW copies go to swap as anonymous
    memory does (RssAnon -1, VmSwap +1 each: R41), clean file pages leave the cache; the
    swap entries live in the file VMA and a read brings the copy back (do_swap_page)."""
    machine = impl.Machine(swap_pages=64)
    mm = impl.MM(machine=machine)
    f = machine.create_file(64 * K)
    fd = mm.open(f)
    mm.mmap(B, 64 * K, RW, PRIVATE, fd, 0)
    read(mm, B, 64 * K)
    write(mm, B, 8 * K)
    mm.madvise(B, 64 * K, MADV_PAGEOUT)
    st = mm.status()
    assert (st["RssAnon"], st["RssFile"], st["VmSwap"]) == (0, 0, 8)
    assert f.nr_cached == 16 - 14
    mm.check()
    read(mm, B, 4 * K)
    st = mm.status()
    assert (st["RssAnon"], st["VmSwap"]) == (4, 4)
    mm.check()
    child = mm.fork()
    child.check()
    mm.munmap(B, 64 * K)
    mm.check()


def test_mremap_move_places_a_disk_file_by_its_offset(mm):
    """vrm_set_new_addr() asks the file's get_unmapped_area with the moved range's page
    offset: thp_get_unmapped_area() for a disk file, the plain search for shmem (a private
    mapping of it gets no anonymous 2 MiB alignment either)."""
    from ptreclaim.constants import MREMAP_MAYMOVE
    f = mm.machine.create_file(8 * M)
    fd = mm.open(f)
    a = mm.mmap(B, 2 * M, R, PRIVATE, fd, 64 * K)
    mm.mmap(B + 2 * M, 4 * K, R, PRIVATE | MAP_ANONYMOUS, -1, 0)     # no growth in place
    read(mm, B, 64 * K)
    b = mm.mremap(a, 2 * M, 4 * M, MREMAP_MAYMOVE)
    assert b != a and (b - 64 * K) % (2 * M) == 0
    assert mm.status()["RssFile"] == 64
    sh = mm.machine.create_file(8 * M, shmem=True)
    sd = mm.open(sh)
    c = mm.mmap(B + G, 2 * M, R, PRIVATE, sd, 0)
    mm.mmap(B + G + 2 * M, 4 * K, R, PRIVATE | MAP_ANONYMOUS, -1, 0)
    d = mm.mremap(c, 2 * M, 4 * M, MREMAP_MAYMOVE)
    # The plain top-down search: right below the lowest mapping under mmap_base.
    assert d == min(v[0] for v in mm.vmas() if v[0] != d and v[0] >= 0x7f00_0000_0000) - 4 * M
    mm.check()
