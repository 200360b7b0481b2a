# The C-level data layout of the simulator: one physical machine (frames, the
# page-table pool, shmem objects) shared by any number of mm_structs, each with
# its own PGD page and VMA array. Everything here is plain C so that loops over
# it run without the GIL; the owning cdef classes live in _core.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t

cdef extern from *:
    """
    /* x86-64 entry bits (arch/x86/include/asm/pgtable_types.h) */
    #define PTR_PAGE_PRESENT   (1ULL << 0)
    #define PTR_PAGE_RW        (1ULL << 1)
    #define PTR_PAGE_USER      (1ULL << 2)
    #define PTR_PAGE_ACCESSED  (1ULL << 5)
    #define PTR_PAGE_DIRTY     (1ULL << 6)
    #define PTR_PAGE_PSE       (1ULL << 7)
    #define PTR_PAGE_PROTNONE  (1ULL << 8)
    #define PTR_PAGE_SPECIAL   (1ULL << 9)
    #define PTR_PAGE_UFFD_WP   (1ULL << 10)
    #define PTR_PAGE_NX        (1ULL << 63)
    #define PTR_PFN_MASK       (((1ULL << 52) - 1) & ~0xFFFULL)
    #define PTR_PAGE_TABLE     (PTR_PAGE_PRESENT | PTR_PAGE_RW | PTR_PAGE_USER | \\
                                PTR_PAGE_ACCESSED | PTR_PAGE_DIRTY)
    /* pte_modify() keeps these bits of an entry and takes the rest from the
       new protection (_PAGE_CHG_MASK). */
    #define PTR_PAGE_CHG_MASK  (PTR_PFN_MASK | (1ULL << 3) | (1ULL << 4) | \\
                                PTR_PAGE_SPECIAL | PTR_PAGE_ACCESSED | \\
                                PTR_PAGE_DIRTY | PTR_PAGE_UFFD_WP)
    /* Table frames live in their own PFN range, so an entry's PFN says at once
       whether it points at a table (and which one) or at a data frame. */
    #define PTR_TABLE_PFN_BASE (1ULL << 32)
    #define PTR_PAGE_SIZE      4096ULL
    #define PTR_PMD_SIZE       (1ULL << 21)
    #define PTR_PUD_SIZE       (1ULL << 30)
    #define PTR_PGDIR_SIZE     (1ULL << 39)
    #define PTR_TASK_SIZE      ((1ULL << 47) - 4096ULL)
    /* 5-level paging (LA57): the PGD indexes bits 56..48, each entry maps a
       256 TiB region through a P4D table (arch/x86 pgtable_64_types.h), and
       user space ends at TASK_SIZE_MAX = 2^56 - 4 KiB. DEFAULT_MAP_WINDOW
       keeps the 4-level limit for mappings that do not ask for more. */
    #define PTR_PGDIR5_SIZE    (1ULL << 48)
    #define PTR_PGDIR5_MASK    (~(PTR_PGDIR5_SIZE - 1))
    #define PTR_TASK_SIZE_LA57 ((1ULL << 56) - 4096ULL)
    #define PTR_DEFAULT_MAP_WINDOW PTR_TASK_SIZE
    #define PTR_PAGE_MASK      (~0xFFFULL)
    #define PTR_PMD_MASK       (~(PTR_PMD_SIZE - 1))
    #define PTR_PUD_MASK       (~(PTR_PUD_SIZE - 1))
    #define PTR_PGDIR_MASK     (~(PTR_PGDIR_SIZE - 1))
    /* VM_* flags used by the C code (include/linux/mm.h) */
    #define PTR_VM_READ        0x1ULL
    #define PTR_VM_WRITE       0x2ULL
    #define PTR_VM_EXEC        0x4ULL
    #define PTR_VM_SHARED      0x8ULL
    #define PTR_VM_MAYWRITE    0x20ULL
    #define PTR_VM_LOCKED      0x2000ULL
    #define PTR_VM_PFNMAP      0x400ULL
    #define PTR_VM_UFFD_WP     0x1000ULL
    #define PTR_VM_LOCKONFAULT 0x80000ULL
    #define PTR_VM_HUGETLB     0x400000ULL
    #define PTR_VM_HUGEPAGE    0x20000000ULL
    #define PTR_VM_NOHUGEPAGE  0x40000000ULL
    /* Sticky flags: merge compatibility ignores them, the merged VMA keeps them. */
    #define PTR_VM_MAYBE_GUARD 0x800ULL
    #define PTR_VM_STICKY      PTR_VM_MAYBE_GUARD
    /* A PTE marker: swap type 31 (the highest) with the flags inverted in the
       offset bits 9..58 (arch/x86/include/asm/pgtable_64.h, swapops.h). */
    #define PTR_PTE_MARKER(bits) ((31ULL << 59) | ((~(unsigned long long)(bits) & ((1ULL << 50) - 1)) << 9))
    #define PTR_GUARD_MARKER   PTR_PTE_MARKER(4)
    #define PTR_UFFD_WP_MARKER PTR_PTE_MARKER(1)
    /* A swap entry (__swp_entry()): type in bits 59..63, offset inverted in
       bits 9..58; bit 3 is PageAnonExclusive, bit 2 uffd-wp. */
    #define PTR_SWP_OFFSET_MASK ((1ULL << 50) - 1)
    #define PTR_SWP_EXCLUSIVE  (1ULL << 3)
    #define PTR_SWP_UFFD_WP    (1ULL << 2)
    """
    const uint64_t PTR_PAGE_PRESENT, PTR_PAGE_RW, PTR_PAGE_USER, PTR_PAGE_ACCESSED
    const uint64_t PTR_PAGE_DIRTY, PTR_PAGE_PSE, PTR_PAGE_PROTNONE, PTR_PAGE_SPECIAL
    const uint64_t PTR_PAGE_UFFD_WP, PTR_PAGE_NX, PTR_PFN_MASK, PTR_PAGE_TABLE
    const uint64_t PTR_PAGE_CHG_MASK, PTR_TABLE_PFN_BASE
    const uint64_t PTR_PAGE_SIZE, PTR_PMD_SIZE, PTR_PUD_SIZE, PTR_PGDIR_SIZE, PTR_TASK_SIZE
    const uint64_t PTR_PAGE_MASK, PTR_PMD_MASK, PTR_PUD_MASK, PTR_PGDIR_MASK
    const uint64_t PTR_PGDIR5_SIZE, PTR_PGDIR5_MASK, PTR_TASK_SIZE_LA57, PTR_DEFAULT_MAP_WINDOW
    const uint64_t PTR_VM_READ, PTR_VM_WRITE, PTR_VM_EXEC, PTR_VM_SHARED, PTR_VM_MAYWRITE
    const uint64_t PTR_VM_LOCKED, PTR_VM_PFNMAP, PTR_VM_UFFD_WP, PTR_VM_LOCKONFAULT
    const uint64_t PTR_VM_HUGETLB, PTR_VM_MAYBE_GUARD, PTR_VM_STICKY, PTR_GUARD_MARKER
    const uint64_t PTR_UFFD_WP_MARKER, PTR_VM_HUGEPAGE, PTR_VM_NOHUGEPAGE
    const uint64_t PTR_SWP_OFFSET_MASK, PTR_SWP_EXCLUSIVE, PTR_SWP_UFFD_WP

