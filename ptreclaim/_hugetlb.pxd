# hugetlb mappings (MAP_HUGETLB, 2 MiB pages from the machine's pool): the
# hugetlbfs mmap with its reservation, faults, zap, fork, mprotect and hole
# punching, as mm/hugetlb.c and fs/hugetlbfs/inode.c do them. Every function
# is noexcept nogil; those that can fail say how.

from libc.stdint cimport uint32_t, uint64_t, int64_t
from ptreclaim._types cimport pt_mm, pt_vma, pt_machine, pt_hfile, mmu_gather, PTR_VM_HUGETLB

cdef inline bint is_vm_hugetlb_page(const pt_vma *vma) noexcept nogil:
    return (vma.flags & PTR_VM_HUGETLB) != 0

# mmap: hugetlbfs_file_mmap() once the old range is gone; 0, EINVAL or ENOMEM.
cdef int hugetlbfs_file_mmap(pt_machine *m, pt_vma *vma) noexcept nogil

# VMA life: a split copy (vm_ops->open), a fork copy (vm_area_dup() +
# hugetlb_dup_vma_private()), and the end of a VMA (vm_ops->close).
cdef void hugetlb_vm_op_open(pt_vma *vma) noexcept nogil
cdef void hugetlb_dup_vma(pt_vma *vma) noexcept nogil
cdef void hugetlb_vm_op_close(pt_machine *m, pt_vma *vma) noexcept nogil

# Accesses: one per page of [*paddr, end) of VMA idx, by the CPU or (gup) by
# get_user_pages(); FAULT_OK, FAULT_SIGBUS or FAULT_OOM (host), *paddr at the
# failing access.
cdef int hugetlb_fault_range(pt_mm *mm, uint64_t idx, uint64_t *paddr, uint64_t end,
                             bint write, bint gup) noexcept nogil

# Zap [start, end) (2 MiB-aligned) of a hugetlb VMA into the gather.
cdef void __unmap_hugepage_range(mmu_gather *tlb, pt_vma *vma, uint64_t start, uint64_t end,
                                 int64_t ref_page) noexcept nogil

# fork: the parent's entries of one VMA into the child; -1 if the host is out of memory.
cdef int copy_hugetlb_page_range(pt_mm *dst, pt_mm *src, pt_vma *vma) noexcept nogil

# mprotect: new protection on the present entries of [start, end).
cdef void hugetlb_change_protection(pt_mm *mm, pt_vma *vma, uint64_t start, uint64_t end,
                                    uint64_t newprot) noexcept nogil

# MADV_REMOVE of [start, end) of a shared writable hugetlb VMA (fallocate PUNCH_HOLE).
cdef void hugetlbfs_punch_hole(pt_mm *mm, pt_vma *vma, uint64_t start, uint64_t end) noexcept nogil

# mremap: the huge PMDs of [old_addr, old_addr + length) move to new_addr; the
# bytes done (fewer if the host is out of memory). Then the old VMA hands its
# private reservations to the copy (those outside the moved range are lost).
cdef int64_t move_hugetlb_page_tables(pt_mm *mm, pt_vma *vma, uint64_t old_addr, uint64_t new_addr,
                                      uint64_t length) noexcept nogil
cdef void fixup_hugetlb_reservations(pt_machine *m, pt_vma *vma, uint64_t addr, uint64_t length) noexcept nogil
# Whether that move would hang the process in Linux 6.18 (huge_pmd_share() under
# the i_mmap_rwsem the move holds), which is not simulated.
cdef bint hugetlb_move_hits_pmd_share(pt_mm *mm, pt_vma *vma, uint64_t old_addr, uint64_t new_addr,
                                      uint64_t length) noexcept nogil
