"""5-level paging (LA57): MM(paging_levels=5).

The lab machine has no LA57, so the kernel cannot be the oracle here. Every
expected value comes from the 6.18 source, named in the comments:

* mm/memory.c __p4d_alloc(): allocates the P4D table and links it with
  pgd_populate() under page_table_lock, with no mm_inc_nr_*() call, while
  __pud_alloc() calls mm_inc_nr_puds(). A P4D table never counts in
  pgtables_bytes (VmPTE); R10's "would count" does not hold.
* mm/memory.c free_p4d_range(): frees the P4D table (pgd_clear(),
  p4d_free_tlb()) when floor and ceiling leave its whole PGDIR_SIZE region
  (256 TiB) free, again with no mm_dec_nr_*(); free_pud_range() frees a PUD
  table per P4D entry (512 GiB) with mm_dec_nr_puds().
* arch/x86/include/asm/page_64_types.h, processor.h: TASK_SIZE_MAX is
  2^56 - 4 KiB with LA57, DEFAULT_MAP_WINDOW stays 2^47 - 4 KiB.
* arch/x86/kernel/sys_x86_64.c arch_get_unmapped_area_topdown() and
  arch/x86/mm/mmap.c mmap_address_hint_valid(): a hint is used only if it fits
  below TASK_SIZE and does not cross DEFAULT_MAP_WINDOW; a hint above the window
  raises the search limit from mmap_base by TASK_SIZE_MAX - DEFAULT_MAP_WINDOW;
  mmap_base itself comes from task_size_64bit(0), the 4-level value.
* mm/mmap.c __get_unmapped_area(): ENOMEM when len > TASK_SIZE or the result
  does not end below TASK_SIZE; mm/mmap.c do_vmi_munmap(): EINVAL above TASK_SIZE.
"""

import errno

import pytest

from ptreclaim.constants import (
    DEFAULT_MAP_WINDOW, MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_PRIVATE,
    MREMAP_FIXED, MREMAP_MAYMOVE, PAGE_SIZE, PGDIR_SIZE, PGDIR_SIZE_LA57, PMD_SIZE, PROT_READ,
    PROT_WRITE, TASK_SIZE, TASK_SIZE_LA57,
)
from ptreclaim.demo import BASE, seed_experiment

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
KB = 1024
# The first address of the fifth 256 TiB region: only 5 levels reach it.
HIGH = 4 * PGDIR_SIZE_LA57
# mmap_base without ASLR (docs/api.md), the same with either paging mode.
MMAP_BASE = 0x7FFFF7FFF000


def mm5(MM, **kw):
    return MM(paging_levels=5, **kw)


def p4d_tables(mm):
    return [addr for level, addr in mm.tables() if level == "p4d"]


def test_paging_levels_argument(MM):
    assert MM().stats["p4d_tables_allocated"] == 0
    for bad in (3, 6, "5", 5.0, None, True):
        with pytest.raises(ValueError):
            MM(paging_levels=bad)


def test_first_touch_in_a_fresh_region_costs_12_kb(MM):
    # __p4d_alloc() links the P4D table uncounted; __pud_alloc(), __pmd_alloc()
    # and __pte_alloc() count theirs: +12 kB, as in a fresh 512 GiB slot with
    # 4 levels (SC-01), not +16 kB.
    mm = mm5(MM)
    low = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.touch(low)
    assert mm.status()["VmPTE"] == 12
    assert mm.stats["p4d_tables_allocated"] == 1
    addr = mm.mmap(HIGH, PAGE_SIZE, RW, ANON | MAP_FIXED_NOREPLACE)
    assert addr == HIGH
    # The mapping alone allocates nothing.
    assert mm.status()["VmPTE"] == 12 and p4d_tables(mm) == [0]
    mm.touch(addr)
    assert mm.status()["VmPTE"] == 24
    assert mm.stats["p4d_tables_allocated"] == 2
    assert mm.stats["pud_tables_allocated"] == 2
    assert p4d_tables(mm) == [0, HIGH]
    assert ("pud", HIGH) in mm.tables() and ("pte", HIGH) in mm.tables()
    # The top of the hierarchy first at one address.
    at_high = [level for level, a in mm.tables() if a == HIGH]
    assert at_high == ["p4d", "pud", "pmd", "pte"]
    mm.check()