ctypedef uint64_t pteval_t

cdef enum:
    PTRS_PER_TABLE = 512
    # Tables are allocated in 2 MiB chunks, so their addresses never move
    # and the host can back each chunk with one huge page.
    TABLES_PER_CHUNK = 512
    # Frame kinds (what the kernel tells apart with folio_test_anon and
    # folio_test_swapbacked); they select the RSS counter (mm_counter()).
    FRAME_FREE = 0
    FRAME_ANON = 1
    FRAME_SHMEM = 2
    FRAME_ZERO = 3
    FRAME_RESERVED = 4
    FRAME_FILE = 5         # a page-cache page of a regular (disk) file: RssFile
    # Frame flags
    PG_DIRTY = 1
    PG_LAZYFREE = 2        # MADV_FREE'd: clean and on the lazy-free LRU
    PG_ANON_EXCLUSIVE = 4  # PageAnonExclusive: no COW sharing
    PG_THP = 8             # one of the 512 frames of a THP (index: its place in it)
    # No store has reached it since it was zero-filled (a population, a THP's
    # other pages): a THP split maps such pages to the zero page.
    PG_ZEROED = 16
    # mlocked, with no locked VMA left to munlock it (MREMAP_DONTUNMAP of a
    # locked VMA): unevictable, so reclaim leaves it mapped.
    PG_MLOCKED = 32
    # A shmem large folio's order (1..9) in bits 8..11 of its frames' flags,
    # with PG_THP; 9 is a huge folio (PMD-mappable). Truncation splits one
    # into folios of every smaller order (folio_split()).
    PG_ORDER_SHIFT = 8
    PG_ORDER_MASK = 0xF00
    # Transparent huge pages: a THP is 512 consecutive frames; a PMD mapping
    # counts as one reference and one mapping of each of them.
    HPAGE_PMD_NR = 512
    ZERO_PFN_VALUE = 1     # the 4 KiB zero page
    HUGE_ZERO_PFN = 2      # the huge zero page
    # Gather entries with this bit release a whole PMD-mapped THP.
    GATHER_THP = 0x80000000
    # RSS counters (enum mm_counter_type)
    MM_FILEPAGES = 0
    MM_ANONPAGES = 1
    MM_SWAPENTS = 2
    MM_SHMEMPAGES = 3
    NR_MM_COUNTERS = 4
    # Table states, for check(): every pool slot is in exactly one.
    TABLE_FREE = 0
    TABLE_LINKED = 1
    TABLE_GATHERED = 2
    # Table levels
    LEVEL_PTE = 1
    LEVEL_PMD = 2
    LEVEL_PUD = 3
    LEVEL_P4D = 4             # only with 5-level paging
    # Fault results (VM_FAULT_*)
    FAULT_OK = 0
    FAULT_SIGSEGV = 1
    FAULT_OOM = 2
    FAULT_UFFD = 3            # a userfaultfd monitor would have to resolve it
    FAULT_FALLBACK = 4        # VM_FAULT_FALLBACK: no THP here, use small pages
    FAULT_SIGBUS = 5          # VM_FAULT_SIGBUS: a shared page past the end of its object,
                              # or no huge page for a hugetlb fault
    # Tracepoint events
    EV_FAULT = 0
    EV_TABLE_ALLOC = 1
    EV_ZAP_BEGIN = 2
    EV_ZAP_END = 3
    EV_ZAP_LOCK_DROPPED = 4
    EV_RECLAIM_FAST = 5
    EV_RECLAIM_SLOW = 6
    EV_RECLAIM_ABANDONED = 7
    EV_PMD_CLEAR = 8
    EV_TABLE_FREE = 9
    EV_TLB_FLUSH = 10
    EV_PMD_TRYLOCK = 11
    EV_LOST_MAPPING = 12
    NR_EVENTS = 13
    # PT reclaim modes
    RECLAIM_OFF = 0
    RECLAIM_ON = 1        # 6.18: the seed patch plus the Feb-2025 fix
    RECLAIM_SEED = 2      # the seed patch as first merged (fast path after a lock drop)
    # mmu_gather page batches (mm/mmu_gather.c, include/asm-generic/tlb.h):
    # a local bundle of 8 pages, then up to MAX_GATHER_BATCH_COUNT batch
    # pages of MAX_GATHER_BATCH pointers each.
    MMU_GATHER_BUNDLE = 8
    MAX_GATHER_BATCH = 510
    MAX_GATHER_BATCH_COUNT = 19
    # A table batch (struct mmu_table_batch) is one page of pointers.
    MAX_TABLE_BATCH = 509
    MMU_GATHER_CAPACITY = 8 + 19 * 510
    # fault_around_bytes = 64 KiB
    FAULT_AROUND_PAGES = 16
    # Swap (arch/x86/include/asm/pgtable_64.h, include/linux/swap.h)
    MAX_SWAPFILES = 28         # lower swap types are devices, higher ones special entries
    SWP_SLOT_ZEROED = 1        # the page written out had PG_ZEROED

