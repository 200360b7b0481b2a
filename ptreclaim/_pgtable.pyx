# The hot path: page-table pool and frames, faults, zap, PT reclaim and the
# mmu_gather. Everything is noexcept nogil C over contiguous uint64 tables;
# names follow the kernel function each step simulates (mm/memory.c,
# mm/pt_reclaim.c, mm/mmu_gather.c) so the two can be read side by side.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset, memmove, memcpy
from libc.errno cimport EINVAL, ENOMEM
from posix.mman cimport mmap, munmap, madvise, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED

cdef extern from "<sys/mman.h>":
    int MADV_HUGEPAGE

from ptreclaim._types cimport *

# ---------------------------------------------------------------------------------
# The PTRS_PER_PTE scan: try_to_free_pte()'s re-check that a table is empty.

cdef bint pte_table_empty(const pteval_t *table) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef pteval_t acc
    # Blocks of 16 entries OR-reduced (vectorisable), with the kernel's early
    # exit at the first block holding a non-none entry; A and D alone do not
    # make an entry non-none (R4).
    for i in range(0, PTRS_PER_TABLE, 16):
        acc = 0
        for j in range(16):
            acc |= table[i + j]
        if acc & ~(PTR_PAGE_ACCESSED | PTR_PAGE_DIRTY):
            return False
    return True

# ---------------------------------------------------------------------------------
# Frames (struct page) and the table pool

cdef int machine_init(pt_machine *m, uint64_t max_frames) noexcept nogil:
    memset(m, 0, sizeof(pt_machine))
    m.frames.cap = 1024
    m.frames.pages = <pt_page *>calloc(m.frames.cap, sizeof(pt_page))
    if m.frames.pages == NULL:
        return -1
    # Frame 0 stays unused so that 0 can end the free list; frame 1 is the
    # zero page (ZERO_PFN), which no RSS counter and no refcount ever sees.
    m.frames.pages[0].kind = FRAME_RESERVED
    m.frames.pages[1].kind = FRAME_ZERO
    m.frames.pages[HUGE_ZERO_PFN].kind = FRAME_ZERO
    m.frames.nr_pages = 3
    m.frames.max_frames = max_frames
    m.next_anon_vma_id = 1
    m.next_shmem_id = 1
    return 0

cdef void machine_free(pt_machine *m) noexcept nogil:
    cdef uint64_t i
    free(m.frames.pages)
    free(m.frames.free_stack)
    free(m.frames.block_stack)
    for i in range(m.pool.nr_chunks):
        munmap(m.pool.chunks[i], TABLES_PER_CHUNK * PTRS_PER_TABLE * sizeof(pteval_t))
    free(m.pool.chunks)
    free(m.pool.state)
    free(m.pool.level)
    free(m.pool.free_stack)
    swap_release(m)
    free(m.hstate.pages)
    free(m.hstate.free_stack)
    memset(m, 0, sizeof(pt_machine))

cdef int64_t alloc_frame(pt_frames *f, int kind) noexcept nogil:
    cdef uint64_t pfn
    cdef pt_page *grown
    if f.max_frames and f.nr_used >= f.max_frames:
        return -1
    if f.nr_free:
        f.nr_free -= 1
        pfn = f.free_stack[f.nr_free]
    else:
        if f.nr_pages == f.cap:
            grown = <pt_page *>realloc(f.pages, 2 * f.cap * sizeof(pt_page))
            if grown == NULL:
                return -2
            f.pages = grown
            f.cap *= 2
        pfn = f.nr_pages
        f.nr_pages += 1
    f.pages[pfn].refcount = 1
    f.pages[pfn].mapcount = 0
    f.pages[pfn].kind = kind
    f.pages[pfn].flags = 0
    f.pages[pfn].index = 0
    f.nr_used += 1
    return pfn

cdef bint _free_stack_grow(pt_frames *f, uint64_t n) noexcept nogil:
    # The stack grows with the number of free frames, not of frames, so a
    # process whose pages all stay resident pays nothing for it.
    cdef uint64_t cap = f.free_cap if f.free_cap else 1024
    cdef uint32_t *grown
    while cap < f.nr_free + n:
        cap *= 2
    grown = <uint32_t *>realloc(f.free_stack, cap * sizeof(uint32_t))
    if grown == NULL:
        return False
    f.free_stack = grown
    f.free_cap = cap
    return True

cdef inline void _frame_release(pt_frames *f, pt_page *p, uint64_t pfn) noexcept nogil:
    if p.flags & PG_ZEROED:
        f.nr_zeroed -= 1
    frame_set(p, 0, 0, FRAME_FREE, 0, 0)
    f.nr_used -= 1
    if free_stack_reserve(f, 1):
        f.free_stack[f.nr_free] = <uint32_t>pfn
        f.nr_free += 1
    else:
        # Never handed out again; the simulation stays exact, the host
        # just keeps 16 bytes it could have reused.
        f.nr_unrecycled += 1

cdef void put_page(pt_machine *m, uint64_t pfn) noexcept nogil:
    cdef pt_frames *f = &m.frames
    cdef pt_page *p = &f.pages[pfn]
    if p.kind == FRAME_ZERO or p.kind == FRAME_RESERVED:
        return
    p.refcount -= 1
    if p.refcount == 0:
        _frame_release(f, p, pfn)

cdef pteval_t *_chunk_alloc() noexcept nogil:
    # Anonymous memory straight from the host: zeroed, 2 MiB-aligned (a
    # 2 MiB-multiple anonymous mmap is THP-aligned), and a huge page where the
    # host allows, so a million tables cost a few thousand host faults.
    cdef size_t size = TABLES_PER_CHUNK * PTRS_PER_TABLE * sizeof(pteval_t)
    cdef void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        return NULL
    madvise(p, size, MADV_HUGEPAGE)
    return <pteval_t *>p

cdef int _pool_grow(pt_pool *pool) noexcept nogil:
    cdef uint64_t n = pool.nr_chunks + 1
    cdef uint64_t slots = n * TABLES_PER_CHUNK
    cdef pteval_t *chunk
    cdef void *p
    if n > pool.chunks_cap:
        p = realloc(pool.chunks, 2 * n * sizeof(pteval_t *))
        if p == NULL:
            return -1
        pool.chunks = <pteval_t **>p
        pool.chunks_cap = 2 * n
    p = realloc(pool.state, slots)
    if p == NULL:
        return -1
    pool.state = <uint8_t *>p
    p = realloc(pool.level, slots)
    if p == NULL:
        return -1
    pool.level = <uint8_t *>p
    p = realloc(pool.free_stack, slots * sizeof(uint32_t))
    if p == NULL:
        return -1
    pool.free_stack = <uint32_t *>p
    chunk = _chunk_alloc()
    if chunk == NULL:
        return -1
    pool.chunks[pool.nr_chunks] = chunk
    memset(pool.state + pool.nr_chunks * TABLES_PER_CHUNK, TABLE_FREE, TABLES_PER_CHUNK)
    memset(pool.level + pool.nr_chunks * TABLES_PER_CHUNK, 0, TABLES_PER_CHUNK)
    pool.nr_chunks = n
    return 0

cdef int64_t pool_alloc(pt_pool *pool, int level) noexcept nogil:
    cdef uint32_t slot
    if pool.nr_free:
        pool.nr_free -= 1
        slot = pool.free_stack[pool.nr_free]
        # A new table starts at zero, as pagetable_alloc() gives it (__GFP_ZERO).
        memset(pool_table(pool, slot), 0, PTRS_PER_TABLE * sizeof(pteval_t))
    else:
        if pool.nr_tables == pool.nr_chunks * TABLES_PER_CHUNK:
            if _pool_grow(pool) < 0:
                return -1
        slot = <uint32_t>pool.nr_tables
        pool.nr_tables += 1
    pool.state[slot] = TABLE_LINKED
    pool.level[slot] = level
    return slot

cdef void pool_release(pt_pool *pool, uint32_t slot) noexcept nogil:
    pool.state[slot] = TABLE_FREE
    pool.level[slot] = 0
    pool.free_stack[pool.nr_free] = slot
    pool.nr_free += 1

# ---------------------------------------------------------------------------------
# shmem objects: the page cache of the inode behind MAP_SHARED|MAP_ANONYMOUS

cdef enum:
    SHM_EMPTY = 0

cdef uint64_t SHM_DELETED = <uint64_t>-1

cdef inline uint64_t _shm_hash(uint64_t key, uint64_t cap) noexcept nogil:
    return (key * <uint64_t>0x9E3779B97F4A7C15) >> 17 & (cap - 1)

cdef pt_shmem *shmem_new(pt_machine *m, uint64_t size_pages) noexcept nogil:
    cdef pt_shmem *s = <pt_shmem *>calloc(1, sizeof(pt_shmem))
    if s == NULL:
        return NULL
    s.cap = 16
    s.keys = <uint64_t *>calloc(s.cap, sizeof(uint64_t))
    s.vals = <uint32_t *>calloc(s.cap, sizeof(uint32_t))
    if s.keys == NULL or s.vals == NULL:
        free(s.keys)
        free(s.vals)
        free(s)
        return NULL
    s.size_pages = size_pages
    s.users = 1
    s.id = m.next_shmem_id
    m.next_shmem_id += 1
    return s

cdef void shmem_get(pt_shmem *s) noexcept nogil:
    s.users += 1

cdef void shmem_put(pt_machine *m, pt_shmem *s) noexcept nogil:
    cdef uint64_t i
    s.users -= 1
    if s.users > 0:
        return
    # The last mapping is gone: the inode is evicted with its page cache.
    for i in range(s.cap):
        if s.keys[i] != SHM_EMPTY and s.keys[i] != SHM_DELETED:
            put_page(m, s.vals[i])
    _shmem_swap_evict(m, s)
    free(s.keys)
    free(s.vals)
    free(s)

cdef int64_t shmem_lookup(pt_shmem *s, uint64_t index) noexcept nogil:
    cdef uint64_t key = index + 1
    cdef uint64_t i = _shm_hash(key, s.cap)
    while s.keys[i] != SHM_EMPTY:
        if s.keys[i] == key:
            return s.vals[i]
        i = (i + 1) & (s.cap - 1)
    return -1

cdef int _shm_rehash(pt_shmem *s, uint64_t cap) noexcept nogil:
    cdef uint64_t *keys = <uint64_t *>calloc(cap, sizeof(uint64_t))
    cdef uint32_t *vals = <uint32_t *>calloc(cap, sizeof(uint32_t))
    cdef uint64_t i, j
    if keys == NULL or vals == NULL:
        free(keys)
        free(vals)
        return -1
    for i in range(s.cap):
        if s.keys[i] != SHM_EMPTY and s.keys[i] != SHM_DELETED:
            j = _shm_hash(s.keys[i], cap)
            while keys[j] != SHM_EMPTY:
                j = (j + 1) & (cap - 1)
            keys[j] = s.keys[i]
            vals[j] = s.vals[i]
    free(s.keys)
    free(s.vals)
    s.keys = keys
    s.vals = vals
    s.cap = cap
    s.used = s.nr_pages
    return 0

cdef int shmem_insert(pt_shmem *s, uint64_t index, uint32_t pfn) noexcept nogil:
    cdef uint64_t key = index + 1
    cdef uint64_t i
    if 2 * (s.used + 1) > s.cap:
        if _shm_rehash(s, s.cap * 2 if 4 * s.nr_pages > s.cap else s.cap) < 0:
            return -1
    i = _shm_hash(key, s.cap)
    while s.keys[i] != SHM_EMPTY and s.keys[i] != SHM_DELETED:
        i = (i + 1) & (s.cap - 1)
    if s.keys[i] == SHM_EMPTY:
        s.used += 1
    s.keys[i] = key
    s.vals[i] = pfn
    s.nr_pages += 1
    return 0

cdef int64_t _shm_take(pt_shmem *s, uint64_t index) noexcept nogil:
    # Remove index from the hash; its value, or -1 if it was not there.
    cdef uint64_t key = index + 1
    cdef uint64_t i = _shm_hash(key, s.cap)
    while s.keys[i] != SHM_EMPTY:
        if s.keys[i] == key:
            s.keys[i] = SHM_DELETED
            s.nr_pages -= 1
            return s.vals[i]
        i = (i + 1) & (s.cap - 1)
    return -1

cdef void shmem_delete(pt_machine *m, pt_shmem *s, uint64_t index) noexcept nogil:
    # Drop one page from the page cache (its reference goes with it).
    cdef int64_t pfn = _shm_take(s, index)
    if pfn >= 0:
        put_page(m, <uint64_t>pfn)

cdef void shmem_punch(pt_machine *m, pt_shmem *s, uint64_t first, uint64_t last) noexcept nogil:
    # Drop the page cache of [first, last] (fallocate PUNCH_HOLE); callers
    # have already unmapped it everywhere (R40).
    cdef uint64_t i, key
    for i in range(s.cap):
        key = s.keys[i]
        if key != SHM_EMPTY and key != SHM_DELETED and first + 1 <= key <= last + 1:
            put_page(m, s.vals[i])
            s.keys[i] = SHM_DELETED
            s.nr_pages -= 1
    _shmem_swap_punch(m, s, first, last)

# ---------------------------------------------------------------------------------
# Walking and allocating (R25). A table is counted when it is linked (R11).

cdef pteval_t *walk_pmd(pt_mm *mm, uint64_t addr) noexcept nogil:
    cdef pt_pool *pool = &mm.machine.pool
    cdef pteval_t *p4d = p4d_offset(mm, addr)
    cdef pteval_t e
    if p4d == NULL or p4d[0] == 0:
        return NULL
    e = entry_table(pool, p4d[0])[pud_index(addr)]
    if e == 0:
        return NULL
    return entry_table(pool, e) + pmd_index(addr)

cdef pteval_t *walk_pte(pt_mm *mm, uint64_t addr) noexcept nogil:
    cdef pteval_t *pmd = walk_pmd(mm, addr)
    if pmd == NULL or pmd[0] == 0 or pmd_huge_leaf(pmd[0]):
        return NULL
    return entry_table(&mm.machine.pool, pmd[0]) + pte_index(addr)

cdef pteval_t *p4d_alloc(pt_mm *mm, uint64_t addr) noexcept nogil:
    """p4d_alloc(): the entry over addr's PUD table, with the P4D table made
    if missing (5-level paging). __p4d_alloc() links it without any
    mm_inc_nr_*(): a P4D table is never in pgtables_bytes (R10), and
    free_p4d_range() frees it without a decrement. NULL if the host is out
    of memory."""
    cdef pt_pool *pool = &mm.machine.pool
    cdef pteval_t *pgd
    cdef int64_t slot
    if mm.paging_levels == 4:
        return &mm.pgd[pgd_index(addr)]
    pgd = &mm.pgd[pgd5_index(addr)]
    if pgd[0] == 0:
        slot = pool_alloc(pool, LEVEL_P4D)
        if slot < 0:
            return NULL
        pgd[0] = mk_table_entry(<uint32_t>slot)
        mm.stats.p4d_tables_allocated += 1
        trace(mm, EV_TABLE_ALLOC, addr & PTR_PGDIR5_MASK, LEVEL_P4D)
    return entry_table(pool, pgd[0]) + pgd_index(addr)

cdef pteval_t *pmd_alloc_walk(pt_mm *mm, uint64_t addr) noexcept nogil:
    cdef pt_pool *pool = &mm.machine.pool
    cdef pteval_t *pgd = p4d_alloc(mm, addr)
    cdef pteval_t *pud
    cdef int64_t slot
    if pgd == NULL:
        return NULL
    if pgd[0] == 0:
        slot = pool_alloc(pool, LEVEL_PUD)
        if slot < 0:
            return NULL
        pgd[0] = mk_table_entry(<uint32_t>slot)
        mm.pgtables_bytes += 4096
        mm.stats.pud_tables_allocated += 1
        trace(mm, EV_TABLE_ALLOC, addr & PTR_PGDIR_MASK, LEVEL_PUD)
    pud = entry_table(pool, pgd[0]) + pud_index(addr)
    if pud[0] == 0:
        slot = pool_alloc(pool, LEVEL_PMD)
        if slot < 0:
            return NULL
        pud[0] = mk_table_entry(<uint32_t>slot)
        mm.pgtables_bytes += 4096
        mm.stats.pmd_tables_allocated += 1
        trace(mm, EV_TABLE_ALLOC, addr & PTR_PUD_MASK, LEVEL_PMD)
    return entry_table(pool, pud[0]) + pmd_index(addr)

cdef pteval_t *pte_alloc(pt_mm *mm, pteval_t *pmd) noexcept nogil:
    cdef int64_t slot
    if pmd[0] == 0:
        slot = pool_alloc(&mm.machine.pool, LEVEL_PTE)
        if slot < 0:
            return NULL
        pmd[0] = mk_table_entry(<uint32_t>slot)
        mm.pgtables_bytes += 4096
        mm.stats.pte_tables_allocated += 1
        trace(mm, EV_TABLE_ALLOC, 0, LEVEL_PTE)
    return entry_table(&mm.machine.pool, pmd[0])

# ---------------------------------------------------------------------------------
# The mmu_gather (R59)

cdef void tlb_gather_mmu(mmu_gather *tlb, pt_mm *mm, bint fullmm) noexcept nogil:
    tlb.mm = mm
    tlb.fullmm = fullmm
    tlb.start = tlb.mm.task_size
    tlb.end = 0
    tlb.freed_tables = False
    tlb.need_flush = False
    tlb.delayed_rmap = False
    tlb.pages = mm.gather_pages
    tlb.nr_pages = 0
    tlb.batch_count = 0
    tlb.active_index = 0
    tlb.active_nr = 0
    tlb.active_max = MMU_GATHER_BUNDLE
    tlb.nr_tables = 0
    mm.stats.mmu_gathers += 1

cdef inline void tlb_adjust_range(mmu_gather *tlb, uint64_t addr, uint64_t size) noexcept nogil:
    if addr < tlb.start:
        tlb.start = addr
    if addr + size > tlb.end:
        tlb.end = addr + size
    tlb.need_flush = True

cdef void tlb_flush_mmu_tlbonly(mmu_gather *tlb) noexcept nogil:
    # Only a gather that cleared something flushes (tlb_flush_mmu_tlbonly
    # returns early otherwise).
    if not tlb.need_flush:
        return
    tlb.mm.stats.tlb_flushes += 1
    trace(tlb.mm, EV_TLB_FLUSH, tlb.start, tlb.end)
    tlb.start = tlb.mm.task_size
    tlb.end = 0
    tlb.freed_tables = False
    tlb.need_flush = False

cdef void _tlb_table_flush(mmu_gather *tlb) noexcept nogil:
    # The batch goes to call_rcu; nothing can still walk these tables in a
    # synchronous simulation, so the grace period ends at once.
    cdef uint64_t i
    cdef pt_pool *pool = &tlb.mm.machine.pool
    if tlb.nr_tables == 0:
        return
    tlb_flush_mmu_tlbonly(tlb)          # tlb_table_invalidate()
    for i in range(tlb.nr_tables):
        pool_release(pool, tlb.tables[i])
    tlb.nr_tables = 0
    tlb.mm.stats.table_batches += 1

cdef void tlb_remove_table(mmu_gather *tlb, uint32_t slot) noexcept nogil:
    tlb.mm.machine.pool.state[slot] = TABLE_GATHERED
    tlb.tables[tlb.nr_tables] = slot
    tlb.nr_tables += 1
    if tlb.nr_tables == MAX_TABLE_BATCH:
        _tlb_table_flush(tlb)

cdef inline void _put_gathered_large(pt_machine *m, uint32_t e) noexcept nogil:
    # A gathered THP (its head frame) or hugetlb page (its pool index).
    if e & GATHER_HUGETLB:
        put_huge_page(m, e & ~(GATHER_THP | GATHER_HUGETLB))
    else:
        put_thp(m, e & ~GATHER_THP)

cdef void _tlb_batch_pages_flush(mmu_gather *tlb) noexcept nogil:
    cdef uint64_t i, j, n = tlb.nr_pages
    cdef pt_machine *m = tlb.mm.machine
    cdef pt_frames *f = &m.frames
    cdef pt_page *pages = f.pages
    cdef uint32_t *batch = tlb.pages
    cdef uint32_t *stack
    cdef uint64_t top, freed = 0, zeroed = 0
    cdef pt_page *p
    cdef uint32_t pfn
    if free_stack_reserve(f, n):
        # The common case inline: the last reference to an anonymous page.
        # Counters stay in locals because stores through the frame pointers
        # could otherwise alias them.
        stack = f.free_stack
        top = f.nr_free
        for i in range(n):
            pfn = batch[i]
            if pfn & GATHER_THP:
                f.nr_free = top
                _put_gathered_large(m, pfn)
                if not free_stack_reserve(f, n - i):
                    f.nr_used -= freed
                    f.nr_zeroed -= zeroed
                    freed = 0
                    zeroed = 0
                    for j in range(i + 1, n):
                        if batch[j] & GATHER_THP:
                            _put_gathered_large(m, batch[j])
                        else:
                            put_page(m, batch[j])
                    top = f.nr_free
                    break
                top = f.nr_free
                stack = f.free_stack       # it may have grown
                continue
            p = &pages[pfn]
            if p.refcount == 1 and p.kind == FRAME_ANON:
                zeroed += (p.flags & PG_ZEROED) != 0
                frame_set(p, 0, 0, FRAME_FREE, 0, 0)
                stack[top] = pfn
                top += 1
                freed += 1
            else:
                f.nr_free = top
                put_page(m, pfn)
                top = f.nr_free
        f.nr_free = top
        f.nr_used -= freed
        f.nr_zeroed -= zeroed
    else:
        for i in range(n):
            if batch[i] & GATHER_THP:
                _put_gathered_large(m, batch[i])
            else:
                put_page(m, batch[i])
    tlb.nr_pages = 0
    tlb.active_index = 0
    tlb.active_nr = 0
    tlb.active_max = MMU_GATHER_BUNDLE
    tlb.delayed_rmap = False