def test_read_entry_p4d(MM):
    mm4, mm5_ = MM(), mm5(MM)
    addr = mm4.mmap(0, PAGE_SIZE, RW, ANON)
    assert mm5_.mmap(0, PAGE_SIZE, RW, ANON) == addr
    for mm in (mm4, mm5_):
        mm.touch(addr)
        # Folded (R2): with 4 levels the P4D entry is the PGD entry.
        assert mm.read_entry(addr, "p4d") != 0
        assert mm.read_entry(addr, "pte") != 0
    assert mm4.read_entry(addr, "p4d") == mm4.read_entry(addr, "pgd")
    # With 5 levels they are different tables' entries: the PGD points at the
    # P4D table, whose entry points at the PUD table.
    assert mm5_.read_entry(addr, "pgd") != mm5_.read_entry(addr, "p4d")
    assert mm5_.read_entry(HIGH, "pgd") == 0 and mm5_.read_entry(HIGH, "p4d") == 0
    with pytest.raises(ValueError):
        mm5_.read_entry(addr, "p5d")


def test_munmap_frees_the_p4d_table_with_its_region(MM):
    # free_pgd_range() -> free_p4d_range(): the PUD, PMD and PTE tables go
    # (-12 kB), then the P4D table, which changes no counter.
    mm = mm5(MM)
    mm.touch(mm.mmap(0, PAGE_SIZE, RW, ANON))
    addr = mm.mmap(HIGH, 2 * PMD_SIZE, RW, ANON | MAP_FIXED)
    mm.touch(addr, 2 * PMD_SIZE)
    assert mm.status()["VmPTE"] == 12 + 4 * 4
    mm.munmap(addr, 2 * PMD_SIZE)
    assert mm.status()["VmPTE"] == 12
    assert mm.stats["p4d_tables_freed"] == 1
    assert p4d_tables(mm) == [0]
    mm.check()


def test_p4d_table_stays_while_its_region_has_a_vma(MM):
    # free_p4d_range() tests floor and ceiling at PGDIR_SIZE (256 TiB), and
    # free_pud_range() at P4D_SIZE (512 GiB): a VMA elsewhere in the region
    # keeps the P4D table, not the PUD table of the emptied slot.
    mm = mm5(MM)
    a = mm.mmap(HIGH, PAGE_SIZE, RW, ANON | MAP_FIXED)
    b = mm.mmap(HIGH + 10 * PGDIR_SIZE, PAGE_SIZE, RW, ANON | MAP_FIXED)
    mm.touch(a)
    mm.touch(b)
    assert mm.status()["VmPTE"] == 24
    mm.munmap(b, PAGE_SIZE)
    assert mm.status()["VmPTE"] == 12
    assert mm.stats["pud_tables_freed"] == 1
    assert mm.stats["p4d_tables_freed"] == 0
    assert p4d_tables(mm) == [HIGH]
    mm.munmap(a, PAGE_SIZE)
    assert mm.status()["VmPTE"] == 0
    assert mm.stats["p4d_tables_freed"] == 1 and mm.tables() == []
    mm.check()


def test_exit_frees_every_p4d_table(MM):
    mm = mm5(MM)
    for base in (0, HIGH, 200 * PGDIR_SIZE_LA57):
        addr = mm.mmap(base or 0, PAGE_SIZE, RW, ANON | (MAP_FIXED if base else 0))
        mm.touch(addr)
    assert mm.stats["p4d_tables_allocated"] == 3
    assert mm.status()["VmPTE"] == 36
    mm.check()
    mm.exit()
    # exit_mmap(): free_pgtables() with floor 0 and ceiling 0 frees every
    # level; pgtables_bytes must be 0 (R15, R65).
    assert mm.pgtables_bytes == 0
    assert mm.stats["p4d_tables_freed"] == 3
    assert mm.tables() == []


def test_fork_copies_p4d_tables(MM):
    # copy_p4d_range(): p4d_alloc() in the child for every P4D entry range the
    # parent has under a VMA with an anon_vma; uncounted, as in the parent.
    mm = mm5(MM)
    low = mm.mmap(0, PAGE_SIZE, RW, ANON)
    high = mm.mmap(HIGH, PMD_SIZE, RW, ANON | MAP_FIXED)
    mm.touch(low)
    mm.touch(high, PMD_SIZE)
    child = mm.fork()
    assert child.tables() == mm.tables()
    assert child.pgtables_bytes == mm.pgtables_bytes == 24 * KB
    assert child.stats["p4d_tables_allocated"] == 2
    assert child.read_entry(high, "pte") & ~0x22 == mm.read_entry(high, "pte") & ~0x22
    # The child inherits the paging mode: it can map above 128 TiB too.
    assert child.mmap(HIGH + PGDIR_SIZE, PAGE_SIZE, RW, ANON | MAP_FIXED) == HIGH + PGDIR_SIZE
    child.touch(high)                       # breaks COW
    mm.check()
    child.check()
    child.exit()
    assert child.stats["p4d_tables_freed"] == child.stats["p4d_tables_allocated"]
    mm.check()


