"""check() can fail: each test corrupts one piece of state Linux keeps consistent and
asserts that check() raises InvariantError naming that invariant.

The reference is corrupted directly (it is plain Python). The core's state is C
structs; it offers a test-only hook, ``MM._corrupt(kind)``, for the same corruptions.
Until the core has it those tests are expected failures, not skips."""

import pytest

import ptreclaim._core as core
import ptreclaim._reference as ref
from ptreclaim import InvariantError
from ptreclaim.constants import (
    MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, PAGE_SHIFT,
    PMD_SHIFT, PROT_READ, PROT_WRITE, VM_LOCKED, VM_WRITE, _PAGE_RW,
)

B = 0x2000_0000_0000
M = 1 << 20
RW = PROT_READ | PROT_WRITE


def build(impl):
    """Four VMAs: [B,B+2M) written, [B+2M,B+3M) locked, [B+3M,B+4M), [B+8M,+64K) shared."""
    mm = impl.MM()
    mm.mmap(B, 4 * M, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE)
    mm.touch(B, 2 * M)
    mm.mmap(B + 8 * M, 64 << 10, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    mm.touch(B + 8 * M, 64 << 10)
    mm.mlock(B + 2 * M, M)
    assert len(mm.vmas()) == 4
    mm.check()
    return mm


# --- corrupting the reference by hand --------------------------------------------------

def _pte_table(mm, addr):
    return mm._walk_pte_table(addr)


def _frame_at(mm, addr):
    entry = _pte_table(mm, addr).entries[(addr >> PAGE_SHIFT) & 511]
    return mm._mem.frames[ref.pte_pfn(entry)]


def r_table_freed_but_linked(mm):
    mm._mem.free_table_pfn(_pte_table(mm, B).pfn)


def r_table_linked_twice(mm):
    pmd = mm._walk_pmd(B)
    i = ((B >> PMD_SHIFT) & 511) + 2  # the span at B+4M has no table of its own
    pmd.children[i] = pmd.children[i - 2]
    pmd.entries[i] = pmd.entries[i - 2]


def r_rss_anon_off_by_one(mm):
    mm._rss[ref.MM_ANONPAGES] += 1


def r_rss_shmem_off_by_one(mm):
    mm._rss[ref.MM_SHMEMPAGES] -= 1


def r_pte_maps_free_frame(mm):
    frame = _frame_at(mm, B)
    del mm._mem.frames[frame.pfn]
    mm._mem._free_pfns.append(frame.pfn)


def r_mapcount_off(mm):
    _frame_at(mm, B).mapcount += 1


def r_pgtables_bytes_off(mm):
    mm._pgtables_bytes += 4096


def r_locked_vm_off(mm):
    mm._locked_vm += 1


def r_vmas_overlap(mm):
    mm._vmas[0].end += 4096


def r_vmas_unmerged(mm):
    mm._vmas[1].flags &= ~VM_LOCKED
    mm._locked_vm -= mm._vmas[1].pages()


def r_pte_outside_vma(mm):
    mm._vmas[0].start += 4096
    mm._vmas[0].pgoff += 1
    mm._vmas_changed()


def r_writable_pte_in_read_only_vma(mm):
    mm._vmas[0].flags &= ~VM_WRITE  # the PTEs of [B, B+2M) stay writable


def r_anon_page_without_anon_vma(mm):
    mm._vmas[0].anon_vma = None


def r_vma_index_stale(mm):
    mm._vma_starts[0] += 4096


def r_state_after_exit(mm):
    mm._dead = True


def r_table_entry_points_elsewhere(mm):
    pmd = mm._walk_pmd(B)
    pmd.entries[(B >> PMD_SHIFT) & 511] ^= 1 << PAGE_SHIFT


def r_present_entry_outside_prot(mm):
    table = _pte_table(mm, B + 8 * M)
    table.entries[((B + 8 * M) >> PAGE_SHIFT) & 511] &= ~ref._PAGE_USER


REFERENCE_CORRUPTIONS = [
    (r_table_freed_but_linked, "table-freed"),
    # A table linked under a second entry has the wrong base for that one: found first.
    (r_table_linked_twice, "table-base"),
    (r_rss_anon_off_by_one, "rss"),
    (r_rss_shmem_off_by_one, "rss"),
    (r_pte_maps_free_frame, "frame"),
    (r_mapcount_off, "mapcount"),
    (r_pgtables_bytes_off, "pgtables_bytes"),
    (r_locked_vm_off, "locked_vm"),
    (r_vmas_overlap, "vma-order"),
    (r_vmas_unmerged, "vma-merge"),
    (r_pte_outside_vma, "pte-outside-vma"),
    (r_writable_pte_in_read_only_vma, "pte-prot"),
    (r_anon_page_without_anon_vma, "anon_vma"),
    (r_vma_index_stale, "vma-index"),
    (r_state_after_exit, "exit"),
    (r_table_entry_points_elsewhere, "table-link"),
    (r_present_entry_outside_prot, "pte-prot"),
]


@pytest.mark.parametrize("corrupt, invariant", REFERENCE_CORRUPTIONS,
                         ids=[c.__name__[2:] for c, _ in REFERENCE_CORRUPTIONS])
def test_reference_check_names_the_broken_invariant(corrupt, invariant):
    mm = build(ref)
    corrupt(mm)
    with pytest.raises(InvariantError) as info:
        mm.check()
    assert info.value.invariant == invariant


# --- corrupting the core through its hook ----------------------------------------------

CORE_INVARIANT = {
    "table_freed_but_linked": "a linked table is not in the linked state (freed but still linked?)",
    "table_linked_twice": "one table is linked twice",
    "rss_anon_off_by_one": "RssAnon equals the present entries of its kind",
    "rss_shmem_off_by_one": "RssShmem equals the present entries of its kind",
    "pte_maps_free_frame": "a PTE maps a free frame",
    "mapcount_off": "an anonymous page's mapcount equals its mappings in all mms",
    "pgtables_bytes_off": "pgtables_bytes equals 4096 x the tables linked and deposited",
    "locked_vm_off": "VmLck equals the size of the locked VMAs",
    "total_vm_off": "VmSize equals the size of the VMAs",
    "vmas_overlap": "VMAs are sorted and non-overlapping",
    "vmas_unmerged": "VMAs are merged where Linux would merge them",
    "pte_outside_vma": "a PTE maps an address outside every VMA",
    "page_prot_stale": "vm_page_prot follows vm_flags",
    "gathered_table_left": "a table is still waiting in an mmu_gather after the syscall",
}

_NO_HOOK = "waits for the core's corruption hook"


def _core_hook():
    if not hasattr(core.MM, "_corrupt"):
        pytest.xfail(_NO_HOOK)


@pytest.mark.parametrize("kind", sorted(CORE_INVARIANT))
def test_core_check_names_the_broken_invariant(kind):
    _core_hook()
    mm = build(core)
    mm._corrupt(kind)
    with pytest.raises(InvariantError) as info:
        mm.check()
    assert info.value.invariant == CORE_INVARIANT[kind]


def test_core_corruption_hook_refuses_unknown_kinds():
    _core_hook()
    with pytest.raises(ValueError):
        build(core)._corrupt("no such invariant")


@pytest.mark.parametrize("impl", [core, ref], ids=["core", "reference"])
def test_untouched_state_passes(impl):
    # The corruptions above start from this state; it must be one check() accepts.
    mm = build(impl)
    mm.check()
    # And a page written through a read-only PTE is impossible to reach via the API:
    # mprotect read-only must clear _PAGE_RW everywhere.
    mm.mprotect(B, 2 * M, PROT_READ)
    assert not any(e & _PAGE_RW for a, e in mm.entries(B, B + 2 * M))
    mm.check()
