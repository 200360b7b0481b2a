"""Microbenchmarks of the hot path, the compiled core and the reference model in one
group per operation. Every round starts from a fresh state built by the setup
function; extra_info["units"] says what one round did (tables, pages, iterations),
so per-unit costs can be compared across the two implementations even where the
reference model runs a smaller size to stay within the suite's time."""

import numpy as np
import pytest

from ptreclaim.constants import (
    MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_PRIVATE, PMD_SIZE,
    PROT_READ, PROT_WRITE,
)
from ptreclaim.demo import BASE, seed_experiment

ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE
RW = PROT_READ | PROT_WRITE
GIB = 1 << 30


def is_core(impl):
    return impl.__name__.endswith("_core")


def fresh(impl, size, touched=0, warm=False, **kwargs):
    """A new process with [BASE, BASE+size) mapped and its first `touched` bytes written.

    warm: first fault in and release 4 MiB far away, so frames and tables come
    from the machine's free lists as in a long-running process.
    """
    mm = impl.MM(**kwargs)
    mm.mmap(BASE, size, RW, ANON)
    if warm:
        far = BASE + (256 << 30)
        mm.mmap(far, 4 * PMD_SIZE, RW, ANON)
        mm.touch(far, 4 * PMD_SIZE)
        mm.munmap(far, 4 * PMD_SIZE)
    if touched:
        mm.touch(BASE, touched)
    return mm


# --- the PTRS_PER_PTE empty scan --------------------------------------------------------

def _scan_tables(kind, n):
    tables = np.zeros((n, 512), dtype=np.uint64)
    if kind == "first-present":
        tables[:, 0] = 0x8000000000000067 | (7 << 12)
    elif kind == "last-present":
        tables[:, 511] = 0x8000000000000067 | (7 << 12)
    return tables


@pytest.mark.parametrize("kind", ["all-none", "first-present", "last-present"])
def test_scan_empty(benchmark, impl, kind):
    benchmark.group = f"scan-{kind}"
    # 256 tables (1 MiB) stay in cache, so the scan is measured, not DRAM.
    n = 256
    tables = _scan_tables(kind, n)
    if is_core(impl):
        result = benchmark(impl._scan_empty, tables)
    else:
        rows = tables.tolist()
        result = benchmark(lambda: [impl.pte_table_empty(t) for t in rows])
    benchmark.extra_info["units"] = n
    assert list(result) == [kind == "all-none"] * n


# --- zap, fault, DONTNEED of one 2 MiB span ------------------------------------------------

@pytest.mark.parametrize("pattern", ["full", "sparse-8"])
def test_zap_pte_range(benchmark, impl, pattern):
    benchmark.group = f"zap-2M-{pattern}"

    def setup():
        mm = fresh(impl, 4 * PMD_SIZE, pt_reclaim=False)
        if pattern == "full":
            mm.touch(BASE, PMD_SIZE)
        else:
            for i in range(8):
                mm.touch(BASE + i * 64 * 4096)
        return (mm,), {}

    def zap(mm):
        mm.madvise(BASE, PMD_SIZE, MADV_DONTNEED)
        return mm

    mm = benchmark.pedantic(zap, setup=setup, rounds=200 if is_core(impl) else 20)
    benchmark.extra_info["units"] = 1
    assert mm.status()["RssAnon"] == 0 and mm.status()["VmPTE"] == 12


@pytest.mark.parametrize("write", [True, False], ids=["write", "read"])
def test_fault_in_2m(benchmark, impl, write):
    benchmark.group = f"fault-2M-{'write' if write else 'read'}"

    def setup():
        return (fresh(impl, 4 * PMD_SIZE, warm=True),), {}

    def fault(mm):
        mm.touch(BASE, PMD_SIZE, write=write)
        return mm

    mm = benchmark.pedantic(fault, setup=setup, rounds=200 if is_core(impl) else 20)
    benchmark.extra_info["units"] = 512
    assert mm.status()["RssAnon"] == (2048 if write else 0)


@pytest.mark.parametrize("case", ["reclaim", "no-reclaim", "unaligned"])
def test_dontneed_2m(benchmark, impl, case):
    benchmark.group = f"dontneed-2M-{case}"
    start = BASE + (PMD_SIZE // 2 if case == "unaligned" else 0)

    def setup():
        return (fresh(impl, 4 * PMD_SIZE, touched=2 * PMD_SIZE, pt_reclaim=case != "no-reclaim"),), {}

    def dontneed(mm):
        mm.madvise(start, PMD_SIZE, MADV_DONTNEED)
        return mm

    mm = benchmark.pedantic(dontneed, setup=setup, rounds=200 if is_core(impl) else 20)
    benchmark.extra_info["units"] = 1
    assert mm.status()["VmPTE"] == (12 if case == "reclaim" else 16)


# --- whole-process operations -------------------------------------------------------------------

def test_seed_loop_50g(benchmark, impl):
    """The seed experiment through the per-call API: 25,600 x (touch 2 MiB, DONTNEED)."""
    benchmark.group = "seed-loop-50G"
    iterations = 25600 if is_core(impl) else 2560
    result = benchmark.pedantic(
        lambda: seed_experiment(impl.MM, iterations=iterations), rounds=3 if is_core(impl) else 1)
    benchmark.extra_info["units"] = iterations
    assert result[1]["VmPTE"] == 4 * (1 + -(-iterations // 512))


def test_munmap_1g_populated(benchmark, impl):
    benchmark.group = "munmap-1G"

    def setup():
        return (fresh(impl, GIB, touched=GIB),), {}

    mm = benchmark.pedantic(lambda mm: (mm.munmap(BASE, GIB), mm)[1], setup=setup,
                            rounds=5 if is_core(impl) else 1)
    benchmark.extra_info["units"] = GIB // 4096
    assert mm.status()["VmPTE"] == 0 and mm.status()["VmRSS"] == 0


def test_exit_populated(benchmark, impl):
    benchmark.group = "exit-populated"
    size = 10 * GIB if is_core(impl) else GIB

    def setup():
        return (fresh(impl, size, touched=size),), {}

    mm = benchmark.pedantic(lambda mm: (mm.exit(), mm)[1], setup=setup, rounds=3 if is_core(impl) else 1)
    benchmark.extra_info["units"] = size // 4096
    assert mm.pgtables_bytes == 0


def test_bulk_touch_pages(benchmark, impl):
    """touch_pages() over random addresses in 4 GiB: the trace-driven API."""
    benchmark.group = "bulk-touch-pages"
    n = 1_000_000 if is_core(impl) else 50_000
    rng = np.random.default_rng(42)
    addrs = BASE + rng.integers(0, 4 * GIB, n).astype(np.uint64)
    writes = rng.random(n) < 0.7

    def setup():
        return (fresh(impl, 4 * GIB),), {}

    mm = benchmark.pedantic(lambda mm: (mm.touch_pages(addrs, writes), mm)[1], setup=setup,
                            rounds=3 if is_core(impl) else 1)
    benchmark.extra_info["units"] = n
    assert mm.status()["VmRSS"] > 0
    mm.check()
