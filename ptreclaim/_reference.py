"""Pure-Python reference model of Linux 6.18 x86-64 user page tables.

This module is the executable specification and the test oracle for the
compiled core. It is written for clarity: plain lists, dicts and small
classes, one function per kernel step, each named after the kernel function
it simulates so that ``mm/memory.c``, ``mm/pt_reclaim.c``, ``mm/madvise.c``,
``mm/mmap.c``/``mm/vma.c``, ``mm/mprotect.c``, ``mm/mlock.c`` and
``mm/mmu_gather.c`` can be read side by side with it.

Rule numbers (``R12``) and scenarios (``SC-05``) refer to the behaviour spec,
``linux-mm-semantics.md``. Nothing here is shared with the core.

Modelled: private anonymous and shared anonymous (shmem) mappings, files
(``Machine.create_file``: disk files cached in 4 KiB folios and shmem files,
mapped shared or private, with an fd table per process), 4 KiB
faults, the zero page, fault-around, mprotect/mlock/munlock/munmap/exit,
every madvise advice of this kernel configuration, guard markers, PT reclaim
(fast and slow path) and the mmu_gather batching that decides between them,
fork (dup_mmap, copy_page_range) with copy-on-write, anonymous transparent
huge pages: PMD-mapped THPs and the huge zero page with their deposited PTE
tables, PMD and folio splits, MADV_COLLAPSE (``docs/thp.md``), and mremap
(``mm/mremap.c``: move_page_tables, copy_vma, MREMAP_FIXED/DONTUNMAP).
Swap: a swap device on the Machine, written by MADV_PAGEOUT and read back
on faults (docs/swap.md). Shmem huge folios: made by MADV_COLLAPSE, mapped
by PMD leaves without a deposit or by PTEs, split by partial COLD/PAGEOUT and
hole punches. hugetlb mappings (MAP_HUGETLB) have a section of their own at
the end.
Not modelled yet: large folios of disk files and readahead, khugepaged,
userfaultfd.

There is no concurrency, so ``need_resched()`` never fires and the PMD
try-lock of the PT-reclaim fast path always succeeds (R57, R77); the slow
path runs only after a forced batch flush (R56).
"""

import bisect
import errno
import heapq
import os
import weakref

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
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
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
    TASK_SIZE_LA57,
    DEFAULT_MAP_WINDOW,
    PGDIR_SHIFT_LA57,
    PGDIR_SIZE_LA57,
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
    is_swap_pte,
    make_swap_pte,
    swp_offset,
    ZERO_PFN,
    _PAGE_SWP_EXCLUSIVE,
    _PAGE_SWP_UFFD_WP,
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
from .errors import BusError, InvariantError, OutOfMemory, SegmentationFault

__all__ = ["MM", "Machine", "File"]

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
# MAX_LFS_FILESIZE on 64-bit: the largest i_size (and mmap end) of a regular file.
_MAX_LFS_FILESIZE = (1 << 63) - 1
# sysctl vm.max_map_count.
_MAX_MAP_COUNT = 65530
# fault_around_bytes = 64 KiB (R29).
_FAULT_AROUND_PAGES = 16
# A PMD-sized THP: 512 consecutive frames (HPAGE_PMD_NR).
HPAGE_PMD_NR = PMD_SIZE // PAGE_SIZE
# Sizes (pages) of the large page-cache folios: order 1 to PMD order.
_LARGE_FOLIO_SIZES = frozenset(1 << order for order in range(1, 10))
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
_FILE = "file"
_KIND_COUNTER = {_ANON: MM_ANONPAGES, _SHMEM: MM_SHMEMPAGES, _FILE: MM_FILEPAGES}

# Table levels.
# _PGD is the top with 4-level paging, where the P4D is folded into it (R2);
# with 5 levels the top is _PGD5 (bits 56..48) and _P4D tables (bits 47..39)
# sit under it, one per 256 TiB region.
_PGD, _PUD, _PMD, _PTE, _P4D, _PGD5 = 0, 1, 2, 3, 4, 5
_LEVEL_NAMES = ("pgd", "pud", "pmd", "pte", "p4d", "pgd")
_READ_LEVELS = ("pgd", "p4d", "pud", "pmd", "pte")
_PGDIR5_SHIFT = PGDIR_SHIFT_LA57
_PGDIR5_SIZE = PGDIR_SIZE_LA57
_LEVEL_SHIFT = (PGDIR_SHIFT, PUD_SHIFT, PMD_SHIFT, PAGE_SHIFT, PGDIR_SHIFT, _PGDIR5_SHIFT)
# LA57: TASK_SIZE_MAX is 2^56 - 4 KiB; DEFAULT_MAP_WINDOW keeps the 4-level
# limit for every mapping that does not ask for more (arch/x86 processor.h).
_TASK_SIZE_LA57 = TASK_SIZE_LA57
_DEFAULT_MAP_WINDOW = DEFAULT_MAP_WINDOW

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
    "p4d_tables_allocated",
    "p4d_tables_freed",
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
    """A PMD entry that maps 2 MiB itself (PSE): a THP or the huge zero page, not
    a page of the hugetlb pool."""
    return bool(pmd & _PAGE_PSE) and pte_pfn(pmd) < _HUGETLB_PFN_BASE


def _huge_indexes(pmd_table):
    """The indexes of a PMD table's THP and huge zero page entries (a table link
    never has PSE; hugetlb leaves map pages of the hugetlb pool)."""
    return [i for i, entry in enumerate(pmd_table.entries)
            if entry & _PAGE_PSE and pte_pfn(entry) < _HUGETLB_PFN_BASE]


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
    """A 4 KiB data page: a small folio, one of the 512 pages of a THP, or a page
    of a large shmem page-cache folio."""

    __slots__ = ("pfn", "kind", "refcount", "mapping", "mapcount", "lazyfree", "dirty", "index", "exclusive",
                 "written", "thp_index", "mlocked", "folio_nr")

    def __init__(self, pfn, kind):
        self.pfn = pfn
        self.kind = kind
        self.refcount = 1
        self.mapcount = 0
        self.lazyfree = False
        self.dirty = False
        self.mapping = None
        self.index = None
        # PG_anon_exclusive: an anonymous page mapped by one process only, which
        # a write fault may reuse without looking further (R69).
        self.exclusive = False
        # A store by the CPU has reached the page, so it is not all zeroes. A
        # population (GUP) maps pages without storing to them; a COW or
        # collapse copy inherits it. A folio split maps the pages that were
        # never written to the shared zero page (docs/thp.md).
        self.written = False
        # Place in its THP (0..511) while the page belongs to one, else None. A
        # shmem page-cache folio may also be large with fewer pages (the pieces
        # a hole punch leaves of a huge one): the place in that folio.
        self.thp_index = None
        # Pages in its folio while thp_index is set (512 for a THP).
        self.folio_nr = 1
        # PG_mlocked that no locked VMA will clear (after MREMAP_DONTUNMAP of a
        # locked VMA): reclaim leaves the page alone.
        self.mlocked = False


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

    def alloc_pmd_folio(self, kind):
        """512 consecutive new frames of one folio, each with one reference and
        no mapping. Its first pfn, or None if max_frames leaves no room."""
        if self.max_frames is not None and len(self.frames) + HPAGE_PMD_NR > self.max_frames:
            return None
        if self._free_blocks:
            head = self._free_blocks.pop()
        else:
            head = self._next_pfn
            self._next_pfn += HPAGE_PMD_NR
        for i in range(HPAGE_PMD_NR):
            frame = _Frame(head + i, kind)
            frame.thp_index = i
            frame.folio_nr = HPAGE_PMD_NR
            self.frames[head + i] = frame
        return head

    def alloc_thp(self):
        """A new anonymous THP as a PMD fault maps it: 512 exclusive pages, each
        with the PMD's reference and mapping. Its first pfn, or None if
        max_frames leaves no room for 512 frames."""
        head = self.alloc_pmd_folio(_ANON)
        if head is None:
            return None
        for i in range(HPAGE_PMD_NR):
            frame = self.frames[head + i]
            frame.mapcount = 1
            frame.exclusive = True
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


class _Inode:
    """An inode and its page cache: a shmem object (the one behind a
    MAP_SHARED|MAP_ANONYMOUS mmap, or a memfd) or a regular file on a disk
    file system (R28-R30).

    ``refs`` counts what keeps the inode alive: VMAs mapping it, open fds and
    Python ``File`` handles. When it drops to 0 the inode is evicted with its
    page cache and its swap (iput()).
    """

    __slots__ = ("pages", "size", "shmem", "refs", "swapped", "machine", "__weakref__")

    def __init__(self, machine, size, shmem):
        self.machine = machine
        machine.inodes.add(self)
        self.pages = {}  # page index -> _Frame; the page cache holds one reference
        self.size = size  # i_size in bytes
        self.shmem = shmem
        self.refs = 0
        # page index -> swap offset: the swap entries shmem keeps in its page
        # cache for pages written out (each holds one reference to its slot).
        self.swapped = {}

    @property
    def nr_pages(self):
        """Pages below i_size: an index at or past this one is beyond EOF."""
        return (self.size + PAGE_SIZE - 1) >> PAGE_SHIFT

    @property
    def kind(self):
        return _SHMEM if self.shmem else _FILE

    def get(self):
        self.refs += 1

    def put(self):
        self.refs -= 1
        if self.refs == 0:
            mem = self.machine.mem
            for frame in self.pages.values():
                mem.folio_put(frame)
            self.pages.clear()
            for offset in self.swapped.values():
                self.machine.swap.swap_free(offset)
            self.swapped.clear()

    def add_page(self, index):
        """A new page-cache page at index (clean), or None when no frame is free."""
        frame = self.machine.mem.alloc_frame(self.kind)
        if frame is None:
            return None
        frame.mapping = self
        frame.index = index
        self.pages[index] = frame
        return frame

    def remove_page(self, index):
        """Drop the page cache's reference (truncation, hole punch, reclaim)."""
        self.machine.mem.folio_put(self.pages.pop(index))

    def huge_head(self, index):
        """The first pfn of the huge (PMD-sized) folio that holds page index, or
        None: a smaller folio, or nothing cached there."""
        frame = self.pages.get(index)
        if frame is None or frame.thp_index is None or frame.folio_nr != HPAGE_PMD_NR:
            return None
        return frame.pfn - frame.thp_index


class File:
    """A file (the inode) made by ``Machine.create_file``. Its page cache lives
    while an MM holds it open or maps it, or this object is referenced."""

    __slots__ = ("_inode", "__weakref__")

    def __init__(self, *args, **kwargs):
        raise TypeError("files are made by Machine.create_file()")

    @classmethod
    def _new(cls, inode):
        self = object.__new__(cls)
        self._inode = inode
        inode.get()
        return self

    def __del__(self):
        inode = getattr(self, "_inode", None)
        if inode is not None:
            self._inode = None
            inode.put()

    @property
    def size(self):
        return self._inode.size

    @property
    def shmem(self):
        return self._inode.shmem

    @property
    def nr_cached(self):
        return len(self._inode.pages)

    @property
    def nr_dirty(self):
        if self._inode.shmem:
            return 0
        return sum(1 for frame in self._inode.pages.values() if frame.dirty)

    def __repr__(self):
        kind = "shmem" if self.shmem else "file"
        return f"<File {kind} size={self.size} cached={self.nr_cached}>"


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
        self.children = None if level == _PTE else [None] * 512


class _Vma:
    __slots__ = ("start", "end", "flags", "pgoff", "anon_vma", "file", "hugetlb")

    def __init__(self, start, end, flags, pgoff, anon_vma=None, file=None):
        self.start = start
        self.end = end
        self.flags = flags
        self.pgoff = pgoff
        self.anon_vma = anon_vma
        self.file = file
        self.hugetlb = None  # _HugetlbVma for a VM_HUGETLB mapping

    def pages(self):
        return (self.end - self.start) >> PAGE_SHIFT

    def __repr__(self):
        return f"<vma {self.start:#x}-{self.end:#x} {self.flags:#x}>"


def vma_is_anonymous(vma):
    # Private anonymous memory only: shmem VMAs have vm_ops (R17).
    return vma.file is None


def vma_wants_writenotify(vma):
    """A shared writable mapping of a disk file: the file system wants to hear
    of the first write to each page (page_mkwrite, dirty accounting), so
    vm_page_prot is read-only. shmem has neither."""
    return (
        (vma.flags & (VM_WRITE | VM_SHARED)) == (VM_WRITE | VM_SHARED)
        and vma.file is not None
        and not vma.file.shmem
    )


def vma_page_prot(vma):
    """vma->vm_page_prot, as vma_set_page_prot() computes it."""
    flags = vma.flags
    if vma_wants_writenotify(vma):
        flags &= ~VM_SHARED
    return vm_get_page_prot(flags)


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
        self.kind = kind  # "SIGSEGV", "SIGBUS" or "OOM"
        self.address = address


class _RemapState:
    """struct vma_remap_struct, reduced to what the simulation needs."""

    __slots__ = ("addr", "old_len", "new_len", "flags", "new_addr", "vma", "delta", "remap_type",
                 "populate_expand")

    def __init__(self, addr, old_len, new_len, flags, new_addr):
        self.addr = addr
        self.old_len = old_len
        self.new_len = new_len
        self.flags = flags
        self.new_addr = new_addr
        self.vma = None
        self.delta = 0
        self.remap_type = None
        self.populate_expand = False


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
        if type(frame) is _HugePage:
            frame.hstate.put(frame)
        elif isinstance(frame, _GatherThp):
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

    def __init__(self, max_frames=None, totalram_pages=None, swap_pages=0, hugetlb_pages=0):
        for name, value in (("max_frames", max_frames), ("totalram_pages", totalram_pages)):
            if value is not None:
                _ulong(value)
        # The 2 MiB hugetlb pool (vm.nr_hugepages): the hugetlb section below.
        self.hstate = _Hstate(_ulong(hugetlb_pages))
        if max_frames is not None and max_frames == 0:
            raise ValueError("max_frames must be positive or None")
        if _ulong(swap_pages) > 0xFFFFFFFE:
            raise ValueError("swap_pages must fit the simulator's 32-bit slot numbers")
        self.mem = _PhysMem(max_frames)
        self.swap = _SwapDevice(swap_pages)
        # Overcommit mode 0 (OVERCOMMIT_GUESS) refuses one charge larger than
        # totalram_pages + total_swap_pages; RAM is max_frames by default, or
        # no limit.
        self.totalram_pages = totalram_pages if totalram_pages is not None else max_frames
        # The live processes on this machine, in creation order: a shmem hole
        # punch unmaps the object from all of them, and check() adds up their
        # mappings of each frame.
        self.mms = []
        # Every inode with a page cache (weakly: an evicted inode holds nothing).
        self.inodes = weakref.WeakSet()

    def create_file(self, size, *, shmem=False, cached=True):
        """A regular file (RssFile) or a shmem file (memfd, RssShmem) of size
        bytes. cached: every page below size is in the page cache (clean) or,
        for shmem, written; otherwise the cache is empty (shmem: all holes)."""
        size = _ulong(size)
        if size > _MAX_LFS_FILESIZE:
            raise OverflowError("size is larger than the largest file size")
        inode = _Inode(self, size, bool(shmem))
        handle = File._new(inode)
        if cached:
            for index in range(inode.nr_pages):
                frame = inode.add_page(index)
                if frame is None:
                    handle._inode = None
                    inode.put()
                    raise OutOfMemory(f"no free frame for page {index} of the file")
                frame.written = True
                # A written shmem page is dirty (it has no backing store).
                frame.dirty = inode.shmem
        return handle

    @property
    def frames_in_use(self):
        return len(self.mem.frames)

    def hugetlb_meminfo(self):
        h = self.hstate
        return {"HugePages_Total": h.nr_huge_pages, "HugePages_Free": h.free_huge_pages,
                "HugePages_Rsvd": h.resv_huge_pages, "HugePages_Surp": 0, "Hugepagesize": 2048}

    @property
    def swap_pages(self):
        """Slots of the swap device (0: no swap)."""
        return self.swap.nr_slots

    @property
    def swap_used(self):
        """Swap slots holding a page (referenced by swap PTEs or shmem objects)."""
        return len(self.swap.count)


class _SwapDevice:
    """One swap file, swap type 0 (mm/swapfile.c), written and read synchronously.

    Offset 0 is the swap header; slots are offsets 1..nr_slots. A slot's count
    is the swap entries (PTEs, shmem objects) referring to it; there is no swap
    cache, so the slot is free again when the count drops to 0. A new slot is
    the lowest free offset.
    """

    def __init__(self, nr_slots):
        self.nr_slots = nr_slots
        self.count = {}  # offset -> references (swap_map)
        self.next = 1  # lowest offset never handed out
        self.free_heap = []  # freed offsets below next

    def get_swap_page(self):
        """folio_alloc_swap() plus the reference of the entry to come; None if full."""
        if self.free_heap:
            offset = heapq.heappop(self.free_heap)
        elif self.next <= self.nr_slots:
            offset = self.next
            self.next += 1
        else:
            return None
        self.count[offset] = 1
        return offset

    def swap_duplicate(self, offset):
        self.count[offset] += 1

    def swap_free(self, offset):
        left = self.count[offset] - 1
        if left:
            self.count[offset] = left
        else:
            del self.count[offset]
            heapq.heappush(self.free_heap, offset)


