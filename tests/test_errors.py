"""Bad input: Python type errors like the os module, Linux's errno for everything the
kernel would see, and no change to the simulated state after any error.

Every errno case is also made as a real syscall in this test process (in the empty
512 GiB slot at B, prepared the same way), so the expected errno is the host kernel's,
not ours."""

import errno
import os
import sys

import pytest

from ptreclaim.constants import (
    MADV_DONTNEED, MADV_FREE, MADV_HWPOISON, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE,
    MAP_GROWSDOWN, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, MAP_SHARED_VALIDATE, PROT_GROWSDOWN,
    PROT_GROWSUP, PROT_READ, PROT_WRITE, TASK_SIZE,
)

from rawsys import RawSyscalls

B = 0x2000_0000_0000
M = 1 << 20
U64 = (1 << 64) - 1
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE


def snapshot(mm):
    # The simulated state; mm.stats count work done (a failed madvise still
    # starts an mmu_gather, as the kernel does) and are not compared.
    return (mm.status(), mm.vmas(), list(mm.entries()), mm.tables())


# --- the host kernel, through raw syscalls ------------------------------------------------



class Host(RawSyscalls):
    """Raw syscalls in this process, confined to the 512 GiB slot at B."""

    def slot_is_empty(self):
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo < B + (512 << 30) and hi > B:
                    return False
        return True


@pytest.fixture
def host():
    if not sys.platform.startswith("linux"):
        pytest.skip("the host is not Linux: no kernel to compare errno with")
    h = Host()
    if not h.slot_is_empty():
        pytest.skip("the host process already has a mapping in the 512 GiB slot at 0x200000000000")
    assert h.call("mmap", B, 4 * M, RW, ANON | MAP_FIXED_NOREPLACE, U64, 0) == 0
    yield h
    h.call("munlock", B, 512 << 30)
    h.call("munmap", B, 512 << 30)


@pytest.fixture
def mm(MM):
    m = MM()
    assert m.mmap(B, 4 * M, RW, ANON | MAP_FIXED_NOREPLACE) == B
    m.touch(B, 2 * M)
    return m


def sim_errno(mm, name, *args):
    try:
        getattr(mm, name)(*args)
    except OSError as e:
        assert e.strerror == os.strerror(e.errno)
        return e.errno
    return 0


ERRNO_CASES = [
    # munmap (R20)
    ("munmap", (B + 1, 4096), errno.EINVAL),
    ("munmap", (B, 0), errno.EINVAL),
    ("munmap", (B, U64), errno.EINVAL),
    ("munmap", (B, U64 - 8191), errno.EINVAL),
    ("munmap", (TASK_SIZE, 4096), errno.EINVAL),
    ("munmap", (1 << 63, 4096), errno.EINVAL),
    ("munmap", (TASK_SIZE - 4096, 4097), errno.EINVAL),
    # mprotect
    ("mprotect", (B + 1, 4096, RW), errno.EINVAL),
    ("mprotect", (B + 1, 0, RW), errno.EINVAL),
    ("mprotect", (B, 0, 0x10), 0),
    ("mprotect", (B, U64, RW), errno.ENOMEM),
    ("mprotect", (B, U64 - 4095, RW), errno.ENOMEM),
    ("mprotect", (B, 4096, 0x10), errno.EINVAL),
    ("mprotect", (B, 4096, RW | PROT_GROWSDOWN | PROT_GROWSUP), errno.EINVAL),
    ("mprotect", (B, 4096, RW | PROT_GROWSDOWN), errno.EINVAL),
    ("mprotect", (B + 8 * M, 4096, PROT_READ), errno.ENOMEM),
    ("mprotect", (B - 4096, 8192, PROT_READ), errno.ENOMEM),
    # madvise (R33, SC-12)
    ("madvise", (B + 1, 4096, MADV_DONTNEED), errno.EINVAL),
    ("madvise", (B + 1, 0, MADV_DONTNEED), errno.EINVAL),
    ("madvise", (B, 0, MADV_DONTNEED), 0),
    ("madvise", (B, 0, 9999), errno.EINVAL),
    ("madvise", (B, 4096, 9999), errno.EINVAL),
    ("madvise", (B, 4096, MADV_HWPOISON), errno.EINVAL),
    ("madvise", (B, 4096, -1), errno.EINVAL),
    ("madvise", (B, U64, MADV_DONTNEED), errno.EINVAL),
    ("madvise", (B, U64 - 8191, MADV_DONTNEED), errno.EINVAL),
    ("madvise", (B + 8 * M, 2 * M, MADV_DONTNEED), errno.ENOMEM),
    ("madvise", (B + 8 * M, 2 * M, MADV_FREE), errno.ENOMEM),
    ("madvise", (TASK_SIZE, 4096, MADV_DONTNEED), errno.ENOMEM),
    # mlock / munlock
    ("mlock", (B, U64), 0),
    ("mlock", (B, U64 - 8191), errno.EINVAL),
    ("mlock", (B + 8 * M, 4096), errno.ENOMEM),
    ("munlock", (B, U64 - 8191), errno.EINVAL),
    ("munlock", (B + 8 * M, 4096), errno.ENOMEM),
    ("munlock", (B, 0), 0),
    # mmap (the anonymous cases)
    ("mmap", (B + 8 * M, 4096, RW, ANON | MAP_FIXED_NOREPLACE, -1, 1), errno.EINVAL),
    ("mmap", (B + 8 * M, 4096, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, -1, 0), errno.EBADF),
    ("mmap", (B + 8 * M, 0, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0), errno.EINVAL),
    ("mmap", (B + 8 * M, U64, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0), errno.ENOMEM),
    ("mmap", (B + 8 * M + 1, 4096, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0), errno.EINVAL),
    ("mmap", (B + 8 * M + 1, 4096, RW, ANON | MAP_FIXED, -1, 0), errno.EINVAL),
    ("mmap", (TASK_SIZE - 4096, 8192, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0), errno.ENOMEM),
    ("mmap", (1 << 56, 4096, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0), errno.ENOMEM),
    ("mmap", (B + M, 4096, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0), errno.EEXIST),
    ("mmap", (B + 3 * M, 2 * M, RW, ANON | MAP_FIXED_NOREPLACE, -1, 0), errno.EEXIST),
    ("mmap", (B + M, 4096, RW, MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0), errno.EEXIST),
    ("mmap", (B + 8 * M, 4096, RW, MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0), errno.EINVAL),
    ("mmap", (B + 8 * M, 4096, RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0),
     errno.EINVAL),
    ("mmap", (B + 8 * M, 4096, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_FIXED_NOREPLACE,
              -1, 0), errno.EINVAL),
    ("mmap", (B + 8 * M, 4096, RW, 0xF | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0), errno.EINVAL),
]


