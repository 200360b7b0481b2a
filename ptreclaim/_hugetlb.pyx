# hugetlb mappings (MAP_HUGETLB): 2 MiB pages from the machine's pool, mapped by
# PMD leaves with no PTE table and no deposit, counted in HugetlbPages and in no
# RSS counter. Names follow mm/hugetlb.c and fs/hugetlbfs/inode.c.
#
# Reservations, as the kernel keeps them:
# * a private mapping reserves its whole range at mmap (it becomes the OWNER);
#   its reserve map records the indices whose reservation a page has consumed;
# * a shared mapping reserves the indices of its file's range that are not yet
#   reserved; the file's reserve map records the indices reserved or backed by a
#   page, and the page cache which of them have a page;
# * MAP_NORESERVE reserves nothing: each fault needs a page no one has reserved;
# * a fault that finds no page for it gets SIGBUS.

from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.errno cimport EINVAL, ENOMEM

from ptreclaim._types cimport *
from ptreclaim._pgtable cimport (
    pte_pfn, pte_write, pte_needs_invert, walk_pmd, pmd_alloc_walk, trace, anon_vma_prepare,
    tlb_gather_mmu, tlb_finish_mmu, tlb_flush_mmu, tlb_remove_page,
    hpage_pfn, hpage_index, dequeue_huge_page, put_huge_page, hugetlb_acct_memory,
    idxset_get, idxset_has, idxset_insert, idxset_remove, idxset_count, idxset_add_range,
    idxset_del_range, hfile_get, hfile_put, resv_map_new, resv_map_put,
)

cdef extern from *:
    """
    #define PTR_HT_VM_MAYSHARE   0x80ULL
    #define PTR_HT_VM_NORESERVE  0x200000ULL
    /* The top 13 bits of vm_pgoff: a byte offset that overflows loff_t. */
    #define PTR_PGOFF_LOFFT_MAX  (0x1FFFULL << 51)
    """
    const uint64_t PTR_HT_VM_MAYSHARE, PTR_HT_VM_NORESERVE, PTR_PGOFF_LOFFT_MAX

cdef enum:
    HPAGE_PAGES = 512          # pages_per_huge_page()
    MAP_CHG_REUSE = 0
    MAP_CHG_NEEDED = 1
    MAP_CHG_ENFORCED = 2

# ---------------------------------------------------------------------------------
# Helpers

cdef inline uint64_t vma_hugecache_offset(const pt_vma *vma, uint64_t addr) noexcept nogil:
    # The huge page index in the file of addr.
    return ((addr - vma.start) >> 21) + (vma.pgoff >> 9)

cdef inline bint vma_shared(const pt_vma *vma) noexcept nogil:
    return (vma.flags & PTR_HT_VM_MAYSHARE) != 0

cdef inline bint __vma_private_lock(const pt_vma *vma) noexcept nogil:
    # A private mapping that owns a reserve map (not a fork child, not MAP_NORESERVE).
    return not vma_shared(vma) and vma.resv != NULL and (vma.hresv_flags & HPAGE_RESV_OWNER) != 0

cdef inline pt_hpage *_page(pt_mm *mm, pteval_t e) noexcept nogil:
    return &mm.machine.hstate.pages[hpage_index(pte_pfn(e))]

cdef inline void _tlb_remove_huge_tlb_entry(mmu_gather *tlb, uint64_t addr) noexcept nogil:
    # tlb_remove_huge_tlb_entry(): the cleared entry's 2 MiB join the flush range.
    if addr < tlb.start:
        tlb.start = addr
    if addr + PTR_PMD_SIZE > tlb.end:
        tlb.end = addr + PTR_PMD_SIZE
    tlb.need_flush = True

cdef inline uint64_t _next_pud(uint64_t addr) noexcept nogil:
    # address |= hugetlb_mask_last_page(); address += huge_page_size: the walks
    # skip a missing PMD table to the next 1 GiB.
    return (addr & PTR_PUD_MASK) + PTR_PUD_SIZE

cdef pteval_t make_huge_pte(pt_vma *vma, uint64_t i, bint try_mkwrite) noexcept nogil:
    cdef pteval_t entry = hpage_pfn(i) << 12 | vma.page_prot
    if try_mkwrite and (vma.flags & PTR_VM_WRITE):
        entry |= PTR_PAGE_RW | PTR_PAGE_DIRTY
    else:
        entry &= ~(PTR_PAGE_RW | PTR_PAGE_DIRTY)
    return entry | PTR_PAGE_ACCESSED | PTR_PAGE_PSE