class MM:
    """One simulated process address space (``mm_struct``); see ``docs/api.md``."""

    def __init__(self, *, pt_reclaim=True, thp="madvise", max_frames=None, split_ptlocks=True,
                 machine=None, hugetlb_pages=None, paging_levels=4):
        if type(paging_levels) is not int or paging_levels not in (4, 5):
            raise ValueError(f"paging_levels must be 4 or 5, not {paging_levels!r}")
        if thp not in ("never", "madvise", "always"):
            raise ValueError(f"thp must be 'never', 'madvise' or 'always', not {thp!r}")
        if pt_reclaim not in (True, False, "seed") or pt_reclaim is None:
            raise ValueError("pt_reclaim must be True, False or 'seed'")
        if machine is None:
            machine = Machine(max_frames, hugetlb_pages=hugetlb_pages or 0)
        elif max_frames is not None or hugetlb_pages is not None:
            raise ValueError("give max_frames and hugetlb_pages to the Machine, not to an MM on a shared one")
        self.machine = machine
        self.pt_reclaim = pt_reclaim
        self.split_ptlocks = bool(split_ptlocks)
        self.thp = thp
        self._mem = machine.mem
        self.paging_levels = paging_levels
        self._task_size = _TASK_SIZE_LA57 if paging_levels == 5 else TASK_SIZE
        self._pgd = _Table(_PGD5 if paging_levels == 5 else _PGD, self._mem.alloc_table_pfn(), 0)
        self._pgtables_bytes = 0
        # Huge PMDs, each with a PTE table deposited for a later split and
        # counted in VmPTE, though linked nowhere (R13).
        self._nr_deposits = 0
        self._rss = [0, 0, 0, 0]
        self._locked_vm = 0
        # VmLck pages no locked VMA accounts for: MREMAP_DONTUNMAP clears VM_LOCKED
        # on the old VMA without lowering locked_vm (measured on 6.18).
        self._locked_vm_stale = 0
        self._vmas = []
        self._vma_starts = []
        self._anon_vma_serial = 0
        self._stats = dict.fromkeys(_STAT_KEYS, 0)
        # Boundaries (addresses) where Linux legitimately leaves two mergeable
        # VMAs unmerged: a MAP_FIXED that failed after splitting (vms_abort).
        self._unmerged_ok = set()
        self._dead = False
        # mm->hugetlb_usage: pages mapped from the hugetlb pool (HugetlbPages).
        self._hugetlb_usage = 0
        # The fd table: fd -> (inode, opened for writing).
        self._fds = {}
        machine.mms.append(self)

    # ------------------------------------------------------------ the fd table

    def open(self, file, write=True):
        """open(2) of a File made on this machine: the lowest free fd >= 3."""
        if not isinstance(file, File):
            raise TypeError(f"open() needs a File, not {type(file).__name__}")
        self._check_alive()
        inode = file._inode
        if inode.machine is not self.machine:
            raise ValueError("the file belongs to another Machine")
        fd = 3
        while fd in self._fds:
            fd += 1
        inode.get()
        self._fds[fd] = (inode, bool(write))
        return fd

    def close(self, fd):
        fd = _cint(fd)
        self._check_alive()
        entry = self._fds.pop(fd, None)
        if entry is None:
            raise _oserror(errno.EBADF)
        entry[0].put()

    def _close_all(self):
        for inode, _write in self._fds.values():
            inode.put()
        self._fds = {}

    def _overcommit_limit(self):
        limit = self.machine.totalram_pages
        return float("inf") if limit is None else limit + self.machine.swap.nr_slots

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
        if vma.file is not None:
            vma.file.get()
        self._vmas_changed()

    def _remove_vma(self, vma):
        self._vmas.pop(self._vma_index(vma))
        self._vmas_changed()
        self._vma_put_file(vma)

    def _vma_put_file(self, vma):
        if vma.hugetlb is not None:
            self.hugetlb_vm_op_close(vma)
        if vma.file is not None:
            # The last reference gone (no mapping, fd or File handle): the inode
            # is evicted with its pages and its swap.
            vma.file.put()

    def _new_anon_vma(self):
        self._anon_vma_serial += 1
        return _AnonVma(self._anon_vma_serial)

    def __split_vma(self, vma, addr):
        """Split vma at addr; both halves keep the anon_vma and the file. A huge
        PMD that the new boundary would cut is split first."""
        if vma.hugetlb is not None:
            self.hugetlb_vm_op_split(vma, addr)
        else:
            self.split_huge_pmd_address(vma, addr)
        new = _Vma(addr, vma.end, vma.flags, vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT), vma.anon_vma, vma.file)
        if vma.hugetlb is not None:
            new.hugetlb = self.hugetlb_vm_op_open(vma.hugetlb)
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
    def is_mergeable_vma(vma, flags, file):
        # Sticky flags (VM_MAYBE_GUARD) do not stop a merge; the result keeps them.
        return not ((vma.flags ^ flags) & ~VM_STICKY) and vma.file is file

    def can_vma_merge_left(self, prev, start, flags, file, pgoff, anon_vma):
        """can_vma_merge_left()/can_vma_merge_after(): merge [start, ..) into prev."""
        if prev is None or prev.end != start:
            return False
        if not self.is_mergeable_vma(prev, flags, file):
            return False
        if not self._anon_vma_compatible_merge(prev.anon_vma, anon_vma):
            return False
        return prev.pgoff + prev.pages() == pgoff

    def can_vma_merge_right(self, nxt, end, flags, file, pgoff, nr_pages, anon_vma, prev, merge_left):
        if nxt is None or nxt.start != end:
            return False
        if not self.is_mergeable_vma(nxt, flags, file):
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
                merge_left = self.can_vma_merge_left(prev, start, newflags, vma.file, pgoff, vma.anon_vma)
            if right_side:
                merge_right = self.can_vma_merge_right(
                    nxt, end, newflags, vma.file, pgoff, nr_pages, vma.anon_vma, prev, merge_left
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

    def vma_merge_new_range(self, start, end, flags, pgoff, file=None):
        """vma_merge_new_range() for a new range without an anon_vma; the VMA or None."""
        if flags & VM_SPECIAL:
            return None
        nxt = self.find_vma(start)
        prev = self._vma_prev(nxt) if nxt is not None else (self._vmas[-1] if self._vmas else None)
        if nxt is not None and nxt.start < end:
            return None
        nr_pages = (end - start) >> PAGE_SHIFT
        merge_left = self.can_vma_merge_left(prev, start, flags, file, pgoff, None)
        merge_right = self.can_vma_merge_right(nxt, end, flags, file, pgoff, nr_pages, None, prev, merge_left)
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
                and a.file is b.file
                and _vma_hfile(a) is _vma_hfile(b)
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

    def __p4d_alloc(self, addr):
        """The table whose entries point at PUD tables: the PGD with 4 levels, else
        the P4D table of addr's 256 TiB region, made if missing. __p4d_alloc()
        links it without any mm_inc_nr_*(): it never counts in VmPTE (R10)."""
        if self.paging_levels == 4:
            return self._pgd
        i = (addr >> _PGDIR5_SHIFT) & 511
        p4d = self._pgd.children[i]
        if p4d is None:
            p4d = _Table(_P4D, self._mem.alloc_table_pfn(), i << _PGDIR5_SHIFT)
            self._pgd.children[i] = p4d
            self._pgd.entries[i] = (p4d.pfn << PAGE_SHIFT) | _PAGE_TABLE
            self._stats["p4d_tables_allocated"] += 1
        return p4d

    def __pud_alloc(self, addr):
        p4d = self.__p4d_alloc(addr)
        i = (addr >> PGDIR_SHIFT) & 511
        return p4d.children[i] or self._alloc_table(p4d, i, _PUD)

    def _pud_table(self, addr):
        """p4d_offset() then pud_offset(): the PUD table of addr's 512 GiB slot, or None."""
        top = self._pgd
        if self.paging_levels == 5:
            top = top.children[(addr >> _PGDIR5_SHIFT) & 511]
            if top is None:
                return None
        return top.children[(addr >> PGDIR_SHIFT) & 511]

    def _pud_skip(self, addr):
        """Where a walk resumes after a slot without a PUD table: the next 512 GiB
        slot, or the next 256 TiB region when it has no P4D table either."""
        if self.paging_levels == 5 and self._pgd.children[(addr >> _PGDIR5_SHIFT) & 511] is None:
            return (addr | (_PGDIR5_SIZE - 1)) + 1
        return (addr | (PGDIR_SIZE - 1)) + 1

    def _p4d_tables(self):
        """The tables whose entries point at PUD tables, ascending."""
        if self.paging_levels == 4:
            return [self._pgd]
        return [t for t in self._pgd.children if t is not None]

    def _pud_tables(self):
        for p4d in self._p4d_tables():
            for pud in p4d.children:
                if pud is not None:
                    yield pud

    def __pmd_alloc(self, pud, addr):
        i = (addr >> PUD_SHIFT) & 511
        return pud.children[i] or self._alloc_table(pud, i, _PMD)

    def __pte_alloc(self, pmd, addr):
        i = (addr >> PMD_SHIFT) & 511
        return pmd.children[i] or self._alloc_table(pmd, i, _PTE)

    def _walk_pmd(self, addr):
        pud = self._pud_table(addr)
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
            if self._is_file_pmd(pmd.entries[index]):
                if not write:
                    return None
                # wp_huge_pmd(): shmem has no ->huge_fault, so the PMD is split
                # (for a file PMD: cleared) and the fault goes on with it none.
                self.split_huge_pmd(vma, pmd, index)
                return self.do_fault(vma, pmd, None, addr, True)
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
            return self.do_swap_page(vma, pte_table, i, pte, addr, write)
        if write and not (pte & _PAGE_RW):
            return self.do_wp_page(vma, pte_table, i, pte, addr)
        # Spurious fault: the access bits are all that change.
        pte_table.entries[i] = pte | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
        return None

    def do_swap_page(self, vma, pte_table, i, pte, addr, write):
        """A fault on a non-present entry: a guard marker, or a swap entry read back in."""
        if is_guard_pte_marker(pte):
            # handle_pte_marker(): a guard region raises SIGSEGV (R43).
            raise _FaultError("SIGSEGV", addr)
        if not is_swap_pte(pte):
            raise NotImplementedError("this kind of non-present entry is not simulated")
        # The page is read into a new frame and the slot reference freed
        # (RssAnon +1, VmSwap -1). It is exclusive when the entry says so, or
        # when no one else refers to the slot (a page read without the swap
        # cache); an exclusive page is mapped writable if the VMA is, and dirty
        # only for a write.
        swap = self.machine.swap
        offset = swp_offset(pte)
        exclusive = bool(pte & _PAGE_SWP_EXCLUSIVE) or swap.count[offset] == 1
        frame = self._mem.alloc_frame(_ANON)
        if frame is None:
            raise _FaultError("OOM", addr)
        frame.mapcount = 1
        frame.exclusive = exclusive
        entry = pfn_pte(frame.pfn, vm_get_page_prot(vma.flags))
        if exclusive and vma.flags & VM_WRITE:
            entry |= _PAGE_RW
            if write:
                entry |= _PAGE_DIRTY
                write = False
        swap.swap_free(offset)
        self._rss[MM_ANONPAGES] += 1
        self._rss[MM_SWAPENTS] -= 1
        pte_table.entries[i] = entry
        if write:
            # The entry does not allow the write: do_wp_page().
            return self.do_wp_page(vma, pte_table, i, entry, addr)
        return None

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
        if vma.flags & (VM_SHARED | VM_MAYSHARE):
            # wp_page_shared(): the first write to a page a read fault mapped
            # (page_mkwrite for a disk file): writable, and the folio dirty.
            frame.dirty = True
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
            # Our mapping of the old page and the reference it held go; the
            # other process (or the page cache) keeps it. The copy holds the old
            # page's data. A page-cache page leaves RssFile/RssShmem for RssAnon.
            if old.kind != _ANON:
                self._rss[_KIND_COUNTER[old.kind]] -= 1
                self._rss[MM_ANONPAGES] += 1
            new.written = old.written
            old.mapcount -= 1
            self._mem.folio_put(old)
        return None

    def do_fault(self, vma, pmd, pte_table, addr, write):
        """File and shmem faults on a none PTE (R28-R30)."""
        if not write:
            return self.do_read_fault(vma, pmd, pte_table, addr)
        if not (vma.flags & VM_SHARED):
            return self.do_cow_fault(vma, pmd, pte_table, addr)
        return self.do_shared_fault(vma, pmd, pte_table, addr)

    def _linear_page_index(self, vma, addr):
        return vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT)

    def set_pte_range(self, vma, pte_table, i, frame, write):
        """Map one page-cache page: read-only unless vm_page_prot allows writes
        (shmem) or the fault writes. A read fault that maps a dirty folio
        writable (shmem) maps it dirty, so that a later write needs no fault
        to set the bit (set_pte_range() in mm/memory.c)."""
        entry = pfn_pte(frame.pfn, vma_page_prot(vma))
        if write:
            entry |= _PAGE_DIRTY
            if vma.flags & VM_WRITE:
                entry |= _PAGE_RW
        elif entry & _PAGE_RW and frame.dirty:
            entry |= _PAGE_DIRTY
        pte_table.entries[i] = entry
        frame.refcount += 1
        frame.mapcount += 1
        self._rss[_KIND_COUNTER[frame.kind]] += 1

    def do_fault_around(self, vma, pmd, pte_table, addr):
        """The 16-PTE window around addr, aligned on the PTE index and clipped to
        the VMA and the PTE table; filemap_map_pages() clips it to EOF and maps
        the cached pages whose PTE is none (R29)."""
        pte_off = (addr >> PAGE_SHIFT) & 511
        vma_off = (addr - vma.start) >> PAGE_SHIFT
        nr = _FAULT_AROUND_PAGES
        from_pte = max(pte_off & ~(nr - 1), pte_off - min(pte_off, vma_off))
        to_pte = min(from_pte + nr, PTRS_PER_PTE, pte_off + vma.pages() - vma_off) - 1
        obj = vma.file
        base_index = self._linear_page_index(vma, addr) - pte_off
        to_pte = min(to_pte, obj.nr_pages - 1 - base_index)
        found = [
            (j, obj.pages[base_index + j])
            for j in range(from_pte, to_pte + 1)
            if base_index + j in obj.pages
        ]
        if not found:
            # filemap_map_pages() installs the table only with a folio to map.
            return pte_table, False
        if pte_table is None:
            # filemap_map_pmd(): the window's first folio, if PMD-sized, is mapped
            # by the PMD when do_set_pmd() accepts it.
            if found[0][1].folio_nr == HPAGE_PMD_NR and self.do_set_pmd(vma, pmd, addr, found[0][1], False):
                return None, True
            pte_table = self.__pte_alloc(pmd, addr)
        todo = dict(found)
        if obj.shmem:
            # filemap_map_folio_range(): a large folio is mapped whole when it lies
            # inside the VMA and inside this PTE table, EOF or not for shmem.
            for j, frame in found:
                if frame.thp_index is not None and self._folio_fits_table(vma, pte_table, j, frame):
                    head = frame.pfn - frame.thp_index
                    first = j - frame.thp_index
                    for k in range(frame.folio_nr):
                        todo.setdefault(first + k, self._mem.frames[head + k])
        mapped_fault_page = False
        for j in sorted(todo):
            if not pte_none(pte_table.entries[j]):
                continue
            self.set_pte_range(vma, pte_table, j, todo[j], False)
            if j == pte_off:
                mapped_fault_page = True
        return pte_table, mapped_fault_page

    def filemap_fault(self, vma, addr):
        """->fault: the page-cache page at the faulting index, read in (regular
        file: one clean page, no readahead) or allocated (shmem: a zeroed page, or
        the page read back from swap). SIGBUS at or past EOF."""
        obj = vma.file
        index = self._linear_page_index(vma, addr)
        if index >= obj.nr_pages:
            raise _FaultError("SIGBUS", addr)
        frame = obj.pages.get(index)
        if frame is None:
            frame = obj.add_page(index)
            if frame is None:
                raise _FaultError("OOM", addr)
            if not obj.shmem:
                frame.written = True  # file data, not zeroes
            offset = obj.swapped.pop(index, None)
            if offset is not None:
                # shmem_swapin_folio(): the page comes back dirty, its slot is freed.
                frame.dirty = True
                self.machine.swap.swap_free(offset)
        return frame

    def finish_fault(self, vma, pmd, pte_table, addr, frame, write):
        if pte_table is None:
            if frame.thp_index is not None and self.do_set_pmd(vma, pmd, addr, frame, write):
                return
            pte_table = self.__pte_alloc(pmd, addr)
        i = (addr >> PAGE_SHIFT) & 511
        first = i - frame.thp_index if frame.thp_index is not None else i
        if frame.thp_index is not None and self._folio_fits_table(vma, pte_table, i, frame) \
                and pte_table_empty(pte_table.entries[first:first + frame.folio_nr]):
            # A large shmem folio that lies inside the VMA and this PTE table, all
            # of whose entries are none, is mapped whole; otherwise the faulting
            # page alone.
            head = frame.pfn - frame.thp_index
            for k in range(frame.folio_nr):
                page = self._mem.frames[head + k]
                if write:
                    page.dirty = True
                self.set_pte_range(vma, pte_table, first + k, page, write)
            return
        if not pte_none(pte_table.entries[i]):
            return
        if write:
            # fault_dirty_shared_page(): the folio is dirtied with the PTE.
            frame.dirty = True
        self.set_pte_range(vma, pte_table, i, frame, write)

    @staticmethod
    def _folio_fits_table(vma, table, j, frame):
        """The large folio of frame, mapped at table slot j, lies inside the VMA
        and inside this PTE table (folio_within_vma(), one PMD)."""
        first = j - frame.thp_index
        if first < 0 or first + frame.folio_nr > PTRS_PER_PTE:
            return False
        return vma.start <= table.base + (first << PAGE_SHIFT) \
            and table.base + ((first + frame.folio_nr) << PAGE_SHIFT) <= vma.end

    def do_read_fault(self, vma, pmd, pte_table, addr):
        pte_table, done = self.do_fault_around(vma, pmd, pte_table, addr)
        if done:
            return None
        frame = self.filemap_fault(vma, addr)
        self.finish_fault(vma, pmd, pte_table, addr, frame, False)
        return None

    def do_shared_fault(self, vma, pmd, pte_table, addr):
        # Write faults map only the faulting page: no fault-around (R28, R30).
        frame = self.filemap_fault(vma, addr)
        self.finish_fault(vma, pmd, pte_table, addr, frame, True)
        return None

    def do_cow_fault(self, vma, pmd, pte_table, addr):
        """Private write fault on a none PTE: the page-cache page (read in or
        allocated as for a read) is copied into a new anonymous page, which is
        mapped; no fault-around (R30, SC-19)."""
        self.anon_vma_prepare(vma)
        new = self._mem.alloc_frame(_ANON)
        if new is None:
            raise _FaultError("OOM", addr)
        try:
            frame = self.filemap_fault(vma, addr)
        except _FaultError:
            self._mem.folio_put(new)
            raise
        new.written = frame.written
        if pte_table is None:
            pte_table = self.__pte_alloc(pmd, addr)
        i = (addr >> PAGE_SHIFT) & 511
        entry = pfn_pte(new.pfn, vma_page_prot(vma)) | _PAGE_DIRTY
        if vma.flags & VM_WRITE:
            entry |= _PAGE_RW
        new.mapcount = 1
        new.exclusive = True
        pte_table.entries[i] = entry
        self._rss[MM_ANONPAGES] += 1
        return None

    def _access(self, vma, addr, write):
        """One CPU load/store: the hardware walk, then the fault handler."""
        # arch access_error(): reads need any access right, writes VM_WRITE.
        if write:
            if not (vma.flags & VM_WRITE):
                raise _FaultError("SIGSEGV", addr)
        elif not (vma.flags & VM_ACCESS_FLAGS):
            raise _FaultError("SIGSEGV", addr)
        if vma.hugetlb is not None:
            self.hugetlb_access(vma, addr, write)
            return
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
        if vma.hugetlb is not None:
            return self.hugetlb_get_user_pages(vma, start, end, write)
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
        table, with an entry for each of the 512 pages; VmPTE and RSS stay.
        A PMD that maps a shmem folio is cleared instead (_clear_file_pmd())."""
        entry = pmd.entries[index]
        if self._is_file_pmd(entry):
            self._clear_file_pmd(pmd, index)
            self._stats["thp_split_pmd"] += 1
            return
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
        pfn = pte_pfn(entry)
        kind = _ANON if pfn == HUGE_ZERO_PFN else self._mem.frames[pfn].kind
        if kind == _ANON:
            # A file PMD has no deposit (x86 deposits none for file THPs).
            self.zap_deposited_table()
        if pfn == HUGE_ZERO_PFN:
            return
        for i in range(HPAGE_PMD_NR):
            frame = self._mem.frames[pfn + i]
            frame.mapcount -= 1
            if kind != _ANON and entry & _PAGE_DIRTY:
                frame.dirty = True
        self._rss[_KIND_COUNTER[kind]] -= HPAGE_PMD_NR
        if tlb_remove_folio_pages(tlb, _GatherThp(pfn), False):
            tlb_flush_mmu(tlb)

    def copy_huge_pmd(self, dst, dst_pmd, index, vma, src_pmd):
        """fork of a huge PMD (R67): the child gets a deposit of its own and maps
        the same THP; both lose write access. The huge zero page is mapped anew."""
        entry = src_pmd.entries[index]
        if self._is_file_pmd(entry):
            # copy_huge_pmd(): a file PMD is not copied; the child faults it in.
            return
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
            pud = self._pud_table(addr)
            if pud is None:
                addr = min(self._pud_skip(addr), end)
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
            if not pmd_trans_huge(entry):
                continue  # unmapped by a shmem folio split or pageout earlier in the walk
            head = pte_pfn(entry)
            if head != HUGE_ZERO_PFN and self._mem.frames[head].kind != _ANON:
                self.madvise_file_huge_pmd(tlb, pmd, index, addr, nxt, behavior)
                continue
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
        if first.mlocked:
            return  # unevictable: neither discarded nor split
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

    def split_folio(self, vma, head, base):
        """split_folio() of a THP that only this process maps: it becomes 512
        small pages, and remap_page() maps each one never written to the shared
        zero page instead, freeing it (RssAnon -4 each), unless the page or the
        VMA mapping it is mlocked. base is where the folio's first page is, or would
        be, mapped: by its PMD, or by PTEs that mremap may have moved to any
        page offset. Pages moved apart from the rest are found through the VMAs
        sharing vma's anon_vma (the rmap walk)."""
        base &= 2**64 - 1  # below 0 for a folio moved below its first page
        if not base & ~_PMD_MASK and base < self._task_size:
            pmd = self._walk_pmd(base)
            index = (base >> PMD_SHIFT) & 511
            if pmd is not None and pmd_trans_huge(pmd.entries[index]) and pte_pfn(pmd.entries[index]) == head:
                self.split_huge_pmd(vma, pmd, index)
        missing = set()
        for frame in self._mem.thp_pages(head):
            i = frame.thp_index
            frame.thp_index = None
            if frame.written or frame.mapcount == 0:
                continue
            addr = (base + (i << PAGE_SHIFT)) & (2**64 - 1)
            table = self._walk_pte_table(addr) if addr < self._task_size else None
            if table is None or not self._remap_zero_page(table, addr, frame):
                missing.add(frame.pfn)
        if not missing or vma.anon_vma is None:
            return
        for other in list(self._vmas):
            if other.anon_vma is not vma.anon_vma:
                continue
            for addr, pte in list(self.entries(other.start, other.end)):
                if pte_present(pte) and not pte & _PAGE_SPECIAL and pte_pfn(pte) in missing:
                    missing.discard(pte_pfn(pte))
                    self._remap_zero_page(self._walk_pte_table(addr), addr, self._mem.frames[pte_pfn(pte)])

    def _remap_zero_page(self, table, addr, frame):
        """try_to_map_unused_to_zeropage() for the entry at addr: if it maps
        frame (never written), it becomes the zero page unless the page or the
        VMA at addr is mlocked; earlier VMA splits and moves may have left the
        THP across several VMAs. True if the entry maps frame."""
        i = (addr >> PAGE_SHIFT) & 511
        pte = table.entries[i]
        if not pte_present(pte) or pte & _PAGE_SPECIAL or pte_pfn(pte) != frame.pfn:
            return False
        if frame.mlocked:
            return True  # folio_test_mlocked(): kept
        page_vma = self._vma_containing(addr)
        if page_vma is None or page_vma.flags & VM_LOCKED:
            return True
        zero = pfn_pte(ZERO_PFN, vm_get_page_prot(page_vma.flags) & ~_PAGE_RW) | _PAGE_SPECIAL
        table.entries[i] = zero | (pte & _PAGE_UFFD_WP)
        frame.mapcount -= 1
        self._rss[MM_ANONPAGES] -= 1
        self._mem.folio_put(frame)
        return True

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
        # The folio's first page is where this one is, less its place in the folio.
        self.split_folio(vma, head, span + ((i - frame.thp_index) << PAGE_SHIFT))
        return "split"

    def madvise_collapse(self, vma, start, end):
        """R72: collapse the aligned 2 MiB spans inside [start, end) of one VMA.
        0, or the errno of the last span that failed (the others are collapsed
        all the same); ENOMEM stops at once. A span that fails with a result
        madvise_collapse() does not go on after stops the walk too: an empty PMD
        entry under an existing PMD table, and in a shmem VMA anything but a
        non-present entry. A range inside one span
        that touches neither of its ends is EINVAL (hend < hstart)."""
        if vma.file is not None and not vma.file.shmem:
            # thp_vma_allowable_order(): a disk file's VMA qualifies only through
            # CONFIG_READ_ONLY_THP_FOR_FS for a file nobody has open for writing
            # and an executable mapping; modelled as never (regular files hold
            # 4 KiB folios only).
            return errno.EINVAL
        # thp_vma_allowable_order() for a forced collapse: the sysfs mode does not
        # matter, the VMA's own refusal does, and it must hold a whole span.
        if vma.flags & (VM_NOHUGEPAGE | VM_HUGETLB | VM_PFNMAP):
            return errno.EINVAL
        vstart = (vma.start + PMD_SIZE - 1) & _PMD_MASK
        if vstart + PMD_SIZE > vma.end:
            return errno.EINVAL
        if vma.file is None and vma.anon_vma is None:
            # An anonymous VMA qualifies only once it has an anon_vma (only page
            # faults and smaps are let through without one), whatever the range holds.
            return errno.EINVAL
        if vma.file is not None and ((vma.start >> PAGE_SHIFT) - vma.pgoff) % HPAGE_PMD_NR:
            # thp_vma_suitable_order(): a file folio must land on a 2 MiB boundary.
            return errno.EINVAL
        last_fail = 0
        hstart = (start + PMD_SIZE - 1) & _PMD_MASK
        hend = end & _PMD_MASK
        if hend < hstart:
            # No span, but thps == (hend - hstart) >> HPAGE_PMD_SHIFT fails on the
            # unsigned wrap-around: madvise_collapse_errno(SCAN_FAIL). Anonymous
            # memory and shmem alike (measured); hend == hstart succeeds.
            return errno.EINVAL
        for haddr in range(hstart, hend, PMD_SIZE):
            if vma.file is not None:
                ret, stop = self.collapse_file_span(vma, haddr)
                if stop:
                    return ret
                if ret:
                    last_fail = ret
                continue
            ret = self.collapse_huge_page(vma, haddr)
            if ret == errno.ENOMEM:
                return ret
            if ret < 0:
                return -ret
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
        if pmd is None:
            return errno.EINVAL  # SCAN_PMD_NULL: no PMD table; the walk goes on
        if not pmd.entries[index]:
            # SCAN_PMD_NONE is not among the results madvise_collapse() goes on
            # after: the spans after this one are left alone.
            return -errno.EINVAL
        if pmd_trans_huge(pmd.entries[index]):
            return 0  # SCAN_PMD_MAPPED: a THP or the huge zero page already
        table = pmd.children[index]
        swapped = [i for i, pte in enumerate(table.entries)
                   if is_swap_pte(pte) and not pte & _PAGE_SWP_UFFD_WP]
        if any(not pte_none(pte) and not pte_present(pte) and i not in swapped
               for i, pte in enumerate(table.entries)):
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
        for i in swapped:
            # __collapse_huge_page_swapin(): each swap entry read back in first
            # (no max_ptes_swap limit for MADV_COLLAPSE); not a fault of the process.
            try:
                self.do_swap_page(vma, table, i, table.entries[i], haddr + (i << PAGE_SHIFT), False)
            except (_FaultError, OutOfMemory):
                for j in range(HPAGE_PMD_NR):
                    self._mem.frames[head + j].mapcount = 0
                self._mem.put_thp(head)
                return errno.EINVAL  # SCAN_FAIL
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

    # ------------------------------------------------- shmem huge folios

    # A shmem object's page cache may hold PMD-sized folios: 512 frames at the
    # indices [k * 512, k * 512 + 512), consecutive pfns, each cached at its own
    # index with thp_index (its place) and folio_nr (512) set. Only MADV_COLLAPSE
    # makes one (shmem_enabled is "never", so faults allocate 4 KiB folios).
    # Faults map it by one PMD leaf (do_set_pmd(), no deposit) or by PTEs; it
    # stays huge until a split, which unmaps it everywhere: split_folio() leaves
    # 512 small folios, a hole punch's folio_split() aligned folios of every
    # order below (folio_nr 256 .. 2, or small), which faults map whole too.

    def _is_file_pmd(self, entry):
        """A huge PMD leaf that maps a page-cache folio (not an anonymous THP,
        not the huge zero page)."""
        pfn = pte_pfn(entry)
        return pfn != HUGE_ZERO_PFN and self._mem.frames[pfn].kind != _ANON

    @staticmethod
    def _file_pmd_suitable(vma, haddr):
        """thp_vma_suitable_order() for a file VMA, and no VM_NOHUGEPAGE
        (vma_thp_disabled()): the span lies inside the VMA and the folio's first
        page lands on its 2 MiB boundary."""
        if vma.file is None or not vma.file.shmem or vma.flags & VM_NOHUGEPAGE:
            return False
        if ((vma.start >> PAGE_SHIFT) - vma.pgoff) % HPAGE_PMD_NR:
            return False
        return vma.start <= haddr and haddr + PMD_SIZE <= vma.end

    def do_set_pmd(self, vma, pmd, addr, frame, write):
        """Map the huge folio holding frame with one PMD leaf at addr's span, if
        the PMD entry is none and the VMA suits. True if mapped. No i_size check
        (6.18)."""
        haddr = addr & _PMD_MASK
        index = (addr >> PMD_SHIFT) & 511
        if frame.folio_nr != HPAGE_PMD_NR or pmd.entries[index] or not self._file_pmd_suitable(vma, haddr):
            return False
        self._map_file_pmd(vma, pmd, index, frame.pfn - frame.thp_index, write)
        return True

    def _map_file_pmd(self, vma, pmd, index, head, write):
        """A PMD leaf with vm_page_prot (writable at once in a shared writable
        mapping), dirty on a write; one reference and mapping per page, no deposit."""
        entry = pfn_pte(head, vma_page_prot(vma)) | _PAGE_PSE
        if write:
            entry |= _PAGE_DIRTY
            if vma.flags & VM_WRITE:
                entry |= _PAGE_RW
        for i in range(HPAGE_PMD_NR):
            frame = self._mem.frames[head + i]
            frame.refcount += 1
            frame.mapcount += 1
            if write:
                frame.dirty = True
        pmd.entries[index] = entry
        self._rss[_KIND_COUNTER[self._mem.frames[head].kind]] += HPAGE_PMD_NR

    def _clear_file_pmd(self, pmd, index):
        """A file PMD goes (__split_huge_pmd_locked() of a file PMD, or an rmap
        unmap): the entry becomes none and no PTE table is made (faults find the
        pages again); the folio stays huge; the dirty bit goes to the folio."""
        entry = pmd.entries[index]
        head = pte_pfn(entry)
        pmd.entries[index] = 0
        for i in range(HPAGE_PMD_NR):
            frame = self._mem.frames[head + i]
            if entry & _PAGE_DIRTY:
                frame.dirty = True
            frame.mapcount -= 1
            self._mem.folio_put(frame)
        self._rss[_KIND_COUNTER[self._mem.frames[head].kind]] -= HPAGE_PMD_NR

    def _rmap_unmap_cache_pages(self, obj, lo, hi):
        """try_to_unmap() / unmap_folio() of obj's cached pages [lo, hi) in this
        process: every PTE and PMD that maps one goes (a PMD whole); private COW
        copies are anonymous pages, not these, and stay; markers and swap
        entries stay. One TLB flush if anything was unmapped."""
        cleared = False
        frames = self._mem.frames
        for vma in [v for v in self._vmas if v.file is obj]:
            a = max(lo, vma.pgoff)
            b = min(hi, vma.pgoff + vma.pages())
            if a >= b:
                continue
            addr = vma.start + ((a - vma.pgoff) << PAGE_SHIFT)
            end = vma.start + ((b - vma.pgoff) << PAGE_SHIFT)
            while addr < end:
                nxt = min((addr & _PMD_MASK) + PMD_SIZE, end)
                pmd = self._walk_pmd(addr)
                index = (addr >> PMD_SHIFT) & 511
                if pmd is None:
                    addr = nxt
                    continue
                if pmd_trans_huge(pmd.entries[index]):
                    if self._is_file_pmd(pmd.entries[index]):
                        self._clear_file_pmd(pmd, index)
                        cleared = True
                    addr = nxt
                    continue
                table = pmd.children[index]
                if table is None:
                    addr = nxt
                    continue
                entries = table.entries
                for i in range((addr >> PAGE_SHIFT) & 511, (((nxt - 1) >> PAGE_SHIFT) & 511) + 1):
                    pte = entries[i]
                    if not pte_present(pte) or pte & _PAGE_SPECIAL:
                        continue
                    frame = frames[pte_pfn(pte)]
                    if frame.mapping is not obj or not lo <= frame.index < hi:
                        continue
                    entries[i] = 0
                    if pte & _PAGE_DIRTY:
                        frame.dirty = True
                    frame.mapcount -= 1
                    self._rss[_KIND_COUNTER[frame.kind]] -= 1
                    self._mem.folio_put(frame)
                    cleared = True
                addr = nxt
        if cleared:
            self._stats["tlb_flushes"] += 1

    def _shmem_unmap_all(self, obj, lo, hi):
        """The rmap walk over every process of the machine (cached pages [lo, hi))."""
        for mm in self.machine.mms:
            mm._rmap_unmap_cache_pages(obj, lo, hi)

    def _mms_mapping_folio(self, head):
        """The processes that map some page of the large shmem folio at head."""
        frames = self._mem.frames
        nr = frames[head].folio_nr
        if not any(frames[head + i].mapcount for i in range(nr)):
            return []
        obj = frames[head].mapping
        index0 = frames[head].index
        out = []
        for mm in self.machine.mms:
            if any(mm._vma_maps_folio(vma, index0, nr, head) for vma in mm._vmas if vma.file is obj):
                out.append(mm)
        return out

    def _vma_maps_folio(self, vma, index0, nr, head):
        lo = max(index0, vma.pgoff)
        hi = min(index0 + nr, vma.pgoff + vma.pages())
        for index in range(lo, hi):
            addr = vma.start + ((index - vma.pgoff) << PAGE_SHIFT)
            table, i = self._leaf_entry(addr)
            if table is None:
                continue
            entry = table.entries[i]
            if not pte_present(entry) or entry & _PAGE_SPECIAL:
                continue
            pfn = pte_pfn(entry)
            if table.level == _PMD:
                pfn += (addr >> PAGE_SHIFT) & 511
            if pfn == head + index - index0:
                return True
        return False

    def shmem_folio_maybe_mapped_shared(self, head):
        """folio_maybe_mapped_shared() of a large folio on 6.18 (per-mm tracking):
        mapped by more than one process; several mappings in one do not count."""
        return len(self._mms_mapping_folio(head)) > 1

    def split_shmem_folio(self, head, at=None):
        """split_folio() of a large shmem folio (at=None: into small folios), or
        folio_split() at page index at (non-uniform: the page at `at` alone, the
        rest in the largest aligned folios around it, as buddies). unmap_folio()
        first removes every mapping of its pages, PMD or PTE, in every process,
        and file folios are not mapped again (no remap_page())."""
        frames = self._mem.frames
        index0 = frames[head].index
        self._shmem_unmap_all(frames[head].mapping, index0, index0 + frames[head].folio_nr)
        self._split_unmapped_shmem_folio(head, at)

    def _split_unmapped_shmem_folio(self, head, at=None):
        """__split_unmapped_folio(): the new folios stay in the page cache, but
        those that start past EOF (MADV_COLLAPSE may have filled a span beyond
        i_size) leave it."""
        frames = self._mem.frames
        obj = frames[head].mapping
        start = frames[head].index
        nr = frames[head].folio_nr
        if at is None:
            pieces = [(start + k, 1) for k in range(nr)]
        else:
            pieces = []
            while nr > 1:
                nr //= 2
                if at < start + nr:
                    pieces.append((start + nr, nr))
                else:
                    pieces.append((start, nr))
                    start += nr
            pieces.append((start, 1))
        base = frames[head].index
        for first, n in pieces:
            for k in range(n):
                frame = frames[head + first - base + k]
                frame.thp_index = k if n > 1 else None
                frame.folio_nr = n
        for first, n in pieces:
            if first >= obj.nr_pages:
                for k in range(n):
                    if first + k in obj.pages:
                        obj.remove_page(first + k)

    def shmem_punch_split(self, obj, first, last):
        """shmem_undo_range() of the hole [first, last]: a large folio that holds
        first or last and that the hole covers in part is split by
        truncate_inode_partial_folio(): at the hole's first page in it, then the
        folio that holds the page after the hole at that page, so that the hole
        is made of whole folios (the rest stay large)."""
        def partial(index):
            frame = obj.pages.get(index)
            if frame is None or frame.thp_index is None:
                return None
            start = index - frame.thp_index
            return frame.pfn - frame.thp_index, start, frame.folio_nr

        same_folio = first == last
        folio = partial(first)
        if folio is not None:
            same_folio = last < folio[1] + folio[2]
            self._truncate_partial_folio(obj, folio, first, last)
        if not same_folio:
            folio = partial(last)
            if folio is not None:
                self._truncate_partial_folio(obj, folio, first, last)

    def _truncate_partial_folio(self, obj, folio, first, last):
        head, start, nr = folio
        at = max(first, start)
        after = min(last + 1, start + nr)
        if at == start and after == start + nr:
            return  # inside the hole whole: it goes whole
        self.split_shmem_folio(head, at)
        if after < start + nr:
            frame = obj.pages.get(after)
            if frame is not None and frame.thp_index is not None:
                self.split_shmem_folio(frame.pfn - frame.thp_index, after)

    def shmem_huge_pageout(self, head):
        """reclaim_pages() of a whole large shmem folio: try_to_unmap() unmaps it
        from every process. Without a swap device shmem_writeout() redirties it:
        it stays in the cache, large. With one, the folio is split into small
        folios (the model gives swap no large slots) and each page is written out
        as a small dirty shmem page is."""
        frames = self._mem.frames
        obj = frames[head].mapping
        index0 = frames[head].index
        nr = frames[head].folio_nr
        if frames[head].mlocked:
            return  # unevictable: kept, mapped
        self._shmem_unmap_all(obj, index0, index0 + nr)
        if not self.machine.swap.nr_slots:
            return
        self._split_unmapped_shmem_folio(head)
        for i in range(nr):
            frame = frames.get(head + i)
            if frame is None or obj.pages.get(frame.index) is not frame:
                continue
            if frame.dirty:
                self.shmem_writeout(frame)
            else:
                obj.remove_page(frame.index)

    def madvise_file_huge_pmd(self, tlb, pmd, index, addr, nxt, behavior):
        """madvise_cold_or_pageout_pte_range() at a PMD that maps a shmem folio:
        left alone if another process maps the folio; split if the range covers
        it in part (the PTE walk then finds the PMD none); else COLD clears young
        and PAGEOUT reclaims the folio."""
        entry = pmd.entries[index]
        head = pte_pfn(entry)
        if self.shmem_folio_maybe_mapped_shared(head):
            return
        if nxt - addr != PMD_SIZE:
            self.split_shmem_folio(head)
            return
        if entry & _PAGE_ACCESSED:
            pmd.entries[index] = entry & ~_PAGE_ACCESSED
            tlb.need_flush = True
        if behavior == MADV_PAGEOUT:
            self.shmem_huge_pageout(head)

    def shmem_large_folio_step(self, tlb, table, i, span, start, end, pageout):
        """The COLD / PAGEOUT PTE walk at table.entries[i], the first page it meets
        of a large shmem folio. Unless the range covers the folio whole and this
        table maps all of it (madvise_folio_pte_batch()), it is split if no other
        process maps it (its entries are none after). A whole one is left alone
        unless these PTEs are its only mappings (folio_mapcount() ==
        folio_nr_pages()); then PAGEOUT reclaims it and COLD clears young."""
        entries = table.entries
        frame = self.vm_normal_page(entries[i])
        head = frame.pfn - frame.thp_index
        nr = frame.folio_nr
        first = i - frame.thp_index
        folio_start = span + (first << PAGE_SHIFT)
        whole = (first >= 0 and first + nr <= PTRS_PER_PTE and i == first
                 and start <= folio_start and folio_start + (nr << PAGE_SHIFT) <= end
                 and all(pte_present(entries[first + j]) and not entries[first + j] & _PAGE_SPECIAL
                         and pte_pfn(entries[first + j]) == head + j for j in range(nr)))
        if not whole:
            if not self.shmem_folio_maybe_mapped_shared(head):
                self.split_shmem_folio(head)
            return
        if sum(self._mem.frames[head + j].mapcount for j in range(nr)) != nr:
            return
        if pageout:
            self.shmem_huge_pageout(head)
            return
        for j in range(first, first + nr):
            if entries[j] & _PAGE_ACCESSED:
                entries[j] &= ~_PAGE_ACCESSED
                tlb.need_flush = True

    def collapse_file_span(self, vma, haddr):
        """MADV_COLLAPSE of one aligned span of a shmem VMA: hpage_collapse_scan_file()
        and collapse_file() make the huge folio unless the cache has it already,
        then collapse_pte_mapped_thp() maps it by PMD here. (errno or 0, whether
        the walk over the spans stops here): SCAN_TRUNCATED, SCAN_FAIL and
        SCAN_ALLOC_HUGE_PAGE_FAIL stop it, SCAN_PTE_NON_PRESENT does not."""
        obj = vma.file
        index0 = self._linear_page_index(vma, haddr)
        head = obj.huge_head(index0)
        if head is None:
            ret, head = self.collapse_file(obj, index0)
            if ret:
                return ret, True
            self.retract_page_tables(obj, index0)
        return self.collapse_pte_mapped_thp(vma, haddr, head)

    def collapse_file(self, obj, index0):
        """Replace the small folios at [index0, index0 + 512) by one huge folio:
        (0, head), or (errno, None). A span with nothing cached nor swapped is
        SCAN_TRUNCATED. Every page present is unmapped from every process first;
        holes become zero-filled pages, past i_size too; swapped pages are read
        straight into the new folio."""
        present = [i for i in range(index0, index0 + HPAGE_PMD_NR) if i in obj.pages]
        swapped = [i for i in range(index0, index0 + HPAGE_PMD_NR) if i in obj.swapped]
        if not present and not swapped:
            return errno.EINVAL, None
        head = self._mem.alloc_pmd_folio(obj.kind)
        if head is None:
            return errno.ENOMEM, None  # SCAN_ALLOC_HUGE_PAGE_FAIL
        self._shmem_unmap_all(obj, index0, index0 + HPAGE_PMD_NR)
        swap = self.machine.swap
        for i in range(HPAGE_PMD_NR):
            index = index0 + i
            new = self._mem.frames[head + i]
            new.mapping = obj
            new.index = index
            # collapse_file() marks the new shmem folio dirty.
            new.dirty = True
            old = obj.pages.get(index)
            if old is not None:
                new.written = old.written
                obj.pages[index] = new
                self._mem.folio_put(old)
                continue
            offset = obj.swapped.pop(index, None)
            if offset is not None:
                new.written = True
                swap.swap_free(offset)
            obj.pages[index] = new
        self._stats["thp_collapse_alloc"] += 1
        return 0, head

    def retract_page_tables(self, obj, index0):
        """In every process, each VMA that maps [index0, index0 + 512) of obj on a
        2 MiB boundary inside it, with no anon_vma, loses the PTE table there if
        all its entries are none (a marker keeps it): VmPTE -4 in that process."""
        for mm in self.machine.mms:
            for vma in mm._vmas:
                if vma.file is not obj or vma.anon_vma is not None or index0 < vma.pgoff:
                    continue
                addr = vma.start + ((index0 - vma.pgoff) << PAGE_SHIFT)
                if addr & (PMD_SIZE - 1) or addr + PMD_SIZE > vma.end:
                    continue
                pmd = mm._walk_pmd(addr)
                if pmd is None:
                    continue
                index = (addr >> PMD_SHIFT) & 511
                table = pmd.children[index]
                if table is None or not pte_table_empty(table.entries):
                    continue
                pmd.children[index] = None
                pmd.entries[index] = 0
                mm._stats["tlb_flushes"] += 1  # pmdp_collapse_flush()
                # pte_free_defer(): an RCU free, no mmu_gather.
                mm._mem.free_table_pfn(table.pfn)
                mm._pgtables_bytes -= PAGE_SIZE

    def collapse_pte_mapped_thp(self, vma, haddr, head):
        """Map the huge folio at head by a PMD at haddr in this process: done if
        the PMD is huge already; a PTE table there must hold only none entries
        or the folio's own pages at their places (else EINVAL), which are
        unmapped before the table is freed; no table (or no PMD table at all):
        the leaf is installed, making the tables it needs. (errno or 0, whether
        madvise_collapse() stops): a non-present entry (marker, swap) is
        SCAN_PTE_NON_PRESENT, which lets it go on; another page (a private COW
        copy) is SCAN_FAIL, which stops it."""
        index = (haddr >> PMD_SHIFT) & 511
        pmd = self._walk_pmd(haddr)
        if pmd is None:
            pmd = self.__pmd_alloc(self.__pud_alloc(haddr), haddr)
        elif pmd_trans_huge(pmd.entries[index]):
            return 0, False
        table = pmd.children[index]
        if table is not None:
            entries = table.entries
            for j, pte in enumerate(entries):
                if pte_none(pte):
                    continue
                if not pte_present(pte):
                    return errno.EINVAL, False  # SCAN_PTE_NON_PRESENT
                if pte & _PAGE_SPECIAL or pte_pfn(pte) != head + j:
                    return errno.EINVAL, True  # SCAN_FAIL
            for j, pte in enumerate(entries):
                if pte_none(pte):
                    continue
                frame = self._mem.frames[head + j]
                if pte & _PAGE_DIRTY:
                    frame.dirty = True
                frame.mapcount -= 1
                self._mem.folio_put(frame)
                self._rss[_KIND_COUNTER[frame.kind]] -= 1
            pmd.children[index] = None
            pmd.entries[index] = 0
            self._stats["tlb_flushes"] += 1  # pmdp_collapse_flush()
            self._mem.free_table_pfn(table.pfn)
            self._pgtables_bytes -= PAGE_SIZE
        self._map_file_pmd(vma, pmd, index, head, False)
        return 0, False

    # ----------------------------------------------------------------- zap

    def unmap_page_range(self, tlb, vma, start, end, details):
        """Walk PGD/PUD/PMD entries of [start, end) and zap PTE tables (R47, R48)."""
        if vma.hugetlb is not None:
            # unmap_single_vma(): hugetlb VMAs have a zap of their own.
            self.unmap_hugepage_range_tlb(tlb, vma, start, end)
            return
        addr = start
        while addr < end:
            pgd_next = min((addr + PGDIR_SIZE) & _PGDIR_MASK or end, end)
            pud = self._pud_table(addr)
            if pud is None:
                addr = min(self._pud_skip(addr), end)
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
        if is_swap_pte(pte):
            # A genuine swap entry: the slot reference goes and VmSwap drops; a
            # cleared entry needs no flush and does not stop PT reclaim (R50, SC-30).
            if not should_zap_cows(details):
                return True, False, False
            self.machine.swap.swap_free(offset)
            self._rss[MM_SWAPENTS] -= 1
            entries[i] = 0
            return False, False, False
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
            # A hugetlb VMA is freed on its own and ends a group.
            while (j + 1 < len(vmas) and vmas[j + 1].start <= vmas[j].end + PMD_SIZE
                   and vmas[i].hugetlb is None and vmas[j + 1].hugetlb is None):
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
        if self.paging_levels == 5:
            while True:
                nxt = (addr + _PGDIR5_SIZE) & ~(_PGDIR5_SIZE - 1) & _U64
                if nxt == 0 or nxt > end:
                    nxt = end
                pgd_index = (addr >> _PGDIR5_SHIFT) & 511
                if self._pgd.children[pgd_index] is not None:
                    self.free_p4d_range(tlb, pgd_index, addr, nxt, floor, ceiling)
                addr = nxt
                if addr == end:
                    break
            return
        self._free_pud_ranges(tlb, self._pgd, addr, end, floor, ceiling)

    def _free_pud_ranges(self, tlb, p4d, addr, end, floor, ceiling):
        # The loop of free_p4d_range() over P4D entries (the PGD's when folded).
        while True:
            nxt = (addr + PGDIR_SIZE) & _PGDIR_MASK
            if nxt == 0 or nxt > end:
                nxt = end
            pgd_index = (addr >> PGDIR_SHIFT) & 511
            if p4d.children[pgd_index] is not None:
                self.free_pud_range(tlb, p4d, pgd_index, addr, nxt, floor, ceiling)
            addr = nxt
            if addr == end:
                break

    def free_p4d_range(self, tlb, pgd_index, addr, end, floor, ceiling):
        """5-level paging: the P4D table goes when no VMA is left in its 256 TiB
        region. free_p4d_range() frees it with no mm_dec_nr_*(): it was never counted."""
        p4d = self._pgd.children[pgd_index]
        start = addr
        self._free_pud_ranges(tlb, p4d, addr, end, floor, ceiling)
        if not self._may_free_upper(start, end, floor, ceiling, ~(_PGDIR5_SIZE - 1) & _U64):
            return
        self._pgd.children[pgd_index] = None
        self._pgd.entries[pgd_index] = 0
        pte_free_tlb(tlb, p4d)
        self._stats["p4d_tables_freed"] += 1

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
        # A P4D entry maps 512 GiB, folded or not: P4D_MASK is 512 GiB.
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
        split_at_start = vma.start < start
        if split_at_start:
            if end < vma.end and len(self._vmas) >= _MAX_MAP_COUNT:
                raise _oserror(errno.ENOMEM)
            vma = self.__split_vma(vma, start)
        last = self._vma_containing(end - 1)
        if last is not None and last.end > end:
            try:
                self.__split_vma(last, end)
            except OSError:
                # A hugetlb VMA refused the split at end: the one at start stays,
                # and Linux does not merge it again.
                if split_at_start:
                    self._unmerged_ok.add(start)
                raise
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
        if addr & (PAGE_SIZE - 1) or addr > self._task_size or length > self._task_size - addr:
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
        pgoff = offset >> PAGE_SHIFT
        inode = None
        if not (flags & MAP_ANONYMOUS):
            entry = self._fds.get(fd)
            if entry is None:
                raise _oserror(errno.EBADF)
            inode, fmode_write = entry
            if flags & MAP_HUGETLB:
                # Only hugetlbfs files take MAP_HUGETLB.
                raise _oserror(errno.EINVAL)
        elif flags & MAP_HUGETLB:
            return self._mmap_hugetlb(addr, length, flags, offset, prot)
        if length == 0:
            raise _oserror(errno.EINVAL)
        if flags & MAP_FIXED_NOREPLACE:
            flags |= MAP_FIXED
        if not (flags & MAP_FIXED) and addr and addr < _MMAP_MIN_ADDR:
            addr = _MMAP_MIN_ADDR  # round_hint_to_min()
        length = _page_align(length)
        if length == 0:
            raise _oserror(errno.ENOMEM)
        # pgoff + pages cannot wrap with 64-bit offsets: no EOVERFLOW here.
        if len(self._vmas) > _MAX_MAP_COUNT:
            raise _oserror(errno.ENOMEM)
        addr = self.__get_unmapped_area(addr, length, flags, inode, pgoff)
        if flags & MAP_FIXED_NOREPLACE:
            vma = self.find_vma(addr)
            if vma is not None and vma.start < addr + length:
                raise _oserror(errno.EEXIST)
        vm_flags = self.calc_vm_flags(prot, flags)
        map_type = flags & MAP_TYPE
        if inode is not None:
            # file_mmap_ok(): the mapping must end below MAX_LFS_FILESIZE.
            if pgoff > (_MAX_LFS_FILESIZE - length) >> PAGE_SHIFT:
                raise _oserror(errno.EOVERFLOW)
            if map_type in (MAP_SHARED, MAP_SHARED_VALIDATE):
                if map_type == MAP_SHARED:
                    # Unknown flags are dropped silently with plain MAP_SHARED.
                    flags &= _LEGACY_MAP_MASK
                elif flags & ~_LEGACY_MAP_MASK:
                    raise _oserror(errno.EOPNOTSUPP)
                if prot & PROT_WRITE and not fmode_write:
                    raise _oserror(errno.EACCES)
                vm_flags |= VM_SHARED | VM_MAYSHARE
                if not fmode_write:
                    # A read-only fd can never make the mapping writable.
                    vm_flags &= ~(VM_MAYWRITE | VM_SHARED)
            elif map_type != MAP_PRIVATE:
                raise _oserror(errno.EINVAL)
            if vm_flags & VM_GROWSDOWN:
                raise _oserror(errno.EINVAL)
        elif map_type == MAP_SHARED:
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
        addr = self.mmap_region(addr, length, vm_flags, pgoff, inode)
        if (vm_flags & VM_LOCKED) or (flags & (MAP_POPULATE | MAP_NONBLOCK)) == MAP_POPULATE:
            # mm_populate() ignores errors (R19).
            self.__mm_populate(addr, length, True)
        return addr

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

    def mmap_region(self, addr, length, vm_flags, pgoff, inode=None):
        end = addr + length
        # __mmap_setup(): gather (and split) what MAP_FIXED replaces.
        detached = self._gather_munmap_vmas(addr, end)
        nr_accounted = sum(v.pages() for v in detached if v.flags & VM_ACCOUNT)
        if not (vm_flags & (VM_NORESERVE | VM_SHARED)) and vm_flags & VM_WRITE:
            # accountable_mapping(): private writable memory, file-backed or not.
            charged = (length >> PAGE_SHIFT) - nr_accounted
            if charged and charged > self._overcommit_limit():
                # vms_abort_munmap_vmas(): the old VMAs stay, split as they are.
                self._unmerged_ok.update((addr, end))
                raise _oserror(errno.ENOMEM)
            vm_flags |= VM_ACCOUNT
        if detached:
            self._clear_ptes(detached, addr, end)
            self._remove_detached(detached)
        if inode is None and vm_flags & VM_SHARED:
            # shmem_zero_setup() charges the whole object unless VM_NORESERVE;
            # a failure here leaves the unmapped gap behind.
            if not (vm_flags & VM_NORESERVE) and (length >> PAGE_SHIFT) > self._overcommit_limit():
                raise _oserror(errno.ENOMEM)
            vma = _Vma(addr, end, vm_flags, pgoff, None, _Inode(self.machine, length, True))
            self._insert_vma(vma)
        else:
            # A file mapping merges like anonymous memory, with the same file
            # at a contiguous offset (vma_merge_new_range()).
            vma = self.vma_merge_new_range(addr, end, vm_flags, pgoff, inode)
            if vma is None:
                vma = _Vma(addr, end, vm_flags, pgoff, None, inode)
                self._insert_vma(vma)
        if vm_flags & VM_LOCKED:
            self._locked_vm += length >> PAGE_SHIFT
        return addr

    def __get_unmapped_area(self, addr, length, flags, inode=None, pgoff=0):
        if length > self._task_size:
            raise _oserror(errno.ENOMEM)
        if flags & MAP_FIXED:
            result = addr
        elif inode is not None and not inode.shmem:
            # The disk file system's get_unmapped_area is thp_get_unmapped_area().
            result = self.thp_get_unmapped_area(length, addr, pgoff << PAGE_SHIFT)
        elif inode is None and not (flags & MAP_SHARED) and addr == 0 and length % PMD_SIZE == 0:
            result = self.thp_get_unmapped_area(length)
        else:
            # shmem_get_unmapped_area() adds nothing with shmem_enabled=never.
            result = self.arch_get_unmapped_area_topdown(addr, length)
        if result > self._task_size - length:
            raise _oserror(errno.ENOMEM)
        if result & (PAGE_SIZE - 1):
            raise _oserror(errno.EINVAL)
        return result

    def thp_get_unmapped_area(self, length, addr=0, off=0):
        """__thp_get_unmapped_area(): pad by 2 MiB, then align the address to the
        file offset modulo 2 MiB (R19). Falls back to an unpadded search when the
        file range holds no aligned 2 MiB or the padded search fails."""
        off_end = off + length
        off_align = (off + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
        if off_end <= off_align or off_end - off_align < PMD_SIZE:
            return self.arch_get_unmapped_area_topdown(addr, length)
        len_pad = length + PMD_SIZE
        try:
            ret = self.arch_get_unmapped_area_topdown(addr, len_pad)
        except OSError:
            return self.arch_get_unmapped_area_topdown(addr, length)
        if addr and ret == addr:
            # The hint was free for the padded length: no alignment.
            return ret
        off_sub = (off - ret) & (PMD_SIZE - 1)
        if off_sub == 0:
            # Top-down: use the upper aligned slot of the padded area.
            return ret + PMD_SIZE
        return ret + off_sub

    def _vm_start_gap(self, vma):
        if vma.flags & VM_GROWSDOWN:
            return max(vma.start - _STACK_GUARD_GAP, 0)
        return vma.start

    def mmap_address_hint_valid(self, addr, length):
        """arch/x86/mm/mmap.c: the hint fits below TASK_SIZE and lies wholly on one
        side of DEFAULT_MAP_WINDOW (always true with 4 levels)."""
        if self._task_size - length < addr:
            return False
        return (addr > _DEFAULT_MAP_WINDOW) == (addr + length > _DEFAULT_MAP_WINDOW)

    def _mmap_limits(self, hint):
        """The top-down search's high limit and the bottom-up fallback's end: a
        hint above DEFAULT_MAP_WINDOW opens the space up to TASK_SIZE_MAX (LA57);
        mmap_base itself stays below 128 TiB (arch_pick_mmap_layout() uses
        task_size_64bit(0))."""
        if hint > _DEFAULT_MAP_WINDOW:
            return MMAP_BASE + self._task_size - _DEFAULT_MAP_WINDOW, self._task_size
        return MMAP_BASE, _DEFAULT_MAP_WINDOW

    def arch_get_unmapped_area_topdown(self, addr, length):
        if addr:
            addr &= _PAGE_MASK
            if self.mmap_address_hint_valid(addr, length):
                vma = self.find_vma(addr)
                if vma is None or addr + length <= self._vm_start_gap(vma):
                    return addr
        high, top = self._mmap_limits(addr)
        found = self.unmapped_area_topdown(length, _MMAP_MIN_ADDR, high)
        if found is not None:
            return found
        found = self.unmapped_area_bottomup(length, _MMAP_LEGACY_BASE, top)
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
        # The gap must end by high: with 5 levels there can be VMAs above it.
        gap_start = low
        for vma in self._vmas:
            if gap_start + length > high:
                return None
            if vma.end <= gap_start:
                continue
            if min(self._vm_start_gap(vma), high) - gap_start >= length:
                return gap_start
            gap_start = max(gap_start, vma.end)
        if high >= gap_start and high - gap_start >= length:
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
        # vma_wants_manual_pte_write_upgrade(): private writable mappings, and
        # shared ones whose vm_page_prot is read-only (write-notify).
        if newflags & VM_SHARED:
            try_writable = vma_wants_writenotify(vma)
        else:
            try_writable = bool(newflags & VM_WRITE)
        self.change_protection(tlb, vma, start, end, try_writable)
        if (oldflags & (VM_WRITE | VM_SHARED | VM_LOCKED)) == VM_LOCKED and newflags & VM_WRITE:
            # A locked private VMA becoming writable is COW-populated at once.
            self.populate_vma_page_range(vma, start, end)
        return 0, vma

    def change_protection(self, tlb, vma, start, end, try_change_writable):
        """change_pte_range() over present tables; never allocates (R21)."""
        if vma.hugetlb is not None:
            self.hugetlb_change_protection(vma, start, end)
            return
        newprot = vma_page_prot(vma)
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
        if vma.flags & VM_SHARED:
            # A dirty PTE means the file system already heard of the write.
            return bool(pte & _PAGE_DIRTY)
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
            return self.madvise_willneed(vma, start, end)
        if behavior in (MADV_COLD, MADV_PAGEOUT):
            return self.madvise_cold_or_pageout(vma, start, end, behavior == MADV_PAGEOUT)
        if behavior in (MADV_FREE, MADV_DONTNEED, MADV_DONTNEED_LOCKED):
            return self.madvise_dontneed_free(tlb, vma, start, end, behavior)
        if behavior == MADV_COLLAPSE and vma.hugetlb is not None:
            return errno.EINVAL  # thp_vma_allowable_order(): never hugetlb
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
            if vma.file is not None or vma.hugetlb is not None or new_flags & VM_SHARED:
                return errno.EINVAL
            new_flags |= VM_WIPEONFORK
        elif behavior == MADV_KEEPONFORK:
            new_flags &= ~VM_WIPEONFORK
        elif behavior == MADV_DONTDUMP:
            new_flags |= VM_DONTDUMP
        elif behavior == MADV_DODUMP:
            if new_flags & VM_SPECIAL and vma.hugetlb is None:
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
        if vma.hugetlb is not None:
            return self.hugetlb_madvise_dontneed(tlb, vma, start, end, behavior)
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
                if is_swap_pte(pte):
                    # madvise_free_pte_range(): a swap entry is dropped rather than
                    # read back in (SC-30: VmSwap 4096 -> 0); nothing to flush.
                    self.machine.swap.swap_free(swp_offset(pte))
                    self._rss[MM_SWAPENTS] -= 1
                    entries[i] = 0
                    continue
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
        """R41. Anonymous pages go to swap; without a free slot only lazy-free
        anonymous and shmem pages are unmapped. reclaim_pages() runs on each page
        as the walk isolates it."""
        if vma.flags & (VM_LOCKED | VM_PFNMAP | VM_HUGETLB):
            return errno.EINVAL
        # can_do_file_pageout() holds for every file here: the process owns the
        # files it creates (inode_owner_or_capable()), whatever the fd's mode, so
        # page-cache pages are paged out like anonymous ones.
        tlb = tlb_gather_mmu(self)
        self.madvise_huge_pmds(tlb, vma, start, end, MADV_PAGEOUT if pageout else MADV_COLD)
        # Shmem huge folios the walk has dealt with (as a whole, at their first page met).
        done = set()
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
                if frame.thp_index is not None and frame.kind != _ANON:
                    head = frame.pfn - frame.thp_index
                    if head not in done:
                        done.add(head)
                        self.shmem_large_folio_step(tlb, table, i, span, start, end, pageout)
                    continue
                if frame.thp_index is not None:
                    # With no swap, a THP that is not lazy-free and clean cannot
                    # be paged out whole: shrink_folio_list() splits it.
                    # An mlocked one is unevictable: left whole, and mapped.
                    split_whole = pageout and (not frame.lazyfree or frame.dirty) and not frame.mlocked
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

    def madvise_willneed(self, vma, start, end):
        """R42: maps nothing. Anonymous memory and shmem would only start
        swap-in; a disk file's range is read into the page cache (clean 4 KiB
        pages, up to EOF) as force_page_cache_readahead() does. The readahead
        size limit (max(io_pages, ra_pages) per call) is not modelled."""
        obj = vma.file
        if obj is None or obj.shmem:
            return 0
        first = self._linear_page_index(vma, start)
        last = min(first + ((end - start) >> PAGE_SHIFT), obj.nr_pages)
        for index in range(first, last):
            if index not in obj.pages:
                frame = obj.add_page(index)
                if frame is None:
                    # Readahead gives up quietly when memory runs out.
                    break
                frame.written = True
        return 0

    def shrink_folio(self, vma, table, i, frame):
        """shrink_folio_list() for one isolated folio."""
        if frame.mlocked:
            return  # unevictable: kept, mapped
        pte = table.entries[i]
        if frame.kind == _ANON:
            if not frame.lazyfree:
                # folio_alloc_swap(); without a free slot the folio is kept.
                self.try_to_swap_out(table, i, frame)
                return
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
        # A page-cache page: try_to_unmap() succeeds (moving the PTE's dirty bit to
        # the folio). A clean folio is dropped from the page cache by
        # __remove_mapping(): a disk file reads it again on the next fault, shmem
        # (never written: zero-filled by a read fault) faults in a fresh zeroed
        # page. A dirty shmem folio goes to pageout() (swap, or it stays for lack
        # of it); a dirty disk-file folio is never written back by this reclaim
        # (only kswapd writes file pages): it stays cached, dirty and unmapped.
        if pte & _PAGE_DIRTY:
            frame.dirty = True
        table.entries[i] = 0
        self._stats["tlb_flushes"] += 1  # ptep_clear_flush(), as above
        frame.mapcount -= 1
        self._rss[_KIND_COUNTER[frame.kind]] -= 1
        self._mem.folio_put(frame)
        if not frame.dirty and frame.mapcount == 0 and frame.mapping.pages.get(frame.index) is frame:
            frame.mapping.remove_page(frame.index)
        elif frame.dirty and frame.mapcount == 0 and frame.kind == _SHMEM:
            self.shmem_writeout(frame)

    def try_to_swap_out(self, table, i, frame):
        """A slot, then try_to_unmap_one(): the PTE becomes a swap entry that keeps
        the page's exclusive bit (RssAnon -1, VmSwap +1, one flush), and the
        written page is freed."""
        offset = self.machine.swap.get_swap_page()
        if offset is None:
            return
        pte = table.entries[i]
        swp_pte = make_swap_pte(offset)
        if frame.exclusive:
            swp_pte |= _PAGE_SWP_EXCLUSIVE
        if pte & _PAGE_UFFD_WP:
            swp_pte |= _PAGE_SWP_UFFD_WP
        table.entries[i] = swp_pte
        self._stats["tlb_flushes"] += 1  # ptep_clear_flush(), as above
        frame.mapcount -= 1
        frame.exclusive = False
        self._rss[MM_ANONPAGES] -= 1
        self._rss[MM_SWAPENTS] += 1
        self._mem.folio_put(frame)

    def shmem_writeout(self, frame):
        """pageout() of a dirty shmem page no PTE maps: with a free slot the page
        cache entry becomes a swap entry and the page is freed (VmSwap counts
        only anonymous swap entries, R14); without one it stays (redirty)."""
        if frame.mapping.pages.get(frame.index) is not frame:
            return
        offset = self.machine.swap.get_swap_page()
        if offset is None:
            return
        obj = frame.mapping
        del obj.pages[frame.index]
        obj.swapped[frame.index] = offset
        self._mem.folio_put(frame)

    def madvise_remove(self, vma, start, end):
        """R40: punch a hole in the file (shmem or disk file), unmapping it
        everywhere; private COW copies stay."""
        if vma.flags & VM_LOCKED:
            return errno.EINVAL
        if vma.hugetlb is not None:
            return self.hugetlb_madvise_remove(vma, start, end)
        if vma.file is None:
            return errno.EINVAL
        if (vma.flags & (VM_SHARED | VM_MAYWRITE)) != (VM_SHARED | VM_MAYWRITE):
            return errno.EACCES
        obj = vma.file
        first = self._linear_page_index(vma, start)
        last = first + ((end - start) >> PAGE_SHIFT) - 1
        self.unmap_mapping_range(obj, first, last)
        if obj.shmem:
            self.shmem_punch_split(obj, first, last)
        # The cached pages in the hole, in index order (not every index of a range that
        # may span hundreds of GiB).
        for index in sorted(i for i in obj.pages if first <= i <= last):
            self._mem.folio_put(obj.pages.pop(index))
        for index in sorted(i for i in obj.swapped if first <= i <= last):
            self.machine.swap.swap_free(obj.swapped.pop(index))
        return 0

    def unmap_mapping_range(self, obj, first, last):
        """Unmap pages [first, last] of obj from every process mapping it."""
        details = _ZapDetails(even_cows=False)
        for mm in list(self.machine.mms):
            for vma in [v for v in mm._vmas if v.file is obj]:
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
        if vma.file is None:
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

    # ------------------------------------------------------------- mremap

    def mremap(self, old_address, old_size, new_size, flags=0, new_address=0):
        """mremap(2): shrink, grow or move a mapping; returns its (new) address."""
        addr = _ulong(old_address)
        old_len = _ulong(old_size)
        new_len = _ulong(new_size)
        flags = _ulong(flags)
        new_addr = _ulong(new_address)
        self._check_alive()
        return self.do_mremap(addr, old_len, new_len, flags, new_addr)

    def do_mremap(self, addr, old_len, new_len, flags, new_addr):
        """do_mremap() of 6.18: the parameter checks, then a move of several VMAs
        (MREMAP_FIXED, unchanged size) or the checks on one VMA and a resize or move."""
        vrm = _RemapState(addr, _page_align(old_len), _page_align(new_len), flags, new_addr)
        self.check_mremap_params(vrm)
        if flags & MREMAP_FIXED and vrm.old_len == vrm.new_len:
            return self.remap_move(vrm)
        self.check_prep_vma(self._vma_containing(addr), vrm)
        if self._remap_implies_new_addr(vrm):
            self.mremap_to(vrm)
        else:
            self.mremap_at(vrm)
        if vrm.populate_expand:
            # A locked VMA that grew: the new part is populated (errors ignored).
            self.__mm_populate(vrm.new_addr + vrm.old_len, vrm.delta, True)
        return vrm.new_addr

    @staticmethod
    def _remap_implies_new_addr(vrm):
        return bool(vrm.flags & (MREMAP_FIXED | MREMAP_DONTUNMAP))

    def check_mremap_params(self, vrm):
        """Everything checked before the VMA is looked up."""
        if vrm.flags & ~(MREMAP_FIXED | MREMAP_MAYMOVE | MREMAP_DONTUNMAP):
            raise _oserror(errno.EINVAL)
        if vrm.addr & (PAGE_SIZE - 1):
            raise _oserror(errno.EINVAL)
        if vrm.new_len == 0 or vrm.new_len > self._task_size:
            raise _oserror(errno.EINVAL)
        if not self._remap_implies_new_addr(vrm):
            return
        if vrm.new_addr > self._task_size - vrm.new_len or vrm.new_addr & (PAGE_SIZE - 1):
            raise _oserror(errno.EINVAL)
        if not vrm.flags & MREMAP_MAYMOVE:
            raise _oserror(errno.EINVAL)
        if vrm.flags & MREMAP_DONTUNMAP and vrm.old_len != vrm.new_len:
            raise _oserror(errno.EINVAL)
        # The ranges may not overlap; the sums wrap as unsigned longs do.
        if ((vrm.addr + vrm.old_len) & _U64) > vrm.new_addr and ((vrm.new_addr + vrm.new_len) & _U64) > vrm.addr:
            raise _oserror(errno.EINVAL)

    def check_prep_vma(self, vma, vrm):
        """check_prep_vma(): the checks on the VMA at addr, in Linux's order."""
        if vma is None:
            raise _oserror(errno.EFAULT)
        if vma.hugetlb is not None:
            self.align_hugetlb(vrm)
        vrm.vma = vma
        vrm.delta = abs(vrm.old_len - vrm.new_len)
        if vrm.delta == 0:
            vrm.remap_type = "no_resize"
        elif vrm.old_len > vrm.new_len:
            vrm.remap_type = "shrink"
        else:
            vrm.remap_type = "expand"
        if not self._remap_implies_new_addr(vrm):
            vrm.new_addr = vrm.addr
        # Only a growth or a move maps new address space.
        if vrm.remap_type != "expand" and not self._remap_implies_new_addr(vrm):
            return
        old_len, new_len = vrm.old_len, vrm.new_len
        # A zero old_len duplicates a shared mapping; a private one cannot be.
        if not old_len and not vma.flags & (VM_SHARED | VM_MAYSHARE):
            raise _oserror(errno.EINVAL)
        if vrm.flags & MREMAP_DONTUNMAP and vma.flags & (VM_DONTEXPAND | VM_PFNMAP):
            raise _oserror(errno.EINVAL)
        # A shrink may unmap across VMAs; what moves must lie in this one.
        if vrm.remap_type == "shrink":
            old_len = new_len
        if old_len > vma.end - vrm.addr:
            raise _oserror(errno.EFAULT)
        if new_len == old_len:
            return
        if vma.flags & VM_LOCKED:
            vrm.populate_expand = True
        pgoff = vma.pgoff + ((vrm.addr - vma.start) >> PAGE_SHIFT)
        if pgoff + (new_len >> PAGE_SHIFT) > _U64:
            raise _oserror(errno.EINVAL)
        if vma.flags & (VM_DONTEXPAND | VM_PFNMAP):
            raise _oserror(errno.EFAULT)
        # mlock_future_ok() and may_expand_vm(): no RLIMIT_MEMLOCK or RLIMIT_AS here.

    def align_hugetlb(self, vrm):
        """Whole huge pages, at 2 MiB-aligned addresses, and no growth, which the
        reservations cannot follow. The new address is checked as the caller passed
        it, even without MREMAP_FIXED, and even a call that changes nothing is checked."""
        vrm.old_len = (vrm.old_len + PMD_SIZE - 1) & _PMD_MASK
        vrm.new_len = (vrm.new_len + PMD_SIZE - 1) & _PMD_MASK
        if vrm.addr & (PMD_SIZE - 1):
            raise _oserror(errno.EINVAL)
        if vrm.new_addr & (PMD_SIZE - 1):
            raise _oserror(errno.EINVAL)
        if vrm.new_len > vrm.old_len:
            raise _oserror(errno.EINVAL)

    def _remap_munmap(self, start, length):
        """do_munmap() with its argument checks."""
        if start & (PAGE_SIZE - 1) or start > self._task_size or length > self._task_size - start:
            raise _oserror(errno.EINVAL)
        end = start + _page_align(length)
        if end == start:
            raise _oserror(errno.EINVAL)
        self.do_vmi_munmap(start, end)

    def mremap_at(self, vrm):
        """No move asked for: a shrink unmaps the tail; a growth extends the VMA
        in place when the range ends at its end and the space after it is free,
        else moves it (MREMAP_MAYMOVE) or fails with ENOMEM."""
        if vrm.remap_type == "no_resize":
            return
        if vrm.remap_type == "shrink":
            self._remap_munmap(vrm.addr + vrm.new_len, vrm.delta)
            return
        vma = vrm.vma
        if vma.end - vrm.addr == vrm.old_len:
            end = vma.end + vrm.delta
            # vma_expandable(): nothing in the way, and below TASK_SIZE.
            nxt = self.find_vma(vma.end)
            if end <= self._task_size and (nxt is None or nxt.start >= end):
                self.expand_vma_in_place(vma, vrm)
                return
        if not vrm.flags & MREMAP_MAYMOVE:
            raise _oserror(errno.ENOMEM)
        self.vrm_set_new_addr(vrm)
        self.move_vma(vrm)

    def expand_vma_in_place(self, vma, vrm):
        """Charge, then vma_merge_extend(): the VMA grows, and takes the next VMA
        in if they are compatible. The new range carries the VMA's anon_vma and
        no VMA is copied, so a forked anon_vma does not stop that merge."""
        pages = vrm.delta >> PAGE_SHIFT
        if vma.flags & VM_ACCOUNT and pages > self._overcommit_limit():
            raise _oserror(errno.ENOMEM)
        vma.end += vrm.delta
        nxt = self._vma_next(vma)
        if (
            nxt is not None
            and nxt.start == vma.end
            and self.is_mergeable_vma(nxt, vma.flags, vma.file)
            and not (vma.anon_vma is not None and nxt.anon_vma is not None and vma.anon_vma is not nxt.anon_vma)
            and not (vma.anon_vma is None and nxt.anon_vma is not None and nxt.anon_vma.forked)
            and vma.pgoff + vma.pages() == nxt.pgoff
        ):
            vma.end = nxt.end
            vma.flags |= nxt.flags & VM_STICKY
            if vma.anon_vma is None:
                vma.anon_vma = nxt.anon_vma
            self._remove_vma(nxt)
        if vma.flags & VM_LOCKED:
            self._locked_vm += pages

    def mremap_to(self, vrm):
        """MREMAP_FIXED unmaps the destination first; a shrink unmaps the tail;
        then the move."""
        if vrm.flags & MREMAP_FIXED:
            self._remap_munmap(vrm.new_addr, vrm.new_len)
            vrm.vma = self._vma_containing(vrm.addr)
            if vrm.vma is None:
                raise _oserror(errno.EFAULT)
        if vrm.remap_type == "shrink":
            self._remap_munmap(vrm.addr + vrm.new_len, vrm.delta)
            vrm.vma = self._vma_containing(vrm.addr)
            if vrm.vma is None:
                raise _oserror(errno.EFAULT)
            vrm.old_len = vrm.new_len
        self.vrm_set_new_addr(vrm)
        self.move_vma(vrm)

    def vrm_set_new_addr(self, vrm):
        """MREMAP_FIXED is MAP_FIXED, MREMAP_DONTUNMAP alone a hint; otherwise the
        kernel chooses, as for mmap: no page offset counts for anonymous memory, so
        a private length that is a multiple of 2 MiB gets a 2 MiB-aligned address;
        a file's own get_unmapped_area gets the moved range's page offset."""
        hint = vrm.new_addr if self._remap_implies_new_addr(vrm) else 0
        flags = (MAP_FIXED if vrm.flags & MREMAP_FIXED else 0) | (MAP_SHARED if vrm.vma.flags & VM_MAYSHARE else 0)
        vma = vrm.vma
        vrm.new_addr = self.__get_unmapped_area(hint, vrm.new_len, flags, vma.file,
                                                self._linear_page_index(vma, vrm.addr))

    def copy_vma(self, vma, addr, length, pgoff):
        """A VMA like vma at [addr, addr + length), merged with its neighbours
        there when it can be (vma_merge_new_range() with the copied VMA's
        anon_vma, object and flags)."""
        end = addr + length
        flags = vma.flags
        nxt = self.find_vma(addr)
        prev = self._vma_prev(nxt) if nxt is not None else (self._vmas[-1] if self._vmas else None)
        nr_pages = length >> PAGE_SHIFT
        merge_left = merge_right = False
        if not flags & VM_SPECIAL:
            merge_left = self.can_vma_merge_left(prev, addr, flags, vma.file, pgoff, vma.anon_vma)
            merge_right = self.can_vma_merge_right(nxt, end, flags, vma.file, pgoff, nr_pages, vma.anon_vma,
                                                   prev, merge_left)
        if merge_left and merge_right:
            prev.end = nxt.end
            prev.flags |= (flags | nxt.flags) & VM_STICKY
            if prev.anon_vma is None:
                prev.anon_vma = vma.anon_vma or nxt.anon_vma
            self._remove_vma(nxt)
            return prev
        if merge_left:
            prev.end = end
            prev.flags |= flags & VM_STICKY
            if prev.anon_vma is None:
                prev.anon_vma = vma.anon_vma
            return prev
        if merge_right:
            nxt.start = addr
            nxt.pgoff = pgoff
            nxt.flags |= flags & VM_STICKY
            if nxt.anon_vma is None:
                nxt.anon_vma = vma.anon_vma
            self._vmas_changed()
            return nxt
        new = _Vma(addr, end, flags, pgoff, vma.anon_vma, vma.file)
        if vma.hugetlb is not None:
            # vm_ops->open(): the copy shares the file and, for a private
            # mapping, the reserve map (fixup_hugetlb_reservations() settles whose).
            new.hugetlb = self.hugetlb_vm_op_open(vma.hugetlb)
        self._insert_vma(new)
        return new

    def move_vma(self, vrm):
        """Copy the VMA to new_addr, move its page tables, then unmap the old
        range (or, for MREMAP_DONTUNMAP, leave it mapped and empty)."""
        vma = vrm.vma
        dontunmap = bool(vrm.flags & MREMAP_DONTUNMAP)
        old_start, old_end = vma.start, vma.end
        if vma.hugetlb is not None and self.hugetlb_move_hits_pmd_share(vma, vrm.addr, vrm.new_addr, vrm.old_len):
            raise NotImplementedError("this mremap of a shared hugetlb mapping hangs Linux 6.18 "
                                      "(huge_pmd_share() under the move's i_mmap_rwsem); not simulated")
        if vma.flags & VM_ACCOUNT:
            charged = (vrm.new_len if dontunmap else vrm.delta) >> PAGE_SHIFT
            if charged > self._overcommit_limit():
                raise _oserror(errno.ENOMEM)
        pgoff = vma.pgoff + ((vrm.addr - vma.start) >> PAGE_SHIFT)
        if vma_is_anonymous(vma) and vma.hugetlb is None and vma.anon_vma is None:
            # Never faulted: it takes the new address as its offset, to merge there.
            pgoff = vrm.new_addr >> PAGE_SHIFT
        new_vma = self.copy_vma(vma, vrm.new_addr, vrm.new_len, pgoff)
        old_vma = self._vma_containing(vrm.addr)  # the copy may have merged with it
        old_addr, new_addr = vrm.addr, vrm.new_addr
        if old_vma.hugetlb is not None:
            # move_page_tables() hands a hugetlb VMA to move_hugetlb_page_tables().
            # hugetlb memory is never VM_LOCKED, and MREMAP_DONTUNMAP was refused.
            self.move_hugetlb_page_tables(old_addr, new_addr, vrm.old_len)
            self.fixup_hugetlb_reservations(old_vma, vrm.addr, vrm.old_len)
            self.do_vmi_munmap(vrm.addr, vrm.addr + vrm.old_len)
            return
        align = old_addr & (PMD_SIZE - 1)
        if (
            align
            and align == new_addr & (PMD_SIZE - 1)
            and vrm.old_len >= PMD_SIZE - align
            and old_vma.start == old_addr
            and new_vma.start == new_addr
            and not self._intersects(old_addr & _PMD_MASK, old_addr)
            and not self._intersects(new_addr & _PMD_MASK, new_addr)
        ):
            # try_realign_addr(): start at the span, so its PTE table moves whole.
            old_addr &= _PMD_MASK
            new_addr &= _PMD_MASK
        if vrm.old_len:
            self.move_page_tables(old_addr, new_addr, vrm.addr + vrm.old_len)
        if old_vma.flags & VM_LOCKED:
            self._locked_vm += vrm.new_len >> PAGE_SHIFT
        if dontunmap:
            # The old VMA, whole, loses VM_LOCKED (VmLck is not lowered); if all of
            # it moved, its anon_vma goes too. Nothing merges.
            if old_vma.flags & VM_LOCKED:
                self._locked_vm_stale += old_vma.pages()
                # The pages it still maps stay mlocked, and nothing will munlock them:
                # small pages and PMD-mapped THPs (a THP mapped by PTEs is not
                # mlocked; splitting its PMD munlocked it).
                for _, pte in self.entries(old_vma.start, old_vma.end):
                    frame = self.vm_normal_page(pte) if pte_present(pte) else None
                    if frame is not None and frame.thp_index is None:
                        frame.mlocked = True
                for pmd, index, _, _ in self._huge_pmds_in_range(old_vma.start, old_vma.end):
                    head = pte_pfn(pmd.entries[index])
                    if head != HUGE_ZERO_PFN:
                        for i in range(HPAGE_PMD_NR):
                            self._mem.frames[head + i].mlocked = True
            old_vma.flags &= ~VM_LOCKED_MASK
            if vrm.addr == old_start and vrm.addr + vrm.old_len == old_end and old_vma is not new_vma \
                    and (old_vma.start, old_vma.end) == (old_start, old_end):
                old_vma.anon_vma = None
            for a, b in ((self._vma_prev(old_vma), old_vma), (old_vma, self._vma_next(old_vma))):
                if a is not None and b is not None and a.end == b.start and self._vmas_would_merge(a, b):
                    self._unmerged_ok.add(b.start)
            return
        if vrm.old_len:
            self.do_vmi_munmap(vrm.addr, vrm.addr + vrm.old_len)

    def _intersects(self, start, end):
        vma = self.find_vma(start)
        return vma is not None and vma.start < end

    def remap_move(self, vrm):
        """An MREMAP_FIXED move of unchanged size may span several VMAs: each
        moves in turn, the gaps between them kept. A hole at the start is EFAULT;
        a failure stops the walk, with the VMAs before it moved."""
        start, end = vrm.addr, vrm.addr + vrm.old_len
        target = vrm.new_addr
        result = None
        last_end = 0
        pos = start
        while True:
            vma = self.find_vma(pos)
            if vma is None or vma.start >= end:
                break
            vs, ve = vma.start, vma.end
            a = max(vs, start)
            n = min(end, ve) - a
            if result is None and start < vs:
                raise _oserror(errno.EFAULT)
            sub = _RemapState(a, n, n, vrm.flags, target + (vs - last_end if result is not None else 0))
            self.check_prep_vma(vma, sub)
            self.mremap_to(sub)
            if result is None:
                result = sub.new_addr
            last_end = ve
            target = sub.new_addr + n
            # The walk goes on after the end of the VMA just moved.
            pos = ve
        if result is None:
            raise _oserror(errno.EFAULT)
        return result

    @staticmethod
    def _move_extent(old_addr, old_end, new_addr, size):
        """get_extent(): up to the next boundary of this level on both sides."""
        extent = min(size - (old_addr & (size - 1)), old_end - old_addr)
        return min(extent, size - (new_addr & (size - 1)))

    @staticmethod
    def _rebase(table, base):
        table.base = base
        if table.children is not None:
            for i, child in enumerate(table.children):
                if child is not None:
                    child.base = base + (i << _LEVEL_SHIFT[table.level])

    def move_page_tables(self, old_addr, new_addr, old_end):
        """Move the entries of [old_addr, old_end) to new_addr: a whole PMD table
        when both sides are 1 GiB-aligned over a whole 1 GiB (move_normal_pud), a
        whole PTE table when both are 2 MiB-aligned over a whole span and the
        destination has none (move_normal_pmd); else entry by entry (move_ptes)
        into a PTE table made at the destination."""
        while old_addr < old_end:
            extent = self._move_extent(old_addr, old_end, new_addr, PUD_SIZE)
            old_pud = self._pud_table(old_addr)
            oi = (old_addr >> PUD_SHIFT) & 511
            if old_pud is None or old_pud.children[oi] is None:
                old_addr += extent
                new_addr += extent
                continue
            new_pud = self.__pud_alloc(new_addr)
            ni = (new_addr >> PUD_SHIFT) & 511
            if extent == PUD_SIZE and new_pud.children[ni] is None:
                table = old_pud.children[oi]
                old_pud.children[oi] = None
                old_pud.entries[oi] = 0
                new_pud.children[ni] = table
                new_pud.entries[ni] = (table.pfn << PAGE_SHIFT) | _PAGE_TABLE
                self._rebase(table, new_pud.base + (ni << PUD_SHIFT))
                self._stats["tlb_flushes"] += 1
                old_addr += extent
                new_addr += extent
                continue
            extent = self._move_extent(old_addr, old_end, new_addr, PMD_SIZE)
            old_pmd = old_pud.children[oi]
            oj = (old_addr >> PMD_SHIFT) & 511
            if pmd_trans_huge(old_pmd.entries[oj]):
                new_pmd = self.__pmd_alloc(new_pud, new_addr)
                nj = (new_addr >> PMD_SHIFT) & 511
                if extent == PMD_SIZE and not new_pmd.entries[nj]:
                    # move_huge_pmd(): the huge PMD moves with its deposit.
                    new_pmd.entries[nj] = old_pmd.entries[oj]
                    old_pmd.entries[oj] = 0
                    self._stats["tlb_flushes"] += 1
                    old_addr += extent
                    new_addr += extent
                    continue
                self.split_huge_pmd(self._vma_containing(old_addr), old_pmd, oj)
            table = old_pmd.children[oj]
            if table is None:
                old_addr += extent
                new_addr += extent
                continue
            new_pmd = self.__pmd_alloc(new_pud, new_addr)
            nj = (new_addr >> PMD_SHIFT) & 511
            if extent == PMD_SIZE and new_pmd.children[nj] is None:
                old_pmd.children[oj] = None
                old_pmd.entries[oj] = 0
                new_pmd.children[nj] = table
                new_pmd.entries[nj] = (table.pfn << PAGE_SHIFT) | _PAGE_TABLE
                table.base = new_pmd.base + (nj << PMD_SHIFT)
                self._stats["tlb_flushes"] += 1
                old_addr += extent
                new_addr += extent
                continue
            dst = self.__pte_alloc(new_pmd, new_addr)
            src_i = (old_addr >> PAGE_SHIFT) & 511
            dst_i = (new_addr >> PAGE_SHIFT) & 511
            flush = False
            for k in range(extent >> PAGE_SHIFT):
                pte = table.entries[src_i + k]
                if pte_none(pte):
                    continue
                if pte_present(pte):
                    flush = True
                table.entries[src_i + k] = 0
                dst.entries[dst_i + k] = pte
            if flush:
                self._stats["tlb_flushes"] += 1
            old_addr += extent
            new_addr += extent

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
                vma = self._vma_containing(page) if page < self._task_size else None
                if vma is None:
                    # The first access is at addr itself, later ones at page starts.
                    raise SegmentationFault(max(page, addr))
            try:
                self._access(vma, page, write)
            except _FaultError as exc:
                if exc.kind == "OOM":
                    raise OutOfMemory(f"no free frame for the access at {page:#x}") from None
                if exc.kind == "SIGBUS":
                    raise BusError(max(page, addr)) from None
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
            except (SegmentationFault, OutOfMemory, BusError) as exc:
                exc.index = i
                raise

    # ---------------------------------------------------------------- exit

    def exit(self):
        self._check_alive()
        self.exit_mmap()
        self._close_all()
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
        self._locked_vm_stale = 0
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
                   machine=self.machine, paging_levels=self.paging_levels)
        # dup_fd(): the child has the same files open under the same numbers.
        for inode, _write in self._fds.values():
            inode.get()
        child._fds = dict(self._fds)
        try:
            self.dup_mmap(child)
        except OSError:
            # The child never ran: unmap and free what was copied into it.
            child.exit_mmap()
            child._close_all()
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
            tmp = _Vma(vma.start, vma.end, vma.flags & ~VM_LOCKED_MASK, vma.pgoff, None, vma.file)
            if vma.hugetlb is not None:
                tmp.hugetlb = self.hugetlb_dup_vma(vma.hugetlb)
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
        if vma.hugetlb is not None:
            self.copy_hugetlb_page_range(dst, dst_vma, vma)
            return
        is_cow = (vma.flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE
        addr = vma.start
        end = vma.end
        while addr < end:
            pgd_next = min((addr + PGDIR_SIZE) & _PGDIR_MASK or end, end)
            src_pud = self._pud_table(addr)
            if src_pud is None:
                addr = min(self._pud_skip(addr), end)
                continue
            # copy_p4d_range(): the child gets the P4D table too (5 levels).
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
                if is_swap_pte(pte):
                    # copy_nonpresent_pte(): the child refers to the same slot (swap
                    # count +1, child VmSwap +1); neither entry is exclusive now (R68).
                    self.machine.swap.swap_duplicate(offset)
                    pte &= ~_PAGE_SWP_EXCLUSIVE
                    src[i] = pte
                    out[i] = pte & ~_PAGE_SWP_UFFD_WP
                    dst._rss[MM_SWAPENTS] += 1
                    continue
                if swp_type != _SWP_PTE_MARKER:
                    raise NotImplementedError("this kind of non-present entry is not simulated")
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
            "HugetlbPages": self._hugetlb_usage * 4,
            # smaps_rollup's ShmemPmdMapped: shmem mapped by PMD leaves.
            "ShmemPmdMapped": sum(HPAGE_PMD_NR * 4 for _, entry in self._iter_huge_pmds()
                                  if not entry & _PAGE_SPECIAL
                                  and self._mem.frames[pte_pfn(entry)].kind == _SHMEM),
        }

    def vmas(self):
        return [(v.start, v.end, v.flags, v.anon_vma is not None) for v in self._vmas]

    def _iter_pte_tables(self):
        for pud in self._pud_tables():
            for pmd in pud.children:
                if pmd is None:
                    continue
                for pte_table in pmd.children:
                    if pte_table is not None:
                        yield pte_table

    def entries(self, start=0, end=None):
        start = _ulong(start)
        end = self._task_size + PAGE_SIZE if end is None else _ulong(end)
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
        if self.paging_levels == 5:
            out.extend(("p4d", p4d.base) for p4d in self._p4d_tables())
        for pud in self._pud_tables():
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
                out.extend(("deposit", pmd.base + (index << PMD_SHIFT)) for index in _huge_indexes(pmd)
                           if not self._is_file_pmd(pmd.entries[index]))
        # By address, then from the top of the hierarchy down (api.md); the level
        # names do not sort that way alphabetically.
        depth = {"p4d": -1, "pud": 0, "pmd": 1, "pte": 2, "deposit": 2}
        return sorted(out, key=lambda t: (t[1], depth[t[0]]))

    def _iter_huge_pmds(self):
        for pud in self._pud_tables():
            for pmd in pud.children:
                if pmd is None:
                    continue
                for index in _huge_indexes(pmd):
                    yield pmd.base + (index << PMD_SHIFT), pmd.entries[index]

    def read_entry(self, address, level="pte"):
        address = _ulong(address)
        if level not in _READ_LEVELS:
            raise ValueError(f"level must be one of {_READ_LEVELS}, not {level!r}")
        if address >= self._task_size + PAGE_SIZE:
            raise ValueError("address beyond the user address space")
        if level == "pgd":
            return self._pgd.entries[(address >> _LEVEL_SHIFT[self._pgd.level]) & 511]
        # With 4 levels the P4D entry is the PGD entry (folded, R2).
        table = self._pgd
        if self.paging_levels == 5:
            table = table.children[(address >> _PGDIR5_SHIFT) & 511]
            if table is None:
                return 0
        for name, shift in (("p4d", PGDIR_SHIFT), ("pud", PUD_SHIFT), ("pmd", PMD_SHIFT)):
            index = (address >> shift) & 511
            if level == name:
                return table.entries[index]
            table = table.children[index]
            if table is None:
                return 0
        return table.entries[(address >> PAGE_SHIFT) & 511]

    # --------------------------------------------------------------- check

    def check(self):
        """Raise InvariantError for any state Linux could not be in (R76)."""
        self._check_vmas()
        swapped = {}
        counted, deposits, mapped = self._check_tables(swapped)
        self._check_table_pages()
        if deposits != self._nr_deposits:
            raise InvariantError("deposit", f"{self._nr_deposits} deposits for {deposits} huge PMDs (R13)")
        if self._pgtables_bytes != (counted + deposits) * PAGE_SIZE:
            raise InvariantError(
                "pgtables_bytes",
                f"{self._pgtables_bytes} != 4096 * ({counted} linked tables + {deposits} deposits) (R10, R13, R76.1)"
            )
        rss = [0, 0, 0, 0]
        rss[MM_SWAPENTS] = sum(swapped.values())
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
            held = 1 if frame.mapping is not None and frame.mapping.pages.get(frame.index) is frame else 0
            if frame.refcount != maps + held:
                raise InvariantError("refcount", f"frame {pfn}: refcount {frame.refcount} != {maps} + {held}")
            if frame.refcount == 0:
                raise InvariantError("refcount", f"frame {pfn} is allocated with no reference")
            if frame.exclusive and (frame.kind != _ANON or frame.mapcount != 1):
                raise InvariantError("anon-exclusive", f"frame {pfn}: exclusive with mapcount {frame.mapcount}")
        self._check_swap_slots()
        self._check_inodes()
        locked = sum(v.pages() for v in self._vmas if v.flags & VM_LOCKED) + self._locked_vm_stale
        if locked != self._locked_vm:
            raise InvariantError("locked_vm", f"{self._locked_vm} != {locked} locked VMA pages")
        if self._dead and (self._pgtables_bytes or any(self._rss) or self._vmas):
            raise InvariantError("exit", "state left after exit (R15)")
        self._check_hugetlb()

    def _check_inodes(self):
        """Page caches: every cached page is a live frame of its inode's kind at
        its index below EOF; a regular file has no swap; an inode nothing refers
        to holds nothing; the fd table refers to live inodes."""
        frames = self._mem.frames
        for inode in list(self.machine.inodes):
            for index, frame in inode.pages.items():
                if frames.get(frame.pfn) is not frame:
                    raise InvariantError("page-cache", f"cached page {index} is a freed frame")
                if frame.mapping is not inode or frame.index != index or frame.kind != inode.kind:
                    raise InvariantError("page-cache", f"cached page {index} belongs elsewhere")
                if frame.exclusive:
                    raise InvariantError("page-cache", f"cached page {index} is marked anonymous")
                first = index
                if frame.thp_index is not None:
                    # A page of a large folio of nr pages (a power of 2 up to 512):
                    # nr consecutive frames cached at [first, first + nr), first a
                    # multiple of nr.
                    first = index - frame.thp_index
                    head = frame.pfn - frame.thp_index
                    nr = frame.folio_nr
                    if (not inode.shmem or nr not in _LARGE_FOLIO_SIZES or first % nr
                            or not 0 <= frame.thp_index < nr):
                        raise InvariantError("page-cache", f"cached page {index}: a misplaced large folio")
                    check = range(nr) if frame.thp_index == 0 else (0,)
                    for k in check:
                        page = inode.pages.get(first + k)
                        if page is None or page.pfn != head + k or page.thp_index != k or page.folio_nr != nr:
                            raise InvariantError("page-cache", f"large folio at {first} is not whole (page {k})")
                # A large folio may reach past EOF (MADV_COLLAPSE fills the span).
                if first >= inode.nr_pages:
                    raise InvariantError("page-cache", f"cached page {index} past EOF ({inode.size} bytes)")
            if inode.swapped and not inode.shmem:
                raise InvariantError("page-cache", "a disk file holds swap entries")
            if inode.refs < 0 or (inode.refs == 0 and (inode.pages or inode.swapped)):
                raise InvariantError("page-cache", f"an inode with {inode.refs} references holds pages")
        for fd, (inode, _write) in self._fds.items():
            if fd < 3 or inode.refs <= 0:
                raise InvariantError("fd", f"fd {fd} refers to a dead file")
        if self._dead and self._fds:
            raise InvariantError("exit", "files left open after exit")

    def _check_vmas(self):
        prev = None
        for vma in self._vmas:
            if vma.start & (PAGE_SIZE - 1) or vma.end & (PAGE_SIZE - 1) or vma.start >= vma.end:
                raise InvariantError("vma-alignment", repr(vma))
            if vma.end > self._task_size:
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
            and self.is_mergeable_vma(prev, vma.flags, vma.file)
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

    def _check_tables(self, swapped=None):
        counted = 0
        deposits = 0
        mapped = {}
        tops = [self._pgd]
        if self.paging_levels == 5:
            # P4D tables are linked but never counted (R10).
            tops = [p4d for _, p4d in self._linked_children(self._pgd)]
            if self._stats["p4d_tables_allocated"] - self._stats["p4d_tables_freed"] != len(tops):
                raise InvariantError("p4d-count", "the P4D tables linked are those allocated and not freed")
        for pgd_i, pud in (c for top in tops for c in self._linked_children(top)):
            counted += 1
            for pud_i, pmd in self._linked_children(pud):
                counted += 1
                for pmd_i, pte_table in self._linked_children(pmd):
                    counted += 1
                    self._check_pte_table(pte_table, mapped, swapped)
                for index in _huge_indexes(pmd):
                    if pmd.children[index] is not None:
                        raise InvariantError("table-link", f"huge PMD entry {index} with a table")
                    if not self._is_file_pmd(pmd.entries[index]):
                        deposits += 1
                    self._check_huge_pmd(pmd.base + (index << PMD_SHIFT), pmd.entries[index], mapped)
        return counted, deposits, mapped

    def _check_huge_pmd(self, addr, entry, mapped):
        vma = self._vma_containing(addr)
        if vma is None or vma.end < addr + PMD_SIZE:
            raise InvariantError("huge-pmd", f"huge PMD at {addr:#x} not inside one VMA")
        head = pte_pfn(entry)
        if head != HUGE_ZERO_PFN and head in self._mem.frames and self._mem.frames[head].kind != _ANON:
            self._check_file_pmd(addr, entry, vma, mapped)
            return
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

    def _check_file_pmd(self, addr, entry, vma, mapped):
        """A PMD leaf mapping a shmem huge folio: in a shmem VMA that suits it, with
        vm_page_prot, writable only in a shared mapping, mapping the 512 cached
        pages of one huge folio at their own offsets."""
        # VM_NOHUGEPAGE set later does not unmap a leaf, so it is not checked.
        if (vma.file is None or not vma.file.shmem or addr < vma.start
                or ((vma.start >> PAGE_SHIFT) - vma.pgoff) % HPAGE_PMD_NR):
            raise InvariantError("huge-pmd", f"file PMD at {addr:#x} in a VMA that does not suit it")
        prot = vma_page_prot(vma)
        fixed = _PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_USER | _PAGE_NX
        if (entry & fixed) != (prot & fixed) or entry & _PAGE_SPECIAL:
            raise InvariantError("pte-prot", f"file PMD {entry:#x} at {addr:#x} does not match vm_page_prot {prot:#x}")
        if entry & _PAGE_RW and (vma.flags & (VM_WRITE | VM_SHARED)) != (VM_WRITE | VM_SHARED):
            raise InvariantError("pte-prot", f"writable file PMD at {addr:#x} outside a shared writable mapping")
        head = pte_pfn(entry)
        index0 = self._linear_page_index(vma, addr)
        for i in range(HPAGE_PMD_NR):
            frame = self._mem.frames.get(head + i)
            if (frame is None or frame.thp_index != i or frame.folio_nr != HPAGE_PMD_NR
                    or frame.mapping is not vma.file
                    or frame.index != index0 + i or vma.file.pages.get(index0 + i) is not frame):
                raise InvariantError("thp", f"file PMD at {addr:#x} does not map the cached huge folio at "
                                     f"offset {index0} (page {i})")
            mapped[head + i] = mapped.get(head + i, 0) + 1

    def _swap_references(self):
        """offset -> swap entries of this mm's page tables that refer to it."""
        refs = {}
        for table in self._iter_pte_tables():
            for pte in table.entries:
                if pte and is_swap_pte(pte):
                    offset = swp_offset(pte)
                    refs[offset] = refs.get(offset, 0) + 1
        return refs

    def _check_swap_slots(self):
        """A slot's count is the swap entries referring to it, in the page tables of
        every process on the machine and in shmem objects; free slots are on the heap."""
        swap = self.machine.swap
        if not swap.nr_slots and not swap.count:
            return
        refs = {}
        for mm in self.machine.mms:
            for offset, count in mm._swap_references().items():
                refs[offset] = refs.get(offset, 0) + count
        for obj in list(self.machine.inodes):
            for offset in obj.swapped.values():
                refs[offset] = refs.get(offset, 0) + 1
        if refs != swap.count:
            bad = sorted(set(refs.items()) ^ set(swap.count.items()))[:3]
            raise InvariantError("swap-count", f"slot counts {swap.count} != references {refs}: {bad}")
        if swap.next > swap.nr_slots + 1 or any(not 0 < off < swap.next for off in swap.count):
            raise InvariantError("swap-slot", "a slot in use is not on the device")
        free = set(range(1, swap.next)) - set(swap.count)
        if sorted(swap.free_heap) != sorted(free) or (swap.free_heap and swap.free_heap[0] != min(free)):
            raise InvariantError("swap-free", "the free heap does not hold exactly the free slots")

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
        if self.paging_levels == 5:
            yield from self._p4d_tables()
        for pud in self._pud_tables():
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
            if entry and not (parent.level == _PMD and entry & _PAGE_PSE):  # huge leaves: _check_hugetlb()
                raise InvariantError("table-link", f"{_LEVEL_NAMES[parent.level]} entry {index} set with no table")
            return
        if entry != (child.pfn << PAGE_SHIFT) | _PAGE_TABLE:
            raise InvariantError("table-link", f"{_LEVEL_NAMES[parent.level]} entry {index} does not point at its table")
        if child.base != parent.base + (index << _LEVEL_SHIFT[parent.level]):
            raise InvariantError("table-base", f"table at {child.base:#x} under wrong entry")

    def _check_pte_table(self, table, mapped, swapped=None):
        vma = None
        fixed = _PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_USER | _PAGE_NX
        for i, pte in enumerate(table.entries):
            if not pte or pte_none(pte):  # the cheap test first: most entries are 0
                continue
            addr = table.base + (i << PAGE_SHIFT)
            if vma is None or not (vma.start <= addr < vma.end):
                vma = self._vma_containing(addr)
                if vma is not None:
                    prot = vma_page_prot(vma)
            if vma is None:
                raise InvariantError("pte-outside-vma", f"entry {pte:#x} at {addr:#x} outside every VMA")
            if not pte_present(pte):
                if is_swap_pte(pte):
                    # A swap entry: an anonymous page (R14) of a private mapping, which
                    # may be a COW copy in a private file mapping; a slot in use.
                    if vma.flags & VM_MAYSHARE or vma.anon_vma is None:
                        raise InvariantError("swap-entry", f"swap entry at {addr:#x} outside anonymous memory")
                    if pte & ~(((1 << 50) - 1) << 9) & ~(_PAGE_SWP_EXCLUSIVE | _PAGE_SWP_UFFD_WP):
                        raise InvariantError("swap-entry", f"stray bits in swap entry {pte:#x} at {addr:#x}")
                    offset = swp_offset(pte)
                    if offset not in self.machine.swap.count:
                        raise InvariantError("swap-entry", f"swap entry at {addr:#x} refers to free slot {offset}")
                    if swapped is not None:
                        swapped[offset] = swapped.get(offset, 0) + 1
                    continue
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
                # Private anonymous memory, or a COW copy in a private file mapping.
                if vma.anon_vma is None or vma.flags & VM_SHARED:
                    raise InvariantError("anon_vma", f"anonymous page at {addr:#x} without an anon_vma (R18)")
                if pte & _PAGE_RW and not frame.exclusive:
                    raise InvariantError("anon-exclusive", f"writable entry at {addr:#x} maps a shared page (R69)")
            else:
                if frame.mapping is not vma.file or frame.index != self._linear_page_index(vma, addr):
                    raise InvariantError("file", f"page-cache page at {addr:#x} is not the file's page")
                if pte & _PAGE_RW and not (vma.flags & VM_SHARED):
                    raise InvariantError("file", f"writable entry at {addr:#x} maps a page-cache page in a "
                                         "private mapping (R30)")
            mapped[pfn] = mapped.get(pfn, 0) + 1

    # ------------------------------------------------------------------------
    # hugetlb (MAP_HUGETLB): 2 MiB pages from the machine's pool, mapped by PMD
    # leaves with no PTE table and no deposit, counted in HugetlbPages and in no
    # RSS counter (mm/hugetlb.c, fs/hugetlbfs/inode.c; docs/hugetlb.md).
    # ------------------------------------------------------------------------

    def _mmap_hugetlb(self, addr, length, flags, offset, prot):
        """MAP_ANONYMOUS|MAP_HUGETLB: ksys_mmap_pgoff() makes a hugetlbfs file of the
        length rounded up to 2 MiB, and the file branch of do_mmap() applies. The
        error paths are the lab machine's (probed with an empty pool)."""
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
        if len(self._vmas) > _MAX_MAP_COUNT or length > self._task_size:
            raise _oserror(errno.ENOMEM)
        if flags & MAP_FIXED:
            # The huge page alignment is checked before the TASK_SIZE limit.
            if addr & (PMD_SIZE - 1):
                raise _oserror(errno.EINVAL)
        else:
            addr = self.hugetlb_get_unmapped_area(addr, length)
        if addr > self._task_size - length:
            raise _oserror(errno.ENOMEM)
        end = addr + length
        if flags & MAP_FIXED_NOREPLACE:
            vma = self.find_vma(addr)
            if vma is not None and vma.start < end:
                raise _oserror(errno.EEXIST)
        vm_flags = self.calc_vm_flags(prot, flags)
        pgoff = offset >> PAGE_SHIFT
        # file_mmap_ok(): the mapping's end in the file must fit in loff_t.
        if pgoff > (_LLONG_MAX - length) >> PAGE_SHIFT:
            raise _oserror(errno.EOVERFLOW)
        # do_mmap(), file branch. MAP_SHARED_VALIDATE refuses any flag outside
        # LEGACY_MAP_MASK (MAP_FIXED_NOREPLACE, MAP_SYNC and the huge size bits too).
        map_type = flags & MAP_TYPE
        if map_type == MAP_SHARED_VALIDATE and flags & ~_LEGACY_MAP_MASK:
            raise _oserror(errno.EOPNOTSUPP)
        if map_type in (MAP_SHARED, MAP_SHARED_VALIDATE):
            vm_flags |= VM_SHARED | VM_MAYSHARE
        elif map_type != MAP_PRIVATE:
            raise _oserror(errno.EINVAL)
        if flags & MAP_GROWSDOWN:
            raise _oserror(errno.EINVAL)
        # hugetlb applies strict accounting unless MAP_NORESERVE.
        if flags & MAP_NORESERVE:
            vm_flags |= VM_NORESERVE
        # mmap_region() clears what the mapping replaces before calling the file's
        # mmap; when that fails the gap stays (as for shmem).
        if flags & MAP_FIXED:
            self.do_vmi_munmap(addr, end)
        # hugetlbfs_file_mmap() sets VM_HUGETLB | VM_DONTEXPAND; mmap_region() then
        # drops VM_LOCKED: hugetlb memory is never counted as locked.
        vma = _Vma(addr, end, (vm_flags | VM_HUGETLB | VM_DONTEXPAND) & ~VM_LOCKED_MASK, pgoff)
        vma.hugetlb = _HugetlbVma(_HugetlbFile(length >> PMD_SHIFT))
        self.hugetlbfs_file_mmap(vma)
        self._insert_vma(vma)
        if (vm_flags & VM_LOCKED) or (flags & (MAP_POPULATE | MAP_NONBLOCK)) == MAP_POPULATE:
            self.__mm_populate(addr, length, True)
        return addr

    def hugetlb_get_unmapped_area(self, addr, length):
        """hugetlbfs's get_unmapped_area(): a hint rounded up to 2 MiB, else the
        highest gap that holds a 2 MiB-aligned range (x86's top-down search with the
        file's alignment mask), else the bottom-up one."""
        mask = PMD_SIZE - PAGE_SIZE
        if addr:
            addr = (addr + PMD_SIZE - 1) & _PMD_MASK
            if addr and self.mmap_address_hint_valid(addr, length):
                vma = self.find_vma(addr)
                if vma is None or addr + length <= self._vm_start_gap(vma):
                    return addr
        high, top = self._mmap_limits(addr)
        found = self.unmapped_area_topdown(length + mask, _MMAP_MIN_ADDR, high)
        if found is not None:
            return (found + mask) & _PMD_MASK
        found = self.unmapped_area_bottomup(length + mask, _MMAP_LEGACY_BASE, top)
        if found is not None:
            return (found + PMD_SIZE - 1) & _PMD_MASK
        raise _oserror(errno.ENOMEM)

    def hugetlbfs_file_mmap(self, vma):
        """The checks, the reservation and the file size of hugetlbfs_file_mmap()."""
        vma_len = vma.end - vma.start
        # A byte offset that would overflow loff_t, then whole huge pages only.
        if vma.pgoff & (0x1FFF << 51) or vma.pgoff & 511:
            raise _oserror(errno.EINVAL)
        length = vma_len + (vma.pgoff << PAGE_SHIFT)
        if length > _LLONG_MAX:
            raise _oserror(errno.EINVAL)
        self.hugetlb_reserve_pages(vma, vma.pgoff >> 9, length >> PMD_SHIFT)
        # A writable mapping makes the file long enough for itself; a read-only one
        # past the file's end gets SIGBUS on a fault there.
        hfile = vma.hugetlb.file
        if vma.flags & VM_WRITE and hfile.size < length >> PMD_SHIFT:
            hfile.size = length >> PMD_SHIFT

    def hugetlb_reserve_pages(self, vma, start, end):
        """Private: the whole range, in a reserve map of the VMA's own (it is the
        OWNER). Shared: the file's indices not yet reserved. MAP_NORESERVE: none."""
        if vma.flags & VM_NORESERVE:
            return
        h = self.machine.hstate
        hv = vma.hugetlb
        if vma.flags & VM_MAYSHARE:
            chg = (end - start) - sum(1 for i in hv.file.region if start <= i < end)
        else:
            chg = end - start
        if not h.acct_memory(chg):
            raise _oserror(errno.ENOMEM)
        if vma.flags & VM_MAYSHARE:
            if chg:
                hv.file.region.update(range(start, end))
        else:
            hv.resv = _ResvMap()
            hv.flags = HPAGE_RESV_OWNER

    @staticmethod
    def hugetlb_vm_op_split(vma, addr):
        # A hugetlb VMA splits only on a huge page boundary.
        if addr & (PMD_SIZE - 1):
            raise _oserror(errno.EINVAL)

    @staticmethod
    def hugetlb_vm_op_open(hv):
        """The state of the other half of a split VMA: the same file and reserve map."""
        new = _HugetlbVma(hv.file, hv.resv, hv.flags)
        hv.file.vma_refs += 1
        if hv.resv is not None and hv.flags & HPAGE_RESV_OWNER:
            hv.resv.refs += 1
        return new

    @staticmethod
    def hugetlb_dup_vma(hv):
        # A fork child shares the file; a private child has no reservations of its own.
        hv.file.vma_refs += 1
        return _HugetlbVma(hv.file)

    def hugetlb_vm_op_close(self, vma):
        """A VMA goes: the owner gives back the reservations of its range that no
        page consumed, then the file reference goes (the last one evicts the file)."""
        hv = vma.hugetlb
        h = self.machine.hstate
        if hv.resv is not None and hv.flags & HPAGE_RESV_OWNER:
            start = self._hugecache_offset(vma, vma.start)
            end = self._hugecache_offset(vma, vma.end)
            reserve = (end - start) - sum(1 for i in hv.resv.consumed if start <= i < end)
            if reserve:
                h.acct_memory(-reserve)
            hv.resv.refs -= 1
        vma.hugetlb = None
        f = hv.file
        f.vma_refs -= 1
        if f.vma_refs == 0:
            # hugetlbfs_evict_inode(): the pages leave the page cache, then the
            # reservations the reserve map still holds go back.
            freed = 0
            for idx in sorted(f.cache):
                page = f.cache.pop(idx)
                page.file = None
                h.put(page)
                freed += 1
            h.acct_memory(-(len(f.region) - freed))
            f.region.clear()

    def move_hugetlb_page_tables(self, old_addr, new_addr, length):
        """Move the huge PMDs of [old_addr, old_addr + length) to new_addr one by
        one, into PUD and PMD tables made at the destination as a fault would."""
        old_end = old_addr + length
        last_addr_mask = PUD_SIZE - PMD_SIZE
        while old_addr < old_end:
            src = self._walk_pmd(old_addr)
            if src is None:
                # No PMD table: the walk skips to the next 1 GiB of the old range
                # and moves the new address by the same mask, not by the same
                # distance. When the two addresses sit at different offsets in
                # their 1 GiB, the pages after the skip land at the wrong place
                # (measured on 6.18).
                old_addr |= last_addr_mask
                new_addr |= last_addr_mask
            else:
                i = (old_addr >> PMD_SHIFT) & 511
                if src.entries[i] != 0:
                    dst = self.__pmd_alloc(self.__pud_alloc(new_addr), new_addr)  # huge_pte_alloc()
                    # move_huge_pte(): the entry moves as it is.
                    dst.entries[(new_addr >> PMD_SHIFT) & 511] = src.entries[i]
                    src.entries[i] = 0
            old_addr += PMD_SIZE
            new_addr += PMD_SIZE
        # flush_hugetlb_tlb_range() of the old range, whatever moved.
        self._stats["tlb_flushes"] += 1

    def hugetlb_move_hits_pmd_share(self, vma, old_addr, new_addr, length):
        """Whether move_hugetlb_page_tables() would call huge_pmd_share() for the
        copy of a shared mapping: a page lands in a 1 GiB that the new range covers
        whole and that has no PMD table yet. huge_pmd_share() then waits for the
        i_mmap_rwsem that the move itself holds, and the process hangs for good
        (measured on 6.18: a 2 GiB shared mapping moved to 512 MiB past a 1 GiB
        boundary)."""
        if not vma.flags & VM_MAYSHARE:
            return False
        old_end = old_addr + length
        new_start, new_end = new_addr, new_addr + length
        last_addr_mask = PUD_SIZE - PMD_SIZE
        while old_addr < old_end:
            src = self._walk_pmd(old_addr)
            if src is None:
                old_addr |= last_addr_mask
                new_addr |= last_addr_mask
            elif src.entries[(old_addr >> PMD_SHIFT) & 511] != 0:
                g = new_addr & ~(PUD_SIZE - 1)
                if new_start <= g and g + PUD_SIZE <= new_end and self._walk_pmd(new_addr) is None:
                    return True
            old_addr += PMD_SIZE
            new_addr += PMD_SIZE
        return False

    def fixup_hugetlb_reservations(self, vma, addr, length):
        """clear_vma_resv_huge_pages(): after the copy, the new VMA owns the
        private reserve map; the old VMA lets go of it (and so, when unmapped, gives
        none of its reservations back), then hugetlb_dup_vma_private() clears its
        pointer. The unconsumed reservations of the part of the old VMA outside the
        moved range [addr, addr + length) stay counted in HugePages_Rsvd for good."""
        hv = vma.hugetlb
        if hv.resv is not None and hv.flags & HPAGE_RESV_OWNER:
            start = self._hugecache_offset(vma, vma.start)
            end = self._hugecache_offset(vma, vma.end)
            lo = self._hugecache_offset(vma, addr)
            hi = self._hugecache_offset(vma, addr + length)
            kept = (lo - start) + (end - hi)
            kept -= sum(1 for i in hv.resv.consumed if start <= i < lo or hi <= i < end)
            self.machine.hstate.resv_orphaned += kept
            hv.resv.refs -= 1
        if not vma.flags & VM_MAYSHARE:
            hv.resv = None
            hv.flags = 0

    @staticmethod
    def _hugecache_offset(vma, addr):
        return ((addr - vma.start) >> PMD_SHIFT) + (vma.pgoff >> 9)

    def vma_needs_reservation(self, vma, addr):
        idx = self._hugecache_offset(vma, addr)
        hv = vma.hugetlb
        if vma.flags & VM_MAYSHARE:
            return idx not in hv.file.region
        if hv.resv is None:
            return True
        return idx in hv.resv.consumed

    def vma_commit_reservation(self, vma, addr):
        idx = self._hugecache_offset(vma, addr)
        hv = vma.hugetlb
        if vma.flags & VM_MAYSHARE:
            hv.file.region.add(idx)
        elif hv.resv is not None:
            hv.resv.consumed.add(idx)

    def vma_add_reservation(self, vma, addr):
        idx = self._hugecache_offset(vma, addr)
        hv = vma.hugetlb
        if vma.flags & VM_MAYSHARE:
            hv.file.region.add(idx)
        elif hv.resv is not None:
            hv.resv.consumed.discard(idx)

    @staticmethod
    def _vma_private_lock(vma):
        # A private mapping that owns a reserve map (not a fork child, not MAP_NORESERVE).
        hv = vma.hugetlb
        return not vma.flags & VM_MAYSHARE and hv.resv is not None and hv.flags & HPAGE_RESV_OWNER

    def alloc_hugetlb_folio(self, vma, addr, cow_from_owner):
        """A huge page for addr, consuming the reservation there if there is one;
        None when there is none to take (the fault gets SIGBUS)."""
        h = self.machine.hstate
        if cow_from_owner:
            map_chg = "enforced"  # a COW on top of a reserved page: the map does not cover it
        else:
            map_chg = "needed" if self.vma_needs_reservation(vma, addr) else "reuse"
        gbl_chg = map_chg != "reuse"
        # dequeue_hugetlb_folio_vma(): a page nobody reserved must be available.
        if gbl_chg and (h.free_huge_pages - h.resv_huge_pages) & _U64 == 0:
            return None
        page = h.dequeue()
        if page is None:
            return None  # no surplus pages (nr_overcommit_hugepages = 0)
        if not gbl_chg:
            page.restore_reserve = True
            h.resv_huge_pages = (h.resv_huge_pages - 1) & _U64
        if map_chg != "enforced":
            self.vma_commit_reservation(vma, addr)
        return page

    def _hugetlb_page(self, entry):
        return self.machine.hstate.pages[(pte_pfn(entry) - _HUGETLB_PFN_BASE) >> 9]

    @staticmethod
    def make_huge_pte(vma, page, try_mkwrite):
        entry = pfn_pte(page.pfn, vm_get_page_prot(vma.flags))
        if try_mkwrite and vma.flags & VM_WRITE:
            entry |= _PAGE_RW | _PAGE_DIRTY
        else:
            entry &= ~(_PAGE_RW | _PAGE_DIRTY)
        return entry | _PAGE_ACCESSED | _PAGE_PSE

    def hugetlb_access(self, vma, addr, write):
        """One CPU access: the entry allows it (A and D set), or hugetlb_fault()."""
        pmd = self._walk_pmd(addr)
        if pmd is not None:
            i = (addr >> PMD_SHIFT) & 511
            e = pmd.entries[i]
            if e & _PAGE_PRESENT and (not write or e & _PAGE_RW):
                pmd.entries[i] = e | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
                return
        self.hugetlb_fault(vma, addr, write)

    def hugetlb_get_user_pages(self, vma, start, end, write):
        """__get_user_pages() on a hugetlb VMA: a fault per huge page the entry does
        not allow; FOLL_TOUCH sets A (and D) on the others (touch_pmd())."""
        addr = start
        while addr < end:
            try:
                self.hugetlb_access(vma, addr, write)
            except _FaultError as exc:
                return -errno.ENOMEM if exc.kind == "OOM" else -errno.EFAULT
            addr = min((addr & _PMD_MASK) + PMD_SIZE, end)
        return 0

    def hugetlb_fault(self, vma, addr, write):
        self._stats["page_faults"] += 1
        haddr = addr & _PMD_MASK
        # huge_pte_alloc(): the PUD and PMD tables, even for a fault that fails.
        pmd = self.__pmd_alloc(self.__pud_alloc(haddr), haddr)
        i = (haddr >> PMD_SHIFT) & 511
        e = pmd.entries[i]
        if e == 0:
            return self.hugetlb_no_page(vma, pmd, i, haddr, write)
        if write and not e & _PAGE_RW:
            return self.hugetlb_wp(vma, pmd, i, haddr)
        pmd.entries[i] = e | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
        return None

    def hugetlb_no_page(self, vma, pmd, i, haddr, write):
        hv = vma.hugetlb
        if hv.flags & HPAGE_RESV_UNMAPPED:
            raise _FaultError("SIGBUS", haddr)  # "killed due to inadequate hugepage pool"
        f = hv.file
        idx = self._hugecache_offset(vma, haddr)
        page = f.cache.get(idx)
        anon = False
        shared = bool(vma.flags & VM_MAYSHARE)
        if page is None:
            if idx >= f.size:
                raise _FaultError("SIGBUS", haddr)  # past the end of the file
            if not shared:
                self.anon_vma_prepare(vma)
            page = self.alloc_hugetlb_folio(vma, haddr, False)
            if page is None:
                raise _FaultError("SIGBUS", haddr)
            if shared:
                # hugetlb_add_to_page_cache(): the page cache holds a reference.
                f.cache[idx] = page
                page.refcount += 1
                page.file = f
                page.file_index = idx
                page.restore_reserve = False
                page.dirty = True
            else:
                anon = True
        else:
            page.refcount += 1  # the page cache lookup's reference is the mapping's
        if anon:
            page.restore_reserve = False
            page.anon = True
            page.exclusive = True
            page.mapcount = 1
        else:
            page.mapcount += 1
        pmd.entries[i] = self.make_huge_pte(vma, page, bool(vma.flags & VM_SHARED))
        self._hugetlb_usage += _HPAGE_PAGES
        if write and not vma.flags & VM_SHARED:
            # Do the COW without a second fault.
            return self.hugetlb_wp(vma, pmd, i, haddr)
        return None

    def hugetlb_wp(self, vma, pmd, i, haddr):
        e = pmd.entries[i]
        if vma.flags & VM_MAYSHARE:
            pmd.entries[i] = e | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED
            return None
        h = self.machine.hstate
        old = self._hugetlb_page(e)
        while True:
            # Nobody else maps it: reuse it in place.
            if old.mapcount == 1 and old.anon:
                old.exclusive = True
                if vma.flags & VM_WRITE:
                    pmd.entries[i] = e | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED
                return None
            cow_from_owner = bool(vma.hugetlb.flags & HPAGE_RESV_OWNER)
            new = self.alloc_hugetlb_folio(vma, haddr, cow_from_owner)
            if new is not None:
                break
            if not cow_from_owner:
                raise _FaultError("SIGBUS", haddr)
            # The owner takes the page back from the fork children.
            before = old.mapcount
            self.unmap_ref_private(vma, old, haddr)
            if pmd.entries[i] != e:
                return None
            if old.mapcount == before:
                raise _FaultError("SIGBUS", haddr)
        # Break COW: the copy is ours alone and writable; the old page loses this mapping.
        old.mapcount -= 1
        new.restore_reserve = False
        new.anon = True
        new.exclusive = True
        new.mapcount = 1
        pmd.entries[i] = self.make_huge_pte(vma, new, True)
        h.put(old)
        return None

    def unmap_ref_private(self, vma, page, addr):
        """The owner of a private mapping cannot copy a page it shares with fork
        children: the page is unmapped from them (they get SIGBUS if they fault
        there again) so that the owner can keep it."""
        pgoff = ((addr - vma.start) >> PAGE_SHIFT) + vma.pgoff
        for other in list(self.machine.mms):
            for v in list(other._vmas):
                if v is vma or v.hugetlb is None or v.hugetlb.file is not vma.hugetlb.file:
                    continue
                if not v.pgoff <= pgoff < v.pgoff + v.pages():
                    continue
                if v.flags & VM_MAYSHARE or v.hugetlb.flags & HPAGE_RESV_OWNER:
                    continue
                if not v.start <= addr < v.end:
                    continue
                other.unmap_hugepage_range(v, addr, addr + PMD_SIZE, page)

    def unmap_hugepage_range(self, vma, start, end, ref_page=None):
        # With a gather of its own.
        tlb = tlb_gather_mmu(self)
        self.unmap_hugepage_range_tlb(tlb, vma, start, end, ref_page)
        tlb_finish_mmu(tlb)

    def unmap_hugepage_range_tlb(self, tlb, vma, start, end, ref_page=None):
        """__unmap_hugepage_range(): zap [start, end) (2 MiB-aligned) into the gather;
        no table is ever freed here."""
        addr = start
        while addr < end:
            pmd = self._walk_pmd(addr)
            if pmd is None:
                addr = (addr & _PUD_MASK) + PUD_SIZE  # on to the next PMD table
                continue
            i = (addr >> PMD_SHIFT) & 511
            e = pmd.entries[i]
            if e == 0:
                addr += PMD_SIZE
                continue
            page = self._hugetlb_page(e)
            if ref_page is not None:
                if page is not ref_page:
                    addr += PMD_SIZE
                    continue
                # The VMA gets SIGBUS for every later fault.
                vma.hugetlb.flags |= HPAGE_RESV_UNMAPPED
            pmd.entries[i] = 0
            tlb.need_flush = True
            if e & _PAGE_DIRTY:
                page.dirty = True
            self._hugetlb_usage -= _HPAGE_PAGES
            page.mapcount -= 1
            # The owner of a private mapping keeps its reservation: it comes back
            # to the pool when the page is freed, and the map forgets the page.
            if self._vma_private_lock(vma) and page.anon:
                page.restore_reserve = True
                if self.vma_needs_reservation(vma, addr):
                    self.vma_add_reservation(vma, addr)
            if tlb_remove_folio_pages(tlb, page, False):
                tlb_flush_mmu(tlb)
            if ref_page is not None:
                break
            addr += PMD_SIZE

    def hugetlb_madvise_dontneed(self, tlb, vma, start, end, behavior):
        """madvise_dontneed_free_valid_vma() for hugetlb (R36, SC-31): no MADV_FREE,
        the start on a huge page boundary, the end rounded down to one."""
        if behavior == MADV_FREE or start & (PMD_SIZE - 1):
            return errno.EINVAL
        end &= _PMD_MASK
        if end == start:
            return 0
        # zap_page_range_single_batched(): the hugetlb zap, then the gather is
        # finished and a new one started.
        self.unmap_hugepage_range_tlb(tlb, vma, start, end)
        tlb_finish_mmu(tlb)
        tlb.__init__(self, tlb.fullmm)
        self._stats["mmu_gathers"] += 1
        return 0

    def hugetlb_madvise_remove(self, vma, start, end):
        """fallocate(PUNCH_HOLE) of the hugetlbfs file: the whole huge pages of the
        range are unmapped from every VMA of every process (a gather each), then
        leave the page cache with their reservation. Reserved indices without a
        page keep their reservation."""
        if (vma.flags & (VM_SHARED | VM_MAYWRITE)) != (VM_SHARED | VM_MAYWRITE):
            return errno.EACCES
        f = vma.hugetlb.file
        offset = (start - vma.start) + (vma.pgoff << PAGE_SHIFT)
        hole_start = (offset + PMD_SIZE - 1) & _PMD_MASK
        hole_end = (offset + end - start) & _PMD_MASK
        if hole_end <= hole_start:
            return 0
        pg_start, pg_end = hole_start >> PAGE_SHIFT, hole_end >> PAGE_SHIFT
        for other in list(self.machine.mms):  # hugetlb_vmdelete_list()
            for v in list(other._vmas):
                if v.hugetlb is None or v.hugetlb.file is not f:
                    continue
                if v.pgoff + v.pages() - 1 < pg_start or v.pgoff > pg_end - 1:
                    continue
                s = v.start + ((pg_start - v.pgoff) << PAGE_SHIFT if v.pgoff < pg_start else 0)
                e = min(((pg_end - v.pgoff) << PAGE_SHIFT) + v.start, v.end)
                other.unmap_hugepage_range(v, s, e)
        h = self.machine.hstate
        for idx in sorted(i for i in f.cache if hole_start >> PMD_SHIFT <= i < hole_end >> PMD_SHIFT):
            page = f.cache.pop(idx)
            f.region.discard(idx)  # hugetlb_unreserve_pages(idx, idx + 1, 1): no change
            page.file = None
            h.put(page)
        return 0

    def copy_hugetlb_page_range(self, dst, dst_vma, vma):
        """fork: the child gets the parent's tables and entries; a private mapping's
        pages lose write access on both sides (the child's entries keep A and D)."""
        cow = (vma.flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE
        addr = vma.start
        while addr < vma.end:
            spmd = self._walk_pmd(addr)
            if spmd is None:
                addr = (addr & _PUD_MASK) + PUD_SIZE
                continue
            # The child's tables come first, even where the parent's entry is none.
            dpmd = dst.__pmd_alloc(dst.__pud_alloc(addr), addr)
            i = (addr >> PMD_SHIFT) & 511
            e = spmd.entries[i]
            if e and not dpmd.entries[i]:
                page = self._hugetlb_page(e)
                page.refcount += 1
                page.mapcount += 1
                page.exclusive = False
                if cow:
                    e &= ~_PAGE_RW
                    spmd.entries[i] = e
                dpmd.entries[i] = e & ~_PAGE_UFFD_WP
                dst._hugetlb_usage += _HPAGE_PAGES
            addr += PMD_SIZE

    def hugetlb_change_protection(self, vma, start, end):
        """mprotect of a hugetlb range: huge_pte_modify() on each present entry, then
        flush_hugetlb_tlb_range(), whatever changed."""
        newprot = vm_get_page_prot(vma.flags)
        addr = start
        while addr < end:
            pmd = self._walk_pmd(addr)
            if pmd is None:
                addr = (addr & _PUD_MASK) + PUD_SIZE
                continue
            i = (addr >> PMD_SHIFT) & 511
            if pmd.entries[i]:
                pmd.entries[i] = pte_modify(pmd.entries[i], newprot) | _PAGE_PSE
            addr += PMD_SIZE
        self._stats["tlb_flushes"] += 1

    def huge_pmds(self):
        """(address, entry) of every huge PMD, ascending."""
        out = []
        for pud in self._pud_tables():
            for pmd in pud.children:
                if pmd is None:
                    continue
                for i, e in enumerate(pmd.entries):
                    if e and pmd.children[i] is None and e & _PAGE_PSE:
                        out.append((pmd.base + (i << PMD_SHIFT), e))
        return out

    def _hugetlb_pmds(self):
        """(address, entry) of every huge PMD that maps a page of the hugetlb pool."""
        return [(a, e) for a, e in self.huge_pmds() if pte_pfn(e) >= _HUGETLB_PFN_BASE]

    def _check_hugetlb(self):
        """hugetlb leaves lie in hugetlb VMAs and map pages of the pool, HugetlbPages
        counts them, no PTE table lies under a hugetlb VMA, and the pool's counts
        hold over every process of the machine."""
        if self._hugetlb_usage == 0 and all(v.hugetlb is None for v in self._vmas):
            # Without a hugetlb VMA there is nothing of its own to walk here; the
            # pool still is checked over every process.
            if self.machine.hstate.pages:
                self.machine.hstate.check(self.machine)
            return
        mapped = 0
        for addr, e in self._hugetlb_pmds():
            vma = self._vma_containing(addr)
            if vma is None or vma.hugetlb is None or vma.end < addr + PMD_SIZE:
                raise InvariantError("hugetlb-pmd", f"huge PMD at {addr:#x} outside a hugetlb VMA")
            pfn = pte_pfn(e)
            h = self.machine.hstate
            index = (pfn - _HUGETLB_PFN_BASE) >> 9
            if pfn < _HUGETLB_PFN_BASE or pfn & 511 or index >= h.nr_huge_pages:
                raise InvariantError("hugetlb-pmd", f"huge PMD at {addr:#x} maps pfn {pfn:#x}")
            page = h.pages[index]
            if page.free:
                raise InvariantError("hugetlb-pmd", f"huge PMD at {addr:#x} maps a free huge page")
            if e & _PAGE_RW and not vma.flags & VM_WRITE:
                raise InvariantError("hugetlb-pmd", f"writable huge PMD at {addr:#x} in a read-only VMA")
            if vma.flags & VM_MAYSHARE:
                if page.file is not vma.hugetlb.file or page.file_index != self._hugecache_offset(vma, addr):
                    raise InvariantError("hugetlb-pmd", f"shared huge PMD at {addr:#x} maps another page")
            elif not page.anon or vma.anon_vma is None or (e & _PAGE_RW and not page.exclusive):
                raise InvariantError("hugetlb-pmd", f"private huge PMD at {addr:#x} maps a shared page")
            mapped += 1
        if self._hugetlb_usage != _HPAGE_PAGES * mapped:
            raise InvariantError("hugetlb-usage", f"HugetlbPages {self._hugetlb_usage * 4} kB != {mapped} pages")
        for table in self._iter_pte_tables():
            vma = self.find_vma(table.base)
            if vma is not None and vma.start < table.base + PMD_SIZE and vma.hugetlb is not None:
                raise InvariantError("hugetlb-pte", f"PTE table at {table.base:#x} under a hugetlb VMA")
        self.machine.hstate.check(self.machine)


def _vma_hfile(vma):
    return vma.hugetlb.file if vma.hugetlb is not None else None


_HUGETLB_PFN_BASE = 1 << 33  # huge page i of the pool has PFN base + 512 * i
_HPAGE_PAGES = 512
_LLONG_MAX = (1 << 63) - 1
HPAGE_RESV_OWNER = 1  # the mapping that made the reservation (not a fork child)
HPAGE_RESV_UNMAPPED = 2  # a page was taken from it by unmap_ref_private()


class _HugePage:
    """A 2 MiB page of the hugetlb pool (a hugetlb folio)."""

    __slots__ = ("hstate", "index", "pfn", "refcount", "mapcount", "free", "anon", "exclusive",
                 "restore_reserve", "dirty", "file", "file_index")

    def __init__(self, hstate, index):
        self.hstate = hstate
        self.index = index
        self.pfn = _HUGETLB_PFN_BASE + (index << 9)
        self.refcount = 0
        self.mapcount = 0
        self.free = True
        self.anon = False
        self.exclusive = False
        self.restore_reserve = False  # folio_test_hugetlb_restore_reserve()
        self.dirty = False
        self.file = None  # the hugetlbfs page cache it is in
        self.file_index = None


class _Hstate:
    """struct hstate for the 2 MiB size, with nr_overcommit_hugepages = 0."""

    def __init__(self, nr):
        self.pages = [_HugePage(self, i) for i in range(nr)]
        self.free_list = list(reversed(range(nr)))  # the top is handed out first
        self.nr_huge_pages = nr
        self.free_huge_pages = nr
        self.resv_huge_pages = 0  # unsigned, and may wrap as the kernel's does
        # Reservations that no reserve map holds any more: those of the part of a
        # private mapping that stayed when mremap moved the rest (they never come
        # back to the pool; only check() needs the count).
        self.resv_orphaned = 0

    def dequeue(self):
        if not self.free_list:
            return None
        page = self.pages[self.free_list.pop()]
        self.free_huge_pages -= 1
        page.free = False
        page.refcount = 1
        page.mapcount = 0
        page.anon = page.exclusive = page.restore_reserve = page.dirty = False
        return page

    def put(self, page):
        page.refcount -= 1
        if page.refcount == 0:
            # free_huge_folio(): a reservation the page consumed may come back.
            if page.restore_reserve:
                self.resv_huge_pages = (self.resv_huge_pages + 1) & _U64
            page.free = True
            page.anon = page.exclusive = page.restore_reserve = page.dirty = False
            page.file = page.file_index = None
            page.mapcount = 0
            self.free_list.append(page.index)
            self.free_huge_pages += 1

    def acct_memory(self, delta):
        """hugetlb_acct_memory(): take (delta > 0) or give back global reservations;
        False when the free pages cannot cover them (no surplus pages)."""
        if delta > 0:
            needed = (self.resv_huge_pages + delta - self.free_huge_pages) & _U64
            if needed and needed < 1 << 63:  # gather_surplus_pages(), signed
                return False
            if delta > self.free_huge_pages:  # allowed_mems_nr()
                return False
            self.resv_huge_pages = (self.resv_huge_pages + delta) & _U64
        elif delta < 0:
            self.resv_huge_pages = (self.resv_huge_pages + delta) & _U64
        return True

    def check(self, machine):
        """Free pages, each page's references and mappings over every mm, and
        resv_huge_pages against the reservations the maps hold."""
        if not self.pages:
            return
        maps = {}
        resv = 0
        files = {}
        for mm in machine.mms:
            for _, e in mm._hugetlb_pmds():
                maps[mm._hugetlb_page(e).index] = maps.get(mm._hugetlb_page(e).index, 0) + 1
            for v in mm._vmas:
                hv = v.hugetlb
                if hv is None:
                    continue
                files[id(hv.file)] = hv.file
                if hv.resv is not None and hv.flags & HPAGE_RESV_OWNER:
                    start = v.pgoff >> 9
                    end = start + ((v.end - v.start) >> PMD_SHIFT)
                    resv += (end - start) - sum(1 for i in hv.resv.consumed if start <= i < end)
        cached = {}
        for f in files.values():
            for idx, page in f.cache.items():
                if idx not in f.region:
                    raise InvariantError("hugetlb-resv", f"page cache index {idx} not in the reserve map")
                cached[page.index] = True
            resv += len(f.region) - len(f.cache)
        nfree = 0
        for page in self.pages:
            if page.free:
                nfree += 1
                if page.refcount or page.mapcount or maps.get(page.index):
                    raise InvariantError("hugetlb-page", f"free huge page {page.index} is in use")
                continue
            if page.mapcount != maps.get(page.index, 0):
                raise InvariantError("hugetlb-page", f"huge page {page.index}: mapcount {page.mapcount} "
                                     f"!= {maps.get(page.index, 0)} mappings")
            if page.refcount != page.mapcount + (1 if page.index in cached else 0):
                raise InvariantError("hugetlb-page", f"huge page {page.index}: refcount {page.refcount}")
            if (page.index in cached) != (page.file is not None):
                raise InvariantError("hugetlb-page", f"huge page {page.index}: page cache state")
            if page.restore_reserve:
                resv -= 1  # its reservation comes back when it is freed
        if nfree != self.free_huge_pages or len(self.free_list) != nfree:
            raise InvariantError("hugetlb-free", f"HugePages_Free {self.free_huge_pages} != {nfree} free pages")
        resv += self.resv_orphaned
        if resv & _U64 != self.resv_huge_pages:
            raise InvariantError("hugetlb-resv", f"HugePages_Rsvd {self.resv_huge_pages} != {resv & _U64}")


class _HugetlbFile:
    """The hugetlbfs inode that ksys_mmap_pgoff() creates for MAP_HUGETLB."""

    __slots__ = ("size", "region", "cache", "vma_refs")

    def __init__(self, size):
        self.size = size  # i_size, in huge pages
        self.region = set()  # inode reserve map: indices reserved or backed by a page
        self.cache = {}  # page cache: index -> _HugePage (shared mappings)
        self.vma_refs = 1


class _ResvMap:
    """A private mapping's reserve map: the indices whose reservation is consumed."""

    __slots__ = ("refs", "consumed")

    def __init__(self):
        self.refs = 1
        self.consumed = set()


class _HugetlbVma:
    """A hugetlb VMA's file, and for a private one its reserve map and
    HPAGE_RESV_* flags (vm_private_data)."""

    __slots__ = ("file", "resv", "flags")

    def __init__(self, file, resv=None, flags=0):
        self.file = file
        self.resv = resv
        self.flags = flags
