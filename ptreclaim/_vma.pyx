# VMA array operations. The array is small next to the page tables (one entry
# per mapping), so a sorted C array with memmove beats any tree here and
# keeps lookups a binary search.

from libc.stdint cimport uint64_t
from libc.stdlib cimport realloc
from libc.string cimport memmove

from ptreclaim._types cimport pt_mm, pt_vma, PTR_VM_READ, PTR_VM_WRITE, PTR_VM_EXEC, PTR_VM_STICKY
from ptreclaim._pgtable cimport shmem_get, shmem_put, split_huge_pmd_address
from ptreclaim._hugetlb cimport hugetlb_vm_op_open, hugetlb_vm_op_close

cdef extern from *:
    """
    /* VM_SPECIAL: VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP */
    #define PTR_VMA_SPECIAL (0x4000ULL | 0x40000ULL | 0x400ULL | 0x10000000ULL)
    """
    const uint64_t PTR_VMA_SPECIAL

cdef int vma_insert(pt_mm *mm, uint64_t idx, const pt_vma *vma) noexcept nogil:
    cdef void *p
    if mm.nr_vmas == mm.vmas_cap:
        p = realloc(mm.vmas, (2 * mm.vmas_cap + 8) * sizeof(pt_vma))
        if p == NULL:
            return -1
        mm.vmas = <pt_vma *>p
        mm.vmas_cap = 2 * mm.vmas_cap + 8
    memmove(&mm.vmas[idx + 1], &mm.vmas[idx], (mm.nr_vmas - idx) * sizeof(pt_vma))
    mm.vmas[idx] = vma[0]
    mm.nr_vmas += 1
    return 0

cdef void vma_remove(pt_mm *mm, uint64_t idx, uint64_t count) noexcept nogil:
    cdef uint64_t i
    for i in range(idx, idx + count):
        if mm.vmas[i].shmem != NULL:
            shmem_put(mm.machine, mm.vmas[i].shmem)
        if mm.vmas[i].hfile != NULL:
            hugetlb_vm_op_close(mm.machine, &mm.vmas[i])
    memmove(&mm.vmas[idx], &mm.vmas[idx + count], (mm.nr_vmas - idx - count) * sizeof(pt_vma))
    mm.nr_vmas -= count

cdef int split_vma(pt_mm *mm, uint64_t idx, uint64_t addr) noexcept nogil:
    # __split_vma(): both halves keep flags, anon_vma and backing object; a
    # huge PMD that the new boundary would cut is split first.
    cdef pt_vma right
    if split_huge_pmd_address(mm, &mm.vmas[idx], addr) < 0:
        return -1
    right = mm.vmas[idx]
    right.start = addr
    right.pgoff = mm.vmas[idx].pgoff + ((addr - mm.vmas[idx].start) >> 12)
    if vma_insert(mm, idx + 1, &right) < 0:
        return -1
    mm.vmas[idx].end = addr
    if right.shmem != NULL:
        shmem_get(right.shmem)
    if right.hfile != NULL:
        hugetlb_vm_op_open(&right)
    return 0

cdef bint is_mergeable(const pt_vma *a, const pt_vma *b) noexcept nogil:
    # is_mergeable_vma() + is_mergeable_anon_vma() + contiguous vm_pgoff.
    # A VMA without an anon_vma takes its neighbour's, unless that one came
    # from fork (its anon_vma_chain is not singular).
    if a.end != b.start or (a.flags ^ b.flags) & ~PTR_VM_STICKY or a.shmem != b.shmem:
        return False
    # VM_SPECIAL VMAs (hugetlb ones have VM_DONTEXPAND) never merge.
    if a.flags & PTR_VMA_SPECIAL:
        return False
    if a.anon_vma and b.anon_vma and a.anon_vma != b.anon_vma:
        return False
    if (a.anon_vma == 0) != (b.anon_vma == 0) and (a.forked_anon_vma or b.forked_anon_vma):
        return False
    return a.pgoff + ((a.end - a.start) >> 12) == b.pgoff

cdef bint try_merge(pt_mm *mm, uint64_t idx) noexcept nogil:
    cdef pt_vma *a
    cdef pt_vma *b
    if idx + 1 >= mm.nr_vmas:
        return False
    a = &mm.vmas[idx]
    b = &mm.vmas[idx + 1]
    if not is_mergeable(a, b):
        return False
    a.end = b.end
    a.flags |= b.flags & PTR_VM_STICKY
    if not a.anon_vma:
        a.anon_vma = b.anon_vma
        a.forked_anon_vma = b.forked_anon_vma
    vma_remove(mm, idx + 1, 1)
    return True