def test_fork_of_a_4_level_mm_stays_4_level(MM):
    mm = MM()
    mm.touch(mm.mmap(0, PAGE_SIZE, RW, ANON))
    child = mm.fork()
    with pytest.raises(OSError) as e:
        child.mmap(HIGH, PAGE_SIZE, RW, ANON | MAP_FIXED)
    assert e.value.errno == errno.ENOMEM
    assert child.stats["p4d_tables_allocated"] == 0


@pytest.mark.parametrize("levels", [4, 5])
def test_layout_below_128_tib_is_the_same(MM, levels):
    # mmap_base is computed from task_size_64bit(0) = DEFAULT_MAP_WINDOW with
    # or without LA57: without a high hint, 5 levels place mappings where 4 do.
    sizes = (PAGE_SIZE, 4 * PMD_SIZE, 3 * PAGE_SIZE, 5 * PMD_SIZE)
    mm = MM(paging_levels=levels)
    got = [mm.mmap(0, n, RW, ANON) for n in sizes]
    # A hint below the window that is free is taken with either mode.
    got.append(mm.mmap(1 << 40, PAGE_SIZE, RW, ANON))
    assert got[0] == MMAP_BASE - PAGE_SIZE and got[-1] == 1 << 40
    assert all(a < MMAP_BASE for a in got)
    four = MM(paging_levels=4)
    assert got == [four.mmap(0, n, RW, ANON) for n in sizes] + [four.mmap(1 << 40, PAGE_SIZE, RW, ANON)]


def test_hint_above_128_tib(MM):
    mm4, mm5_ = MM(), mm5(MM)
    # 4 levels: the hint does not fit below TASK_SIZE, the search starts at
    # mmap_base (mmap_address_hint_valid() fails; the raise is 0).
    assert mm4.mmap(HIGH, PAGE_SIZE, RW, ANON) == MMAP_BASE - PAGE_SIZE
    # 5 levels: a free hint above the window is taken as it is.
    assert mm5_.mmap(HIGH, PAGE_SIZE, RW, ANON) == HIGH
    # Taken: the search runs top-down below mmap_base + (TASK_SIZE_MAX -
    # DEFAULT_MAP_WINDOW), so the area lands right under that limit.
    high_limit = MMAP_BASE + TASK_SIZE_LA57 - DEFAULT_MAP_WINDOW
    assert mm5_.mmap(HIGH, PAGE_SIZE, RW, ANON) == high_limit - PAGE_SIZE
    assert mm5_.mmap(HIGH, PAGE_SIZE, RW, ANON) == high_limit - 2 * PAGE_SIZE
    addr = high_limit - 2 * PAGE_SIZE
    mm5_.touch(addr)
    assert mm5_.read_entry(addr, "pte") != 0
    mm5_.check()


def test_hint_across_the_window_is_not_taken(MM):
    # mmap_address_hint_valid(): (addr > DEFAULT_MAP_WINDOW) must equal
    # (addr + len > DEFAULT_MAP_WINDOW). A hint just below the window whose
    # mapping would cross it falls back to the search below mmap_base.
    mm = mm5(MM)
    hint = DEFAULT_MAP_WINDOW - PAGE_SIZE
    assert mm.mmap(hint, PAGE_SIZE, RW, ANON) == hint
    addr = mm.mmap(DEFAULT_MAP_WINDOW - 2 * PAGE_SIZE, 4 * PAGE_SIZE, RW, ANON)
    assert addr + 4 * PAGE_SIZE <= MMAP_BASE
    # MAP_FIXED skips the hint check: a mapping may cross 128 TiB then.
    assert mm.mmap(DEFAULT_MAP_WINDOW - PMD_SIZE, 2 * PMD_SIZE, RW, ANON | MAP_FIXED) \
        == DEFAULT_MAP_WINDOW - PMD_SIZE
    mm.touch(DEFAULT_MAP_WINDOW - PMD_SIZE, 2 * PMD_SIZE)
    mm.check()