ctypedef struct pt_page:
    # struct page / folio, reduced to what the counters need: 16 bytes
    int32_t refcount
    int32_t mapcount
    uint16_t kind
    uint16_t flags
    uint32_t index       # shmem: page offset in its object

ctypedef struct pt_frames:
    pt_page *pages
    uint64_t nr_pages          # frames created (high-water mark)
    uint64_t cap
    # Free frames as a LIFO stack, not a list threaded through the frames: a
    # pop is then an independent load, where a list makes every allocation
    # wait for the previous one's load of the next pointer.
    uint32_t *free_stack
    uint64_t nr_free
    uint64_t free_cap
    uint64_t nr_unrecycled     # freed while the stack could not grow (host OOM)
    # Frames with PG_ZEROED: while there are none, a store need not look at its frame.
    uint64_t nr_zeroed
    # Free runs of 512 frames for THPs, by first frame: a THP freed whole
    # goes back here, so the seed loop under THP reuses the same frames.
    uint32_t *block_stack
    uint64_t nr_blocks
    uint64_t blocks_cap
    uint64_t nr_used           # data frames in use (excluding reserved ones)
    uint64_t max_frames        # 0: unbounded

ctypedef struct pt_pool:
    pteval_t **chunks
    uint8_t *state             # TABLE_* per slot
    uint8_t *level             # LEVEL_* per slot while linked
    uint32_t *free_stack
    uint64_t nr_free
    uint64_t nr_tables         # slots created
    uint64_t nr_chunks
    uint64_t chunks_cap