cdef void tlb_flush_mmu(mmu_gather *tlb) noexcept nogil:
    tlb_flush_mmu_tlbonly(tlb)
    _tlb_table_flush(tlb)
    _tlb_batch_pages_flush(tlb)

cdef void tlb_finish_mmu(mmu_gather *tlb) noexcept nogil:
    tlb_flush_mmu(tlb)

cdef bint _tlb_next_batch(mmu_gather *tlb) noexcept nogil:
    # With rmap removal pending, the gather may not grow past the local
    # bundle (the rmaps must be flushed while the PTE lock is held).
    if tlb.delayed_rmap and tlb.active_index != 0:
        return False
    if tlb.active_index >= tlb.batch_count:
        if tlb.batch_count == MAX_GATHER_BATCH_COUNT:
            return False
        tlb.batch_count += 1
    tlb.active_index += 1
    tlb.active_nr = 0
    tlb.active_max = MAX_GATHER_BATCH
    return True

cdef bint tlb_remove_page(mmu_gather *tlb, uint64_t pfn, bint delay_rmap) noexcept nogil:
    # Returns True when the gather is full and must be flushed before the
    # zap loop goes on (force_flush + force_break).
    tlb.pages[tlb.nr_pages] = <uint32_t>pfn
    tlb.nr_pages += 1
    tlb.active_nr += 1
    if delay_rmap:
        tlb.delayed_rmap = True
    # Room is kept for a "page + nr_pages" pair of entries.
    if tlb.active_nr >= tlb.active_max - 1:
        if not _tlb_next_batch(tlb):
            return True
    return False

# ---------------------------------------------------------------------------------
# The VMA array, sorted by address

cdef uint64_t find_vma(pt_mm *mm, uint64_t addr) noexcept nogil:
    cdef uint64_t lo = 0, hi = mm.nr_vmas, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if mm.vmas[mid].end <= addr:
            lo = mid + 1
        else:
            hi = mid
    return lo

# ---------------------------------------------------------------------------------
# anon_vma (R18): whether a VMA has private pages that fork must copy

cdef inline bint anon_vma_compatible(const pt_vma *a, const pt_vma *b) noexcept nogil:
    # Neighbours that differ only in read/write/exec may share an anon_vma,
    # so that a later mprotect can merge them again.
    cdef uint64_t access = PTR_VM_READ | PTR_VM_WRITE | PTR_VM_EXEC | PTR_VM_STICKY
    return (a.end == b.start and a.shmem == b.shmem and a.hfile == b.hfile
            and ((a.flags ^ b.flags) & ~access) == 0
            and b.pgoff == a.pgoff + ((b.start - a.start) >> 12))

cdef void anon_vma_prepare(pt_mm *mm, uint64_t idx) noexcept nogil:
    # find_mergeable_anon_vma(): try the next VMA first, then the previous.
    cdef pt_vma *vma = &mm.vmas[idx]
    if vma.anon_vma:
        return
    # reusable_anon_vma(): only a neighbour whose anon_vma_chain is singular.
    if idx + 1 < mm.nr_vmas and mm.vmas[idx + 1].anon_vma and not mm.vmas[idx + 1].forked_anon_vma \
            and anon_vma_compatible(vma, &mm.vmas[idx + 1]):
        vma.anon_vma = mm.vmas[idx + 1].anon_vma
        return
    if idx > 0 and mm.vmas[idx - 1].anon_vma and not mm.vmas[idx - 1].forked_anon_vma \
            and anon_vma_compatible(&mm.vmas[idx - 1], vma):
        vma.anon_vma = mm.vmas[idx - 1].anon_vma
        return
    vma.anon_vma = mm.machine.next_anon_vma_id
    mm.machine.next_anon_vma_id += 1

# ---------------------------------------------------------------------------------
# Faults (R25-R30)

cdef inline uint64_t _vma_pgoff_of(pt_vma *vma, uint64_t addr) noexcept nogil:
    return vma.pgoff + ((addr - vma.start) >> 12)

cdef inline int page_mm_counter(uint16_t kind) noexcept nogil:
    # mm_counter_file(): shmem pages count in RssShmem, other file pages in RssFile.
    return MM_FILEPAGES if kind == FRAME_FILE else MM_SHMEMPAGES

cdef int _finish_shmem_page(pt_mm *mm, pt_vma *vma, pteval_t *pte, uint64_t pfn,
                            bint write) noexcept nogil:
    # set_pte_range() for a page-cache page: a write fault maps it dirty and
    # writable (maybe_mkwrite); a read fault takes vm_page_prot as it is,
    # read-only for private mappings and for files that want write notify.
    cdef pteval_t entry = (pfn << 12) | vma.page_prot
    cdef pt_page *p = &mm.machine.frames.pages[pfn]
    if write:
        entry |= PTR_PAGE_DIRTY | PTR_PAGE_RW
        p.flags |= PG_DIRTY
    elif (entry & PTR_PAGE_RW) and (p.flags & PG_DIRTY):
        # A dirty folio mapped writable is mapped dirty, so a later store
        # needs no fault to set the bit.
        entry |= PTR_PAGE_DIRTY
    p.refcount += 1
    p.mapcount += 1
    pte[0] = entry
    mm.rss[page_mm_counter(p.kind)] += 1
    return FAULT_OK

cdef int _shmem_get_page(pt_mm *mm, pt_shmem *s, uint64_t index, uint64_t *pfn_out) noexcept nogil:
    # shmem_get_folio(): a hole in the object gets a new zeroed page, for
    # read and write faults alike (R28). filemap_fault() of a regular file:
    # a page missing from the cache is read in, one clean 4 KiB page (no
    # readahead is simulated).
    cdef int64_t pfn = shmem_lookup(s, index)
    cdef int64_t off = -1
    if pfn < 0:
        pfn = alloc_frame(&mm.machine.frames, FRAME_FILE if s.flags & SHM_REGULAR else FRAME_SHMEM)
        if pfn < 0:
            return FAULT_OOM
        mm.machine.frames.pages[pfn].index = <uint32_t>index
        if not (s.flags & SHM_REGULAR):
            off = shmem_swap_lookup(s, index)
        if off >= 0:
            # shmem_swapin_folio(): the page comes back dirty.
            mm.machine.frames.pages[pfn].flags = PG_DIRTY
        if shmem_insert(s, index, <uint32_t>pfn) < 0:
            put_page(mm.machine, pfn)
            return FAULT_OOM
        if off >= 0:
            # ... and the swap entry in the page cache gives way to it.
            _shm_take(s.swapped, index)
            swap_free(mm.machine, <uint64_t>off)
    pfn_out[0] = pfn
    return FAULT_OK

cdef bint _do_fault_around(pt_mm *mm, pt_vma *vma, uint64_t addr, pteval_t *pmd) noexcept nogil:
    # do_fault_around() + filemap_map_pages(): map the cached pages of the
    # 64 KiB-aligned window around addr, clipped to the VMA, the PTE table and
    # the end of the object (R29). Returns True if addr itself got mapped.
    cdef uint64_t pte_off = pte_index(addr)
    cdef uint64_t vma_off = (addr - vma.start) >> 12
    cdef uint64_t vma_pages = (vma.end - vma.start) >> 12
    cdef uint64_t from_pte, to_pte, i, pgoff0, index
    cdef int64_t pfn
    cdef pteval_t *table
    cdef bint have_any = False
    from_pte = pte_off & ~<uint64_t>(FAULT_AROUND_PAGES - 1)
    if pte_off - (pte_off if pte_off < vma_off else vma_off) > from_pte:
        from_pte = pte_off - (pte_off if pte_off < vma_off else vma_off)
    to_pte = from_pte + FAULT_AROUND_PAGES
    if to_pte > PTRS_PER_TABLE:
        to_pte = PTRS_PER_TABLE
    if to_pte > pte_off + vma_pages - vma_off:
        to_pte = pte_off + vma_pages - vma_off
    pgoff0 = _vma_pgoff_of(vma, addr) - pte_off      # file index of table slot 0
    # filemap_map_pages() returns before touching the page table when the
    # window holds no cached page at all.
    for i in range(from_pte, to_pte):
        index = pgoff0 + i
        if index < vma.shmem.size_pages and shmem_lookup(vma.shmem, index) >= 0:
            have_any = True
            break
    if not have_any:
        return False
    # filemap_map_pmd(): the folio found there is a huge one, mapped by a PMD
    # where it can be (past i_size too: shmem maps PMDs across it).
    if _do_set_pmd(mm, vma, pmd, addr, False):
        return True
    table = pte_alloc(mm, pmd)
    if table == NULL:
        return False
    for i in range(from_pte, to_pte):
        index = pgoff0 + i
        if index >= vma.shmem.size_pages:
            continue
        pfn = shmem_lookup(vma.shmem, index)
        if pfn < 0:
            continue
        # A large folio that lies inside the VMA and this table is mapped
        # whole, past the window (and past i_size: shmem may map there),
        # wherever its entries are none, even if the window's own are not.
        if _map_whole_folio(mm, vma, table, addr, <uint64_t>pfn, False, False):
            continue
        if pte_none(table[i]):
            _finish_shmem_page(mm, vma, &table[i], <uint64_t>pfn, False)
    return pte_present(table[pte_off])

cdef int _do_cow_fault(pt_mm *mm, pt_vma *vma, uint64_t addr, pteval_t *pmd,
                       int64_t new) noexcept nogil:
    # do_cow_fault(): the page-cache page was copied into the new anonymous
    # page (the caller prepared the anon_vma); only the copy is mapped.
    cdef pteval_t *table = pte_alloc(mm, pmd)
    if table == NULL:
        put_page(mm.machine, <uint64_t>new)
        return FAULT_OOM
    mm.machine.frames.pages[new].mapcount = 1
    mm.machine.frames.pages[new].flags = PG_ANON_EXCLUSIVE
    table[pte_index(addr)] = (<uint64_t>new << 12) | vma.page_prot | PTR_PAGE_DIRTY | PTR_PAGE_RW
    mm.rss[MM_ANONPAGES] += 1
    return FAULT_OK

cdef int _shmem_fault(pt_mm *mm, pt_vma *vma, uint64_t addr, pteval_t *pmd, bint write) noexcept nogil:
    # do_fault() for a file or shmem VMA: do_read_fault(), do_cow_fault() or
    # do_shared_fault().
    cdef pteval_t *table
    cdef uint64_t pfn
    cdef int ret
    cdef int64_t new = -1
    # do_read_fault() tries fault-around first; write faults never do (R30).
    if not write and _do_fault_around(mm, vma, addr, pmd):
        return FAULT_OK
    if write and not (vma.flags & PTR_VM_SHARED):
        # do_cow_fault() allocates the copy before it asks for the page: out of
        # memory there, nothing is read into the page cache.
        new = alloc_frame(&mm.machine.frames, FRAME_ANON)
        if new < 0:
            return FAULT_OOM
    # shmem_get_folio_gfp() / filemap_fault(): an index at or past i_size
    # (a mapping longer than its file, or grown by mremap) is VM_FAULT_SIGBUS.
    if _vma_pgoff_of(vma, addr) >= vma.shmem.size_pages:
        ret = FAULT_SIGBUS
    else:
        ret = _shmem_get_page(mm, vma.shmem, _vma_pgoff_of(vma, addr), &pfn)
    if new >= 0:
        if ret != FAULT_OK:
            put_page(mm.machine, <uint64_t>new)
            return ret
        return _do_cow_fault(mm, vma, addr, pmd, new)
    if ret != FAULT_OK:
        return ret
    # finish_fault(): a huge folio by PMD if the entry is none, else all of
    # it by PTEs if the whole table is none (not for a userfaultfd-armed
    # VMA), else the one page.
    if _do_set_pmd(mm, vma, pmd, addr, write):
        return FAULT_OK
    table = pte_alloc(mm, pmd)
    if table == NULL:
        return FAULT_OOM
    if not (vma.flags & PTR_VM_UFFD_WP) and _map_whole_folio(mm, vma, table, addr, pfn, write, True):
        return FAULT_OK
    return _finish_shmem_page(mm, vma, &table[pte_index(addr)], pfn, write)

cdef int _do_anonymous_page(pt_mm *mm, pt_vma *vma, uint64_t addr, pteval_t *pmd,
                            bint write) noexcept nogil:
    cdef pteval_t *table = pte_alloc(mm, pmd)
    cdef int64_t pfn
    cdef pt_page *p
    if table == NULL:
        return FAULT_OOM
    if not write:
        # The shared zero page: SPECIAL, read-only, uncounted (R9, R26).
        table[pte_index(addr)] = (<uint64_t>1 << 12) | vma.page_prot | PTR_PAGE_SPECIAL
        return FAULT_OK
    pfn = alloc_frame(&mm.machine.frames, FRAME_ANON)
    if pfn < 0:
        return FAULT_OOM
    p = &mm.machine.frames.pages[pfn]
    p.mapcount = 1
    p.flags = PG_ANON_EXCLUSIVE | PG_ZEROED
    mm.machine.frames.nr_zeroed += 1          # until the store that faulted reaches it
    table[pte_index(addr)] = (<uint64_t>pfn << 12) | vma.page_prot | PTR_PAGE_DIRTY | PTR_PAGE_RW
    mm.rss[MM_ANONPAGES] += 1
    return FAULT_OK

cdef int _do_wp_page(pt_mm *mm, pt_vma *vma, pteval_t *pte) noexcept nogil:
    cdef pteval_t old = pte[0]
    cdef uint64_t pfn = pte_pfn(old)
    cdef pt_page *p
    cdef int64_t new
    if vma.shmem != NULL and (vma.flags & PTR_VM_SHARED):
        # wp_page_shared(): a shared page only needs its write bit back; a
        # regular file's page is dirtied now (fault_dirty_shared_page()).
        p = &mm.machine.frames.pages[pfn]
        if p.kind == FRAME_FILE:
            p.flags |= PG_DIRTY
        pte[0] = old | PTR_PAGE_RW | PTR_PAGE_DIRTY | PTR_PAGE_ACCESSED
        return FAULT_OK
    if not pte_special(old):
        p = &mm.machine.frames.pages[pfn]
        if p.kind == FRAME_ANON and p.refcount == 1 and p.mapcount == 1:
            # wp_can_reuse_anon_folio(): nobody else has it; reuse in place.
            p.flags |= PG_ANON_EXCLUSIVE
            pte[0] = old | PTR_PAGE_RW | PTR_PAGE_DIRTY | PTR_PAGE_ACCESSED
            return FAULT_OK
    # wp_page_copy(): a new private page replaces the zero page or a shared
    # one; the mapping count of the mm does not change for the latter.
    new = alloc_frame(&mm.machine.frames, FRAME_ANON)
    if new < 0:
        return FAULT_OOM
    mm.machine.frames.pages[new].mapcount = 1
    mm.machine.frames.pages[new].flags = PG_ANON_EXCLUSIVE
    if pte_special(old):
        mm.rss[MM_ANONPAGES] += 1
        page_zeroed(&mm.machine.frames, <uint64_t>new)    # a copy of the zero page
    else:
        p = &mm.machine.frames.pages[pfn]
        if p.flags & PG_ZEROED:
            page_zeroed(&mm.machine.frames, <uint64_t>new)    # the copy has its data
        if p.kind != FRAME_ANON:
            # A page-cache page of a private file mapping: the mapping moves
            # from RssFile (RssShmem) to RssAnon (SC-19).
            mm.rss[page_mm_counter(p.kind)] -= 1
            mm.rss[MM_ANONPAGES] += 1
        p.mapcount -= 1
        put_page(mm.machine, pfn)
    pte[0] = (<uint64_t>new << 12) | vma.page_prot | PTR_PAGE_DIRTY | PTR_PAGE_RW
    return FAULT_OK

cdef int handle_mm_fault(pt_mm *mm, pt_vma *vma, uint64_t addr, bint write) noexcept nogil:
    """One access by the CPU: a fault only if the entry does not allow it.

    The caller has checked the VMA permissions (access_error()) and, for a
    write to private memory, prepared the anon_vma (R18).
    """
    cdef pteval_t *pte = walk_pte(mm, addr)
    cdef pteval_t *pmd
    cdef int r
    if pte == NULL or not pte_present(pte[0]) or (write and not pte_write(pte[0])):
        pmd = walk_pmd(mm, addr)
        if pmd == NULL or not pmd_huge_leaf(pmd[0]) or (write and not pte_write(pmd[0])):
            trace(mm, EV_FAULT, addr, write)
        pte = walk_pte(mm, addr)           # a listener may have faulted it in
        if pte == NULL:
            pmd = walk_pmd(mm, addr)
            if pmd != NULL and pmd_huge_leaf(pmd[0]):
                return huge_pmd_fault(mm, vma, pmd, addr, write, False)
    if pte != NULL and is_swap_pte(pte[0]):
        # A swap entry is read back in (R25 step 7).
        mm.stats.page_faults += 1
        return do_swap_page(mm, vma, pte, write)
    if pte != NULL and pte[0] == PTR_UFFD_WP_MARKER:
        mm.stats.page_faults += 1
        if write:
            return FAULT_UFFD           # handle_userfault(): the monitor must resolve it
        # pte_marker_handle_uffd_wp(): fault the page in, still write-protected.
        pte[0] = 0
        r = _shmem_fault(mm, vma, addr, walk_pmd(mm, addr), False)
        if r == FAULT_OK:
            pte = walk_pte(mm, addr)
            pte[0] = (pte[0] & ~PTR_PAGE_RW) | PTR_PAGE_UFFD_WP
        return r
    if pte != NULL and not pte_none(pte[0]) and not pte_present(pte[0]):
        # handle_pte_marker(): an access to a guard region is SIGSEGV (R43).
        mm.stats.page_faults += 1
        return FAULT_SIGSEGV
    if pte != NULL and write and (pte[0] & PTR_PAGE_UFFD_WP) and (vma.flags & PTR_VM_UFFD_WP):
        mm.stats.page_faults += 1
        return FAULT_UFFD
    if pte != NULL and pte_present(pte[0]):
        if not write:
            pte[0] |= PTR_PAGE_ACCESSED
            return FAULT_OK
        if pte_write(pte[0]):
            pte[0] |= PTR_PAGE_ACCESSED | PTR_PAGE_DIRTY
            return FAULT_OK
        mm.stats.page_faults += 1
        return _do_wp_page(mm, vma, pte)
    mm.stats.page_faults += 1
    pmd = pmd_alloc_walk(mm, addr)
    if pmd == NULL:
        return FAULT_OOM
    if vma.shmem != NULL:
        return _shmem_fault(mm, vma, addr, pmd, write)
    if pmd[0] == 0 and thp_vma_allowable(mm, vma, addr):
        r = do_huge_pmd_anonymous_page(mm, vma, pmd, addr, write)
        if r != FAULT_FALLBACK:
            return r
    return _do_anonymous_page(mm, vma, addr, pmd, write)

# ---------------------------------------------------------------------------------
# Zap (R46-R51) and PT reclaim (R52-R60)

cdef inline int mm_counter(pt_page *p) noexcept nogil:
    return MM_ANONPAGES if p.kind == FRAME_ANON else page_mm_counter(p.kind)

cdef inline Py_ssize_t zap_present_ptes(mmu_gather *tlb, pt_vma *vma, pteval_t *pte,
                                        uint64_t addr, Py_ssize_t max_nr, int64_t *rss,
                                        bint *force_flush, bint *force_break,
                                        bint *cleared, bint drop_markers,
                                        bint *any_skipped) noexcept nogil:
    """Zap the run of present entries starting at pte; returns how many.

    The kernel batches the PTEs of one large folio here; with small folios
    only, a run of consecutive present entries is the same work done one
    entry at a time, and it stops exactly where the kernel's loop would
    (the page that fills the gather).
    """
    cdef pt_page *pages = tlb.mm.machine.frames.pages
    # Local copies: the gather's counters would otherwise be reloaded after
    # every store to an entry (both are 64-bit integers, which may alias).
    cdef uint32_t *batch = tlb.pages
    cdef uint64_t nr_pages = tlb.nr_pages
    cdef uint64_t active_nr = tlb.active_nr
    cdef uint64_t active_max = tlb.active_max
    cdef int64_t anon = 0, shmem = 0, file = 0
    cdef Py_ssize_t i = 0
    cdef pteval_t ptent
    cdef uint64_t pfn
    cdef pt_page *p
    cdef bint full = False
    cdef bint keep_wp_markers = (vma.flags & PTR_VM_UFFD_WP) != 0 and vma.shmem != NULL \
        and not drop_markers
    # Every normal page of a private anonymous VMA is anonymous: its counter
    # is known without waiting for the load of the frame.
    cdef bint all_anon = vma.shmem == NULL
    cleared[0] = True
    while i < max_nr:
        ptent = pte[i]
        if not pte_present(ptent):
            break
        pte[i] = 0
        i += 1
        if keep_wp_markers and (ptent & PTR_PAGE_UFFD_WP):
            # zap_install_uffd_wp_if_needed(): a write-protected page of a
            # file/shmem VMA leaves a marker, which cancels reclaim (R50, R54).
            pte[i - 1] = PTR_UFFD_WP_MARKER
            any_skipped[0] = True
        if pte_special(ptent):
            # vm_normal_page() is NULL: nothing to count or free (R50).
            continue
        pfn = pte_pfn(ptent)
        p = &pages[pfn]
        if all_anon or p.kind == FRAME_ANON:
            anon += 1
        else:
            if p.kind == FRAME_FILE:
                file += 1
            else:
                shmem += 1
            if ptent & PTR_PAGE_DIRTY:
                p.flags |= PG_DIRTY
                # Dirty shared pages keep their rmap until the TLB is
                # flushed, which forces a flush before the PTE lock is
                # dropped (R51).
                tlb.delayed_rmap = True
                force_flush[0] = True
        p.mapcount -= 1
        # __tlb_remove_folio_pages(): room is always kept for a two-entry item.
        batch[nr_pages] = <uint32_t>pfn
        nr_pages += 1
        active_nr += 1
        if active_nr >= active_max - 1:
            tlb.nr_pages = nr_pages
            tlb.active_nr = active_nr
            if not _tlb_next_batch(tlb):
                full = True
                break
            active_nr = tlb.active_nr
            active_max = tlb.active_max
    tlb.nr_pages = nr_pages
    if not full:
        tlb.active_nr = active_nr
    rss[MM_ANONPAGES] -= anon
    rss[MM_SHMEMPAGES] -= shmem
    rss[MM_FILEPAGES] -= file
    if full:
        force_flush[0] = True
        force_break[0] = True
    return i

