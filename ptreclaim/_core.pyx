# The mm_struct and its syscalls: argument checks in Linux's order, the VMA
# walks of mmap/munmap/mprotect/mlock/madvise, and the Python surface.
# Per-page work is delegated to the noexcept nogil functions of _pgtable.

import os
import weakref

import numpy as np

from cpython.long cimport PyLong_Check, PyLong_AsUnsignedLongLong, PyLong_AsLongLong
from cpython.number cimport PyNumber_Index
cimport cython
from libc.errno cimport (EINVAL, ENOMEM, EEXIST, EBADF, ENODEV, EACCES, EAGAIN,
                         EFAULT, EINTR, ENOENT, EOVERFLOW, EOPNOTSUPP)
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memset

from ptreclaim._types cimport *
from ptreclaim._pgtable cimport (
    pte_none, pte_present, pte_write, pmd_huge_leaf, entry_table, entry_table_slot, pool_table,
    prefetch_pte,
    machine_init, machine_free, put_page, shmem_new, shmem_put, shmem_punch, pte_table_empty,
    shmem_lookup, shmem_insert, alloc_frame,
    pool_release, pool_alloc,
    walk_pte, walk_pmd, tlb_gather_mmu, tlb_finish_mmu, unmap_page_range, free_pgd_range,
    change_protection, madvise_free_range, madvise_pageout_range, madvise_cold_range,
    fault_range, handle_mm_fault, pte_pfn, uffd_wp_range, anon_page_fast,
    guard_install_range, guard_remove_range, copy_page_range, shmem_get, anon_vma_prepare,
    madvise_collapse, move_page_tables, page_stored, find_vma, is_swap_pte, swp_offset, swap_init,
    pmd_is_file, clear_file_pmd, shmem_punch_split, shmem_folio_nr,
    pmd_hugetlb, pfn_is_hugetlb, hpage_index, hugetlb_pool_init, hfile_new, hfile_put,
    idxset_count, idxset_has, p4d_offset, pgd_index, pgd5_index,
)
from ptreclaim._hugetlb cimport (
    is_vm_hugetlb_page, hugetlbfs_file_mmap, hugetlb_dup_vma, hugetlb_vm_op_close, hugetlb_fault_range,
    __unmap_hugepage_range, copy_hugetlb_page_range, hugetlb_change_protection,
    hugetlbfs_punch_hole, hugetlb_vm_op_open, move_hugetlb_page_tables, fixup_hugetlb_reservations,
    hugetlb_move_hits_pmd_share,
)
from ptreclaim._vma cimport (
    vma_insert, vma_remove, split_vma, try_merge, is_mergeable,
)

from ptreclaim.errors import SegmentationFault, InvariantError, OutOfMemory, UserfaultfdFault, BusError

cdef extern from *:
    """
    #define PTR_VM_MAYREAD     0x10ULL
    #define PTR_VM_MAYEXEC     0x40ULL
    #define PTR_VM_MAYSHARE    0x80ULL
    #define PTR_VM_GROWSDOWN   0x100ULL
    #define PTR_VM_IO          0x4000ULL
    #define PTR_VM_SEQ_READ    0x8000ULL
    #define PTR_VM_RAND_READ   0x10000ULL
    #define PTR_VM_DONTCOPY    0x20000ULL
    #define PTR_VM_DONTEXPAND  0x40000ULL
    #define PTR_VM_ACCOUNT     0x100000ULL
    #define PTR_VM_NORESERVE   0x200000ULL
    #define PTR_VM_WIPEONFORK  0x2000000ULL
    #define PTR_VM_DONTDUMP    0x4000000ULL
    #define PTR_VM_MIXEDMAP    0x10000000ULL
    #define PTR_VM_MERGEABLE   0x80000000ULL
    #define PTR_VM_SYNC        0x800000ULL
    #define PTR_MMAP_BASE      0x7ffff7fff000ULL
    /* TASK_UNMAPPED_BASE: PAGE_ALIGN(DEFAULT_MAP_WINDOW / 3), where the
       bottom-up fallback search starts */
    #define PTR_MMAP_LEGACY_BASE ((0x7ffffffff000ULL / 3 + 4095) & ~4095ULL)
    /* max(vm.mmap_min_addr, CONFIG_LSM_MMAP_MIN_ADDR) on the reference host */
    #define PTR_MMAP_MIN_ADDR  65536ULL
    """
    const uint64_t PTR_VM_MAYREAD, PTR_VM_MAYEXEC, PTR_VM_MAYSHARE, PTR_VM_GROWSDOWN
    const uint64_t PTR_VM_IO, PTR_VM_SEQ_READ, PTR_VM_RAND_READ, PTR_VM_DONTCOPY
    const uint64_t PTR_VM_DONTEXPAND, PTR_VM_ACCOUNT, PTR_VM_NORESERVE, PTR_VM_WIPEONFORK
    const uint64_t PTR_VM_DONTDUMP, PTR_VM_MIXEDMAP
    const uint64_t PTR_VM_MERGEABLE, PTR_MMAP_BASE, PTR_MMAP_MIN_ADDR, PTR_VM_SYNC
    const uint64_t PTR_MMAP_LEGACY_BASE

cdef enum:
    PROT_READ = 1
    PROT_WRITE = 2
    PROT_EXEC = 4
    PROT_SEM = 8
    PROT_GROWSDOWN = 0x01000000
    PROT_GROWSUP = 0x02000000
    MAP_SHARED = 0x01
    MAP_PRIVATE = 0x02
    MAP_SHARED_VALIDATE = 0x03
    MAP_DROPPABLE = 0x08
    MAP_DENYWRITE = 0x0800
    MAP_EXECUTABLE = 0x1000
    MAP_UNINITIALIZED = 0x4000000
    MAP_SYNC = 0x80000
    MAP_HUGE_SHIFT = 26
    MAP_HUGE_MASK = 0x3f
    MAP_TYPE = 0x0f
    MAP_FIXED = 0x10
    MAP_ANONYMOUS = 0x20
    MAP_GROWSDOWN = 0x100
    MAP_LOCKED = 0x2000
    MAP_NORESERVE = 0x4000
    MAP_POPULATE = 0x8000
    MAP_NONBLOCK = 0x10000
    MAP_STACK = 0x20000
    MAP_HUGETLB = 0x40000
    MAP_FIXED_NOREPLACE = 0x100000
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
    MADV_GUARD_INSTALL = 102
    MADV_GUARD_REMOVE = 103

cdef uint64_t VM_ACCESS_FLAGS = PTR_VM_READ | PTR_VM_WRITE | PTR_VM_EXEC
cdef uint64_t VM_SPECIAL = PTR_VM_IO | PTR_VM_DONTEXPAND | PTR_VM_PFNMAP | PTR_VM_MIXEDMAP

# ---------------------------------------------------------------------------------
# vm_page_prot: x86's protection_map (arch/x86/mm/pgprot.c)

cdef uint64_t vm_get_page_prot(uint64_t flags) noexcept nogil:
    cdef uint64_t base = PTR_PAGE_USER | PTR_PAGE_ACCESSED
    cdef uint64_t acc = flags & (PTR_VM_READ | PTR_VM_WRITE | PTR_VM_EXEC)
    cdef uint64_t prot
    if acc == 0:
        return PTR_PAGE_ACCESSED | PTR_PAGE_PROTNONE           # PAGE_NONE
    prot = PTR_PAGE_PRESENT | base
    if (flags & PTR_VM_SHARED) and (flags & PTR_VM_WRITE):
        prot |= PTR_PAGE_RW                                      # PAGE_SHARED
    # Private writable mappings get PAGE_COPY: write-protected until the
    # first write fault.
    if not (flags & PTR_VM_EXEC):
        prot |= PTR_PAGE_NX
    return prot

cdef inline uint64_t vma_page_prot(const pt_vma *vma) noexcept nogil:
    # vma_set_page_prot(): a shared writable mapping of a file that wants
    # write notification (a disk file: dirty accounting and page_mkwrite)
    # maps pages read-only until a write fault dirties them; shmem does not.
    cdef uint64_t prot = vm_get_page_prot(vma.flags)
    if vma.shmem != NULL and (vma.shmem.flags & SHM_REGULAR) and (vma.flags & PTR_VM_SHARED):
        prot &= ~PTR_PAGE_RW
    return prot

cdef inline bint vma_is_accessible(const pt_vma *vma) noexcept nogil:
    return (vma.flags & VM_ACCESS_FLAGS) != 0

# ---------------------------------------------------------------------------------
# free_pgtables() grouping and the munmap path (R61-R63)

cdef void free_pgtables(mmu_gather *tlb, pt_vma *vmas, uint64_t n, uint64_t floor,
                        uint64_t ceiling) noexcept nogil:
    cdef uint64_t i = 0, j, addr, end, ceil
    while i < n:
        addr = vmas[i].start
        end = vmas[i].end
        j = i + 1
        # Neighbouring detached VMAs within 2 MiB are freed in one call; a
        # hugetlb VMA is freed on its own and ends a group.
        while j < n and vmas[j].start <= end + PTR_PMD_SIZE and not is_vm_hugetlb_page(&vmas[i]) \
                and not is_vm_hugetlb_page(&vmas[j]):
            end = vmas[j].end
            j += 1
        ceil = vmas[j].start if j < n else ceiling
        free_pgd_range(tlb, addr, end, floor, ceil)
        i = j

cdef uint64_t vma_pages(const pt_vma *v) noexcept nogil:
    return (v.end - v.start) >> 12

cdef void unmap_single_vma(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end,
                           zap_details *details) noexcept nogil:
    # hugetlb VMAs have a zap of their own, which never frees tables.
    if is_vm_hugetlb_page(vma):
        __unmap_hugepage_range(tlb, vma, start, end, -1)
    else:
        unmap_page_range(tlb, vma, start, end, details)

cdef inline bint hugetlb_split_refused(const pt_vma *vma, uint64_t addr) noexcept nogil:
    # hugetlb_vm_op_split(): a hugetlb VMA splits only on a huge page boundary.
    return is_vm_hugetlb_page(vma) and (addr & (PTR_PMD_SIZE - 1)) != 0

cdef int munmap_split_check(pt_mm *mm, uint64_t start, uint64_t end) noexcept nogil:
    """The splits vms_gather_munmap_vmas() makes at start and end, as far as a
    hugetlb VMA refuses them: EINVAL with nothing done if it refuses the split at
    start; EINVAL after the split at start if it refuses the one at end; else 0."""
    cdef uint64_t i = find_vma(mm, start), j
    if i == mm.nr_vmas or mm.vmas[i].start >= end:
        return 0
    if mm.vmas[i].start < start and hugetlb_split_refused(&mm.vmas[i], start):
        return EINVAL
    j = find_vma(mm, end - 1)
    if j < mm.nr_vmas and mm.vmas[j].start < end and mm.vmas[j].end > end \
            and hugetlb_split_refused(&mm.vmas[j], end):
        if mm.vmas[i].start < start:
            split_vma(mm, i, start)
        return EINVAL
    return 0

cdef int munmap_range(pt_mm *mm, uint64_t start, uint64_t end) noexcept nogil:
    """do_vmi_align_munmap(): split at the edges, zap, free_pgtables, drop the VMAs."""
    cdef uint64_t i = find_vma(mm, start), j, k, floor, ceiling
    cdef mmu_gather tlb
    cdef zap_details details
    if i == mm.nr_vmas or mm.vmas[i].start >= end:
        return 0
    if munmap_split_check(mm, start, end):
        return EINVAL
    if mm.vmas[i].start < start:
        if split_vma(mm, i, start) < 0:
            return ENOMEM
        i += 1
    j = i
    while j < mm.nr_vmas and mm.vmas[j].start < end:
        j += 1
    if mm.vmas[j - 1].end > end:
        if split_vma(mm, j - 1, end) < 0:
            return ENOMEM
    floor = mm.vmas[i - 1].end if i > 0 else 0
    ceiling = mm.vmas[j].start if j < mm.nr_vmas else 0
    for k in range(i, j):
        mm.total_vm -= vma_pages(&mm.vmas[k])
        if mm.vmas[k].flags & PTR_VM_LOCKED:
            mm.locked_vm -= vma_pages(&mm.vmas[k])
    details.even_cows = True
    details.reclaim_pt = False
    details.drop_markers = True
    tlb_gather_mmu(&tlb, mm, False)
    for k in range(i, j):
        unmap_single_vma(&tlb, &mm.vmas[k], mm.vmas[k].start, mm.vmas[k].end, &details)
    free_pgtables(&tlb, &mm.vmas[i], j - i, floor, ceiling)
    tlb_finish_mmu(&tlb)
    vma_remove(mm, i, j - i)
    mm.vma_cache = 0
    return 0

cdef void exit_mmap(pt_mm *mm) noexcept nogil:
    cdef mmu_gather tlb
    cdef zap_details details
    cdef uint64_t k
    details.even_cows = True
    details.reclaim_pt = False
    details.drop_markers = True
    tlb_gather_mmu(&tlb, mm, True)
    for k in range(mm.nr_vmas):
        unmap_single_vma(&tlb, &mm.vmas[k], mm.vmas[k].start, mm.vmas[k].end, &details)
    free_pgtables(&tlb, mm.vmas, mm.nr_vmas, 0, 0)
    tlb_finish_mmu(&tlb)
    vma_remove(mm, 0, mm.nr_vmas)
    mm.total_vm = 0
    mm.locked_vm = 0
    mm.locked_vm_stale = 0

cdef uint64_t _accounted_pages(pt_mm *mm, uint64_t start, uint64_t end) noexcept nogil:
    """Pages of [start, end) that VM_ACCOUNT mappings hold (nr_accounted)."""
    cdef uint64_t i = find_vma(mm, start), total = 0, lo, hi
    while i < mm.nr_vmas and mm.vmas[i].start < end:
        if mm.vmas[i].flags & PTR_VM_ACCOUNT:
            lo = mm.vmas[i].start if mm.vmas[i].start > start else start
            hi = mm.vmas[i].end if mm.vmas[i].end < end else end
            total += (hi - lo) >> 12
        i += 1
    return total


cdef int dup_mmap(pt_mm *child, pt_mm *parent) noexcept nogil:
    """Copy the parent's VMAs and, where vma_needs_copy() says so, its page
    tables into an empty child (R66-R68); 0, or an errno."""
    cdef uint64_t k, pages
    cdef pt_vma vma
    cdef pt_vma *src
    cdef int err = 0
    for k in range(parent.nr_vmas):
        src = &parent.vmas[k]
        if src.flags & PTR_VM_DONTCOPY:
            continue
        pages = vma_pages(src)
        # security_vm_enough_memory_mm(), VMA by VMA (heuristic overcommit).
        if (src.flags & PTR_VM_ACCOUNT) and parent.machine.totalram_pages \
                and pages > parent.machine.totalram_pages:
            err = ENOMEM
            break
        vma = src[0]
        vma.flags &= ~(PTR_VM_LOCKED | PTR_VM_LOCKONFAULT | PTR_VM_UFFD_WP)
        if vma.flags & PTR_VM_WIPEONFORK:
            vma.anon_vma = 0
            vma.forked_anon_vma = False
        elif vma.anon_vma:
            # anon_vma_fork(): a new anon_vma chained to the parent's.
            vma.anon_vma = parent.machine.next_anon_vma_id
            parent.machine.next_anon_vma_id += 1
            vma.forked_anon_vma = True
        if vma.hfile != NULL:
            hugetlb_dup_vma(&vma)
        if vma_insert(child, child.nr_vmas, &vma) < 0:
            if vma.hfile != NULL:
                hfile_put(child.machine, vma.hfile)
            err = ENOMEM
            break
        if vma.shmem != NULL:
            shmem_get(vma.shmem)
        child.total_vm += pages
        # vma_needs_copy(): only memory with an anon_vma has pages that the
        # child could not fault back in (R66); guard markers exist only in
        # the tables, so a VMA that may hold them is copied too
        # (VM_COPY_ON_FORK).
        if not (vma.flags & PTR_VM_WIPEONFORK) and (src.anon_vma or (src.flags & PTR_VM_MAYBE_GUARD)):
            if is_vm_hugetlb_page(src):
                if copy_hugetlb_page_range(child, parent, src) < 0:
                    err = ENOMEM
                    break
            elif copy_page_range(child, parent, src) < 0:
                err = ENOMEM
                break
    # flush_tlb_mm(oldmm): the parent's entries lost their write bit.
    parent.stats.tlb_flushes += 1
    return err

# ---------------------------------------------------------------------------------
# Changing flags on part of the VMA list (vma_modify_flags)

cdef int64_t vma_modify_flags(pt_mm *mm, uint64_t idx, uint64_t start, uint64_t end,
                              uint64_t newflags) noexcept nogil:
    """Give [start, end) (inside VMA idx) the flags newflags: split, set, merge.

    Returns the index of the VMA that now holds start, or -1 on host OOM.
    """
    if mm.vmas[idx].start < start:
        if split_vma(mm, idx, start) < 0:
            return -1
        idx += 1
    if mm.vmas[idx].end > end:
        if split_vma(mm, idx, end) < 0:
            return -1
    mm.vmas[idx].flags = newflags
    mm.vmas[idx].page_prot = vma_page_prot(&mm.vmas[idx])
    # Merge with the previous VMA first, as vma_merge_existing_range()
    # prefers it as the target, then with the next one.
    if idx > 0 and try_merge(mm, idx - 1):
        idx -= 1
    try_merge(mm, idx)
    mm.vma_cache = 0
    return idx

cdef int vma_modify_split_check(pt_mm *mm, uint64_t idx, uint64_t start, uint64_t end) noexcept nogil:
    """vma_modify()'s splits of VMA idx at start and end, as far as a hugetlb VMA
    refuses them (hugetlb_vm_op_split()): EINVAL with nothing done if it refuses
    the one at start; EINVAL after the split at start if it refuses the one at end."""
    cdef pt_vma *vma = &mm.vmas[idx]
    if not is_vm_hugetlb_page(vma):
        return 0
    if vma.start < start and hugetlb_split_refused(vma, start):
        return EINVAL
    if vma.end > end and hugetlb_split_refused(vma, end):
        if vma.start < start:
            split_vma(mm, idx, start)
        return EINVAL
    return 0

# ---------------------------------------------------------------------------------
# Population (mm/gup.c: __mm_populate, populate_vma_page_range)

cdef int populate_vma_page_range(pt_mm *mm, uint64_t idx, uint64_t start, uint64_t end) noexcept nogil:
    """Fault in [start, end) of VMA idx as GUP does; 0 or a negative errno."""
    cdef pt_vma *vma = &mm.vmas[idx]
    cdef bint write
    cdef uint64_t addr = start
    cdef int r
    if vma.flags & PTR_VM_LOCKONFAULT:
        return 0
    # Writable private memory is populated with write faults to break COW;
    # everything else with read faults.
    write = (vma.flags & (PTR_VM_WRITE | PTR_VM_SHARED)) == PTR_VM_WRITE
    # mlock succeeds only for regions with some permission (R24).
    if not vma_is_accessible(vma):
        return -EFAULT
    if is_vm_hugetlb_page(vma):
        r = hugetlb_fault_range(mm, idx, &addr, end, write, True)
        return -ENOMEM if r == FAULT_OOM else (-EFAULT if r != FAULT_OK else 0)
    if write and not _guard_marker_at(mm, addr):
        anon_vma_prepare(mm, idx)
        vma = &mm.vmas[idx]
    r = fault_range(mm, vma, &addr, end, write, True)
    if r == FAULT_OOM:
        return -ENOMEM
    if r != FAULT_OK:
        return -EFAULT
    return 0

cdef int mm_populate(pt_mm *mm, uint64_t start, uint64_t end, bint ignore_errors) noexcept nogil:
    cdef uint64_t nstart = start, nend, idx
    cdef int r
    while nstart < end:
        idx = find_vma(mm, nstart)
        if idx == mm.nr_vmas or mm.vmas[idx].start >= end:
            break
        nend = mm.vmas[idx].end if mm.vmas[idx].end < end else end
        if mm.vmas[idx].flags & (PTR_VM_IO | PTR_VM_PFNMAP):
            nstart = nend
            continue
        if nstart < mm.vmas[idx].start:
            nstart = mm.vmas[idx].start
        r = populate_vma_page_range(mm, idx, nstart, nend)
        if r < 0 and not ignore_errors:
            return r
        nstart = nend
    return 0

