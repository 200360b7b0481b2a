"""The measured scenarios of §14, exact to the kB, against both implementations."""

import pytest

from ptreclaim.constants import (
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PMD_SIZE,
    PROT_READ,
    PROT_WRITE,
    VM_ACCOUNT,
)
from ptreclaim.errors import SegmentationFault

from scenarios import (
    SCENARIOS,
    seed_rcu_scenario,
    seed_scenario,
)

M = 1 << 20


def apply(mm, op, args, files=None):
    """Run one scenario operation. ``files`` maps the names of the files the
    scenario created to their (File, fd) in the process."""
    if op == "file":
        name, size, *options = args
        unknown = set(options) - {"ro", "shmem", "uncached"}
        if unknown:
            raise ValueError(f"unknown file options {sorted(unknown)}")
        f = mm.machine.create_file(size, shmem="shmem" in options, cached="uncached" not in options)
        fd = mm.open(f, write="ro" not in options)
        files[name] = (f, fd)
        return fd
    if op == "mmap_file":
        addr, length, prot, flags, name, offset = args
        return mm.mmap(addr, length, prot, flags, files[name][1], offset)
    if op == "close":
        (name,) = args
        return mm.close(files[name][1])
    if op == "mmap":
        return mm.mmap(*args)
    if op == "munmap":
        return mm.munmap(*args)
    if op == "mprotect":
        return mm.mprotect(*args)
    if op == "mlock":
        return mm.mlock(*args)
    if op == "munlock":
        return mm.munlock(*args)
    if op == "madvise":
        return mm.madvise(*args)
    if op == "mremap":
        return mm.mremap(*args)
    if op == "write":
        return mm.touch(*args, write=True)
    if op == "read":
        return mm.touch(*args, write=False)
    if op == "span_loop":
        base, spans, advice, nbytes = args
        for i in range(spans):
            mm.touch(base + i * PMD_SIZE, nbytes, write=True)
            mm.madvise(base + i * PMD_SIZE, PMD_SIZE, advice)
        return None
    if op == "span_poke":
        base, spans = args
        for i in range(spans):
            mm.touch(base + i * PMD_SIZE, 1, write=True)
        return None
    if op in FUTURE_OPS:
        method = getattr(mm, FUTURE_OPS[op], None)
        if method is None:
            raise NotImplementedError(f"the simulator has no {FUTURE_OPS[op]}() yet")
        return method(*args)
    raise ValueError(f"unknown operation {op!r}")


# Operations of the waiting scenarios, by the MM method they will call.
FUTURE_OPS = {"fork_child": "fork",
              "uffd_register_wp": "uffd_register_wp", "uffd_wp": "uffd_wp"}


def new_mm(impl, scenario):
    """The fresh process a scenario runs in, on the machine it names."""
    if scenario.machine is None:
        return impl.MM()
    return impl.MM(machine=impl.Machine(**scenario.machine))


def snapshot(mm):
    st = mm.status()
    return st["VmPTE"], st["RssAnon"], st["RssShmem"], st["RssFile"]


def run_scenario(mm, scenario, files=None):
    """Apply every row; return (row, expected, got) mismatches."""
    if files is None:
        files = {}
    for op, args in scenario.setup:
        apply(mm, op, args, files)
    mm.check()
    mismatches = []
    for row in scenario.steps:
        op, args, want_errno, *want_deltas = row
        before = snapshot(mm)
        try:
            apply(mm, op, args, files)
            got_errno = 0
        except OSError as exc:
            got_errno = exc.errno
        after = snapshot(mm)
        got = [got_errno] + [a - b for a, b in zip(after, before)]
        want = [want_errno] + list(want_deltas)
        if got != want:
            mismatches.append((op, args, want, got))
        mm.check()
    return mismatches


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario(impl, scenario):
    mm = new_mm(impl, scenario)
    assert run_scenario(mm, scenario) == []
    mm.exit()
    mm.check()
    assert mm.pgtables_bytes == 0


def test_seed_small(MM):
    """SC-44 (a) with 1 100 iterations: three 1 GiB regions, every table reclaimed."""
    mm = MM()
    assert run_scenario(mm, seed_scenario(1100)) == []
    stats = mm.stats
    assert stats["pte_tables_freed_reclaim_fast"] == 1100
    assert stats["pte_tables_freed_reclaim_slow"] == 0
    # One gather and one TLB flush per madvise call (R35, R59).
    assert stats["mmu_gathers"] == 1100
    assert stats["tlb_flushes"] == 1100


def test_seed_rcu_small(MM):
    """SC-44 (b) with 600 spans: one call frees them all; tables batch by 509."""
    mm = MM()
    assert run_scenario(mm, seed_rcu_scenario(600)) == []
    stats = mm.stats
    assert stats["pte_tables_freed_reclaim_fast"] == 600
    assert stats["table_batches"] == 2


def test_seed_without_reclaim(MM):
    """Without CONFIG_PT_RECLAIM every table stays (§12: 25 601 vs 0)."""
    mm = MM(pt_reclaim=False)
    scenario = seed_scenario(100)
    for op, args in scenario.setup:
        apply(mm, op, args)
    apply(mm, *scenario.steps[0][:2])
    assert mm.status()["VmPTE"] == 4 * (1 + 1 + 100)


def test_force_break_takes_slow_path(MM):
    """A batch-full break drops the PTE lock: only try_to_free_pte may free (R56)."""
    mm = MM()
    B = 0x200000000000
    mm.mmap(B, 40 * M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    mm.touch(B, 40 * M)
    mm.madvise(B, 40 * M, MADV_DONTNEED)
    stats = mm.stats
    # 7 + 19 * 509 = 9678 pages fit; the 10240 pages break once, in span 18.
    assert stats["pte_tables_freed_reclaim_slow"] == 1
    assert stats["pte_tables_freed_reclaim_fast"] == 19
    assert mm.status()["VmPTE"] == 8
    mm.check()


def test_mmap_null_alignment(MM):
    """SC-46 / R19: 2 MiB-multiple anonymous lengths are 2 MiB-aligned."""
    mm = MM()
    rw = PROT_READ | PROT_WRITE
    p = mm.mmap(0, 4 * M, rw, MAP_PRIVATE | MAP_ANONYMOUS)
    assert p % (2 * M) == 0
    q = mm.mmap(0, 3 * M, rw, MAP_PRIVATE | MAP_ANONYMOUS)
    assert q % (2 * M) != 0
    mm.touch(p, 4 * M)
    before = mm.status()["VmPTE"]
    mm.madvise(p, 2 * M, MADV_DONTNEED)
    assert mm.status()["VmPTE"] == before - 4
    assert all(flags & VM_ACCOUNT for _, _, flags, _ in mm.vmas())
    mm.check()


def test_segfault_reports_page(MM):
    mm = MM()
    B = 0x200000000000
    mm.mmap(B, 2 * M, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS)
    with pytest.raises(SegmentationFault) as info:
        mm.touch(B + 4096 + 5, 1, write=True)
    # the store is at the address given; later pages are stored to at their start
    assert info.value.address == B + 4096 + 5
    mm.touch(B, 8192, write=False)
    assert mm.status()["VmPTE"] == 12


def test_argument_types(MM):
    mm = MM()
    with pytest.raises(TypeError):
        mm.munmap(1.0, 4096)
    with pytest.raises(OverflowError):
        mm.munmap(-1, 4096)
    with pytest.raises(OverflowError):
        mm.madvise(0, 4096, 1 << 31)
    # bool is an int subclass and is accepted, as os functions do.
    mm.madvise(True - 1, False, 0)