cdef inline Py_ssize_t zap_nonpresent_ptes(mmu_gather *tlb, pt_vma *vma, pteval_t *pte,
                                           zap_details *details, int64_t *rss, bint *cleared,
                                           bint *any_skipped) noexcept nogil:
    if is_swap_pte(pte[0]):
        # A genuine swap entry: its slot reference goes, VmSwap drops, and the
        # entry is cleared with no TLB entry to flush; a cleared entry does not
        # stop PT reclaim (R50, SC-30). Only a caller that spares COW pages
        # (should_zap_cows() false) keeps it.
        if details != NULL and not details.reclaim_pt and not details.even_cows:
            any_skipped[0] = True
            return 1
        swap_free(tlb.mm.machine, swp_offset(pte[0]))
        rss[MM_SWAPENTS] -= 1
        pte[0] = 0
        return 1
    # Guard markers survive every zap but munmap/exit (DROP_MARKER), and one
    # kept cancels PT reclaim of its table (R50, R54).
    if pte[0] == PTR_GUARD_MARKER and (details == NULL or not details.drop_markers):
        any_skipped[0] = True
        return 1
    # A uffd-wp marker stays in a file/shmem VMA (munmap drops it); an
    # anonymous VMA never keeps one (R50).
    if pte[0] == PTR_UFFD_WP_MARKER and vma.shmem != NULL and \
            (details == NULL or not details.drop_markers):
        any_skipped[0] = True
        return 1
    # clear_not_present_full_ptes(): no TLB entry to flush for a non-present one.
    pte[0] = 0
    return 1

cdef inline Py_ssize_t do_zap_pte_range(mmu_gather *tlb, pt_vma *vma, pteval_t *pte,
                                        uint64_t addr, uint64_t end, zap_details *details,
                                        int64_t *rss, bint *force_flush, bint *force_break,
                                        bint *any_skipped, bint *cleared) noexcept nogil:
    cdef Py_ssize_t max_nr = <Py_ssize_t>((end - addr) >> 12)
    cdef Py_ssize_t nr = 0
    # Skip the whole run of none entries in one step.
    if pte_none(pte[0]):
        nr = 1
        while nr < max_nr and pte_none(pte[nr]):
            nr += 1
        if nr == max_nr:
            return nr
        pte += nr
        addr += <uint64_t>nr << 12
    if pte_present(pte[0]):
        return nr + zap_present_ptes(tlb, vma, pte, addr, max_nr - nr, rss, force_flush,
                                     force_break, cleared,
                                     details != NULL and details.drop_markers, any_skipped)
    return nr + zap_nonpresent_ptes(tlb, vma, pte, details, rss, cleared, any_skipped)

cdef bint reclaim_pt_is_enabled(uint64_t start, uint64_t end, zap_details *details) noexcept nogil:
    # Only a zap of the whole 2 MiB span in one call may free its table (R53).
    return details != NULL and details.reclaim_pt and end - start >= PTR_PMD_SIZE

cdef inline bint _contended(pt_mm *mm) noexcept nogil:
    # Another CPU holds the PMD lock with probability mm.contention (seeded).
    mm.rng ^= mm.rng << 13
    mm.rng ^= mm.rng >> 7
    mm.rng ^= mm.rng << 17
    return (mm.rng >> 11) * (1.0 / 9007199254740992.0) < mm.contention

cdef bint try_get_and_clear_pmd(pt_mm *mm, pteval_t *pmd, pteval_t *pmdval) noexcept nogil:
    # spin_trylock() of the PMD lock while holding the PTE lock: without split
    # page-table locks both are mm->page_table_lock, which we already hold, so
    # the try fails and the slow path runs (R57).
    if not mm.split_ptlocks:
        return False
    if mm.contention > 0.0 and _contended(mm):
        return False
    if trace(mm, EV_PMD_TRYLOCK, 0, 0) > 0:
        return False               # a listener holds the PMD lock
    pmdval[0] = pmd[0]
    pmd[0] = 0
    return True

cdef void free_pte(pt_mm *mm, uint64_t addr, mmu_gather *tlb, pteval_t pmdval) noexcept nogil:
    # pte_free_tlb() + mm_dec_nr_ptes(): VmPTE drops now, the page after RCU (R12).
    cdef uint32_t slot = entry_table_slot(pmdval)
    cdef pteval_t *table = pool_table(&mm.machine.pool, slot)
    # Not something the kernel checks: the simulator's detector for a table
    # freed under a mapping, the bug the Feb-2025 fix closed. Under the 6.18
    # rules the fast path runs only when no lock was dropped, and the slow path
    # re-scans, so only the seed's rules can get here with a non-empty table.
    if mm.reclaim_mode == RECLAIM_SEED and not pte_table_empty(table):
        mm.lost_mappings += 1
        trace(mm, EV_LOST_MAPPING, addr, slot)
    tlb_adjust_range(tlb, addr, 4096)
    tlb.freed_tables = True
    tlb_remove_table(tlb, slot)
    mm.pgtables_bytes -= 4096
    trace(mm, EV_TABLE_FREE, addr, slot)

cdef bint try_to_free_pte(pt_mm *mm, pteval_t *pmd, uint64_t addr, mmu_gather *tlb) noexcept nogil:
    # The slow path (R56): with both locks held, look again at the PMD entry
    # and at all PTRS_PER_PTE entries, since another thread may have
    # refilled the table after the PTE lock was dropped.
    cdef pteval_t pmdval
    # No page-table lock is held yet: another thread may fault here.
    trace(mm, EV_RECLAIM_SLOW, addr, 0)
    pmdval = pmd[0]
    if pmd_none(pmdval) or pmd_huge_leaf(pmdval):
        mm.stats.reclaim_slow_abandoned += 1
        trace(mm, EV_RECLAIM_ABANDONED, addr, 1)
        return False
    if not pte_table_empty(entry_table(&mm.machine.pool, pmdval)):
        mm.stats.reclaim_slow_abandoned += 1
        trace(mm, EV_RECLAIM_ABANDONED, addr, 2)
        return False
    pmd[0] = 0
    trace(mm, EV_PMD_CLEAR, addr, entry_table_slot(pmdval))
    free_pte(mm, addr, tlb, pmdval)
    mm.stats.pte_tables_freed_reclaim_slow += 1
    return True

cdef uint64_t zap_pte_range(mmu_gather *tlb, pt_vma *vma, pteval_t *pmd, uint64_t addr,
                            uint64_t end, zap_details *details) noexcept nogil:
    cdef pt_mm *mm = tlb.mm
    cdef bint force_flush = False, force_break = False, any_skipped
    cdef int64_t rss[4]
    cdef pteval_t *table
    cdef pteval_t *pte
    cdef pteval_t pmdval = 0
    cdef uint64_t start = addr
    cdef bint can_reclaim_pt = mm.reclaim_mode != RECLAIM_OFF and reclaim_pt_is_enabled(start, end, details)
    # The Feb-2025 fix: the fast path only if the PTE lock was held from the
    # first entry to the last. The seed as first merged started with False
    # and took the fast path after any final pass that reached the end.
    cdef bint direct_reclaim = mm.reclaim_mode != RECLAIM_SEED
    cdef Py_ssize_t nr
    cdef int i
    cdef uint64_t pass_start, run_end
    cdef bint cleared
    while True:
        cleared = False
        rss[0] = rss[1] = rss[2] = rss[3] = 0
        table = entry_table(&mm.machine.pool, pmd[0])
        pte = table + pte_index(addr)
        pass_start = addr
        while True:
            any_skipped = False
            run_end = end
            if mm.resched_countdown >= 0:
                if mm.resched_countdown == 0:
                    # need_resched(): the lock is dropped midway (R49, R56).
                    mm.resched_countdown = -1
                    direct_reclaim = False
                    break
                if addr + (<uint64_t>mm.resched_countdown << 12) < end:
                    run_end = addr + (<uint64_t>mm.resched_countdown << 12)
            nr = do_zap_pte_range(tlb, vma, pte, addr, run_end, details, rss,
                                  &force_flush, &force_break, &any_skipped, &cleared)
            if mm.resched_countdown > 0:
                mm.resched_countdown -= nr
            if any_skipped:
                can_reclaim_pt = False
            if force_break:
                addr += <uint64_t>nr << 12
                direct_reclaim = False
                break
            pte += nr
            addr += <uint64_t>nr << 12
            if addr == end:
                break
        if mm.reclaim_mode == RECLAIM_SEED:
            direct_reclaim = False
            if can_reclaim_pt and addr == end:
                direct_reclaim = try_get_and_clear_pmd(mm, pmd, &pmdval)
        elif can_reclaim_pt and direct_reclaim and addr == end:
            direct_reclaim = try_get_and_clear_pmd(mm, pmd, &pmdval)
        if can_reclaim_pt and direct_reclaim and addr == end:
            trace(mm, EV_RECLAIM_FAST, start, entry_table_slot(pmdval))
            trace(mm, EV_PMD_CLEAR, start, entry_table_slot(pmdval))
        for i in range(NR_MM_COUNTERS):
            mm.rss[i] += rss[i]
        # tlb_remove_tlb_entry() for every entry cleared in this pass; the
        # span of the pass bounds them (the range only decides that a flush
        # is due, never its outcome).
        if cleared:
            tlb_adjust_range(tlb, pass_start, addr - pass_start)
        if force_flush:
            tlb_flush_mmu_tlbonly(tlb)
            tlb.delayed_rmap = False        # tlb_flush_rmaps()
            # PTE lock dropped here
            tlb_flush_mmu(tlb)
        if addr == end:
            break
        # The PTE lock is dropped until the retry: faults may run now.
        trace(mm, EV_ZAP_LOCK_DROPPED, addr, entry_table_slot(pmd[0]))
        if pmd[0] == 0 or pmd_huge_leaf(pmd[0]):
            break                          # pte_offset_map_lock() finds no table
        force_flush = False
        force_break = False
    if can_reclaim_pt:
        if direct_reclaim:
            free_pte(mm, start, tlb, pmdval)
            mm.stats.pte_tables_freed_reclaim_fast += 1
        else:
            try_to_free_pte(mm, pmd, start, tlb)
    return addr

cdef void unmap_page_range(mmu_gather *tlb, pt_vma *vma, uint64_t addr, uint64_t end,
                           zap_details *details) noexcept nogil:
    # zap_p4d/pud/pmd_range: only the PMD and PTE levels do any work (R47).
    cdef pt_mm *mm = tlb.mm
    cdef pt_pool *pool = &mm.machine.pool
    cdef pteval_t pude
    cdef pteval_t *p4d
    cdef pteval_t *pmd
    cdef uint64_t next, start = addr, stop = end
    trace(mm, EV_ZAP_BEGIN, start, stop)
    while addr < end:
        p4d = p4d_offset(mm, addr)
        if p4d == NULL or p4d[0] == 0:
            addr = p4d_skip(mm, addr)
            continue
        pude = entry_table(pool, p4d[0])[pud_index(addr)]
        if pude == 0:
            addr = (addr & PTR_PUD_MASK) + PTR_PUD_SIZE
            continue
        pmd = entry_table(pool, pude) + pmd_index(addr)
        next = (addr & PTR_PMD_MASK) + PTR_PMD_SIZE
        if next > end:
            next = end
        if pmd_huge_leaf(pmd[0]):
            # zap_pmd_range(): a huge PMD goes whole, or is split first (R48).
            if next - addr == PTR_PMD_SIZE:
                zap_huge_pmd(tlb, vma, pmd, addr)
                addr = next
                continue
            if split_huge_pmd(mm, vma, pmd) < 0:
                addr = next
                continue
        if pmd[0] != 0:
            zap_pte_range(tlb, vma, pmd, addr, next, details)
        addr = next
    trace(mm, EV_ZAP_END, start, stop)

# ---------------------------------------------------------------------------------
# free_pgtables() (R61-R65)

cdef void _free_pte_range(mmu_gather *tlb, pteval_t *pmd, uint64_t addr) noexcept nogil:
    cdef pteval_t e = pmd[0]
    pmd[0] = 0
    tlb_adjust_range(tlb, addr, 4096)
    tlb.freed_tables = True
    tlb_remove_table(tlb, entry_table_slot(e))
    tlb.mm.pgtables_bytes -= 4096
    tlb.mm.stats.pte_tables_freed_unmap += 1

cdef inline uint64_t _addr_end(uint64_t addr, uint64_t end, uint64_t size) noexcept nogil:
    # pmd_addr_end() and friends, with the "- 1" that lets end be 0 (the top).
    cdef uint64_t boundary = (addr + size) & ~(size - 1)
    return boundary if boundary - 1 < end - 1 else end

cdef void _free_pmd_range(mmu_gather *tlb, pteval_t *pud, uint64_t addr, uint64_t end,
                          uint64_t floor, uint64_t ceiling) noexcept nogil:
    cdef pteval_t *pmdt = entry_table(&tlb.mm.machine.pool, pud[0])
    cdef uint64_t start = addr, next
    cdef pteval_t e
    while True:
        next = _addr_end(addr, end, PTR_PMD_SIZE)
        if pmdt[pmd_index(addr)] != 0:
            _free_pte_range(tlb, &pmdt[pmd_index(addr)], addr)
        addr = next
        if addr == end:
            break
    start &= PTR_PUD_MASK
    if start < floor:
        return
    if ceiling:
        ceiling &= PTR_PUD_MASK
        if not ceiling:
            return
    if end - 1 > ceiling - 1:
        return
    e = pud[0]
    pud[0] = 0
    tlb_adjust_range(tlb, start, 4096)
    tlb.freed_tables = True
    tlb_remove_table(tlb, entry_table_slot(e))
    tlb.mm.pgtables_bytes -= 4096
    tlb.mm.stats.pmd_tables_freed += 1

cdef void _free_pud_range(mmu_gather *tlb, pteval_t *pgd, uint64_t addr, uint64_t end,
                          uint64_t floor, uint64_t ceiling) noexcept nogil:
    cdef pteval_t *pudt = entry_table(&tlb.mm.machine.pool, pgd[0])
    cdef uint64_t start = addr, next
    cdef pteval_t e
    while True:
        next = _addr_end(addr, end, PTR_PUD_SIZE)
        if pudt[pud_index(addr)] != 0:
            _free_pmd_range(tlb, &pudt[pud_index(addr)], addr, next, floor, ceiling)
        addr = next
        if addr == end:
            break
    # P4D_MASK: a P4D entry maps 512 GiB with 5 levels as with 4 (folded).
    start &= PTR_PGDIR_MASK
    if start < floor:
        return
    if ceiling:
        ceiling &= PTR_PGDIR_MASK
        if not ceiling:
            return
    if end - 1 > ceiling - 1:
        return
    e = pgd[0]
    pgd[0] = 0
    tlb_adjust_range(tlb, start, 4096)
    tlb.freed_tables = True
    tlb_remove_table(tlb, entry_table_slot(e))
    tlb.mm.pgtables_bytes -= 4096
    tlb.mm.stats.pud_tables_freed += 1

cdef void _free_p4d_range(mmu_gather *tlb, pteval_t *pgd, uint64_t addr, uint64_t end,
                          uint64_t floor, uint64_t ceiling) noexcept nogil:
    # 5-level paging only: the P4D table goes when nothing in its 256 TiB
    # region is left, as free_p4d_range() frees it, without touching
    # pgtables_bytes (__p4d_alloc() never counted it).
    cdef pteval_t *p4dt = entry_table(&tlb.mm.machine.pool, pgd[0])
    cdef uint64_t start = addr, next
    cdef pteval_t e
    while True:
        next = _addr_end(addr, end, PTR_PGDIR_SIZE)
        if p4dt[pgd_index(addr)] != 0:
            _free_pud_range(tlb, &p4dt[pgd_index(addr)], addr, next, floor, ceiling)
        addr = next
        if addr == end:
            break
    start &= PTR_PGDIR5_MASK
    if start < floor:
        return
    if ceiling:
        ceiling &= PTR_PGDIR5_MASK
        if not ceiling:
            return
    if end - 1 > ceiling - 1:
        return
    e = pgd[0]
    pgd[0] = 0
    tlb_adjust_range(tlb, start, 4096)
    tlb.freed_tables = True
    tlb_remove_table(tlb, entry_table_slot(e))
    tlb.mm.stats.p4d_tables_freed += 1

cdef void free_pgd_range(mmu_gather *tlb, uint64_t addr, uint64_t end, uint64_t floor,
                         uint64_t ceiling) noexcept nogil:
    cdef uint64_t next
    addr &= PTR_PMD_MASK
    if addr < floor:
        addr += PTR_PMD_SIZE
        if not addr:
            return
    if ceiling:
        ceiling &= PTR_PMD_MASK
        if not ceiling:
            return
    if end - 1 > ceiling - 1:
        end -= PTR_PMD_SIZE
    if addr > end - 1:
        return
    if tlb.mm.paging_levels == 5:
        while True:
            next = _addr_end(addr, end, PTR_PGDIR5_SIZE)
            if tlb.mm.pgd[pgd5_index(addr)] != 0:
                _free_p4d_range(tlb, &tlb.mm.pgd[pgd5_index(addr)], addr, next, floor, ceiling)
            addr = next
            if addr == end:
                break
        return
    while True:
        next = _addr_end(addr, end, PTR_PGDIR_SIZE)
        if tlb.mm.pgd[pgd_index(addr)] != 0:
            # free_p4d_range() frees nothing with 4-level paging (R2).
            _free_pud_range(tlb, &tlb.mm.pgd[pgd_index(addr)], addr, next, floor, ceiling)
        addr = next
        if addr == end:
            break

# ---------------------------------------------------------------------------------
# Range walks for mprotect and MADV_FREE: they visit existing PTE tables only,
# allocating and freeing none (R21, R39).

cdef pteval_t *next_pte_run(pt_mm *mm, uint64_t *paddr, uint64_t end, uint64_t *first,
                            uint64_t *last, uint64_t *span) noexcept nogil:
    """The next PTE table that [*paddr, end) has, for walks that visit existing
    tables only (walk_page_range(): mprotect, MADV_FREE, COLD, PAGEOUT): returns
    the table, its index range [first, last), the address of its slot 0, and moves
    *paddr past it. NULL when no table is left; nothing is allocated."""
    cdef uint64_t addr = paddr[0], next
    cdef pteval_t *pmd
    while addr < end:
        next = (addr & PTR_PMD_MASK) + PTR_PMD_SIZE
        if next > end:
            next = end
        pmd = walk_pmd(mm, addr)
        if pmd == NULL:
            # no PMD table here: on to the next PUD entry
            next = (addr & PTR_PUD_MASK) + PTR_PUD_SIZE
            addr = next if next < end else end
            continue
        if pmd[0] != 0 and not pmd_huge_leaf(pmd[0]):
            first[0] = pte_index(addr)
            last[0] = first[0] + ((next - addr) >> 12)
            span[0] = addr & PTR_PMD_MASK
            paddr[0] = next
            return entry_table(&mm.machine.pool, pmd[0])
        addr = next
    paddr[0] = end
    return NULL

cdef inline bint pte_needs_flush(pteval_t oldpte, pteval_t newpte) noexcept nogil:
    # x86: a non-present entry is never cached; otherwise a new PFN, a
    # cleared D/P bit or any changed permission bit needs a flush (A ignored).
    cdef pteval_t diff
    if not (oldpte & PTR_PAGE_PRESENT):
        return False
    if pte_pfn(oldpte) != pte_pfn(newpte):
        return True
    diff = (oldpte ^ newpte) & ~PTR_PFN_MASK
    # _PAGE_SOFTW1..3 (bits 9..11) and SOFTW4/SAVED_DIRTY (57, 58) are software bits.
    diff &= ~((<pteval_t>7 << 9) | (<pteval_t>3 << 57) | PTR_PAGE_ACCESSED)
    if diff & oldpte & (PTR_PAGE_DIRTY | PTR_PAGE_PRESENT):
        return True
    return (diff & (PTR_PAGE_RW | PTR_PAGE_USER | (<pteval_t>3 << 3) | PTR_PAGE_PSE | PTR_PAGE_PROTNONE
                    | (<pteval_t>1 << 12) | (<pteval_t>15 << 59) | PTR_PAGE_NX)) != 0

cdef enum:
    HUGE_MPROTECT = 0
    HUGE_FREE = 1
    HUGE_COLD = 2
    HUGE_PAGEOUT = 3

cdef bint _thp_shared(pt_page *pages, uint64_t head) noexcept nogil:
    # folio_maybe_mapped_shared(): some page of it is mapped more than once.
    cdef Py_ssize_t i
    for i in range(HPAGE_PMD_NR):
        if pages[head + i].mapcount > 1:
            return True
    return False