@pytest.mark.parametrize("levels, top", [(4, TASK_SIZE), (5, TASK_SIZE_LA57)])
def test_errno_at_the_top(MM, levels, top):
    mm = MM(paging_levels=levels)
    # The last page below TASK_SIZE maps; one page more does not fit.
    assert mm.mmap(top - PAGE_SIZE, PAGE_SIZE, RW, ANON | MAP_FIXED) == top - PAGE_SIZE
    mm.touch(top - PAGE_SIZE)
    for addr, length, err in ((top, PAGE_SIZE, errno.ENOMEM),
                              (top - PAGE_SIZE, 2 * PAGE_SIZE, errno.ENOMEM),
                              (0, top + PAGE_SIZE, errno.ENOMEM)):
        with pytest.raises(OSError) as e:
            mm.mmap(addr, length, RW, ANON | MAP_FIXED)
        assert e.value.errno == err
    with pytest.raises(OSError) as e:
        mm.mmap(0, top + PAGE_SIZE, RW, ANON)
    assert e.value.errno == errno.ENOMEM
    # do_vmi_munmap(): start > TASK_SIZE or len > TASK_SIZE - start is EINVAL.
    for addr, length in ((top + PAGE_SIZE, PAGE_SIZE), (top - PAGE_SIZE, 2 * PAGE_SIZE)):
        with pytest.raises(OSError) as e:
            mm.munmap(addr, length)
        assert e.value.errno == errno.EINVAL
    # mremap_to(): a destination that does not end below TASK_SIZE is EINVAL.
    src = mm.mmap(0, PAGE_SIZE, RW, ANON)
    with pytest.raises(OSError) as e:
        mm.mremap(src, PAGE_SIZE, PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, top)
    assert e.value.errno == errno.EINVAL
    mm.munmap(top - PAGE_SIZE, PAGE_SIZE)
    mm.munmap(src, PAGE_SIZE)
    mm.check()
    assert mm.pgtables_bytes == 0 and mm.tables() == []


def test_mremap_moves_across_p4d_regions(MM):
    # move_vma(): move_page_tables() makes the destination's tables with
    # alloc_new_pud() (p4d_alloc() first), then the old range is unmapped and
    # free_pgtables() frees the source region's tables, its P4D table too.
    mm = mm5(MM)
    src = mm.mmap(0, 4 * PMD_SIZE, RW, ANON)
    mm.touch(src, 4 * PMD_SIZE)
    entries = [e for _, e in mm.entries()]
    assert mm.status()["VmPTE"] == 4 * (1 + 1 + 4)
    dst = mm.mremap(src, 4 * PMD_SIZE, 4 * PMD_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, HIGH)
    assert dst == HIGH
    assert [e for _, e in mm.entries()] == entries
    assert [a for a, _ in mm.entries()] == [HIGH + i * PAGE_SIZE for i in range(4 * 512)]
    assert mm.stats["p4d_tables_allocated"] == 2
    assert mm.stats["p4d_tables_freed"] == 1
    assert p4d_tables(mm) == [HIGH]
    assert mm.status()["VmPTE"] == 4 * (1 + 1 + 4)
    mm.check()


def test_pt_reclaim_frees_pte_tables_only(MM):
    # PT reclaim is unchanged: a full-span MADV_DONTNEED frees the PTE table
    # (SC-03), the PMD, PUD and P4D tables stay.
    mm = mm5(MM)
    addr = mm.mmap(HIGH, 2 * PMD_SIZE, RW, ANON | MAP_FIXED)
    mm.touch(addr, 2 * PMD_SIZE)
    assert mm.status()["VmPTE"] == 16
    mm.madvise(addr, PMD_SIZE, MADV_DONTNEED)
    assert mm.status()["VmPTE"] == 12
    assert mm.stats["pte_tables_freed_reclaim_fast"] + mm.stats["pte_tables_freed_reclaim_slow"] == 1
    assert p4d_tables(mm) == [HIGH]
    mm.check()


@pytest.mark.parametrize("gib", [1, 3])
def test_seed_loop_vmpte_with_5_levels(MM, gib):
    # §12's formula, 4 kB x (1 PUD + 1 PMD per GiB), holds unchanged: the P4D
    # table over BASE is linked but never counted (__p4d_alloc()).
    before, after, _ = seed_experiment(lambda: mm5(MM), size=gib << 30)
    assert before["VmPTE"] == 0
    assert after["VmPTE"] == 4 * (1 + gib)
    assert after["RssAnon"] == 0


def test_seed_loop_above_128_tib(MM):
    # The same loop in the fifth 256 TiB region: same VmPTE.
    mm = mm5(MM)
    size = 1 << 30
    addr = mm.mmap(HIGH + BASE % PGDIR_SIZE_LA57, size, RW, ANON | MAP_FIXED_NOREPLACE)
    for i in range(size // PMD_SIZE):
        mm.touch(addr + i * PMD_SIZE, PMD_SIZE)
        mm.madvise(addr + i * PMD_SIZE, PMD_SIZE, MADV_DONTNEED)
    assert mm.status()["VmPTE"] == 8
    assert p4d_tables(mm) == [HIGH]
    mm.check()
    mm.munmap(addr, size)
    assert mm.pgtables_bytes == 0 and mm.tables() == []
