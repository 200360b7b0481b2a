"""Shmem huge folios (R31, R44, SC-39): MADV_COLLAPSE of shmem, PMD mappings of a huge
folio in a shmem object's page cache, and every path that meets them.

The measured scenarios are tests/data/scenarios/shmem-thp-*.txt (Linux 6.18 with
shmem_enabled=never and no swap); here they run with check() after every operation, in
every process the script has made. The unit tests below cover what the scripts leave
open; their expected values follow from the same rules (cited per test).
"""

import errno
import pathlib
import re

import pytest

from ptreclaim import script as S
from ptreclaim.constants import (
    MADV_COLD,
    MADV_COLLAPSE,
    MADV_DONTNEED,
    MADV_NOHUGEPAGE,
    MADV_PAGEOUT,
    MADV_REMOVE,
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
)

SCENARIOS = pathlib.Path(__file__).parent / "data" / "scenarios"
SCRIPTS = sorted(SCENARIOS.glob("shmem-thp-*.txt"))
B = S.DEFAULT_BASE
K, M, G = 1 << 10, 1 << 20, 1 << 30
RW = PROT_READ | PROT_WRITE
SHARED_ANON = MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
PMD = 2 * M

EXPECT = re.compile(r"#\s*expect\s+(.*)$")


def expectations(path):
    out = []
    for line in path.read_text().splitlines():
        if S.parse_line(line) is not None:
            m = EXPECT.search(line)
            out.append(dict(kv.split("=", 1) for kv in m.group(1).split()))
    return out


CHECKS = []


class Checked:
    """An MM whose every call is followed by check() of every live process made so far
    (a fork returns a Checked child)."""

    def __init__(self, mm, procs):
        self._mm = mm
        self._procs = procs
        procs.append(mm)

    def __getattr__(self, name):
        attr = getattr(self._mm, name)
        if not callable(attr) or name in ("status", "check"):
            return attr

        def call(*args, **kwargs):
            try:
                ret = attr(*args, **kwargs)
            finally:
                for mm in self._procs:
                    mm.check()
                CHECKS.append(name)
            return Checked(ret, self._procs) if name == "fork" else ret

        return call


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_measured_script_with_check(impl, path):
    """Each measured script: errno and VmPTE/RssAnon/RssFile/RssShmem/VmSize deltas line
    by line, with check() after every operation."""
    ops = S.load(path)
    exp = expectations(path)
    mm = Checked(impl.MM(pt_reclaim=True, thp="madvise"), [])
    del CHECKS[:]
    results = S.run(ops, mm)
    assert len(CHECKS) >= len(ops)
    prev = dict.fromkeys(S.FIELDS, 0)
    for r, e in zip(results, exp, strict=True):
        d = r.delta
        step = {k: d[k] - prev[k] for k in S.FIELDS}
        prev = d
        got = {k: (S.errno_name(r.errno) if k == "errno" else step[k]) for k in e}
        want = {k: (v if k == "errno" else int(v)) for k, v in e.items()}
        assert got == want, f"line {r.op.lineno}: {r.op}"


# --- helpers ---------------------------------------------------------------------------------

def collapsed(impl, machine=None, prot=RW, flags=SHARED_ANON, addr=B, size=PMD):
    """A shared anonymous mapping written whole, then collapsed: one PMD (SC-39)."""
    mm = impl.MM(machine=machine) if machine is not None else impl.MM()
    mm.mmap(addr, size, prot, flags)
    mm.touch(addr, size, write=True)
    mm.madvise(addr, PMD, MADV_COLLAPSE)
    return mm


def shmem_file(impl, mm, size=4 * M):
    f = mm.machine.create_file(size, shmem=True, cached=False)
    return f, mm.open(f)


# --- the PMD and what reports it -----------------------------------------------------------

def test_status_tables_and_huge_pmds(impl):
    """A file PMD: ShmemPmdMapped 2048 kB, listed by huge_pmds(), no table in tables()
    (x86 deposits none for file THPs, R31)."""
    mm = collapsed(impl)
    st = mm.status()
    assert st["ShmemPmdMapped"] == 2048 and st["RssShmem"] == 2048 and st["VmPTE"] == 8
    assert [a for a, _ in mm.huge_pmds()] == [B]
    assert [lvl for lvl, _ in mm.tables()] == ["pud", "pmd"]
    mm.madvise(B, PMD, MADV_DONTNEED)
    assert mm.status()["ShmemPmdMapped"] == 0 and mm.huge_pmds() == []
    mm.check()