cdef void _huge_pmds_in_range(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end,
                              int op, uint64_t newprot, bint try_writable) noexcept nogil:
    """The PMD-level step of the range walks (change_pmd_range(), the huge
    branches of madvise_free_pte_range() and madvise_cold_or_pageout_pte_range()):
    a huge PMD that the range covers whole is handled as one entry; one it
    covers in part is split, and the PTE walk that follows does the rest (R71)."""
    cdef pt_mm *mm = tlb.mm
    cdef pt_page *pages
    cdef uint64_t addr = start, next, pfn
    cdef pteval_t *pmd
    cdef pteval_t e, new
    cdef Py_ssize_t i
    cdef bint whole, zero, file
    while addr < end:
        next = (addr & PTR_PMD_MASK) + PTR_PMD_SIZE
        if next > end:
            next = end
        pmd = walk_pmd(mm, addr)
        if pmd == NULL or not pmd_huge_leaf(pmd[0]):
            addr = next
            continue
        e = pmd[0]
        pfn = pte_pfn(e)
        zero = pfn == HUGE_ZERO_PFN
        whole = next - addr == PTR_PMD_SIZE
        pages = mm.machine.frames.pages
        file = pmd_is_file(mm.machine, e)
        if op == HUGE_MPROTECT:
            if not whole:
                split_huge_pmd(mm, vma, pmd)
            else:
                # change_huge_pmd(): pmd_modify() keeps the PFN, A, D, PSE;
                # the new protection gives only the bits outside that mask.
                new = (e & (PTR_PAGE_CHG_MASK | PTR_PAGE_PSE)) | (newprot & ~(PTR_PAGE_CHG_MASK | PTR_PAGE_PSE))
                if pte_needs_invert(e) != pte_needs_invert(new):
                    new ^= PTR_PFN_MASK
                # can_change_pmd_writable(): an exclusive anonymous THP, or a
                # dirty shared file PMD.
                if try_writable and not zero and not pte_write(new) and (new & PTR_PAGE_PRESENT) \
                        and ((pages[pfn].flags & PG_ANON_EXCLUSIVE)
                             or (file and (vma.flags & PTR_VM_SHARED) and (new & PTR_PAGE_DIRTY))):
                    new |= PTR_PAGE_RW
                pmd[0] = new
                if pte_needs_flush(e, new):
                    tlb_adjust_range(tlb, addr, PTR_PMD_SIZE)
        elif file:
            # madvise_cold_or_pageout_pte_range() on a shmem folio: left alone
            # if another mm maps it; split for a part of it (every mapping
            # goes, the PTE walk then finds the PMD none).
            if not _file_folio_shared(mm, vma.shmem, pfn):
                if not whole:
                    shmem_split_folio(mm.machine, vma.shmem, pfn)
                else:
                    if e & PTR_PAGE_ACCESSED:
                        pmd[0] = e & ~PTR_PAGE_ACCESSED
                        tlb_adjust_range(tlb, addr, PTR_PMD_SIZE)
                    if op == HUGE_PAGEOUT:
                        _shmem_folio_pageout(mm, vma.shmem, pfn)
        elif not zero and not _thp_shared(pages, pfn):
            if not whole:
                # madvise_free_huge_pmd() / the cold-pageout walk split the
                # folio for a part of it; the PTE walk then handles that part.
                split_folio(mm, vma, pfn, addr & PTR_PMD_MASK)
            elif op == HUGE_FREE:
                for i in range(HPAGE_PMD_NR):
                    pages[pfn + i].flags = (pages[pfn + i].flags & ~PG_DIRTY) | PG_LAZYFREE
                if e & (PTR_PAGE_ACCESSED | PTR_PAGE_DIRTY):
                    pmd[0] = e & ~(PTR_PAGE_ACCESSED | PTR_PAGE_DIRTY)
                    tlb_adjust_range(tlb, addr, PTR_PMD_SIZE)
            else:
                if e & PTR_PAGE_ACCESSED:
                    pmd[0] = e & ~PTR_PAGE_ACCESSED
                    tlb_adjust_range(tlb, addr, PTR_PMD_SIZE)
                if op == HUGE_PAGEOUT:
                    huge_pageout(mm, vma, pmd, addr & PTR_PMD_MASK)
        addr = next

cdef void change_protection(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end,
                            uint64_t newprot, bint try_writable) noexcept nogil:
    cdef pt_mm *mm = tlb.mm
    cdef uint64_t addr = start, i, first, last, span
    cdef pteval_t *table
    cdef pteval_t pte, old
    cdef pt_page *p
    cdef bint exclusive
    _huge_pmds_in_range(tlb, vma, start, end, HUGE_MPROTECT, newprot, try_writable)
    table = next_pte_run(mm, &addr, end, &first, &last, &span)
    while table != NULL:
        for i in range(first, last):
            old = table[i]
            if not pte_present(old):
                continue
            # pte_modify(): keep PFN, A, D, SPECIAL; take the rest from the
            # new protection (an old entry stays old); re-invert the PFN when
            # crossing PROT_NONE.
            pte = (old & PTR_PAGE_CHG_MASK) | (newprot & ~PTR_PAGE_CHG_MASK)
            if pte_needs_invert(old) != pte_needs_invert(pte):
                pte ^= PTR_PFN_MASK
            if try_writable and not pte_write(pte) and (pte & PTR_PAGE_PRESENT):
                # can_change_pte_writable(): private pages only when
                # exclusively ours, shared ones only when already dirty.
                if vma.flags & PTR_VM_SHARED:
                    exclusive = (pte & PTR_PAGE_DIRTY) != 0
                elif pte_special(pte):
                    exclusive = False
                else:
                    p = &mm.machine.frames.pages[pte_pfn(pte)]
                    exclusive = (p.flags & PG_ANON_EXCLUSIVE) != 0 and p.mapcount == 1
                if exclusive:
                    pte |= PTR_PAGE_RW
            table[i] = pte
            if pte_needs_flush(old, pte):
                tlb_adjust_range(tlb, span + (i << 12), 4096)
        table = next_pte_run(mm, &addr, end, &first, &last, &span)