# ---------------------------------------------------------------------------------
# get_unmapped_area(), top-down (mm/mmap.c, arch/x86/kernel/sys_x86_64.c)

cdef inline uint64_t vm_start_gap(const pt_vma *v) noexcept nogil:
    # A stack (VM_GROWSDOWN) keeps stack_guard_gap (256 pages) free below it.
    if v.flags & PTR_VM_GROWSDOWN:
        return v.start - (256 << 12) if v.start > (256 << 12) else 0
    return v.start

cdef uint64_t unmapped_area_topdown(pt_mm *mm, uint64_t length, uint64_t high) noexcept nogil:
    """Highest gap below high (mmap_base, see mmap_high_limit()) that fits length; 0 if none."""
    cdef int64_t i = <int64_t>find_vma(mm, high) - 1
    cdef uint64_t hi = high, lo
    if <uint64_t>(i + 1) < mm.nr_vmas and vm_start_gap(&mm.vmas[i + 1]) < hi:
        hi = vm_start_gap(&mm.vmas[i + 1])
    while True:
        lo = mm.vmas[i].end if i >= 0 else PTR_MMAP_MIN_ADDR
        if hi > lo and hi - lo >= length:
            return (hi - length) & PTR_PAGE_MASK
        if i < 0:
            return 0
        hi = vm_start_gap(&mm.vmas[i])
        i -= 1

cdef uint64_t unmapped_area_bottomup(pt_mm *mm, uint64_t length, uint64_t low,
                                     uint64_t high) noexcept nogil:
    """Lowest gap at or above low that fits length and ends by high; 0 if none."""
    cdef uint64_t i = find_vma(mm, low), gap_start = low, gap_end
    while True:
        if gap_start > high or high - gap_start < length:
            return 0
        gap_end = high
        if i < mm.nr_vmas and vm_start_gap(&mm.vmas[i]) < gap_end:
            gap_end = vm_start_gap(&mm.vmas[i])
        if gap_end >= gap_start and gap_end - gap_start >= length:
            return gap_start
        if i >= mm.nr_vmas:
            return 0
        if mm.vmas[i].end > gap_start:
            gap_start = mm.vmas[i].end
        i += 1

cdef inline uint64_t mmap_bottomup_limit(pt_mm *mm, uint64_t hint) noexcept nogil:
    # arch_get_unmapped_area()'s end (find_start_end()): DEFAULT_MAP_WINDOW,
    # or all of TASK_SIZE for a hint above it (LA57).
    return mm.task_size if hint > PTR_DEFAULT_MAP_WINDOW else PTR_DEFAULT_MAP_WINDOW

cdef uint64_t vm_unmapped_area_any(pt_mm *mm, uint64_t length, uint64_t hint) noexcept nogil:
    """arch_get_unmapped_area_topdown()'s search: the highest gap below the
    top-down limit, and when there is none the bottom-up search from
    TASK_UNMAPPED_BASE that it falls back to. 0 if neither finds one."""
    cdef uint64_t ret = unmapped_area_topdown(mm, length, mmap_high_limit(mm, hint))
    if ret == 0:
        ret = unmapped_area_bottomup(mm, length, PTR_MMAP_LEGACY_BASE, mmap_bottomup_limit(mm, hint))
    return ret

cdef inline bint mmap_address_hint_valid(pt_mm *mm, uint64_t addr, uint64_t length) noexcept nogil:
    # arch/x86/mm/mmap.c: a hint must fit below TASK_SIZE and lie wholly on
    # one side of DEFAULT_MAP_WINDOW (128 TiB), so that only a program that
    # asks for addresses above it gets them (with 4 levels TASK_SIZE is the
    # window, and the second test always holds).
    if mm.task_size - length < addr:
        return False
    return (addr > PTR_DEFAULT_MAP_WINDOW) == (addr + length > PTR_DEFAULT_MAP_WINDOW)

cdef inline uint64_t mmap_high_limit(pt_mm *mm, uint64_t hint) noexcept nogil:
    # arch_get_unmapped_area_topdown(): the search starts below mmap_base,
    # which 5-level paging leaves under 128 TiB; a hint above the window
    # moves the start up by TASK_SIZE_MAX - DEFAULT_MAP_WINDOW (0 with 4 levels).
    if hint > PTR_DEFAULT_MAP_WINDOW:
        return mm.mmap_base + (mm.task_size - PTR_DEFAULT_MAP_WINDOW)
    return mm.mmap_base

cdef inline bint _guard_marker_at(pt_mm *mm, uint64_t addr) noexcept nogil:
    # A store to a guard marker is refused (handle_pte_marker()) before the
    # fault would make an anon_vma: callers that prepare one ahead ask first.
    cdef pteval_t *pte = walk_pte(mm, addr)
    return pte != NULL and pte[0] == PTR_GUARD_MARKER

cdef uint64_t get_unmapped_area(pt_mm *mm, uint64_t addr, uint64_t length, int flags) noexcept nogil:
    """The address for a new mapping, or 0 when there is none (ENOMEM)."""
    cdef uint64_t i, ret, off_sub
    if flags & MAP_FIXED:
        return addr
    if addr:
        addr &= PTR_PAGE_MASK
        if mmap_address_hint_valid(mm, addr, length):
            i = find_vma(mm, addr)
            if i == mm.nr_vmas or addr + length <= vm_start_gap(&mm.vmas[i]):
                return addr
        return vm_unmapped_area_any(mm, length, addr)
    if not (flags & MAP_SHARED) and length & (PTR_PMD_SIZE - 1) == 0:
        # Anonymous lengths that are multiples of 2 MiB get a THP-aligned
        # address: search for len + 2 MiB and align inside that (R19).
        ret = vm_unmapped_area_any(mm, length + PTR_PMD_SIZE, 0)
        if ret:
            off_sub = (0 - ret) & (PTR_PMD_SIZE - 1)
            return ret + (off_sub if off_sub else PTR_PMD_SIZE)
    return vm_unmapped_area_any(mm, length, 0)

cdef uint64_t hugetlb_get_unmapped_area(pt_mm *mm, uint64_t addr, uint64_t length,
                                        int flags) noexcept nogil:
    """hugetlbfs's get_unmapped_area(): a hint rounded up to 2 MiB, else the
    highest gap that holds a 2 MiB-aligned range (x86's top-down search with the
    file's huge page alignment mask). 0 when there is none."""
    cdef uint64_t i, ret, search = length + PTR_PMD_SIZE - 4096
    if flags & MAP_FIXED:
        return addr
    if addr:
        addr = (addr + PTR_PMD_SIZE - 1) & PTR_PMD_MASK
        if addr and mmap_address_hint_valid(mm, addr, length):
            i = find_vma(mm, addr)
            if i == mm.nr_vmas or addr + length <= vm_start_gap(&mm.vmas[i]):
                return addr
    ret = unmapped_area_topdown(mm, search, mmap_high_limit(mm, addr))
    if ret:
        return (ret + search - length) & PTR_PMD_MASK
    ret = unmapped_area_bottomup(mm, search, PTR_MMAP_LEGACY_BASE, mmap_bottomup_limit(mm, addr))
    if ret == 0:
        return 0
    return (ret + PTR_PMD_SIZE - 1) & PTR_PMD_MASK

# ---------------------------------------------------------------------------------
# madvise helpers (mm/madvise.c)

cdef bint madvise_behavior_valid(int advice) noexcept nogil:
    # This kernel has KSM and THP but not CONFIG_MEMORY_FAILURE, so
    # MADV_HWPOISON and MADV_SOFT_OFFLINE are unknown (R33).
    return (0 <= advice <= 4 or 8 <= advice <= 25
            or advice == MADV_GUARD_INSTALL or advice == MADV_GUARD_REMOVE)

cdef int madvise_dontneed_single_vma(mmu_gather *tlb, pt_vma *vma, uint64_t start,
                                     uint64_t end) noexcept nogil:
    cdef zap_details details
    details.even_cows = True
    details.reclaim_pt = True
    details.drop_markers = False
    unmap_page_range(tlb, vma, start, end, &details)
    return 0

