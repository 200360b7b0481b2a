# The VMA array of an mm: sorted, non-overlapping [start, end) ranges, kept
# split and merged the way Linux keeps its maple tree (R17, R22).

from libc.stdint cimport uint64_t, int64_t
from ptreclaim._types cimport pt_mm, pt_vma

cdef int vma_insert(pt_mm *mm, uint64_t idx, const pt_vma *vma) noexcept nogil   # -1: host OOM
cdef void vma_remove(pt_mm *mm, uint64_t idx, uint64_t count) noexcept nogil
cdef int split_vma(pt_mm *mm, uint64_t idx, uint64_t addr) noexcept nogil       # -1: host OOM
cdef bint is_mergeable(const pt_vma *a, const pt_vma *b) noexcept nogil
cdef bint try_merge(pt_mm *mm, uint64_t idx) noexcept nogil      # merge idx with idx + 1