# ---------------------------------------------------------------------------------
# Reservations (hugetlb_reserve_pages(), vma_needs_reservation() and friends)

cdef bint vma_needs_reservation(pt_vma *vma, uint64_t addr) noexcept nogil:
    """True when no reservation covers the page at addr: a shared mapping's file
    has none there, or a private one has consumed it, or has no reserve map."""
    cdef uint64_t idx = vma_hugecache_offset(vma, addr)
    if vma_shared(vma):
        return not idxset_has(&vma.hfile.region, idx)
    if vma.resv == NULL:
        return True
    return idxset_has(&vma.resv.consumed, idx)

cdef void vma_commit_reservation(pt_vma *vma, uint64_t addr) noexcept nogil:
    cdef uint64_t idx = vma_hugecache_offset(vma, addr)
    if vma_shared(vma):
        idxset_insert(&vma.hfile.region, idx, 0)
    elif vma.resv != NULL:
        idxset_insert(&vma.resv.consumed, idx, 0)

cdef void vma_add_reservation(pt_vma *vma, uint64_t addr) noexcept nogil:
    # The reservation at addr exists again (a private map forgets its consumption).
    cdef uint64_t idx = vma_hugecache_offset(vma, addr)
    if vma_shared(vma):
        idxset_insert(&vma.hfile.region, idx, 0)
    elif vma.resv != NULL:
        idxset_remove(&vma.resv.consumed, idx)