cdef enum:
    SHM_REGULAR = 1            # a regular file on a disk file system, not shmem

ctypedef struct pt_shmem:
    # A shmem object (the inode behind MAP_SHARED|MAP_ANONYMOUS): its page
    # cache as an open-addressing hash of page offset -> frame.
    uint64_t *keys             # offset + 1; 0 = empty slot, ~0 = deleted
    uint32_t *vals
    uint64_t cap               # power of two
    uint64_t used              # live + deleted slots
    uint64_t nr_pages          # live pages
    uint64_t size_pages        # i_size in pages
    int64_t users              # VMAs referring to it
    uint64_t id
    # Pages written out to swap: the same kind of hash, page offset -> swap
    # offset (the swap entries shmem keeps in its page cache). NULL until
    # the object first has a page swapped out.
    pt_shmem *swapped
    # The same structure is the inode of a regular file (SHM_REGULAR): its
    # pages are FRAME_FILE frames, read in clean and never swapped; a page's
    # dirty state is PG_DIRTY on its frame.
    uint32_t flags
    uint64_t size_bytes        # i_size of a file made by create_file()

# --- hugetlb (2 MiB pages from a pool of their own) ---------------------------------

cdef extern from *:
    """
    /* Huge page i of the pool has PFN PTR_HUGETLB_PFN_BASE + 512 * i: above
       the table PFNs, so an entry's PFN tells a hugetlb page at once. */
    #define PTR_HUGETLB_PFN_BASE (1ULL << 33)
    """
    const uint64_t PTR_HUGETLB_PFN_BASE

cdef enum:
    # Huge page flags (folio state the hugetlb code keeps)
    HP_FREE = 1                # on the pool's free list
    HP_ANON = 2                # folio_test_anon(): mapped by a private mapping
    HP_ANON_EXCLUSIVE = 4      # PageAnonExclusive
    HP_RESTORE_RESERVE = 8     # folio_test_hugetlb_restore_reserve()
    HP_DIRTY = 16
    # vm_private_data flags of a private hugetlb VMA
    HPAGE_RESV_OWNER = 1       # the mapping that made the reservation (not a fork child)
    HPAGE_RESV_UNMAPPED = 2    # a page was taken from it by unmap_ref_private()
    # Gather entries with both bits set release a hugetlb page (low bits: its index);
    # THP heads stay below GATHER_HUGETLB.
    GATHER_HUGETLB = 0x40000000

