"""Linux x86-64 constants, shared by the compiled core and the reference model.

Values are the ones in the Linux UAPI headers and in the kernel's x86 page-table
headers; they are facts about the ABI, not simulator choices.
"""

# --- geometry (4-level paging, 4 KiB pages) ---------------------------------
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PMD_SHIFT = 21
PMD_SIZE = 1 << PMD_SHIFT
PUD_SHIFT = 30
PUD_SIZE = 1 << PUD_SHIFT
PGDIR_SHIFT = 39
PGDIR_SIZE = 1 << PGDIR_SHIFT
PTRS_PER_PTE = 512
PTRS_PER_PMD = 512
PTRS_PER_PUD = 512
PTRS_PER_PGD = 512
# The top of user space with 4-level paging: 2**47 minus one guard page.
TASK_SIZE = (1 << 47) - PAGE_SIZE
# 5-level paging (LA57, MM(paging_levels=5)): the PGD indexes bits 56..48 and
# each of its entries maps a 256 TiB region through a P4D table; user space
# ends at TASK_SIZE_MAX. DEFAULT_MAP_WINDOW is the 4-level TASK_SIZE: mappings
# go above it only when asked (arch/x86/include/asm/page_64_types.h).
PGDIR_SHIFT_LA57 = 48
PGDIR_SIZE_LA57 = 1 << PGDIR_SHIFT_LA57
P4D_SHIFT = 39
P4D_SIZE = 1 << P4D_SHIFT
TASK_SIZE_LA57 = (1 << 56) - PAGE_SIZE
DEFAULT_MAP_WINDOW = TASK_SIZE

# --- mmap/mprotect protection bits (uapi asm-generic/mman-common.h) ----------
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
PROT_SEM = 0x8
PROT_GROWSDOWN = 0x01000000
PROT_GROWSUP = 0x02000000

# --- mmap flags ---------------------------------------------------------------
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_DROPPABLE = 0x08
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_32BIT = 0x40
MAP_GROWSDOWN = 0x0100
MAP_DENYWRITE = 0x0800
MAP_EXECUTABLE = 0x1000
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_NONBLOCK = 0x10000
MAP_STACK = 0x20000
MAP_HUGETLB = 0x40000
MAP_SYNC = 0x80000
MAP_FIXED_NOREPLACE = 0x100000
MAP_UNINITIALIZED = 0x4000000
MAP_HUGE_SHIFT = 26
MAP_HUGE_MASK = 0x3F

# --- madvise advice -------------------------------------------------------------
MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_DODUMP = 17
MADV_WIPEONFORK = 18
MADV_KEEPONFORK = 19
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
MADV_DONTNEED_LOCKED = 24
MADV_COLLAPSE = 25
MADV_HWPOISON = 100
MADV_SOFT_OFFLINE = 101
MADV_GUARD_INSTALL = 102
MADV_GUARD_REMOVE = 103

MADV_NAMES = {
    name: value for name, value in globals().items() if name.startswith("MADV_") and isinstance(value, int)
}

# --- mremap flags (uapi linux/mman.h) ------------------------------------------------
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4

# --- vm_flags (include/linux/mm.h) -------------------------------------------------
VM_NONE = 0x0
VM_READ = 0x1
VM_WRITE = 0x2
VM_EXEC = 0x4
VM_SHARED = 0x8
VM_MAYREAD = 0x10
VM_MAYWRITE = 0x20
VM_MAYEXEC = 0x40
VM_MAYSHARE = 0x80
VM_GROWSDOWN = 0x100
VM_UFFD_MISSING = 0x200
# Set by MADV_GUARD_INSTALL on the whole VMA; sticky: merges keep it.
VM_MAYBE_GUARD = 0x800
VM_PFNMAP = 0x400
VM_UFFD_WP = 0x1000
VM_LOCKED = 0x2000
VM_IO = 0x4000
VM_SEQ_READ = 0x8000
VM_RAND_READ = 0x10000
VM_DONTCOPY = 0x20000
VM_DONTEXPAND = 0x40000
VM_LOCKONFAULT = 0x80000
VM_ACCOUNT = 0x100000
VM_NORESERVE = 0x200000
VM_HUGETLB = 0x400000
VM_SYNC = 0x800000
VM_WIPEONFORK = 0x2000000
VM_DONTDUMP = 0x4000000
VM_MIXEDMAP = 0x10000000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
VM_MERGEABLE = 0x80000000

# --- x86-64 page-table entry bits (arch/x86/include/asm/pgtable_types.h) ---------
_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_USER = 1 << 2
_PAGE_PWT = 1 << 3
_PAGE_PCD = 1 << 4
_PAGE_ACCESSED = 1 << 5
_PAGE_DIRTY = 1 << 6
_PAGE_PSE = 1 << 7
_PAGE_GLOBAL = 1 << 8
_PAGE_PROTNONE = _PAGE_GLOBAL
_PAGE_SPECIAL = 1 << 9
_PAGE_UFFD_WP = 1 << 10
_PAGE_SOFT_DIRTY = 1 << 11
_PAGE_NX = 1 << 63
PTE_PFN_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)
# A table entry (PGD/PUD/PMD pointing at a table): present, writable, user, accessed, dirty.
_PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY

# PTE markers (include/linux/swapops.h): swap-format entries of the highest swap
# type, 31 on the reference kernel, whose offset (stored inverted in bits 9..58)
# holds these flags.
SWP_PTE_MARKER = 31
PTE_MARKER_UFFD_WP = 1 << 0
PTE_MARKER_POISONED = 1 << 1
PTE_MARKER_GUARD = 1 << 2


def make_pte_marker(bits):
    """The raw x86-64 entry of a PTE marker with these flags."""
    return (SWP_PTE_MARKER << 59) | ((~bits & ((1 << 50) - 1)) << 9)


# The zero page's frame number in the simulated machine (any fixed frame will do;
# user space never sees it).
ZERO_PFN = 1
# The huge zero page that read faults map by a PMD (frame 2 in both implementations).
HUGE_ZERO_PFN = 2


# Swap entries (R6; arch/x86/include/asm/pgtable_64.h, __swp_entry()): a
# non-present entry with the swap type in bits 59..63 and the offset stored
# inverted in bits 9..58. Types below MAX_SWAPFILES are swap devices; the
# simulated machine has one, type 0. Bit 3 remembers PageAnonExclusive, bit 2
# the uffd-wp protection of the page that was swapped out.
MAX_SWAPFILES = 28
_PAGE_SWP_EXCLUSIVE = _PAGE_PWT
_PAGE_SWP_UFFD_WP = _PAGE_USER
SWP_OFFSET_MASK = (1 << 50) - 1


def make_swap_pte(offset, swp_type=0):
    """The raw x86-64 entry of swap slot `offset` of swap device `swp_type`."""
    return (swp_type << 59) | ((~offset & SWP_OFFSET_MASK) << 9)


def swp_type(pte):
    """The swap type of a non-present, non-none entry."""
    return pte >> 59


def swp_offset(pte):
    """The swap offset of a non-present, non-none entry (flag bits ignored)."""
    return ~(pte >> 9) & SWP_OFFSET_MASK


def is_swap_pte(pte):
    """A genuine swap entry: not none, not present, of a swap device's type."""
    return (pte & ~(_PAGE_ACCESSED | _PAGE_DIRTY)) != 0 and not pte & (_PAGE_PRESENT | _PAGE_PROTNONE) \
        and swp_type(pte) < MAX_SWAPFILES