cdef void madvise_free_range(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil:
    # madvise_free_pte_range(): exclusive anonymous pages become clean, old
    # and lazy-free; they stay mapped and counted (R39).
    cdef pt_mm *mm = tlb.mm
    cdef uint64_t addr = start, i, first, last, span
    cdef pteval_t *table
    cdef pteval_t pte
    cdef pt_page *p
    cdef int step
    _huge_pmds_in_range(tlb, vma, start, end, HUGE_FREE, 0, False)
    table = next_pte_run(mm, &addr, end, &first, &last, &span)
    while table != NULL:
        for i in range(first, last):
            pte = table[i]
            if is_swap_pte(pte):
                # madvise_free_pte_range(): a swap entry is dropped rather than
                # read back in (SC-30: VmSwap 4096 -> 0); nothing to flush.
                swap_free(mm.machine, swp_offset(pte))
                mm.rss[MM_SWAPENTS] -= 1
                table[i] = 0
                continue
            if not pte_present(pte) or pte_special(pte):
                continue
            p = &mm.machine.frames.pages[pte_pfn(pte)]
            if p.flags & PG_THP:
                step = large_folio_step(mm, vma, table, i, span, start, end, False)
                if step == 1:
                    continue
                pte = table[i]
                if step == 2 and (not pte_present(pte) or pte_special(pte)):
                    continue
                p = &mm.machine.frames.pages[pte_pfn(pte)]
            # Only a dirty folio is checked for other mappings; a new
            # anonymous page is not dirty (its entry is), so a clean page
            # shared with a fork child becomes lazy-free too.
            if p.kind != FRAME_ANON or ((p.flags & PG_DIRTY) and p.mapcount != 1):
                continue
            p.flags = (p.flags & ~PG_DIRTY) | PG_LAZYFREE
            if pte & (PTR_PAGE_ACCESSED | PTR_PAGE_DIRTY):
                table[i] = pte & ~(PTR_PAGE_ACCESSED | PTR_PAGE_DIRTY)
                tlb_adjust_range(tlb, span + (i << 12), 4096)
        table = next_pte_run(mm, &addr, end, &first, &last, &span)

# ---------------------------------------------------------------------------------
# The per-page access loop (touch, population): one walk per PTE table, then
# the common cases inline; everything else goes through handle_mm_fault().

cdef inline uint64_t _frames_available(pt_frames *f) noexcept nogil:
    # How many pages the free stack can hand out before max_frames is reached.
    if f.max_frames == 0:
        return f.nr_free
    if f.nr_used >= f.max_frames:
        return 0
    if f.max_frames - f.nr_used < f.nr_free:
        return f.max_frames - f.nr_used
    return f.nr_free

cdef inline void _frames_commit(pt_frames *f, uint64_t *taken) noexcept nogil:
    f.nr_free -= taken[0]
    f.nr_used += taken[0]
    taken[0] = 0

cdef void _mark_written(pt_mm *mm, uint64_t addr) noexcept nogil:
    # The store that a write fault let through: its page is no longer zero.
    cdef pteval_t *pte = walk_pte(mm, addr)
    cdef pteval_t *pmd
    if pte != NULL:
        if pte_present(pte[0]) and not pte_special(pte[0]):
            page_stored(&mm.machine.frames, pte_pfn(pte[0]))
        return
    pmd = walk_pmd(mm, addr)
    if pmd != NULL and pmd_huge_leaf(pmd[0]) and not pte_special(pmd[0]):
        page_stored(&mm.machine.frames, pte_pfn(pmd[0]) + pte_index(addr))

cdef int fault_range(pt_mm *mm, pt_vma *vma, uint64_t *paddr, uint64_t end, bint write,
                     bint gup) noexcept nogil:
    """Access every page of [*paddr, end): the CPU's loads/stores, or with gup
    the kernel's get_user_pages() (population), which faults the same way but
    leaves the A/D bits of entries that already allow the access alone."""
    cdef uint64_t addr = paddr[0], span_end
    cdef pteval_t *pte
    cdef pteval_t *pmd
    cdef pteval_t e
    cdef pteval_t set_bits = 0 if gup else PTR_PAGE_ACCESSED | (PTR_PAGE_DIRTY if write else 0)
    cdef pteval_t anon_bits = vma.page_prot | PTR_PAGE_DIRTY | PTR_PAGE_RW
    # With a fault tracepoint set, every fault goes through handle_mm_fault().
    cdef bint traced = (mm.trace_mask & (1u << EV_FAULT)) != 0
    cdef bint anon_write = write and vma.shmem == NULL and not traced
    cdef bint zero_read = not write and vma.shmem == NULL and not traced
    cdef pteval_t zero_entry = (<uint64_t>1 << 12) | vma.page_prot | PTR_PAGE_SPECIAL
    # Population (GUP) maps pages without storing to them: they stay zero.
    cdef uint16_t new_flags = PG_ANON_EXCLUSIVE | (PG_ZEROED if gup else 0)
    cdef uint64_t zero_faults = 0
    cdef pt_frames *frames = &mm.machine.frames
    cdef int64_t pfn
    cdef pt_page *p
    cdef int r = FAULT_OK
    # Counted locally and added once: stores to entries could otherwise alias
    # the mm's and the frames' 64-bit counters and force a reload per page.
    cdef int64_t new_pages = 0
    # Pages popped from the free stack and not yet taken off frames.nr_free.
    cdef uint64_t taken = 0
    cdef uint64_t avail = _frames_available(frames)
    cdef uint32_t *stack = frames.free_stack
    cdef uint64_t top = frames.nr_free
    cdef pt_page *pages = frames.pages
    while addr < end:
        span_end = (addr & PTR_PMD_MASK) + PTR_PMD_SIZE
        if span_end > end:
            span_end = end
        pte = walk_pte(mm, addr)
        if pte == NULL and not traced:
            pmd = walk_pmd(mm, addr)
            if pmd != NULL and pmd_huge_leaf(pmd[0]) and (not write or pte_write(pmd[0])):
                # One PMD maps the whole span: nothing faults in it.
                if not gup:
                    pmd[0] |= set_bits
                    if write:
                        pfn = <int64_t>pte_pfn(pmd[0])
                        while addr < span_end:
                            page_stored(frames, <uint64_t>(pfn + <int64_t>pte_index(addr)))
                            addr += 4096
                addr = span_end
                continue
        if pte == NULL:
            _frames_commit(frames, &taken)
            r = handle_mm_fault(mm, vma, addr, write)
            avail = _frames_available(frames)
            stack = frames.free_stack
            top = frames.nr_free
            pages = frames.pages
            if r != FAULT_OK:
                break
            if write and not gup:
                _mark_written(mm, addr)
            addr += 4096
            continue
        while addr < span_end:
            e = pte[0]
            if pte_present(e) and (not write or pte_write(e)):
                if not gup:
                    pte[0] = e | set_bits
                    if write and not pte_special(e):
                        page_stored(frames, pte_pfn(e))
                elif write and not pte_special(e):
                    # FOLL_TOUCH: GUP dirties the folio, not the entry.
                    pages[pte_pfn(e)].flags |= PG_DIRTY
            elif anon_write and pte_none(e):
                # do_anonymous_page(), write: a fresh exclusive page (R26).
                if taken < avail:
                    taken += 1
                    pfn = stack[top - taken]
                    p = &pages[pfn]
                    frame_set(p, 1, 1, FRAME_ANON, new_flags, 0)
                    if gup:
                        frames.nr_zeroed += 1
                else:
                    _frames_commit(frames, &taken)
                    pfn = alloc_frame(frames, FRAME_ANON)
                    avail = _frames_available(frames)
                    stack = frames.free_stack
                    top = frames.nr_free
                    pages = frames.pages
                    if pfn < 0:
                        # handle_mm_fault() counts the fault before it fails.
                        mm.stats.page_faults += 1
                        r = FAULT_OOM
                        break
                    p = &pages[pfn]
                    p.mapcount = 1
                    p.flags = new_flags
                    if gup:
                        frames.nr_zeroed += 1
                pte[0] = (<uint64_t>pfn << 12) | anon_bits
                new_pages += 1
            elif zero_read and pte_none(e):
                # do_anonymous_page(), read: the zero page (R9, R26).
                pte[0] = zero_entry
                zero_faults += 1
            else:
                mm.rss[MM_ANONPAGES] += new_pages
                mm.stats.page_faults += <uint64_t>new_pages
                new_pages = 0
                _frames_commit(frames, &taken)
                r = handle_mm_fault(mm, vma, addr, write)
                avail = _frames_available(frames)
                stack = frames.free_stack
                top = frames.nr_free
                pages = frames.pages
                if r != FAULT_OK:
                    break
                if write and not gup:
                    _mark_written(mm, addr)
            pte += 1
            addr += 4096
        if r != FAULT_OK:
            break
    _frames_commit(frames, &taken)
    mm.rss[MM_ANONPAGES] += new_pages
    mm.stats.page_faults += <uint64_t>new_pages + zero_faults
    paddr[0] = addr
    return r

cdef void madvise_pageout_range(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil:
    # madvise_cold_or_pageout_pte_range() + reclaim_pages(): pages mapped only
    # here are unmapped by try_to_unmap(). Clean lazy-free anonymous pages are
    # discarded; other anonymous pages go to swap (R41, SC-30), or, with no
    # swap device or a full one, cannot go anywhere and stay mapped. Dirty
    # shmem pages are written to swap, or without a slot stay in the page
    # cache; clean ones leave it.
    cdef pt_mm *mm = tlb.mm
    cdef uint64_t addr = start, i, first, last, span, pfn
    cdef pteval_t *table
    cdef pteval_t pte
    cdef pt_page *p
    cdef int step
    _huge_pmds_in_range(tlb, vma, start, end, HUGE_PAGEOUT, 0, False)
    table = next_pte_run(mm, &addr, end, &first, &last, &span)
    while table != NULL:
        for i in range(first, last):
            pte = table[i]
            if not pte_present(pte) or pte_special(pte):
                continue
            pfn = pte_pfn(pte)
            p = &mm.machine.frames.pages[pfn]
            if p.flags & PG_THP:
                # A large folio that is not lazy-free and clean cannot be
                # swapped out whole with no swap: shrink_folio_list() splits it,
                # unless it is mlocked (unevictable: left alone).
                step = large_folio_step(mm, vma, table, i, span, start, end,
                                        (not (p.flags & PG_LAZYFREE) or (p.flags & PG_DIRTY) != 0)
                                        and not (p.flags & PG_MLOCKED))
                if step == 1:
                    continue
                pte = table[i]
                if step == 2 and (not pte_present(pte) or pte_special(pte)):
                    continue
                pfn = pte_pfn(pte)
                p = &mm.machine.frames.pages[pfn]
            if p.mapcount != 1 or p.flags & PG_MLOCKED:
                # Shared, or unevictable: shrink_folio_list() keeps it mapped.
                continue
            if p.kind == FRAME_ANON:
                if not (p.flags & PG_LAZYFREE):
                    # shrink_folio_list(): folio_alloc_swap(), then
                    # try_to_unmap_one() leaves a swap entry.
                    try_to_swap_out(mm, &table[i], pfn)
                    continue
                if (pte & PTR_PAGE_DIRTY) or (p.flags & PG_DIRTY):
                    # written again since MADV_FREE: try_to_unmap_one() has
                    # cleared and flushed the entry before it sees the dirty
                    # page, puts it back, and the page is swap-backed again.
                    mm.stats.tlb_flushes += 1
                    p.flags = (p.flags & ~PG_LAZYFREE) | PG_DIRTY
                    continue
                mm.rss[MM_ANONPAGES] -= 1
            else:
                if pte & PTR_PAGE_DIRTY:
                    p.flags |= PG_DIRTY
                mm.rss[page_mm_counter(p.kind)] -= 1
            table[i] = 0
            # try_to_unmap_one(): ptep_clear_flush(), one flush per page in a
            # single-threaded process (nothing to batch with), not the gather's.
            mm.stats.tlb_flushes += 1
            p.mapcount -= 1
            if p.kind != FRAME_ANON and not (p.flags & PG_DIRTY):
                # A clean shmem or file page skips pageout() and leaves the
                # page cache (__remove_mapping); only dirty ones fail to be
                # written without swap and stay. Direct reclaim never writes
                # a dirty file page back: it stays cached, dirty and unmapped.
                put_page(mm.machine, pfn)
                shmem_delete(mm.machine, vma.shmem, p.index)
                continue
            put_page(mm.machine, pfn)
            if p.kind == FRAME_SHMEM:
                # pageout() of the dirty page: shmem_writeout().
                shmem_writeout(mm.machine, vma.shmem, pfn)
        table = next_pte_run(mm, &addr, end, &first, &last, &span)


# ---------------------------------------------------------------------------------
# Guard regions (mm/madvise.c: madvise_guard_install / madvise_guard_remove)

cdef int guard_install_range(pt_mm *mm, uint64_t start, uint64_t end) noexcept nogil:
    """Write a guard marker in every none entry of [start, end), allocating
    tables as a fault would. Returns 1 if a mapped page was in the way (the
    caller zaps the range and tries again), 0 when done, -1 on host OOM."""
    cdef uint64_t addr = start
    cdef pteval_t *pmd
    cdef pteval_t *table
    cdef pteval_t e
    while addr < end:
        pmd = pmd_alloc_walk(mm, addr)
        if pmd == NULL:
            return -1
        if pmd_huge_leaf(pmd[0]):
            return 1               # a THP is in the way: zapped (or split) first
        table = pte_alloc(mm, pmd)
        if table == NULL:
            return -1
        e = table[pte_index(addr)]
        if pte_none(e):
            table[pte_index(addr)] = PTR_GUARD_MARKER
        elif e != PTR_GUARD_MARKER:
            return 1
        addr += 4096
    return 0

cdef void guard_remove_range(pt_mm *mm, uint64_t start, uint64_t end) noexcept nogil:
    # Clear the markers; tables stay until a later full-span DONTNEED (R43).
    cdef uint64_t addr = start
    cdef pteval_t *pte
    while addr < end:
        pte = walk_pte(mm, addr)
        if pte != NULL and pte[0] == PTR_GUARD_MARKER:
            pte[0] = 0
        addr += 4096


cdef void madvise_cold_range(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil:
    # madvise_cold_or_pageout_pte_range(), cold: pages mapped only here lose
    # their accessed bit (and move to the inactive list, not simulated).
    cdef pt_mm *mm = tlb.mm
    cdef uint64_t addr = start, i, first, last, span
    cdef pteval_t *table
    cdef pteval_t pte
    cdef int step
    _huge_pmds_in_range(tlb, vma, start, end, HUGE_COLD, 0, False)
    table = next_pte_run(mm, &addr, end, &first, &last, &span)
    while table != NULL:
        for i in range(first, last):
            pte = table[i]
            if not pte_present(pte) or pte_special(pte):
                continue
            if mm.machine.frames.pages[pte_pfn(pte)].flags & PG_THP:
                step = large_folio_step(mm, vma, table, i, span, start, end, False)
                if step == 1:
                    continue
                pte = table[i]
                if step == 2 and (not pte_present(pte) or pte_special(pte)):
                    continue
            if mm.machine.frames.pages[pte_pfn(pte)].mapcount != 1:
                continue
            if pte & PTR_PAGE_ACCESSED:
                table[i] = pte & ~PTR_PAGE_ACCESSED
                tlb_adjust_range(tlb, span + (i << 12), 4096)
        table = next_pte_run(mm, &addr, end, &first, &last, &span)


cdef int uffd_wp_range(pt_mm *mm, pt_vma *vma, uint64_t start, uint64_t end, bint enable) noexcept nogil:
    """UFFDIO_WRITEPROTECT over [start, end) of one registered VMA (uffd_wp_range()).

    Present pages get the uffd-wp bit and lose write access; in a file/shmem
    VMA a none entry gets a uffd-wp marker, allocating its table (markers are
    how shmem remembers protection of pages it may drop). Returns -1 on host OOM.
    """
    cdef uint64_t addr = start
    cdef pteval_t *pmd
    cdef pteval_t *pte
    cdef pteval_t *table
    while addr < end:
        if enable and vma.shmem != NULL:
            pmd = pmd_alloc_walk(mm, addr)
            if pmd == NULL:
                return -1
            if pmd_is_file(mm.machine, pmd[0]):
                # pgtable_split_needed(): uffd-wp of a file VMA always splits a
                # huge PMD (cleared), and markers go in a table (change_pmd_prepare()).
                clear_file_pmd(mm, pmd)
                mm.stats.thp_split_pmd += 1
            table = pte_alloc(mm, pmd)
            if table == NULL:
                return -1
            pte = table + pte_index(addr)
        else:
            pte = walk_pte(mm, addr)
        if pte != NULL:
            if pte_present(pte[0]):
                if enable:
                    pte[0] = (pte[0] & ~PTR_PAGE_RW) | PTR_PAGE_UFFD_WP
                else:
                    pte[0] &= ~PTR_PAGE_UFFD_WP
            elif is_swap_pte(pte[0]):
                # change_pte_range(): the protection travels with the swap entry.
                if enable:
                    pte[0] |= PTR_SWP_UFFD_WP
                else:
                    pte[0] &= ~PTR_SWP_UFFD_WP
            elif enable and pte_none(pte[0]) and vma.shmem != NULL:
                pte[0] = PTR_UFFD_WP_MARKER
            elif not enable and pte[0] == PTR_UFFD_WP_MARKER:
                pte[0] = 0
        addr += 4096
    return 0

# ---------------------------------------------------------------------------------
# fork: copy_page_range() (R66-R68)

cdef inline pteval_t *_copy_alloc(pt_mm *dst, pteval_t *entry, int level, uint64_t addr) noexcept nogil:
    # pud_alloc() / pmd_alloc() / pte_alloc() in the child: a table once per
    # parent entry, shared by every VMA the range covers.
    cdef int64_t slot
    if entry[0] == 0:
        slot = pool_alloc(&dst.machine.pool, level)
        if slot < 0:
            return NULL
        entry[0] = mk_table_entry(<uint32_t>slot)
        dst.pgtables_bytes += 4096
        if level == LEVEL_PUD:
            dst.stats.pud_tables_allocated += 1
        elif level == LEVEL_PMD:
            dst.stats.pmd_tables_allocated += 1
        else:
            dst.stats.pte_tables_allocated += 1
        trace(dst, EV_TABLE_ALLOC, addr, level)
    return entry_table(&dst.machine.pool, entry[0])

cdef void copy_pte_range(pt_mm *dst, pt_mm *src, pt_vma *vma, pteval_t *dst_pte,
                         pteval_t *src_pte, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    cdef pt_page *pages = src.machine.frames.pages
    cdef bint cow = (vma.flags & (PTR_VM_SHARED | PTR_VM_MAYWRITE)) == PTR_VM_MAYWRITE
    cdef bint shared = (vma.flags & PTR_VM_SHARED) != 0
    cdef Py_ssize_t i
    cdef pteval_t e
    cdef pt_page *p
    for i in range(first, last):
        e = src_pte[i]
        if e == 0:
            continue
        if not pte_present(e):
            if is_swap_pte(e):
                # copy_nonpresent_pte(): the child's entry refers to the same
                # slot (swap count +1, child VmSwap +1), and the parent's is no
                # longer exclusive (R68); the child is not uffd-wp registered.
                swap_duplicate(src.machine, swp_offset(e))
                e &= ~PTR_SWP_EXCLUSIVE
                src_pte[i] = e
                dst_pte[i] = e & ~PTR_SWP_UFFD_WP
                dst.rss[MM_SWAPENTS] += 1
                continue
            # Guard markers go with the VMA; a uffd-wp marker only to a
            # registered child, and the child never is.
            if e == PTR_GUARD_MARKER:
                dst_pte[i] = e
            continue
        if not pte_special(e):
            # copy_present_pte(): the child shares the page; an anonymous page
            # stops being exclusive to the parent.
            p = &pages[pte_pfn(e)]
            p.refcount += 1
            p.mapcount += 1
            if p.kind == FRAME_ANON:
                p.flags &= ~PG_ANON_EXCLUSIVE
                dst.rss[MM_ANONPAGES] += 1
            else:
                dst.rss[page_mm_counter(p.kind)] += 1
        if cow and pte_write(e):
            # Both sides lose write access; the first write breaks COW.
            e &= ~PTR_PAGE_RW
            src_pte[i] = e
        if shared:
            e &= ~PTR_PAGE_DIRTY
        dst_pte[i] = e & ~(PTR_PAGE_ACCESSED | PTR_PAGE_UFFD_WP)

cdef inline uint64_t _span_end(uint64_t addr, uint64_t size, uint64_t end) noexcept nogil:
    # pgd_addr_end() and friends: the next boundary of the level, or end.
    cdef uint64_t boundary = (addr & ~(size - 1)) + size
    return boundary if boundary < end else end

cdef int copy_page_range(pt_mm *dst, pt_mm *src, pt_vma *vma) noexcept nogil:
    """Copy the parent's page tables over one VMA into the child; -1 if the
    host is out of memory. Tables are made for every parent entry that
    points to one, even a PTE table whose entries are all none (R67)."""
    cdef pt_pool *pool = &src.machine.pool
    cdef uint64_t addr = vma.start, end = vma.end, pgd_end, pud_end, pmd_end
    cdef pteval_t *src_pud
    cdef pteval_t *dst_pud
    cdef pteval_t *src_pmd
    cdef pteval_t *dst_pmd
    cdef pteval_t *dst_pte
    cdef pteval_t *src_p4d
    cdef pteval_t *dst_p4d
    while addr < end:
        # copy_p4d_range(): with 5 levels the child gets a P4D table for each
        # one the parent has over the VMA (p4d_alloc(), uncounted).
        src_p4d = p4d_offset(src, addr)
        if src_p4d == NULL or src_p4d[0] == 0:
            addr = p4d_skip(src, addr)
            continue
        pgd_end = _span_end(addr, PTR_PGDIR_SIZE, end)
        dst_p4d = p4d_alloc(dst, addr)
        if dst_p4d == NULL:
            return -1
        dst_pud = _copy_alloc(dst, dst_p4d, LEVEL_PUD, addr & PTR_PGDIR_MASK)
        if dst_pud == NULL:
            return -1
        src_pud = entry_table(pool, src_p4d[0])
        while addr < pgd_end:
            pud_end = _span_end(addr, PTR_PUD_SIZE, pgd_end)
            if src_pud[pud_index(addr)] == 0:
                addr = pud_end
                continue
            dst_pmd = _copy_alloc(dst, &dst_pud[pud_index(addr)], LEVEL_PMD, addr & PTR_PUD_MASK)
            if dst_pmd == NULL:
                return -1
            src_pmd = entry_table(pool, src_pud[pud_index(addr)])
            while addr < pud_end:
                pmd_end = _span_end(addr, PTR_PMD_SIZE, pud_end)
                if pmd_huge_leaf(src_pmd[pmd_index(addr)]):
                    copy_huge_pmd(dst, src, vma, &dst_pmd[pmd_index(addr)], &src_pmd[pmd_index(addr)])
                elif src_pmd[pmd_index(addr)] != 0:
                    dst_pte = _copy_alloc(dst, &dst_pmd[pmd_index(addr)], LEVEL_PTE,
                                          addr & PTR_PMD_MASK)
                    if dst_pte == NULL:
                        return -1
                    copy_pte_range(dst, src, vma, dst_pte,
                                   entry_table(pool, src_pmd[pmd_index(addr)]),
                                   pte_index(addr), pte_index(pmd_end - 1) + 1)
                addr = pmd_end
    return 0

# ---------------------------------------------------------------------------------
# Transparent huge pages (R13, R27, R48, R70, R71): anonymous THPs and the huge
# zero page, mapped by a PMD leaf that carries a deposited PTE table.

cdef inline pteval_t mk_pte(uint64_t pfn, uint64_t prot) noexcept nogil:
    cdef pteval_t e = (pfn << 12) | prot
    if pte_needs_invert(e):
        e ^= PTR_PFN_MASK
    return e

cdef int64_t alloc_thp(pt_frames *f) noexcept nogil:
    """512 consecutive frames, as do_huge_pmd_anonymous_page() leaves a new
    THP: each mapped once by the PMD, exclusive, dirty. -1 at max_frames
    (the fault then falls back to small pages), -2 if the host has no memory."""
    cdef uint64_t head, cap
    cdef Py_ssize_t i
    cdef pt_page *grown
    cdef pt_page *p
    if f.max_frames and f.nr_used + HPAGE_PMD_NR > f.max_frames:
        return -1
    if f.nr_blocks:
        f.nr_blocks -= 1
        head = f.block_stack[f.nr_blocks]
    else:
        if f.nr_pages + HPAGE_PMD_NR >= GATHER_HUGETLB:
            return -2
        cap = f.cap
        while f.nr_pages + HPAGE_PMD_NR > cap:
            cap *= 2
        if cap != f.cap:
            grown = <pt_page *>realloc(f.pages, cap * sizeof(pt_page))
            if grown == NULL:
                return -2
            f.pages = grown
            f.cap = cap
        head = f.nr_pages
        f.nr_pages += HPAGE_PMD_NR
    for i in range(HPAGE_PMD_NR):
        p = &f.pages[head + i]
        frame_set(p, 1, 1, FRAME_ANON, PG_ANON_EXCLUSIVE | PG_THP | PG_ZEROED, <uint32_t>i)
    f.nr_used += HPAGE_PMD_NR
    f.nr_zeroed += HPAGE_PMD_NR
    return head

cdef void put_thp(pt_machine *m, uint64_t head) noexcept nogil:
    """Drop a PMD mapping's reference on each frame of a THP. A THP that no
    one else holds goes back whole, to be a THP again."""
    cdef pt_frames *f = &m.frames
    cdef uint64_t cap
    cdef Py_ssize_t i
    cdef uint32_t *grown
    cdef bint whole = True
    for i in range(HPAGE_PMD_NR):
        f.pages[head + i].refcount -= 1
        if f.pages[head + i].refcount != 0:
            whole = False
    if whole and f.nr_blocks == f.blocks_cap:
        cap = f.blocks_cap * 2 if f.blocks_cap else 64
        grown = <uint32_t *>realloc(f.block_stack, cap * sizeof(uint32_t))
        if grown == NULL:
            whole = False
        else:
            f.block_stack = grown
            f.blocks_cap = cap
    if whole:
        for i in range(HPAGE_PMD_NR):
            if f.pages[head + i].flags & PG_ZEROED:
                f.nr_zeroed -= 1
            memset(&f.pages[head + i], 0, sizeof(pt_page))
        f.nr_used -= HPAGE_PMD_NR
        f.block_stack[f.nr_blocks] = <uint32_t>head
        f.nr_blocks += 1
        return
    # Some pages are still mapped by PTEs elsewhere: the rest go one by one.
    for i in range(HPAGE_PMD_NR):
        if f.pages[head + i].refcount == 0 and f.pages[head + i].kind != FRAME_FREE:
            _frame_release(f, &f.pages[head + i], head + i)

cdef bint thp_vma_allowable(pt_mm *mm, pt_vma *vma, uint64_t addr) noexcept nogil:
    # thp_vma_allowable_order() for a page fault on private anonymous memory:
    # the sysfs mode, the VMA's advice, no userfaultfd, and the aligned 2 MiB
    # around addr inside the VMA (R27).
    cdef uint64_t haddr = addr & PTR_PMD_MASK
    if mm.thp == 0 or vma.shmem != NULL:
        return False
    if vma.flags & (PTR_VM_NOHUGEPAGE | PTR_VM_UFFD_WP | PTR_VM_HUGETLB | PTR_VM_PFNMAP | PTR_VM_SHARED):
        return False
    if mm.thp == 1 and not (vma.flags & PTR_VM_HUGEPAGE):
        return False
    return haddr >= vma.start and haddr + PTR_PMD_SIZE <= vma.end

cdef inline void _deposit(pt_mm *mm) noexcept nogil:
    # pgtable_trans_huge_deposit() of a table from pte_alloc_one(): VmPTE +4.
    mm.pgtables_bytes += 4096
    mm.nr_deposits += 1
    mm.stats.pte_tables_allocated += 1

cdef int do_huge_pmd_anonymous_page(pt_mm *mm, pt_vma *vma, pteval_t *pmd, uint64_t addr,
                                    bint write) noexcept nogil:
    """A fault in an empty 2 MiB span of a THP-eligible VMA: FAULT_OK, or
    FAULT_FALLBACK for the small-page path."""
    cdef int64_t head
    # vmf_anon_prepare() comes first, for a read too: a VMA holding the huge
    # zero page has an anon_vma, so fork copies it (unlike the small one).
    anon_vma_prepare(mm, <uint64_t>(vma - mm.vmas))
    if not write:
        # The huge zero page: read-only, uncounted, with a deposit (R27).
        pmd[0] = mk_pte(HUGE_ZERO_PFN, vma.page_prot & ~PTR_PAGE_RW) | PTR_PAGE_PSE | PTR_PAGE_SPECIAL
        _deposit(mm)
        mm.stats.thp_zero_page += 1
        return FAULT_OK
    head = alloc_thp(&mm.machine.frames)
    if head < 0:
        return FAULT_FALLBACK
    pmd[0] = mk_pte(<uint64_t>head, vma.page_prot) | PTR_PAGE_PSE | PTR_PAGE_DIRTY | PTR_PAGE_RW
    _deposit(mm)
    mm.rss[MM_ANONPAGES] += HPAGE_PMD_NR
    mm.stats.thp_fault_alloc += 1
    return FAULT_OK

cdef int split_huge_pmd(pt_mm *mm, pt_vma *vma, pteval_t *pmd) noexcept nogil:
    """__split_huge_pmd_locked(): the deposit becomes the PTE table and takes
    512 entries for the pages the PMD mapped; VmPTE and RSS unchanged (R71).
    0, or -1 if the host is out of memory."""
    cdef pteval_t e = pmd[0]
    cdef uint64_t pfn = pte_pfn(e)
    cdef Py_ssize_t i
    cdef int64_t slot
    cdef pteval_t *table
    cdef pteval_t bits
    if pmd_is_file(mm.machine, e):
        # A file PMD is not remapped by PTEs: it is cleared, and faults map
        # its pages again (__split_huge_pmd_locked() for !vma_is_anonymous).
        clear_file_pmd(mm, pmd)
        mm.stats.thp_split_pmd += 1
        return 0
    slot = pool_alloc(&mm.machine.pool, LEVEL_PTE)
    if slot < 0:
        return -1
    table = pool_table(&mm.machine.pool, <uint32_t>slot)
    if pfn == HUGE_ZERO_PFN:
        # __split_huge_zero_page_pmd(): 512 entries of the small zero page.
        for i in range(PTRS_PER_TABLE):
            table[i] = mk_pte(ZERO_PFN_VALUE, vma.page_prot & ~PTR_PAGE_RW) | PTR_PAGE_SPECIAL \
                | (e & PTR_PAGE_UFFD_WP)
    else:
        # Write, young, dirty and uffd-wp come from the PMD; the rest from
        # the VMA's protection.
        bits = e & (PTR_PAGE_DIRTY | PTR_PAGE_UFFD_WP)
        for i in range(PTRS_PER_TABLE):
            table[i] = mk_pte(pfn + i, (vma.page_prot & ~(PTR_PAGE_RW | PTR_PAGE_ACCESSED))
                              | (e & (PTR_PAGE_RW | PTR_PAGE_ACCESSED))) | bits
    pmd[0] = mk_table_entry(<uint32_t>slot)
    mm.nr_deposits -= 1
    mm.stats.thp_split_pmd += 1
    return 0

cdef void zap_huge_pmd(mmu_gather *tlb, pt_vma *vma, pteval_t *pmd, uint64_t addr) noexcept nogil:
    """A zap that covers a huge PMD whole: the deposit is freed at once (not
    through RCU), the THP's pages wait for the gather (R48)."""
    cdef pt_mm *mm = tlb.mm
    cdef pteval_t e = pmd[0]
    cdef uint64_t pfn = pte_pfn(e)
    cdef Py_ssize_t i
    cdef pt_page *pages = mm.machine.frames.pages
    if pmd_is_file(mm.machine, e):
        # No deposit to free; the folio stays in the page cache, whose
        # reference keeps it.
        tlb_adjust_range(tlb, addr & PTR_PMD_MASK, PTR_PMD_SIZE)
        clear_file_pmd(mm, pmd)
        return
    pmd[0] = 0
    tlb_adjust_range(tlb, addr & PTR_PMD_MASK, PTR_PMD_SIZE)
    mm.pgtables_bytes -= 4096
    mm.nr_deposits -= 1
    mm.stats.thp_deposits_freed += 1
    if pfn == HUGE_ZERO_PFN:
        return
    for i in range(HPAGE_PMD_NR):
        pages[pfn + i].mapcount -= 1
    mm.rss[MM_ANONPAGES] -= HPAGE_PMD_NR
    if tlb_remove_page(tlb, pfn | GATHER_THP, False):
        tlb_flush_mmu(tlb)

cdef bint _thp_exclusive(pt_page *pages, uint64_t head) noexcept nogil:
    # Only this PMD holds the THP: every page has one reference and one mapping.
    cdef Py_ssize_t i
    if pages[head].flags & PG_ANON_EXCLUSIVE:
        return True
    for i in range(HPAGE_PMD_NR):
        if pages[head + i].refcount != 1 or pages[head + i].mapcount != 1:
            return False
    return True

cdef int huge_pmd_fault(pt_mm *mm, pt_vma *vma, pteval_t *pmd, uint64_t addr, bint write,
                        bint gup) noexcept nogil:
    """An access inside a huge PMD. A write to a write-protected one is
    do_huge_pmd_wp_page(): the huge zero page becomes a THP, an exclusive THP
    becomes writable, a shared one is split and only the page written is
    copied (R69)."""
    cdef pteval_t e = pmd[0]
    cdef uint64_t pfn = pte_pfn(e)
    cdef Py_ssize_t i
    cdef pt_page *pages
    cdef int64_t head
    cdef pteval_t *pte
    if not write or pte_write(e):
        if not gup:
            pmd[0] = e | PTR_PAGE_ACCESSED | (PTR_PAGE_DIRTY if write else 0)
        return FAULT_OK
    mm.stats.page_faults += 1
    if pmd_is_file(mm.machine, e):
        # wp_huge_pmd() of a file PMD: it is cleared, and the fault goes on
        # with the entry none (a PMD again if shared, do_cow_fault() if private).
        clear_file_pmd(mm, pmd)
        mm.stats.thp_split_pmd += 1
        return _shmem_fault(mm, vma, addr, pmd, True)
    if pfn == HUGE_ZERO_PFN:
        head = alloc_thp(&mm.machine.frames)
        if head >= 0:
            # do_huge_zero_wp_pmd(): the deposit stays.
            pmd[0] = mk_pte(<uint64_t>head, vma.page_prot) | PTR_PAGE_PSE | PTR_PAGE_DIRTY | PTR_PAGE_RW
            mm.rss[MM_ANONPAGES] += HPAGE_PMD_NR
            mm.stats.thp_fault_alloc += 1
            return FAULT_OK
    else:
        pages = mm.machine.frames.pages
        if _thp_exclusive(pages, pfn):
            for i in range(HPAGE_PMD_NR):
                pages[pfn + i].flags |= PG_ANON_EXCLUSIVE
            pmd[0] = e | PTR_PAGE_RW | PTR_PAGE_DIRTY | PTR_PAGE_ACCESSED
            return FAULT_OK
    # VM_FAULT_FALLBACK: split, then the small-page write fault.
    if split_huge_pmd(mm, vma, pmd) < 0:
        return FAULT_OOM
    pte = entry_table(&mm.machine.pool, pmd[0]) + pte_index(addr)
    return _do_wp_page(mm, vma, pte)

cdef void copy_huge_pmd(pt_mm *dst, pt_mm *src, pt_vma *vma, pteval_t *dst_pmd,
                        pteval_t *src_pmd) noexcept nogil:
    """fork of a huge PMD: the child gets its own deposit and maps the same
    THP; both lose write access (R67)."""
    cdef pteval_t e = src_pmd[0]
    cdef uint64_t pfn = pte_pfn(e)
    cdef Py_ssize_t i
    cdef pt_page *pages = src.machine.frames.pages
    if pmd_is_file(src.machine, e):
        return                     # a file PMD is not copied: the child faults it in
    _deposit(dst)
    if pfn == HUGE_ZERO_PFN:
        dst_pmd[0] = mk_pte(HUGE_ZERO_PFN, vma.page_prot & ~PTR_PAGE_RW) | PTR_PAGE_PSE | PTR_PAGE_SPECIAL
        return
    for i in range(HPAGE_PMD_NR):
        pages[pfn + i].refcount += 1
        pages[pfn + i].mapcount += 1
        pages[pfn + i].flags &= ~PG_ANON_EXCLUSIVE
    dst.rss[MM_ANONPAGES] += HPAGE_PMD_NR
    e &= ~PTR_PAGE_RW
    src_pmd[0] = e
    dst_pmd[0] = e & ~(PTR_PAGE_ACCESSED | PTR_PAGE_UFFD_WP)

cdef int split_huge_pmd_address(pt_mm *mm, pt_vma *vma, uint64_t addr) noexcept nogil:
    """split_huge_pmd_address(): before a VMA boundary moves to addr, a huge
    PMD that addr would cut is split (vma_adjust_trans_huge())."""
    cdef pteval_t *pmd
    if (addr & ~PTR_PMD_MASK) == 0:
        return 0
    pmd = walk_pmd(mm, addr)
    if pmd == NULL or not pmd_huge_leaf(pmd[0]):
        return 0
    return split_huge_pmd(mm, vma, pmd)

cdef void huge_pageout(pt_mm *mm, pt_vma *vma, pteval_t *pmd, uint64_t addr) noexcept nogil:
    """reclaim_pages() of a PMD-mapped THP: a clean lazy-free THP is
    discarded whole (its deposit freed). Any other cannot be swapped out
    whole, with no swap device or with the swap file (a device that is not a
    block device gets no order-9 slots): shrink_folio_list() splits it
    (THP_SWPOUT_FALLBACK), which leaves its pages mapped by PTEs for the PTE
    walk to swap out one by one."""
    cdef pteval_t e = pmd[0]
    cdef uint64_t pfn = pte_pfn(e)
    cdef pt_page *pages = mm.machine.frames.pages
    cdef Py_ssize_t i
    if pages[pfn].flags & PG_MLOCKED:
        return                     # unevictable: neither discarded nor split
    if (pages[pfn].flags & PG_LAZYFREE) and not (e & PTR_PAGE_DIRTY) and not (pages[pfn].flags & PG_DIRTY):
        pmd[0] = 0
        mm.stats.tlb_flushes += 1
        mm.pgtables_bytes -= 4096
        mm.nr_deposits -= 1
        mm.stats.thp_deposits_freed += 1
        mm.rss[MM_ANONPAGES] -= HPAGE_PMD_NR
        for i in range(HPAGE_PMD_NR):
            pages[pfn + i].mapcount -= 1
        put_thp(mm.machine, pfn)
        return
    split_folio(mm, vma, pfn, addr)

cdef inline bint _remap_zero_page(pt_mm *mm, pteval_t *pte, uint64_t addr, uint64_t pfn) noexcept nogil:
    """try_to_map_unused_to_zeropage() for the entry at addr: if it maps pfn (a
    page never written), it becomes the zero page (the frame is freed, RssAnon
    -4), unless the page is mlocked, or the VMA mapping it is mlocked or
    userfaultfd-armed. The VMA is the one at addr: earlier splits and moves
    may have left the THP across several. True if the entry maps pfn."""
    cdef pteval_t e = pte[0]
    cdef pt_vma *v
    cdef uint64_t vi
    if not pte_present(e) or pte_special(e) or pte_pfn(e) != pfn:
        return False
    if mm.machine.frames.pages[pfn].flags & PG_MLOCKED:
        return True                # folio_test_mlocked(): kept
    vi = find_vma(mm, addr)
    if vi >= mm.nr_vmas or mm.vmas[vi].start > addr:
        return True
    v = &mm.vmas[vi]
    if v.flags & (PTR_VM_LOCKED | PTR_VM_UFFD_WP):
        return True
    pte[0] = mk_pte(ZERO_PFN_VALUE, v.page_prot & ~PTR_PAGE_RW) | PTR_PAGE_SPECIAL | (e & PTR_PAGE_UFFD_WP)
    mm.machine.frames.pages[pfn].mapcount -= 1
    mm.rss[MM_ANONPAGES] -= 1
    put_page(mm.machine, pfn)
    return True

cdef void split_folio(pt_mm *mm, pt_vma *vma, uint64_t head, uint64_t base) noexcept nogil:
    """split_folio() of a THP that only this mm maps: it becomes 512 small pages,
    and remap_page() maps each one that was never written to the shared zero page
    instead (its frame is freed, RssAnon -4), unless the page is mlocked, or
    the VMA mapping it is mlocked or userfaultfd-armed. base is where the folio's first page is, or would be,
    mapped: by its PMD (2 MiB-aligned), or by PTEs, which mremap may have moved
    to any page offset. Pages that mremap moved apart from the rest are found
    through the VMAs sharing vma's anon_vma (the rmap walk)."""
    cdef pt_page *pages = mm.machine.frames.pages
    cdef pteval_t *pmd
    cdef pteval_t *pte
    cdef pt_page *p
    cdef pt_vma *v
    cdef Py_ssize_t i
    cdef uint64_t addr, span, end, k, j, pfn
    cdef uint64_t todo[8]
    cdef bint missing = False
    cdef uint64_t anon_vma = vma.anon_vma
    for i in range(8):
        todo[i] = 0
    if (base & ~PTR_PMD_MASK) == 0 and base < mm.task_size:
        pmd = walk_pmd(mm, base)
        if pmd != NULL and pmd_huge_leaf(pmd[0]) and pte_pfn(pmd[0]) == head:
            if split_huge_pmd(mm, vma, pmd) < 0:
                return
    for i in range(HPAGE_PMD_NR):
        p = &pages[head + i]
        if p.kind != FRAME_ANON or not (p.flags & PG_THP) or p.index != i:
            continue               # freed since, and maybe reused
        p.flags &= ~PG_THP
        if not (p.flags & PG_ZEROED) or p.mapcount == 0:
            continue
        # base + i may wrap around for a folio moved below its first page.
        addr = base + (<uint64_t>i << 12)
        pte = walk_pte(mm, addr) if addr < mm.task_size else NULL
        if pte == NULL or not _remap_zero_page(mm, pte, addr, head + i):
            todo[i >> 6] |= (<uint64_t>1) << (i & 63)
            missing = True
    if not missing or not anon_vma:
        return
    # Pages mapped elsewhere: every VMA of this anon_vma, every table it has.
    for k in range(mm.nr_vmas):
        v = &mm.vmas[k]
        if v.anon_vma != anon_vma:
            continue
        addr = v.start
        while addr < v.end:
            span = (addr & PTR_PMD_MASK) + PTR_PMD_SIZE
            end = span if span < v.end else v.end
            pte = walk_pte(mm, addr)
            if pte == NULL:
                addr = end
                continue
            while addr < end:
                if pte_present(pte[0]) and not pte_special(pte[0]):
                    pfn = pte_pfn(pte[0])
                    if head <= pfn < head + HPAGE_PMD_NR:
                        j = pfn - head
                        if todo[j >> 6] & ((<uint64_t>1) << (j & 63)):
                            todo[j >> 6] &= ~((<uint64_t>1) << (j & 63))
                            _remap_zero_page(mm, pte, addr, pfn)
                pte += 1
                addr += 4096

cdef int _file_folio_step(pt_mm *mm, pt_vma *vma, pteval_t *table, uint64_t i, uint64_t span,
                          uint64_t start, uint64_t end, bint pageout) noexcept nogil:
    # large_folio_step() for a page of a PTE-mapped shmem large folio
    # (madvise_folio_pte_batch()): one that the range maps whole here, in
    # order, is left alone unless each page is mapped just once, and a
    # PAGEOUT then reclaims it whole; any other is split, unless another mm
    # maps it.
    cdef pt_page *pages = mm.machine.frames.pages
    cdef uint64_t pfn = pte_pfn(table[i])
    cdef uint64_t n = shmem_folio_nr(&pages[pfn])
    cdef uint64_t head = pfn - (pages[pfn].index & (n - 1))
    cdef uint64_t slot0, lo, hi
    cdef bint whole = i >= pfn - head
    cdef uint64_t j
    if whole:
        slot0 = i - (pfn - head)
        lo = span + (slot0 << 12)
        hi = lo + (n << 12)
        whole = slot0 + n <= PTRS_PER_TABLE and start <= lo and hi <= end
    if whole:
        for j in range(n):
            if not pte_present(table[slot0 + j]) or pte_special(table[slot0 + j]) \
                    or pte_pfn(table[slot0 + j]) != head + j:
                whole = False
                break
    if not whole:
        if _file_folio_shared(mm, vma.shmem, head):
            return 1
        shmem_split_folio(mm.machine, vma.shmem, head)
        return 2
    if _folio_mapcount(pages, head) != <int64_t>n:
        return 1
    if pageout:
        _shmem_folio_pageout(mm, vma.shmem, head)
        return 2
    return 0

cdef int large_folio_step(pt_mm *mm, pt_vma *vma, pteval_t *table, uint64_t i, uint64_t span,
                          uint64_t start, uint64_t end, bint split_whole) noexcept nogil:
    """The large-folio step of the MADV_FREE / COLD / PAGEOUT PTE walks, for
    the entry table[i] that maps a page of a PTE-mapped THP: 0 to treat the
    page as usual, 1 to skip it (the folio is shared), 2 if the folio was
    split here (read the entry again). A folio that the range covers whole
    stays large unless split_whole (PAGEOUT with no swap splits it too)."""
    cdef pt_page *pages = mm.machine.frames.pages
    cdef uint64_t head = pte_pfn(table[i]) - pages[pte_pfn(table[i])].index
    cdef Py_ssize_t j
    cdef bint whole = start <= span and span + PTR_PMD_SIZE <= end
    if pages[pte_pfn(table[i])].kind == FRAME_SHMEM:
        return _file_folio_step(mm, vma, table, i, span, start, end, split_whole)
    if _thp_shared(pages, head):
        return 1
    if whole and not split_whole:
        for j in range(HPAGE_PMD_NR):
            if not pte_present(table[j]) or pte_special(table[j]) or pte_pfn(table[j]) != head + <uint64_t>j:
                whole = False
                break
        if whole:
            return 0
    # The folio's first page is where this one is, less its place in the folio.
    split_folio(mm, vma, head, span + (i << 12) - (<uint64_t>pages[pte_pfn(table[i])].index << 12))
    return 2

cdef int collapse_span(pt_mm *mm, pt_vma *vma, uint64_t haddr) noexcept nogil:
    """MADV_COLLAPSE of one aligned 2 MiB span of private anonymous memory
    (collapse_huge_page()): its pages are copied into a new THP, none and
    zero-page entries becoming zero-filled pages, and the PTE table turns
    into the deposit, so VmPTE stays (R72, SC-33). Unlike khugepaged, no
    max_ptes_* limit applies. 0 if the span is (now) PMD-mapped, else the
    errno this span fails with."""
    cdef pt_pool *pool = &mm.machine.pool
    cdef pteval_t *pmd = walk_pmd(mm, haddr)
    cdef pteval_t *table
    cdef pteval_t e
    cdef pt_page *pages
    cdef int64_t head
    cdef uint64_t old
    cdef int64_t present = 0
    cdef Py_ssize_t i, j
    cdef bint any_swap = False
    if pmd == NULL:
        return EINVAL              # SCAN_PMD_NULL: no PMD table; the walk goes on
    if pmd[0] == 0:
        # SCAN_PMD_NONE is not among the results madvise_collapse() goes on
        # after: the spans after this one are left alone.
        return -EINVAL
    if pmd_huge_leaf(pmd[0]):
        return 0                   # SCAN_PMD_MAPPED: a THP or the huge zero page already
    table = entry_table(pool, pmd[0])
    for i in range(PTRS_PER_TABLE):
        e = table[i]
        if is_swap_pte(e) and not (e & PTR_SWP_UFFD_WP):
            any_swap = True        # swapped in below (no max_ptes_swap for MADV_COLLAPSE)
            continue
        if not pte_none(e) and not pte_present(e):
            return EINVAL          # a marker: SCAN_PTE_NON_PRESENT / SCAN_PTE_UFFD_WP
    head = alloc_thp(&mm.machine.frames)
    if head < 0:
        return ENOMEM              # SCAN_ALLOC_HUGE_PAGE_FAIL
    if not vma.anon_vma:
        # hugepage_vma_revalidate(expect_anon): a VMA that never had an
        # anonymous page (small zero pages only) cannot take a THP.
        for j in range(HPAGE_PMD_NR):
            mm.machine.frames.pages[head + j].mapcount = 0
        put_thp(mm.machine, <uint64_t>head)
        return EINVAL              # SCAN_PAGE_ANON
    if any_swap and _collapse_swapin(mm, vma, table) < 0:
        # __collapse_huge_page_swapin() failed (no frame): SCAN_FAIL.
        for j in range(HPAGE_PMD_NR):
            mm.machine.frames.pages[head + j].mapcount = 0
        put_thp(mm.machine, <uint64_t>head)
        return EINVAL
    pages = mm.machine.frames.pages
    for i in range(PTRS_PER_TABLE):
        e = table[i]
        table[i] = 0
        if pte_none(e) or pte_special(e):
            continue
        old = pte_pfn(e)
        present += 1
        if not (pages[old].flags & PG_ZEROED):
            page_stored(&mm.machine.frames, <uint64_t>(head + i))
        pages[old].mapcount -= 1
        put_page(mm.machine, old)
    # The emptied table becomes the deposit: linked nowhere, still counted.
    pool_release(pool, entry_table_slot(pmd[0]))
    mm.nr_deposits += 1
    e = mk_pte(<uint64_t>head, vma.page_prot) | PTR_PAGE_PSE | PTR_PAGE_DIRTY
    if vma.flags & PTR_VM_WRITE:
        e |= PTR_PAGE_RW
    pmd[0] = e
    mm.rss[MM_ANONPAGES] += HPAGE_PMD_NR - present
    mm.stats.tlb_flushes += 1      # pmdp_collapse_flush()
    mm.stats.thp_collapse_alloc += 1
    return 0

# ---------------------------------------------------------------------------------
# Shmem huge folios (mm/shmem.c, mm/khugepaged.c collapse_file): 512 consecutive
# FRAME_SHMEM frames with PG_THP and order 9, each in its object's page cache at
# its index (so a page's place in the folio is index & 511). Only MADV_COLLAPSE
# makes one (shmem_enabled=never). A PMD leaf maps one with no deposited table.
# A hole punched in part of one splits it into folios of every smaller order
# (folio_split()), which faults map whole as they map the huge one by PTEs.

cdef int64_t shmem_huge_folio(pt_machine *m, pt_shmem *s, uint64_t index) noexcept nogil:
    """The first frame of the huge folio that holds index in s's page cache, or -1."""
    cdef int64_t pfn = shmem_lookup(s, index)
    cdef pt_page *p
    if pfn < 0:
        return -1
    p = &m.frames.pages[pfn]
    if p.kind != FRAME_SHMEM or shmem_folio_nr(p) != HPAGE_PMD_NR:
        return -1
    return pfn - (p.index & (HPAGE_PMD_NR - 1))

cdef void clear_file_pmd(pt_mm *mm, pteval_t *pmd) noexcept nogil:
    """__split_huge_pmd() of a PMD that maps a shmem folio: the entry just goes
    (no table is made, a file page can be faulted back); each page loses one
    mapping and reference; the folio stays huge in the page cache."""
    cdef pteval_t e = pmd[0]
    cdef uint64_t head = pte_pfn(e)
    cdef pt_page *pages = mm.machine.frames.pages
    cdef Py_ssize_t i
    pmd[0] = 0
    for i in range(HPAGE_PMD_NR):
        pages[head + i].mapcount -= 1
        if e & PTR_PAGE_DIRTY:
            pages[head + i].flags |= PG_DIRTY
        # The page cache holds its own reference: this is never the last.
        put_page(mm.machine, head + i)
    mm.rss[MM_SHMEMPAGES] -= HPAGE_PMD_NR
    mm.nr_shmem_pmds -= 1

cdef void _set_file_pmd(pt_mm *mm, pt_vma *vma, pteval_t *pmd, uint64_t head, bint write) noexcept nogil:
    # do_set_pmd() / set_huge_pmd(): vm_page_prot, dirty and writable for a
    # write; no deposit on x86.
    cdef pt_page *pages = mm.machine.frames.pages
    cdef Py_ssize_t i
    cdef pteval_t e = mk_pte(head, vma.page_prot) | PTR_PAGE_PSE
    if write:
        e |= PTR_PAGE_DIRTY | PTR_PAGE_RW
    for i in range(HPAGE_PMD_NR):
        pages[head + i].refcount += 1
        pages[head + i].mapcount += 1
        if write:
            pages[head + i].flags |= PG_DIRTY
    pmd[0] = e
    mm.rss[MM_SHMEMPAGES] += HPAGE_PMD_NR
    mm.nr_shmem_pmds += 1

cdef inline bint _file_pmd_suitable(pt_vma *vma, uint64_t addr) noexcept nogil:
    # thp_vma_suitable_order() + vma_thp_disabled(): the aligned 2 MiB around
    # addr inside the VMA, at a file offset that puts a folio's first page on
    # the 2 MiB boundary.
    cdef uint64_t haddr = addr & PTR_PMD_MASK
    if vma.flags & PTR_VM_NOHUGEPAGE:
        return False
    if (((vma.start >> 12) - vma.pgoff) & (HPAGE_PMD_NR - 1)) != 0:
        return False
    return haddr >= vma.start and haddr + PTR_PMD_SIZE <= vma.end

cdef bint _do_set_pmd(pt_mm *mm, pt_vma *vma, pteval_t *pmd, uint64_t addr, bint write) noexcept nogil:
    """A fault with the PMD entry none where the page cache holds a huge folio:
    map it with one PMD (filemap_map_pmd() for a read that fault-around finds
    a page below i_size for, finish_fault() for a fault below i_size); the
    PMD may reach past it (shmem maps PMDs across it). True if mapped."""
    cdef int64_t head
    if pmd[0] != 0 or vma.shmem == NULL or not _file_pmd_suitable(vma, addr):
        return False
    head = shmem_huge_folio(mm.machine, vma.shmem, _vma_pgoff_of(vma, addr))
    if head < 0:
        return False
    _set_file_pmd(mm, vma, pmd, <uint64_t>head, write)
    return True

cdef bint _map_whole_folio(pt_mm *mm, pt_vma *vma, pteval_t *table, uint64_t addr, uint64_t pfn,
                           bint write, bint all_none) noexcept nogil:
    """Map every none entry of the large folio that pfn belongs to, when the
    folio lies inside the VMA and inside this PTE table (filemap_map_pages()
    mapping an entire large folio; finish_fault(), which also wants all its
    entries none). True if it did."""
    cdef pt_page *pages = mm.machine.frames.pages
    cdef uint64_t head, index0, first, n, slot
    cdef Py_ssize_t i
    if pages[pfn].kind != FRAME_SHMEM:
        return False
    n = shmem_folio_nr(&pages[pfn])
    if n == 1:
        return False
    head = pfn - (pages[pfn].index & (n - 1))
    index0 = pages[head].index
    if index0 < vma.pgoff or index0 + n > vma.pgoff + ((vma.end - vma.start) >> 12):
        return False
    first = vma.start + ((index0 - vma.pgoff) << 12)
    if (first & PTR_PMD_MASK) != (addr & PTR_PMD_MASK) \
            or ((first + ((n - 1) << 12)) & PTR_PMD_MASK) != (addr & PTR_PMD_MASK):
        return False
    slot = pte_index(first)
    if all_none:
        for i in range(<Py_ssize_t>n):
            if not pte_none(table[slot + i]):
                return False
    for i in range(<Py_ssize_t>n):
        if pte_none(table[slot + i]):
            _finish_shmem_page(mm, vma, &table[slot + i], head + i, write)
    return True

cdef int64_t _shmem_rmap_one(pt_mm *mm, pt_shmem *s, uint64_t lo, uint64_t hi, bint unmap) noexcept nogil:
    """The rmap walk of one mm over the page-cache pages [lo, hi) of s: how many
    page mappings (a PMD counts 512) it has of them, and with unmap, remove
    them all (try_to_unmap() / unmap_folio(); a PMD goes whole). Private COW
    copies are anonymous pages, not theirs: they stay."""
    cdef pt_page *pages = mm.machine.frames.pages
    cdef pt_vma *v
    cdef uint64_t k, vlo, vhi, a, b, addr, end, next, pfn
    cdef pteval_t *pmd
    cdef pteval_t *pte
    cdef pteval_t e
    cdef pt_page *p
    cdef int64_t count = 0
    cdef bint cleared = False
    for k in range(mm.nr_vmas):
        v = &mm.vmas[k]
        if v.shmem != s:
            continue
        vlo = v.pgoff
        vhi = v.pgoff + ((v.end - v.start) >> 12)
        a = lo if lo > vlo else vlo
        b = hi if hi < vhi else vhi
        if a >= b:
            continue
        addr = v.start + ((a - vlo) << 12)
        end = v.start + ((b - vlo) << 12)
        while addr < end:
            next = (addr & PTR_PMD_MASK) + PTR_PMD_SIZE
            if next > end:
                next = end
            pmd = walk_pmd(mm, addr)
            if pmd == NULL or pmd[0] == 0:
                addr = next
                continue
            if pmd_huge_leaf(pmd[0]):
                if pmd_is_file(mm.machine, pmd[0]):
                    count += HPAGE_PMD_NR
                    if unmap:
                        clear_file_pmd(mm, pmd)
                        cleared = True
                addr = next
                continue
            pte = entry_table(&mm.machine.pool, pmd[0]) + pte_index(addr)
            while addr < next:
                e = pte[0]
                if pte_present(e) and not pte_special(e):
                    pfn = pte_pfn(e)
                    p = &pages[pfn]
                    if p.kind == FRAME_SHMEM and lo <= p.index < hi:
                        count += 1
                        if unmap:
                            pte[0] = 0
                            if e & PTR_PAGE_DIRTY:
                                p.flags |= PG_DIRTY
                            p.mapcount -= 1
                            mm.rss[MM_SHMEMPAGES] -= 1
                            put_page(mm.machine, pfn)
                            cleared = True
                pte += 1
                addr += 4096
    if cleared:
        mm.stats.tlb_flushes += 1
    return count

cdef void _shmem_unmap_all(pt_machine *m, pt_shmem *s, uint64_t lo, uint64_t hi) noexcept nogil:
    # Every mapping of page-cache pages [lo, hi) of s, in every mm of the machine.
    cdef int64_t k
    for k in range(m.nr_mms):
        _shmem_rmap_one(<pt_mm *>m.mms[k], s, lo, hi, True)

cdef int64_t _folio_mapcount(pt_page *pages, uint64_t head) noexcept nogil:
    cdef int64_t total = 0
    cdef uint64_t i
    for i in range(shmem_folio_nr(&pages[head])):
        total += pages[head + i].mapcount
    return total

cdef bint _file_folio_shared(pt_mm *mm, pt_shmem *s, uint64_t head) noexcept nogil:
    """folio_maybe_mapped_shared() of a shmem large folio (per-mm tracking): some
    other mm maps one of its pages. Two mappings in this mm do not count."""
    cdef pt_page *pages = mm.machine.frames.pages
    cdef uint64_t index0 = pages[head].index
    return _folio_mapcount(pages, head) != _shmem_rmap_one(mm, s, index0,
                                                          index0 + shmem_folio_nr(&pages[head]), False)

cdef inline void _set_folio_order(pt_page *pages, uint64_t first, uint64_t n, uint64_t order) noexcept nogil:
    # Frames [first, first + n) become one folio of that order (0: small pages).
    cdef uint64_t i
    for i in range(n):
        pages[first + i].flags &= ~(PG_THP | PG_ORDER_MASK)
        if order:
            pages[first + i].flags |= PG_THP | <uint16_t>(order << PG_ORDER_SHIFT)

cdef void _split_piece(pt_machine *m, pt_shmem *s, uint64_t first, uint64_t n, uint64_t order) noexcept nogil:
    # One folio that a split leaves: __folio_split() drops it from the page
    # cache if it lies at or past i_size (a huge folio may reach past it).
    cdef pt_page *pages = m.frames.pages
    cdef uint64_t index = pages[first].index, i
    _set_folio_order(pages, first, n, order)
    if index >= s.size_pages:
        for i in range(n):
            shmem_delete(m, s, index + i)

cdef void shmem_split_folio(pt_machine *m, pt_shmem *s, uint64_t head) noexcept nogil:
    """split_folio() of a shmem large folio: unmap_folio() removes every mapping
    of its pages in every mm, PMD or PTE, and a file folio gets no
    remap_page(); it becomes small folios, still in the page cache (but
    those past i_size, which leave it)."""
    cdef pt_page *pages = m.frames.pages
    cdef uint64_t index0 = pages[head].index
    cdef uint64_t n = shmem_folio_nr(&pages[head]), i
    _shmem_unmap_all(m, s, index0, index0 + n)
    for i in range(n):
        _split_piece(m, s, head + i, 1, 0)

cdef void _shmem_split_at(pt_machine *m, pt_shmem *s, uint64_t pfn) noexcept nogil:
    """try_folio_split() at page pfn (folio_split(), non-uniform): the folio is
    unmapped everywhere, then halved again and again around pfn, so pfn ends
    a small folio and the rest are folios of every order below the old one."""
    cdef pt_page *pages = m.frames.pages
    cdef uint64_t n = shmem_folio_nr(&pages[pfn])
    cdef uint64_t start = pfn - (pages[pfn].index & (n - 1)), half, order
    if n == 1:
        return
    _shmem_unmap_all(m, s, pages[start].index, pages[start].index + n)
    order = (pages[pfn].flags & PG_ORDER_MASK) >> PG_ORDER_SHIFT
    while order > 0:
        order -= 1
        half = (<uint64_t>1) << order
        if pfn < start + half:
            _split_piece(m, s, start + half, half, order)
        else:
            _split_piece(m, s, start, half, order)
            start += half
    _split_piece(m, s, pfn, 1, 0)

cdef bint _partial_folio(pt_machine *m, pt_shmem *s, uint64_t index, uint64_t first, uint64_t last,
                         uint64_t *index0, uint64_t *n) noexcept nogil:
    # The large folio at index, if the hole [first, last] covers it in part.
    cdef int64_t pfn = shmem_lookup(s, index)
    cdef pt_page *pages = m.frames.pages
    if pfn < 0 or pages[pfn].kind != FRAME_SHMEM:
        return False
    n[0] = shmem_folio_nr(&pages[pfn])
    index0[0] = pages[pfn].index & ~(n[0] - 1)
    return n[0] > 1 and not (first <= index0[0] and index0[0] + n[0] - 1 <= last)

cdef void _split_at_index(pt_machine *m, pt_shmem *s, uint64_t index) noexcept nogil:
    cdef int64_t pfn = shmem_lookup(s, index)
    if pfn >= 0 and m.frames.pages[pfn].kind == FRAME_SHMEM:
        _shmem_split_at(m, s, <uint64_t>pfn)

cdef void shmem_punch_split(pt_machine *m, pt_shmem *s, uint64_t first, uint64_t last) noexcept nogil:
    """shmem_undo_range() meets a large folio that the hole [first, last] covers
    in part: truncate_inode_partial_folio() splits it at its first page in the
    hole, then the folio holding the page after the hole at that page
    (try_folio_split()), so that every folio is inside the hole or outside
    it. A folio that it covers whole leaves the cache whole, page by page, in
    shmem_punch()."""
    cdef uint64_t index0, n
    cdef bint same = first == last
    if _partial_folio(m, s, first, first, last, &index0, &n):
        same = last < index0 + n
        _split_at_index(m, s, first)
        if last + 1 < index0 + n:
            _split_at_index(m, s, last + 1)
    if not same and _partial_folio(m, s, last, first, last, &index0, &n):
        _split_at_index(m, s, index0)
        if last + 1 < index0 + n:
            _split_at_index(m, s, last + 1)

cdef void _shmem_folio_pageout(pt_mm *mm, pt_shmem *s, uint64_t head) noexcept nogil:
    """reclaim_pages() of a shmem large folio that only this mm maps: an mlocked
    one stays. try_to_unmap() removes its mappings in every mm; with no swap
    device shmem_writeout() cannot write it, and it stays large in the page
    cache, dirty. With one, it is split and each of its pages goes as a
    small page would: a dirty one to swap, a clean one out of the cache."""
    cdef pt_machine *m = mm.machine
    cdef pt_page *pages = m.frames.pages
    cdef uint64_t index0 = pages[head].index
    cdef uint64_t n = shmem_folio_nr(&pages[head])
    cdef uint64_t i
    if pages[head].flags & PG_MLOCKED:
        return
    _shmem_unmap_all(m, s, index0, index0 + n)
    if m.swap.nr_slots == 0:
        return
    for i in range(n):
        _split_piece(m, s, head + i, 1, 0)
    for i in range(n):
        if index0 + i >= s.size_pages:
            continue               # dropped by the split
        if pages[head + i].flags & PG_DIRTY:
            shmem_writeout(m, s, head + i)
        else:
            shmem_delete(m, s, index0 + i)

cdef inline void _collapse_and_free_pmd(pt_mm *mm, pteval_t *pmd, uint64_t addr) noexcept nogil:
    # pmdp_collapse_flush() and pte_free_defer(): an emptied PTE table leaves its
    # PMD entry (VmPTE -4); a fault or a PMD mapping takes its place.
    cdef pteval_t e = pmd[0]
    pmd[0] = 0
    mm.stats.tlb_flushes += 1
    pool_release(&mm.machine.pool, entry_table_slot(e))
    mm.pgtables_bytes -= 4096
    trace(mm, EV_TABLE_FREE, addr, entry_table_slot(e))

cdef void _retract_page_tables(pt_mm *mm, pt_shmem *s, uint64_t index0) noexcept nogil:
    """retract_page_tables() in one mm: a VMA without anon_vma or uffd-wp that
    maps the folio at index0 on a 2 MiB boundary, whose PTE table there is
    empty, loses that table (VmPTE -4); the next fault maps the PMD."""
    cdef pt_vma *v
    cdef uint64_t k, addr
    cdef pteval_t *pmd
    cdef pteval_t e
    for k in range(mm.nr_vmas):
        v = &mm.vmas[k]
        if v.shmem != s or v.anon_vma or (v.flags & PTR_VM_UFFD_WP):
            continue
        if index0 < v.pgoff or index0 + HPAGE_PMD_NR > v.pgoff + ((v.end - v.start) >> 12):
            continue
        addr = v.start + ((index0 - v.pgoff) << 12)
        if addr & ~PTR_PMD_MASK:
            continue
        pmd = walk_pmd(mm, addr)
        if pmd == NULL or pmd[0] == 0 or pmd_huge_leaf(pmd[0]):
            continue
        if not pte_table_empty(entry_table(&mm.machine.pool, pmd[0])):
            continue
        _collapse_and_free_pmd(mm, pmd, addr)

cdef int _collapse_file(pt_mm *mm, pt_shmem *s, uint64_t index0, int64_t *head_out) noexcept nogil:
    """collapse_file(): a huge folio replaces the small pages of [index0,
    index0 + 512), holes filled with zero-filled pages; the old pages are
    unmapped everywhere first, swapped ones read back; then every mm's empty
    table over it is retracted. 0, -EINVAL (nothing there: SCAN_TRUNCATED,
    which ends the whole call) or ENOMEM (no frames for the folio)."""
    cdef pt_machine *m = mm.machine
    cdef pt_page *pages
    cdef int64_t head, old, off
    cdef Py_ssize_t i
    cdef int64_t k
    cdef bint any = False
    # Smaller large folios (from a hole punch) are collapsed like small pages.
    for i in range(HPAGE_PMD_NR):
        if shmem_lookup(s, index0 + <uint64_t>i) >= 0 or shmem_swap_lookup(s, index0 + <uint64_t>i) >= 0:
            any = True
            break
    if not any:
        return -EINVAL
    head = alloc_thp(&m.frames)
    if head < 0:
        return ENOMEM
    pages = m.frames.pages
    # Held by the page cache only, and dirty as collapse_file() leaves a
    # shmem folio; not an anonymous zero-filled page.
    m.frames.nr_zeroed -= HPAGE_PMD_NR
    for i in range(HPAGE_PMD_NR):
        frame_set(&pages[head + i], 1, 0, FRAME_SHMEM, PG_THP | PG_DIRTY | (9 << PG_ORDER_SHIFT),
                  <uint32_t>(index0 + <uint64_t>i))
    _shmem_unmap_all(m, s, index0, index0 + HPAGE_PMD_NR)
    for i in range(HPAGE_PMD_NR):
        old = _shm_take(s, index0 + <uint64_t>i)
        if old >= 0:
            put_page(m, <uint64_t>old)
        elif s.swapped != NULL:
            off = _shm_take(s.swapped, index0 + <uint64_t>i)
            if off >= 0:
                swap_free(m, <uint64_t>off)
        if shmem_insert(s, index0 + <uint64_t>i, <uint32_t>(head + i)) < 0:
            # Host out of memory: the pages not yet in the cache are dropped.
            _set_folio_order(pages, <uint64_t>head, HPAGE_PMD_NR, 0)
            for k in range(i, HPAGE_PMD_NR):
                put_page(m, <uint64_t>(head + k))
            return ENOMEM
    mm.stats.thp_collapse_alloc += 1
    for k in range(m.nr_mms):
        _retract_page_tables(<pt_mm *>m.mms[k], s, index0)
    head_out[0] = head
    return 0

cdef int _collapse_pte_mapped_thp(pt_mm *mm, pt_vma *vma, uint64_t haddr, uint64_t head) noexcept nogil:
    """collapse_pte_mapped_thp() in the calling mm: a PTE table whose entries
    are none or map the folio's own pages gives way to a PMD. A swap entry or
    marker there fails the span with EINVAL (SCAN_PTE_NON_PRESENT); any other
    page (a COW copy) with -EINVAL (SCAN_FAIL, which ends the whole call).
    With no table (or no PMD table) the PMD is simply installed."""
    cdef pteval_t *pmd = walk_pmd(mm, haddr)
    cdef pteval_t *table
    cdef pteval_t e
    cdef pt_page *p
    cdef Py_ssize_t i
    if pmd != NULL and pmd[0] != 0:
        if pmd_huge_leaf(pmd[0]):
            return 0               # already PMD-mapped
        table = entry_table(&mm.machine.pool, pmd[0])
        for i in range(PTRS_PER_TABLE):
            e = table[i]
            if pte_none(e):
                continue
            if not pte_present(e):
                return EINVAL
            if pte_special(e) or pte_pfn(e) != head + <uint64_t>i:
                return -EINVAL
        for i in range(PTRS_PER_TABLE):
            e = table[i]
            if pte_none(e):
                continue
            table[i] = 0
            p = &mm.machine.frames.pages[head + i]
            if e & PTR_PAGE_DIRTY:
                p.flags |= PG_DIRTY
            p.mapcount -= 1
            mm.rss[MM_SHMEMPAGES] -= 1
            put_page(mm.machine, head + i)
        _collapse_and_free_pmd(mm, pmd, haddr)
    else:
        pmd = pmd_alloc_walk(mm, haddr)
        if pmd == NULL:
            return ENOMEM
    _set_file_pmd(mm, vma, pmd, head, False)
    return 0

cdef int shmem_collapse_span(pt_mm *mm, pt_vma *vma, uint64_t haddr) noexcept nogil:
    """MADV_COLLAPSE of one aligned 2 MiB span of a shmem VMA: find or make the
    huge folio (hpage_collapse_scan_file() -> collapse_file()), then map it
    by PMD here (collapse_pte_mapped_thp()). 0 or the span's errno, negated
    for a failure that madvise_collapse() does not whitelist (it stops there)."""
    cdef uint64_t index0 = _vma_pgoff_of(vma, haddr)
    cdef int64_t head = shmem_huge_folio(mm.machine, vma.shmem, index0)
    cdef int r
    if head < 0:
        r = _collapse_file(mm, vma.shmem, index0, &head)
        if r:
            return r
    return _collapse_pte_mapped_thp(mm, vma, haddr, <uint64_t>head)

cdef int madvise_collapse(pt_mm *mm, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil:
    """madvise_collapse() over [start, end) of one VMA: the aligned spans that
    lie inside the range. 0, or the errno of the last span that failed (the
    others are collapsed all the same); ENOMEM from allocation stops at once,
    and so do an empty PMD entry under an existing PMD table and a shmem span
    with nothing cached or a foreign page mapped."""
    cdef uint64_t hstart = (start + PTR_PMD_SIZE - 1) & PTR_PMD_MASK
    cdef uint64_t hend = end & PTR_PMD_MASK
    cdef uint64_t vstart = (vma.start + PTR_PMD_SIZE - 1) & PTR_PMD_MASK
    cdef uint64_t addr
    cdef int r, last_fail = 0
    # thp_vma_allowable_order() for a forced collapse: the sysfs mode does not
    # matter, the VMA's own refusal does, and it must hold a whole span.
    if vma.flags & (PTR_VM_NOHUGEPAGE | PTR_VM_UFFD_WP | PTR_VM_HUGETLB | PTR_VM_PFNMAP):
        return EINVAL
    if vstart + PTR_PMD_SIZE > vma.end or vstart + PTR_PMD_SIZE < vstart:
        return EINVAL
    # An anonymous VMA qualifies only once it has an anon_vma (only page faults
    # and smaps are let through without one), whatever the range holds.
    if vma.shmem == NULL and not vma.anon_vma:
        return EINVAL
    # A file VMA also needs its offset to put a folio's first page on a 2 MiB
    # boundary (thp_vma_suitable_order()).
    if vma.shmem != NULL and (((vma.start >> 12) - vma.pgoff) & (HPAGE_PMD_NR - 1)) != 0:
        return EINVAL
    # A range inside one span that reaches no 2 MiB boundary: the kernel's
    # final "thps == (hend - hstart) >> HPAGE_PMD_SHIFT" compares with a
    # wrapped count, so it fails (EINVAL); one that ends on the boundary
    # it starts after (hend == hstart) collapses nothing and succeeds.
    if hend < hstart:
        return EINVAL
    addr = hstart
    while addr < hend:
        if vma.shmem != NULL:
            r = shmem_collapse_span(mm, vma, addr)
        else:
            r = collapse_span(mm, vma, addr)
        if r == ENOMEM:
            return r
        if r < 0:
            return -r              # a result outside the whitelist ends the walk
        if r:
            last_fail = r
        addr += PTR_PMD_SIZE
    return last_fail

# ---------------------------------------------------------------------------------
# Swap: one swap file, swap type 0 (mm/swapfile.c, mm/swap_state.c, mm/page_io.c).
# Pages go out only when MADV_PAGEOUT asks (there is no background reclaim), and
# the device behaves as a synchronous one: a page written out is freed at once,
# and a swap-in reads a new copy. There is no swap cache, so a slot lives exactly
# as long as the swap PTEs and shmem objects that refer to it (its count). A new
# slot is the lowest free offset; offset 0 is the swap header, never used.

cdef int swap_init(pt_machine *m, uint64_t nr_slots) noexcept nogil:
    m.swap.nr_slots = nr_slots
    m.swap.next = 1
    return 0

cdef void swap_release(pt_machine *m) noexcept nogil:
    free(m.swap.count)
    free(m.swap.flags)
    free(m.swap.heap)
    memset(&m.swap, 0, sizeof(pt_swap))

cdef bint _swap_grow(pt_swap *sw) noexcept nogil:
    # Room for offset sw.next in count, flags and the heap (which never holds
    # more than the offsets below next).
    cdef uint64_t cap = 2 * sw.cap if sw.cap else 1024
    cdef void *p
    if cap > sw.nr_slots + 1:
        cap = sw.nr_slots + 1
    p = realloc(sw.count, cap * sizeof(uint32_t))
    if p == NULL:
        return False
    sw.count = <uint32_t *>p
    p = realloc(sw.flags, cap)
    if p == NULL:
        return False
    sw.flags = <uint8_t *>p
    p = realloc(sw.heap, cap * sizeof(uint32_t))
    if p == NULL:
        return False
    sw.heap = <uint32_t *>p
    memset(sw.count + sw.cap, 0, (cap - sw.cap) * sizeof(uint32_t))
    memset(sw.flags + sw.cap, 0, cap - sw.cap)
    sw.cap = cap
    return True

cdef void _swap_heap_push(pt_swap *sw, uint32_t off) noexcept nogil:
    cdef uint64_t i = sw.nr_heap, parent
    sw.nr_heap += 1
    while i > 0:
        parent = (i - 1) >> 1
        if sw.heap[parent] <= off:
            break
        sw.heap[i] = sw.heap[parent]
        i = parent
    sw.heap[i] = off

cdef uint32_t _swap_heap_pop(pt_swap *sw) noexcept nogil:
    cdef uint32_t top = sw.heap[0], last
    cdef uint64_t i = 0, child
    sw.nr_heap -= 1
    last = sw.heap[sw.nr_heap]
    while True:
        child = 2 * i + 1
        if child >= sw.nr_heap:
            break
        if child + 1 < sw.nr_heap and sw.heap[child + 1] < sw.heap[child]:
            child += 1
        if last <= sw.heap[child]:
            break
        sw.heap[i] = sw.heap[child]
        i = child
    if sw.nr_heap:
        sw.heap[i] = last
    return top

cdef int64_t get_swap_page(pt_machine *m, uint8_t flags) noexcept nogil:
    """A slot for one page, holding one reference (folio_alloc_swap() plus
    the swap_duplicate() of the entry that will refer to it); -1 when the
    device is full or absent."""
    cdef pt_swap *sw = &m.swap
    cdef uint64_t off
    if sw.nr_heap:
        off = _swap_heap_pop(sw)
    elif sw.next <= sw.nr_slots:
        if sw.next >= sw.cap and not _swap_grow(sw):
            return -1
        off = sw.next
        sw.next += 1
    else:
        return -1
    sw.count[off] = 1
    sw.flags[off] = flags
    sw.nr_used += 1
    return <int64_t>off

cdef void swap_duplicate(pt_machine *m, uint64_t offset) noexcept nogil:
    m.swap.count[offset] += 1

cdef void swap_free(pt_machine *m, uint64_t offset) noexcept nogil:
    # free_swap_and_cache() / swap_free(): the last reference frees the slot.
    cdef pt_swap *sw = &m.swap
    sw.count[offset] -= 1
    if sw.count[offset] == 0:
        sw.flags[offset] = 0
        sw.nr_used -= 1
        _swap_heap_push(sw, <uint32_t>offset)

cdef int do_swap_page(pt_mm *mm, pt_vma *vma, pteval_t *pte, bint write) noexcept nogil:
    """A fault on a swap entry: the page is read into a new frame (RssAnon +1,
    VmSwap -1) and the entry's slot reference freed. It is exclusive when
    the entry says so (pte_swp_exclusive()) or no one else refers to the slot,
    as for a page read without the swap cache; an exclusive page is mapped
    writable if the VMA is, dirty only for a write. A write the new entry
    does not allow goes on to do_wp_page()."""
    cdef pteval_t e = pte[0]
    cdef uint64_t off = swp_offset(e)
    cdef pt_swap *sw = &mm.machine.swap
    cdef bint exclusive = (e & PTR_SWP_EXCLUSIVE) != 0 or sw.count[off] == 1
    cdef int64_t pfn = alloc_frame(&mm.machine.frames, FRAME_ANON)
    cdef pt_page *p
    cdef pteval_t entry
    if pfn < 0:
        return FAULT_OOM
    p = &mm.machine.frames.pages[pfn]
    p.mapcount = 1
    p.flags = PG_ANON_EXCLUSIVE if exclusive else 0
    if sw.flags[off] & SWP_SLOT_ZEROED:
        # No store had reached the page written out: still all zeroes.
        page_zeroed(&mm.machine.frames, <uint64_t>pfn)
    entry = (<uint64_t>pfn << 12) | vma.page_prot
    if e & PTR_SWP_UFFD_WP:
        entry |= PTR_PAGE_UFFD_WP
    if exclusive and (vma.flags & PTR_VM_WRITE) and not (
            (vma.flags & PTR_VM_UFFD_WP) and (e & PTR_SWP_UFFD_WP)):
        entry |= PTR_PAGE_RW
        if write:
            entry |= PTR_PAGE_DIRTY
            write = False
    swap_free(mm.machine, off)
    mm.rss[MM_ANONPAGES] += 1
    mm.rss[MM_SWAPENTS] -= 1
    pte[0] = entry
    if not write:
        return FAULT_OK
    if (vma.flags & PTR_VM_UFFD_WP) and (entry & PTR_PAGE_UFFD_WP):
        return FAULT_UFFD          # do_wp_page(): userfaultfd_pte_wp()
    return _do_wp_page(mm, vma, pte)

cdef bint try_to_swap_out(pt_mm *mm, pteval_t *pte, uint64_t pfn) noexcept nogil:
    """shrink_folio_list() for an anonymous page mapped once, here: a slot, then
    try_to_unmap_one() replaces the PTE by a swap entry that keeps the
    page's exclusive bit and the entry's uffd-wp bit (RssAnon -1, VmSwap +1),
    one flush for the cleared entry, and the written page is freed. False
    (nothing changed) when no slot is free."""
    cdef pt_page *p = &mm.machine.frames.pages[pfn]
    cdef int64_t off = get_swap_page(mm.machine, SWP_SLOT_ZEROED if p.flags & PG_ZEROED else 0)
    cdef pteval_t swp
    if off < 0:
        return False
    swp = swp_entry_to_pte(<uint64_t>off)
    if p.flags & PG_ANON_EXCLUSIVE:
        swp |= PTR_SWP_EXCLUSIVE
    if pte[0] & PTR_PAGE_UFFD_WP:
        swp |= PTR_SWP_UFFD_WP
    pte[0] = swp
    mm.stats.tlb_flushes += 1          # ptep_clear_flush(), as for the other unmaps
    p.mapcount -= 1
    mm.rss[MM_ANONPAGES] -= 1
    mm.rss[MM_SWAPENTS] += 1
    put_page(mm.machine, pfn)
    return True

cdef pt_shmem *_shm_table_new() noexcept nogil:
    # An empty page offset -> value hash (the swapped pages of a shmem object).
    cdef pt_shmem *t = <pt_shmem *>calloc(1, sizeof(pt_shmem))
    if t == NULL:
        return NULL
    t.cap = 16
    t.keys = <uint64_t *>calloc(t.cap, sizeof(uint64_t))
    t.vals = <uint32_t *>calloc(t.cap, sizeof(uint32_t))
    if t.keys == NULL or t.vals == NULL:
        free(t.keys)
        free(t.vals)
        free(t)
        return NULL
    return t

cdef int64_t shmem_swap_lookup(pt_shmem *s, uint64_t index) noexcept nogil:
    if s.swapped == NULL:
        return -1
    return shmem_lookup(s.swapped, index)

cdef void shmem_writeout(pt_machine *m, pt_shmem *s, uint64_t pfn) noexcept nogil:
    """shmem_writeout() of a dirty page that no PTE maps any more: with a free
    slot the page cache entry becomes a swap entry and the page is freed
    (RssShmem was already -1; VmSwap does not count shmem swap, R14);
    without one the page stays in the page cache (redirty)."""
    cdef pt_page *p = &m.frames.pages[pfn]
    cdef uint64_t index = p.index
    cdef int64_t off
    if m.swap.nr_slots == 0 or p.mapcount != 0:
        return
    off = get_swap_page(m, 0)
    if off < 0:
        return
    if s.swapped == NULL:
        s.swapped = _shm_table_new()
    if s.swapped == NULL or shmem_insert(s.swapped, index, <uint32_t>off) < 0:
        swap_free(m, <uint64_t>off)
        return
    shmem_delete(m, s, index)

cdef void _shmem_swap_punch(pt_machine *m, pt_shmem *s, uint64_t first, uint64_t last) noexcept nogil:
    # shmem_undo_range(): a hole punched over swapped pages frees their slots.
    cdef pt_shmem *t = s.swapped
    cdef uint64_t i, key
    if t == NULL:
        return
    for i in range(t.cap):
        key = t.keys[i]
        if key != SHM_EMPTY and key != SHM_DELETED and first + 1 <= key <= last + 1:
            swap_free(m, t.vals[i])
            t.keys[i] = SHM_DELETED
            t.nr_pages -= 1

cdef void _shmem_swap_evict(pt_machine *m, pt_shmem *s) noexcept nogil:
    # shmem_evict_inode(): the object goes, and its swap with it.
    cdef pt_shmem *t = s.swapped
    cdef uint64_t i
    if t == NULL:
        return
    for i in range(t.cap):
        if t.keys[i] != SHM_EMPTY and t.keys[i] != SHM_DELETED:
            swap_free(m, t.vals[i])
    free(t.keys)
    free(t.vals)
    free(t)
    s.swapped = NULL

cdef int _collapse_swapin(pt_mm *mm, pt_vma *vma, pteval_t *table) noexcept nogil:
    # __collapse_huge_page_swapin(): do_swap_page() on each swap entry of the
    # span, in address order, before the collapse copies the pages; -1 at
    # the first that fails (no frame). Not a fault of the process.
    cdef Py_ssize_t i
    for i in range(PTRS_PER_TABLE):
        if is_swap_pte(table[i]) and do_swap_page(mm, vma, &table[i], False) != FAULT_OK:
            return -1
    return 0

# hugetlb: the pool of 2 MiB pages (struct hstate, nr_overcommit_hugepages = 0),
# the hugetlbfs inodes behind MAP_HUGETLB and the reserve maps. The faults,
# zaps and reservations that use them are in _hugetlb.

cdef int hugetlb_pool_init(pt_machine *m, uint64_t nr) noexcept nogil:
    cdef pt_hstate *h = &m.hstate
    cdef uint64_t i
    if nr == 0:
        return 0
    h.pages = <pt_hpage *>calloc(nr, sizeof(pt_hpage))
    h.free_stack = <uint32_t *>malloc(nr * sizeof(uint32_t))
    if h.pages == NULL or h.free_stack == NULL:
        free(h.pages)
        free(h.free_stack)
        h.pages = NULL
        h.free_stack = NULL
        return -1
    for i in range(nr):
        h.pages[i].flags = HP_FREE
        # Page 0 on top of the free list: handed out first.
        h.free_stack[i] = <uint32_t>(nr - 1 - i)
    h.nr_huge_pages = nr
    h.free_huge_pages = nr
    return 0

cdef int64_t dequeue_huge_page(pt_machine *m) noexcept nogil:
    """dequeue_hugetlb_folio_nodemask(): the free page on top of the list, with
    one reference; -1 if none is free."""
    cdef pt_hstate *h = &m.hstate
    cdef uint32_t i
    cdef pt_hpage *p
    if h.free_huge_pages == 0:
        return -1
    h.free_huge_pages -= 1
    i = h.free_stack[h.free_huge_pages]
    p = &h.pages[i]
    p.flags = 0
    p.refcount = 1
    p.mapcount = 0
    p.file = NULL
    p.index = 0
    return i

cdef void free_huge_folio(pt_machine *m, uint64_t i) noexcept nogil:
    # The last reference is gone: back on the free list, and a consumed
    # reservation that was to be restored is restored (resv_huge_pages++).
    cdef pt_hstate *h = &m.hstate
    cdef pt_hpage *p = &h.pages[i]
    if p.flags & HP_RESTORE_RESERVE:
        h.resv_huge_pages += 1
    p.flags = HP_FREE
    p.refcount = 0
    p.mapcount = 0
    p.file = NULL
    p.index = 0
    h.free_stack[h.free_huge_pages] = <uint32_t>i
    h.free_huge_pages += 1

cdef void put_huge_page(pt_machine *m, uint64_t i) noexcept nogil:
    cdef pt_hpage *p = &m.hstate.pages[i]
    p.refcount -= 1
    if p.refcount == 0:
        free_huge_folio(m, i)

cdef int hugetlb_acct_memory(pt_machine *m, int64_t delta) noexcept nogil:
    """hugetlb_acct_memory(): take (delta > 0) or give back (delta < 0) global
    reservations; -1 when the free pages cannot cover them (no surplus pages)."""
    cdef pt_hstate *h = &m.hstate
    cdef int64_t needed
    if delta == 0:
        return 0
    if delta > 0:
        # gather_surplus_pages(): computed in unsigned arithmetic, as there.
        needed = <int64_t>(h.resv_huge_pages + <uint64_t>delta - h.free_huge_pages)
        if needed > 0:
            return -1
        h.resv_huge_pages += <uint64_t>delta
        if <uint64_t>delta > h.free_huge_pages:        # allowed_mems_nr()
            h.resv_huge_pages -= <uint64_t>delta
            return -1
        return 0
    h.resv_huge_pages -= <uint64_t>(-delta)             # return_unused_surplus_pages()
    return 0

# --- index sets ---------------------------------------------------------------------

cdef uint64_t idxset_lower(const pt_idxset *s, uint64_t key) noexcept nogil:
    """The position of the first key >= key."""
    cdef uint64_t lo = 0, hi = s.n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if s.keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo

cdef int64_t idxset_get(const pt_idxset *s, uint64_t key) noexcept nogil:
    cdef uint64_t i = idxset_lower(s, key)
    if i < s.n and s.keys[i] == key:
        return s.vals[i]
    return -1

cdef bint idxset_has(const pt_idxset *s, uint64_t key) noexcept nogil:
    cdef uint64_t i = idxset_lower(s, key)
    return i < s.n and s.keys[i] == key

cdef int _idxset_room(pt_idxset *s, uint64_t more) noexcept nogil:
    cdef uint64_t cap = s.cap if s.cap else 8
    cdef void *k
    cdef void *v
    if s.n + more <= s.cap:
        return 0
    while cap < s.n + more:
        cap *= 2
    k = realloc(s.keys, cap * sizeof(uint64_t))
    if k == NULL:
        return -1
    s.keys = <uint64_t *>k
    v = realloc(s.vals, cap * sizeof(uint32_t))
    if v == NULL:
        return -1
    s.vals = <uint32_t *>v
    s.cap = cap
    return 0

cdef int idxset_insert(pt_idxset *s, uint64_t key, uint32_t val) noexcept nogil:
    """Add key (or set its value); -1 if the host is out of memory."""
    cdef uint64_t i = idxset_lower(s, key)
    if i < s.n and s.keys[i] == key:
        s.vals[i] = val
        return 0
    if _idxset_room(s, 1) < 0:
        return -1
    memmove(&s.keys[i + 1], &s.keys[i], (s.n - i) * sizeof(uint64_t))
    memmove(&s.vals[i + 1], &s.vals[i], (s.n - i) * sizeof(uint32_t))
    s.keys[i] = key
    s.vals[i] = val
    s.n += 1
    return 0

cdef bint idxset_remove(pt_idxset *s, uint64_t key) noexcept nogil:
    cdef uint64_t i = idxset_lower(s, key)
    if i >= s.n or s.keys[i] != key:
        return False
    memmove(&s.keys[i], &s.keys[i + 1], (s.n - i - 1) * sizeof(uint64_t))
    memmove(&s.vals[i], &s.vals[i + 1], (s.n - i - 1) * sizeof(uint32_t))
    s.n -= 1
    return True

cdef uint64_t idxset_count(const pt_idxset *s, uint64_t lo, uint64_t hi) noexcept nogil:
    """region_count(): keys in [lo, hi)."""
    if hi <= lo:
        return 0
    return idxset_lower(s, hi) - idxset_lower(s, lo)

cdef int64_t idxset_add_range(pt_idxset *s, uint64_t lo, uint64_t hi) noexcept nogil:
    """region_add(): every key of [lo, hi); the number that were missing, or -1
    if the host is out of memory."""
    cdef uint64_t missing = (hi - lo) - idxset_count(s, lo, hi) if hi > lo else 0
    cdef uint64_t *keys
    cdef uint32_t *vals
    cdef uint64_t i, j, k, cap
    if missing == 0:
        return 0
    cap = s.n + missing
    keys = <uint64_t *>malloc(cap * sizeof(uint64_t))
    vals = <uint32_t *>calloc(cap, sizeof(uint32_t))
    if keys == NULL or vals == NULL:
        free(keys)
        free(vals)
        return -1
    i = idxset_lower(s, lo)
    memcpy(keys, s.keys, i * sizeof(uint64_t))
    memcpy(vals, s.vals, i * sizeof(uint32_t))
    j = i
    for k in range(lo, hi):
        if i < s.n and s.keys[i] == k:
            vals[j] = s.vals[i]
            i += 1
        keys[j] = k
        j += 1
    memcpy(&keys[j], &s.keys[i], (s.n - i) * sizeof(uint64_t))
    memcpy(&vals[j], &s.vals[i], (s.n - i) * sizeof(uint32_t))
    free(s.keys)
    free(s.vals)
    s.keys = keys
    s.vals = vals
    s.n = cap
    s.cap = cap
    return <int64_t>missing

cdef uint64_t idxset_del_range(pt_idxset *s, uint64_t lo, uint64_t hi) noexcept nogil:
    """region_del(): drop the keys of [lo, hi); how many there were."""
    cdef uint64_t a = idxset_lower(s, lo), b = idxset_lower(s, hi) if hi > lo else a
    if b <= a:
        return 0
    memmove(&s.keys[a], &s.keys[b], (s.n - b) * sizeof(uint64_t))
    memmove(&s.vals[a], &s.vals[b], (s.n - b) * sizeof(uint32_t))
    s.n -= b - a
    return b - a

cdef void idxset_free(pt_idxset *s) noexcept nogil:
    free(s.keys)
    free(s.vals)
    memset(s, 0, sizeof(pt_idxset))

# --- hugetlbfs inodes and private reserve maps ----------------------------------------

cdef pt_hfile *hfile_new(pt_machine *m, uint64_t size) noexcept nogil:
    cdef pt_hfile *f = <pt_hfile *>calloc(1, sizeof(pt_hfile))
    if f == NULL:
        return NULL
    f.users = 1
    f.size = size
    m.hstate.next_file_id += 1
    f.id = m.hstate.next_file_id
    return f

cdef void hfile_get(pt_hfile *f) noexcept nogil:
    f.users += 1

cdef void hfile_put(pt_machine *m, pt_hfile *f) noexcept nogil:
    """The last reference gone: hugetlbfs_evict_inode(). Its pages leave the page
    cache (remove_inode_hugepages() as a truncation), then the reservations the
    reserve map still holds beyond them go back (hugetlb_unreserve_pages())."""
    cdef uint64_t i, freed = 0, chg
    f.users -= 1
    if f.users > 0:
        return
    for i in range(f.cache.n):
        m.hstate.pages[f.cache.vals[i]].file = NULL
        put_huge_page(m, f.cache.vals[i])
        freed += 1
    chg = f.region.n
    hugetlb_acct_memory(m, -<int64_t>(chg - freed))
    idxset_free(&f.cache)
    idxset_free(&f.region)
    free(f)

cdef pt_resv_map *resv_map_new() noexcept nogil:
    cdef pt_resv_map *r = <pt_resv_map *>calloc(1, sizeof(pt_resv_map))
    if r != NULL:
        r.refs = 1
    return r

cdef void resv_map_put(pt_resv_map *r) noexcept nogil:
    r.refs -= 1
    if r.refs == 0:
        idxset_free(&r.consumed)
        free(r)

# mremap: move_page_tables() (mm/mremap.c). The caller has made the new VMA and
# chosen the range; entries and tables move, no page is touched, RSS is unchanged.

cdef inline uint64_t _move_extent(uint64_t old_addr, uint64_t old_end, uint64_t new_addr,
                                  uint64_t size) noexcept nogil:
    # get_extent(): up to the next boundary of this level on both sides.
    cdef uint64_t extent = ((old_addr + size) & ~(size - 1)) - old_addr
    cdef uint64_t room = ((new_addr + size) & ~(size - 1)) - new_addr
    if extent > old_end - old_addr:
        extent = old_end - old_addr
    if extent > room:
        extent = room
    return extent

cdef pteval_t *_move_alloc_pud(pt_mm *mm, uint64_t addr) noexcept nogil:
    """alloc_new_pud(): the PUD table over addr, made if missing; a pointer to
    the entry for addr's 1 GiB region. NULL if the host is out of memory."""
    cdef pt_pool *pool = &mm.machine.pool
    cdef pteval_t *pgd = p4d_alloc(mm, addr)
    cdef int64_t slot
    if pgd == NULL:
        return NULL
    if pgd[0] == 0:
        slot = pool_alloc(pool, LEVEL_PUD)
        if slot < 0:
            return NULL
        pgd[0] = mk_table_entry(<uint32_t>slot)
        mm.pgtables_bytes += 4096
        mm.stats.pud_tables_allocated += 1
        trace(mm, EV_TABLE_ALLOC, addr & PTR_PGDIR_MASK, LEVEL_PUD)
    return entry_table(pool, pgd[0]) + pud_index(addr)

cdef void _move_ptes(pt_mm *mm, pteval_t *old_pmd, pteval_t *new_pmd, uint64_t old_addr,
                     uint64_t new_addr, uint64_t extent) noexcept nogil:
    """move_ptes(): every non-none entry of [old_addr, old_addr + extent) goes
    to the same offset from new_addr, as it is (markers too). A TLB flush if a
    present entry moved."""
    cdef pt_pool *pool = &mm.machine.pool
    cdef pteval_t *src = entry_table(pool, old_pmd[0]) + pte_index(old_addr)
    cdef pteval_t *dst = entry_table(pool, new_pmd[0]) + pte_index(new_addr)
    cdef uint64_t i, n = extent >> 12
    cdef pteval_t e
    cdef bint flush = False
    for i in range(n):
        e = src[i]
        if pte_none(e):
            continue
        if pte_present(e):
            flush = True
        src[i] = 0
        dst[i] = e
    if flush:
        mm.stats.tlb_flushes += 1
        trace(mm, EV_TLB_FLUSH, old_addr, old_addr + extent)

cdef int64_t move_page_tables(pt_mm *mm, pt_vma *old_vma, uint64_t old_addr, uint64_t new_addr,
                              uint64_t old_end) noexcept nogil:
    """Move the entries of [old_addr, old_end) to new_addr. A whole PMD table
    moves when both sides are 1 GiB-aligned over a whole 1 GiB (move_normal_pud),
    a whole PTE table or huge PMD when both are 2 MiB-aligned over a whole span
    and the destination entry is none (move_normal_pmd, move_huge_pmd); else a
    huge PMD is split and the entries move one by one into a PTE table made at
    the destination. Returns the bytes done, or -1 if the host is out of memory."""
    cdef pt_pool *pool = &mm.machine.pool
    cdef uint64_t start = old_addr, extent
    cdef pteval_t *old_pud
    cdef pteval_t *new_pud
    cdef pteval_t *old_pmd
    cdef pteval_t *new_pmd
    cdef pteval_t e
    while old_addr < old_end:
        extent = _move_extent(old_addr, old_end, new_addr, PTR_PUD_SIZE)
        old_pud = p4d_offset(mm, old_addr)
        if old_pud != NULL and old_pud[0] != 0:
            old_pud = entry_table(pool, old_pud[0]) + pud_index(old_addr)
        else:
            old_pud = NULL
        if old_pud == NULL or old_pud[0] == 0:
            old_addr += extent
            new_addr += extent
            continue
        new_pud = _move_alloc_pud(mm, new_addr)
        if new_pud == NULL:
            return -1
        if extent == PTR_PUD_SIZE and new_pud[0] == 0:
            # move_normal_pud(): the 1 GiB region's PMD table itself moves.
            new_pud[0] = old_pud[0]
            old_pud[0] = 0
            mm.stats.tlb_flushes += 1
            trace(mm, EV_TLB_FLUSH, old_addr, old_addr + extent)
            old_addr += extent
            new_addr += extent
            continue
        extent = _move_extent(old_addr, old_end, new_addr, PTR_PMD_SIZE)
        old_pmd = entry_table(pool, old_pud[0]) + pmd_index(old_addr)
        if old_pmd[0] == 0:
            old_addr += extent
            new_addr += extent
            continue
        new_pmd = pmd_alloc_walk(mm, new_addr)
        if new_pmd == NULL:
            return -1
        if pmd_huge_leaf(old_pmd[0]):
            if extent == PTR_PMD_SIZE and new_pmd[0] == 0:
                # move_huge_pmd(): the huge PMD moves with its deposit.
                new_pmd[0] = old_pmd[0]
                old_pmd[0] = 0
                mm.stats.tlb_flushes += 1
                trace(mm, EV_TLB_FLUSH, old_addr, old_addr + extent)
                old_addr += extent
                new_addr += extent
                continue
            if split_huge_pmd(mm, old_vma, old_pmd) < 0:
                return -1
            if old_pmd[0] == 0:
                # A file PMD is cleared, not split into a table: nothing to move.
                old_addr += extent
                new_addr += extent
                continue
        elif extent == PTR_PMD_SIZE and new_pmd[0] == 0:
            # move_normal_pmd(): the PTE table moves; VmPTE does not change.
            new_pmd[0] = old_pmd[0]
            old_pmd[0] = 0
            mm.stats.tlb_flushes += 1
            trace(mm, EV_TLB_FLUSH, old_addr, old_addr + extent)
            old_addr += extent
            new_addr += extent
            continue
        if pte_alloc(mm, new_pmd) == NULL:
            return -1
        _move_ptes(mm, old_pmd, new_pmd, old_addr, new_addr, extent)
        old_addr += extent
        new_addr += extent
    return <int64_t>(old_addr - start)