ctypedef struct pt_idxset:
    # A sorted set of page indices, with an optional value each: reserve
    # maps (region lists in the kernel) and the hugetlbfs page cache.
    uint64_t *keys
    uint32_t *vals
    uint64_t n
    uint64_t cap

ctypedef struct pt_hfile:
    # The hugetlbfs inode that ksys_mmap_pgoff() creates for MAP_HUGETLB.
    int64_t users              # VMAs referring to it (its file references)
    uint64_t size              # i_size, in huge pages
    pt_idxset region           # inode reserve map: indices reserved or backed by a page
    pt_idxset cache            # page cache: index -> huge page (shared mappings)
    uint64_t id

ctypedef struct pt_resv_map:
    # A private mapping's reserve map: the indices whose reservation is consumed.
    int64_t refs
    pt_idxset consumed

ctypedef struct pt_hpage:
    int32_t refcount
    int32_t mapcount
    uint32_t flags             # HP_*
    uint32_t pad
    pt_hfile *file             # the page cache it is in, or NULL
    uint64_t index             # its index there

ctypedef struct pt_hstate:
    # struct hstate for the 2 MiB size; nr_overcommit_hugepages is 0.
    pt_hpage *pages
    uint32_t *free_stack       # free huge pages, last freed on top
    uint64_t nr_huge_pages
    uint64_t free_huge_pages
    uint64_t resv_huge_pages   # unsigned, and may wrap as the kernel's does
    uint64_t next_file_id
    # Reservations that no reserve map holds any more: those of the part of a
    # private mapping that stayed when mremap moved the rest (they never come
    # back to the pool; only check() needs the count).
    uint64_t resv_orphaned

ctypedef struct pt_vma:
    uint64_t start
    uint64_t end
    uint64_t flags             # VM_*
    uint64_t pgoff             # vm_pgoff
    uint64_t anon_vma          # 0: none; else an id unique in the machine
    uint64_t page_prot         # vm_page_prot
    pt_shmem *shmem            # NULL: private anonymous
    # vma_had_uncowed_parents(): the VMA got its anon_vma at fork, so its
    # anon_vma_chain is not singular; such a VMA neither merges with a
    # neighbour lacking an anon_vma nor lends its anon_vma to one.
    bint forked_anon_vma
    # hugetlb (VM_HUGETLB): the hugetlbfs file behind the mapping, and for a
    # private mapping its reserve map and HPAGE_RESV_* flags (vm_private_data).
    pt_hfile *hfile
    pt_resv_map *resv
    uint32_t hresv_flags

ctypedef struct pt_stats:
    uint64_t page_faults
    uint64_t pte_tables_allocated
    uint64_t pmd_tables_allocated
    uint64_t pud_tables_allocated
    uint64_t pte_tables_freed_reclaim_fast
    uint64_t pte_tables_freed_reclaim_slow
    uint64_t reclaim_slow_abandoned
    uint64_t pte_tables_freed_unmap
    uint64_t pmd_tables_freed
    uint64_t pud_tables_freed
    uint64_t tlb_flushes
    uint64_t mmu_gathers
    uint64_t table_batches
    uint64_t thp_fault_alloc           # THPs mapped by a fault
    uint64_t thp_zero_page             # huge zero pages mapped by a read fault
    uint64_t thp_split_pmd             # huge PMDs turned into PTE tables
    uint64_t thp_deposits_freed        # deposited tables freed with their huge PMD
    uint64_t thp_collapse_alloc        # THPs made by MADV_COLLAPSE
    uint64_t p4d_tables_allocated      # 5-level paging only
    uint64_t p4d_tables_freed