def _case_id(case):
    name, args, err = case
    return f"{name}{tuple(hex(a) if isinstance(a, int) and a > 4096 else a for a in args)}"


@pytest.mark.parametrize("case", ERRNO_CASES, ids=[_case_id(c) for c in ERRNO_CASES])
def test_errno_matches_host_kernel(mm, host, case):
    name, args, expected = case
    assert host.call(name, *args) == expected, "the expectation disagrees with this kernel"
    before = snapshot(mm)
    assert sim_errno(mm, name, *args) == expected
    if expected:
        assert snapshot(mm) == before
    mm.check()


@pytest.mark.parametrize("call", [
    lambda mm: mm.munmap("0", 4096),
    lambda mm: mm.munmap(B, 4096.0),
    lambda mm: mm.munmap(None, 4096),
    lambda mm: mm.mprotect(B, 4096, "rw"),
    lambda mm: mm.madvise(B, 4096, 4.0),
    lambda mm: mm.mmap(B, 4096, RW, "private"),
    lambda mm: mm.touch("B"),
    lambda mm: mm.mlock(B, [4096]),
])
def test_wrong_types_raise_type_error(mm, call):
    before = snapshot(mm)
    with pytest.raises(TypeError):
        call(mm)
    assert snapshot(mm) == before


@pytest.mark.parametrize("call", [
    lambda mm: mm.munmap(-4096, 4096),
    lambda mm: mm.munmap(B, -1),
    lambda mm: mm.munmap(1 << 64, 4096),
    lambda mm: mm.madvise(B, 1 << 64, MADV_DONTNEED),
    lambda mm: mm.madvise(B, 4096, 1 << 31),
    lambda mm: mm.madvise(B, 4096, -(1 << 31) - 1),
    lambda mm: mm.mprotect(B, 4096, 1 << 40),
    lambda mm: mm.mmap(0, 4096, RW, 1 << 32),
    lambda mm: mm.mmap(-1, 4096, RW, ANON),
    lambda mm: mm.touch(B, -4096),
    lambda mm: mm.mlock(1 << 70, 1),
])
def test_out_of_range_ints_raise_overflow_error(mm, call):
    before = snapshot(mm)
    with pytest.raises(OverflowError):
        call(mm)
    assert snapshot(mm) == before


def test_bools_are_ints(mm):
    # os functions accept bool where they take an int; so does the simulator.
    mm.madvise(B, True, MADV_DONTNEED)
    assert mm.status()["RssAnon"] == 2048 - 4


def test_touch_wrapping_range_is_a_value_error(mm):
    before = snapshot(mm)
    with pytest.raises(ValueError):
        mm.touch(B, U64)
    assert snapshot(mm) == before


def test_exited_mm_refuses_calls(MM):
    mm = MM()
    mm.exit()
    for call in (lambda: mm.mmap(0, 4096, RW, ANON), lambda: mm.touch(B),
                 lambda: mm.madvise(B, 4096, MADV_DONTNEED), lambda: mm.exit()):
        with pytest.raises(ValueError):
            call()
