"""Pure-Python reference model of Linux 6.18 x86-64 user page tables.

This module is the executable specification and the test oracle for the
compiled core. It is written for clarity: plain lists, dicts and small
classes, one function per kernel step, each named after the kernel function
it simulates so that ``mm/memory.c``, ``mm/pt_reclaim.c``, ``mm/madvise.c``,
``mm/mmap.c``/``mm/vma.c``, ``mm/mprotect.c``, ``mm/mlock.c`` and
``mm/mmu_gather.c`` can be read side by side with it.

Rule numbers (``R12``) and scenarios (``SC-05``) refer to the behaviour spec,
``linux-mm-semantics.md``. Nothing here is shared with the core.

Modelled: private anonymous and shared anonymous (shmem) mappings, 4 KiB
faults, the zero page, fault-around, mprotect/mlock/munlock/munmap/exit,
every madvise advice of this kernel configuration, guard markers, PT reclaim
(fast and slow path) and the mmu_gather batching that decides between them,
fork (dup_mmap, copy_page_range) with copy-on-write, and anonymous
transparent huge pages: PMD-mapped THPs and the huge zero page with their
deposited PTE tables, PMD and folio splits, MADV_COLLAPSE (``docs/thp.md``).
Not modelled yet: files, shmem THPs, khugepaged, swap, hugetlb, userfaultfd.
The swap-format entry encoding leaves room for them.

There is no concurrency, so ``need_resched()`` never fires and the PMD
try-lock of the PT-reclaim fast path always succeeds (R57, R77); the slow
path runs only after a forced batch flush (R56).
"""

import bisect
import errno
import os

from .constants import (
    MADV_COLD,
    MADV_COLLAPSE,
    MADV_DODUMP,
    MADV_DOFORK,
    MADV_DONTDUMP,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_DONTNEED_LOCKED,
    MADV_FREE,
    MADV_GUARD_INSTALL,
    MADV_GUARD_REMOVE,
    MADV_HUGEPAGE,
    MADV_KEEPONFORK,
    MADV_MERGEABLE,
    MADV_NOHUGEPAGE,
    MADV_NORMAL,
    MADV_PAGEOUT,
    MADV_POPULATE_READ,
    MADV_POPULATE_WRITE,
    MADV_RANDOM,
    MADV_REMOVE,
    MADV_SEQUENTIAL,
    MADV_UNMERGEABLE,
    MADV_WILLNEED,
    MADV_WIPEONFORK,
    MAP_ANONYMOUS,
    MAP_DENYWRITE,
    MAP_DROPPABLE,
    MAP_EXECUTABLE,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_GROWSDOWN,
    MAP_HUGE_MASK,
    MAP_HUGE_SHIFT,
    MAP_HUGETLB,
    MAP_LOCKED,
    MAP_NONBLOCK,
    MAP_NORESERVE,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_SHARED_VALIDATE,
    MAP_STACK,
    MAP_SYNC,
    MAP_TYPE,
    MAP_UNINITIALIZED,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SHIFT,
    PMD_SIZE,
    PGDIR_SHIFT,
    PGDIR_SIZE,
    PROT_EXEC,
    PROT_GROWSDOWN,
    PROT_GROWSUP,
    PROT_READ,
    PROT_SEM,
    PROT_WRITE,
    PTE_PFN_MASK,
    PTRS_PER_PTE,
    PUD_SHIFT,
    PUD_SIZE,
    TASK_SIZE,
    VM_ACCOUNT,
    VM_DONTCOPY,
    VM_DONTDUMP,
    VM_DONTEXPAND,
    VM_EXEC,
    VM_GROWSDOWN,
    VM_HUGEPAGE,
    VM_HUGETLB,
    VM_IO,
    VM_LOCKED,
    VM_LOCKONFAULT,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_MERGEABLE,
    VM_MIXEDMAP,
    VM_MAYBE_GUARD,
    VM_NOHUGEPAGE,
    VM_NORESERVE,
    VM_PFNMAP,
    VM_RAND_READ,
    VM_READ,
    VM_SEQ_READ,
    VM_SHARED,
    VM_SYNC,
    VM_WIPEONFORK,
    VM_WRITE,
    ZERO_PFN,
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_NX,
    _PAGE_PSE,
    _PAGE_PCD,
    _PAGE_PRESENT,
    _PAGE_PROTNONE,
    _PAGE_PWT,
    _PAGE_RW,
    _PAGE_SPECIAL,
    _PAGE_TABLE,
    _PAGE_UFFD_WP,
    _PAGE_USER,
)
from .errors import InvariantError, OutOfMemory, SegmentationFault

__all__ = ["MM"]

# ---------------------------------------------------------------------------
# Kernel facts that are not ABI constants.
# ---------------------------------------------------------------------------

_U64 = (1 << 64) - 1
_PMD_MASK = ~(PMD_SIZE - 1) & _U64
_PUD_MASK = ~(PUD_SIZE - 1) & _U64
_PGDIR_MASK = ~(PGDIR_SIZE - 1) & _U64
_PAGE_MASK = ~(PAGE_SIZE - 1) & _U64