cdef int hugetlb_reserve_pages(pt_machine *m, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil:
    """Reserve file indices [start, end) for the new VMA; 0 or ENOMEM."""
    cdef int64_t chg
    cdef pt_resv_map *resv = NULL
    if vma.flags & PTR_HT_VM_NORESERVE:
        return 0
    if vma_shared(vma):
        chg = <int64_t>((end - start) - idxset_count(&vma.hfile.region, start, end))
    else:
        resv = resv_map_new()
        if resv == NULL:
            return ENOMEM
        chg = <int64_t>(end - start)
    if hugetlb_acct_memory(m, chg) < 0:
        if resv != NULL:
            resv_map_put(resv)
        return ENOMEM
    if resv != NULL:
        vma.resv = resv
        vma.hresv_flags = HPAGE_RESV_OWNER
    elif chg and idxset_add_range(&vma.hfile.region, start, end) < 0:
        hugetlb_acct_memory(m, -chg)
        return ENOMEM
    return 0

cdef int hugetlbfs_file_mmap(pt_machine *m, pt_vma *vma) noexcept nogil:
    cdef int64_t vma_len = <int64_t>(vma.end - vma.start)
    cdef int64_t length
    cdef int err
    # A byte offset that would overflow loff_t, then whole huge pages only.
    if vma.pgoff & PTR_PGOFF_LOFFT_MAX:
        return EINVAL
    if vma.pgoff & 511:
        return EINVAL
    length = <int64_t>(<uint64_t>vma_len + (vma.pgoff << 12))
    if length < vma_len:
        return EINVAL
    err = hugetlb_reserve_pages(m, vma, vma.pgoff >> 9, <uint64_t>length >> 21)
    if err:
        return err
    # A writable mapping makes the file long enough for itself; a read-only one
    # past the file's end gets SIGBUS on a fault there.
    if (vma.flags & PTR_VM_WRITE) and vma.hfile.size < (<uint64_t>length >> 21):
        vma.hfile.size = <uint64_t>length >> 21
    return 0

# ---------------------------------------------------------------------------------
# VMA open / dup / close

cdef void hugetlb_vm_op_open(pt_vma *vma) noexcept nogil:
    hfile_get(vma.hfile)
    if vma.resv != NULL and (vma.hresv_flags & HPAGE_RESV_OWNER):
        vma.resv.refs += 1

cdef void hugetlb_dup_vma(pt_vma *vma) noexcept nogil:
    # A fork child shares the file; a private child has no reservations of its
    # own, and is no longer marked as having lost a page.
    hfile_get(vma.hfile)
    if not vma_shared(vma):
        vma.resv = NULL
        vma.hresv_flags = 0

cdef void hugetlb_vm_op_close(pt_machine *m, pt_vma *vma) noexcept nogil:
    """A VMA goes: the owner gives back the reservations of its range that no
    page consumed, then the file reference goes (the last one evicts the file)."""
    cdef uint64_t start, end, reserve
    if vma.resv != NULL and (vma.hresv_flags & HPAGE_RESV_OWNER):
        start = vma_hugecache_offset(vma, vma.start)
        end = vma_hugecache_offset(vma, vma.end)
        reserve = (end - start) - idxset_count(&vma.resv.consumed, start, end)
        if reserve:
            hugetlb_acct_memory(m, -<int64_t>reserve)
        resv_map_put(vma.resv)
    vma.resv = NULL
    hfile_put(m, vma.hfile)
    vma.hfile = NULL

# ---------------------------------------------------------------------------------
# Allocation (alloc_hugetlb_folio())

cdef int64_t alloc_hugetlb_folio(pt_mm *mm, pt_vma *vma, uint64_t addr, bint cow_from_owner) noexcept nogil:
    """A huge page for addr, consuming the reservation there if there is one;
    -1 when there is none to take (the fault gets SIGBUS)."""
    cdef pt_hstate *h = &mm.machine.hstate
    cdef int map_chg
    cdef bint gbl_chg
    cdef int64_t i
    if cow_from_owner:
        # A copy-on-write on top of a reserved page: the map's reservation
        # does not cover it.
        map_chg = MAP_CHG_ENFORCED
    else:
        map_chg = MAP_CHG_NEEDED if vma_needs_reservation(vma, addr) else MAP_CHG_REUSE
    gbl_chg = map_chg != MAP_CHG_REUSE
    # dequeue_hugetlb_folio_vma(): a page nobody reserved must be available.
    if gbl_chg and h.free_huge_pages - h.resv_huge_pages == 0:
        return -1
    i = dequeue_huge_page(mm.machine)
    if i < 0:
        return -1                  # no surplus pages (nr_overcommit_hugepages = 0)
    if not gbl_chg:
        h.pages[i].flags |= HP_RESTORE_RESERVE
        h.resv_huge_pages -= 1
    if map_chg != MAP_CHG_ENFORCED:
        vma_commit_reservation(vma, addr)
    return i

# ---------------------------------------------------------------------------------
# Zap (__unmap_hugepage_range())

cdef void __unmap_hugepage_range(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end,
                                 int64_t ref_page) noexcept nogil:
    cdef pt_mm *mm = tlb.mm
    cdef uint64_t addr = start
    cdef pteval_t *pmd
    cdef pteval_t e
    cdef uint64_t i
    cdef pt_hpage *p
    while addr < end:
        pmd = walk_pmd(mm, addr)
        if pmd == NULL:
            addr = _next_pud(addr)
            continue
        e = pmd[0]
        if e == 0:
            addr += PTR_PMD_SIZE
            continue
        i = hpage_index(pte_pfn(e))
        p = &mm.machine.hstate.pages[i]
        if ref_page >= 0:
            # Only the page that unmap_ref_private() takes; the VMA then gets
            # SIGBUS for every later fault.
            if <int64_t>i != ref_page:
                addr += PTR_PMD_SIZE
                continue
            vma.hresv_flags |= HPAGE_RESV_UNMAPPED
        pmd[0] = 0
        _tlb_remove_huge_tlb_entry(tlb, addr)
        if e & PTR_PAGE_DIRTY:
            p.flags |= HP_DIRTY
        mm.hugetlb_usage -= HPAGE_PAGES
        p.mapcount -= 1
        # The owner of a private mapping keeps its reservation: it comes back
        # to the pool when the page is freed, and the map forgets the page.
        if __vma_private_lock(vma) and (p.flags & HP_ANON):
            p.flags |= HP_RESTORE_RESERVE
            if vma_needs_reservation(vma, addr):
                vma_add_reservation(vma, addr)
        if tlb_remove_page(tlb, GATHER_THP | GATHER_HUGETLB | i, False):
            tlb_flush_mmu(tlb)
        if ref_page >= 0:
            break
        addr += PTR_PMD_SIZE

cdef void unmap_hugepage_range(pt_mm *mm, pt_vma *vma, uint64_t start, uint64_t end,
                               int64_t ref_page) noexcept nogil:
    # With a gather of its own.
    cdef mmu_gather tlb
    tlb_gather_mmu(&tlb, mm, False)
    __unmap_hugepage_range(&tlb, vma, start, end, ref_page)
    tlb_finish_mmu(&tlb)

cdef void unmap_ref_private(pt_mm *mm, pt_vma *vma, uint64_t i, uint64_t addr) noexcept nogil:
    """The owner of a private mapping cannot copy a page it shares with fork
    children: the page is unmapped from them (they get SIGBUS if they fault
    there again) so that the owner can keep it."""
    cdef pt_machine *m = mm.machine
    cdef uint64_t pgoff = ((addr - vma.start) >> 12) + vma.pgoff
    cdef int64_t k
    cdef uint64_t j
    cdef pt_mm *other
    cdef pt_vma *v
    for k in range(m.nr_mms):
        other = <pt_mm *>m.mms[k]
        for j in range(other.nr_vmas):
            v = &other.vmas[j]
            if v == vma or v.hfile != vma.hfile:
                continue
            if pgoff < v.pgoff or pgoff >= v.pgoff + ((v.end - v.start) >> 12):
                continue
            if vma_shared(v) or (v.hresv_flags & HPAGE_RESV_OWNER):
                continue
            if addr < v.start or addr >= v.end:
                continue
            unmap_hugepage_range(other, v, addr, addr + PTR_PMD_SIZE, <int64_t>i)

# ---------------------------------------------------------------------------------
# Faults (hugetlb_fault(), hugetlb_no_page(), hugetlb_wp())

cdef int hugetlb_wp(pt_mm *mm, pt_vma *vma, pteval_t *pmd, uint64_t haddr) noexcept nogil:
    cdef pteval_t e = pmd[0]
    cdef pt_hstate *h = &mm.machine.hstate
    cdef uint64_t old
    cdef int64_t new
    cdef int32_t before
    cdef bint cow_from_owner
    if vma_shared(vma):
        pmd[0] = e | PTR_PAGE_RW | PTR_PAGE_DIRTY | PTR_PAGE_ACCESSED
        return FAULT_OK
    old = hpage_index(pte_pfn(e))
    while True:
        # Nobody else maps it: reuse it in place.
        if h.pages[old].mapcount == 1 and (h.pages[old].flags & HP_ANON):
            h.pages[old].flags |= HP_ANON_EXCLUSIVE
            if vma.flags & PTR_VM_WRITE:
                pmd[0] = e | PTR_PAGE_RW | PTR_PAGE_DIRTY | PTR_PAGE_ACCESSED
            return FAULT_OK
        cow_from_owner = (vma.hresv_flags & HPAGE_RESV_OWNER) != 0
        new = alloc_hugetlb_folio(mm, vma, haddr, cow_from_owner)
        if new >= 0:
            break
        if not cow_from_owner:
            return FAULT_SIGBUS
        before = h.pages[old].mapcount
        unmap_ref_private(mm, vma, old, haddr)
        if pmd[0] != e:
            return FAULT_OK
        if h.pages[old].mapcount == before:
            return FAULT_SIGBUS        # nothing to take back: never loop
    # Break COW: the copy is ours alone and writable; the old page loses this mapping.
    h.pages[old].mapcount -= 1
    h.pages[new].flags = (h.pages[new].flags & ~HP_RESTORE_RESERVE) | HP_ANON | HP_ANON_EXCLUSIVE
    h.pages[new].mapcount = 1
    pmd[0] = make_huge_pte(vma, new, True)
    put_huge_page(mm.machine, old)
    return FAULT_OK

cdef int hugetlb_no_page(pt_mm *mm, uint64_t idx, pteval_t *pmd, uint64_t haddr, bint write) noexcept nogil:
    cdef pt_vma *vma = &mm.vmas[idx]
    cdef pt_hfile *f = vma.hfile
    cdef pt_hstate *h = &mm.machine.hstate
    cdef uint64_t pgidx = vma_hugecache_offset(vma, haddr)
    cdef int64_t i
    cdef bint anon = False
    if vma.hresv_flags & HPAGE_RESV_UNMAPPED:
        return FAULT_SIGBUS        # "killed due to inadequate hugepage pool"
    i = idxset_get(&f.cache, pgidx)
    if i < 0:
        if pgidx >= f.size:
            return FAULT_SIGBUS    # beyond the end of the file
        if not vma_shared(vma):
            anon_vma_prepare(mm, idx)
            vma = &mm.vmas[idx]
        i = alloc_hugetlb_folio(mm, vma, haddr, False)
        if i < 0:
            return FAULT_SIGBUS
        if vma_shared(vma):
            # hugetlb_add_to_page_cache(): the page cache holds a reference.
            if idxset_insert(&f.cache, pgidx, <uint32_t>i) < 0:
                put_huge_page(mm.machine, <uint64_t>i)
                return FAULT_OOM
            h.pages[i].refcount += 1
            h.pages[i].file = f
            h.pages[i].index = pgidx
            h.pages[i].flags = (h.pages[i].flags & ~HP_RESTORE_RESERVE) | HP_DIRTY
        else:
            anon = True
    else:
        h.pages[i].refcount += 1   # the page cache lookup's reference is the mapping's
    if anon:
        h.pages[i].flags = (h.pages[i].flags & ~HP_RESTORE_RESERVE) | HP_ANON | HP_ANON_EXCLUSIVE
        h.pages[i].mapcount = 1
    else:
        h.pages[i].mapcount += 1
    pmd[0] = make_huge_pte(vma, <uint64_t>i, (vma.flags & PTR_VM_SHARED) != 0)
    mm.hugetlb_usage += HPAGE_PAGES
    if write and not (vma.flags & PTR_VM_SHARED):
        # Do the COW without a second fault.
        return hugetlb_wp(mm, vma, pmd, haddr)
    return FAULT_OK

cdef int hugetlb_fault(pt_mm *mm, uint64_t idx, uint64_t addr, bint write) noexcept nogil:
    cdef uint64_t haddr = addr & PTR_PMD_MASK
    cdef pteval_t *pmd
    cdef pteval_t e
    trace(mm, EV_FAULT, addr, write)
    mm.stats.page_faults += 1
    pmd = pmd_alloc_walk(mm, haddr)          # huge_pte_alloc(): PUD and PMD tables
    if pmd == NULL:
        return FAULT_OOM
    e = pmd[0]
    if e == 0:
        return hugetlb_no_page(mm, idx, pmd, haddr, write)
    if write and not pte_write(e):
        return hugetlb_wp(mm, &mm.vmas[idx], pmd, haddr)
    pmd[0] = e | PTR_PAGE_ACCESSED | (PTR_PAGE_DIRTY if write else 0)
    return FAULT_OK

cdef int hugetlb_fault_range(pt_mm *mm, uint64_t idx, uint64_t *paddr, uint64_t end,
                             bint write, bint gup) noexcept nogil:
    # One huge page serves every access to its 2 MiB: the first that the entry
    # does not allow faults; the others only set A (and D) as the CPU does, or
    # as get_user_pages() does with FOLL_TOUCH (touch_pmd()).
    cdef uint64_t addr = paddr[0], span_end
    cdef pteval_t *pmd
    cdef int r
    while addr < end:
        span_end = (addr & PTR_PMD_MASK) + PTR_PMD_SIZE
        if span_end > end:
            span_end = end
        pmd = walk_pmd(mm, addr)
        if pmd == NULL or not (pmd[0] & PTR_PAGE_PRESENT) or (write and not pte_write(pmd[0])):
            r = hugetlb_fault(mm, idx, addr, write)
            if r != FAULT_OK:
                paddr[0] = addr
                return r
        else:
            pmd[0] |= PTR_PAGE_ACCESSED | (PTR_PAGE_DIRTY if write else 0)
        addr = span_end
    paddr[0] = addr
    return FAULT_OK

# ---------------------------------------------------------------------------------
# fork (copy_hugetlb_page_range())

cdef int copy_hugetlb_page_range(pt_mm *dst, pt_mm *src, pt_vma *vma) noexcept nogil:
    cdef bint cow = (vma.flags & (PTR_VM_SHARED | PTR_VM_MAYWRITE)) == PTR_VM_MAYWRITE
    cdef uint64_t addr = vma.start
    cdef pteval_t *spmd
    cdef pteval_t *dpmd
    cdef pteval_t e
    cdef pt_hpage *p
    while addr < vma.end:
        spmd = walk_pmd(src, addr)
        if spmd == NULL:
            addr = _next_pud(addr)
            continue
        # The child's tables come first, even where the parent's entry is none.
        dpmd = pmd_alloc_walk(dst, addr)
        if dpmd == NULL:
            return -1
        e = spmd[0]
        if e != 0 and dpmd[0] == 0:
            p = _page(src, e)
            p.refcount += 1
            p.mapcount += 1
            p.flags &= ~HP_ANON_EXCLUSIVE
            if cow:
                # Both sides lose write access; the first write copies.
                e &= ~PTR_PAGE_RW
                spmd[0] = e
            # The child's entry keeps A and D (no mkold for hugetlb).
            dpmd[0] = e & ~PTR_PAGE_UFFD_WP
            dst.hugetlb_usage += HPAGE_PAGES
        addr += PTR_PMD_SIZE
    return 0

# ---------------------------------------------------------------------------------
# mprotect (hugetlb_change_protection())

cdef void hugetlb_change_protection(pt_mm *mm, pt_vma *vma, uint64_t start, uint64_t end,
                                    uint64_t newprot) noexcept nogil:
    cdef uint64_t addr = start
    cdef pteval_t *pmd
    cdef pteval_t e, new
    while addr < end:
        pmd = walk_pmd(mm, addr)
        if pmd == NULL:
            addr = _next_pud(addr)
            continue
        e = pmd[0]
        if e != 0:
            # huge_pte_modify() keeps the PFN, A, D and PSE (as _PAGE_PAT).
            new = (e & (PTR_PAGE_CHG_MASK | PTR_PAGE_PSE)) | (newprot & ~PTR_PAGE_CHG_MASK) | PTR_PAGE_PSE
            if pte_needs_invert(e) != pte_needs_invert(new):
                new ^= PTR_PFN_MASK
            pmd[0] = new
        addr += PTR_PMD_SIZE
    # flush_hugetlb_tlb_range(), whatever changed.
    mm.stats.tlb_flushes += 1
    trace(mm, EV_TLB_FLUSH, start, end)

# ---------------------------------------------------------------------------------
# MADV_REMOVE (hugetlbfs_punch_hole())

cdef void hugetlbfs_punch_hole(pt_mm *mm, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil:
    """Drop the whole huge pages of the range from the file: unmapped from every
    VMA of every process first (a gather each), then out of the page cache with
    their reservation. Reserved indices without a page keep their reservation."""
    cdef pt_machine *m = mm.machine
    cdef pt_hfile *f = vma.hfile
    cdef uint64_t offset = (start - vma.start) + (vma.pgoff << 12)
    cdef uint64_t hole_start = (offset + PTR_PMD_SIZE - 1) & PTR_PMD_MASK
    cdef uint64_t hole_end = (offset + (end - start)) & PTR_PMD_MASK
    cdef uint64_t pg_start, pg_end, vlast, s, e, i, a, b
    cdef int64_t k
    cdef uint64_t j
    cdef pt_mm *other
    cdef pt_vma *v
    if hole_end <= hole_start:
        return
    pg_start = hole_start >> 12
    pg_end = hole_end >> 12
    # hugetlb_vmdelete_list()
    for k in range(m.nr_mms):
        other = <pt_mm *>m.mms[k]
        for j in range(other.nr_vmas):
            v = &other.vmas[j]
            if v.hfile != f:
                continue
            vlast = v.pgoff + ((v.end - v.start) >> 12) - 1
            if vlast < pg_start or v.pgoff > pg_end - 1:
                continue
            s = v.start + (((pg_start - v.pgoff) << 12) if v.pgoff < pg_start else 0)
            e = ((pg_end - v.pgoff) << 12) + v.start
            if e > v.end:
                e = v.end
            unmap_hugepage_range(other, v, s, e, -1)
    # remove_inode_hugepages() as a hole punch: each page takes its index out
    # of the reserve map (hugetlb_unreserve_pages(idx, idx + 1, 1): no change).
    a = hole_start >> 21
    b = hole_end >> 21
    i = 0
    while i < f.cache.n:
        if a <= f.cache.keys[i] < b:
            k = f.cache.vals[i]
            idxset_remove(&f.region, f.cache.keys[i])
            m.hstate.pages[k].file = NULL
            idxset_remove(&f.cache, f.cache.keys[i])
            put_huge_page(m, <uint64_t>k)
        else:
            i += 1

# ---------------------------------------------------------------------------------
# mremap (move_hugetlb_page_tables(), fixup_hugetlb_reservations())

cdef int64_t move_hugetlb_page_tables(pt_mm *mm, pt_vma *vma, uint64_t old_addr, uint64_t new_addr,
                                      uint64_t length) noexcept nogil:
    """Move the huge PMDs of [old_addr, old_addr + length) to new_addr, one by one,
    into PUD and PMD tables made at the destination as a fault would. Returns the
    bytes done: less than length if the host is out of memory."""
    cdef uint64_t old_end = old_addr + length
    cdef uint64_t last_addr_mask = PTR_PUD_SIZE - PTR_PMD_SIZE
    cdef pteval_t *src
    cdef pteval_t *dst
    while old_addr < old_end:
        src = walk_pmd(mm, old_addr)
        if src == NULL:
            # No PMD table: the walk skips to the next 1 GiB of the old range and
            # moves the new address by the same mask, not by the same distance.
            # When the two addresses sit at different offsets in their 1 GiB,
            # the pages after the skip land at the wrong place (measured on 6.18).
            old_addr |= last_addr_mask
            new_addr |= last_addr_mask
        elif src[0] != 0:
            dst = pmd_alloc_walk(mm, new_addr)      # huge_pte_alloc()
            if dst == NULL:
                return <int64_t>(length + old_addr - old_end)
            # move_huge_pte(): the entry moves as it is.
            dst[0] = src[0]
            src[0] = 0
        old_addr += PTR_PMD_SIZE
        new_addr += PTR_PMD_SIZE
    # flush_hugetlb_tlb_range() of the old range, whatever moved.
    mm.stats.tlb_flushes += 1
    trace(mm, EV_TLB_FLUSH, old_end - length, old_end)
    return <int64_t>(length + old_addr - old_end)

cdef bint hugetlb_move_hits_pmd_share(pt_mm *mm, pt_vma *vma, uint64_t old_addr, uint64_t new_addr,
                                      uint64_t length) noexcept nogil:
    """Whether move_hugetlb_page_tables() would call huge_pmd_share() for the copy
    of a shared mapping: a page lands in a 1 GiB that the new range covers whole
    and that has no PMD table yet. huge_pmd_share() then waits for the i_mmap_rwsem
    that the move itself holds, and the process hangs for good (measured on 6.18:
    a 2 GiB shared mapping moved to 512 MiB past a 1 GiB boundary)."""
    cdef uint64_t old_end = old_addr + length
    cdef uint64_t new_start = new_addr, new_end = new_addr + length, g
    cdef uint64_t last_addr_mask = PTR_PUD_SIZE - PTR_PMD_SIZE
    cdef pteval_t *src
    if not vma_shared(vma):
        return False
    while old_addr < old_end:
        src = walk_pmd(mm, old_addr)
        if src == NULL:
            old_addr |= last_addr_mask
            new_addr |= last_addr_mask
        elif src[0] != 0:
            g = new_addr & PTR_PUD_MASK
            if g >= new_start and g + PTR_PUD_SIZE <= new_end and walk_pmd(mm, new_addr) == NULL:
                return True
        old_addr += PTR_PMD_SIZE
        new_addr += PTR_PMD_SIZE
    return False

cdef void fixup_hugetlb_reservations(pt_machine *m, pt_vma *vma, uint64_t addr, uint64_t length) noexcept nogil:
    # clear_vma_resv_huge_pages(): after the copy, the new VMA owns the private
    # reserve map; the old VMA lets go of it (and so, when unmapped, gives none of
    # its reservations back), then hugetlb_dup_vma_private() clears its pointer.
    # The unconsumed reservations of the part of the old VMA outside the moved
    # range [addr, addr + length) stay counted in HugePages_Rsvd for good.
    cdef uint64_t start, end, lo, hi
    if vma.resv != NULL and (vma.hresv_flags & HPAGE_RESV_OWNER):
        start = vma_hugecache_offset(vma, vma.start)
        end = vma_hugecache_offset(vma, vma.end)
        lo = vma_hugecache_offset(vma, addr)
        hi = vma_hugecache_offset(vma, addr + length)
        m.hstate.resv_orphaned += (lo - start) - idxset_count(&vma.resv.consumed, start, lo)
        m.hstate.resv_orphaned += (end - hi) - idxset_count(&vma.resv.consumed, hi, end)
        resv_map_put(vma.resv)
    if not vma_shared(vma):
        vma.resv = NULL
        vma.hresv_flags = 0