ctypedef struct pt_swap:
    # One swap device, a swap file (swap type 0, as on the lab machine for
    # SC-30). Offset 0 is its header; slots are offsets 1..nr_slots.
    uint64_t nr_slots          # 0: no swap device
    uint64_t next              # the lowest offset never handed out
    uint32_t *count            # swap_map: references (swap PTEs, shmem) per offset
    uint8_t *flags             # SWP_SLOT_* per offset
    uint64_t cap               # length of count and flags
    # Freed offsets below next, as a min-heap: a new slot is the lowest
    # free offset. Its capacity follows cap, so a free never allocates.
    uint32_t *heap
    uint64_t nr_heap
    uint64_t nr_used           # offsets with a count

ctypedef struct pt_machine:
    pt_frames frames
    pt_pool pool
    uint64_t next_anon_vma_id
    uint64_t next_shmem_id
    uint64_t totalram_pages    # overcommit heuristic limit: RAM + swap (0: unlimited)
    pt_swap swap
    pt_hstate hstate           # the 2 MiB hugetlb pool
    void **mms                 # every live pt_mm on the machine (owned by the Machine object)
    int64_t nr_mms

ctypedef struct pt_mm:
    pt_machine *machine
    # The PGD page itself: never counted (R10). With 4 levels it indexes
    # bits 47..39 and the P4D is folded into it (R2); with 5 it indexes bits
    # 56..48 and its entries point at P4D tables.
    pteval_t pgd[512]
    int paging_levels          # 4 or 5
    uint64_t task_size         # TASK_SIZE: PTR_TASK_SIZE or PTR_TASK_SIZE_LA57
    int64_t pgtables_bytes
    int64_t nr_deposits        # huge PMDs, each with a deposited PTE table (R13)
    int64_t rss[4]             # NR_MM_COUNTERS
    uint64_t total_vm          # pages
    uint64_t locked_vm         # pages
    pt_stats stats
    int reclaim_mode           # RECLAIM_*
    bint split_ptlocks
    int thp                    # 0 never, 1 madvise, 2 always
    pt_vma *vmas
    uint64_t nr_vmas
    uint64_t vmas_cap
    uint64_t mmap_base
    uint64_t vma_cache         # index of the VMA last found by a fault
    uint32_t *gather_pages     # MMU_GATHER_CAPACITY slots for the mmu_gather's page batches
    # Tracepoints and injected concurrency: the hard cases of PT reclaim.
    uint32_t trace_mask        # 1 << EV_* for every event someone listens to
    void *trace_owner          # the owning MM object, for the trampoline
    int (*trace_fn)(void *mm, int event, uint64_t addr, uint64_t arg) noexcept nogil
    int64_t resched_countdown  # -1: never; else need_resched() after that many entries
    double contention          # probability that the PMD try-lock fails
    uint64_t rng               # its xorshift state
    uint64_t lost_mappings     # tables freed while they still mapped something
    int64_t hugetlb_usage      # mm->hugetlb_usage: pages mapped from the hugetlb pool (HugetlbPages)
    # VmLck pages that no locked VMA accounts for: MREMAP_DONTUNMAP clears
    # VM_LOCKED on the old VMA without lowering locked_vm (measured on 6.18).
    uint64_t locked_vm_stale
    # Huge PMDs that map a shmem huge folio (ShmemPmdMapped / 2 MiB); they
    # carry no deposited table, so they are not in nr_deposits.
    int64_t nr_shmem_pmds

ctypedef struct mmu_gather:
    # One per syscall (R35). Pages are released, and table batches handed to
    # RCU, when the gather is flushed; VmPTE already dropped at unlink (R12).
    pt_mm *mm
    uint64_t start
    uint64_t end               # 0: nothing to flush
    bint fullmm
    bint freed_tables
    bint need_flush            # some entry or table was cleared since the last flush
    bint delayed_rmap
    uint32_t *pages            # frames whose release waits for the flush (owned by the mm)
    uint64_t nr_pages
    uint64_t batch_count       # batch pages allocated beyond the local bundle
    uint64_t active_nr         # pages in the active batch
    uint64_t active_max
    uint64_t active_index      # 0: the local bundle; k: the k-th batch page
    uint32_t tables[MAX_TABLE_BATCH]   # the current mmu_table_batch
    uint64_t nr_tables

ctypedef struct zap_details:
    bint even_cows
    bint reclaim_pt
    bint drop_markers