cdef void _zap_file_pages(pt_mm *mm, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil:
    # zap_pte_range() with should_zap_folio() false for anonymous folios.
    cdef uint64_t addr, pfn
    cdef pteval_t *pte
    cdef pt_page *p
    cdef bint any = False
    cdef pteval_t *pmd
    addr = start
    while addr < end:
        pte = walk_pte(mm, addr)
        if pte == NULL:
            # A PMD that maps a shmem huge folio goes, whole or in part
            # (zap_huge_pmd() / __split_huge_pmd(): cleared either way).
            pmd = walk_pmd(mm, addr)
            if pmd != NULL and pmd_is_file(mm.machine, pmd[0]):
                clear_file_pmd(mm, pmd)
                any = True
            addr = (addr & PTR_PMD_MASK) + PTR_PMD_SIZE
            continue
        if pte_present(pte[0]) and not (pte[0] & PTR_PAGE_SPECIAL):
            pfn = pte_pfn(pte[0])
            p = &mm.machine.frames.pages[pfn]
            if p.kind != FRAME_ANON:
                pte[0] = 0
                p.mapcount -= 1
                mm.rss[MM_FILEPAGES if p.kind == FRAME_FILE else MM_SHMEMPAGES] -= 1
                put_page(mm.machine, pfn)
                any = True
        addr += 4096
    if any:
        mm.stats.tlb_flushes += 1

cdef void unmap_mapping_range(pt_machine *m, pt_mm **mms, Py_ssize_t nr_mms, pt_shmem *obj,
                              uint64_t first, uint64_t last) noexcept nogil:
    """Unmap pages [first, last] of a shmem object from every VMA mapping it."""
    cdef Py_ssize_t k
    cdef uint64_t i, vfirst, vlast, s, e
    cdef pt_mm *mm
    cdef pt_vma *vma
    cdef mmu_gather tlb
    cdef zap_details details
    details.even_cows = False
    details.reclaim_pt = False
    details.drop_markers = False
    for k in range(nr_mms):
        mm = mms[k]
        for i in range(mm.nr_vmas):
            vma = &mm.vmas[i]
            if vma.shmem != obj:
                continue
            vfirst = vma.pgoff
            vlast = vma.pgoff + vma_pages(vma) - 1
            if vlast < first or vfirst > last:
                continue
            s = vma.start + (((first if first > vfirst else vfirst) - vma.pgoff) << 12)
            e = vma.start + (((last if last < vlast else vlast) - vma.pgoff + 1) << 12)
            if not (vma.flags & PTR_VM_SHARED):
                # even_cows false: a private mapping keeps its anonymous
                # copies and loses only the page-cache pages it maps.
                _zap_file_pages(mm, vma, s, e)
                continue
            # zap_page_range_single(): a gather of its own per VMA
            tlb_gather_mmu(&tlb, mm, False)
            unmap_page_range(&tlb, vma, s, e, &details)
            tlb_finish_mmu(&tlb)

# ---------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------
# mremap (mm/mremap.c as of 6.18): the argument checks, shrink, growth in place,
# and moves (one VMA, or several for an MREMAP_FIXED move of unchanged size).
# The page tables move in _pgtable.move_page_tables().

cdef enum:
    # touch_pages() walks this many accesses ahead to prefetch their PTEs:
    # enough to cover a miss, few enough that the walks stay in cache.
    TOUCH_PAGES_AHEAD = 12

cdef enum:
    MREMAP_MAYMOVE = 1
    MREMAP_FIXED = 2
    MREMAP_DONTUNMAP = 4
    # enum mremap_type
    REMAP_NO_RESIZE = 1
    REMAP_SHRINK = 2
    REMAP_EXPAND = 3
    # Returned for what is not simulated (NotImplementedError).
    REMAP_UNSIMULATED = -2
    REMAP_HUGETLB_HANG = -3

ctypedef struct remap_state:
    # struct vma_remap_struct, reduced to what the simulation needs
    uint64_t addr
    uint64_t old_len
    uint64_t new_len
    uint64_t flags
    uint64_t new_addr
    uint64_t delta
    int remap_type
    bint populate_expand

cdef inline uint64_t vma_lookup(pt_mm *mm, uint64_t addr) noexcept nogil:
    """The index of the VMA containing addr, or nr_vmas."""
    cdef uint64_t i = find_vma(mm, addr)
    if i < mm.nr_vmas and mm.vmas[i].start <= addr:
        return i
    return mm.nr_vmas

cdef inline bint vma_intersects(pt_mm *mm, uint64_t start, uint64_t end) noexcept nogil:
    """find_vma_intersection(): some VMA overlaps [start, end)."""
    cdef uint64_t i = find_vma(mm, start)
    return i < mm.nr_vmas and mm.vmas[i].start < end

cdef inline bint remap_implies_new_addr(remap_state *vrm) noexcept nogil:
    return (vrm.flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) != 0

cdef bint extend_mergeable(const pt_vma *vma, const pt_vma *nxt) noexcept nogil:
    """Whether vma_merge_extend() takes the next VMA in as well: the new range
    carries vma's anon_vma, and no VMA is being copied, so a forked anon_vma
    does not stop the merge with a neighbour that has none."""
    if vma.end != nxt.start or (vma.flags ^ nxt.flags) & ~PTR_VM_STICKY or vma.shmem != nxt.shmem:
        return False
    if vma.anon_vma and nxt.anon_vma and vma.anon_vma != nxt.anon_vma:
        return False
    if not vma.anon_vma and nxt.anon_vma and nxt.forked_anon_vma:
        return False
    return vma.pgoff + ((vma.end - vma.start) >> 12) == nxt.pgoff

cdef int remap_check_prep_vma(pt_mm *mm, uint64_t idx, remap_state *vrm) noexcept nogil:
    """check_prep_vma(): the checks that need the VMA, in Linux's order."""
    cdef pt_vma *vma
    cdef uint64_t old_len, new_len, pgoff
    if idx >= mm.nr_vmas:
        return EFAULT
    vma = &mm.vmas[idx]
    if is_vm_hugetlb_page(vma):
        # align_hugetlb(): whole huge pages, at 2 MiB-aligned addresses, and no
        # growth, which the reservations cannot follow. The new address is checked
        # as the caller passed it, even without MREMAP_FIXED, and even a no-op
        # call is checked.
        vrm.old_len = (vrm.old_len + PTR_PMD_SIZE - 1) & PTR_PMD_MASK
        vrm.new_len = (vrm.new_len + PTR_PMD_SIZE - 1) & PTR_PMD_MASK
        if vrm.addr & (PTR_PMD_SIZE - 1):
            return EINVAL
        if vrm.new_addr & (PTR_PMD_SIZE - 1):
            return EINVAL
        if vrm.new_len > vrm.old_len:
            return EINVAL
    vrm.delta = vrm.old_len - vrm.new_len if vrm.old_len > vrm.new_len else vrm.new_len - vrm.old_len
    if vrm.delta == 0:
        vrm.remap_type = REMAP_NO_RESIZE
    elif vrm.old_len > vrm.new_len:
        vrm.remap_type = REMAP_SHRINK
    else:
        vrm.remap_type = REMAP_EXPAND
    if not remap_implies_new_addr(vrm):
        vrm.new_addr = vrm.addr
    # Only a growth or a move maps new address space.
    if vrm.remap_type != REMAP_EXPAND and not remap_implies_new_addr(vrm):
        return 0
    old_len = vrm.old_len
    new_len = vrm.new_len
    # A zero old_len duplicates a shared mapping; a private one cannot be.
    if old_len == 0 and not (vma.flags & (PTR_VM_SHARED | PTR_VM_MAYSHARE)):
        return EINVAL
    if (vrm.flags & MREMAP_DONTUNMAP) and (vma.flags & (PTR_VM_DONTEXPAND | PTR_VM_PFNMAP)):
        return EINVAL
    # A shrink may unmap across VMA boundaries; what moves must lie in this VMA.
    if vrm.remap_type == REMAP_SHRINK:
        old_len = new_len
    if old_len > vma.end - vrm.addr:
        return EFAULT
    if vma.flags & PTR_VM_UFFD_WP:
        return REMAP_UNSIMULATED
    if new_len == old_len:
        return 0
    if vma.flags & PTR_VM_LOCKED:
        vrm.populate_expand = True
    pgoff = vma.pgoff + ((vrm.addr - vma.start) >> 12)
    if pgoff + (new_len >> 12) < pgoff:
        return EINVAL
    if vma.flags & (PTR_VM_DONTEXPAND | PTR_VM_PFNMAP):
        return EFAULT
    # mlock_future_ok() and may_expand_vm(): no RLIMIT_MEMLOCK or RLIMIT_AS here.
    return 0

cdef void remap_mark_mlocked(pt_mm *mm, uint64_t start, uint64_t end) noexcept nogil:
    """PG_MLOCKED on every page that the locked VMA [start, end) has mlocked:
    small pages, and THPs mapped by a huge PMD."""
    cdef pt_page *pages = mm.machine.frames.pages
    cdef uint64_t addr = start, span_end, i, pfn
    cdef pteval_t *pmd
    cdef pteval_t *pte
    while addr < end:
        span_end = (addr & PTR_PMD_MASK) + PTR_PMD_SIZE
        if span_end > end:
            span_end = end
        pmd = walk_pmd(mm, addr)
        if pmd != NULL and pmd_huge_leaf(pmd[0]):
            pfn = pte_pfn(pmd[0])
            if pfn != HUGE_ZERO_PFN and not pfn_is_hugetlb(pfn):
                for i in range(HPAGE_PMD_NR):
                    pages[pfn + i].flags |= PG_MLOCKED
        elif pmd != NULL and pmd[0] != 0:
            pte = walk_pte(mm, addr)
            while addr < span_end:
                # A THP mapped by PTEs is not mlocked (only small pages and
                # PMD-mapped THPs are; splitting the PMD munlocked it).
                if pte_present(pte[0]) and not (pte[0] & PTR_PAGE_SPECIAL) \
                        and not (pages[pte_pfn(pte[0])].flags & PG_THP):
                    pages[pte_pfn(pte[0])].flags |= PG_MLOCKED
                pte += 1
                addr += 4096
        addr = span_end


cdef int remap_move_vma(pt_mm *mm, remap_state *vrm, object unmerged_ok) noexcept:
    """move_vma(): copy the VMA to new_addr (merging it there if it can), move
    its page tables, then unmap the old range (or, for MREMAP_DONTUNMAP, leave
    it mapped and empty). 0 or an errno."""
    cdef uint64_t idx = vma_lookup(mm, vrm.addr), nidx, pages
    cdef pt_vma nv
    cdef pt_vma *vma = &mm.vmas[idx]
    cdef uint64_t old_start = vma.start, old_end = vma.end, charged
    cdef uint64_t old_addr, new_addr, align
    cdef bint dontunmap = (vrm.flags & MREMAP_DONTUNMAP) != 0
    cdef int64_t moved
    if is_vm_hugetlb_page(vma) and hugetlb_move_hits_pmd_share(mm, vma, vrm.addr, vrm.new_addr, vrm.old_len):
        return REMAP_HUGETLB_HANG
    # vrm_calc_charge(): the overcommit heuristic for what the move adds.
    if vma.flags & PTR_VM_ACCOUNT:
        charged = (vrm.new_len if dontunmap else vrm.delta) >> 12
        if mm.machine.totalram_pages and charged > mm.machine.totalram_pages:
            return ENOMEM
    # copy_vma(): a VMA like the old one at new_addr, merged with its new
    # neighbours where it can be. Anonymous memory that was never faulted takes
    # the new address as its page offset, so that it can merge there.
    nv = vma[0]
    nv.start = vrm.new_addr
    nv.end = vrm.new_addr + vrm.new_len
    nv.pgoff = vma.pgoff + ((vrm.addr - vma.start) >> 12)
    if vma.shmem == NULL and vma.hfile == NULL and not vma.anon_vma:
        nv.pgoff = vrm.new_addr >> 12
    nidx = find_vma(mm, vrm.new_addr)
    if vma_insert(mm, nidx, &nv) < 0:
        return ENOMEM
    if nv.shmem != NULL:
        shmem_get(nv.shmem)
    if is_vm_hugetlb_page(&nv):
        # vm_ops->open(): the copy shares the file and, for a private mapping,
        # the reserve map (fixup_hugetlb_reservations() below settles whose it is).
        hugetlb_vm_op_open(&mm.vmas[nidx])
    if nidx > 0 and try_merge(mm, nidx - 1):
        nidx -= 1
    try_merge(mm, nidx)
    mm.vma_cache = 0
    # move_page_tables(), with the opportunistic realignment of try_realign_addr():
    # when both ranges start at the same offset in a 2 MiB span, reach its end,
    # start their VMAs, and nothing else is mapped below them in that span, the
    # move starts at the span, so the first PTE table moves whole too.
    idx = vma_lookup(mm, vrm.addr)
    nidx = vma_lookup(mm, vrm.new_addr)
    old_addr = vrm.addr
    new_addr = vrm.new_addr
    if is_vm_hugetlb_page(&mm.vmas[idx]):
        # move_page_tables() hands a hugetlb VMA to move_hugetlb_page_tables().
        moved = move_hugetlb_page_tables(mm, &mm.vmas[idx], old_addr, new_addr, vrm.old_len)
        fixup_hugetlb_reservations(mm.machine, &mm.vmas[idx], vrm.addr, vrm.old_len)
        if moved < <int64_t>vrm.old_len:
            return ENOMEM
        mm.total_vm += vrm.new_len >> 12
        # hugetlb memory is never VM_LOCKED, and MREMAP_DONTUNMAP was refused.
        if munmap_range(mm, vrm.addr, vrm.addr + vrm.old_len):
            return ENOMEM
        return 0
    align = old_addr & (PTR_PMD_SIZE - 1)
    if (align and align == (new_addr & (PTR_PMD_SIZE - 1))
            and vrm.old_len >= PTR_PMD_SIZE - align
            and mm.vmas[idx].start == old_addr and mm.vmas[nidx].start == new_addr
            and not vma_intersects(mm, old_addr & PTR_PMD_MASK, old_addr)
            and not vma_intersects(mm, new_addr & PTR_PMD_MASK, new_addr)):
        old_addr &= PTR_PMD_MASK
        new_addr &= PTR_PMD_MASK
    if vrm.old_len:
        moved = move_page_tables(mm, &mm.vmas[idx], old_addr, new_addr, vrm.addr + vrm.old_len)
        if moved < 0:
            return ENOMEM
    # vrm_stat_account(): the new range counts in VmSize, and in VmLck if locked.
    pages = vrm.new_len >> 12
    mm.total_vm += pages
    if mm.vmas[idx].flags & PTR_VM_LOCKED:
        mm.locked_vm += pages
    if dontunmap:
        # dontunmap_complete(): the old VMA, whole, loses VM_LOCKED (and VmLck is
        # not lowered); if all of it moved, its anon_vma goes too. Nothing merges.
        idx = vma_lookup(mm, vrm.addr)
        vma = &mm.vmas[idx]
        if vma.flags & PTR_VM_LOCKED:
            mm.locked_vm_stale += vma_pages(vma)
            # The pages it still maps stay mlocked, and nothing will munlock them.
            remap_mark_mlocked(mm, vma.start, vma.end)
        vma.flags &= ~(PTR_VM_LOCKED | PTR_VM_LOCKONFAULT)
        if (vrm.addr == old_start and vrm.addr + vrm.old_len == old_end
                and vma.start == old_start and vma.end == old_end):
            vma.anon_vma = 0
            vma.forked_anon_vma = False
        if idx > 0 and is_mergeable(&mm.vmas[idx - 1], vma):
            unmerged_ok.add(vma.start)
        if idx + 1 < mm.nr_vmas and is_mergeable(vma, &mm.vmas[idx + 1]):
            unmerged_ok.add(vma.end)
        return 0
    # unmap_source_vma(): munmap of the old range, with VM_ACCOUNT kept on what
    # remains of the old VMA. A zero old_len (a duplicated shared mapping)
    # unmaps nothing.
    if vrm.old_len:
        if munmap_range(mm, vrm.addr, vrm.addr + vrm.old_len):
            return ENOMEM
    return 0

cdef int remap_expand_in_place(pt_mm *mm, uint64_t idx, remap_state *vrm) noexcept nogil:
    """expand_vma_in_place(): charge, extend the VMA (vma_merge_extend(), which
    may take the next VMA in), count it."""
    cdef pt_vma *vma = &mm.vmas[idx]
    cdef uint64_t pages = vrm.delta >> 12
    if (vma.flags & PTR_VM_ACCOUNT) and mm.machine.totalram_pages and pages > mm.machine.totalram_pages:
        return ENOMEM
    vma.end += vrm.delta
    if idx + 1 < mm.nr_vmas and extend_mergeable(vma, &mm.vmas[idx + 1]):
        vma.end = mm.vmas[idx + 1].end
        vma.flags |= mm.vmas[idx + 1].flags & PTR_VM_STICKY
        if not vma.anon_vma:
            vma.anon_vma = mm.vmas[idx + 1].anon_vma
            vma.forked_anon_vma = mm.vmas[idx + 1].forked_anon_vma
        vma_remove(mm, idx + 1, 1)
    mm.vma_cache = 0
    mm.total_vm += pages
    if mm.vmas[idx].flags & PTR_VM_LOCKED:
        mm.locked_vm += pages
    return 0

cdef int remap_set_new_addr(pt_mm *mm, remap_state *vrm) noexcept nogil:
    """vrm_set_new_addr(): MREMAP_FIXED is MAP_FIXED, MREMAP_DONTUNMAP alone a
    hint, otherwise the kernel chooses (top-down)."""
    cdef uint64_t idx = vma_lookup(mm, vrm.addr)
    cdef pt_vma *vma = &mm.vmas[idx]
    cdef uint64_t hint = vrm.new_addr if remap_implies_new_addr(vrm) else 0
    cdef int map_flags = (MAP_FIXED if vrm.flags & MREMAP_FIXED else 0) | \
        (MAP_SHARED if vma.flags & PTR_VM_MAYSHARE else 0)
    cdef uint64_t res
    if vrm.new_len > mm.task_size:
        return ENOMEM
    if vma.shmem != NULL:
        # The file's get_unmapped_area, at the page offset of addr in the file.
        res = file_get_unmapped_area(mm, hint, vrm.new_len, map_flags,
                                     (vma.shmem.flags & SHM_REGULAR) != 0,
                                     vma.pgoff + ((vrm.addr - vma.start) >> 12))
    else:
        # __get_unmapped_area() takes no page offset for anonymous memory: a private
        # length that is a multiple of 2 MiB gets a 2 MiB-aligned address, as for mmap.
        res = get_unmapped_area(mm, hint, vrm.new_len, map_flags)
    if res == 0 and not (map_flags & MAP_FIXED):
        return ENOMEM
    if res > mm.task_size - vrm.new_len:
        return ENOMEM
    vrm.new_addr = res
    return 0

cdef int remap_munmap(pt_mm *mm, uint64_t start, uint64_t length) noexcept nogil:
    """do_munmap() with its argument checks, as mremap calls it."""
    cdef uint64_t end
    if (start & 4095) or start > mm.task_size or length > mm.task_size - start:
        return EINVAL
    end = start + ((length + 4095) & PTR_PAGE_MASK)
    if end == start:
        return EINVAL
    return munmap_range(mm, start, end)

cdef int remap_at(pt_mm *mm, remap_state *vrm, object unmerged_ok) noexcept:
    """mremap_at(): no move asked for. A shrink unmaps the tail; a growth
    extends the VMA in place if the range ends at the VMA's end and the space
    after it is free, else moves it (MREMAP_MAYMOVE) or fails with ENOMEM."""
    cdef uint64_t idx, end
    cdef pt_vma *vma
    cdef int err
    if vrm.remap_type == REMAP_NO_RESIZE:
        return 0
    if vrm.remap_type == REMAP_SHRINK:
        return remap_munmap(mm, vrm.addr + vrm.new_len, vrm.delta)
    idx = vma_lookup(mm, vrm.addr)
    vma = &mm.vmas[idx]
    if vma.end - vrm.addr == vrm.old_len:
        # vma_expandable()
        end = vma.end + vrm.delta
        if end >= vma.end and end <= mm.task_size and not vma_intersects(mm, vma.end, end):
            return remap_expand_in_place(mm, idx, vrm)
    if not (vrm.flags & MREMAP_MAYMOVE):
        return ENOMEM
    err = remap_set_new_addr(mm, vrm)
    if err:
        return err
    return remap_move_vma(mm, vrm, unmerged_ok)

cdef int remap_to(pt_mm *mm, remap_state *vrm, object unmerged_ok) noexcept:
    """mremap_to(): MREMAP_FIXED unmaps the destination first; a shrink
    unmaps the tail; then the move."""
    cdef int err
    if vrm.flags & MREMAP_FIXED:
        err = remap_munmap(mm, vrm.new_addr, vrm.new_len)
        if err:
            return err
        if vma_lookup(mm, vrm.addr) == mm.nr_vmas:
            return EFAULT
    if vrm.remap_type == REMAP_SHRINK:
        err = remap_munmap(mm, vrm.addr + vrm.new_len, vrm.delta)
        if err:
            return err
        if vma_lookup(mm, vrm.addr) == mm.nr_vmas:
            return EFAULT
        vrm.old_len = vrm.new_len
    err = remap_set_new_addr(mm, vrm)
    if err:
        return err
    return remap_move_vma(mm, vrm, unmerged_ok)

cdef int remap_move(pt_mm *mm, remap_state *vrm, uint64_t *result, object unmerged_ok) noexcept:
    """remap_move(): an MREMAP_FIXED move of unchanged size may span several
    VMAs; each moves in turn, the gaps between them kept. A hole at the start
    is EFAULT; a failure stops the walk, with the VMAs before it moved."""
    cdef uint64_t start = vrm.addr, end = vrm.addr + vrm.old_len
    cdef uint64_t target = vrm.new_addr, pos = start, last_end = 0, i, vs, ve, a, n
    cdef bint seen = False
    cdef remap_state sub
    cdef int err
    while True:
        i = find_vma(mm, pos)
        if i == mm.nr_vmas or mm.vmas[i].start >= end:
            break
        vs = mm.vmas[i].start
        ve = mm.vmas[i].end
        a = vs if vs > start else start
        n = (end if end < ve else ve) - a
        if not seen and start < vs:
            return EFAULT
        # vma_multi_allowed(): a userfaultfd VMA moves only alone.
        if (mm.vmas[i].flags & PTR_VM_UFFD_WP) and (seen or ve < end):
            return EFAULT
        memset(&sub, 0, sizeof(remap_state))
        sub.addr = a
        sub.old_len = n
        sub.new_len = n
        sub.flags = vrm.flags
        sub.new_addr = target + (vs - last_end if seen else 0)
        err = remap_check_prep_vma(mm, i, &sub)
        if not err:
            err = remap_to(mm, &sub, unmerged_ok)
        if err:
            return err
        if not seen:
            result[0] = sub.new_addr
        seen = True
        last_end = ve
        target = sub.new_addr + n
        # The walk goes on after the end of the VMA just moved (the VMA
        # iterator is paused there), whatever is left where it was.
        pos = ve
    return 0 if seen else EFAULT

# ---------------------------------------------------------------------------------

cdef object _as_u64_array(addresses):
    """A contiguous uint64 view of addresses, refusing what would change value."""
    a = np.asarray(addresses)
    if a.ndim != 1:
        raise ValueError("addresses must be one-dimensional")
    if a.dtype.kind == "u":
        return np.ascontiguousarray(a, dtype=np.uint64)
    if a.dtype.kind == "i":
        if a.size and a.min() < 0:
            raise OverflowError("addresses must not be negative")
        return np.ascontiguousarray(a, dtype=np.uint64)
    if a.dtype.kind == "O" or (a.size == 0 and a.dtype.kind == "f"):
        return np.ascontiguousarray(np.array([_ulong(x) for x in a.tolist()], dtype=np.uint64))
    raise TypeError(f"addresses must be integers, not {a.dtype}")


cdef object _errno(int err):
    return OSError(err, os.strerror(err))


# Argument conversion as the os module does it: operator.index() semantics
# (floats are a TypeError, not truncated), then the C range (OverflowError).

cdef inline uint64_t _ulong(object x) except? 0xFFFFFFFFFFFFFFFF:
    if not PyLong_Check(x):
        x = PyNumber_Index(x)
    return PyLong_AsUnsignedLongLong(x)


cdef inline int _cint(object x) except? -1:
    cdef long long v
    if not PyLong_Check(x):
        x = PyNumber_Index(x)
    v = PyLong_AsLongLong(x)
    if v < -2147483648 or v > 2147483647:
        raise OverflowError("signed integer is greater than maximum" if v > 0
                            else "signed integer is less than minimum")
    return <int>v

cdef int file_read_page(pt_machine *m, pt_shmem *s, uint64_t index) noexcept nogil:
    """Bring page index of a regular file into its page cache (clean, 4 KiB) if
    it is not there; 0, or -1 when no frame is left."""
    cdef int64_t pfn
    if shmem_lookup(s, index) >= 0:
        return 0
    pfn = alloc_frame(&m.frames, FRAME_FILE)
    if pfn < 0:
        return -1
    m.frames.pages[pfn].index = <uint32_t>index
    if shmem_insert(s, index, <uint32_t>pfn) < 0:
        put_page(m, <uint64_t>pfn)
        return -1
    return 0

cdef uint64_t file_get_unmapped_area(pt_mm *mm, uint64_t addr, uint64_t length, int flags,
                                     bint thp, uint64_t pgoff) noexcept nogil:
    """The address for a file mapping, or 0. A disk file's get_unmapped_area is
    thp_get_unmapped_area(): when the file range holds a whole 2 MiB-aligned
    block, search for length + 2 MiB and place the mapping so that file offset
    and address agree modulo 2 MiB (a hint that fits the padded length is kept).
    shmem (huge=never) takes the plain search. MAP_SHARED below only turns off
    get_unmapped_area()'s alignment of anonymous memory."""
    cdef uint64_t off = pgoff << 12, off_end, off_align, ret, off_sub
    flags |= MAP_SHARED
    if (flags & MAP_FIXED) or not thp:
        return get_unmapped_area(mm, addr, length, flags)
    off_end = (off + length) & PTR_PMD_MASK
    off_align = (off + PTR_PMD_SIZE - 1) & PTR_PMD_MASK
    if off_end <= off_align or off_end - off_align < PTR_PMD_SIZE:
        return get_unmapped_area(mm, addr, length, flags)
    ret = get_unmapped_area(mm, addr, length + PTR_PMD_SIZE, flags)
    if ret == 0:
        return get_unmapped_area(mm, addr, length, flags)
    if ret == addr:
        return addr
    off_sub = (off - ret) & (PTR_PMD_SIZE - 1)
    if off_sub == 0:
        return ret + PTR_PMD_SIZE          # top-down: the aligned end of the padded gap
    return ret + off_sub


cdef class Machine:
    """Simulated physical memory: frames, the page-table pool, shmem objects,
    and a swap device of swap_pages slots (0: no swap).

    Several MMs may share one machine (shared memory, fork).
    hugetlb_pages: the 2 MiB hugetlb pool (vm.nr_hugepages), empty by default.
    """

    def __cinit__(self, max_frames=None, totalram_pages=None, swap_pages=0, hugetlb_pages=0):
        cdef uint64_t limit = 0, ram
        cdef uint64_t nr_swap = swap_pages
        cdef uint64_t nr_huge = _ulong(hugetlb_pages)
        if max_frames is not None:
            limit = max_frames
            if limit == 0:
                raise ValueError("max_frames must be positive or None")
        if nr_swap > 0xFFFFFFFE:
            raise ValueError("swap_pages must fit the simulator's 32-bit slot numbers")
        if nr_huge >= GATHER_HUGETLB:
            raise ValueError("hugetlb_pages is too large")
        if machine_init(&self.m, limit) < 0:
            raise MemoryError()
        swap_init(&self.m, nr_swap)
        if hugetlb_pool_init(&self.m, nr_huge) < 0:
            raise MemoryError()
        # The overcommit heuristic (vm.overcommit_memory=0) refuses one
        # request larger than totalram_pages() + total_swap_pages; by default
        # the machine's RAM is max_frames, or unlimited.
        ram = totalram_pages if totalram_pages is not None else limit
        self.m.totalram_pages = ram + nr_swap if ram else 0
        self.files = weakref.WeakSet()

    def __dealloc__(self):
        free(self.mms)
        machine_free(&self.m)

    cdef int _register(self, pt_mm *mm) except -1:
        cdef void *p
        if self.nr_mms == self.mms_cap:
            p = realloc(self.mms, (2 * self.mms_cap + 4) * sizeof(pt_mm *))
            if p == NULL:
                raise MemoryError()
            self.mms = <pt_mm **>p
            self.mms_cap = 2 * self.mms_cap + 4
        self.mms[self.nr_mms] = mm
        self.nr_mms += 1
        # The C level sees the list too (hugetlb unmaps pages in other processes).
        self.m.mms = <void **>self.mms
        self.m.nr_mms = self.nr_mms
        return 0

    cdef void _unregister(self, pt_mm *mm) noexcept:
        cdef Py_ssize_t i
        for i in range(self.nr_mms):
            if self.mms[i] == mm:
                self.mms[i] = self.mms[self.nr_mms - 1]
                self.nr_mms -= 1
                self.m.nr_mms = self.nr_mms
                return

    def create_file(self, size, *, shmem=False, cached=True):
        """A file of size bytes: a regular file on a disk file system (its pages
        count in RssFile), or with shmem=True a memfd/tmpfs file (RssShmem).
        cached=True: every page of it is in the page cache (a regular file's
        clean, a shmem file's written); cached=False: none is."""
        cdef uint64_t sz = _ulong(size), pages, i
        cdef int64_t pfn
        cdef pt_shmem *s
        cdef File f
        pages = (sz >> 12) + (1 if sz & 4095 else 0)
        if pages > 0xFFFFFFFF:
            raise ValueError("the simulator's page offsets are 32-bit: the file is too large")
        s = shmem_new(&self.m, pages)
        if s == NULL:
            raise MemoryError()
        s.size_bytes = sz
        if not shmem:
            s.flags = SHM_REGULAR
        f = File.__new__(File)
        f.s = s                    # the reference shmem_new() made is the File's
        f.machine = self
        self.files.add(f)
        if cached:
            for i in range(pages):
                pfn = alloc_frame(&self.m.frames, FRAME_SHMEM if shmem else FRAME_FILE)
                if pfn == -1:
                    raise OutOfMemory("no free frame for the page cache of the new file")
                if pfn < 0:
                    raise MemoryError()
                self.m.frames.pages[pfn].index = <uint32_t>i
                if shmem:
                    # written with write(): a dirty shmem page
                    self.m.frames.pages[pfn].flags = PG_DIRTY
                if shmem_insert(s, i, <uint32_t>pfn) < 0:
                    put_page(&self.m, <uint64_t>pfn)
                    raise MemoryError()
        return f

    @property
    def frames_in_use(self):
        """Data frames allocated (anonymous, shmem and page-cache pages)."""
        return self.m.frames.nr_used

    @property
    def swap_pages(self):
        """Slots of the swap device (0: no swap)."""
        return self.m.swap.nr_slots

    @property
    def swap_used(self):
        """Swap slots holding a page (referenced by swap PTEs or shmem objects)."""
        return self.m.swap.nr_used

    @property
    def tables_in_use(self):
        """Page-table pages not on the pool's free list."""
        return self.m.pool.nr_tables - self.m.pool.nr_free

    def hugetlb_meminfo(self):
        """The hugetlb lines of /proc/meminfo: HugePages_Total, _Free, _Rsvd, _Surp
        (pages) and Hugepagesize (kB). HugePages_Rsvd is unsigned, as the kernel's."""
        cdef pt_hstate *h = &self.m.hstate
        return {
            "HugePages_Total": h.nr_huge_pages,
            "HugePages_Free": h.free_huge_pages,
            "HugePages_Rsvd": h.resv_huge_pages,
            "HugePages_Surp": 0,
            "Hugepagesize": 2048,
        }

    @property
    def host_bytes(self):
        """Host memory held by the frame array and the table pool."""
        return (self.m.frames.cap * sizeof(pt_page)
                + self.m.pool.nr_chunks * TABLES_PER_CHUNK * (PTRS_PER_TABLE * 8 + 2 + 4))


@cython.no_gc_clear
cdef class File:
    """A file (its inode): a regular file or a shmem (memfd) file, made by
    Machine.create_file(). It lives while an MM has it open or mapped, or
    Python refers to it."""
    cdef pt_shmem *s
    cdef readonly Machine machine
    cdef object __weakref__

    def __init__(self, *args, **kwargs):
        raise TypeError("files are made by Machine.create_file()")

    def __dealloc__(self):
        if self.s != NULL:
            shmem_put(&self.machine.m, self.s)
            self.s = NULL

    @property
    def size(self):
        """i_size in bytes."""
        return self.s.size_bytes

    @property
    def shmem(self):
        """True for a shmem (memfd/tmpfs) file."""
        return not (self.s.flags & SHM_REGULAR)

    @property
    def nr_cached(self):
        """Pages in the page cache (shmem: pages the object holds)."""
        return self.s.nr_pages

    @property
    def nr_dirty(self):
        """Dirty pages in the page cache of a regular file (0 for shmem)."""
        cdef uint64_t i, n = 0, key
        cdef pt_page *p
        if not (self.s.flags & SHM_REGULAR):
            return 0
        for i in range(self.s.cap):
            key = self.s.keys[i]
            if key != 0 and key != <uint64_t>-1:
                p = &self.machine.m.frames.pages[self.s.vals[i]]
                if p.flags & PG_DIRTY:
                    n += 1
        return n

    def __repr__(self):
        return (f"<File size={self.size} {'shmem' if self.shmem else 'regular'} "
                f"cached={self.nr_cached}>")


EVENTS = ("fault", "table_alloc", "zap_begin", "zap_end", "zap_lock_dropped", "reclaim_fast",
          "reclaim_slow", "reclaim_abandoned", "pmd_clear", "table_free", "tlb_flush",
          "pmd_trylock", "lost_mapping")
_EVENT_IDS = {name: i for i, name in enumerate(EVENTS)}
# Where the simulated kernel holds no page-table lock: another thread may fault.
_LOCK_FREE = frozenset({EV_FAULT, EV_ZAP_BEGIN, EV_ZAP_END, EV_ZAP_LOCK_DROPPED, EV_RECLAIM_SLOW})


class TraceEvent:
    """One tracepoint hit: name, mm, address and arg (a table slot, a level, a reason...)."""

    __slots__ = ("name", "mm", "address", "arg")

    def __init__(self, name, mm, address, arg):
        self.name, self.mm, self.address, self.arg = name, mm, address, arg

    @property
    def table(self):
        return self.arg

    def __repr__(self):
        return f"TraceEvent({self.name}, address={self.address:#x}, arg={self.arg})"


cdef int _trace_trampoline(void *mmp, int event, uint64_t addr, uint64_t arg) noexcept nogil:
    with gil:
        return (<MM>(<pt_mm *>mmp).trace_owner)._dispatch(event, addr, arg)


# touch() lets other Python threads run while it works on more than this.
cdef uint64_t _NOGIL_TOUCH_BYTES = 16 << 20

_THP_MODES = {"never": 0, "madvise": 1, "always": 2}
_THP_NAMES = {v: k for k, v in _THP_MODES.items()}
_RECLAIM_MODES = {False: RECLAIM_OFF, True: RECLAIM_ON, "seed": RECLAIM_SEED}
_RECLAIM_NAMES = {v: k for k, v in _RECLAIM_MODES.items()}

cdef list _pud_slots(pt_mm *mm):
    """(address, entry) of every entry that points at a PUD table, ascending:
    PGD entries with 4-level paging (the P4D is folded, R2), P4D entries with 5."""
    cdef pt_pool *pool = &mm.machine.pool
    cdef uint64_t g, j
    cdef pteval_t *p4d
    out = []
    for g in range(256):
        if mm.pgd[g] == 0:
            continue
        if mm.paging_levels == 4:
            out.append((g << 39, mm.pgd[g]))
            continue
        p4d = entry_table(pool, mm.pgd[g])
        for j in range(512):
            if p4d[j] != 0:
                out.append(((g << 48) | (j << 39), p4d[j]))
    return out


STATS_FIELDS = (
    "page_faults", "pte_tables_allocated", "pmd_tables_allocated", "pud_tables_allocated",
    "pte_tables_freed_reclaim_fast", "pte_tables_freed_reclaim_slow", "reclaim_slow_abandoned",
    "pte_tables_freed_unmap", "pmd_tables_freed", "pud_tables_freed", "tlb_flushes",
    "mmu_gathers", "table_batches", "thp_fault_alloc", "thp_zero_page", "thp_split_pmd",
    "thp_deposits_freed", "thp_collapse_alloc", "p4d_tables_allocated", "p4d_tables_freed",
)

_LEVEL_NAMES = {LEVEL_P4D: "p4d", LEVEL_PUD: "pud", LEVEL_PMD: "pmd", LEVEL_PTE: "pte"}


@cython.no_gc_clear
cdef class MM:
    """One simulated process: its mm_struct on Linux 6.18 x86-64 (4- or 5-level paging)."""

    def __cinit__(self, *, pt_reclaim=True, thp="madvise", max_frames=None,
                  split_ptlocks=True, Machine machine=None, hugetlb_pages=None,
                  paging_levels=4):
        if type(paging_levels) is not int or paging_levels not in (4, 5):
            raise ValueError(f"paging_levels must be 4 or 5, not {paging_levels!r}")
        if thp not in _THP_MODES:
            raise ValueError(f"thp must be one of {sorted(_THP_MODES)}, not {thp!r}")
        if pt_reclaim not in (True, False, "seed") or pt_reclaim is None:
            raise ValueError("pt_reclaim must be True, False or 'seed'")
        if machine is None:
            machine = Machine(max_frames, hugetlb_pages=hugetlb_pages or 0)
        elif max_frames is not None or hugetlb_pages is not None:
            raise ValueError("give max_frames and hugetlb_pages to the Machine, not to an MM on a shared one")
        self.machine = machine
        self.mm = <pt_mm *>calloc(1, sizeof(pt_mm))
        if self.mm == NULL:
            raise MemoryError()
        self.mm.gather_pages = <uint32_t *>malloc(MMU_GATHER_CAPACITY * sizeof(uint32_t))
        if self.mm.gather_pages == NULL:
            free(self.mm)
            self.mm = NULL
            raise MemoryError()
        self.mm.machine = &machine.m
        self.mm.reclaim_mode = _RECLAIM_MODES[pt_reclaim]
        self.mm.thp = _THP_MODES[thp]
        self.mm.split_ptlocks = bool(split_ptlocks)
        # LA57 keeps mmap_base where 4 levels put it: arch_pick_mmap_layout()
        # computes it from task_size_64bit(0), DEFAULT_MAP_WINDOW.
        self.mm.mmap_base = PTR_MMAP_BASE
        self.mm.paging_levels = paging_levels
        self.mm.task_size = PTR_TASK_SIZE_LA57 if paging_levels == 5 else PTR_TASK_SIZE
        self.unmerged_ok = set()
        self.fds = {}
        self._listeners = {}
        self.mm.resched_countdown = -1
        self.mm.trace_owner = <void *>self
        self.mm.trace_fn = _trace_trampoline
        machine._register(self.mm)

    def __dealloc__(self):
        if self.mm != NULL:
            # No tracepoint may see an object that is being destroyed.
            self.mm.trace_mask = 0
            if not self.dead:
                exit_mmap(self.mm)
            self.machine._unregister(self.mm)
            free(self.mm.vmas)
            free(self.mm.gather_pages)
            free(self.mm)
            self.mm = NULL

    cdef void _alive(self) except *:
        if self.dead:
            raise ValueError("this mm has exited")
        if self.cb_state == 2:
            raise RuntimeError("a tracepoint callback under a page-table lock may only observe")

    cdef void _no_reentry(self) except *:
        # At a lock-free point the kernel still holds the mmap lock for read:
        # another thread may fault, but not map, unmap or change VMAs.
        if self.cb_state:
            raise RuntimeError("a tracepoint callback may only fault pages (touch) on its mm")

    cdef void _raise_pending(self) except *:
        if self._pending is not None:
            exc, self._pending = self._pending, None
            raise exc

    # -------------------------------------------------------------- fd table

    def open(self, file, write=True):
        """Open file in this process (O_RDWR, or O_RDONLY with write=False);
        returns the lowest free fd (>= 3: 0-2 are the standard streams)."""
        cdef int fd = 3
        self._alive()
        if not isinstance(file, File):
            raise TypeError(f"open() needs a File, not {type(file).__name__}")
        if (<File>file).machine is not self.machine:
            raise ValueError("the file belongs to another Machine")
        while fd in self.fds:
            fd += 1
        self.fds[fd] = (file, bool(write))
        return fd

    def close(self, fd):
        """close(2): the file stays alive while a mapping refers to it."""
        cdef int n = _cint(fd)
        self._alive()
        if n not in self.fds:
            raise _errno(EBADF)
        del self.fds[n]

    # ----------------------------------------------------------------- mmap

    def mmap(self, addr, length, prot, flags, fd=-1, offset=0):
        """mmap(2) of anonymous memory, or without MAP_ANONYMOUS of the file
        open at fd from byte offset; returns the address."""
        cdef int err
        cdef uint64_t result = 0
        self._alive()
        self._no_reentry()
        err = self._do_mmap(_ulong(addr), _ulong(length), _cint(prot), _cint(flags), _cint(fd),
                            _ulong(offset), &result)
        self._raise_pending()
        if err == -2:
            raise NotImplementedError("MAP_DROPPABLE is not simulated yet")
        if err:
            raise _errno(err)
        return result

    cdef int _do_mmap(self, uint64_t addr, uint64_t length, int prot, int flags, int fd,
                      uint64_t offset, uint64_t *result) noexcept:
        cdef pt_mm *mm = self.mm
        cdef uint64_t pgoff, vm_flags, idx, end, charged
        cdef pt_vma vma
        cdef int mtype = flags & MAP_TYPE
        cdef bint hugetlb = (flags & MAP_HUGETLB) != 0
        cdef int huge_log
        cdef int err
        cdef uint64_t i
        cdef File file = None
        cdef bint fwrite = False
        cdef int legacy = (MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_DENYWRITE
                           | MAP_EXECUTABLE | MAP_UNINITIALIZED | MAP_GROWSDOWN | MAP_LOCKED
                           | MAP_NORESERVE | MAP_POPULATE | MAP_NONBLOCK | MAP_STACK | MAP_HUGETLB)
        # The order of the checks is Linux's; each step below names where
        # the kernel makes it.
        # sys_mmap: the byte offset must be page aligned.
        if offset & 4095:
            return EINVAL
        # ksys_mmap_pgoff: a file mapping needs an open file (fget()), which
        # must be a hugetlbfs one for MAP_HUGETLB; MAP_HUGETLB makes an
        # anonymous mapping a hugetlbfs file of whole 2 MiB pages.
        if not (flags & MAP_ANONYMOUS):
            entry = self.fds.get(fd)
            if entry is None:
                return EBADF
            file = entry[0]
            fwrite = entry[1]
            if hugetlb:
                return EINVAL
        if hugetlb:
            huge_log = (flags >> MAP_HUGE_SHIFT) & MAP_HUGE_MASK
            if huge_log != 0 and huge_log != 21:
                return EINVAL          # no hstate of that size on this machine
            length = (length + PTR_PMD_SIZE - 1) & PTR_PMD_MASK
        # do_mmap
        if length == 0:
            return EINVAL
        if flags & MAP_FIXED_NOREPLACE:
            flags |= MAP_FIXED
        if not (flags & MAP_FIXED) and addr and addr < PTR_MMAP_MIN_ADDR:
            addr = PTR_MMAP_MIN_ADDR
        length = (length + 4095) & PTR_PAGE_MASK
        if length == 0:
            return ENOMEM
        # __get_unmapped_area()
        if length > mm.task_size:
            return ENOMEM
        if hugetlb and (flags & MAP_FIXED) and (addr & (PTR_PMD_SIZE - 1)):
            return EINVAL              # prepare_hugepage_range()
        if hugetlb:
            addr = hugetlb_get_unmapped_area(mm, addr, length, flags)
        elif file is not None:
            addr = file_get_unmapped_area(mm, addr, length, flags,
                                          (file.s.flags & SHM_REGULAR) != 0, offset >> 12)
        else:
            addr = get_unmapped_area(mm, addr, length, flags)
        if addr == 0 and not (flags & MAP_FIXED):
            return ENOMEM
        if addr > mm.task_size - length:
            return ENOMEM
        if addr & 4095:
            return EINVAL
        end = addr + length
        if flags & MAP_FIXED_NOREPLACE:
            idx = find_vma(mm, addr)
            if idx < mm.nr_vmas and mm.vmas[idx].start < end:
                return EEXIST
        # Unknown prot bits are ignored by mmap (mprotect refuses them).
        vm_flags = <uint64_t>(prot & (PROT_READ | PROT_WRITE | PROT_EXEC))
        vm_flags |= PTR_VM_MAYREAD | PTR_VM_MAYWRITE | PTR_VM_MAYEXEC
        # calc_vm_flag_bits(), before the file/anonymous split
        if flags & MAP_GROWSDOWN:
            vm_flags |= PTR_VM_GROWSDOWN
        if flags & MAP_LOCKED:
            vm_flags |= PTR_VM_LOCKED
        if flags & MAP_SYNC:
            vm_flags |= PTR_VM_SYNC
        if flags & MAP_STACK:
            vm_flags |= PTR_VM_NOHUGEPAGE
        if hugetlb:
            err = self._hugetlb_mmap_tail(addr, end, flags, mtype, vm_flags, offset >> 12)
            if err == 0:
                result[0] = addr
            return err
        if file is not None:
            # file_mmap_ok(): the end of the mapping in the file fits in loff_t.
            if (offset >> 12) > ((<uint64_t>0x7FFFFFFFFFFFFFFF - length) >> 12):
                return EOVERFLOW
            if mtype == MAP_SHARED or mtype == MAP_SHARED_VALIDATE:
                if mtype == MAP_SHARED:
                    flags &= legacy
                # Neither ext4 without DAX nor shmem supports MAP_SYNC.
                if flags & ~legacy:
                    return EOPNOTSUPP
                if (prot & PROT_WRITE) and not fwrite:
                    return EACCES
                vm_flags |= PTR_VM_SHARED | PTR_VM_MAYSHARE
                # A read-only open file maps as if private: it can never
                # become writable (mprotect says EACCES).
                if not fwrite:
                    vm_flags &= ~(PTR_VM_MAYWRITE | PTR_VM_SHARED)
            elif mtype != MAP_PRIVATE:
                return EINVAL
            if vm_flags & PTR_VM_GROWSDOWN:
                return EINVAL
            pgoff = offset >> 12
        elif mtype == MAP_PRIVATE:
            pgoff = addr >> 12
        elif mtype == MAP_SHARED:
            if vm_flags & PTR_VM_GROWSDOWN:
                return EINVAL
            pgoff = 0
            vm_flags |= PTR_VM_SHARED | PTR_VM_MAYSHARE
        elif mtype == MAP_DROPPABLE:
            if flags & (MAP_LOCKED | MAP_HUGETLB) or vm_flags & PTR_VM_GROWSDOWN:
                return EINVAL
            return -2
        else:
            # MAP_SHARED_VALIDATE included: anonymous mappings take only
            # MAP_SHARED, MAP_PRIVATE and MAP_DROPPABLE.
            return EINVAL
        if flags & MAP_NORESERVE:
            vm_flags |= PTR_VM_NORESERVE
        # vms_gather_munmap_vmas(): a hugetlb VMA the range would cut off a
        # huge page boundary refuses the split (hugetlb_vm_op_split()).
        if flags & MAP_FIXED:
            err = munmap_split_check(mm, addr, end)
            if err:
                self._note_unmerged(addr)
                return err
        # accountable_mapping(): private writable memory is charged (and gets
        # VM_ACCOUNT) before the old mappings are cleared away: a failure
        # leaves them, split at the edges of the range (vms_abort_munmap_vmas).
        if (vm_flags & (PTR_VM_NORESERVE | PTR_VM_SHARED | PTR_VM_WRITE)) == PTR_VM_WRITE:
            # The pages of charged mappings it replaces are not charged twice.
            charged = (length >> 12) - _accounted_pages(mm, addr, end)
            if mm.machine.totalram_pages and charged and charged > mm.machine.totalram_pages:
                if flags & MAP_FIXED:
                    self._split_edges(addr, end)
                return ENOMEM
            vm_flags |= PTR_VM_ACCOUNT
        # shmem_zero_setup() charges the whole object after the clean-up of
        # the old range: a failure leaves a hole where they were.
        if file is None and (vm_flags & (PTR_VM_NORESERVE | PTR_VM_SHARED)) == PTR_VM_SHARED:
            if mm.machine.totalram_pages and (length >> 12) > mm.machine.totalram_pages:
                munmap_range(mm, addr, end)
                return ENOMEM
        # MAP_FIXED: the old mappings go first, with full munmap semantics.
        err = munmap_range(mm, addr, end)
        if err:
            return err
        memset(&vma, 0, sizeof(pt_vma))
        vma.start = addr
        vma.end = end
        vma.flags = vm_flags
        vma.pgoff = pgoff
        if file is not None:
            vma.shmem = file.s
            shmem_get(vma.shmem)
        elif vm_flags & PTR_VM_SHARED:
            vma.shmem = shmem_new(mm.machine, length >> 12)
            if vma.shmem == NULL:
                return ENOMEM
        vma.page_prot = vma_page_prot(&vma)
        idx = find_vma(mm, addr)
        if vma_insert(mm, idx, &vma) < 0:
            if vma.shmem != NULL:
                shmem_put(mm.machine, vma.shmem)
            return ENOMEM
        mm.total_vm += length >> 12
        if vm_flags & PTR_VM_LOCKED:
            mm.locked_vm += length >> 12
        # vma_merge_new_range(): with the previous VMA, then the next.
        if idx > 0 and try_merge(mm, idx - 1):
            idx -= 1
        try_merge(mm, idx)
        mm.vma_cache = 0
        if (vm_flags & PTR_VM_LOCKED) or (flags & (MAP_POPULATE | MAP_NONBLOCK)) == MAP_POPULATE:
            mm_populate(mm, addr, end, True)
        result[0] = addr
        return 0

    cdef void _split_edges(self, uint64_t addr, uint64_t end) noexcept:
        """Split the VMAs that straddle addr or end, and remember that Linux
        leaves these boundaries unmerged (a MAP_FIXED that failed late)."""
        cdef pt_mm *mm = self.mm
        cdef uint64_t i, b
        for b in (addr, end):
            i = find_vma(mm, b)
            if i < mm.nr_vmas and mm.vmas[i].start < b:
                if split_vma(mm, i, b) == 0:
                    self.unmerged_ok.add(b)
        mm.vma_cache = 0

    cdef void _note_unmerged(self, uint64_t addr) noexcept:
        """A failed call left VMAs split at addr that Linux does not merge again."""
        cdef uint64_t i = find_vma(self.mm, addr)
        if 0 < i < self.mm.nr_vmas and self.mm.vmas[i].start == addr \
                and is_mergeable(&self.mm.vmas[i - 1], &self.mm.vmas[i]):
            self.unmerged_ok.add(addr)

    cdef int _hugetlb_mmap_tail(self, uint64_t addr, uint64_t end, int flags, int mtype,
                                uint64_t vm_flags, uint64_t pgoff) noexcept:
        """The rest of do_mmap() for a MAP_HUGETLB mapping (a hugetlbfs file that
        ksys_mmap_pgoff() made for it): the file branch's checks, then mmap_region()
        with hugetlbfs_file_mmap()'s reservation (docs/hugetlb.md)."""
        cdef pt_mm *mm = self.mm
        cdef int legacy = (MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_DENYWRITE
                           | MAP_EXECUTABLE | MAP_UNINITIALIZED | MAP_GROWSDOWN | MAP_LOCKED
                           | MAP_NORESERVE | MAP_POPULATE | MAP_NONBLOCK | MAP_STACK | MAP_HUGETLB)
        cdef uint64_t length = end - addr, idx
        cdef pt_vma vma
        cdef int err
        # file_mmap_ok(): the end of the mapping in the file must fit in loff_t.
        if pgoff > ((<uint64_t>0x7FFFFFFFFFFFFFFF - length) >> 12):
            return EOVERFLOW
        if mtype == MAP_SHARED:
            flags &= legacy
        if mtype == MAP_SHARED or mtype == MAP_SHARED_VALIDATE:
            if flags & ~legacy:
                return EOPNOTSUPP
            vm_flags |= PTR_VM_SHARED | PTR_VM_MAYSHARE
        elif mtype != MAP_PRIVATE:
            return EINVAL
        if vm_flags & PTR_VM_GROWSDOWN:
            return EINVAL
        # hugetlb applies strict accounting unless MAP_NORESERVE.
        if flags & MAP_NORESERVE:
            vm_flags |= PTR_VM_NORESERVE
        memset(&vma, 0, sizeof(pt_vma))
        vma.start = addr
        vma.end = end
        vma.pgoff = pgoff
        # A MAP_FIXED range is split away (always on huge page boundaries here)
        # and cleared before the file's mmap method runs: a failure below leaves
        # a hole where it was.
        err = munmap_range(mm, addr, end)
        if err:
            return err
        vma.hfile = hfile_new(mm.machine, length >> 21)
        if vma.hfile == NULL:
            return ENOMEM
        # hugetlbfs_file_mmap() sets VM_HUGETLB | VM_DONTEXPAND; mmap_region()
        # then drops VM_LOCKED: hugetlb memory is never counted as locked.
        vma.flags = (vm_flags | PTR_VM_HUGETLB | PTR_VM_DONTEXPAND) & ~(PTR_VM_LOCKED | PTR_VM_LOCKONFAULT)
        vma.page_prot = vm_get_page_prot(vma.flags)
        err = hugetlbfs_file_mmap(mm.machine, &vma)
        if err:
            hfile_put(mm.machine, vma.hfile)
            return err
        idx = find_vma(mm, addr)
        if vma_insert(mm, idx, &vma) < 0:
            hugetlb_vm_op_close(mm.machine, &vma)
            return ENOMEM
        mm.total_vm += length >> 12
        mm.vma_cache = 0
        if (vm_flags & PTR_VM_LOCKED) or (flags & (MAP_POPULATE | MAP_NONBLOCK)) == MAP_POPULATE:
            mm_populate(mm, addr, end, True)
        return 0

    # --------------------------------------------------------------- munmap

    def munmap(self, addr, length):
        """munmap(2)."""
        cdef int err
        cdef uint64_t start = _ulong(addr)
        self._alive()
        self._no_reentry()
        err = self.do_munmap(start, _ulong(length))
        self._raise_pending()
        if err:
            if err == EINVAL:
                self._note_unmerged(start)
            raise _errno(err)

    cdef int do_munmap(self, uint64_t start, uint64_t length) noexcept nogil:
        cdef uint64_t end
        if (start & 4095) or start > self.mm.task_size or length > self.mm.task_size - start:
            return EINVAL
        end = start + ((length + 4095) & PTR_PAGE_MASK)
        if end == start:
            return EINVAL
        return munmap_range(self.mm, start, end)

    # ------------------------------------------------------------- mprotect

    def mprotect(self, addr, length, prot):
        """mprotect(2)."""
        cdef int err
        self._alive()
        self._no_reentry()
        err = self.do_mprotect(_ulong(addr), _ulong(length), _cint(prot))
        self._raise_pending()
        if err:
            raise _errno(err)

    cdef int do_mprotect(self, uint64_t start, uint64_t length, int prot) noexcept nogil:
        cdef pt_mm *mm = self.mm
        cdef int grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP)
        cdef uint64_t end, idx, tmp, nstart, oldflags, newflags
        cdef int64_t r
        cdef mmu_gather tlb
        cdef int error = 0
        prot &= ~(PROT_GROWSDOWN | PROT_GROWSUP)
        if grows == (PROT_GROWSDOWN | PROT_GROWSUP):
            return EINVAL
        if start & 4095:
            return EINVAL
        if length == 0:
            return 0
        length = (length + 4095) & PTR_PAGE_MASK
        end = start + length
        if end <= start:
            return ENOMEM
        if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM):
            return EINVAL
        idx = find_vma(mm, start)
        if idx == mm.nr_vmas or mm.vmas[idx].start >= end:
            return ENOMEM
        if grows & PROT_GROWSDOWN:
            start = mm.vmas[idx].start
            if not (mm.vmas[idx].flags & PTR_VM_GROWSDOWN):
                return EINVAL
        elif mm.vmas[idx].start > start:
            return ENOMEM
        elif grows & PROT_GROWSUP:
            # x86 has no VM_GROWSUP mappings.
            return EINVAL
        tlb_gather_mmu(&tlb, mm, False)
        nstart = start
        tmp = mm.vmas[idx].start
        while idx < mm.nr_vmas and mm.vmas[idx].start < end:
            if mm.vmas[idx].start != tmp:
                error = ENOMEM
                break
            oldflags = mm.vmas[idx].flags
            newflags = <uint64_t>(prot & (PROT_READ | PROT_WRITE | PROT_EXEC)) | (oldflags & ~VM_ACCESS_FLAGS)
            # A permission the VMA may never have (VM_MAY*) is refused.
            if (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS:
                error = EACCES
                break
            tmp = mm.vmas[idx].end if mm.vmas[idx].end < end else end
            r = self._mprotect_fixup(&tlb, idx, nstart, tmp, newflags)
            if r < 0:
                error = ENOMEM if r == -1 else <int>-r
                break
            # Go on after the VMA that now holds [nstart, tmp), from its end
            # (vma_iter_end()): an unchanged VMA is not split and may end past
            # tmp, and a merge with the next VMA covers that one too.
            idx = find_vma(mm, tmp - 1)
            tmp = mm.vmas[idx].end
            idx += 1
            nstart = tmp
        tlb_finish_mmu(&tlb)
        if not error and tmp < end:
            error = ENOMEM
        return error

    cdef int64_t _mprotect_fixup(self, mmu_gather *tlb, uint64_t idx, uint64_t start,
                                 uint64_t end, uint64_t newflags) noexcept nogil:
        cdef pt_mm *mm = self.mm
        cdef uint64_t oldflags = mm.vmas[idx].flags
        cdef bint try_writable
        cdef uint64_t addr
        cdef int64_t r
        if newflags == oldflags:
            return idx
        # Making private memory writable charges it (VM_ACCOUNT); making it
        # read-only again uncharges only anonymous memory never written.
        if newflags & PTR_VM_WRITE:
            if not (oldflags & (PTR_VM_ACCOUNT | PTR_VM_WRITE | PTR_VM_HUGETLB | PTR_VM_SHARED | PTR_VM_NORESERVE)):
                if mm.machine.totalram_pages and ((end - start) >> 12) > mm.machine.totalram_pages:
                    return -ENOMEM
                newflags |= PTR_VM_ACCOUNT
        elif (oldflags & PTR_VM_ACCOUNT) and mm.vmas[idx].shmem == NULL and not mm.vmas[idx].anon_vma:
            newflags &= ~PTR_VM_ACCOUNT
        if vma_modify_split_check(mm, idx, start, end):
            return -EINVAL
        r = vma_modify_flags(mm, idx, start, end, newflags)
        if r < 0:
            return -ENOMEM
        if newflags & PTR_VM_HUGETLB:
            hugetlb_change_protection(mm, &mm.vmas[r], start, end, mm.vmas[r].page_prot)
            return r
        # vma_wants_manual_pte_write_upgrade(): private writable mappings
        # may get their exclusive pages writable again at once, and shared
        # ones of a write-notify file their dirty pages.
        try_writable = (newflags & (PTR_VM_SHARED | PTR_VM_WRITE)) == PTR_VM_WRITE
        if (newflags & (PTR_VM_SHARED | PTR_VM_WRITE)) == (PTR_VM_SHARED | PTR_VM_WRITE):
            try_writable = (mm.vmas[r].page_prot & PTR_PAGE_RW) == 0
        change_protection(tlb, &mm.vmas[r], start, end, mm.vmas[r].page_prot, try_writable)
        # A locked private mapping that becomes writable is populated with
        # write faults right away, to break COW before any access.
        if (oldflags & (PTR_VM_WRITE | PTR_VM_SHARED | PTR_VM_LOCKED)) == PTR_VM_LOCKED and (newflags & PTR_VM_WRITE):
            addr = start
            idx = find_vma(mm, start)
            if not _guard_marker_at(mm, start):
                anon_vma_prepare(mm, idx)
            fault_range(mm, &mm.vmas[idx], &addr, end, True, True)
        return r

    # ---------------------------------------------------------------- mlock

    def mlock(self, addr, length):
        """mlock(2)."""
        cdef int err
        self._alive()
        self._no_reentry()
        err = self._do_mlock(_ulong(addr), _ulong(length), PTR_VM_LOCKED)
        self._raise_pending()
        if err:
            raise _errno(err)

    def munlock(self, addr, length):
        """munlock(2)."""
        cdef int err
        self._alive()
        self._no_reentry()
        err = self._do_mlock(_ulong(addr), _ulong(length), 0)
        self._raise_pending()
        if err:
            raise _errno(err)

    cdef int _do_mlock(self, uint64_t start, uint64_t length, uint64_t lockflags) noexcept nogil:
        cdef pt_mm *mm = self.mm
        cdef uint64_t end, idx, tmp, nstart, oldflags, newflags, pages
        cdef int64_t r
        cdef int err
        length = (length + (start & 4095) + 4095) & PTR_PAGE_MASK
        start &= PTR_PAGE_MASK
        # apply_vma_lock_flags()
        end = start + length
        if end < start:
            return EINVAL
        if end == start:
            return 0
        idx = find_vma(mm, start)
        if idx == mm.nr_vmas or mm.vmas[idx].start > start:
            return ENOMEM
        nstart = start
        tmp = mm.vmas[idx].start
        while idx < mm.nr_vmas and mm.vmas[idx].start < end:
            if mm.vmas[idx].start != tmp:
                return ENOMEM
            oldflags = mm.vmas[idx].flags
            newflags = (oldflags & ~(PTR_VM_LOCKED | PTR_VM_LOCKONFAULT)) | lockflags
            tmp = mm.vmas[idx].end if mm.vmas[idx].end < end else end
            if newflags != oldflags and not (oldflags & VM_SPECIAL) and not (oldflags & PTR_VM_HUGETLB):
                r = vma_modify_flags(mm, idx, nstart, tmp, newflags)
                if r < 0:
                    return ENOMEM
                pages = (tmp - nstart) >> 12
                if newflags & PTR_VM_LOCKED:
                    if not (oldflags & PTR_VM_LOCKED):
                        mm.locked_vm += pages
                else:
                    mm.locked_vm -= pages
            idx = find_vma(mm, tmp - 1)
            tmp = mm.vmas[idx].end
            idx += 1
            nstart = tmp
        if tmp < end:
            return ENOMEM
        if lockflags:
            err = mm_populate(mm, start, end, False)
            if err:
                # __mlock_posix_error_return(): EFAULT becomes ENOMEM and
                # ENOMEM becomes EAGAIN.
                if err == -EFAULT:
                    return ENOMEM
                return EAGAIN if err == -ENOMEM else -err
        return 0

    # -------------------------------------------------------------- madvise

    def madvise(self, addr, length, advice):
        """madvise(2)."""
        cdef int err
        self._alive()
        self._no_reentry()
        err = self.do_madvise(_ulong(addr), _ulong(length), _cint(advice))
        self._raise_pending()
        if err:
            raise _errno(err)

    cdef int do_madvise(self, uint64_t start, uint64_t len_in, int advice) noexcept nogil:
        cdef pt_mm *mm = self.mm
        cdef uint64_t length, end, idx, last_end
        cdef int unmapped_error = 0, error = 0
        cdef mmu_gather tlb
        cdef bint batched
        if not madvise_behavior_valid(advice):
            return EINVAL
        # is_valid_madvise() (R33)
        if start & 4095:
            return EINVAL
        length = (len_in + 4095) & PTR_PAGE_MASK
        if len_in and not length:
            return EINVAL
        if start + length < start:
            return EINVAL
        end = start + length
        if end == start:
            return 0
        if advice == MADV_POPULATE_READ or advice == MADV_POPULATE_WRITE:
            return self._madvise_populate(start, end, advice == MADV_POPULATE_WRITE)
        # One gather for the whole call, over every VMA, for the advice that
        # batches its TLB flushes (R35); the others take none or their own.
        batched = advice == MADV_DONTNEED or advice == MADV_DONTNEED_LOCKED or advice == MADV_FREE
        if batched:
            tlb_gather_mmu(&tlb, mm, False)
        # madvise_walk_vmas() (R34)
        idx = find_vma(mm, start)
        last_end = end
        while True:
            if idx == mm.nr_vmas:
                error = ENOMEM
                break
            if start < mm.vmas[idx].start:
                unmapped_error = ENOMEM
                start = mm.vmas[idx].start
                if start >= last_end:
                    break
            end = mm.vmas[idx].end if mm.vmas[idx].end < last_end else last_end
            error = self._madvise_vma_behavior(&tlb, &idx, start, end, advice)
            if error:
                break
            start = end
            if start >= last_end:
                break
            idx = find_vma(mm, start)
        if batched:
            tlb_finish_mmu(&tlb)
        return error if error else unmapped_error

    cdef int _madvise_populate(self, uint64_t start, uint64_t end, bint write) noexcept nogil:
        cdef pt_mm *mm = self.mm
        cdef uint64_t idx, nend, addr
        cdef pt_vma *vma
        cdef int r
        while start < end:
            idx = find_vma(mm, start)
            if idx == mm.nr_vmas or mm.vmas[idx].start > start:
                return ENOMEM
            vma = &mm.vmas[idx]
            # check_vma_flags() without FOLL_FORCE: an access the VMA does
            # not allow is "incompatible" (EINVAL).
            if vma.flags & (PTR_VM_IO | PTR_VM_PFNMAP):
                return EINVAL
            if write and not (vma.flags & PTR_VM_WRITE):
                return EINVAL
            if not write and not (vma.flags & PTR_VM_READ):
                return EINVAL
            nend = vma.end if vma.end < end else end
            addr = start
            if is_vm_hugetlb_page(vma):
                r = hugetlb_fault_range(mm, idx, &addr, nend, write, True)
                if r == FAULT_OOM:
                    return ENOMEM
                if r != FAULT_OK:
                    return EFAULT
                start = nend
                continue
            if write and not (vma.flags & PTR_VM_SHARED) and not _guard_marker_at(mm, addr):
                anon_vma_prepare(mm, idx)
                vma = &mm.vmas[idx]
            r = fault_range(mm, vma, &addr, nend, write, True)
            if r == FAULT_OOM:
                return ENOMEM
            if r != FAULT_OK:
                return EFAULT
            start = nend
        return 0

    cdef int _madvise_vma_behavior(self, mmu_gather *tlb, uint64_t *pidx, uint64_t start,
                                   uint64_t end, int advice) noexcept nogil:
        cdef pt_mm *mm = self.mm
        cdef uint64_t idx = pidx[0]
        cdef pt_vma *vma = &mm.vmas[idx]
        cdef uint64_t new_flags = vma.flags
        cdef uint64_t first, last
        cdef int64_t r
        cdef mmu_gather own
        if (advice == MADV_DONTNEED or advice == MADV_DONTNEED_LOCKED or advice == MADV_FREE) \
                and is_vm_hugetlb_page(vma):
            # madvise_dontneed_free_valid_vma() for hugetlb (R36, SC-31): no
            # MADV_FREE; the start on a huge page boundary, the end rounded
            # down to one.
            if advice == MADV_FREE or (start & (PTR_PMD_SIZE - 1)):
                return EINVAL
            end &= PTR_PMD_MASK
            if end == start:
                return 0
            # zap_page_range_single_batched(): the hugetlb zap, then the gather
            # is finished and a new one started.
            __unmap_hugepage_range(tlb, vma, start, end, -1)
            tlb_finish_mmu(tlb)
            tlb_gather_mmu(tlb, mm, False)
            return 0
        if advice == MADV_DONTNEED or advice == MADV_DONTNEED_LOCKED or advice == MADV_FREE:
            # madvise_dontneed_free_valid_vma() (R36)
            if vma.flags & (PTR_VM_PFNMAP | (0 if advice == MADV_DONTNEED_LOCKED else PTR_VM_LOCKED)):
                return EINVAL
            if advice == MADV_FREE:
                if vma.shmem != NULL:
                    return EINVAL
                madvise_free_range(tlb, vma, start, end)
                return 0
            return madvise_dontneed_single_vma(tlb, vma, start, end)
        if advice == MADV_REMOVE and is_vm_hugetlb_page(vma):
            # The hugetlbfs file: a hole punch of its whole huge pages.
            if vma.flags & PTR_VM_LOCKED:
                return EINVAL
            if (vma.flags & (PTR_VM_SHARED | PTR_VM_MAYWRITE)) != (PTR_VM_SHARED | PTR_VM_MAYWRITE):
                return EACCES
            hugetlbfs_punch_hole(mm, vma, start, end)
            return 0
        if advice == MADV_REMOVE:
            if vma.flags & PTR_VM_LOCKED:
                return EINVAL
            if vma.shmem == NULL:
                return EINVAL
            if (vma.flags & (PTR_VM_SHARED | PTR_VM_MAYWRITE)) != (PTR_VM_SHARED | PTR_VM_MAYWRITE):
                return EACCES
            first = vma.pgoff + ((start - vma.start) >> 12)
            last = first + ((end - start) >> 12) - 1
            # shmem_fallocate(PUNCH_HOLE): unmap in every mm, then drop the
            # pages; no page table is reclaimed on this path (R40).
            unmap_mapping_range(mm.machine, self.machine.mms, self.machine.nr_mms,
                                vma.shmem, first, last)
            # A huge folio the hole covers in part is split first, which
            # unmaps the rest of it everywhere too.
            shmem_punch_split(mm.machine, vma.shmem, first, last)
            shmem_punch(mm.machine, vma.shmem, first, last)
            return 0
        if advice == MADV_WILLNEED:
            if vma.shmem != NULL and (vma.shmem.flags & SHM_REGULAR):
                # vfs_fadvise(POSIX_FADV_WILLNEED) -> force_page_cache_readahead():
                # the range is read into the page cache up to i_size, clean,
                # nothing is mapped (4 KiB pages here).
                first = vma.pgoff + ((start - vma.start) >> 12)
                last = first + ((end - start) >> 12)
                if last > vma.shmem.size_pages:
                    last = vma.shmem.size_pages
                while first < last:
                    if file_read_page(mm.machine, vma.shmem, first) < 0:
                        return ENOMEM
                    first += 1
            return 0
        if advice == MADV_COLLAPSE:
            if vma.shmem != NULL and (vma.shmem.flags & SHM_REGULAR):
                # thp_vma_allowable_order(): a disk file's VMA qualifies only
                # through CONFIG_READ_ONLY_THP_FOR_FS (and a file nobody has
                # open for writing), which is not modelled.
                return EINVAL
            return madvise_collapse(mm, vma, start, end)
        if advice == MADV_GUARD_INSTALL or advice == MADV_GUARD_REMOVE:
            return self._madvise_guard(idx, start, end, advice == MADV_GUARD_INSTALL)
        if advice == MADV_COLD or advice == MADV_PAGEOUT:
            if vma.flags & (PTR_VM_LOCKED | PTR_VM_PFNMAP | PTR_VM_HUGETLB):
                return EINVAL
            # madvise_cold() / madvise_pageout(): a gather of their own.
            tlb_gather_mmu(&own, mm, False)
            if advice == MADV_PAGEOUT:
                madvise_pageout_range(&own, vma, start, end)
            else:
                madvise_cold_range(&own, vma, start, end)
            tlb_finish_mmu(&own)
            return 0
        if advice == MADV_NORMAL:
            new_flags &= ~(PTR_VM_RAND_READ | PTR_VM_SEQ_READ)
        elif advice == MADV_SEQUENTIAL:
            new_flags = (new_flags & ~PTR_VM_RAND_READ) | PTR_VM_SEQ_READ
        elif advice == MADV_RANDOM:
            new_flags = (new_flags & ~PTR_VM_SEQ_READ) | PTR_VM_RAND_READ
        elif advice == MADV_DONTFORK:
            new_flags |= PTR_VM_DONTCOPY
        elif advice == MADV_DOFORK:
            if new_flags & PTR_VM_IO:
                return EINVAL
            new_flags &= ~PTR_VM_DONTCOPY
        elif advice == MADV_WIPEONFORK:
            if vma.shmem != NULL or vma.hfile != NULL or (new_flags & PTR_VM_SHARED):
                return EINVAL
            new_flags |= PTR_VM_WIPEONFORK
        elif advice == MADV_KEEPONFORK:
            new_flags &= ~PTR_VM_WIPEONFORK
        elif advice == MADV_DONTDUMP:
            new_flags |= PTR_VM_DONTDUMP
        elif advice == MADV_DODUMP:
            if (new_flags & VM_SPECIAL) and not is_vm_hugetlb_page(vma):
                return EINVAL
            new_flags &= ~PTR_VM_DONTDUMP
        elif advice == MADV_MERGEABLE:
            # ksm_madvise(): only private, ordinary memory can merge.
            if not (new_flags & (PTR_VM_SHARED | PTR_VM_MAYSHARE | VM_SPECIAL | PTR_VM_HUGETLB)):
                new_flags |= PTR_VM_MERGEABLE
        elif advice == MADV_UNMERGEABLE:
            new_flags &= ~PTR_VM_MERGEABLE
        elif advice == MADV_HUGEPAGE:
            new_flags = (new_flags & ~PTR_VM_NOHUGEPAGE) | PTR_VM_HUGEPAGE
        elif advice == MADV_NOHUGEPAGE:
            new_flags = (new_flags & ~PTR_VM_HUGEPAGE) | PTR_VM_NOHUGEPAGE
        # madvise_update_vma(): nothing to do (and no merge) if unchanged.
        if new_flags == vma.flags:
            return 0
        if vma_modify_split_check(mm, idx, start, end):
            return EINVAL
        r = vma_modify_flags(mm, idx, start, end, new_flags)
        if r < 0:
            return EAGAIN
        pidx[0] = <uint64_t>r
        return 0

    cdef int _madvise_guard(self, uint64_t idx, uint64_t start, uint64_t end,
                            bint install) noexcept nogil:
        """MADV_GUARD_INSTALL / MADV_GUARD_REMOVE on one VMA piece (R43)."""
        cdef pt_mm *mm = self.mm
        cdef pt_vma *vma = &mm.vmas[idx]
        cdef mmu_gather tlb
        cdef int attempt, r
        if vma.flags & (VM_SPECIAL | PTR_VM_HUGETLB | (PTR_VM_LOCKED if install else 0)):
            return EINVAL
        if not install:
            guard_remove_range(mm, start, end)
            return 0
        # The whole VMA may now hold markers: a sticky flag, set without a
        # split, that merges keep.
        vma.flags |= PTR_VM_MAYBE_GUARD
        if vma.shmem == NULL:
            anon_vma_prepare(mm, idx)
            vma = &mm.vmas[idx]
        for attempt in range(3):
            r = guard_install_range(mm, start, end)
            if r == 0:
                return 0
            if r < 0:
                return ENOMEM
            # A mapped page is in the way: zap the range (markers stay, no
            # PT reclaim) and walk again.
            tlb_gather_mmu(&tlb, mm, False)
            unmap_page_range(&tlb, vma, start, end, NULL)
            tlb_finish_mmu(&tlb)
        return EINTR

    # --------------------------------------------------------------- mremap

    def mremap(self, old_address, old_size, new_size, flags=0, new_address=0):
        """mremap(2): shrink, grow or move a mapping; returns its (new) address."""
        cdef int err
        cdef uint64_t result = 0
        self._alive()
        self._no_reentry()
        err = self._do_mremap(_ulong(old_address), _ulong(old_size), _ulong(new_size), _ulong(flags),
                              _ulong(new_address), &result)
        self._raise_pending()
        if err == REMAP_UNSIMULATED:
            raise NotImplementedError("mremap of userfaultfd-registered memory is not simulated yet")
        if err == REMAP_HUGETLB_HANG:
            raise NotImplementedError("this mremap of a shared hugetlb mapping hangs Linux 6.18 "
                                      "(huge_pmd_share() under the move's i_mmap_rwsem); not simulated")
        if err:
            raise _errno(err)
        return result

    cdef int _do_mremap(self, uint64_t addr, uint64_t old_len, uint64_t new_len, uint64_t flags,
                        uint64_t new_addr, uint64_t *result) noexcept:
        cdef pt_mm *mm = self.mm
        cdef remap_state vrm
        cdef int err
        memset(&vrm, 0, sizeof(remap_state))
        vrm.addr = addr
        vrm.old_len = (old_len + 4095) & PTR_PAGE_MASK
        vrm.new_len = (new_len + 4095) & PTR_PAGE_MASK
        vrm.flags = flags
        vrm.new_addr = new_addr
        # check_mremap_params(), before the VMA is looked up.
        if flags & ~(<uint64_t>(MREMAP_FIXED | MREMAP_MAYMOVE | MREMAP_DONTUNMAP)):
            return EINVAL
        if addr & 4095:
            return EINVAL
        if vrm.new_len == 0 or vrm.new_len > mm.task_size:
            return EINVAL
        if remap_implies_new_addr(&vrm):
            if new_addr > mm.task_size - vrm.new_len or new_addr & 4095:
                return EINVAL
            if not (flags & MREMAP_MAYMOVE):
                return EINVAL
            if (flags & MREMAP_DONTUNMAP) and vrm.old_len != vrm.new_len:
                return EINVAL
            # The two ranges may not overlap (the sums wrap as unsigned longs).
            if addr + vrm.old_len > new_addr and new_addr + vrm.new_len > addr:
                return EINVAL
        if (flags & MREMAP_FIXED) and vrm.old_len == vrm.new_len:
            err = remap_move(mm, &vrm, result, self.unmerged_ok)
        else:
            err = remap_check_prep_vma(mm, vma_lookup(mm, addr), &vrm)
            if not err:
                if remap_implies_new_addr(&vrm):
                    err = remap_to(mm, &vrm, self.unmerged_ok)
                else:
                    err = remap_at(mm, &vrm, self.unmerged_ok)
            if not err:
                result[0] = vrm.new_addr
        # A locked VMA that grew: the new part is populated, as mlock would.
        if not err and vrm.populate_expand:
            mm_populate(mm, vrm.new_addr + vrm.old_len, vrm.new_addr + vrm.old_len + vrm.delta, True)
        return err

    # ---------------------------------------------------------------- touch

    def touch(self, addr, length=4096, *, bint write=True):
        """Load from (write=False) or store to every 4 KiB page of [addr, addr+length)."""
        cdef uint64_t start = _ulong(addr), size = _ulong(length)
        cdef uint64_t where = 0, end
        cdef int r
        self._alive()
        if size == 0:
            return
        end = start + size
        if end < start:
            raise ValueError("addr + length wraps around the address space")
        if size > _NOGIL_TOUCH_BYTES:
            with nogil:
                r = self.do_touch(start, end, write, &where)
        else:
            # Releasing the GIL costs more than a few spans of accesses.
            r = self.do_touch(start, end, write, &where)
        self._raise_pending()
        if r == FAULT_SIGSEGV:
            raise SegmentationFault(where if where > start else start)
        if r == FAULT_UFFD:
            raise UserfaultfdFault(where if where > start else start)
        if r == FAULT_SIGBUS:
            raise BusError(where if where > start else start)
        if r == FAULT_OOM:
            raise OutOfMemory(f"no free frame for the access at {where:#x}")
        if r:
            raise MemoryError("the host is out of memory")

    cdef bint _touch_one_fast(self, uint64_t addr, bint write) noexcept nogil:
        """The bulk API's common cases, inline: an access the entry already
        allows, or a write to a none entry of a table that exists in a private
        VMA with an anon_vma. Anything else (a missing table, a fault of another
        kind, a tracepoint to call) returns False for do_touch() to handle."""
        cdef pt_mm *mm = self.mm
        cdef uint64_t vi = mm.vma_cache
        cdef pt_vma *vma
        cdef pteval_t *pte
        cdef pteval_t e
        cdef int64_t pfn
        if mm.trace_mask or vi >= mm.nr_vmas:
            return False
        vma = &mm.vmas[vi]
        if not (vma.start <= addr < vma.end):
            return False
        if write:
            if not (vma.flags & PTR_VM_WRITE) or (vma.shmem == NULL and not vma.anon_vma):
                return False
        elif not vma_is_accessible(vma):
            return False
        pte = walk_pte(mm, addr)
        if pte == NULL:
            return False
        e = pte[0]
        if pte_present(e) and (not write or pte_write(e)):
            pte[0] = e | PTR_PAGE_ACCESSED | (PTR_PAGE_DIRTY if write else 0)
            if write and not (e & PTR_PAGE_SPECIAL):
                page_stored(&mm.machine.frames, pte_pfn(e))
            return True
        if write and pte_none(e) and vma.shmem == NULL:
            pfn = anon_page_fast(&mm.machine.frames)
            if pfn < 0:
                return False
            pte[0] = (<uint64_t>pfn << 12) | vma.page_prot | PTR_PAGE_DIRTY | PTR_PAGE_RW
            mm.rss[MM_ANONPAGES] += 1
            mm.stats.page_faults += 1
            return True
        return False

    cdef int do_touch(self, uint64_t start, uint64_t end, bint write, uint64_t *where) noexcept nogil:
        cdef pt_mm *mm = self.mm
        cdef uint64_t addr = start & PTR_PAGE_MASK, vi, vend
        cdef pt_vma *vma
        cdef int r
        while addr < end:
            vi = mm.vma_cache
            if not (vi < mm.nr_vmas and mm.vmas[vi].start <= addr < mm.vmas[vi].end):
                vi = find_vma(mm, addr)
                if vi == mm.nr_vmas or mm.vmas[vi].start > addr:
                    where[0] = addr
                    return FAULT_SIGSEGV
                mm.vma_cache = vi
            vma = &mm.vmas[vi]
            # access_error(): writes need VM_WRITE, reads any permission.
            if write:
                if not (vma.flags & PTR_VM_WRITE):
                    where[0] = addr
                    return FAULT_SIGSEGV
                if not (vma.flags & PTR_VM_SHARED) and not vma.anon_vma and not is_vm_hugetlb_page(vma) \
                        and not _guard_marker_at(mm, addr):
                    anon_vma_prepare(mm, vi)
            elif not vma_is_accessible(vma):
                where[0] = addr
                return FAULT_SIGSEGV
            vend = vma.end if vma.end < end else end
            if is_vm_hugetlb_page(vma):
                r = hugetlb_fault_range(mm, vi, &addr, vend, write, False)
                if r != FAULT_OK:
                    where[0] = addr
                    return r
                continue
            r = fault_range(mm, vma, &addr, vend, write, False)
            if r != FAULT_OK:
                where[0] = addr
                return r
        return 0

    def touch_pages(self, addresses, write=True):
        """One access per address, in array order, all inside the core.

        addresses: a 1-D array of uint64 addresses (any order, any VMA);
        write: a bool for all, or a bool array of the same length. Stops with
        SegmentationFault (its .index is the position in the array) at the
        first access Linux answers with SIGSEGV, after the ones before it, as
        the same accesses made one by one with touch() would.
        """
        cdef const uint64_t[::1] addrs = _as_u64_array(addresses)
        cdef const uint8_t[::1] writes
        cdef Py_ssize_t n = addrs.shape[0], i = 0
        cdef bint one_write = True, per_address = False, wr
        cdef uint64_t where = 0
        cdef int r = 0
        self._alive()
        if isinstance(write, (bool, int)) and not hasattr(write, "shape"):
            one_write = bool(write)
        else:
            w = np.asarray(write)
            if w.dtype != np.bool_:
                raise TypeError(f"write must be a bool or a bool array, not {w.dtype}")
            if w.shape != (n,):
                raise ValueError(f"write has shape {w.shape}, addresses has ({n},)")
            writes = np.ascontiguousarray(w).view(np.uint8)
            per_address = True
        with nogil:
            while i < n:
                if i + TOUCH_PAGES_AHEAD < n:
                    prefetch_pte(self.mm, addrs[i + TOUCH_PAGES_AHEAD])
                if addrs[i] == <uint64_t>-1:
                    r = FAULT_SIGSEGV
                    where = addrs[i]
                    break
                wr = writes[i] != 0 if per_address else one_write
                if self._touch_one_fast(addrs[i], wr):
                    i += 1
                    continue
                r = self.do_touch(addrs[i], addrs[i] + 1, wr, &where)
                if r != FAULT_OK:
                    break
                i += 1
        self._raise_pending()
        if r == FAULT_SIGSEGV:
            exc = SegmentationFault(addrs[i])
            exc.index = i
            raise exc
        if r == FAULT_UFFD:
            exc = UserfaultfdFault(addrs[i])
            exc.index = i
            raise exc
        if r == FAULT_SIGBUS:
            exc = BusError(addrs[i])
            exc.index = i
            raise exc
        if r == FAULT_OOM:
            exc = OutOfMemory(f"no free frame for the access at {addrs[i]:#x}")
            exc.index = i
            raise exc
        if r:
            raise MemoryError("the host is out of memory")

    # ------------------------------------------------------------------ exit

    def exit(self):
        """exit_mmap(): unmap everything and free every table."""
        self._alive()
        self._no_reentry()
        self.mm.trace_mask = 0
        exit_mmap(self.mm)
        self.dead = True
        self.fds.clear()
        if self.mm.pgtables_bytes != 0:
            raise InvariantError("pgtables_bytes is not 0 after exit", str(self.mm.pgtables_bytes))

    # ------------------------------------------------------------------ fork

    def fork(self):
        """fork(2): a child process on the same Machine, made by dup_mmap().

        Returns the child's MM. Raises OSError(ENOMEM) when the overcommit
        check refuses one of the VMAs to copy; as in Linux, the parent's
        entries already write-protected for earlier VMAs stay so.
        """
        cdef MM child
        cdef int err
        cdef uint64_t i
        self._alive()
        self._no_reentry()
        child = MM.__new__(MM, pt_reclaim=_RECLAIM_NAMES[self.mm.reclaim_mode],
                           thp=_THP_NAMES[self.mm.thp], split_ptlocks=self.mm.split_ptlocks,
                           machine=self.machine, paging_levels=self.mm.paging_levels)
        child.mm.mmap_base = self.mm.mmap_base
        child.mm.contention = self.mm.contention
        child.mm.rng = self.mm.rng
        child.unmerged_ok = set(self.unmerged_ok)
        child.fds = dict(self.fds)
        err = dup_mmap(child.mm, self.mm)
        # dup_mmap() copies VMAs one by one and never merges them: the
        # child keeps boundaries that have become mergeable (a VM_LOCKED
        # difference gone, say).
        for i in range(1, child.mm.nr_vmas):
            if is_mergeable(&child.mm.vmas[i - 1], &child.mm.vmas[i]):
                child.unmerged_ok.add(child.mm.vmas[i].start)
        if err:
            # The half-built child goes away as a process would: exit_mmap().
            child.mm.trace_mask = 0
            exit_mmap(child.mm)
            child.dead = True
            raise _errno(err)
        return child

    # -------------------------------------------------------------- userfaultfd

    def uffd_register_wp(self, addr, length):
        """UFFDIO_REGISTER in write-protect mode over [addr, addr+length) (sets VM_UFFD_WP).

        One userfaultfd context per mm. The range must be page aligned and fully
        mapped by private anonymous or shmem VMAs (EINVAL otherwise).
        """
        cdef pt_mm *mm = self.mm
        cdef uint64_t start = _ulong(addr), size = _ulong(length), end, idx, tmp
        self._alive()
        self._no_reentry()
        end = start + size
        if (start | size) & 4095 or size == 0 or end < start or end > mm.task_size:
            raise _errno(EINVAL)
        idx = find_vma(mm, start)
        tmp = start
        while tmp < end:
            if idx >= mm.nr_vmas or mm.vmas[idx].start > tmp or mm.vmas[idx].flags & (VM_SPECIAL | PTR_VM_HUGETLB):
                raise _errno(EINVAL)
            # vma_can_userfault(): anonymous, hugetlb or shmem memory only.
            if mm.vmas[idx].shmem != NULL and (mm.vmas[idx].shmem.flags & SHM_REGULAR):
                raise _errno(EINVAL)
            if mm.vmas[idx].shmem != NULL and not (mm.vmas[idx].flags & PTR_VM_MAYSHARE):
                raise NotImplementedError("userfaultfd on a private mapping of a shmem file is not simulated yet")
            tmp = mm.vmas[idx].end
            idx += 1
        tmp = start
        while tmp < end:
            idx = find_vma(mm, tmp)
            r = vma_modify_flags(mm, idx, tmp, min(mm.vmas[idx].end, end),
                                 mm.vmas[idx].flags | PTR_VM_UFFD_WP)
            if r < 0:
                raise MemoryError()
            tmp = min(mm.vmas[find_vma(mm, tmp)].end, end)

    def uffd_wp(self, addr, length, enable=True):
        """UFFDIO_WRITEPROTECT: write-protect (or release) [addr, addr+length).

        ENOENT where the range is not registered for write-protect (or a hole).
        """
        cdef pt_mm *mm = self.mm
        cdef uint64_t start = _ulong(addr), size = _ulong(length), end, idx, tmp, stop
        self._alive()
        self._no_reentry()
        end = start + size
        if (start | size) & 4095 or size == 0 or end < start:
            raise _errno(EINVAL)
        tmp = start
        while tmp < end:
            idx = find_vma(mm, tmp)
            if idx >= mm.nr_vmas or mm.vmas[idx].start > tmp or not (mm.vmas[idx].flags & PTR_VM_UFFD_WP):
                raise _errno(ENOENT)
            stop = min(mm.vmas[idx].end, end)
            if uffd_wp_range(mm, &mm.vmas[idx], tmp, stop, bool(enable)) < 0:
                raise MemoryError()
            tmp = stop

    # ------------------------------------------------------------ tracepoints

    def on(self, event, callback):
        """Call callback(TraceEvent) at every `event` (see EVENTS and docs/races.md).

        At lock-free points (fault, zap_begin, zap_end, zap_lock_dropped,
        reclaim_slow) the callback may fault pages into this mm with touch(),
        as another thread would; at the others it may only observe.
        A "pmd_trylock" callback that returns True makes the try-lock fail.
        """
        if event not in _EVENT_IDS:
            raise ValueError(f"unknown event {event!r}; events: {', '.join(EVENTS)}")
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._listeners.setdefault(event, []).append(callback)
        self.mm.trace_mask |= 1u << _EVENT_IDS[event]

    def off(self, event, callback=None):
        """Remove one callback of `event`, or all of them."""
        if event not in _EVENT_IDS:
            raise ValueError(f"unknown event {event!r}")
        callbacks = self._listeners.get(event, [])
        if callback is None:
            callbacks.clear()
        else:
            callbacks.remove(callback)
        if not callbacks:
            self._listeners.pop(event, None)
            self.mm.trace_mask &= ~(1u << _EVENT_IDS[event])

    def set_contention(self, probability=0.0, *, seed=0):
        """Make the PMD try-lock of the reclaim fast path fail with this probability."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be in [0, 1]")
        self.mm.contention = probability
        self.mm.rng = (_ulong(seed) * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF or 1

    def inject_need_resched(self, after_entries):
        """The next zap loop drops its lock once, after that many PTE entries (None: never)."""
        if after_entries is None:
            self.mm.resched_countdown = -1
        else:
            self.mm.resched_countdown = _ulong(after_entries)

    @property
    def lost_mappings(self):
        """Tables PT reclaim freed while they still mapped something (0 with the 6.18 rules)."""
        return self.mm.lost_mappings

    cdef int _dispatch(self, int event, uint64_t addr, uint64_t arg) noexcept:
        cdef int result = 0
        cdef uint32_t saved = self.mm.trace_mask
        name = EVENTS[event]
        ev = TraceEvent(name, self, addr, arg)
        # Callbacks run with tracing off (no recursion) and with the rights of
        # the point they run at.
        self.mm.trace_mask = 0
        self.cb_state = 1 if event in _LOCK_FREE else 2
        try:
            for callback in list(self._listeners.get(name, ())):
                if callback(ev) and event == EV_PMD_TRYLOCK:
                    result = 1
        except BaseException as exc:
            if self._pending is None:
                self._pending = exc
        finally:
            self.cb_state = 0
            self.mm.trace_mask = saved
        return result

    # ----------------------------------------------------------- observation

    @property
    def pgtables_bytes(self):
        """mm->pgtables_bytes: VmPTE in bytes."""
        return self.mm.pgtables_bytes

    def status(self):
        """The memory fields of /proc/<pid>/status, in kB."""
        cdef pt_mm *mm = self.mm
        anon = mm.rss[MM_ANONPAGES] * 4
        file = mm.rss[MM_FILEPAGES] * 4
        shmem = mm.rss[MM_SHMEMPAGES] * 4
        return {
            "VmSize": mm.total_vm * 4,
            "VmLck": mm.locked_vm * 4,
            "VmPin": 0,
            "VmRSS": anon + file + shmem,
            "RssAnon": anon,
            "RssFile": file,
            "RssShmem": shmem,
            "VmPTE": mm.pgtables_bytes // 1024,
            "VmSwap": mm.rss[MM_SWAPENTS] * 4,
            "HugetlbPages": mm.hugetlb_usage * 4,
            "ShmemPmdMapped": mm.nr_shmem_pmds * 2048,
        }

    @property
    def stats(self):
        """Counters of what the simulated kernel did."""
        cdef pt_stats *s = &self.mm.stats
        values = (s.page_faults, s.pte_tables_allocated, s.pmd_tables_allocated,
                  s.pud_tables_allocated, s.pte_tables_freed_reclaim_fast,
                  s.pte_tables_freed_reclaim_slow, s.reclaim_slow_abandoned,
                  s.pte_tables_freed_unmap, s.pmd_tables_freed, s.pud_tables_freed,
                  s.tlb_flushes, s.mmu_gathers, s.table_batches, s.thp_fault_alloc,
                  s.thp_zero_page, s.thp_split_pmd, s.thp_deposits_freed, s.thp_collapse_alloc,
                  s.p4d_tables_allocated, s.p4d_tables_freed)
        return dict(zip(STATS_FIELDS, values))

    def vmas(self):
        """The VMA list as (start, end, vm_flags, anon_vma) tuples."""
        cdef uint64_t i
        cdef pt_vma *v
        out = []
        for i in range(self.mm.nr_vmas):
            v = &self.mm.vmas[i]
            out.append((v.start, v.end, v.flags, v.anon_vma != 0))
        return out

    def read_entry(self, uint64_t address, level="pte"):
        """The raw entry mapping address at that level (0 if none)."""
        cdef pteval_t *pmd
        cdef pteval_t *pte
        cdef pteval_t e
        cdef pt_pool *pool = &self.mm.machine.pool
        cdef pteval_t *p4d
        if address >= self.mm.task_size + 4096:
            raise ValueError("address beyond the user address space")
        if level not in ("pgd", "p4d", "pud", "pmd", "pte"):
            raise ValueError(f"level must be pgd, p4d, pud, pmd or pte, not {level!r}")
        if level == "pgd":
            return self.mm.pgd[pgd5_index(address) if self.mm.paging_levels == 5 else pgd_index(address)]
        # With 4 levels the P4D entry is the PGD entry (folded, R2).
        p4d = p4d_offset(self.mm, address)
        e = p4d[0] if p4d != NULL else 0
        if level == "p4d":
            return e
        if e == 0:
            return 0
        e = entry_table(pool, e)[(address >> 30) & 511]
        if level == "pud":
            return e
        if e == 0:
            return 0
        e = entry_table(pool, e)[(address >> 21) & 511]
        if level == "pmd":
            return e
        if e == 0 or pmd_huge_leaf(e):
            return 0
        return entry_table(pool, e)[(address >> 12) & 511]

    def entries(self, uint64_t start=0, end=None):
        """(address, entry) for every non-none PTE in [start, end), ascending.
        end defaults to TASK_SIZE."""
        cdef uint64_t stop = self.mm.task_size + 4096 if end is None else end
        cdef pt_pool *pool = &self.mm.machine.pool
        cdef uint64_t g, u, m, t, base
        cdef pteval_t *pud
        cdef pteval_t *pmd
        cdef pteval_t *pte
        out = []
        for gb, ge in _pud_slots(self.mm):
            pud = entry_table(pool, <pteval_t>ge)
            for u in range(512):
                if pud[u] == 0:
                    continue
                pmd = entry_table(pool, pud[u])
                for m in range(512):
                    if pmd[m] == 0 or pmd_huge_leaf(pmd[m]):
                        continue
                    base = gb | (u << 30) | (m << 21)
                    if base + (1 << 21) <= start or base >= stop:
                        continue
                    pte = entry_table(pool, pmd[m])
                    for t in range(512):
                        if not pte_none(pte[t]) and start <= base + (t << 12) < stop:
                            out.append((base + (t << 12), pte[t]))
        return iter(out)

    def tables(self):
        """(level, address) of every linked table, sorted by (address, level)."""
        cdef pt_pool *pool = &self.mm.machine.pool
        cdef uint64_t g, u, m
        cdef pteval_t *pud
        cdef pteval_t *pmd
        out = []
        if self.mm.paging_levels == 5:
            for g in range(256):
                if self.mm.pgd[g] != 0:
                    out.append(("p4d", g << 48))
        for gb, ge in _pud_slots(self.mm):
            out.append(("pud", gb))
            pud = entry_table(pool, <pteval_t>ge)
            for u in range(512):
                if pud[u] == 0:
                    continue
                out.append(("pmd", gb | (u << 30)))
                pmd = entry_table(pool, pud[u])
                for m in range(512):
                    if pmd_hugetlb(pmd[m]) or pmd_is_file(self.mm.machine, pmd[m]):
                        continue           # a hugetlb page or shmem folio: no table, no deposit
                    if pmd_huge_leaf(pmd[m]):
                        # The PTE table deposited with a huge PMD: counted in
                        # VmPTE, linked nowhere (R13).
                        out.append(("deposit", gb | (u << 30) | (m << 21)))
                    elif pmd[m] != 0:
                        out.append(("pte", gb | (u << 30) | (m << 21)))
        order = {"p4d": -1, "pud": 0, "pmd": 1, "pte": 2, "deposit": 2}
        out.sort(key=lambda t: (t[1], order[t[0]]))
        return out

    def huge_pmds(self):
        """(address, entry) of every huge PMD (THP, huge zero page, hugetlb page), ascending."""
        cdef pt_pool *pool = &self.mm.machine.pool
        cdef uint64_t g, u, m
        cdef pteval_t *pud
        cdef pteval_t *pmd
        out = []
        for gb, ge in _pud_slots(self.mm):
            pud = entry_table(pool, <pteval_t>ge)
            for u in range(512):
                if pud[u] == 0:
                    continue
                pmd = entry_table(pool, pud[u])
                for m in range(512):
                    if pmd_huge_leaf(pmd[m]):
                        out.append((gb | (u << 30) | (m << 21), pmd[m]))
        return out

    def check(self):
        """Verify every invariant; raise InvariantError naming the first broken one."""
        _check_mm(self)

    def _corrupt(self, str kind):
        """Test hook: break one invariant on purpose (tests/test_check.py). Never call otherwise.

        It expects the state tests/test_check.py builds, and changes only what
        the kind names, so check() has exactly one thing to find.
        """
        cdef pt_mm *mm = self.mm
        cdef pt_pool *pool = &mm.machine.pool
        cdef pteval_t *pmd
        cdef pteval_t *pte
        cdef uint32_t slot
        cdef uint64_t pfn, i
        cdef pt_frames *f = &mm.machine.frames
        cdef pt_hstate *h = &mm.machine.hstate
        if kind.startswith("hugetlb_"):
            # These expect some hugetlb page mapped (tests/test_hugetlb.py).
            if kind == "hugetlb_usage_off":
                mm.hugetlb_usage += 512
            elif kind == "hugetlb_free_off":
                h.free_huge_pages -= 1
            elif kind == "hugetlb_resv_off":
                h.resv_huge_pages += 1
            elif kind == "hugetlb_mapcount_off":
                for i in range(h.nr_huge_pages):
                    if not (h.pages[i].flags & HP_FREE):
                        h.pages[i].mapcount += 1
                        break
            else:
                raise ValueError(f"unknown corruption {kind!r}")
            return
        B = 0x200000000000
        pmd = walk_pmd(mm, B)
        pte = walk_pte(mm, B)
        if pmd == NULL or pte == NULL:
            raise ValueError("_corrupt() expects the state tests/test_check.py builds")
        if kind == "table_freed_but_linked":
            pool_release(pool, entry_table_slot(pmd[0]))
        elif kind == "table_linked_twice":
            pmd[2] = pmd[0]
        elif kind == "rss_anon_off_by_one":
            mm.rss[MM_ANONPAGES] += 1
        elif kind == "rss_shmem_off_by_one":
            mm.rss[MM_SHMEMPAGES] -= 1
        elif kind == "pte_maps_free_frame":
            pfn = pte_pfn(pte[0])
            f.pages[pfn].refcount = 1
            f.pages[pfn].mapcount = 0
            put_page(mm.machine, pfn)
        elif kind == "mapcount_off":
            f.pages[pte_pfn(pte[0])].mapcount += 1
        elif kind == "pgtables_bytes_off":
            mm.pgtables_bytes += 4096
        elif kind == "locked_vm_off":
            mm.locked_vm += 1
        elif kind == "total_vm_off":
            mm.total_vm -= 1
        elif kind == "vmas_overlap":
            mm.vmas[0].end += 4096
        elif kind == "vmas_unmerged":
            mm.vmas[1].flags &= ~PTR_VM_LOCKED
            mm.vmas[1].page_prot = vm_get_page_prot(mm.vmas[1].flags)
            mm.locked_vm -= (mm.vmas[1].end - mm.vmas[1].start) >> 12
        elif kind == "pte_outside_vma":
            mm.vmas[0].start += 4096
            mm.total_vm -= 1
        elif kind == "page_prot_stale":
            # (VM_WRITE alone would not do: private RW and R share PAGE_COPY.)
            mm.vmas[2].page_prot ^= PTR_PAGE_NX
        elif kind == "vmswap_off_by_one":
            mm.rss[MM_SWAPENTS] += 1
        elif kind == "swap_count_off":
            for i in range(1, mm.machine.swap.next):
                if mm.machine.swap.count[i]:
                    mm.machine.swap.count[i] += 1
                    break
            else:
                raise ValueError("swap_count_off needs a slot in use")
        elif kind == "gathered_table_left":
            for i in range(pool.nr_tables):
                if pool.state[i] == TABLE_FREE:
                    pool.state[i] = TABLE_GATHERED
                    break
            else:
                slot = <uint32_t>pool_alloc(pool, LEVEL_PTE)
                pool.state[slot] = TABLE_GATHERED
        else:
            raise ValueError(f"unknown corruption {kind!r}")


cdef bint _check_huge_pmd(pt_mm *mm, pteval_t e, uint64_t base, int64_t *rss, dict mapcounts) except -1:
    """Check one huge PMD (not hugetlb); True if it maps a shmem folio (no deposit)."""
    cdef pt_machine *m = mm.machine
    cdef uint64_t pfn = pte_pfn(e), i, index0
    cdef pt_vma *v
    vi = find_vma(mm, base)
    if vi == mm.nr_vmas or mm.vmas[vi].start > base or mm.vmas[vi].end < base + PTR_PMD_SIZE:
        raise InvariantError("a huge PMD lies inside one VMA", hex(base))
    v = &mm.vmas[vi]
    if v.shmem != NULL:
        # A shmem huge folio, at its own offset of the VMA's object.
        if pfn + HPAGE_PMD_NR > m.frames.nr_pages or not pmd_is_file(m, e):
            raise InvariantError("a huge PMD in a file VMA maps a shmem huge folio", hex(base))
        if v.shmem.flags & SHM_REGULAR:
            raise InvariantError("a regular file is mapped by 4 KiB pages only", hex(base))
        index0 = v.pgoff + ((base - v.start) >> 12)
        for i in range(HPAGE_PMD_NR):
            p = &m.frames.pages[pfn + i]
            if p.kind != FRAME_SHMEM or shmem_folio_nr(p) != HPAGE_PMD_NR or p.index != index0 + i \
                    or shmem_lookup(v.shmem, index0 + i) != <int64_t>(pfn + i):
                raise InvariantError("a file PMD maps the 512 pages of one huge folio at their own offset",
                                     f"{base:#x}: page {i}")
            mapcounts[pfn + i] = mapcounts.get(pfn + i, 0) + 1
        if (e & PTR_PAGE_RW) and not (v.flags & PTR_VM_SHARED):
            raise InvariantError("a page-cache page is writable only in a shared mapping", hex(base))
        rss[MM_SHMEMPAGES] += HPAGE_PMD_NR
        return True
    if pfn == HUGE_ZERO_PFN:
        if not (e & PTR_PAGE_SPECIAL) or pte_write(e):
            raise InvariantError("the huge zero page is mapped special and read-only", hex(base))
        return False
    if pfn + HPAGE_PMD_NR > m.frames.nr_pages:
        raise InvariantError("a huge PMD maps frames that do not exist", hex(base))
    for i in range(HPAGE_PMD_NR):
        p = &m.frames.pages[pfn + i]
        if p.kind != FRAME_ANON or not (p.flags & PG_THP) or p.index != i:
            raise InvariantError("a huge PMD maps the 512 frames of one THP", f"{base:#x}: frame {i}")
        mapcounts[pfn + i] = mapcounts.get(pfn + i, 0) + 1
    rss[MM_ANONPAGES] += HPAGE_PMD_NR
    return False


cdef _check_swap_pte(pt_mm *mm, pt_vma *vma, pteval_t e, uint64_t addr):
    cdef pt_swap *sw = &mm.machine.swap
    cdef uint64_t off = swp_offset(e)
    # Anonymous pages, COW copies in a private file mapping included, are the
    # only ones with swap PTEs (shmem keeps its swap in the page cache).
    if (vma.flags & PTR_VM_MAYSHARE) or not vma.anon_vma:
        raise InvariantError("a swap entry in a VMA without anonymous memory", hex(addr))
    if off == 0 or off >= sw.next or sw.count[off] == 0:
        raise InvariantError("a swap entry refers to a slot in use", f"{addr:#x}: slot {off}")
    if (e & ~(PTR_SWP_OFFSET_MASK << 9)) & ~(PTR_SWP_EXCLUSIVE | PTR_SWP_UFFD_WP):
        raise InvariantError("a swap entry has only its offset, exclusive and uffd-wp bits", hex(addr))


cdef _check_swap_slots(Machine machine):
    """Every slot's count is the swap PTEs (all mms) and shmem objects that
    refer to it; the used count and the free heap match the counts."""
    cdef pt_swap *sw = &machine.m.swap
    cdef pt_pool *pool = &machine.m.pool
    cdef Py_ssize_t n
    cdef pt_mm *mm
    cdef uint64_t g, u, k, t, i, off, used = 0
    cdef pteval_t *pud
    cdef pteval_t *pmd
    cdef pteval_t *pte
    cdef pt_shmem *obj
    refs = {}
    objects = set()
    # Files nothing maps may still hold swapped pages.
    for f in list(machine.files):
        obj = (<File>f).s
        if obj.swapped != NULL and <uintptr_t>obj not in objects:
            objects.add(<uintptr_t>obj)
            for k in range(obj.swapped.cap):
                if obj.swapped.keys[k] != 0 and obj.swapped.keys[k] != <uint64_t>-1:
                    off = obj.swapped.vals[k]
                    refs[off] = refs.get(off, 0) + 1
    for n in range(machine.nr_mms):
        mm = machine.mms[n]
        for i in range(mm.nr_vmas):
            obj = mm.vmas[i].shmem
            if obj != NULL and obj.swapped != NULL and <uintptr_t>obj not in objects:
                objects.add(<uintptr_t>obj)
                for k in range(obj.swapped.cap):
                    if obj.swapped.keys[k] != 0 and obj.swapped.keys[k] != <uint64_t>-1:
                        off = obj.swapped.vals[k]
                        refs[off] = refs.get(off, 0) + 1
        for gb, ge in _pud_slots(mm):
            pud = entry_table(pool, <pteval_t>ge)
            for u in range(512):
                if pud[u] == 0:
                    continue
                pmd = entry_table(pool, pud[u])
                for k in range(512):
                    if pmd[k] == 0 or pmd_huge_leaf(pmd[k]):
                        continue
                    pte = entry_table(pool, pmd[k])
                    for t in range(512):
                        if is_swap_pte(pte[t]):
                            off = swp_offset(pte[t])
                            refs[off] = refs.get(off, 0) + 1
    if sw.next > sw.nr_slots + 1:
        raise InvariantError("swap slots lie on the device", f"{sw.next - 1} > {sw.nr_slots}")
    for off in range(1, sw.next):
        if sw.count[off] != refs.get(off, 0):
            raise InvariantError("a swap slot's count equals the entries referring to it",
                                 f"slot {off}: {sw.count[off]} != {refs.get(off, 0)}")
        if sw.count[off]:
            used += 1
    if used != sw.nr_used:
        raise InvariantError("swap_used equals the slots in use", f"{sw.nr_used} != {used}")
    if sw.nr_heap != sw.next - 1 - used:
        raise InvariantError("the free slots below the high-water mark are on the free heap",
                             f"{sw.nr_heap} != {sw.next - 1 - used}")
    for i in range(sw.nr_heap):
        if sw.count[sw.heap[i]] or (i and sw.heap[(i - 1) >> 1] > sw.heap[i]):
            raise InvariantError("the free heap holds free slots, lowest first", str(sw.heap[i]))


cdef _check_hugetlb_pmd(pt_mm *mm, pteval_t e, uint64_t base, dict hugetlb):
    cdef pt_hstate *h = &mm.machine.hstate
    cdef uint64_t i = hpage_index(pte_pfn(e))
    cdef pt_vma *v
    vi = find_vma(mm, base)
    if vi == mm.nr_vmas or mm.vmas[vi].start > base or not is_vm_hugetlb_page(&mm.vmas[vi]):
        raise InvariantError("a hugetlb PMD lies in a hugetlb VMA", hex(base))
    v = &mm.vmas[vi]
    if i >= h.nr_huge_pages or (pte_pfn(e) & 511):
        raise InvariantError("a hugetlb PMD maps a page of the pool", hex(base))
    if h.pages[i].flags & HP_FREE:
        raise InvariantError("a hugetlb PMD maps a free huge page", hex(base))
    if (e & PTR_PAGE_RW) and not (v.flags & PTR_VM_WRITE):
        raise InvariantError("a writable hugetlb PMD lies in a writable VMA", hex(base))
    if v.flags & PTR_VM_MAYSHARE:
        if h.pages[i].file != v.hfile or h.pages[i].index != ((base - v.start) >> 21) + (v.pgoff >> 9):
            raise InvariantError("a shared hugetlb PMD maps its file's page", hex(base))
    else:
        if not (h.pages[i].flags & HP_ANON) or not v.anon_vma:
            raise InvariantError("a private hugetlb PMD maps an anonymous page", hex(base))
        if (e & PTR_PAGE_RW) and not (h.pages[i].flags & HP_ANON_EXCLUSIVE):
            raise InvariantError("a writable private hugetlb PMD maps an exclusive page", hex(base))
    hugetlb[i] = hugetlb.get(i, 0) + 1


cdef _check_hugetlb_pool(Machine machine):
    """The pool's counts: free pages, each page's references and mappings over
    every mm, and resv_huge_pages against the reservations the maps hold."""
    cdef pt_machine *m = &machine.m
    cdef pt_hstate *h = &m.hstate
    cdef Py_ssize_t n
    cdef pt_mm *mm
    cdef pt_vma *v
    cdef pt_pool *pool = &m.pool
    cdef uint64_t i, k, g, u, start, end, nfree = 0
    cdef uint64_t resv = 0
    cdef pteval_t *pud
    cdef pteval_t *pmd
    cdef pt_hfile *f
    cdef pt_hpage *p
    if h.nr_huge_pages == 0:
        return
    maps = {}
    files = {}
    for n in range(machine.nr_mms):
        mm = machine.mms[n]
        for gb, ge in _pud_slots(mm):
            pud = entry_table(pool, <pteval_t>ge)
            for u in range(512):
                if pud[u] == 0:
                    continue
                pmd = entry_table(pool, pud[u])
                for k in range(512):
                    if pmd_hugetlb(pmd[k]):
                        i = hpage_index(pte_pfn(pmd[k]))
                        maps[i] = maps.get(i, 0) + 1
        for k in range(mm.nr_vmas):
            v = &mm.vmas[k]
            if v.hfile != NULL:
                files[<uintptr_t>v.hfile] = True
                if v.resv != NULL and (v.hresv_flags & HPAGE_RESV_OWNER):
                    start = ((v.pgoff >> 9))
                    end = start + ((v.end - v.start) >> 21)
                    resv += (end - start) - idxset_count(&v.resv.consumed, start, end)
    cached = {}
    for key in files:
        f = <pt_hfile *><uintptr_t>key
        for k in range(f.cache.n):
            if not idxset_has(&f.region, f.cache.keys[k]):
                raise InvariantError("a hugetlbfs page cache index is in the reserve map", str(f.cache.keys[k]))
            cached[f.cache.vals[k]] = True
        resv += f.region.n - f.cache.n
    for i in range(h.nr_huge_pages):
        p = &h.pages[i]
        if p.flags & HP_FREE:
            nfree += 1
            if p.refcount or p.mapcount or maps.get(i, 0):
                raise InvariantError("a free huge page is unused", str(i))
            continue
        if p.mapcount != maps.get(i, 0):
            raise InvariantError("a huge page's mapcount equals its mappings in all mms",
                                 f"page {i}: {p.mapcount} != {maps.get(i, 0)}")
        if p.refcount != p.mapcount + (1 if i in cached else 0):
            raise InvariantError("a huge page's references are its mappings and its page cache", f"page {i}")
        if (i in cached) != (p.file != NULL):
            raise InvariantError("a huge page in a page cache knows its file", f"page {i}")
        if p.flags & HP_RESTORE_RESERVE:
            resv -= 1              # its reservation comes back when it is freed
    if nfree != h.free_huge_pages:
        raise InvariantError("HugePages_Free equals the free huge pages", f"{h.free_huge_pages} != {nfree}")
    resv += h.resv_orphaned
    if resv != h.resv_huge_pages:
        raise InvariantError("HugePages_Rsvd equals the reservations the maps hold",
                             f"{h.resv_huge_pages} != {resv}")


cdef dict _machine_mappings(Machine machine):
    """Mappings of every anonymous frame by PTEs and huge PMDs, over all mms."""
    cdef dict out = {}
    cdef Py_ssize_t n
    cdef pt_mm *mm
    cdef pt_pool *pool = &machine.m.pool
    cdef uint64_t g, u, k, t, pfn, i
    cdef pteval_t *pud
    cdef pteval_t *pmd
    cdef pteval_t *pte
    for n in range(machine.nr_mms):
        mm = machine.mms[n]
        for gb, ge in _pud_slots(mm):
            pud = entry_table(pool, <pteval_t>ge)
            for u in range(512):
                if pud[u] == 0:
                    continue
                pmd = entry_table(pool, pud[u])
                for k in range(512):
                    if pmd[k] == 0:
                        continue
                    if pmd_hugetlb(pmd[k]):
                        continue
                    if pmd_huge_leaf(pmd[k]):
                        pfn = pte_pfn(pmd[k])
                        if pfn != HUGE_ZERO_PFN:
                            for i in range(HPAGE_PMD_NR):
                                out[pfn + i] = out.get(pfn + i, 0) + 1
                        continue
                    pte = entry_table(pool, pmd[k])
                    for t in range(512):
                        if pte_present(pte[t]) and not (pte[t] & PTR_PAGE_SPECIAL):
                            pfn = pte_pfn(pte[t])
                            out[pfn] = out.get(pfn, 0) + 1
    return out


cdef _check_mm(MM self):
    cdef pt_mm *mm = self.mm
    cdef pt_machine *m = mm.machine
    cdef pt_pool *pool = &m.pool
    cdef uint64_t g, u, k, t, i, pfn, nlinked = 0, ndeposits = 0, nfile = 0, head, nr
    cdef pteval_t *pud
    cdef pteval_t *pmd
    cdef pteval_t *pte
    cdef pteval_t e
    cdef int64_t rss[4]
    cdef uint32_t slot
    cdef pt_vma *v
    rss[0] = rss[1] = rss[2] = rss[3] = 0
    mapcounts = {}
    hugetlb = {}
    if mm.lost_mappings:
        raise InvariantError("no PTE table is freed while it still maps pages (lost mapping)",
                             f"{mm.lost_mappings} table(s)")

    def linked(pteval_t entry, int level, what):
        cdef uint32_t s = entry_table_slot(entry)
        if s >= pool.nr_tables:
            raise InvariantError("table entry points outside the pool", what)
        if pool.state[s] != TABLE_LINKED:
            raise InvariantError("a linked table is not in the linked state (freed but still linked?)", what)
        if pool.level[s] != level:
            raise InvariantError("a table is linked at the wrong level", what)
        seen = linked_slots.setdefault(s, what)
        if seen != what:
            raise InvariantError("one table is linked twice", f"{seen} and {what}")

    linked_slots = {}
    for g in range(512):
        if mm.pgd[g] == 0:
            continue
        if g >= 256:
            raise InvariantError("a PGD entry maps kernel space", hex(g))
        if mm.paging_levels == 5:
            linked(mm.pgd[g], LEVEL_P4D, f"p4d {g << 48:#x}")
    for gb, ge in _pud_slots(mm):
        if gb >= mm.task_size:
            raise InvariantError("a PUD table lies above TASK_SIZE", hex(gb))
        linked(<pteval_t>ge, LEVEL_PUD, f"pud {gb:#x}")
        pud = entry_table(pool, <pteval_t>ge)
        for u in range(512):
            if pud[u] == 0:
                continue
            linked(pud[u], LEVEL_PMD, f"pmd {gb | (u << 30):#x}")
            pmd = entry_table(pool, pud[u])
            for k in range(512):
                if pmd[k] == 0:
                    continue
                base = gb | (u << 30) | (k << 21)
                if pmd_hugetlb(pmd[k]):
                    _check_hugetlb_pmd(mm, pmd[k], base, hugetlb)
                    continue
                if pmd_huge_leaf(pmd[k]):
                    if _check_huge_pmd(mm, pmd[k], base, rss, mapcounts):
                        nfile += 1
                    else:
                        ndeposits += 1
                    continue
                vi = find_vma(mm, base)
                if vi < mm.nr_vmas and mm.vmas[vi].start < base + PTR_PMD_SIZE and is_vm_hugetlb_page(&mm.vmas[vi]):
                    raise InvariantError("a hugetlb VMA has no PTE table", hex(base))
                linked(pmd[k], LEVEL_PTE, f"pte {base:#x}")
                pte = entry_table(pool, pmd[k])
                for t in range(512):
                    e = pte[t]
                    if pte_none(e):
                        continue
                    addr = base + (t << 12)
                    vi = find_vma(mm, addr)
                    if vi == mm.nr_vmas or mm.vmas[vi].start > addr:
                        raise InvariantError("a PTE maps an address outside every VMA", hex(addr))
                    if not pte_present(e):
                        if is_swap_pte(e):
                            _check_swap_pte(mm, &mm.vmas[vi], e, addr)
                            rss[MM_SWAPENTS] += 1
                            continue
                        if e == PTR_UFFD_WP_MARKER:
                            if mm.vmas[vi].shmem == NULL:
                                raise InvariantError("a uffd-wp marker in an anonymous VMA", hex(addr))
                            continue
                        if e != PTR_GUARD_MARKER:
                            raise InvariantError("an unknown non-present PTE", hex(addr))
                        if not (mm.vmas[vi].flags & PTR_VM_MAYBE_GUARD):
                            raise InvariantError("a guard marker in a VMA never guarded", hex(addr))
                        continue
                    pfn = pte_pfn(e)
                    if e & PTR_PAGE_SPECIAL:
                        if pfn != 1:
                            raise InvariantError("a special PTE that is not the zero page", hex(addr))
                        if mm.vmas[vi].shmem != NULL:
                            raise InvariantError("the zero page in a shared mapping", hex(addr))
                        continue
                    if pfn >= m.frames.nr_pages or m.frames.pages[pfn].kind in (FRAME_FREE, FRAME_RESERVED, FRAME_ZERO):
                        raise InvariantError("a PTE maps a free frame", hex(addr))
                    v = &mm.vmas[vi]
                    if m.frames.pages[pfn].kind == FRAME_ANON:
                        rss[MM_ANONPAGES] += 1
                        if v.flags & PTR_VM_MAYSHARE:
                            raise InvariantError("an anonymous page in a shared mapping", hex(addr))
                    else:
                        rss[MM_FILEPAGES if m.frames.pages[pfn].kind == FRAME_FILE else MM_SHMEMPAGES] += 1
                        if v.shmem == NULL:
                            raise InvariantError("a shmem page in a private mapping", hex(addr))
                        if m.frames.pages[pfn].index != v.pgoff + ((addr - v.start) >> 12) \
                                or shmem_lookup(v.shmem, m.frames.pages[pfn].index) != <int64_t>pfn:
                            raise InvariantError("a page-cache page is mapped at its own offset of its own file",
                                                 hex(addr))
                        if (e & PTR_PAGE_RW) and not (v.flags & PTR_VM_SHARED):
                            raise InvariantError("a page-cache page is writable only in a shared mapping", hex(addr))
                        if (m.frames.pages[pfn].kind == FRAME_FILE) and (e & PTR_PAGE_RW) \
                                and not (m.frames.pages[pfn].flags & PG_DIRTY):
                            raise InvariantError("a file page mapped writable is dirty", hex(addr))
                    mapcounts[pfn] = mapcounts.get(pfn, 0) + 1
    # P4D tables are linked but never counted: __p4d_alloc() has no mm_inc_nr_*() (R10).
    nlinked = sum(1 for w in linked_slots.values() if not w.startswith("p4d"))
    if mm.stats.p4d_tables_allocated - mm.stats.p4d_tables_freed != len(linked_slots) - nlinked:
        raise InvariantError("the P4D tables linked are those allocated and not freed",
                             f"{mm.stats.p4d_tables_allocated} - {mm.stats.p4d_tables_freed} != "
                             f"{len(linked_slots) - nlinked}")
    if mm.hugetlb_usage != 512 * sum(hugetlb.values()):
        raise InvariantError("HugetlbPages equals the hugetlb pages mapped",
                             f"{mm.hugetlb_usage} != 512 x {sum(hugetlb.values())}")
    _check_hugetlb_pool(self.machine)
    if mm.nr_deposits != ndeposits:
        raise InvariantError("every huge PMD has its deposited table", f"{mm.nr_deposits} != {ndeposits}")
    if mm.nr_shmem_pmds != <int64_t>nfile:
        raise InvariantError("ShmemPmdMapped equals the PMDs that map shmem folios",
                             f"{mm.nr_shmem_pmds} != {nfile}")
    if mm.pgtables_bytes != <int64_t>(4096 * (nlinked + ndeposits)):
        raise InvariantError("pgtables_bytes equals 4096 x the tables linked and deposited",
                             f"{mm.pgtables_bytes} != 4096 x ({nlinked} + {ndeposits})")
    for i, name in ((MM_ANONPAGES, "RssAnon"), (MM_SHMEMPAGES, "RssShmem"), (MM_FILEPAGES, "RssFile"),
                    (MM_SWAPENTS, "VmSwap")):
        if mm.rss[i] != rss[i]:
            raise InvariantError(f"{name} equals the present entries of its kind", f"{mm.rss[i]} != {rss[i]}")
    if m.swap.nr_slots or m.swap.nr_used:
        _check_swap_slots(self.machine)
    # Pool: every slot linked (by some mm on this machine), free, or gathered;
    # nothing stays gathered between syscalls.
    nfree = 0
    for i in range(pool.nr_tables):
        if pool.state[i] == TABLE_GATHERED:
            raise InvariantError("a table is still waiting in an mmu_gather after the syscall", str(i))
        if pool.state[i] == TABLE_FREE:
            nfree += 1
    if nfree != pool.nr_free:
        raise InvariantError("the pool's free list holds exactly the free tables", f"{nfree} != {pool.nr_free}")
    # Frames mapped by this mm: an anonymous page's mapcount is its mappings
    # in every mm of the machine (fork shares them), and nothing pins pages, so
    # its references are exactly its mappings; shmem pages also have the page
    # cache's reference.
    everyone = None
    for pfn, count in mapcounts.items():
        if m.frames.pages[pfn].mapcount < count or m.frames.pages[pfn].refcount < count:
            raise InvariantError("a page's map and reference counts cover its PTEs", f"pfn {pfn}")
        if m.frames.pages[pfn].kind == FRAME_ANON:
            if everyone is None:
                everyone = _machine_mappings(self.machine)
            if m.frames.pages[pfn].mapcount != everyone.get(pfn, 0):
                raise InvariantError("an anonymous page's mapcount equals its mappings in all mms",
                                     f"pfn {pfn}: {m.frames.pages[pfn].mapcount} != {everyone.get(pfn, 0)}")
            if m.frames.pages[pfn].refcount != m.frames.pages[pfn].mapcount:
                raise InvariantError("an anonymous page's references equal its mappings", f"pfn {pfn}")
    nzeroed = 0
    for i in range(m.frames.nr_pages):
        if m.frames.pages[i].kind == FRAME_FILE:
            # A regular file's page: the page cache's reference plus one per
            # mapping, in every mm of the machine.
            if everyone is None:
                everyone = _machine_mappings(self.machine)
            if m.frames.pages[i].mapcount != everyone.get(i, 0) \
                    or m.frames.pages[i].refcount != m.frames.pages[i].mapcount + 1:
                raise InvariantError("a file page's references are the page cache's and its mappings",
                                     f"pfn {i}: refcount {m.frames.pages[i].refcount}, "
                                     f"mapcount {m.frames.pages[i].mapcount}, mapped {everyone.get(i, 0)}")
        if m.frames.pages[i].kind == FRAME_SHMEM and (m.frames.pages[i].flags & PG_THP):
            # A page of a shmem large folio of order 1..9: 2^order frames in a
            # row at consecutive offsets from an aligned one; the page
            # cache's reference plus one per mapping, in every mm.
            nr = shmem_folio_nr(&m.frames.pages[i])
            head = i - (m.frames.pages[i].index & (nr - 1))
            if nr < 2 or nr > HPAGE_PMD_NR or head < 3 or head + nr > m.frames.nr_pages:
                raise InvariantError("a shmem large folio is 2^order frames at consecutive offsets", f"pfn {i}")
            if head == i:
                for t in range(nr):
                    if m.frames.pages[head + t].kind != FRAME_SHMEM \
                            or shmem_folio_nr(&m.frames.pages[head + t]) != nr \
                            or m.frames.pages[head + t].index != m.frames.pages[head].index + t:
                        raise InvariantError("a shmem large folio is 2^order frames at consecutive offsets",
                                             f"pfn {head + t}")
            elif m.frames.pages[head].kind != FRAME_SHMEM or shmem_folio_nr(&m.frames.pages[head]) != nr \
                    or m.frames.pages[head].index + (i - head) != m.frames.pages[i].index:
                raise InvariantError("a shmem large folio is 2^order frames at consecutive offsets", f"pfn {i}")
            if everyone is None:
                everyone = _machine_mappings(self.machine)
            if m.frames.pages[i].mapcount != everyone.get(i, 0) \
                    or m.frames.pages[i].refcount != m.frames.pages[i].mapcount + 1:
                raise InvariantError("a shmem folio page's references are the page cache's and its mappings",
                                     f"pfn {i}: refcount {m.frames.pages[i].refcount}, "
                                     f"mapcount {m.frames.pages[i].mapcount}, mapped {everyone.get(i, 0)}")
        if m.frames.pages[i].flags & PG_ZEROED:
            if m.frames.pages[i].kind != FRAME_ANON:
                raise InvariantError("only an anonymous page in use is marked zero-filled", str(i))
            nzeroed += 1
    if nzeroed != m.frames.nr_zeroed:
        raise InvariantError("the count of zero-filled pages is right", f"{m.frames.nr_zeroed} != {nzeroed}")
    # VMAs
    total = 0
    locked = 0
    for i in range(mm.nr_vmas):
        v = &mm.vmas[i]
        if v.start >= v.end or (v.start | v.end) & 4095 or v.end > mm.task_size:
            raise InvariantError("VMAs are page-aligned and non-empty", hex(v.start))
        if i > 0 and mm.vmas[i - 1].end > v.start:
            raise InvariantError("VMAs are sorted and non-overlapping", hex(v.start))
        if i > 0 and is_mergeable(&mm.vmas[i - 1], v) and v.start not in self.unmerged_ok:
            raise InvariantError("VMAs are merged where Linux would merge them", hex(v.start))
        if v.page_prot != vma_page_prot(v):
            raise InvariantError("vm_page_prot follows vm_flags", hex(v.start))
        total += (v.end - v.start) >> 12
        if v.flags & PTR_VM_LOCKED:
            locked += (v.end - v.start) >> 12
    if total != mm.total_vm:
        raise InvariantError("VmSize equals the size of the VMAs", f"{mm.total_vm} != {total}")
    if locked + mm.locked_vm_stale != mm.locked_vm:
        raise InvariantError("VmLck equals the size of the locked VMAs",
                             f"{mm.locked_vm} != {locked}" + (f" + {mm.locked_vm_stale} stale"
                                                              if mm.locked_vm_stale else ""))


def _scan_empty(tables):
    """The PTRS_PER_PTE empty scan on an (n, 512) uint64 array: one bool per table.

    For benchmarks, and for callers who keep tables in numpy arrays.
    """
    cdef const uint64_t[:, ::1] view = tables
    cdef Py_ssize_t i, n = view.shape[0]
    if view.shape[1] != PTRS_PER_TABLE:
        raise ValueError("tables must have 512 entries per row")
    out = np.empty(n, dtype=np.bool_)
    cdef uint8_t[::1] res = out.view(np.uint8)
    with nogil:
        for i in range(n):
            res[i] = pte_table_empty(&view[i, 0])
    return out