def test_collapse_of_regular_file_is_einval(impl):
    mm = impl.MM()
    f = mm.machine.create_file(2 * M)
    fd = mm.open(f)
    mm.mmap(B, PMD, PROT_READ, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    mm.touch(B, PMD, write=False)
    with pytest.raises(OSError) as e:
        mm.madvise(B, PMD, MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    mm.check()


def test_collapse_nohugepage_is_einval(impl):
    mm = impl.MM()
    mm.mmap(B, PMD, RW, SHARED_ANON)
    mm.touch(B, PMD, write=True)
    mm.madvise(B, PMD, MADV_NOHUGEPAGE)
    with pytest.raises(OSError) as e:
        mm.madvise(B, PMD, MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    assert mm.status()["VmPTE"] == 12 and mm.huge_pmds() == []
    mm.check()


def test_nohugepage_write_maps_whole_folio_by_ptes(impl):
    """A VMA that may not take a PMD: a shared write with the table all none maps all 512
    pages by PTEs (finish_fault(), spec C); a read maps them all too (whole-folio
    fault-around)."""
    mm = collapsed(impl)
    mm.madvise(B, PMD, MADV_NOHUGEPAGE)
    mm.madvise(B, PMD, MADV_DONTNEED)
    mm.touch(B + 8 * K, 1, write=True)
    st = mm.status()
    assert st["RssShmem"] == 2048 and st["VmPTE"] == 12 and mm.huge_pmds() == []
    mm.madvise(B, PMD, MADV_DONTNEED)  # PT reclaim frees the table
    assert mm.status()["VmPTE"] == 8
    mm.touch(B + 8 * K, 1, write=False)
    assert mm.status()["RssShmem"] == 2048 and mm.status()["VmPTE"] == 12
    mm.check()


def test_mprotect_whole_keeps_part_clears(impl):
    """change_huge_pmd() keeps a PMD that mprotect covers whole, with the new protection
    (a shared RW VMA's is writable: the write then needs no fault); a VMA boundary inside
    it clears it (R31, shmem-thp-sc39.txt, the mprotect line)."""
    mm = collapsed(impl, size=4 * M)  # the second 2 MiB stays in small pages
    mm.mprotect(B, PMD, PROT_READ)
    assert [a for a, _ in mm.huge_pmds()] == [B] and mm.status()["RssShmem"] == 4096
    assert not mm.read_entry(B, "pmd") & 2
    mm.mprotect(B, PMD, RW)
    assert mm.read_entry(B, "pmd") & 2
    faults = mm.stats["page_faults"]
    mm.touch(B, 1, write=True)
    assert mm.stats["page_faults"] == faults and [a for a, _ in mm.huge_pmds()] == [B]
    mm.mprotect(B + M, M, PROT_READ)
    st = mm.status()
    assert mm.huge_pmds() == [] and st["RssShmem"] == 2048 and st["VmPTE"] == 12
    mm.check()


def test_private_write_to_pmd_cows_one_page(impl):
    """wp_huge_pmd() in a private mapping: the PMD is cleared and do_cow_fault() maps one
    anonymous copy in a new table (shmem-thp-collapse.txt, the private mapping at 2G); the folio stays huge, so a
    read maps the rest of it by PTEs (line 8)."""
    mm = impl.MM()
    f, fd = shmem_file(impl, mm, 2 * M)
    mm.mmap(B, PMD, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    mm.touch(B, PMD, write=True)
    mm.madvise(B, PMD, MADV_COLLAPSE)
    mm.mmap(B + G, PMD, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0)
    mm.touch(B + G + 4 * K, 1, write=False)
    assert [a for a, _ in mm.huge_pmds()] == [B, B + G] and not mm.read_entry(B + G, "pmd") & 2
    mm.touch(B + G + 4 * K, 1, write=True)
    st = mm.status()
    assert [a for a, _ in mm.huge_pmds()] == [B] and st["RssAnon"] == 4 and st["RssShmem"] == 2048
    mm.touch(B + G, 1, write=False)
    assert mm.status()["RssShmem"] == 2048 + 2044
    mm.check()


# --- fork ------------------------------------------------------------------------------------

def test_fork_does_not_copy_file_pmd(impl):
    """copy_huge_pmd() leaves a file PMD to be faulted again in the child, even where the
    VMA is copied (an anon_vma from a COW copy elsewhere in it)."""
    mm = impl.MM()
    f, fd = shmem_file(impl, mm)
    mm.mmap(B, 4 * M, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    mm.touch(B, 4 * M, write=True)
    mm.madvise(B, 4 * M, MADV_COLLAPSE)
    mm.mmap(B + G, 4 * M, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0)
    mm.touch(B + G, 1, write=False)  # PMD, read-only
    mm.touch(B + G + 2 * M, 1, write=True)  # a COW copy: the VMA gets an anon_vma
    child = mm.fork()
    assert [a for a, _ in child.huge_pmds()] == []
    st = child.status()
    assert st["RssShmem"] == 0 and st["RssAnon"] == 4
    child.touch(B + G, 1, write=False)
    assert [a for a, _ in child.huge_pmds()] == [B + G] and child.status()["RssShmem"] == 2048
    mm.check()
    child.check()
    child.exit()
    mm.check()


# --- reclaim, hole punch ----------------------------------------------------------------------

def test_pageout_skips_folio_mapped_by_another_mm(impl):
    """folio_maybe_mapped_shared(): a folio another process maps is left alone, by PAGEOUT of
    the whole PMD and of part of it (spec A, D)."""
    mm = collapsed(impl)
    child = mm.fork()  # shared, no anon_vma: nothing copied
    child.touch(B, 1, write=False)  # the child maps the PMD too
    for length in (PMD, M):
        mm.madvise(B, length, MADV_PAGEOUT)
        mm.madvise(B, length, MADV_COLD)
        assert mm.status()["RssShmem"] == 2048 and child.status()["RssShmem"] == 2048
    child.exit()
    mm.madvise(B, M, MADV_COLD)  # only this mm now: split, every mapping goes
    assert mm.status()["RssShmem"] == 0
    mm.touch(B, 1, write=False)  # small folios now: the 16-page window
    assert mm.status()["RssShmem"] == 64 and mm.status()["VmPTE"] == 12
    mm.check()


def test_pageout_with_swap_writes_the_folio_out(impl):
    """PAGEOUT of a whole PMD with a swap device (simulator only): the folio is unmapped
    everywhere, split, and its 512 dirty pages go to swap as shmem_writeout() sends small
    pages; a read brings one back (a 4 KiB page: shmem_enabled=never)."""
    machine = impl.Machine(swap_pages=1024)
    mm = impl.MM(machine=machine)
    f, fd = shmem_file(impl, mm, 2 * M)
    mm.mmap(B, PMD, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    mm.touch(B, PMD, write=True)
    mm.madvise(B, PMD, MADV_COLLAPSE)
    mm.madvise(B, PMD, MADV_PAGEOUT)
    assert mm.status()["RssShmem"] == 0 and mm.huge_pmds() == []
    assert machine.swap_used == 512 and f.nr_cached == 0
    mm.check()
    mm.touch(B, 1, write=False)
    assert mm.status()["RssShmem"] == 4 and machine.swap_used == 511 and mm.huge_pmds() == []
    mm.check()


def test_collapse_reads_swapped_pages_back(impl):
    """collapse_file() with pages in swap: they are read back into the new folio (their
    slots freed), which is then mapped by the PMD."""
    machine = impl.Machine(swap_pages=1024)
    mm = impl.MM(machine=machine)
    f, fd = shmem_file(impl, mm, 2 * M)
    mm.mmap(B, PMD, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    mm.touch(B, 64 * K, write=True)
    mm.madvise(B, 64 * K, MADV_PAGEOUT)
    assert machine.swap_used == 16 and f.nr_cached == 0
    mm.madvise(B, PMD, MADV_COLLAPSE)
    assert machine.swap_used == 0 and f.nr_cached == 512
    assert [a for a, _ in mm.huge_pmds()] == [B] and mm.status()["RssShmem"] == 2048
    mm.check()


def test_remove_whole_folio_leaves_cache_whole(impl):
    """A hole covering a huge folio whole removes it whole; the rest of the object stays."""
    mm = impl.MM()
    f, fd = shmem_file(impl, mm, 4 * M)
    mm.mmap(B, 4 * M, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    mm.touch(B, 4 * M, write=True)
    mm.madvise(B, 4 * M, MADV_COLLAPSE)
    assert f.nr_cached == 1024 and mm.status()["RssShmem"] == 4096
    mm.madvise(B, PMD, MADV_REMOVE)
    assert f.nr_cached == 512 and mm.status()["RssShmem"] == 2048
    assert [a for a, _ in mm.huge_pmds()] == [B + PMD]
    mm.madvise(B + PMD + 4 * K, 4 * K, MADV_REMOVE)  # part of the second: split
    assert f.nr_cached == 511 and mm.status()["RssShmem"] == 0 and mm.huge_pmds() == []
    mm.check()


def test_remove_in_one_process_unmaps_the_folio_in_another(impl):
    """Split by a hole punch unmaps every mapping of the folio, in every process (spec A)."""
    mm = collapsed(impl)
    child = mm.fork()
    child.touch(B, 1, write=False)
    mm.madvise(B + M, 4 * K, MADV_REMOVE)
    assert mm.status()["RssShmem"] == 0 and child.status()["RssShmem"] == 0
    mm.check()
    child.check()


def test_collapse_out_of_frames_is_enomem(impl):
    machine = impl.Machine(max_frames=300, totalram_pages=1 << 20)
    mm = impl.MM(machine=machine)
    mm.mmap(B, PMD, RW, SHARED_ANON)
    mm.touch(B, 64 * K, write=True)
    with pytest.raises(OSError) as e:
        mm.madvise(B, PMD, MADV_COLLAPSE)
    assert e.value.errno == errno.ENOMEM
    assert mm.status()["RssShmem"] == 64 and mm.huge_pmds() == []
    mm.check()


def test_munmap_and_exit_free_everything(impl):
    mm = collapsed(impl, size=4 * M)
    mm.munmap(B, 4 * M)
    st = mm.status()
    assert st["VmPTE"] == 0 and st["RssShmem"] == 0 and st["ShmemPmdMapped"] == 0
    mm.check()
    mm2 = collapsed(impl)
    mm2.exit()
    mm2.check()
    assert mm2.pgtables_bytes == 0
