# Page tables, frames and the zap / PT-reclaim / mmu_gather path: the C-level
# contract. Every function here is noexcept nogil; those that can fail return
# a negative value (or NULL) and say so.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t
from ptreclaim._types cimport (
    pteval_t, pt_page, pt_frames, pt_pool, pt_shmem, pt_vma, pt_mm, pt_machine,
    pt_idxset, pt_hfile, pt_resv_map, PTR_HUGETLB_PFN_BASE,
    FRAME_ANON, FRAME_SHMEM, HUGE_ZERO_PFN, PG_ANON_EXCLUSIVE, PG_DIRTY, PG_ZEROED, PG_THP,
    PG_ORDER_SHIFT, PG_ORDER_MASK,
    mmu_gather, zap_details,
    PTR_PAGE_PRESENT, PTR_PAGE_PROTNONE, PTR_PAGE_PSE, PTR_PAGE_ACCESSED,
    PTR_PAGE_DIRTY, PTR_PAGE_RW, PTR_PAGE_SPECIAL, PTR_PFN_MASK,
    PTR_TABLE_PFN_BASE, PTR_PAGE_TABLE, PTRS_PER_TABLE, TABLES_PER_CHUNK, PTR_GUARD_MARKER,
    PTR_UFFD_WP_MARKER, PTR_PAGE_UFFD_WP, PTR_VM_UFFD_WP,
    PTR_SWP_OFFSET_MASK, PTR_SWP_EXCLUSIVE, PTR_SWP_UFFD_WP, MAX_SWAPFILES,
    PTR_PGDIR_SIZE, PTR_PGDIR5_SIZE,
)

# --- entries (arch/x86/include/asm/pgtable.h) --------------------------------

cdef inline bint pte_none(pteval_t pte) noexcept nogil:
    # x86 ignores A and D in a none PTE (a Knights Landing erratum can set
    # them in non-present entries), R4.
    return (pte & ~(PTR_PAGE_ACCESSED | PTR_PAGE_DIRTY)) == 0

cdef inline bint pte_present(pteval_t pte) noexcept nogil:
    # PROT_NONE pages stay "present" with P clear and PROTNONE set (R5).
    return (pte & (PTR_PAGE_PRESENT | PTR_PAGE_PROTNONE)) != 0

cdef inline bint pte_write(pteval_t pte) noexcept nogil:
    return (pte & PTR_PAGE_RW) != 0

cdef inline bint pte_special(pteval_t pte) noexcept nogil:
    return (pte & PTR_PAGE_SPECIAL) != 0

cdef inline bint pte_needs_invert(pteval_t pte) noexcept nogil:
    # x86-64 stores the PFN of a non-present, non-zero entry (PROT_NONE)
    # inverted, so that a speculative walk never points at real memory (L1TF).
    return pte != 0 and not (pte & PTR_PAGE_PRESENT)

cdef inline uint64_t pte_pfn(pteval_t pte) noexcept nogil:
    if pte_needs_invert(pte):
        pte ^= PTR_PFN_MASK
    return (pte & PTR_PFN_MASK) >> 12

cdef inline bint pmd_none(pteval_t pmd) noexcept nogil:
    return pmd == 0

cdef inline bint pmd_huge_leaf(pteval_t pmd) noexcept nogil:
    return (pmd & PTR_PAGE_PSE) != 0

cdef inline pteval_t mk_table_entry(uint32_t slot) noexcept nogil:
    return ((PTR_TABLE_PFN_BASE + slot) << 12) | PTR_PAGE_TABLE

cdef inline uint32_t entry_table_slot(pteval_t entry) noexcept nogil:
    return <uint32_t>(((entry & PTR_PFN_MASK) >> 12) - PTR_TABLE_PFN_BASE)

