# The public C-level contract of ptreclaim: cimport this to drive the
# simulator from Cython without going through Python calls. The structs are
# in ptreclaim._types, the page-table functions in ptreclaim._pgtable, the
# VMA array in ptreclaim._vma; the classes below own them.

from libc.stdint cimport uint64_t, int64_t
from ptreclaim._types cimport pt_machine, pt_mm, pt_vma, mmu_gather, zap_details

cdef class Machine:
    cdef pt_machine m
    cdef pt_mm **mms            # every live mm on this machine (for shmem hole punching)
    cdef Py_ssize_t nr_mms
    cdef Py_ssize_t mms_cap
    cdef object files           # the live File objects (a WeakSet), for check()
    cdef int _register(self, pt_mm *mm) except -1
    cdef void _unregister(self, pt_mm *mm) noexcept

cdef class MM:
    cdef pt_mm *mm
    cdef readonly Machine machine
    cdef bint dead
    cdef object unmerged_ok     # VMA boundaries Linux leaves unmerged (failed MAP_FIXED)
    cdef object fds             # the fd table: fd -> (File, opened for writing)
    cdef object _listeners      # event name -> callbacks
    cdef int cb_state           # 0: no callback running; 1: at a lock-free point; 2: under a lock
    cdef object _pending        # an exception raised by a callback, re-raised after the call
    cdef int _dispatch(self, int event, uint64_t addr, uint64_t arg) noexcept
    cdef void _no_reentry(self) except *
    cdef void _raise_pending(self) except *
    cdef void _split_edges(self, uint64_t addr, uint64_t end) noexcept
    cdef void _note_unmerged(self, uint64_t addr) noexcept
    cdef int _do_mremap(self, uint64_t addr, uint64_t old_len, uint64_t new_len, uint64_t flags,
                        uint64_t new_addr, uint64_t *result) noexcept
    cdef int _hugetlb_mmap_tail(self, uint64_t addr, uint64_t end, int flags, int mtype,
                                uint64_t vm_flags, uint64_t pgoff) noexcept
    cdef void _alive(self) except *
    cdef int _do_mmap(self, uint64_t addr, uint64_t length, int prot, int flags, int fd,
                      uint64_t offset, uint64_t *result) noexcept
    cdef int64_t _mprotect_fixup(self, mmu_gather *tlb, uint64_t idx, uint64_t start,
                                 uint64_t end, uint64_t newflags) noexcept nogil
    cdef int _do_mlock(self, uint64_t start, uint64_t length, uint64_t lockflags) noexcept nogil
    cdef int _madvise_populate(self, uint64_t start, uint64_t end, bint write) noexcept nogil
    cdef int _madvise_guard(self, uint64_t idx, uint64_t start, uint64_t end,
                            bint install) noexcept nogil
    cdef int _madvise_vma_behavior(self, mmu_gather *tlb, uint64_t *pidx, uint64_t start,
                                   uint64_t end, int advice) noexcept nogil
    # Syscalls at C level: 0 or a positive errno.
    cdef int do_munmap(self, uint64_t start, uint64_t length) noexcept nogil
    cdef int do_madvise(self, uint64_t start, uint64_t length, int advice) noexcept nogil
    cdef int do_mprotect(self, uint64_t start, uint64_t length, int prot) noexcept nogil
    # One access per page of [start, end): 0, or FAULT_SIGSEGV / FAULT_OOM with
    # *where set to the failing address.
    cdef int do_touch(self, uint64_t start, uint64_t end, bint write, uint64_t *where) noexcept nogil
    cdef bint _touch_one_fast(self, uint64_t addr, bint write) noexcept nogil