# Top-down mmap base of a process without ASLR (api.md).
MMAP_BASE = 0x7FFFF7FFF000
# Bottom-up fallback base: PAGE_ALIGN(TASK_SIZE / 3) (x86 __TASK_UNMAPPED_BASE).
_MMAP_LEGACY_BASE = ((TASK_SIZE // 3) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
# Effective mmap_min_addr (LSM value on the lab machine); hints below it are raised.
_MMAP_MIN_ADDR = 65536
# Stack guard gap below a VM_GROWSDOWN VMA (stack_guard_gap = 256 pages).
_STACK_GUARD_GAP = 256 << PAGE_SHIFT
# include/linux/mman.h LEGACY_MAP_MASK: the flags MAP_SHARED_VALIDATE accepts
# from any file (hugetlbfs adds none).
_LEGACY_MAP_MASK = (
    MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_DENYWRITE | MAP_EXECUTABLE | MAP_UNINITIALIZED
    | MAP_GROWSDOWN
    | MAP_LOCKED | MAP_NORESERVE | MAP_POPULATE | MAP_NONBLOCK | MAP_STACK | MAP_HUGETLB
)
# sysctl vm.max_map_count.
_MAX_MAP_COUNT = 65530
# fault_around_bytes = 64 KiB (R29).
_FAULT_AROUND_PAGES = 16
# A PMD-sized THP: 512 consecutive frames (HPAGE_PMD_NR).
HPAGE_PMD_NR = PMD_SIZE // PAGE_SIZE
# The huge zero page's frame; the small zero page is ZERO_PFN (docs/thp.md).
HUGE_ZERO_PFN = 2

# mmu_gather geometry (mm/mmu_gather.c, include/asm-generic/tlb.h) for 4 KiB
# pages and 8-byte pointers: the on-stack bundle, and each extra batch page
# holds (4096 - 16) / 8 encoded page pointers, at most 10000 / 510 of them.
MMU_GATHER_BUNDLE = 8
MAX_GATHER_BATCH = (PAGE_SIZE - 16) // 8
MAX_GATHER_BATCH_COUNT = 10000 // MAX_GATHER_BATCH
# A table batch is one page: an rcu_head, a count, then table pointers.
MAX_TABLE_BATCH = (PAGE_SIZE - 24) // 8

# Swap-format entries (R6): 5 type bits at the top, the offset inverted in
# bits 9..58. The PTE-marker type is always the highest one.
_SWP_TYPE_BITS = 5
_SWP_OFFSET_FIRST_BIT = 9
_SWP_OFFSET_BITS = 64 - _SWP_TYPE_BITS - _SWP_OFFSET_FIRST_BIT
_SWP_PTE_MARKER = 31
PTE_MARKER_UFFD_WP = 1 << 0
PTE_MARKER_POISONED = 1 << 1
PTE_MARKER_GUARD = 1 << 2

# _PAGE_CHG_MASK: what pte_modify() keeps from the old entry. The soft-dirty
# and saved-dirty bits are compiled out on the lab kernel (R3).
_PAGE_CHG_MASK = (
    PTE_PFN_MASK | _PAGE_PCD | _PAGE_PWT | _PAGE_SPECIAL | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_UFFD_WP | _PAGE_PSE
)

VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC
VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP
# Flags a merge keeps from either side and never lets stop a merge.
VM_STICKY = VM_MAYBE_GUARD
VM_LOCKED_MASK = VM_LOCKED | VM_LOCKONFAULT

# arch/x86/mm/pgprot.c protection_map, after __supported_pte_mask (NX supported).
_PAGE_NONE = _PAGE_ACCESSED | _PAGE_PROTNONE
_PAGE_SHARED = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX
_PAGE_SHARED_EXEC = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED
_PAGE_COPY = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX
_PAGE_COPY_EXEC = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED
_PAGE_READONLY = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX
_PAGE_READONLY_EXEC = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED

_PROTECTION_MAP = (
    _PAGE_NONE,  # ---
    _PAGE_READONLY,  # r--
    _PAGE_COPY,  # -w-
    _PAGE_COPY,  # rw-
    _PAGE_READONLY_EXEC,  # --x
    _PAGE_READONLY_EXEC,  # r-x
    _PAGE_COPY_EXEC,  # -wx
    _PAGE_COPY_EXEC,  # rwx
    _PAGE_NONE,  # shared ---
    _PAGE_READONLY,
    _PAGE_SHARED,
    _PAGE_SHARED,
    _PAGE_READONLY_EXEC,
    _PAGE_READONLY_EXEC,
    _PAGE_SHARED_EXEC,
    _PAGE_SHARED_EXEC,
)

# The madvise advice this kernel accepts (R33): no CONFIG_MEMORY_FAILURE, so
# no HWPOISON/SOFT_OFFLINE; KSM and THP are built in.
_MADV_VALID = frozenset(
    (
        MADV_NORMAL,
        MADV_RANDOM,
        MADV_SEQUENTIAL,
        MADV_WILLNEED,
        MADV_DONTNEED,
        MADV_FREE,
        MADV_REMOVE,
        MADV_DONTFORK,
        MADV_DOFORK,
        MADV_MERGEABLE,
        MADV_UNMERGEABLE,
        MADV_HUGEPAGE,
        MADV_NOHUGEPAGE,
        MADV_DONTDUMP,
        MADV_DODUMP,
        MADV_WIPEONFORK,
        MADV_KEEPONFORK,
        MADV_COLD,
        MADV_PAGEOUT,
        MADV_POPULATE_READ,
        MADV_POPULATE_WRITE,
        MADV_DONTNEED_LOCKED,
        MADV_COLLAPSE,
        MADV_GUARD_INSTALL,
        MADV_GUARD_REMOVE,
    )
)
# madvise_batch_tlb_flush(): one mmu_gather for the whole call (R35).
_MADV_BATCHED = frozenset((MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE))

# Page kinds and their RSS counter (R14).
MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES = 0, 1, 2, 3
_ANON = "anon"
_SHMEM = "shmem"
_KIND_COUNTER = {_ANON: MM_ANONPAGES, _SHMEM: MM_SHMEMPAGES}

# Table levels.
_PGD, _PUD, _PMD, _PTE = 0, 1, 2, 3
_LEVEL_NAMES = ("pgd", "pud", "pmd", "pte")
_LEVEL_SHIFT = (PGDIR_SHIFT, PUD_SHIFT, PMD_SHIFT, PAGE_SHIFT)

_STAT_KEYS = (
    "page_faults",
    "pte_tables_allocated",
    "pmd_tables_allocated",
    "pud_tables_allocated",
    "pte_tables_freed_reclaim_fast",
    "pte_tables_freed_reclaim_slow",
    "reclaim_slow_abandoned",
    "pte_tables_freed_unmap",
    "pmd_tables_freed",
    "pud_tables_freed",
    "tlb_flushes",
    "mmu_gathers",
    "table_batches",
    # Transparent huge pages (docs/thp.md).
    "thp_fault_alloc",
    "thp_zero_page",
    "thp_split_pmd",
    "thp_deposits_freed",
    "thp_collapse_alloc",
)


def _oserror(code):
    return OSError(code, os.strerror(code))


def _ulong(value):
    """A C ``unsigned long`` argument, checked the way ``os`` functions do."""
    if not isinstance(value, int):
        raise TypeError(f"an integer is required (got type {type(value).__name__})")
    if value < 0 or value > _U64:
        raise OverflowError("Python int too large to convert to C unsigned long")
    return int(value)


def _cint(value):
    if not isinstance(value, int):
        raise TypeError(f"an integer is required (got type {type(value).__name__})")
    if not -(1 << 31) <= value < (1 << 31):
        raise OverflowError("signed integer is greater than maximum")
    return int(value)


def _page_align(length):
    """PAGE_ALIGN() on a 64-bit size_t: may wrap to 0."""
    return (length + PAGE_SIZE - 1) & _PAGE_MASK


# ---------------------------------------------------------------------------
# Entry encoding (R3-R7)
# ---------------------------------------------------------------------------


def pte_none(pte):
    # x86 ignores A and D in non-present entries (Knights Landing erratum, R4).
    return (pte & ~(_PAGE_ACCESSED | _PAGE_DIRTY)) == 0


def pte_table_empty(entries):
    """The PTRS_PER_PTE scan: every entry of a PTE table is none."""
    return not any(not pte_none(e) for e in entries)


def pte_present(pte):
    # A PROT_NONE page is still present: P clear, PROTNONE set (R5).
    return bool(pte & (_PAGE_PRESENT | _PAGE_PROTNONE))


def _pte_needs_invert(val):
    # L1TF mitigation: a non-present, non-zero entry stores its PFN inverted.
    return val != 0 and not (val & _PAGE_PRESENT)


def pfn_pte(pfn, prot):
    pfn_bits = (pfn << PAGE_SHIFT) & PTE_PFN_MASK
    if _pte_needs_invert(prot):
        pfn_bits ^= PTE_PFN_MASK
    return pfn_bits | prot


def pte_pfn(pte):
    val = pte
    if _pte_needs_invert(val):
        val ^= PTE_PFN_MASK
    return (val & PTE_PFN_MASK) >> PAGE_SHIFT


def pte_modify(pte, newprot):
    """x86 pte_modify(): keep PFN, A, D, SPECIAL and cache bits (R21)."""
    val = (pte & _PAGE_CHG_MASK) | (newprot & ~_PAGE_CHG_MASK)
    # flip_protnone_guard(): re-invert the PFN when crossing PROT_NONE.
    if _pte_needs_invert(pte) != _pte_needs_invert(val):
        val ^= PTE_PFN_MASK
    return val


def make_pte_marker(bits):
    """A PTE_MARKER swap-format entry (R6, R7)."""
    offset = (~bits) & ((1 << _SWP_OFFSET_BITS) - 1)
    return (_SWP_PTE_MARKER << (64 - _SWP_TYPE_BITS)) | (offset << _SWP_OFFSET_FIRST_BIT)


def pte_to_swp_entry(pte):
    """(type, offset) of a non-present, non-none entry."""
    swp_type = pte >> (64 - _SWP_TYPE_BITS)
    offset = (~(pte >> _SWP_OFFSET_FIRST_BIT)) & ((1 << _SWP_OFFSET_BITS) - 1)
    return swp_type, offset


def is_guard_pte_marker(pte):
    if pte_none(pte) or pte_present(pte):
        return False
    swp_type, offset = pte_to_swp_entry(pte)
    return swp_type == _SWP_PTE_MARKER and offset == PTE_MARKER_GUARD


_GUARD_MARKER = make_pte_marker(PTE_MARKER_GUARD)


def pmd_trans_huge(pmd):
    """A PMD entry that maps 2 MiB itself (PSE): a THP or the huge zero page."""
    return bool(pmd & _PAGE_PSE)


def _huge_indexes(pmd_table):
    """The indexes of a PMD table's huge entries (a table link never has PSE)."""
    return [i for i, entry in enumerate(pmd_table.entries) if entry & _PAGE_PSE]


def vm_get_page_prot(vm_flags):
    return _PROTECTION_MAP[vm_flags & (VM_READ | VM_WRITE | VM_EXEC | VM_SHARED)]


def _pte_flags_need_flush(old, new):
    """x86 pte_needs_flush() for a present old entry (ignoring A)."""
    if pte_pfn(old) != pte_pfn(new):
        return True
    diff = (old ^ new) & ~(_PAGE_SPECIAL | _PAGE_UFFD_WP | (1 << 11) | (1 << 57) | (1 << 58))
    diff &= ~_PAGE_ACCESSED
    if diff & old & (_PAGE_DIRTY | _PAGE_PRESENT):
        return True
    flush_on_change = _PAGE_RW | _PAGE_USER | _PAGE_PWT | _PAGE_PCD | _PAGE_PSE | _PAGE_PROTNONE | _PAGE_NX
    flush_on_change |= 0xF << 59  # protection keys
    return bool(diff & flush_on_change)


# ---------------------------------------------------------------------------
# Simulated physical memory
# ---------------------------------------------------------------------------


class _Frame:
    """A 4 KiB data page: a small folio, or one of the 512 pages of a THP."""

    __slots__ = ("pfn", "kind", "refcount", "mapcount", "lazyfree", "dirty", "shmem", "index", "exclusive",
                 "written", "thp_index")

    def __init__(self, pfn, kind):
        self.pfn = pfn
        self.kind = kind
        self.refcount = 1
        self.mapcount = 0
        self.lazyfree = False
        self.dirty = False
        self.shmem = None
        self.index = None
        # PG_anon_exclusive: an anonymous page mapped by one process only, which
        # a write fault may reuse without looking further (R69).
        self.exclusive = False
        # A store by the CPU has reached the page, so it is not all zeroes. A
        # population (GUP) maps pages without storing to them; a COW or
        # collapse copy inherits it. A folio split maps the pages that were
        # never written to the shared zero page (docs/thp.md).
        self.written = False
        # Place in its THP (0..511) while the page belongs to one, else None.
        self.thp_index = None


class _GatherThp:
    """An mmu_gather entry that releases the PMD mapping's reference on a THP."""

    __slots__ = ("head",)

    def __init__(self, head):
        self.head = head


class _PhysMem:
    """Frame allocator. The zero pages are frames ZERO_PFN and HUGE_ZERO_PFN and
    are never allocated; a THP takes 512 consecutive frames."""

    def __init__(self, max_frames):
        self.max_frames = max_frames
        self.frames = {}  # pfn -> _Frame (data pages only)
        self._next_pfn = HUGE_ZERO_PFN + 1
        self._free_pfns = []
        # First frames of THPs freed whole: runs of 512 for the next THPs.
        self._free_blocks = []

    def _take_pfn(self):
        if self._free_pfns:
            return self._free_pfns.pop()
        pfn = self._next_pfn
        self._next_pfn += 1
        return pfn

    def alloc_table_pfn(self):
        # Page-table pages are not data frames: max_frames does not bound them.
        return self._take_pfn()

    def free_table_pfn(self, pfn):
        self._free_pfns.append(pfn)

    def alloc_frame(self, kind):
        if self.max_frames is not None and len(self.frames) >= self.max_frames:
            return None
        frame = _Frame(self._take_pfn(), kind)
        self.frames[frame.pfn] = frame
        return frame

    def folio_put(self, frame):
        frame.refcount -= 1
        if frame.refcount == 0:
            del self.frames[frame.pfn]
            self._free_pfns.append(frame.pfn)

    def alloc_thp(self):
        """A new anonymous THP as a PMD fault maps it: 512 exclusive pages, each
        with the PMD's reference and mapping. Its first pfn, or None if
        max_frames leaves no room for 512 frames."""
        if self.max_frames is not None and len(self.frames) + HPAGE_PMD_NR > self.max_frames:
            return None
        if self._free_blocks:
            head = self._free_blocks.pop()
        else:
            head = self._next_pfn
            self._next_pfn += HPAGE_PMD_NR
        for i in range(HPAGE_PMD_NR):
            frame = _Frame(head + i, _ANON)
            frame.mapcount = 1
            frame.exclusive = True
            frame.thp_index = i
            self.frames[head + i] = frame
        return head

    def put_thp(self, head):
        """Drop a PMD mapping's reference on each page of a THP. A THP nobody
        else holds goes back whole, as a run for a later THP."""
        pages = [self.frames[head + i] for i in range(HPAGE_PMD_NR)]
        for frame in pages:
            frame.refcount -= 1
        if not any(frame.refcount for frame in pages):
            for frame in pages:
                del self.frames[frame.pfn]
            self._free_blocks.append(head)
            return
        # Some pages are still mapped by PTEs elsewhere: the others go one by one.
        for frame in pages:
            if frame.refcount == 0:
                del self.frames[frame.pfn]
                self._free_pfns.append(frame.pfn)

    def thp_pages(self, head):
        """The pages still part of the THP that starts at head."""
        out = []
        for i in range(HPAGE_PMD_NR):
            frame = self.frames.get(head + i)
            if frame is not None and frame.thp_index == i:
                out.append(frame)
        return out


class _ShmemObject:
    """The shmem inode behind one MAP_SHARED|MAP_ANONYMOUS mmap (R28)."""

    __slots__ = ("pages", "nr_pages", "vma_refs")

    def __init__(self, nr_pages):
        self.pages = {}  # page index -> _Frame; the object holds one reference
        self.nr_pages = nr_pages
        self.vma_refs = 0


class _AnonVma:
    """Identity, and whether fork made it.

    VMAs may merge iff they share one, or one side has none and the other's
    was not made by fork (R22). anon_vma_fork() gives each child VMA a new
    anon_vma chained to the parent's, so the child VMA's anon_vma_chain is not
    singular: such a VMA never merges with a VMA lacking an anon_vma and never
    lends its anon_vma to a neighbour (vma_is_fork_child(),
    reusable_anon_vma()). Every VMA of an mm that uses a forked anon_vma has a
    non-singular chain, so the property belongs to the anon_vma here.
    """

    __slots__ = ("serial", "forked")

    def __init__(self, serial, forked=False):
        self.serial = serial
        self.forked = forked


# ---------------------------------------------------------------------------
# Page tables
# ---------------------------------------------------------------------------


class _Table:
    """One 4 KiB table page: 512 raw entries, plus the child tables they point to."""

    __slots__ = ("level", "pfn", "base", "entries", "children")

    def __init__(self, level, pfn, base):
        self.level = level
        self.pfn = pfn
        self.base = base
        self.entries = [0] * 512
        self.children = [None] * 512 if level < _PTE else None


class _Vma:
    __slots__ = ("start", "end", "flags", "pgoff", "anon_vma", "shmem")

    def __init__(self, start, end, flags, pgoff, anon_vma=None, shmem=None):
        self.start = start
        self.end = end
        self.flags = flags
        self.pgoff = pgoff
        self.anon_vma = anon_vma
        self.shmem = shmem

    def pages(self):
        return (self.end - self.start) >> PAGE_SHIFT

    def __repr__(self):
        return f"<vma {self.start:#x}-{self.end:#x} {self.flags:#x}>"


def vma_is_anonymous(vma):
    # Private anonymous memory only: shmem VMAs have vm_ops (R17).
    return vma.shmem is None


def vma_is_accessible(vma):
    return bool(vma.flags & VM_ACCESS_FLAGS)


class _ZapDetails:
    __slots__ = ("even_cows", "reclaim_pt", "drop_markers")

    def __init__(self, even_cows=False, reclaim_pt=False, drop_markers=False):
        self.even_cows = even_cows
        self.reclaim_pt = reclaim_pt
        self.drop_markers = drop_markers


def should_zap_cows(details):
    if details is None or details.reclaim_pt:
        return True
    return details.even_cows


class _FaultError(Exception):
    """A VM_FAULT_* error return of handle_mm_fault()."""

    def __init__(self, kind, address):
        super().__init__(kind)
        self.kind = kind  # "SIGSEGV" or "OOM"
        self.address = address


# ---------------------------------------------------------------------------
# mmu_gather (R35, R59)
# ---------------------------------------------------------------------------


class _MmuGather:
    """One struct mmu_gather. Pages and tables it holds are freed at flush time."""

    def __init__(self, mm, fullmm):
        self.mm = mm
        self.fullmm = fullmm
        # Set by anything that would make tlb_flush_mmu_tlbonly() flush:
        # cleared PTEs, freed tables (freed_tables/cleared_* in the kernel).
        self.need_flush = False
        # Page batches: [0] is the on-stack bundle, the others are batch pages
        # that stay allocated until tlb_finish_mmu().
        self.batch_max = [MMU_GATHER_BUNDLE]
        self.batch_nr = [0]
        self.active = 0
        self.batch_count = 0
        self.delayed_rmap = False
        self.pages = []
        self.table_batch = None


def tlb_gather_mmu(mm, fullmm=False):
    mm._stats["mmu_gathers"] += 1
    return _MmuGather(mm, fullmm)


def tlb_next_batch(tlb):
    # Delayed rmaps must stay within the batches tlb_flush_rmaps() walks.
    if tlb.delayed_rmap and tlb.active != 0:
        return False
    if tlb.active + 1 < len(tlb.batch_max):
        tlb.active += 1
        return True
    if tlb.batch_count == MAX_GATHER_BATCH_COUNT:
        return False
    tlb.batch_count += 1
    tlb.batch_max.append(MAX_GATHER_BATCH)
    tlb.batch_nr.append(0)
    tlb.active += 1
    return True


def tlb_remove_folio_pages(tlb, frame, delay_rmap):
    """__tlb_remove_folio_pages_size() for one small folio; True when full."""
    if delay_rmap:
        tlb.delayed_rmap = True
    tlb.pages.append(frame)
    active = tlb.active
    tlb.batch_nr[active] += 1
    # Keep room for a page plus an nr_pages entry in the active batch.
    if tlb.batch_nr[active] >= tlb.batch_max[active] - 1:
        if not tlb_next_batch(tlb):
            return True
    return False


def tlb_flush_mmu_tlbonly(tlb):
    if not tlb.need_flush:
        return
    tlb.mm._stats["tlb_flushes"] += 1
    tlb.need_flush = False


def tlb_flush_rmaps(tlb):
    tlb.delayed_rmap = False


def tlb_table_flush(tlb):
    if tlb.table_batch is not None:
        # The batch goes to call_rcu(); the tables are freed after a grace
        # period, which the model collapses to "now" (R59, R77).
        tlb.mm._stats["table_batches"] += 1
        for table in tlb.table_batch:
            tlb.mm._mem.free_table_pfn(table.pfn)
        tlb.table_batch = None


def tlb_remove_table(tlb, table):
    if tlb.table_batch is None:
        tlb.table_batch = []
    tlb.table_batch.append(table)
    if len(tlb.table_batch) == MAX_TABLE_BATCH:
        tlb_table_flush(tlb)


def tlb_batch_pages_flush(tlb):
    mem = tlb.mm._mem
    for frame in tlb.pages:
        if isinstance(frame, _GatherThp):
            mem.put_thp(frame.head)
        else:
            mem.folio_put(frame)
    tlb.pages = []
    for i in range(len(tlb.batch_nr)):
        tlb.batch_nr[i] = 0
    tlb.active = 0


def tlb_flush_mmu(tlb):
    tlb_flush_mmu_tlbonly(tlb)
    tlb_table_flush(tlb)
    tlb_batch_pages_flush(tlb)


def tlb_finish_mmu(tlb):
    tlb_flush_mmu(tlb)


def tlb_end_vma(tlb):
    # x86 selects MMU_GATHER_MERGE_VMAS: one flush serves all the VMAs of a
    # gather (only VM_PFNMAP ones, not simulated, flush at their end).
    return


def pte_free_tlb(tlb, table):
    tlb.need_flush = True
    tlb_remove_table(tlb, table)


# ---------------------------------------------------------------------------
# The mm
# ---------------------------------------------------------------------------


class Machine:
    """Simulated physical memory shared by the MMs on it (see ``docs/api.md``)."""

    def __init__(self, max_frames=None, totalram_pages=None):
        for name, value in (("max_frames", max_frames), ("totalram_pages", totalram_pages)):
            if value is not None:
                _ulong(value)
        if max_frames is not None and max_frames == 0:
            raise ValueError("max_frames must be positive or None")
        self.mem = _PhysMem(max_frames)
        # Overcommit mode 0 (OVERCOMMIT_GUESS) refuses one charge larger than
        # totalram_pages + total_swap_pages; by default max_frames, or no limit.
        self.totalram_pages = totalram_pages if totalram_pages is not None else max_frames
        # The live processes on this machine, in creation order: a shmem hole
        # punch unmaps the object from all of them, and check() adds up their
        # mappings of each frame.
        self.mms = []

    @property
    def frames_in_use(self):
        return len(self.mem.frames)


class MM:
    """One simulated process address space (``mm_struct``); see ``docs/api.md``."""

    def __init__(self, *, pt_reclaim=True, thp="madvise", max_frames=None, split_ptlocks=True,
                 machine=None):
        if thp not in ("never", "madvise", "always"):
            raise ValueError(f"thp must be 'never', 'madvise' or 'always', not {thp!r}")
        if pt_reclaim not in (True, False, "seed") or pt_reclaim is None:
            raise ValueError("pt_reclaim must be True, False or 'seed'")
        if machine is None:
            machine = Machine(max_frames)
        elif max_frames is not None:
            raise ValueError("give max_frames to the Machine, not to an MM on a shared one")
        self.machine = machine
        self.pt_reclaim = pt_reclaim
        self.split_ptlocks = bool(split_ptlocks)
        self.thp = thp
        self._mem = machine.mem
        self._pgd = _Table(_PGD, self._mem.alloc_table_pfn(), 0)
        self._pgtables_bytes = 0
        # Huge PMDs, each with a PTE table deposited for a later split and
        # counted in VmPTE, though linked nowhere (R13).
        self._nr_deposits = 0
        self._rss = [0, 0, 0, 0]
        self._locked_vm = 0
        self._vmas = []
        self._vma_starts = []
        self._anon_vma_serial = 0
        self._stats = dict.fromkeys(_STAT_KEYS, 0)
        # Boundaries (addresses) where Linux legitimately leaves two mergeable
        # VMAs unmerged: a MAP_FIXED that failed after splitting (vms_abort).
        self._unmerged_ok = set()
        self._dead = False
        machine.mms.append(self)

    def _overcommit_limit(self):
        limit = self.machine.totalram_pages
        return float("inf") if limit is None else limit

    # ------------------------------------------------------------------ VMAs

    def _vmas_changed(self):
        self._vma_starts = [v.start for v in self._vmas]

    def find_vma(self, addr):
        """First VMA with end > addr (the kernel's find_vma)."""
        i = bisect.bisect_right(self._vma_starts, addr) - 1
        if i >= 0 and self._vmas[i].end > addr:
            return self._vmas[i]
        i += 1
        return self._vmas[i] if i < len(self._vmas) else None

    def _vma_index(self, vma):
        i = bisect.bisect_left(self._vma_starts, vma.start)
        assert self._vmas[i] is vma
        return i

    def _vma_prev(self, vma):
        i = self._vma_index(vma)
        return self._vmas[i - 1] if i > 0 else None

    def _vma_next(self, vma):
        i = self._vma_index(vma)
        return self._vmas[i + 1] if i + 1 < len(self._vmas) else None

    def _vma_containing(self, addr):
        vma = self.find_vma(addr)
        if vma is not None and vma.start <= addr:
            return vma
        return None

    def _insert_vma(self, vma):
        i = bisect.bisect_left(self._vma_starts, vma.start)
        self._vmas.insert(i, vma)
        if vma.shmem is not None:
            vma.shmem.vma_refs += 1
        self._vmas_changed()

    def _remove_vma(self, vma):
        self._vmas.pop(self._vma_index(vma))
        self._vmas_changed()
        self._vma_put_file(vma)

    def _vma_put_file(self, vma):
        obj = vma.shmem
        if obj is not None:
            obj.vma_refs -= 1
            if obj.vma_refs == 0:
                # Last mapping gone: the shmem inode is evicted with its pages.
                for frame in obj.pages.values():
                    self._mem.folio_put(frame)
                obj.pages.clear()

    def _new_anon_vma(self):
        self._anon_vma_serial += 1
        return _AnonVma(self._anon_vma_serial)

    def __split_vma(self, vma, addr):
        """Split vma at addr; both halves keep the anon_vma and the file. A huge
        PMD that the new boundary would cut is split first."""
        self.split_huge_pmd_address(vma, addr)
        new = _Vma(addr, vma.end, vma.flags, vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT), vma.anon_vma, vma.shmem)
        vma.end = addr
        self._insert_vma(new)
        return new

    @staticmethod
    def _anon_vma_compatible_merge(a, b):
        """is_mergeable_anon_vma(): the same anon_vma, or one side has none and
        the other side's did not come from fork (vma_is_fork_child())."""
        if a is None:
            return b is None or not b.forked
        if b is None:
            return not a.forked
        return a is b

    @staticmethod
    def is_mergeable_vma(vma, flags, shmem):
        # Sticky flags (VM_MAYBE_GUARD) do not stop a merge; the result keeps them.
        return not ((vma.flags ^ flags) & ~VM_STICKY) and vma.shmem is shmem

    def can_vma_merge_left(self, prev, start, flags, shmem, pgoff, anon_vma):
        """can_vma_merge_left()/can_vma_merge_after(): merge [start, ..) into prev."""
        if prev is None or prev.end != start:
            return False
        if not self.is_mergeable_vma(prev, flags, shmem):
            return False
        if not self._anon_vma_compatible_merge(prev.anon_vma, anon_vma):
            return False
        return prev.pgoff + prev.pages() == pgoff

    def can_vma_merge_right(self, nxt, end, flags, shmem, pgoff, nr_pages, anon_vma, prev, merge_left):
        if nxt is None or nxt.start != end:
            return False
        if not self.is_mergeable_vma(nxt, flags, shmem):
            return False
        if not self._anon_vma_compatible_merge(nxt.anon_vma, anon_vma):
            return False
        if nxt.pgoff != pgoff + nr_pages:
            return False
        if not merge_left:
            return True
        # prev and next must also suit each other (no fork test here).
        return prev.anon_vma is None or nxt.anon_vma is None or prev.anon_vma is nxt.anon_vma

    def vma_modify_flags(self, vma, start, end, newflags):
        """vma_modify(): merge with neighbours if possible, else split (R22)."""
        left_side = start == vma.start
        right_side = end == vma.end
        # A boundary about to move inside the VMA, by a merge or a split, first
        # splits a huge PMD it would cut (vma_adjust_trans_huge()).
        if not left_side:
            self.split_huge_pmd_address(vma, start)
        if not right_side:
            self.split_huge_pmd_address(vma, end)
        prev = self._vma_prev(vma) if left_side else None
        nxt = self._vma_next(vma) if right_side else None
        pgoff = vma.pgoff + ((start - vma.start) >> PAGE_SHIFT)
        nr_pages = (end - start) >> PAGE_SHIFT
        merge_left = merge_right = False
        if not (newflags & VM_SPECIAL) and (left_side or right_side):
            if left_side:
                merge_left = self.can_vma_merge_left(prev, start, newflags, vma.shmem, pgoff, vma.anon_vma)
            if right_side:
                merge_right = self.can_vma_merge_right(
                    nxt, end, newflags, vma.shmem, pgoff, nr_pages, vma.anon_vma, prev, merge_left
                )
        if merge_left and merge_right:
            prev.end = nxt.end
            prev.flags |= (newflags | nxt.flags) & VM_STICKY
            if prev.anon_vma is None:
                prev.anon_vma = nxt.anon_vma or vma.anon_vma
            self._remove_vma(vma)
            self._remove_vma(nxt)
            return prev
        if merge_left:
            prev.flags |= newflags & VM_STICKY
            if prev.anon_vma is None:
                prev.anon_vma = vma.anon_vma
            prev.end = end
            if right_side:
                self._remove_vma(vma)
            else:
                vma.pgoff += (end - vma.start) >> PAGE_SHIFT
                vma.start = end
                self._vmas_changed()
            return prev
        if merge_right:
            nxt.flags |= newflags & VM_STICKY
            if nxt.anon_vma is None:
                nxt.anon_vma = vma.anon_vma
            nxt.pgoff -= nr_pages
            nxt.start = start
            if left_side:
                self._remove_vma(vma)
            else:
                vma.end = start
            self._vmas_changed()
            return nxt
        if vma.start < start:
            vma = self.__split_vma(vma, start)
        if vma.end > end:
            self.__split_vma(vma, end)
        vma.flags = newflags
        return vma

    def vma_merge_new_range(self, start, end, flags, pgoff):
        """vma_merge_new_range() for a new anonymous range; the VMA or None."""
        if flags & VM_SPECIAL:
            return None
        nxt = self.find_vma(start)
        prev = self._vma_prev(nxt) if nxt is not None else (self._vmas[-1] if self._vmas else None)
        if nxt is not None and nxt.start < end:
            return None
        nr_pages = (end - start) >> PAGE_SHIFT
        merge_left = self.can_vma_merge_left(prev, start, flags, None, pgoff, None)
        merge_right = self.can_vma_merge_right(nxt, end, flags, None, pgoff, nr_pages, None, prev, merge_left)
        if merge_left and merge_right:
            prev.end = nxt.end
            prev.flags |= nxt.flags & VM_STICKY
            if prev.anon_vma is None:
                prev.anon_vma = nxt.anon_vma
            self._remove_vma(nxt)
            return prev
        if merge_left:
            prev.end = end
            return prev
        if merge_right:
            nxt.start = start
            nxt.pgoff = pgoff
            self._vmas_changed()
            return nxt
        return None

    def find_mergeable_anon_vma(self, vma):
        """Reuse a neighbour's anon_vma if the VMAs could one day merge (R18)."""
        for other, a, b in ((self._vma_next(vma), vma, None), (self._vma_prev(vma), None, vma)):
            if other is None:
                continue
            a = a or other
            b = b or other
            compatible = (
                a.end == b.start
                and a.shmem is b.shmem
                and not ((a.flags ^ b.flags) & ~(VM_ACCESS_FLAGS | VM_STICKY))
                and b.pgoff == a.pgoff + ((b.start - a.start) >> PAGE_SHIFT)
            )
            # reusable_anon_vma(): only from a VMA whose anon_vma_chain is
            # singular, which a forked one never is.
            if compatible and other.anon_vma is not None and not other.anon_vma.forked:
                return other.anon_vma
        return None

    def anon_vma_prepare(self, vma):
        if vma.anon_vma is None:
            vma.anon_vma = self.find_mergeable_anon_vma(vma) or self._new_anon_vma()

    # ------------------------------------------------------- table allocation

    def _alloc_table(self, parent, index, level):
        table = _Table(level, self._mem.alloc_table_pfn(), parent.base + (index << _LEVEL_SHIFT[parent.level]))
        parent.children[index] = table
        parent.entries[index] = (table.pfn << PAGE_SHIFT) | _PAGE_TABLE
        # Counted when linked in (R10, R11).
        self._pgtables_bytes += PAGE_SIZE
        self._stats[("", "pud_tables_allocated", "pmd_tables_allocated", "pte_tables_allocated")[level]] += 1
        return table

    def __pud_alloc(self, addr):
        i = (addr >> PGDIR_SHIFT) & 511
        return self._pgd.children[i] or self._alloc_table(self._pgd, i, _PUD)

    def __pmd_alloc(self, pud, addr):
        i = (addr >> PUD_SHIFT) & 511
        return pud.children[i] or self._alloc_table(pud, i, _PMD)

    def __pte_alloc(self, pmd, addr):
        i = (addr >> PMD_SHIFT) & 511
        return pmd.children[i] or self._alloc_table(pmd, i, _PTE)

    def _walk_pmd(self, addr):
        pud = self._pgd.children[(addr >> PGDIR_SHIFT) & 511]
        if pud is None:
            return None
        return pud.children[(addr >> PUD_SHIFT) & 511]

    def _walk_pte_table(self, addr):
        pmd = self._walk_pmd(addr)
        if pmd is None:
            return None
        return pmd.children[(addr >> PMD_SHIFT) & 511]

    # ---------------------------------------------------------------- faults

    def handle_mm_fault(self, vma, addr, write):
        """__handle_mm_fault(): walk and allocate PUD/PMD, then the PMD or PTE path (R25, R27)."""
        self._stats["page_faults"] += 1
        pud = self.__pud_alloc(addr)
        pmd = self.__pmd_alloc(pud, addr)
        index = (addr >> PMD_SHIFT) & 511
        if pmd_trans_huge(pmd.entries[index]):
            # The hardware walk let the access through unless it is a write to
            # a write-protected huge PMD.
            return self.do_huge_pmd_wp_page(vma, pmd, index, addr)
        pte_table = pmd.children[index]
        if pte_table is None:
            if vma_is_anonymous(vma):
                # create_huge_pmd(): only where the PMD entry is none; a span
                # with a PTE table, even an empty one, keeps small pages.
                if self.thp_vma_allowable(vma, addr) and self.do_huge_pmd_anonymous_page(vma, pmd, index, write):
                    return None
                return self.do_anonymous_page(vma, pmd, None, addr, write)
            return self.do_fault(vma, pmd, None, addr, write)
        return self.handle_pte_fault(vma, pmd, pte_table, addr, write)

    def handle_pte_fault(self, vma, pmd, pte_table, addr, write):
        i = (addr >> PAGE_SHIFT) & 511
        pte = pte_table.entries[i]
        if pte_none(pte):
            if vma_is_anonymous(vma):
                return self.do_anonymous_page(vma, pmd, pte_table, addr, write)
            return self.do_fault(vma, pmd, pte_table, addr, write)
        if not pte_present(pte):
            return self.do_swap_page(vma, pte, addr)
        if write and not (pte & _PAGE_RW):
            return self.do_wp_page(vma, pte_table, i, pte, addr)
        # Spurious fault: the access bits are all that change.
        pte_table.entries[i] = pte | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
        return None

    def do_swap_page(self, vma, pte, addr):
        if is_guard_pte_marker(pte):
            # handle_pte_marker(): a guard region raises SIGSEGV (R43).
            raise _FaultError("SIGSEGV", addr)
        raise NotImplementedError("swap entries are not simulated")

    def do_anonymous_page(self, vma, pmd, pte_table, addr, write):
        """Private anonymous fault on a none PTE (R26)."""
        if pte_table is None:
            pte_table = self.__pte_alloc(pmd, addr)
        i = (addr >> PAGE_SHIFT) & 511
        prot = vm_get_page_prot(vma.flags)
        if not write:
            # Zero page: special, read-only, no RSS, no anon_vma (R9, R18).
            pte_table.entries[i] = pfn_pte(ZERO_PFN, prot) | _PAGE_SPECIAL
            return None
        self.anon_vma_prepare(vma)
        frame = self._mem.alloc_frame(_ANON)
        if frame is None:
            raise _FaultError("OOM", addr)
        entry = pfn_pte(frame.pfn, prot)
        if vma.flags & VM_WRITE:
            entry |= _PAGE_DIRTY | _PAGE_RW
        frame.mapcount = 1
        frame.exclusive = True
        self._rss[MM_ANONPAGES] += 1
        pte_table.entries[i] = entry
        return None

    def do_wp_page(self, vma, pte_table, i, pte, addr):
        """Write to a present read-only PTE in a writable VMA (R26, R69)."""
        pfn = pte_pfn(pte)
        frame = None if pte & _PAGE_SPECIAL else self._mem.frames.get(pfn)
        if frame is not None and frame.kind == _SHMEM:
            # A shared mapping's vm_page_prot is writable; nothing to copy.
            pte_table.entries[i] = pte | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_RW
            return None
        if frame is not None and frame.kind == _ANON and (frame.exclusive or self.wp_can_reuse_anon_folio(frame)):
            # wp_page_reuse(): the page is ours alone (again); no copy. A lazy-free
            # page stays so: its dirty PTE is what keeps reclaim from dropping it.
            frame.exclusive = True
            pte_table.entries[i] = pte | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_RW
            return None
        return self.wp_page_copy(vma, pte_table, i, frame, addr)

    @staticmethod
    def wp_can_reuse_anon_folio(frame):
        # Nobody else holds the page: the other process unmapped it or exited.
        # (No swap cache and no KSM here, so the only reference is our PTE's.)
        return frame.refcount == 1

    def wp_page_copy(self, vma, pte_table, i, old, addr):
        """Break COW: a fresh exclusive page replaces the zero page or a shared one."""
        self.anon_vma_prepare(vma)
        new = self._mem.alloc_frame(_ANON)
        if new is None:
            raise _FaultError("OOM", addr)
        new.mapcount = 1
        new.exclusive = True
        entry = pfn_pte(new.pfn, vm_get_page_prot(vma.flags)) | _PAGE_DIRTY
        if vma.flags & VM_WRITE:
            entry |= _PAGE_RW
        pte_table.entries[i] = entry
        if old is None:
            # The zero page had no RSS; the copy does.
            self._rss[MM_ANONPAGES] += 1
        else:
            # Anonymous to anonymous: RssAnon unchanged. Our mapping of the old
            # page and the reference it held go; the other process keeps it.
            # The copy holds the old page's data.
            new.written = old.written
            old.mapcount -= 1
            self._mem.folio_put(old)
        return None

    def do_fault(self, vma, pmd, pte_table, addr, write):
        """Shmem faults: do_read_fault / do_shared_fault (R28, R29, R30)."""
        if not write:
            return self.do_read_fault(vma, pmd, pte_table, addr)
        if not (vma.flags & VM_SHARED):
            raise NotImplementedError("private file mappings are not simulated")
        return self.do_shared_fault(vma, pmd, pte_table, addr)

    def _linear_page_index(self, vma, addr):
        return vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)

    def do_fault_around(self, vma, pmd, pte_table, addr):
        """Map the cached pages of the fault-around window (R29)."""
        pte_off = (addr >> PAGE_SHIFT) & 511
        vma_off = (addr - vma.start) >> PAGE_SHIFT
        nr = _FAULT_AROUND_PAGES
        from_pte = max(pte_off & ~(nr - 1), pte_off - min(pte_off, vma_off))
        to_pte = min(from_pte + nr, PTRS_PER_PTE, pte_off + vma.pages() - vma_off) - 1
        obj = vma.shmem
        base_index = self._linear_page_index(vma, addr) - pte_off
        found = [
            (j, obj.pages[base_index + j])
            for j in range(from_pte, to_pte + 1)
            if base_index + j in obj.pages
        ]
        if not found:
            # filemap_map_pages() installs the table only with a folio to map.
            return pte_table, False
        if pte_table is None:
            pte_table = self.__pte_alloc(pmd, addr)
        prot = vm_get_page_prot(vma.flags)
        mapped_fault_page = False
        for j, frame in found:
            if not pte_none(pte_table.entries[j]):
                continue
            pte_table.entries[j] = pfn_pte(frame.pfn, prot)
            frame.refcount += 1
            frame.mapcount += 1
            self._rss[MM_SHMEMPAGES] += 1
            if j == pte_off:
                mapped_fault_page = True
        return pte_table, mapped_fault_page

    def shmem_fault(self, vma, addr):
        obj = vma.shmem
        index = self._linear_page_index(vma, addr)
        frame = obj.pages.get(index)
        if frame is None:
            frame = self._mem.alloc_frame(_SHMEM)
            if frame is None:
                raise _FaultError("OOM", addr)
            frame.shmem = obj
            frame.index = index
            obj.pages[index] = frame
        return frame

    def finish_fault(self, vma, pmd, pte_table, addr, frame, write):
        if pte_table is None:
            pte_table = self.__pte_alloc(pmd, addr)
        i = (addr >> PAGE_SHIFT) & 511
        if not pte_none(pte_table.entries[i]):
            return
        entry = pfn_pte(frame.pfn, vm_get_page_prot(vma.flags))
        if write:
            entry |= _PAGE_DIRTY
            if vma.flags & VM_WRITE:
                entry |= _PAGE_RW
            frame.dirty = True
        pte_table.entries[i] = entry
        frame.refcount += 1
        frame.mapcount += 1
        self._rss[MM_SHMEMPAGES] += 1

    def do_read_fault(self, vma, pmd, pte_table, addr):
        pte_table, done = self.do_fault_around(vma, pmd, pte_table, addr)
        if done:
            return None
        frame = self.shmem_fault(vma, addr)
        self.finish_fault(vma, pmd, pte_table, addr, frame, False)
        return None

    def do_shared_fault(self, vma, pmd, pte_table, addr):
        # Write faults map only the faulting page: no fault-around (R28).
        frame = self.shmem_fault(vma, addr)
        self.finish_fault(vma, pmd, pte_table, addr, frame, True)
        return None

    def _access(self, vma, addr, write):
        """One CPU load/store: the hardware walk, then the fault handler."""
        # arch access_error(): reads need any access right, writes VM_WRITE.
        if write:
            if not (vma.flags & VM_WRITE):
                raise _FaultError("SIGSEGV", addr)
        elif not (vma.flags & VM_ACCESS_FLAGS):
            raise _FaultError("SIGSEGV", addr)
        table, i = self._leaf_entry(addr)
        if table is not None:
            entry = table.entries[i]
            if entry & _PAGE_PRESENT and (not write or entry & _PAGE_RW):
                # The CPU sets the accessed and dirty bits itself.
                table.entries[i] = entry | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
                if write:
                    self._mark_written(addr)
                return
        self.handle_mm_fault(vma, addr, write)
        if write:
            # The store the fault let through.
            self._mark_written(addr)

    def _leaf_entry(self, addr):
        """(table, index) of the entry that maps addr: a huge PMD, or a PTE;
        (None, None) if neither table exists."""
        pmd = self._walk_pmd(addr)
        if pmd is None:
            return None, None
        index = (addr >> PMD_SHIFT) & 511
        if pmd_trans_huge(pmd.entries[index]):
            return pmd, index
        table = pmd.children[index]
        if table is None:
            return None, None
        return table, (addr >> PAGE_SHIFT) & 511

    def _mark_written(self, addr):
        """A store reached the page mapped at addr: it is no longer all zeroes."""
        table, i = self._leaf_entry(addr)
        if table is None:
            return
        entry = table.entries[i]
        if not pte_present(entry) or entry & _PAGE_SPECIAL:
            return
        pfn = pte_pfn(entry)
        if table.level == _PMD:
            pfn += (addr >> PAGE_SHIFT) & 511
        self._mem.frames[pfn].written = True

    # ----------------------------------------------------------------- GUP

    def _gup_page_ok(self, addr, write):
        table, i = self._leaf_entry(addr)
        if table is None:
            return False
        entry = table.entries[i]
        if not (entry & _PAGE_PRESENT):
            return False
        return not write or bool(entry & _PAGE_RW)

    def _gup_mark_dirty(self, addr):
        table, i = self._leaf_entry(addr)
        if table.level == _PMD:
            # A population through a huge PMD records nothing (docs/thp.md).
            return
        frame = self.vm_normal_page(table.entries[i])
        if frame is not None:
            frame.dirty = True

    def __get_user_pages(self, vma, start, end, write):
        """Fault in [start, end) of one VMA; returns 0 or a negative errno."""
        for addr in range(start, end, PAGE_SIZE):
            if self._gup_page_ok(addr, write):
                if write:
                    # follow_page_pte() with FOLL_TOUCH|FOLL_WRITE dirties the folio,
                    # never the PTE: a lazy-free page is no longer discardable.
                    self._gup_mark_dirty(addr)
                continue
            try:
                self.handle_mm_fault(vma, addr, write)
            except _FaultError as exc:
                return -errno.ENOMEM if exc.kind == "OOM" else -errno.EFAULT
        return 0

    def populate_vma_page_range(self, vma, start, end):
        if vma.flags & VM_LOCKONFAULT:
            return 0
        if not vma_is_accessible(vma):
            return -errno.EFAULT
        # Break COW on private writable mappings; read-fault everything else.
        write = (vma.flags & (VM_WRITE | VM_SHARED)) == VM_WRITE
        return self.__get_user_pages(vma, start, end, write)

    def __mm_populate(self, start, length, ignore_errors):
        end = start + length
        nstart = start
        while nstart < end:
            vma = self.find_vma(nstart)
            if vma is None or vma.start >= end:
                break
            nend = min(end, vma.end)
            if vma.flags & (VM_IO | VM_PFNMAP):
                nstart = nend
                continue
            nstart = max(nstart, vma.start)
            ret = self.populate_vma_page_range(vma, nstart, nend)
            if ret < 0 and not ignore_errors:
                return ret
            nstart = nend
        return 0

    # ------------------------------------------------- transparent huge pages

    def thp_vma_allowable(self, vma, addr):
        """thp_vma_allowable_order() for a fault in private anonymous memory: the
        sysfs mode, the VMA's advice, and the aligned 2 MiB around addr inside
        the VMA (R27)."""
        if self.thp == "never" or not vma_is_anonymous(vma):
            return False
        if vma.flags & (VM_NOHUGEPAGE | VM_HUGETLB | VM_PFNMAP | VM_SHARED):
            return False
        if self.thp == "madvise" and not (vma.flags & VM_HUGEPAGE):
            return False
        haddr = addr & _PMD_MASK
        return vma.start <= haddr and haddr + PMD_SIZE <= vma.end

    def pgtable_trans_huge_deposit(self):
        """A PTE table from pte_alloc_one() set aside with a new huge PMD (R13)."""
        self._pgtables_bytes += PAGE_SIZE
        self._nr_deposits += 1
        self._stats["pte_tables_allocated"] += 1

    def zap_deposited_table(self):
        """The deposit of a huge PMD that goes away: freed at once, not via RCU."""
        self._pgtables_bytes -= PAGE_SIZE
        self._nr_deposits -= 1
        self._stats["thp_deposits_freed"] += 1

    @staticmethod
    def _huge_zero_pmd(vma):
        return pfn_pte(HUGE_ZERO_PFN, vm_get_page_prot(vma.flags) & ~_PAGE_RW) | _PAGE_PSE | _PAGE_SPECIAL

    @staticmethod
    def _thp_pmd(vma, head):
        entry = pfn_pte(head, vm_get_page_prot(vma.flags)) | _PAGE_PSE | _PAGE_DIRTY
        if vma.flags & VM_WRITE:
            entry |= _PAGE_RW
        return entry

    def do_huge_pmd_anonymous_page(self, vma, pmd, index, write):
        """A fault in an empty span of a THP-eligible VMA. False: no THP to be
        had (max_frames), the fault falls back to small pages."""
        # vmf_anon_prepare() comes first, for a read too: a VMA holding the huge
        # zero page has an anon_vma, so fork copies it (unlike the small one).
        self.anon_vma_prepare(vma)
        if not write:
            pmd.entries[index] = self._huge_zero_pmd(vma)
            self.pgtable_trans_huge_deposit()
            self._stats["thp_zero_page"] += 1
            return True
        head = self._mem.alloc_thp()
        if head is None:
            return False
        pmd.entries[index] = self._thp_pmd(vma, head)
        self.pgtable_trans_huge_deposit()
        self._rss[MM_ANONPAGES] += HPAGE_PMD_NR
        self._stats["thp_fault_alloc"] += 1
        return True

    def _thp_exclusive(self, head):
        """Only this PMD holds the THP: it is anon-exclusive, or each page has
        just the one reference and mapping."""
        pages = [self._mem.frames[head + i] for i in range(HPAGE_PMD_NR)]
        if pages[0].exclusive:
            return True
        return all(frame.refcount == 1 and frame.mapcount == 1 for frame in pages)

    def folio_maybe_mapped_shared(self, head):
        """Some page of the THP is mapped more than once (another process too)."""
        return any(frame.mapcount > 1 for frame in self._mem.thp_pages(head))

    def do_huge_pmd_wp_page(self, vma, pmd, index, addr):
        """A write to a write-protected huge PMD (R27, R69): the huge zero page
        becomes a THP (the deposit stays), a THP held by this PMD alone becomes
        writable; otherwise the PMD is split and the 4 KiB page written goes
        through the small-page write fault."""
        entry = pmd.entries[index]
        pfn = pte_pfn(entry)
        if pfn == HUGE_ZERO_PFN:
            head = self._mem.alloc_thp()
            if head is not None:
                pmd.entries[index] = self._thp_pmd(vma, head)
                self._rss[MM_ANONPAGES] += HPAGE_PMD_NR
                self._stats["thp_fault_alloc"] += 1
                return None
        elif self._thp_exclusive(pfn):
            for i in range(HPAGE_PMD_NR):
                self._mem.frames[pfn + i].exclusive = True
            pmd.entries[index] = entry | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED
            return None
        # VM_FAULT_FALLBACK: split, then the PTE-level write fault.
        self.split_huge_pmd(vma, pmd, index)
        table = pmd.children[index]
        i = (addr >> PAGE_SHIFT) & 511
        return self.do_wp_page(vma, table, i, table.entries[i], addr)

    def split_huge_pmd(self, vma, pmd, index):
        """__split_huge_pmd_locked() (R71): the deposit becomes the PMD's PTE
        table, with an entry for each of the 512 pages; VmPTE and RSS stay."""
        entry = pmd.entries[index]
        pfn = pte_pfn(entry)
        prot = vm_get_page_prot(vma.flags)
        table = _Table(_PTE, self._mem.alloc_table_pfn(), pmd.base + (index << PMD_SHIFT))
        if pfn == HUGE_ZERO_PFN:
            # __split_huge_zero_page_pmd(): 512 small zero-page entries.
            pte = pfn_pte(ZERO_PFN, prot & ~_PAGE_RW) | _PAGE_SPECIAL | (entry & _PAGE_UFFD_WP)
            table.entries = [pte] * PTRS_PER_PTE
        else:
            # Write, young, dirty and uffd-wp come from the PMD, the rest from
            # the VMA's protection.
            base = (prot & ~(_PAGE_RW | _PAGE_ACCESSED)) | (entry & (_PAGE_RW | _PAGE_ACCESSED))
            bits = entry & (_PAGE_DIRTY | _PAGE_UFFD_WP)
            table.entries = [pfn_pte(pfn + i, base) | bits for i in range(PTRS_PER_PTE)]
        pmd.children[index] = table
        pmd.entries[index] = (table.pfn << PAGE_SHIFT) | _PAGE_TABLE
        self._nr_deposits -= 1
        self._stats["thp_split_pmd"] += 1

    def split_huge_pmd_address(self, vma, addr):
        """vma_adjust_trans_huge(): before a VMA boundary moves to addr, a huge
        PMD that addr would cut is split."""
        if not addr & (PMD_SIZE - 1):
            return
        pmd = self._walk_pmd(addr)
        index = (addr >> PMD_SHIFT) & 511
        if pmd is not None and pmd_trans_huge(pmd.entries[index]):
            self.split_huge_pmd(vma, pmd, index)

    def zap_huge_pmd(self, tlb, vma, pmd, index, addr):
        """A zap that covers a huge PMD whole (R48): the deposit is freed at once,
        the THP waits in the gather, as one entry, like a small page."""
        entry = pmd.entries[index]
        pmd.entries[index] = 0
        tlb.need_flush = True
        self.zap_deposited_table()
        pfn = pte_pfn(entry)
        if pfn == HUGE_ZERO_PFN:
            return
        for i in range(HPAGE_PMD_NR):
            self._mem.frames[pfn + i].mapcount -= 1
        self._rss[MM_ANONPAGES] -= HPAGE_PMD_NR
        if tlb_remove_folio_pages(tlb, _GatherThp(pfn), False):
            tlb_flush_mmu(tlb)

    def copy_huge_pmd(self, dst, dst_pmd, index, vma, src_pmd):
        """fork of a huge PMD (R67): the child gets a deposit of its own and maps
        the same THP; both lose write access. The huge zero page is mapped anew."""
        entry = src_pmd.entries[index]
        pfn = pte_pfn(entry)
        dst.pgtable_trans_huge_deposit()
        if pfn == HUGE_ZERO_PFN:
            dst_pmd.entries[index] = self._huge_zero_pmd(vma)
            return
        for i in range(HPAGE_PMD_NR):
            frame = self._mem.frames[pfn + i]
            frame.refcount += 1
            frame.mapcount += 1
            frame.exclusive = False
        dst._rss[MM_ANONPAGES] += HPAGE_PMD_NR
        entry &= ~_PAGE_RW
        src_pmd.entries[index] = entry
        dst_pmd.entries[index] = entry & ~(_PAGE_ACCESSED | _PAGE_UFFD_WP)

    def _huge_pmds_in_range(self, start, end):
        """(pmd, index, addr, next) for each huge PMD of [start, end), where
        [addr, next) is the part of its span that the range covers."""
        addr = start
        while addr < end:
            nxt = min((addr + PMD_SIZE) & _PMD_MASK or end, end)
            pud = self._pgd.children[(addr >> PGDIR_SHIFT) & 511]
            if pud is None:
                addr = min((addr + PGDIR_SIZE) & _PGDIR_MASK or end, end)
                continue
            pmd = pud.children[(addr >> PUD_SHIFT) & 511]
            if pmd is None:
                addr = min((addr + PUD_SIZE) & _PUD_MASK or end, end)
                continue
            index = (addr >> PMD_SHIFT) & 511
            if pmd_trans_huge(pmd.entries[index]):
                yield pmd, index, addr, nxt
            addr = nxt

    def change_huge_pmd(self, tlb, vma, start, end, newprot, try_change_writable):
        """The huge-PMD step of change_pmd_range(): a huge PMD inside the range
        changes in place, one it covers in part is split (R21, R71)."""
        for pmd, index, addr, nxt in list(self._huge_pmds_in_range(start, end)):
            if nxt - addr != PMD_SIZE:
                self.split_huge_pmd(vma, pmd, index)
                continue
            old = pmd.entries[index]
            new = pte_modify(old, newprot)
            pfn = pte_pfn(old)
            if (try_change_writable and pfn != HUGE_ZERO_PFN and not (new & _PAGE_RW) and new & _PAGE_PRESENT
                    and self._mem.frames[pfn].exclusive):
                new |= _PAGE_RW
            pmd.entries[index] = new
            if old & _PAGE_PRESENT and _pte_flags_need_flush(old, new):
                tlb.need_flush = True

    def madvise_huge_pmds(self, tlb, vma, start, end, behavior):
        """The huge-PMD branches of madvise_free_pte_range() and
        madvise_cold_or_pageout_pte_range(). A THP that other processes map
        too, and the huge zero page, are left alone. A THP the range covers in
        part is split (split_folio()), and the PTE walk that follows does the
        rest (docs/thp.md)."""
        for pmd, index, addr, nxt in list(self._huge_pmds_in_range(start, end)):
            entry = pmd.entries[index]
            head = pte_pfn(entry)
            if head == HUGE_ZERO_PFN or self.folio_maybe_mapped_shared(head):
                continue
            span = addr & _PMD_MASK
            if nxt - addr != PMD_SIZE:
                self.split_folio(vma, head, span)
            elif behavior == MADV_FREE:
                # madvise_free_huge_pmd(): the whole THP becomes lazy-free.
                for frame in self._mem.thp_pages(head):
                    frame.dirty = False
                    frame.lazyfree = True
                if entry & (_PAGE_ACCESSED | _PAGE_DIRTY):
                    pmd.entries[index] = entry & ~(_PAGE_ACCESSED | _PAGE_DIRTY)
                    tlb.need_flush = True
            else:
                if entry & _PAGE_ACCESSED:
                    pmd.entries[index] = entry & ~_PAGE_ACCESSED
                    tlb.need_flush = True
                if behavior == MADV_PAGEOUT:
                    self.huge_pageout(vma, pmd, index, span)

    def huge_pageout(self, vma, pmd, index, span):
        """reclaim_pages() of a PMD-mapped THP with no swap device: a clean
        lazy-free THP is discarded whole with its deposit; any other cannot be
        swapped out whole, and shrink_folio_list() splits it."""
        entry = pmd.entries[index]
        head = pte_pfn(entry)
        first = self._mem.frames[head]
        if first.lazyfree and not (entry & _PAGE_DIRTY) and not first.dirty:
            pmd.entries[index] = 0
            # try_to_unmap_one(): one flush, as for a small page.
            self._stats["tlb_flushes"] += 1
            self.zap_deposited_table()
            self._rss[MM_ANONPAGES] -= HPAGE_PMD_NR
            for i in range(HPAGE_PMD_NR):
                self._mem.frames[head + i].mapcount -= 1
            self._mem.put_thp(head)
            return
        self.split_folio(vma, head, span)

    def split_folio(self, vma, head, span):
        """split_folio() of a THP that only this process maps, at span (by its
        PMD or by PTEs): it becomes 512 small pages, and remap_page() maps each
        one never written to the shared zero page instead, freeing it
        (RssAnon -4 each), unless the VMA of that page is mlocked."""
        pmd = self._walk_pmd(span)
        if pmd is None:
            return
        index = (span >> PMD_SHIFT) & 511
        if pmd_trans_huge(pmd.entries[index]):
            self.split_huge_pmd(vma, pmd, index)
        table = pmd.children[index]
        page_vma = None
        for frame in self._mem.thp_pages(head):
            i = frame.thp_index
            frame.thp_index = None
            if table is None or frame.written:
                continue
            # try_to_map_unused_to_zeropage() asks the VMA that maps the page:
            # earlier VMA splits may have left the THP across several.
            addr = span + (i << PAGE_SHIFT)
            if page_vma is None or not (page_vma.start <= addr < page_vma.end):
                page_vma = self._vma_containing(addr)
            if page_vma is None or page_vma.flags & VM_LOCKED:
                continue
            pte = table.entries[i]
            if not pte_present(pte) or pte & _PAGE_SPECIAL or pte_pfn(pte) != frame.pfn:
                continue
            zero = pfn_pte(ZERO_PFN, vm_get_page_prot(page_vma.flags) & ~_PAGE_RW) | _PAGE_SPECIAL
            table.entries[i] = zero | (pte & _PAGE_UFFD_WP)
            frame.mapcount -= 1
            self._rss[MM_ANONPAGES] -= 1
            self._mem.folio_put(frame)

    def large_folio_step(self, vma, table, i, span, start, end, split_whole):
        """The large-folio step of the MADV_FREE / COLD / PAGEOUT PTE walks for
        table.entries[i], a page of a PTE-mapped THP: "skip" if the THP is
        shared, "split" if it was split here (read the entry again), else None
        (treat the page as usual). A THP the range covers whole, mapped here
        whole, stays large unless split_whole (PAGEOUT with no swap)."""
        frame = self.vm_normal_page(table.entries[i])
        head = frame.pfn - frame.thp_index
        if self.folio_maybe_mapped_shared(head):
            return "skip"
        if not split_whole and start <= span and span + PMD_SIZE <= end:
            entries = table.entries
            if all(pte_present(entries[j]) and not entries[j] & _PAGE_SPECIAL and pte_pfn(entries[j]) == head + j
                   for j in range(PTRS_PER_PTE)):
                return None
        self.split_folio(vma, head, span)
        return "split"

    def madvise_collapse(self, vma, start, end):
        """R72: collapse the aligned 2 MiB spans inside [start, end) of one VMA.
        0, or the errno of the last span that failed (the others are collapsed
        all the same); ENOMEM stops at once."""
        if vma.shmem is not None:
            raise NotImplementedError("MADV_COLLAPSE of shared memory is not simulated (no shmem THP)")
        # thp_vma_allowable_order() for a forced collapse: the sysfs mode does not
        # matter, the VMA's own refusal does, and it must hold a whole span.
        if vma.flags & (VM_NOHUGEPAGE | VM_HUGETLB | VM_PFNMAP):
            return errno.EINVAL
        vstart = (vma.start + PMD_SIZE - 1) & _PMD_MASK
        if vstart + PMD_SIZE > vma.end:
            return errno.EINVAL
        last_fail = 0
        for haddr in range((start + PMD_SIZE - 1) & _PMD_MASK, end & _PMD_MASK, PMD_SIZE):
            ret = self.collapse_huge_page(vma, haddr)
            if ret == errno.ENOMEM:
                return ret
            if ret:
                last_fail = ret
        return last_fail

    def collapse_huge_page(self, vma, haddr):
        """One span: its pages are copied into a new THP, none and zero-page
        entries becoming zero-filled pages, and the PTE table turns into the
        deposit (VmPTE stays). No max_ptes_* limit applies. 0 if the span is
        (now) PMD-mapped, else its errno."""
        pmd = self._walk_pmd(haddr)
        index = (haddr >> PMD_SHIFT) & 511
        if pmd is None or not pmd.entries[index]:
            return errno.EINVAL  # SCAN_PMD_NULL
        if pmd_trans_huge(pmd.entries[index]):
            return 0  # SCAN_PMD_MAPPED: a THP or the huge zero page already
        table = pmd.children[index]
        if any(not pte_none(pte) and not pte_present(pte) for pte in table.entries):
            return errno.EINVAL  # a marker: SCAN_PTE_NON_PRESENT / SCAN_PTE_UFFD_WP
        head = self._mem.alloc_thp()
        if head is None:
            return errno.ENOMEM  # SCAN_ALLOC_HUGE_PAGE_FAIL
        if vma.anon_vma is None:
            # hugepage_vma_revalidate(expect_anon): a VMA that never had an
            # anonymous page (small zero pages only) cannot take a THP.
            for i in range(HPAGE_PMD_NR):
                self._mem.frames[head + i].mapcount = 0
            self._mem.put_thp(head)
            return errno.EINVAL  # SCAN_PAGE_ANON
        present = 0
        for i, pte in enumerate(table.entries):
            if pte_none(pte) or pte & _PAGE_SPECIAL:
                continue
            old = self.vm_normal_page(pte)
            present += 1
            self._mem.frames[head + i].written = old.written
            old.mapcount -= 1
            self._mem.folio_put(old)
        # The emptied table becomes the deposit: linked nowhere, still counted.
        pmd.children[index] = None
        self._mem.free_table_pfn(table.pfn)
        self._nr_deposits += 1
        pmd.entries[index] = self._thp_pmd(vma, head)
        self._rss[MM_ANONPAGES] += HPAGE_PMD_NR - present
        self._stats["tlb_flushes"] += 1  # pmdp_collapse_flush()
        self._stats["thp_collapse_alloc"] += 1
        return 0

    # ----------------------------------------------------------------- zap

    def unmap_page_range(self, tlb, vma, start, end, details):
        """Walk PGD/PUD/PMD entries of [start, end) and zap PTE tables (R47, R48)."""
        addr = start
        while addr < end:
            pgd_next = min((addr + PGDIR_SIZE) & _PGDIR_MASK or end, end)
            pud = self._pgd.children[(addr >> PGDIR_SHIFT) & 511]
            if pud is None:
                addr = pgd_next
                continue
            while addr < pgd_next:
                pud_next = min((addr + PUD_SIZE) & _PUD_MASK or pgd_next, pgd_next)
                pmd = pud.children[(addr >> PUD_SHIFT) & 511]
                if pmd is None:
                    addr = pud_next
                    continue
                self.zap_pmd_range(tlb, vma, pmd, addr, pud_next, details)
                addr = pud_next
        tlb_end_vma(tlb)

    def zap_pmd_range(self, tlb, vma, pmd, addr, end, details):
        while addr < end:
            nxt = min((addr + PMD_SIZE) & _PMD_MASK or end, end)
            index = (addr >> PMD_SHIFT) & 511
            if pmd_trans_huge(pmd.entries[index]):
                # A huge PMD goes whole, or is split and zapped as PTEs (R48, R71).
                if nxt - addr == PMD_SIZE:
                    self.zap_huge_pmd(tlb, vma, pmd, index, addr)
                    addr = nxt
                    continue
                self.split_huge_pmd(vma, pmd, index)
            if pmd.children[index] is not None:
                self.zap_pte_range(tlb, vma, pmd, addr, nxt, details)
            addr = nxt

    def reclaim_pt_is_enabled(self, start, end, details):
        # Only a zap of the whole 2 MiB span may free its table (R53).
        return self.pt_reclaim and details is not None and details.reclaim_pt and end - start >= PMD_SIZE

    def zap_pte_range(self, tlb, vma, pmd, addr, end, details):
        """Zap [addr, end) of one PTE table, then try PT reclaim (R49-R56)."""
        start = addr
        pmd_index = (addr >> PMD_SHIFT) & 511
        pte_table = pmd.children[pmd_index]
        entries = pte_table.entries
        can_reclaim_pt = self.reclaim_pt_is_enabled(start, end, details)
        # "seed": the patch as first merged, before the Feb-2025 fix, took the
        # fast path after any final pass that reached the end.
        seed_rules = self.pt_reclaim == "seed"
        direct_reclaim = True
        while True:  # "retry:" in the kernel, after a forced flush
            force_flush = False
            while addr != end:
                nr, any_skipped, flushed, full = self.do_zap_pte_range(tlb, vma, entries, addr, end, details)
                if any_skipped:
                    can_reclaim_pt = False
                force_flush = force_flush or flushed
                if full:
                    # The gather's page batch is full (R49): flush and resume;
                    # the PTE lock was dropped, so only the slow path may free.
                    force_flush = True
                    addr += nr * PAGE_SIZE
                    direct_reclaim = False
                    break
                addr += nr * PAGE_SIZE
            pmdval = None
            if seed_rules:
                direct_reclaim = True
            if can_reclaim_pt and direct_reclaim and addr == end:
                pmdval = self.try_get_and_clear_pmd(pmd, pmd_index)
                direct_reclaim = pmdval is not None
            if force_flush:
                tlb_flush_mmu_tlbonly(tlb)
                tlb_flush_rmaps(tlb)
                tlb_flush_mmu(tlb)
            if addr != end:
                continue
            break
        if can_reclaim_pt:
            if direct_reclaim:
                self.free_pte(tlb, pmdval, "pte_tables_freed_reclaim_fast")
            else:
                self.try_to_free_pte(tlb, pmd, pmd_index)

    def do_zap_pte_range(self, tlb, vma, entries, addr, end, details):
        """Zap one entry, or skip a run of none entries.

        Returns (nr, any_skipped, force_flush, batch_full).
        """
        i = (addr >> PAGE_SHIFT) & 511
        max_nr = (end - addr) >> PAGE_SHIFT
        nr = 0
        pte = entries[i]
        if pte_none(pte):
            # Skip all consecutive none PTEs in one step (R49).
            while nr < max_nr and pte_none(entries[i + nr]):
                nr += 1
            if nr == max_nr:
                return nr, False, False, False
            i += nr
            pte = entries[i]
        if pte_present(pte):
            skipped, flushed, full = self.zap_present_ptes(tlb, vma, entries, i, pte, details)
        else:
            skipped, flushed, full = self.zap_nonpresent_ptes(tlb, vma, entries, i, pte, details)
            flushed = False
        return nr + 1, skipped, flushed, full

    def vm_normal_page(self, pte):
        if pte & _PAGE_SPECIAL:
            return None
        return self._mem.frames[pte_pfn(pte)]

    def zap_present_ptes(self, tlb, vma, entries, i, pte, details):
        frame = self.vm_normal_page(pte)
        if frame is None:
            # Zero page: just clear it; it has no struct page to free (R50).
            entries[i] = 0
            tlb.need_flush = True
            return False, False, False
        if not (should_zap_cows(details) or frame.kind != _ANON):
            return True, False, False
        force_flush = False
        delay_rmap = False
        if frame.kind != _ANON:
            if pte & _PAGE_DIRTY:
                frame.dirty = True
                # Dirty shared PTEs: flush the TLB before the rmap goes (R51).
                delay_rmap = True
                force_flush = True
        self._rss[_KIND_COUNTER[frame.kind]] -= 1
        entries[i] = 0
        tlb.need_flush = True
        frame.mapcount -= 1
        full = tlb_remove_folio_pages(tlb, frame, delay_rmap)
        return False, force_flush, full

    def zap_nonpresent_ptes(self, tlb, vma, entries, i, pte, details):
        swp_type, offset = pte_to_swp_entry(pte)
        if swp_type == _SWP_PTE_MARKER:
            if offset & PTE_MARKER_GUARD:
                # Guard markers survive everything but munmap/exit (R43, R50).
                if details is None or not details.drop_markers:
                    return True, False, False
            elif offset & PTE_MARKER_UFFD_WP:
                if not vma_is_anonymous(vma) and not (details is not None and details.drop_markers):
                    return True, False, False
            elif not should_zap_cows(details):
                return True, False, False
            entries[i] = 0
            return False, False, False
        raise NotImplementedError("swap entries are not simulated")

    def try_get_and_clear_pmd(self, pmd, pmd_index):
        """Fast path (R55): try the PMD lock while holding the PTE lock.

        Without split page-table locks both locks are mm->page_table_lock,
        already held, so the try fails (R57); with them there is no
        contention in a single-threaded simulation.
        """
        if not self.split_ptlocks:
            return None
        table = pmd.children[pmd_index]
        pmd.children[pmd_index] = None
        pmd.entries[pmd_index] = 0
        return table

    def free_pte(self, tlb, table, stat):
        pte_free_tlb(tlb, table)
        # VmPTE drops at unlink time, before the RCU free (R12).
        self._pgtables_bytes -= PAGE_SIZE
        self._stats[stat] += 1

    def try_to_free_pte(self, tlb, pmd, pmd_index):
        """Slow path (R56): re-check all 512 entries under the PMD lock."""
        table = pmd.children[pmd_index]
        if table is None or not pte_table_empty(table.entries):
            self._stats["reclaim_slow_abandoned"] += 1
            return
        pmd.children[pmd_index] = None
        pmd.entries[pmd_index] = 0
        self.free_pte(tlb, table, "pte_tables_freed_reclaim_slow")

    def zap_page_range_single_batched(self, tlb, vma, start, end, details):
        self.unmap_page_range(tlb, vma, start, end, details)

    def zap_page_range_single(self, vma, start, end, details):
        tlb = tlb_gather_mmu(self)
        self.zap_page_range_single_batched(tlb, vma, start, end, details)
        tlb_finish_mmu(tlb)

    # ------------------------------------------------------- free_pgtables

    def free_pgtables(self, tlb, vmas, floor, ceiling):
        """Free the tables of detached VMAs, grouped when close together (R62)."""
        i = 0
        while i < len(vmas):
            addr = vmas[i].start
            j = i
            while j + 1 < len(vmas) and vmas[j + 1].start <= vmas[j].end + PMD_SIZE:
                j += 1
            nxt_start = vmas[j + 1].start if j + 1 < len(vmas) else ceiling
            self.free_pgd_range(tlb, addr, vmas[j].end, floor, nxt_start)
            i = j + 1

    def free_pgd_range(self, tlb, addr, end, floor, ceiling):
        """R63: free tables no remaining VMA can use; 0 as ceiling means the top."""
        addr &= _PMD_MASK
        if addr < floor:
            addr += PMD_SIZE
            if addr == 0:
                return
        if ceiling:
            ceiling &= _PMD_MASK
            if not ceiling:
                return
        if ((end - 1) & _U64) > ((ceiling - 1) & _U64):
            end -= PMD_SIZE
        if addr > ((end - 1) & _U64):
            return
        while True:
            nxt = (addr + PGDIR_SIZE) & _PGDIR_MASK
            if nxt == 0 or nxt > end:
                nxt = end
            pgd_index = (addr >> PGDIR_SHIFT) & 511
            if self._pgd.children[pgd_index] is not None:
                self.free_pud_range(tlb, self._pgd, pgd_index, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                break

    def free_pud_range(self, tlb, pgd, pgd_index, addr, end, floor, ceiling):
        pud = pgd.children[pgd_index]
        start = addr
        while True:
            nxt = (addr + PUD_SIZE) & _PUD_MASK
            if nxt == 0 or nxt > end:
                nxt = end
            i = (addr >> PUD_SHIFT) & 511
            if pud.children[i] is not None:
                self.free_pmd_range(tlb, pud, i, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                break
        # With P4D folded the PUD table goes when its 512 GiB slot is free.
        if not self._may_free_upper(start, end, floor, ceiling, _PGDIR_MASK):
            return
        pgd.children[pgd_index] = None
        pgd.entries[pgd_index] = 0
        pte_free_tlb(tlb, pud)
        self._pgtables_bytes -= PAGE_SIZE
        self._stats["pud_tables_freed"] += 1

    def free_pmd_range(self, tlb, pud, pud_index, addr, end, floor, ceiling):
        pmd = pud.children[pud_index]
        start = addr
        while True:
            nxt = (addr + PMD_SIZE) & _PMD_MASK
            if nxt == 0 or nxt > end:
                nxt = end
            i = (addr >> PMD_SHIFT) & 511
            table = pmd.children[i]
            if table is not None:
                # free_pte_range(): no emptiness check (R61).
                pmd.children[i] = None
                pmd.entries[i] = 0
                pte_free_tlb(tlb, table)
                self._pgtables_bytes -= PAGE_SIZE
                self._stats["pte_tables_freed_unmap"] += 1
            addr = nxt
            if addr == end:
                break
        if not self._may_free_upper(start, end, floor, ceiling, _PUD_MASK):
            return
        pud.children[pud_index] = None
        pud.entries[pud_index] = 0
        pte_free_tlb(tlb, pmd)
        self._pgtables_bytes -= PAGE_SIZE
        self._stats["pmd_tables_freed"] += 1

    @staticmethod
    def _may_free_upper(start, end, floor, ceiling, mask):
        start &= mask
        if start < floor:
            return False
        if ceiling:
            ceiling &= mask
            if not ceiling:
                return False
        return not (((end - 1) & _U64) > ((ceiling - 1) & _U64))

    # ---------------------------------------------------------------- munmap

    def _gather_munmap_vmas(self, start, end):
        """vms_gather_munmap_vmas(): split at the edges, return the VMAs inside."""
        vma = self.find_vma(start)
        if vma is None or vma.start >= end:
            return []
        if vma.start < start:
            if end < vma.end and len(self._vmas) >= _MAX_MAP_COUNT:
                raise _oserror(errno.ENOMEM)
            vma = self.__split_vma(vma, start)
        last = self._vma_containing(end - 1)
        if last is not None and last.end > end:
            self.__split_vma(last, end)
        i = self._vma_index(vma)
        out = []
        while i < len(self._vmas) and self._vmas[i].start < end:
            out.append(self._vmas[i])
            i += 1
        return out

    def _clear_ptes(self, detached, start, end):
        """vms_clear_ptes(): zap the detached VMAs and free their tables (R61)."""
        idx = self._vma_index(detached[0])
        prev = self._vmas[idx - 1] if idx > 0 else None
        nidx = self._vma_index(detached[-1]) + 1
        nxt = self._vmas[nidx] if nidx < len(self._vmas) else None
        floor = prev.end if prev is not None else 0
        ceiling = nxt.start if nxt is not None else 0
        tlb = tlb_gather_mmu(self)
        details = _ZapDetails(even_cows=True, drop_markers=True)
        for vma in detached:
            self.unmap_page_range(tlb, vma, max(vma.start, start), min(vma.end, end), details)
        self.free_pgtables(tlb, detached, floor, ceiling)
        tlb_finish_mmu(tlb)

    def _remove_detached(self, detached):
        for vma in detached:
            if vma.flags & VM_LOCKED:
                self._locked_vm -= vma.pages()
            self._remove_vma(vma)

    def do_vmi_munmap(self, start, end):
        detached = self._gather_munmap_vmas(start, end)
        if not detached:
            return
        self._clear_ptes(detached, start, end)
        self._remove_detached(detached)

    # ------------------------------------------------------------- syscalls

    def _check_alive(self):
        if self._dead:
            raise ValueError("the mm has exited")

    def munmap(self, addr, length):
        addr = _ulong(addr)
        length = _ulong(length)
        self._check_alive()
        if addr & (PAGE_SIZE - 1) or addr > TASK_SIZE or length > TASK_SIZE - addr:
            raise _oserror(errno.EINVAL)
        end = addr + _page_align(length)
        if end == addr:
            raise _oserror(errno.EINVAL)
        self.do_vmi_munmap(addr, end)

    def mmap(self, addr, length, prot, flags, fd=-1, offset=0):
        addr = _ulong(addr)
        length = _ulong(length)
        prot = _cint(prot)
        flags = _cint(flags)
        fd = _cint(fd)
        offset = _ulong(offset)
        self._check_alive()
        return self.do_mmap(addr, length, prot & _U64, flags & 0xFFFFFFFF, fd, offset)

    def do_mmap(self, addr, length, prot, flags, fd, offset):
        # Check order follows sys_mmap, ksys_mmap_pgoff and do_mmap (R19).
        if offset & (PAGE_SIZE - 1):
            raise _oserror(errno.EINVAL)
        if not (flags & MAP_ANONYMOUS):
            if fd < 0:
                raise _oserror(errno.EBADF)
            raise _oserror(errno.ENODEV)
        if flags & MAP_HUGETLB:
            return self._mmap_hugetlb(addr, length, flags, offset)
        if length == 0:
            raise _oserror(errno.EINVAL)
        if flags & MAP_FIXED_NOREPLACE:
            flags |= MAP_FIXED
        if not (flags & MAP_FIXED) and addr and addr < _MMAP_MIN_ADDR:
            addr = _MMAP_MIN_ADDR  # round_hint_to_min()
        length = _page_align(length)
        if length == 0:
            raise _oserror(errno.ENOMEM)
        if len(self._vmas) > _MAX_MAP_COUNT:
            raise _oserror(errno.ENOMEM)
        addr = self.__get_unmapped_area(addr, length, flags)
        if flags & MAP_FIXED_NOREPLACE:
            vma = self.find_vma(addr)
            if vma is not None and vma.start < addr + length:
                raise _oserror(errno.EEXIST)
        vm_flags = self.calc_vm_flags(prot, flags)
        map_type = flags & MAP_TYPE
        if map_type == MAP_SHARED:
            if flags & MAP_GROWSDOWN:
                raise _oserror(errno.EINVAL)
            vm_flags |= VM_SHARED | VM_MAYSHARE
            pgoff = 0
        elif map_type == MAP_PRIVATE:
            pgoff = addr >> PAGE_SHIFT
        elif map_type == MAP_DROPPABLE:
            # Locked or stack memory cannot be droppable.
            if flags & MAP_LOCKED or vm_flags & VM_GROWSDOWN:
                raise _oserror(errno.EINVAL)
            raise NotImplementedError("MAP_DROPPABLE is not simulated")
        else:
            raise _oserror(errno.EINVAL)
        if flags & MAP_NORESERVE:
            vm_flags |= VM_NORESERVE
        addr = self.mmap_region(addr, length, vm_flags, pgoff)
        if (vm_flags & VM_LOCKED) or (flags & (MAP_POPULATE | MAP_NONBLOCK)) == MAP_POPULATE:
            # mm_populate() ignores errors (R19).
            self.__mm_populate(addr, length, True)
        return addr

    def _mmap_hugetlb(self, addr, length, flags, offset):
        """MAP_ANONYMOUS|MAP_HUGETLB with an empty huge page pool (nr_hugepages=0).

        ksys_mmap_pgoff() turns the request into a hugetlbfs file mapping, so the
        file branch of do_mmap() applies. Every outcome short of success is Linux's
        (probed on the lab machine); a mapping that would succeed (MAP_NORESERVE
        skips the reservation) needs hugetlb, which is not simulated.
        """
        # hstate_sizelog(): the lab machine has only the 2 MiB hstate (no 1 GiB one).
        if (flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK not in (0, PMD_SHIFT):
            raise _oserror(errno.EINVAL)
        length = (length + PMD_SIZE - 1) & ~(PMD_SIZE - 1) & _U64  # may wrap to 0
        if length == 0:
            raise _oserror(errno.EINVAL)
        if flags & MAP_FIXED_NOREPLACE:
            flags |= MAP_FIXED
        if not (flags & MAP_FIXED) and addr and addr < _MMAP_MIN_ADDR:
            addr = _MMAP_MIN_ADDR
        if len(self._vmas) > _MAX_MAP_COUNT or length > TASK_SIZE:
            raise _oserror(errno.ENOMEM)
        if flags & MAP_FIXED:
            # The huge page alignment is checked before the TASK_SIZE limit.
            if addr & (PMD_SIZE - 1):
                raise _oserror(errno.EINVAL)
            if addr > TASK_SIZE - length:
                raise _oserror(errno.ENOMEM)
        if flags & MAP_FIXED_NOREPLACE:
            vma = self.find_vma(addr)
            if vma is not None and vma.start < addr + length:
                raise _oserror(errno.EEXIST)
        # do_mmap(), file branch. MAP_SHARED_VALIDATE refuses any flag outside
        # LEGACY_MAP_MASK (MAP_FIXED_NOREPLACE, MAP_SYNC and the huge size bits too).
        map_type = flags & MAP_TYPE
        if map_type == MAP_SHARED_VALIDATE and flags & ~_LEGACY_MAP_MASK:
            raise _oserror(errno.EOPNOTSUPP)
        if map_type not in (MAP_SHARED, MAP_SHARED_VALIDATE, MAP_PRIVATE):
            raise _oserror(errno.EINVAL)
        if flags & MAP_GROWSDOWN:
            raise _oserror(errno.EINVAL)
        # hugetlbfs_file_mmap() wants the offset huge-page aligned, then reserves.
        misaligned = offset & (PMD_SIZE - 1)
        if flags & MAP_NORESERVE and not misaligned:
            raise NotImplementedError("hugetlb mappings are not simulated")
        # mmap_region() clears what a file mapping replaces before calling the
        # file's mmap; when that fails the gap stays (as for shmem).
        if flags & MAP_FIXED:
            self.do_vmi_munmap(addr, addr + length)
        raise _oserror(errno.EINVAL if misaligned else errno.ENOMEM)

    @staticmethod
    def calc_vm_flags(prot, flags):
        vm_flags = 0
        if prot & PROT_READ:
            vm_flags |= VM_READ
        if prot & PROT_WRITE:
            vm_flags |= VM_WRITE
        if prot & PROT_EXEC:
            vm_flags |= VM_EXEC
        if flags & MAP_GROWSDOWN:
            vm_flags |= VM_GROWSDOWN
        if flags & MAP_LOCKED:
            vm_flags |= VM_LOCKED
        if flags & MAP_SYNC:
            vm_flags |= VM_SYNC
        if flags & MAP_STACK:
            vm_flags |= VM_NOHUGEPAGE
        return vm_flags | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC

    def mmap_region(self, addr, length, vm_flags, pgoff):
        end = addr + length
        # __mmap_setup(): gather (and split) what MAP_FIXED replaces.
        detached = self._gather_munmap_vmas(addr, end)
        nr_accounted = sum(v.pages() for v in detached if v.flags & VM_ACCOUNT)
        if not (vm_flags & (VM_NORESERVE | VM_SHARED)) and vm_flags & VM_WRITE:
            charged = (length >> PAGE_SHIFT) - nr_accounted
            if charged and charged > self._overcommit_limit():
                # vms_abort_munmap_vmas(): the old VMAs stay, split as they are.
                self._unmerged_ok.update((addr, end))
                raise _oserror(errno.ENOMEM)
            vm_flags |= VM_ACCOUNT
        if detached:
            self._clear_ptes(detached, addr, end)
            self._remove_detached(detached)
        if vm_flags & VM_SHARED:
            # shmem_zero_setup() charges the whole object unless VM_NORESERVE;
            # a failure here leaves the unmapped gap behind.
            if not (vm_flags & VM_NORESERVE) and (length >> PAGE_SHIFT) > self._overcommit_limit():
                raise _oserror(errno.ENOMEM)
            vma = _Vma(addr, end, vm_flags, pgoff, None, _ShmemObject(length >> PAGE_SHIFT))
            self._insert_vma(vma)
        else:
            vma = self.vma_merge_new_range(addr, end, vm_flags, pgoff)
            if vma is None:
                vma = _Vma(addr, end, vm_flags, pgoff)
                self._insert_vma(vma)
        if vm_flags & VM_LOCKED:
            self._locked_vm += length >> PAGE_SHIFT
        return addr

    def __get_unmapped_area(self, addr, length, flags):
        if length > TASK_SIZE:
            raise _oserror(errno.ENOMEM)
        if flags & MAP_FIXED:
            result = addr
        elif not (flags & MAP_SHARED) and addr == 0 and length % PMD_SIZE == 0:
            result = self.thp_get_unmapped_area(length)
        else:
            # shmem_get_unmapped_area() adds nothing with shmem_enabled=never.
            result = self.arch_get_unmapped_area_topdown(addr, length)
        if result > TASK_SIZE - length:
            raise _oserror(errno.ENOMEM)
        if result & (PAGE_SIZE - 1):
            raise _oserror(errno.EINVAL)
        return result

    def thp_get_unmapped_area(self, length):
        """__thp_get_unmapped_area(): pad by 2 MiB, then align (R19)."""
        len_pad = length + PMD_SIZE
        try:
            ret = self.arch_get_unmapped_area_topdown(0, len_pad)
        except OSError:
            return self.arch_get_unmapped_area_topdown(0, length)
        off_sub = (-ret) & (PMD_SIZE - 1)
        if off_sub == 0:
            # Top-down: use the upper aligned slot of the padded area.
            return ret + PMD_SIZE
        return ret + off_sub

    def _vm_start_gap(self, vma):
        if vma.flags & VM_GROWSDOWN:
            return max(vma.start - _STACK_GUARD_GAP, 0)
        return vma.start

    def arch_get_unmapped_area_topdown(self, addr, length):
        if addr:
            addr &= _PAGE_MASK
            if TASK_SIZE - length >= addr:
                vma = self.find_vma(addr)
                if vma is None or addr + length <= self._vm_start_gap(vma):
                    return addr
        found = self.unmapped_area_topdown(length, _MMAP_MIN_ADDR, MMAP_BASE)
        if found is not None:
            return found
        found = self.unmapped_area_bottomup(length, _MMAP_LEGACY_BASE, TASK_SIZE)
        if found is not None:
            return found
        raise _oserror(errno.ENOMEM)

    def unmapped_area_topdown(self, length, low, high):
        """The highest gap of length below high; it ends at vm_start_gap() of the VMA
        right above it. Linux checks that VMA only (unmapped_area_topdown()'s retry):
        a stack guard gap reaching over a lower VMA does not limit the gap below that one."""
        upper = None
        for vma in reversed(self._vmas):
            if upper is not None or vma.start < high:
                gap_hi = high if upper is None else min(high, self._vm_start_gap(upper))
                gap_lo = max(vma.end, low)
                if gap_hi >= gap_lo and gap_hi - gap_lo >= length:
                    return gap_hi - length
                if vma.end <= low:
                    return None
            upper = vma
        gap_hi = high if upper is None else min(high, self._vm_start_gap(upper))
        if gap_hi >= low and gap_hi - low >= length:
            return gap_hi - length
        return None

    def unmapped_area_bottomup(self, length, low, high):
        gap_start = low
        for vma in self._vmas:
            if vma.end <= gap_start:
                continue
            if self._vm_start_gap(vma) - gap_start >= length:
                return gap_start
            gap_start = max(gap_start, vma.end)
        if high - gap_start >= length:
            return gap_start
        return None

    # ------------------------------------------------------------ mprotect

    def mprotect(self, addr, length, prot):
        addr = _ulong(addr)
        length = _ulong(length)
        prot = _cint(prot)
        self._check_alive()
        self.do_mprotect_pkey(addr, length, prot & _U64)

    def do_mprotect_pkey(self, start, length, prot):
        grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP)
        prot &= ~(PROT_GROWSDOWN | PROT_GROWSUP)
        if grows == (PROT_GROWSDOWN | PROT_GROWSUP):
            raise _oserror(errno.EINVAL)
        if start & (PAGE_SIZE - 1):
            raise _oserror(errno.EINVAL)
        if not length:
            return
        length = _page_align(length)
        end = (start + length) & _U64
        if end <= start:
            raise _oserror(errno.ENOMEM)
        if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM):
            raise _oserror(errno.EINVAL)
        vma = self.find_vma(start)
        if vma is None or vma.start >= end:
            raise _oserror(errno.ENOMEM)
        if grows & PROT_GROWSDOWN:
            start = vma.start
            if not (vma.flags & VM_GROWSDOWN):
                raise _oserror(errno.EINVAL)
        else:
            if vma.start > start:
                raise _oserror(errno.ENOMEM)
            if grows & PROT_GROWSUP:
                # x86 has no VM_GROWSUP.
                raise _oserror(errno.EINVAL)
        tlb = tlb_gather_mmu(self)
        error = 0
        pos = start
        expected = vma.start  # the first VMA may begin before start
        try:
            while True:
                vma = self.find_vma(pos)
                if vma is None or vma.start >= end:
                    break
                if vma.start != expected:
                    error = errno.ENOMEM
                    break
                newflags = self.calc_vm_flags(prot, 0) & VM_ACCESS_FLAGS
                newflags |= vma.flags & ~VM_ACCESS_FLAGS
                if (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS:
                    error = errno.EACCES
                    break
                seg_end = min(vma.end, end)
                error, vma = self.mprotect_fixup(tlb, vma, pos, seg_end, newflags)
                if error:
                    break
                # vma_iter_end(): past whatever the range merged into.
                pos = expected = vma.end
        finally:
            tlb_finish_mmu(tlb)
        if not error and pos < end:
            error = errno.ENOMEM
        if error:
            raise _oserror(error)

    def mprotect_fixup(self, tlb, vma, start, end, newflags):
        oldflags = vma.flags
        nrpages = (end - start) >> PAGE_SHIFT
        if newflags == oldflags:
            return 0, vma
        if newflags & VM_WRITE:
            if not (oldflags & (VM_ACCOUNT | VM_WRITE | VM_HUGETLB | VM_SHARED | VM_NORESERVE)):
                # Making private memory writable charges it (overcommit).
                if nrpages > self._overcommit_limit():
                    return errno.ENOMEM, vma
                newflags |= VM_ACCOUNT
        elif oldflags & VM_ACCOUNT and vma_is_anonymous(vma) and vma.anon_vma is None:
            newflags &= ~VM_ACCOUNT
        vma = self.vma_modify_flags(vma, start, end, newflags)
        # A merged VMA keeps the sticky flags of either side.
        vma.flags = newflags | (vma.flags & VM_STICKY)
        try_writable = bool(newflags & VM_WRITE) and not (newflags & VM_SHARED)
        self.change_protection(tlb, vma, start, end, try_writable)
        if (oldflags & (VM_WRITE | VM_SHARED | VM_LOCKED)) == VM_LOCKED and newflags & VM_WRITE:
            # A locked private VMA becoming writable is COW-populated at once.
            self.populate_vma_page_range(vma, start, end)
        return 0, vma

    def change_protection(self, tlb, vma, start, end, try_change_writable):
        """change_pte_range() over present tables; never allocates (R21)."""
        newprot = vm_get_page_prot(vma.flags)
        self.change_huge_pmd(tlb, vma, start, end, newprot, try_change_writable)
        for span in range(start & _PMD_MASK, end, PMD_SIZE):
            table = self._walk_pte_table(span)
            if table is None:
                continue
            lo = max(start, span)
            hi = min(end, span + PMD_SIZE)
            entries = table.entries
            for addr in range(lo, hi, PAGE_SIZE):
                i = (addr >> PAGE_SHIFT) & 511
                old = entries[i]
                if not pte_present(old):
                    continue
                new = pte_modify(old, newprot)
                if try_change_writable and not (new & _PAGE_RW) and self.can_change_pte_writable(vma, new):
                    new |= _PAGE_RW
                entries[i] = new
                if old & _PAGE_PRESENT and _pte_flags_need_flush(old, new):
                    tlb.need_flush = True

    def can_change_pte_writable(self, vma, pte):
        if not (pte & _PAGE_PRESENT):
            return False
        frame = self.vm_normal_page(pte)
        # Private mappings: only an exclusive anonymous page (not one that fork
        # shares) may become writable without a write fault.
        return frame is not None and frame.kind == _ANON and frame.exclusive

    # -------------------------------------------------------------- mlock

    def mlock(self, addr, length):
        addr = _ulong(addr)
        length = _ulong(length)
        self._check_alive()
        length = _page_align(length + (addr & (PAGE_SIZE - 1)))
        addr &= _PAGE_MASK
        self.apply_vma_lock_flags(addr, length, VM_LOCKED)
        ret = self.__mm_populate(addr, length, False)
        if ret:
            # __mlock_posix_error_return()
            raise _oserror(errno.ENOMEM if ret == -errno.EFAULT else errno.EAGAIN if ret == -errno.ENOMEM else -ret)

    def munlock(self, addr, length):
        addr = _ulong(addr)
        length = _ulong(length)
        self._check_alive()
        length = _page_align(length + (addr & (PAGE_SIZE - 1)))
        addr &= _PAGE_MASK
        self.apply_vma_lock_flags(addr, length, 0)

    def apply_vma_lock_flags(self, start, length, flags):
        end = start + length
        if end > _U64:
            raise _oserror(errno.EINVAL)
        if end == start:
            return
        vma = self._vma_containing(start)
        if vma is None:
            raise _oserror(errno.ENOMEM)
        pos = start
        expected = vma.start
        while True:
            vma = self.find_vma(pos)
            if vma is None or vma.start >= end:
                break
            if vma.start != expected:
                raise _oserror(errno.ENOMEM)
            newflags = (vma.flags & ~VM_LOCKED_MASK) | flags
            seg_end = min(vma.end, end)
            vma = self.mlock_fixup(vma, pos, seg_end, newflags)
            pos = expected = vma.end
        if pos < end:
            raise _oserror(errno.ENOMEM)

    def mlock_fixup(self, vma, start, end, newflags):
        oldflags = vma.flags
        if newflags == oldflags or vma.flags & VM_SPECIAL:
            return vma
        vma = self.vma_modify_flags(vma, start, end, newflags)
        nr_pages = (end - start) >> PAGE_SHIFT
        if not (newflags & VM_LOCKED):
            nr_pages = -nr_pages
        elif oldflags & VM_LOCKED:
            nr_pages = 0
        self._locked_vm += nr_pages
        vma.flags = newflags | (vma.flags & VM_STICKY)
        return vma

    # ------------------------------------------------------------- madvise

    def madvise(self, addr, length, advice):
        addr = _ulong(addr)
        length = _ulong(length)
        advice = _cint(advice)
        self._check_alive()
        self.do_madvise(addr, length, advice)

    def do_madvise(self, start, len_in, behavior):
        # madvise_should_skip() / is_valid_madvise(): R33.
        if behavior not in _MADV_VALID:
            raise _oserror(errno.EINVAL)
        if start & (PAGE_SIZE - 1):
            raise _oserror(errno.EINVAL)
        length = _page_align(len_in)
        if len_in and not length:
            raise _oserror(errno.EINVAL)
        if start + length > _U64:
            raise _oserror(errno.EINVAL)
        if length == 0:
            return
        end = start + length
        tlb = tlb_gather_mmu(self) if behavior in _MADV_BATCHED else None
        try:
            if behavior in (MADV_POPULATE_READ, MADV_POPULATE_WRITE):
                error = self.madvise_populate(start, end, behavior == MADV_POPULATE_WRITE)
            else:
                error = self.madvise_walk_vmas(tlb, start, end, behavior)
        finally:
            if tlb is not None:
                tlb_finish_mmu(tlb)
        if error:
            raise _oserror(error)

    def madvise_walk_vmas(self, tlb, start, end, behavior):
        """R34: holes give ENOMEM after the mapped parts; errors return at once."""
        unmapped_error = 0
        pos = start
        while True:
            vma = self.find_vma(pos)
            if vma is None:
                return errno.ENOMEM
            if pos < vma.start:
                unmapped_error = errno.ENOMEM
                pos = vma.start
                if pos >= end:
                    break
            range_end = min(vma.end, end)
            error = self.madvise_vma_behavior(tlb, vma, pos, range_end, behavior)
            if error:
                return error
            pos = range_end
            if pos >= end:
                break
        return unmapped_error

    def madvise_vma_behavior(self, tlb, vma, start, end, behavior):
        if behavior == MADV_REMOVE:
            return self.madvise_remove(vma, start, end)
        if behavior == MADV_WILLNEED:
            return 0  # swap-in/readahead only: nothing to map (R42)
        if behavior in (MADV_COLD, MADV_PAGEOUT):
            return self.madvise_cold_or_pageout(vma, start, end, behavior == MADV_PAGEOUT)
        if behavior in (MADV_FREE, MADV_DONTNEED, MADV_DONTNEED_LOCKED):
            return self.madvise_dontneed_free(tlb, vma, start, end, behavior)
        if behavior == MADV_COLLAPSE:
            return self.madvise_collapse(vma, start, end)
        if behavior == MADV_GUARD_INSTALL:
            return self.madvise_guard_install(vma, start, end)
        if behavior == MADV_GUARD_REMOVE:
            return self.madvise_guard_remove(vma, start, end)
        new_flags = vma.flags
        if behavior == MADV_NORMAL:
            new_flags &= ~(VM_RAND_READ | VM_SEQ_READ)
        elif behavior == MADV_SEQUENTIAL:
            new_flags = (new_flags & ~VM_RAND_READ) | VM_SEQ_READ
        elif behavior == MADV_RANDOM:
            new_flags = (new_flags & ~VM_SEQ_READ) | VM_RAND_READ
        elif behavior == MADV_DONTFORK:
            new_flags |= VM_DONTCOPY
        elif behavior == MADV_DOFORK:
            if new_flags & VM_IO:
                return errno.EINVAL
            new_flags &= ~VM_DONTCOPY
        elif behavior == MADV_WIPEONFORK:
            if vma.shmem is not None or new_flags & VM_SHARED:
                return errno.EINVAL
            new_flags |= VM_WIPEONFORK
        elif behavior == MADV_KEEPONFORK:
            new_flags &= ~VM_WIPEONFORK
        elif behavior == MADV_DONTDUMP:
            new_flags |= VM_DONTDUMP
        elif behavior == MADV_DODUMP:
            if new_flags & VM_SPECIAL:
                return errno.EINVAL
            new_flags &= ~VM_DONTDUMP
        elif behavior == MADV_MERGEABLE:
            # ksm_madvise(): silently ignored on incompatible VMAs.
            ksm_incompatible = VM_SHARED | VM_MAYSHARE | VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_HUGETLB | VM_MIXEDMAP
            if not (new_flags & ksm_incompatible):
                new_flags |= VM_MERGEABLE
        elif behavior == MADV_UNMERGEABLE:
            # ksmd never merged anything here, so there is nothing to break.
            new_flags &= ~VM_MERGEABLE
        elif behavior == MADV_HUGEPAGE:
            new_flags = (new_flags & ~VM_NOHUGEPAGE) | VM_HUGEPAGE
        elif behavior == MADV_NOHUGEPAGE:
            new_flags = (new_flags & ~VM_HUGEPAGE) | VM_NOHUGEPAGE
        return self.madvise_update_vma(vma, start, end, new_flags)

    def madvise_update_vma(self, vma, start, end, new_flags):
        if new_flags == vma.flags:
            return 0
        vma = self.vma_modify_flags(vma, start, end, new_flags)
        vma.flags = new_flags | (vma.flags & VM_STICKY)
        return 0

    def madvise_dontneed_free(self, tlb, vma, start, end, behavior):
        forbidden = VM_PFNMAP
        if behavior != MADV_DONTNEED_LOCKED:
            forbidden |= VM_LOCKED
        if vma.flags & forbidden:
            return errno.EINVAL
        if start == end:
            return 0
        if behavior == MADV_FREE:
            return self.madvise_free_single_vma(tlb, vma, start, end)
        # R37: reclaim_pt and even_cows.
        details = _ZapDetails(even_cows=True, reclaim_pt=True)
        self.zap_page_range_single_batched(tlb, vma, start, end, details)
        return 0

    def madvise_free_single_vma(self, tlb, vma, start, end):
        """R39: mark lazy-free; never allocates or frees tables."""
        if not vma_is_anonymous(vma):
            return errno.EINVAL
        self.madvise_huge_pmds(tlb, vma, start, end, MADV_FREE)
        for span in range(start & _PMD_MASK, end, PMD_SIZE):
            table = self._walk_pte_table(span)
            if table is None:
                continue
            entries = table.entries
            for addr in range(max(start, span), min(end, span + PMD_SIZE), PAGE_SIZE):
                i = (addr >> PAGE_SHIFT) & 511
                pte = entries[i]
                if pte_none(pte) or not pte_present(pte):
                    continue
                frame = self.vm_normal_page(pte)
                if frame is None:
                    continue
                if frame.thp_index is not None:
                    step = self.large_folio_step(vma, table, i, span, start, end, False)
                    if step == "skip":
                        continue
                    pte = entries[i]
                    frame = self.vm_normal_page(pte) if pte_present(pte) else None
                    if frame is None:
                        continue  # mapped to the zero page by the split
                if frame.dirty and frame.mapcount != 1:
                    # A dirty page another process maps too keeps its dirty
                    # bit and is left alone; a clean shared one is treated
                    # like an exclusive one.
                    continue
                frame.dirty = False
                if pte & (_PAGE_ACCESSED | _PAGE_DIRTY):
                    entries[i] = pte & ~(_PAGE_ACCESSED | _PAGE_DIRTY)
                    tlb.need_flush = True
                frame.lazyfree = True
        tlb_end_vma(tlb)
        return 0

    def madvise_cold_or_pageout(self, vma, start, end, pageout):
        """R41. Without swap only lazy-free anon and shmem pages are unmapped;
        reclaim_pages() runs on each page as the walk isolates it."""
        if vma.flags & (VM_LOCKED | VM_PFNMAP | VM_HUGETLB):
            return errno.EINVAL
        tlb = tlb_gather_mmu(self)
        self.madvise_huge_pmds(tlb, vma, start, end, MADV_PAGEOUT if pageout else MADV_COLD)
        for span in range(start & _PMD_MASK, end, PMD_SIZE):
            table = self._walk_pte_table(span)
            if table is None:
                continue
            entries = table.entries
            for addr in range(max(start, span), min(end, span + PMD_SIZE), PAGE_SIZE):
                i = (addr >> PAGE_SHIFT) & 511
                pte = entries[i]
                if not pte_present(pte):
                    continue
                frame = self.vm_normal_page(pte)
                if frame is None:
                    continue
                if frame.thp_index is not None:
                    # With no swap, a THP that is not lazy-free and clean cannot
                    # be paged out whole: shrink_folio_list() splits it.
                    split_whole = pageout and (not frame.lazyfree or frame.dirty)
                    step = self.large_folio_step(vma, table, i, span, start, end, split_whole)
                    if step == "skip":
                        continue
                    pte = entries[i]
                    frame = self.vm_normal_page(pte) if pte_present(pte) else None
                    if frame is None:
                        continue  # mapped to the zero page by the split
                if frame.mapcount != 1:
                    # Pages other processes map too are not touched.
                    continue
                if not pageout:
                    if pte & _PAGE_ACCESSED:
                        entries[i] = pte & ~_PAGE_ACCESSED
                        tlb.need_flush = True
                else:
                    self.shrink_folio(vma, table, i, frame)
        tlb_end_vma(tlb)
        tlb_finish_mmu(tlb)
        return 0

    def shrink_folio(self, vma, table, i, frame):
        """shrink_folio_list() for one isolated folio, with no swap device."""
        pte = table.entries[i]
        if frame.kind == _ANON:
            if not frame.lazyfree:
                return  # add_to_swap() fails: the folio is kept
            # try_to_unmap_one() clears the PTE with ptep_clear_flush(): the batched
            # flush (TTU_BATCH_FLUSH) is deferred only when the mm is live on another
            # CPU, never in a single-threaded process, so each PTE is one flush.
            self._stats["tlb_flushes"] += 1
            if pte & _PAGE_DIRTY or frame.dirty:
                # Re-dirtied after MADV_FREE: remapped and swap-backed again.
                frame.lazyfree = False
                frame.dirty = True
                return
            table.entries[i] = 0
            frame.mapcount -= 1
            self._rss[MM_ANONPAGES] -= 1
            self._mem.folio_put(frame)
            return
        # Shmem: try_to_unmap() succeeds (moving the PTE's dirty bit to the folio).
        # A dirty folio goes to pageout(), whose writeout fails for lack of swap, so
        # it stays in the object, unmapped. A clean one (never written: zero-filled
        # by a read fault) is simply dropped from the page cache by
        # __remove_mapping(); the next access faults in a fresh zeroed page.
        if pte & _PAGE_DIRTY:
            frame.dirty = True
        table.entries[i] = 0
        self._stats["tlb_flushes"] += 1  # ptep_clear_flush(), as above
        frame.mapcount -= 1
        self._rss[MM_SHMEMPAGES] -= 1
        self._mem.folio_put(frame)
        if not frame.dirty and frame.mapcount == 0 and frame.shmem.pages.get(frame.index) is frame:
            del frame.shmem.pages[frame.index]
            self._mem.folio_put(frame)

    def madvise_remove(self, vma, start, end):
        """R40: punch a hole in the shmem object, unmapping it everywhere."""
        if vma.flags & VM_LOCKED:
            return errno.EINVAL
        if vma.shmem is None:
            return errno.EINVAL
        if (vma.flags & (VM_SHARED | VM_MAYWRITE)) != (VM_SHARED | VM_MAYWRITE):
            return errno.EACCES
        obj = vma.shmem
        first = self._linear_page_index(vma, start)
        last = first + ((end - start) >> PAGE_SHIFT) - 1
        self.unmap_mapping_range(obj, first, last)
        # The cached pages in the hole, in index order (not every index of a range that
        # may span hundreds of GiB).
        for index in sorted(i for i in obj.pages if first <= i <= last):
            self._mem.folio_put(obj.pages.pop(index))
        return 0

    def unmap_mapping_range(self, obj, first, last):
        """Unmap pages [first, last] of obj from every process mapping it."""
        details = _ZapDetails(even_cows=False)
        for mm in list(self.machine.mms):
            for vma in [v for v in mm._vmas if v.shmem is obj]:
                vba = vma.pgoff
                vea = vba + vma.pages() - 1
                if vea < first or vba > last:
                    continue
                zba = max(first, vba)
                zea = min(last, vea)
                # zap_page_range_single(): a gather of that process's own.
                mm.zap_page_range_single(
                    vma, vma.start + ((zba - vba) << PAGE_SHIFT), vma.start + ((zea - vba + 1) << PAGE_SHIFT),
                    details
                )

    def madvise_populate(self, start, end, write):
        """R42: fault in page by page; the first failure ends the call."""
        pos = start
        while pos < end:
            vma = self._vma_containing(pos)
            if vma is None:
                return errno.ENOMEM
            if vma.flags & (VM_IO | VM_PFNMAP):
                return errno.EINVAL
            if write and not (vma.flags & VM_WRITE):
                return errno.EINVAL
            if not write and not (vma.flags & VM_READ):
                return errno.EINVAL
            seg_end = min(end, vma.end)
            ret = self.__get_user_pages(vma, pos, seg_end, write)
            if ret:
                return -ret
            pos = seg_end
        return 0

    def madvise_guard_install(self, vma, start, end):
        """R43: GUARD markers in every PTE, zapping mapped pages first."""
        if vma.flags & (VM_SPECIAL | VM_HUGETLB | VM_LOCKED):
            return errno.EINVAL
        # The whole VMA may hold markers now: a sticky flag, set without a split.
        vma.flags |= VM_MAYBE_GUARD
        # Markers make the range non-empty, so fork must copy it.
        if vma.shmem is None:
            self.anon_vma_prepare(vma)
        for _attempt in range(3):
            if self._guard_install_walk(vma, start, end):
                return 0
            self.zap_page_range_single(vma, start, end, None)
        return errno.EINTR

    def _guard_install_walk(self, vma, start, end):
        for addr in range(start, end, PAGE_SIZE):
            pud = self.__pud_alloc(addr)
            pmd = self.__pmd_alloc(pud, addr)
            if pmd_trans_huge(pmd.entries[(addr >> PMD_SHIFT) & 511]):
                # guard_install_pmd_entry(): a huge PMD is zapped (or split) first.
                return False
            table = self.__pte_alloc(pmd, addr)
            i = (addr >> PAGE_SHIFT) & 511
            pte = table.entries[i]
            if pte_none(pte):
                table.entries[i] = _GUARD_MARKER
            elif not is_guard_pte_marker(pte):
                return False
        return True

    def madvise_guard_remove(self, vma, start, end):
        if vma.flags & (VM_SPECIAL | VM_HUGETLB):
            return errno.EINVAL
        for addr in range(start, end, PAGE_SIZE):
            table = self._walk_pte_table(addr)
            if table is None:
                continue
            i = (addr >> PAGE_SHIFT) & 511
            if is_guard_pte_marker(table.entries[i]):
                table.entries[i] = 0
        return 0

    # --------------------------------------------------------------- touch

    def touch(self, addr, length=PAGE_SIZE, *, write=True):
        addr = _ulong(addr)
        length = _ulong(length)
        self._check_alive()
        write = bool(write)
        if length == 0:
            return
        if addr + length > 1 << 64:
            raise ValueError("addr + length wraps around the address space")
        first = addr & _PAGE_MASK
        last = (addr + length - 1) & _PAGE_MASK
        vma = None
        page = first
        while page <= last:
            if vma is None or not (vma.start <= page < vma.end):
                vma = self._vma_containing(page) if page < TASK_SIZE else None
                if vma is None:
                    # The first access is at addr itself, later ones at page starts.
                    raise SegmentationFault(max(page, addr))
            try:
                self._access(vma, page, write)
            except _FaultError as exc:
                if exc.kind == "OOM":
                    raise OutOfMemory(f"no free frame for the access at {page:#x}") from None
                raise SegmentationFault(max(page, addr)) from None
            page += PAGE_SIZE

    def touch_pages(self, addresses, write=True):
        """The bulk form of touch(): one access per address, in order (api.md)."""
        import numpy as np

        a = np.asarray(addresses)
        if a.ndim != 1:
            raise ValueError("addresses must be one-dimensional")
        if a.dtype.kind == "i" and a.size and a.min() < 0:
            raise OverflowError("addresses must not be negative")
        if a.dtype.kind not in "iuO" and a.size:
            raise TypeError(f"addresses must be integers, not {a.dtype}")
        if isinstance(write, (bool, int)) and not hasattr(write, "shape"):
            writes = [bool(write)] * len(a)
        else:
            w = np.asarray(write)
            if w.dtype != np.bool_:
                raise TypeError(f"write must be a bool or a bool array, not {w.dtype}")
            if w.shape != (len(a),):
                raise ValueError(f"write has shape {w.shape}, addresses has ({len(a)},)")
            writes = w.tolist()
        self._check_alive()
        for i, (addr, w) in enumerate(zip(a.tolist(), writes)):
            addr = _ulong(addr)
            try:
                if addr == (1 << 64) - 1:
                    raise SegmentationFault(addr)
                self.touch(addr, 1, write=w)
            except (SegmentationFault, OutOfMemory) as exc:
                exc.index = i
                raise

    # ---------------------------------------------------------------- exit

    def exit(self):
        self._check_alive()
        self.exit_mmap()
        self._dead = True
        self.machine.mms.remove(self)

    def exit_mmap(self):
        """R65: zap everything with a full-mm gather, then free all tables."""
        tlb = tlb_gather_mmu(self, fullmm=True)
        details = _ZapDetails(even_cows=True, drop_markers=True)
        for vma in self._vmas:
            self.unmap_page_range(tlb, vma, vma.start, vma.end, details)
        if self._vmas:
            self.free_pgtables(tlb, list(self._vmas), 0, 0)
        tlb_finish_mmu(tlb)
        for vma in list(self._vmas):
            self._remove_vma(vma)
        self._locked_vm = 0
        self._unmerged_ok = set()

    # ---------------------------------------------------------------- fork

    def fork(self):
        """fork(2): a child process on the same Machine, made by dup_mmap() (R66-R69).

        The child shares this process's frames (copy-on-write) and shmem
        objects and has its own page tables. OSError(ENOMEM) when the overcommit
        check refuses a VMA; the half-built child is then torn down and, as in
        Linux, the parent's entries of the VMAs copied before stay
        write-protected.
        """
        self._check_alive()
        child = MM(pt_reclaim=self.pt_reclaim, thp=self.thp, split_ptlocks=self.split_ptlocks,
                   machine=self.machine)
        try:
            self.dup_mmap(child)
        except OSError:
            # The child never ran: unmap and free what was copied into it.
            child.exit_mmap()
            child._dead = True
            self.machine.mms.remove(child)
            raise
        finally:
            # flush_tlb_mm(oldmm) at the end of dup_mmap(), success or not: the
            # parent's writable entries of COW mappings were write-protected.
            self._stats["tlb_flushes"] += 1
        return child

    def dup_mmap(self, child):
        """Copy the VMAs, in address order, into the empty child mm."""
        for vma in self._vmas:
            if vma.flags & VM_DONTCOPY:
                # MADV_DONTFORK: the child has nothing there.
                continue
            if vma.flags & VM_ACCOUNT and vma.pages() > self._overcommit_limit():
                # security_vm_enough_memory_mm() per VMA, heuristic mode.
                raise _oserror(errno.ENOMEM)
            # vm_area_dup(); the child does not inherit mlock (VM_LOCKED_MASK).
            tmp = _Vma(vma.start, vma.end, vma.flags & ~VM_LOCKED_MASK, vma.pgoff, None, vma.shmem)
            if not (tmp.flags & VM_WIPEONFORK) and vma.anon_vma is not None:
                # anon_vma_fork(): a new anon_vma, chained to the parent's.
                child._anon_vma_serial += 1
                tmp.anon_vma = _AnonVma(child._anon_vma_serial, forked=True)
            child._insert_vma(tmp)
            if not (tmp.flags & VM_WIPEONFORK) and self.vma_needs_copy(tmp, vma):
                self.copy_page_range(child, tmp, vma)
        # VMAs are copied one for one, never merged: neighbours that only
        # differed in VM_LOCKED stay apart in the child.
        prev = None
        for vma in child._vmas:
            if prev is not None and prev.end == vma.start and child._vmas_would_merge(prev, vma):
                child._unmerged_ok.add(vma.start)
            prev = vma

    @staticmethod
    def vma_needs_copy(dst_vma, src_vma):
        """Only tables a fault could not rebuild are copied (R66).

        VM_COPY_ON_FORK: of its flags the model has VM_MAYBE_GUARD (guard
        markers, also in shmem VMAs, which have no anon_vma); then any VMA that
        has an anon_vma. Shared memory, or private memory never written (zero
        page only), is faulted in again by the child.
        """
        if dst_vma.flags & VM_MAYBE_GUARD:
            return True
        return src_vma.anon_vma is not None

    def copy_page_range(self, dst, dst_vma, vma):
        """copy_p4d/pud/pmd_range(): one child table per parent entry that
        points to one over the VMA, allocated once however many VMAs it spans,
        and a PTE table even when all its entries are none (R67)."""
        is_cow = (vma.flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE
        addr = vma.start
        end = vma.end
        while addr < end:
            pgd_next = min((addr + PGDIR_SIZE) & _PGDIR_MASK or end, end)
            src_pud = self._pgd.children[(addr >> PGDIR_SHIFT) & 511]
            if src_pud is None:
                addr = pgd_next
                continue
            dst_pud = dst.__pud_alloc(addr)
            while addr < pgd_next:
                pud_next = min((addr + PUD_SIZE) & _PUD_MASK or pgd_next, pgd_next)
                src_pmd = src_pud.children[(addr >> PUD_SHIFT) & 511]
                if src_pmd is None:
                    addr = pud_next
                    continue
                dst_pmd = dst.__pmd_alloc(dst_pud, addr)
                while addr < pud_next:
                    pmd_next = min((addr + PMD_SIZE) & _PMD_MASK or pud_next, pud_next)
                    index = (addr >> PMD_SHIFT) & 511
                    if pmd_trans_huge(src_pmd.entries[index]):
                        self.copy_huge_pmd(dst, dst_pmd, index, vma, src_pmd)
                        addr = pmd_next
                        continue
                    src_pte = src_pmd.children[index]
                    if src_pte is not None:
                        dst_pte = dst.__pte_alloc(dst_pmd, addr)
                        self.copy_pte_range(dst, dst_vma, vma, dst_pte, src_pte, addr, pmd_next, is_cow)
                    addr = pmd_next

    def copy_pte_range(self, dst, dst_vma, vma, dst_table, src_table, addr, end, is_cow):
        """copy_present_ptes() / copy_nonpresent_pte() for [addr, end) of one table (R68)."""
        src = src_table.entries
        out = dst_table.entries
        for i in range((addr >> PAGE_SHIFT) & 511, ((end - 1) >> PAGE_SHIFT & 511) + 1):
            pte = src[i]
            if pte_none(pte):
                continue
            if not pte_present(pte):
                swp_type, offset = pte_to_swp_entry(pte)
                if swp_type != _SWP_PTE_MARKER:
                    raise NotImplementedError("swap entries are not simulated")
                # copy_pte_marker(): guard (and poison) markers go with the VMA;
                # uffd-wp ones only to a registered child, which this one is not.
                marker = offset & (PTE_MARKER_POISONED | PTE_MARKER_GUARD)
                if marker:
                    out[i] = make_pte_marker(marker)
                continue
            frame = self.vm_normal_page(pte)
            if frame is not None:
                # The child shares the page; an anonymous one stops being
                # exclusive to either process. The zero page has no counters.
                frame.refcount += 1
                frame.mapcount += 1
                if frame.kind == _ANON:
                    frame.exclusive = False
                dst._rss[_KIND_COUNTER[frame.kind]] += 1
            if is_cow and pte & _PAGE_RW:
                # Write-protect it in both processes; the first write breaks COW.
                pte &= ~_PAGE_RW
                src[i] = pte
            if vma.flags & VM_SHARED:
                pte &= ~_PAGE_DIRTY
            # The child's copy is old, and not uffd-wp protected.
            out[i] = pte & ~(_PAGE_ACCESSED | _PAGE_UFFD_WP)

    # ---------------------------------------------------------- observation

    @property
    def pgtables_bytes(self):
        return self._pgtables_bytes

    @property
    def stats(self):
        return dict(self._stats)

    def status(self):
        rss = self._rss
        anon = rss[MM_ANONPAGES] * 4
        file_ = rss[MM_FILEPAGES] * 4
        shmem = rss[MM_SHMEMPAGES] * 4
        return {
            "VmSize": sum(v.pages() for v in self._vmas) * 4,
            "VmLck": self._locked_vm * 4,
            "VmPin": 0,
            "VmRSS": anon + file_ + shmem,
            "RssAnon": anon,
            "RssFile": file_,
            "RssShmem": shmem,
            "VmPTE": self._pgtables_bytes // 1024,
            "VmSwap": rss[MM_SWAPENTS] * 4,
            "HugetlbPages": 0,
        }

    def vmas(self):
        return [(v.start, v.end, v.flags, v.anon_vma is not None) for v in self._vmas]

    def _iter_pte_tables(self):
        for pud in self._pgd.children:
            if pud is None:
                continue
            for pmd in pud.children:
                if pmd is None:
                    continue
                for pte_table in pmd.children:
                    if pte_table is not None:
                        yield pte_table

    def entries(self, start=0, end=TASK_SIZE):
        start = _ulong(start)
        end = _ulong(end)
        for table in self._iter_pte_tables():
            if table.base + PMD_SIZE <= start or table.base >= end:
                continue
            for i, pte in enumerate(table.entries):
                if not pte:
                    continue
                addr = table.base + (i << PAGE_SHIFT)
                if start <= addr < end and not pte_none(pte):
                    yield addr, pte

    def tables(self):
        out = []
        for pud in self._pgd.children:
            if pud is None:
                continue
            out.append(("pud", pud.base))
            for pmd in pud.children:
                if pmd is None:
                    continue
                out.append(("pmd", pmd.base))
                for pte_table in pmd.children:
                    if pte_table is not None:
                        out.append(("pte", pte_table.base))
                # The tables deposited with huge PMDs: counted in VmPTE, linked
                # nowhere (R13).
                out.extend(("deposit", pmd.base + (index << PMD_SHIFT)) for index in _huge_indexes(pmd))
        # By address, then from the top of the hierarchy down (api.md); the level
        # names do not sort that way alphabetically.
        depth = {"pud": 0, "pmd": 1, "pte": 2, "deposit": 2}
        return sorted(out, key=lambda t: (t[1], depth[t[0]]))

    def _iter_huge_pmds(self):
        for pud in self._pgd.children:
            if pud is None:
                continue
            for pmd in pud.children:
                if pmd is None:
                    continue
                for index in _huge_indexes(pmd):
                    yield pmd.base + (index << PMD_SHIFT), pmd.entries[index]

    def huge_pmds(self):
        """(address, entry) of every huge PMD (THP or huge zero page), ascending."""
        return list(self._iter_huge_pmds())

    def read_entry(self, address, level="pte"):
        address = _ulong(address)
        if level not in _LEVEL_NAMES:
            raise ValueError(f"level must be one of {_LEVEL_NAMES}, not {level!r}")
        depth = _LEVEL_NAMES.index(level)
        table = self._pgd
        for lvl in range(depth):
            table = table.children[(address >> _LEVEL_SHIFT[lvl]) & 511]
            if table is None:
                return 0
        return table.entries[(address >> _LEVEL_SHIFT[depth]) & 511]

    # --------------------------------------------------------------- check

    def check(self):
        """Raise InvariantError for any state Linux could not be in (R76)."""
        self._check_vmas()
        counted, deposits, mapped = self._check_tables()
        self._check_table_pages()
        if deposits != self._nr_deposits:
            raise InvariantError("deposit", f"{self._nr_deposits} deposits for {deposits} huge PMDs (R13)")
        if self._pgtables_bytes != (counted + deposits) * PAGE_SIZE:
            raise InvariantError(
                "pgtables_bytes",
                f"{self._pgtables_bytes} != 4096 * ({counted} linked tables + {deposits} deposits) (R10, R13, R76.1)"
            )
        rss = [0, 0, 0, 0]
        for pfn, count in mapped.items():
            frame = self._mem.frames.get(pfn)
            if frame is None:
                raise InvariantError("frame", f"PTE maps freed frame {pfn}")
            rss[_KIND_COUNTER[frame.kind]] += count
            if frame.mapcount < count or frame.refcount < frame.mapcount:
                raise InvariantError("mapcount", f"frame {pfn}: mapcount {frame.mapcount}, refcount "
                                     f"{frame.refcount} below our {count} PTEs")
        if rss != self._rss:
            raise InvariantError("rss", f"counters {self._rss} != mapped pages {rss} (R14, R76.3)")
        # Frames are shared by the processes of the machine (fork, shmem): a
        # frame's mapcount is the number of PTEs mapping it in all of them.
        maps_all = dict(mapped)
        for other in self.machine.mms:
            if other is not self:
                for pfn, count in other._mapped_frames().items():
                    maps_all[pfn] = maps_all.get(pfn, 0) + count
        for pfn, frame in self._mem.frames.items():
            maps = maps_all.get(pfn, 0)
            if frame.mapcount != maps:
                raise InvariantError("mapcount", f"frame {pfn}: mapcount {frame.mapcount} != {maps} PTEs")
            held = 1 if frame.shmem is not None and frame.shmem.pages.get(frame.index) is frame else 0
            if frame.refcount != maps + held:
                raise InvariantError("refcount", f"frame {pfn}: refcount {frame.refcount} != {maps} + {held}")
            if frame.refcount == 0:
                raise InvariantError("refcount", f"frame {pfn} is allocated with no reference")
            if frame.exclusive and (frame.kind != _ANON or frame.mapcount != 1):
                raise InvariantError("anon-exclusive", f"frame {pfn}: exclusive with mapcount {frame.mapcount}")
        locked = sum(v.pages() for v in self._vmas if v.flags & VM_LOCKED)
        if locked != self._locked_vm:
            raise InvariantError("locked_vm", f"{self._locked_vm} != {locked} locked VMA pages")
        if self._dead and (self._pgtables_bytes or any(self._rss) or self._vmas):
            raise InvariantError("exit", "state left after exit (R15)")

    def _check_vmas(self):
        prev = None
        for vma in self._vmas:
            if vma.start & (PAGE_SIZE - 1) or vma.end & (PAGE_SIZE - 1) or vma.start >= vma.end:
                raise InvariantError("vma-alignment", repr(vma))
            if vma.end > TASK_SIZE:
                raise InvariantError("vma-range", repr(vma))
            if prev is not None:
                if prev.end > vma.start:
                    raise InvariantError("vma-order", f"{prev!r} overlaps {vma!r}")
                if prev.end == vma.start and vma.start not in self._unmerged_ok and self._vmas_would_merge(prev, vma):
                    raise InvariantError("vma-merge", f"{prev!r} and {vma!r} would have been merged (R22)")
            prev = vma
        if self._vma_starts != [v.start for v in self._vmas]:
            raise InvariantError("vma-index", "start index out of date")

    def _vmas_would_merge(self, prev, vma):
        """Whether Linux would merge two adjacent VMAs."""
        return (
            not (vma.flags & VM_SPECIAL)
            and self.is_mergeable_vma(prev, vma.flags, vma.shmem)
            and self._anon_vma_compatible_merge(prev.anon_vma, vma.anon_vma)
            and prev.pgoff + prev.pages() == vma.pgoff
        )

    def _mapped_frames(self):
        """pfn -> how many of our present entries (PTEs and huge PMDs) map that data frame."""
        mapped = {}
        for table in self._iter_pte_tables():
            for pte in table.entries:
                if pte and pte_present(pte) and not pte & _PAGE_SPECIAL:
                    pfn = pte_pfn(pte)
                    mapped[pfn] = mapped.get(pfn, 0) + 1
        for _addr, entry in self._iter_huge_pmds():
            if not entry & _PAGE_SPECIAL:
                head = pte_pfn(entry)
                for pfn in range(head, head + HPAGE_PMD_NR):
                    mapped[pfn] = mapped.get(pfn, 0) + 1
        return mapped

    def _check_tables(self):
        counted = 0
        deposits = 0
        mapped = {}
        for pgd_i, pud in self._linked_children(self._pgd):
            counted += 1
            for pud_i, pmd in self._linked_children(pud):
                counted += 1
                for pmd_i, pte_table in self._linked_children(pmd):
                    counted += 1
                    self._check_pte_table(pte_table, mapped)
                for index in _huge_indexes(pmd):
                    if pmd.children[index] is not None:
                        raise InvariantError("table-link", f"huge PMD entry {index} with a table")
                    deposits += 1
                    self._check_huge_pmd(pmd.base + (index << PMD_SHIFT), pmd.entries[index], mapped)
        return counted, deposits, mapped

    def _check_huge_pmd(self, addr, entry, mapped):
        vma = self._vma_containing(addr)
        if vma is None or vma.end < addr + PMD_SIZE:
            raise InvariantError("huge-pmd", f"huge PMD at {addr:#x} not inside one VMA")
        if not vma_is_anonymous(vma) or vma.anon_vma is None:
            raise InvariantError("huge-pmd", f"huge PMD at {addr:#x} outside private anonymous memory "
                                 "with an anon_vma")
        prot = vm_get_page_prot(vma.flags)
        fixed = _PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_USER | _PAGE_NX
        if (entry & fixed) != (prot & fixed):
            raise InvariantError("pte-prot", f"huge PMD {entry:#x} at {addr:#x} does not match vm_page_prot {prot:#x}")
        if entry & _PAGE_RW and not (vma.flags & VM_WRITE):
            raise InvariantError("pte-prot", f"writable huge PMD at {addr:#x} in a read-only VMA")
        head = pte_pfn(entry)
        if head == HUGE_ZERO_PFN:
            if not entry & _PAGE_SPECIAL or entry & _PAGE_RW:
                raise InvariantError("zero-page", f"bad huge zero PMD {entry:#x} at {addr:#x}")
            return
        if entry & _PAGE_SPECIAL:
            raise InvariantError("zero-page", f"special huge PMD {entry:#x} at {addr:#x}")
        for i in range(HPAGE_PMD_NR):
            frame = self._mem.frames.get(head + i)
            if frame is None or frame.kind != _ANON or frame.thp_index != i:
                raise InvariantError("thp", f"huge PMD at {addr:#x} does not map the 512 pages of one THP "
                                     f"(page {i})")
            mapped[head + i] = mapped.get(head + i, 0) + 1
        if entry & _PAGE_RW and not self._mem.frames[head].exclusive:
            raise InvariantError("anon-exclusive", f"writable huge PMD at {addr:#x} maps a shared THP (R69)")

    def _linked_children(self, parent):
        """(index, child) of every child table, after checking all 512 links of parent."""
        out = []
        for index, child in enumerate(parent.children):
            if child is None:
                if parent.entries[index] and not (parent.level == _PMD and parent.entries[index] & _PAGE_PSE):
                    self._check_link(parent, index, child)
                continue
            self._check_link(parent, index, child)
            out.append((index, child))
        return out

    def _check_table_pages(self):
        """Every linked table owns its page: not free, not a data frame, linked once."""
        free = set(self._mem._free_pfns)
        seen = {self._pgd.pfn}
        for table in self._iter_upper_and_pte_tables():
            if table.pfn in free:
                raise InvariantError("table-freed", f"{_LEVEL_NAMES[table.level]} table at {table.base:#x} "
                                     f"is linked but its page {table.pfn} is free")
            if table.pfn in self._mem.frames:
                raise InvariantError("table-freed", f"table page {table.pfn} is also a data frame")
            if table.pfn in seen:
                raise InvariantError("table-link", f"table page {table.pfn} is linked twice")
            seen.add(table.pfn)

    def _iter_upper_and_pte_tables(self):
        for pud in self._pgd.children:
            if pud is None:
                continue
            yield pud
            for pmd in pud.children:
                if pmd is None:
                    continue
                yield pmd
                for pte_table in pmd.children:
                    if pte_table is not None:
                        yield pte_table

    @staticmethod
    def _check_link(parent, index, child):
        entry = parent.entries[index]
        if child is None:
            if entry:
                raise InvariantError("table-link", f"{_LEVEL_NAMES[parent.level]} entry {index} set with no table")
            return
        if entry != (child.pfn << PAGE_SHIFT) | _PAGE_TABLE:
            raise InvariantError("table-link", f"{_LEVEL_NAMES[parent.level]} entry {index} does not point at its table")
        if child.base != parent.base + (index << _LEVEL_SHIFT[parent.level]):
            raise InvariantError("table-base", f"table at {child.base:#x} under wrong entry")

    def _check_pte_table(self, table, mapped):
        vma = None
        fixed = _PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_USER | _PAGE_NX
        for i, pte in enumerate(table.entries):
            if not pte or pte_none(pte):  # the cheap test first: most entries are 0
                continue
            addr = table.base + (i << PAGE_SHIFT)
            if vma is None or not (vma.start <= addr < vma.end):
                vma = self._vma_containing(addr)
                if vma is not None:
                    prot = vm_get_page_prot(vma.flags)
            if vma is None:
                raise InvariantError("pte-outside-vma", f"entry {pte:#x} at {addr:#x} outside every VMA")
            if not pte_present(pte):
                if not is_guard_pte_marker(pte):
                    raise InvariantError("pte-kind", f"unknown non-present entry {pte:#x} at {addr:#x}")
                continue
            if (pte & fixed) != (prot & fixed):
                raise InvariantError("pte-prot", f"entry {pte:#x} at {addr:#x} does not match vm_page_prot {prot:#x}")
            if pte & _PAGE_RW and not (vma.flags & VM_WRITE):
                raise InvariantError("pte-prot", f"writable entry at {addr:#x} in a read-only VMA")
            if pte & _PAGE_SPECIAL:
                if pte_pfn(pte) != ZERO_PFN or pte & (_PAGE_RW | _PAGE_DIRTY) or not vma_is_anonymous(vma):
                    raise InvariantError("zero-page", f"bad special entry {pte:#x} at {addr:#x}")
                continue
            pfn = pte_pfn(pte)
            frame = self._mem.frames.get(pfn)
            if frame is None:
                raise InvariantError("frame", f"entry at {addr:#x} maps free frame {pfn}")
            if frame.kind == _ANON:
                if not vma_is_anonymous(vma) or vma.anon_vma is None:
                    raise InvariantError("anon_vma", f"anonymous page at {addr:#x} without an anon_vma (R18)")
                if pte & _PAGE_RW and not frame.exclusive:
                    raise InvariantError("anon-exclusive", f"writable entry at {addr:#x} maps a shared page (R69)")
            elif frame.shmem is not vma.shmem or frame.index != self._linear_page_index(vma, addr):
                raise InvariantError("shmem", f"shmem page at {addr:#x} is not the object's page")
            mapped[pfn] = mapped.get(pfn, 0) + 1