cdef inline pteval_t *pool_table(pt_pool *pool, uint32_t slot) noexcept nogil:
    return pool.chunks[slot // TABLES_PER_CHUNK] + (slot % TABLES_PER_CHUNK) * PTRS_PER_TABLE

cdef inline pteval_t *entry_table(pt_pool *pool, pteval_t entry) noexcept nogil:
    return pool_table(pool, entry_table_slot(entry))

cdef inline uint64_t pte_index(uint64_t addr) noexcept nogil:
    return (addr >> 12) & 511

cdef inline uint64_t pmd_index(uint64_t addr) noexcept nogil:
    return (addr >> 21) & 511

cdef inline uint64_t pud_index(uint64_t addr) noexcept nogil:
    return (addr >> 30) & 511

cdef inline uint64_t pgd_index(uint64_t addr) noexcept nogil:
    # With 4-level paging; pgd5_index() with 5. Either way it is also the
    # index into the P4D table (p4d_index()), which is the PGD when folded.
    return (addr >> 39) & 511

cdef inline uint64_t pgd5_index(uint64_t addr) noexcept nogil:
    return (addr >> 48) & 511

cdef inline pteval_t *p4d_offset(pt_mm *mm, uint64_t addr) noexcept nogil:
    """The entry that points at the PUD table of addr's 512 GiB slot. With 4
    levels the P4D is folded into the PGD (R2); with 5 it lives in the P4D
    table under the PGD entry of addr's 256 TiB region: NULL when there is none."""
    cdef pteval_t e
    if mm.paging_levels == 4:
        return &mm.pgd[(addr >> 39) & 511]
    e = mm.pgd[(addr >> 48) & 511]
    if e == 0:
        return NULL
    return entry_table(&mm.machine.pool, e) + ((addr >> 39) & 511)

cdef inline uint64_t p4d_skip(pt_mm *mm, uint64_t addr) noexcept nogil:
    """Where a walk resumes when p4d_offset(addr) is NULL or none: the next
    512 GiB slot, or the next 256 TiB region when there is no P4D table."""
    if mm.paging_levels == 5 and mm.pgd[(addr >> 48) & 511] == 0:
        return (addr & ~(PTR_PGDIR5_SIZE - 1)) + PTR_PGDIR5_SIZE
    return (addr & ~(PTR_PGDIR_SIZE - 1)) + PTR_PGDIR_SIZE

# --- tracepoints: one predictable branch when nobody listens -----------------------

cdef inline int trace(pt_mm *mm, int event, uint64_t addr, uint64_t arg) noexcept nogil:
    if mm.trace_mask & (1u << event):
        return mm.trace_fn(<void *>mm, event, addr, arg)
    return 0

# --- a fresh anonymous page, the common case inline ---------------------------------

cdef inline void frame_set(pt_page *p, int32_t refcount, int32_t mapcount, uint16_t kind,
                           uint16_t flags, uint32_t index) noexcept nogil:
    # One whole-struct store where field by field would be five: the fault
    # and free loops are bound by stores.
    cdef pt_page v
    v.refcount = refcount
    v.mapcount = mapcount
    v.kind = kind
    v.flags = flags
    v.index = index
    p[0] = v

cdef inline int64_t anon_page_fast(pt_frames *f) noexcept nogil:
    """A new exclusive anonymous page for a store, from the free stack, or -1 (then alloc_frame()).

    Its counts are set as do_anonymous_page() leaves them: one reference, one mapping.
    """
    cdef uint64_t pfn
    cdef pt_page *p
    if f.nr_free == 0 or (f.max_frames and f.nr_used >= f.max_frames):
        return -1
    f.nr_free -= 1
    pfn = f.free_stack[f.nr_free]
    f.nr_used += 1
    frame_set(&f.pages[pfn], 1, 1, FRAME_ANON, PG_ANON_EXCLUSIVE, 0)
    return pfn

cdef inline void page_stored(pt_frames *f, uint64_t pfn) noexcept nogil:
    """A store by the CPU reached the page: it is no longer known to be zero."""
    if f.nr_zeroed and (f.pages[pfn].flags & PG_ZEROED):
        f.pages[pfn].flags &= ~PG_ZEROED
        f.nr_zeroed -= 1

cdef inline void page_zeroed(pt_frames *f, uint64_t pfn) noexcept nogil:
    if not (f.pages[pfn].flags & PG_ZEROED):
        f.pages[pfn].flags |= PG_ZEROED
        f.nr_zeroed += 1

cdef inline bint free_stack_reserve(pt_frames *f, uint64_t n) noexcept nogil:
    """Room on the free stack for n more frames; False if the host has none."""
    if f.nr_free + n <= f.free_cap:
        return True
    return _free_stack_grow(f, n)

# --- the PTRS_PER_PTE scan -------------------------------------------------------

cdef bint pte_table_empty(const pteval_t *table) noexcept nogil

# --- machine: frames, table pool, shmem objects ------------------------------------

cdef int machine_init(pt_machine *m, uint64_t max_frames) noexcept nogil
cdef void machine_free(pt_machine *m) noexcept nogil
cdef int64_t alloc_frame(pt_frames *f, int kind) noexcept nogil       # -1: none left
cdef void put_page(pt_machine *m, uint64_t pfn) noexcept nogil
cdef bint _free_stack_grow(pt_frames *f, uint64_t n) noexcept nogil
cdef int64_t pool_alloc(pt_pool *pool, int level) noexcept nogil       # -1: host OOM
cdef void pool_release(pt_pool *pool, uint32_t slot) noexcept nogil

cdef pt_shmem *shmem_new(pt_machine *m, uint64_t size_pages) noexcept nogil
cdef void shmem_get(pt_shmem *s) noexcept nogil
cdef void shmem_put(pt_machine *m, pt_shmem *s) noexcept nogil
cdef int64_t shmem_lookup(pt_shmem *s, uint64_t index) noexcept nogil   # -1: hole
cdef int shmem_insert(pt_shmem *s, uint64_t index, uint32_t pfn) noexcept nogil
cdef void shmem_delete(pt_machine *m, pt_shmem *s, uint64_t index) noexcept nogil
cdef void shmem_punch(pt_machine *m, pt_shmem *s, uint64_t first, uint64_t last) noexcept nogil

# --- walking and allocating (R25) --------------------------------------------------

cdef pteval_t *walk_pmd(pt_mm *mm, uint64_t addr) noexcept nogil      # NULL: no PMD table
cdef pteval_t *walk_pte(pt_mm *mm, uint64_t addr) noexcept nogil      # NULL: no PTE table
cdef pteval_t *pmd_alloc_walk(pt_mm *mm, uint64_t addr) noexcept nogil   # NULL: host OOM
cdef pteval_t *p4d_alloc(pt_mm *mm, uint64_t addr) noexcept nogil     # NULL: host OOM
cdef pteval_t *pte_alloc(pt_mm *mm, pteval_t *pmd) noexcept nogil     # NULL: host OOM

cdef extern from *:
    """
    #define ptr_prefetchw(p) __builtin_prefetch((const void *)(p), 1, 3)
    """
    void ptr_prefetchw(const void *p) noexcept nogil

cdef inline void prefetch_pte(pt_mm *mm, uint64_t addr) noexcept nogil:
    # A trace walks its accesses in random order, so nearly every PTE load
    # misses the cache. Walking a few accesses ahead (the upper levels are
    # hot) starts those misses early, where the CPU could not: the access
    # before it branches on what it loads.
    cdef pteval_t *pte = walk_pte(mm, addr)
    if pte != NULL:
        ptr_prefetchw(pte)

# --- the mmu_gather (mm/mmu_gather.c) -----------------------------------------------

cdef void tlb_gather_mmu(mmu_gather *tlb, pt_mm *mm, bint fullmm) noexcept nogil
cdef void tlb_finish_mmu(mmu_gather *tlb) noexcept nogil
cdef void tlb_flush_mmu_tlbonly(mmu_gather *tlb) noexcept nogil
cdef void tlb_flush_mmu(mmu_gather *tlb) noexcept nogil
cdef void tlb_remove_table(mmu_gather *tlb, uint32_t slot) noexcept nogil
cdef bint tlb_remove_page(mmu_gather *tlb, uint64_t pfn, bint delay_rmap) noexcept nogil

# --- faults (R25-R30) ------------------------------------------------------------------

cdef int handle_mm_fault(pt_mm *mm, pt_vma *vma, uint64_t addr, bint write) noexcept nogil

# --- zap and PT reclaim (R46-R60) -------------------------------------------------------

cdef void unmap_page_range(mmu_gather *tlb, pt_vma *vma, uint64_t addr, uint64_t end,
                           zap_details *details) noexcept nogil
cdef uint64_t zap_pte_range(mmu_gather *tlb, pt_vma *vma, pteval_t *pmd, uint64_t addr,
                            uint64_t end, zap_details *details) noexcept nogil
cdef bint reclaim_pt_is_enabled(uint64_t start, uint64_t end, zap_details *details) noexcept nogil
cdef bint try_get_and_clear_pmd(pt_mm *mm, pteval_t *pmd, pteval_t *pmdval) noexcept nogil
cdef void free_pte(pt_mm *mm, uint64_t addr, mmu_gather *tlb, pteval_t pmdval) noexcept nogil
cdef bint try_to_free_pte(pt_mm *mm, pteval_t *pmd, uint64_t addr, mmu_gather *tlb) noexcept nogil

# --- munmap / exit (R61-R65) ---------------------------------------------------------------

cdef void free_pgd_range(mmu_gather *tlb, uint64_t addr, uint64_t end, uint64_t floor,
                         uint64_t ceiling) noexcept nogil

# --- range operations used by mprotect and madvise -------------------------------------------

cdef void change_protection(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end,
                            uint64_t newprot, bint try_writable) noexcept nogil
cdef void madvise_free_range(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil

# --- the per-page loop behind touch() and population ------------------------------------------

cdef int fault_range(pt_mm *mm, pt_vma *vma, uint64_t *addr, uint64_t end, bint write,
                     bint gup) noexcept nogil
cdef void madvise_pageout_range(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil
cdef void madvise_cold_range(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil

# --- guard regions ---------------------------------------------------------------------------------

cdef int guard_install_range(pt_mm *mm, uint64_t start, uint64_t end) noexcept nogil
cdef void guard_remove_range(pt_mm *mm, uint64_t start, uint64_t end) noexcept nogil

# --- userfaultfd write-protect ------------------------------------------------------------------

cdef int uffd_wp_range(pt_mm *mm, pt_vma *vma, uint64_t start, uint64_t end, bint enable) noexcept nogil

# --- fork ---------------------------------------------------------------------------

cdef int copy_page_range(pt_mm *dst, pt_mm *src, pt_vma *vma) noexcept nogil   # -1: host OOM

# --- transparent huge pages -----------------------------------------------------------

cdef pteval_t mk_pte(uint64_t pfn, uint64_t prot) noexcept nogil
cdef int64_t alloc_thp(pt_frames *f) noexcept nogil                  # -1: max_frames, -2: host
cdef void put_thp(pt_machine *m, uint64_t head) noexcept nogil
cdef bint thp_vma_allowable(pt_mm *mm, pt_vma *vma, uint64_t addr) noexcept nogil
cdef int do_huge_pmd_anonymous_page(pt_mm *mm, pt_vma *vma, pteval_t *pmd, uint64_t addr,
                                    bint write) noexcept nogil
cdef int split_huge_pmd(pt_mm *mm, pt_vma *vma, pteval_t *pmd) noexcept nogil  # -1: host OOM
cdef void zap_huge_pmd(mmu_gather *tlb, pt_vma *vma, pteval_t *pmd, uint64_t addr) noexcept nogil
cdef int huge_pmd_fault(pt_mm *mm, pt_vma *vma, pteval_t *pmd, uint64_t addr, bint write,
                        bint gup) noexcept nogil
cdef void copy_huge_pmd(pt_mm *dst, pt_mm *src, pt_vma *vma, pteval_t *dst_pmd,
                        pteval_t *src_pmd) noexcept nogil
cdef int split_huge_pmd_address(pt_mm *mm, pt_vma *vma, uint64_t addr) noexcept nogil
cdef void huge_pageout(pt_mm *mm, pt_vma *vma, pteval_t *pmd, uint64_t addr) noexcept nogil
cdef void split_folio(pt_mm *mm, pt_vma *vma, uint64_t head, uint64_t base) noexcept nogil
cdef int large_folio_step(pt_mm *mm, pt_vma *vma, pteval_t *table, uint64_t i, uint64_t span,
                          uint64_t start, uint64_t end, bint split_whole) noexcept nogil

# --- the VMA array and anon_vma --------------------------------------------------------

cdef uint64_t find_vma(pt_mm *mm, uint64_t addr) noexcept nogil   # first VMA with end > addr

cdef void anon_vma_prepare(pt_mm *mm, uint64_t idx) noexcept nogil
cdef int collapse_span(pt_mm *mm, pt_vma *vma, uint64_t haddr) noexcept nogil
cdef int madvise_collapse(pt_mm *mm, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil

# --- swap (mm/swapfile.c, mm/swap_state.c, do_swap_page) ---------------------------

cdef inline bint is_swap_pte(pteval_t pte) noexcept nogil:
    # A genuine swap entry: non-none, non-present, of a swap device's type
    # (markers and migration entries have the highest types), R6.
    return not pte_none(pte) and not pte_present(pte) and (pte >> 59) < MAX_SWAPFILES

cdef inline uint64_t swp_offset(pteval_t pte) noexcept nogil:
    return (~(pte >> 9)) & PTR_SWP_OFFSET_MASK

cdef inline pteval_t swp_entry_to_pte(uint64_t offset) noexcept nogil:
    # __swp_entry(0, offset): the only swap device is type 0.
    return ((~offset) & PTR_SWP_OFFSET_MASK) << 9

cdef int swap_init(pt_machine *m, uint64_t nr_slots) noexcept nogil
cdef void swap_release(pt_machine *m) noexcept nogil
cdef int64_t get_swap_page(pt_machine *m, uint8_t flags) noexcept nogil     # -1: full
cdef void swap_duplicate(pt_machine *m, uint64_t offset) noexcept nogil
cdef void swap_free(pt_machine *m, uint64_t offset) noexcept nogil
cdef int do_swap_page(pt_mm *mm, pt_vma *vma, pteval_t *pte, bint write) noexcept nogil
cdef bint try_to_swap_out(pt_mm *mm, pteval_t *pte, uint64_t pfn) noexcept nogil
cdef void shmem_writeout(pt_machine *m, pt_shmem *s, uint64_t pfn) noexcept nogil
cdef int64_t shmem_swap_lookup(pt_shmem *s, uint64_t index) noexcept nogil    # -1: not swapped

# --- hugetlb: the 2 MiB pool, hugetlbfs inodes, reserve maps -------------------------

cdef inline bint pfn_is_hugetlb(uint64_t pfn) noexcept nogil:
    return pfn >= PTR_HUGETLB_PFN_BASE

cdef inline uint64_t hpage_pfn(uint64_t i) noexcept nogil:
    return PTR_HUGETLB_PFN_BASE + (i << 9)

cdef inline uint64_t hpage_index(uint64_t pfn) noexcept nogil:
    return (pfn - PTR_HUGETLB_PFN_BASE) >> 9

cdef inline bint pmd_hugetlb(pteval_t pmd) noexcept nogil:
    # A huge PMD that maps a page of the hugetlb pool (not a THP).
    return pmd_huge_leaf(pmd) and pfn_is_hugetlb(pte_pfn(pmd))

# --- shmem huge folios: 512 consecutive FRAME_SHMEM frames with PG_THP, index = page offset --

cdef inline bint pmd_is_file(pt_machine *m, pteval_t pmd) noexcept nogil:
    # A huge PMD that maps a shmem huge folio (not an anonymous THP, the huge
    # zero page or a hugetlb page): told apart by the kind of its frames.
    cdef uint64_t pfn
    if not pmd_huge_leaf(pmd):
        return False
    pfn = pte_pfn(pmd)
    return pfn != HUGE_ZERO_PFN and not pfn_is_hugetlb(pfn) and m.frames.pages[pfn].kind == FRAME_SHMEM

cdef inline uint64_t shmem_folio_nr(const pt_page *p) noexcept nogil:
    # Pages in the shmem folio that p belongs to (1 for a small one).
    if not (p.flags & PG_THP):
        return 1
    return (<uint64_t>1) << ((p.flags & PG_ORDER_MASK) >> PG_ORDER_SHIFT)

cdef inline uint64_t shmem_folio_head(const pt_page *pages, uint64_t pfn) noexcept nogil:
    # The first frame of pfn's shmem folio: folios are aligned in the file.
    return pfn - (pages[pfn].index & (shmem_folio_nr(&pages[pfn]) - 1))

cdef int64_t shmem_huge_folio(pt_machine *m, pt_shmem *s, uint64_t index) noexcept nogil  # -1: none
cdef void clear_file_pmd(pt_mm *mm, pteval_t *pmd) noexcept nogil
cdef void shmem_split_folio(pt_machine *m, pt_shmem *s, uint64_t head) noexcept nogil
cdef void shmem_punch_split(pt_machine *m, pt_shmem *s, uint64_t first, uint64_t last) noexcept nogil

cdef int hugetlb_pool_init(pt_machine *m, uint64_t nr) noexcept nogil        # -1: host OOM
cdef int64_t dequeue_huge_page(pt_machine *m) noexcept nogil                 # -1: none free
cdef void free_huge_folio(pt_machine *m, uint64_t i) noexcept nogil
cdef void put_huge_page(pt_machine *m, uint64_t i) noexcept nogil
cdef int hugetlb_acct_memory(pt_machine *m, int64_t delta) noexcept nogil    # -1: ENOMEM

cdef uint64_t idxset_lower(const pt_idxset *s, uint64_t key) noexcept nogil
cdef int64_t idxset_get(const pt_idxset *s, uint64_t key) noexcept nogil     # -1: absent
cdef bint idxset_has(const pt_idxset *s, uint64_t key) noexcept nogil
cdef int idxset_insert(pt_idxset *s, uint64_t key, uint32_t val) noexcept nogil   # -1: host OOM
cdef bint idxset_remove(pt_idxset *s, uint64_t key) noexcept nogil
cdef uint64_t idxset_count(const pt_idxset *s, uint64_t lo, uint64_t hi) noexcept nogil
cdef int64_t idxset_add_range(pt_idxset *s, uint64_t lo, uint64_t hi) noexcept nogil   # -1: host OOM
cdef uint64_t idxset_del_range(pt_idxset *s, uint64_t lo, uint64_t hi) noexcept nogil
cdef void idxset_free(pt_idxset *s) noexcept nogil

cdef pt_hfile *hfile_new(pt_machine *m, uint64_t size) noexcept nogil       # NULL: host OOM
cdef void hfile_get(pt_hfile *f) noexcept nogil
cdef void hfile_put(pt_machine *m, pt_hfile *f) noexcept nogil
cdef pt_resv_map *resv_map_new() noexcept nogil                              # NULL: host OOM
cdef void resv_map_put(pt_resv_map *r) noexcept nogil

# --- mremap (mm/mremap.c) ---------------------------------------------------------------

cdef int64_t move_page_tables(pt_mm *mm, pt_vma *old_vma, uint64_t old_addr, uint64_t new_addr,
                              uint64_t old_end) noexcept nogil   # bytes done, -1: host OOM
