"""Raw x86-64 Linux system calls from the test process, for comparing the simulator's
errno with the kernel's: glibc's wrappers may drop or fix up arguments (mremap() drops
new_address without MREMAP_FIXED), the raw call does not."""

import ctypes

U64 = (1 << 64) - 1
NR = {"mmap": 9, "mprotect": 10, "munmap": 11, "mremap": 25, "madvise": 28, "mlock": 149,
      "munlock": 150}


class RawSyscalls:
    def __init__(self):
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self.last = None

    def call(self, name, *args):
        """errno, or 0 on success (the result is in .last)."""
        cargs = [ctypes.c_ulong(a & U64) for a in args]
        ctypes.set_errno(0)
        r = self._syscall(ctypes.c_long(NR[name]), *cargs)
        self.last = r & U64
        return ctypes.get_errno() if r == -1 else 0
