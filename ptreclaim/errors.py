"""Exceptions raised by both implementations."""


class SegmentationFault(Exception):
    """An access that Linux answers with SIGSEGV.

    ``address`` is the faulting address; every page before it in the same
    ``touch`` call was accessed.
    """

    def __init__(self, address, message=None):
        self.address = address
        super().__init__(message or f"SIGSEGV at {address:#x}")


class InvariantError(AssertionError):
    """``MM.check()`` found simulated state that Linux could never be in."""

    def __init__(self, invariant, detail=""):
        self.invariant = invariant
        super().__init__(f"{invariant}: {detail}" if detail else invariant)


class OutOfMemory(MemoryError):
    """The simulated machine has no free frame for an access (its ``max_frames``)."""


class UserfaultfdFault(Exception):
    """A write to userfaultfd write-protected memory: in Linux the thread waits
    in handle_userfault() until the monitor resolves it, which no simulated
    monitor does. ``address`` is the faulting address; earlier pages were accessed."""

    def __init__(self, address):
        self.address = address
        super().__init__(f"write to userfaultfd write-protected memory at {address:#x}")


class BusError(Exception):
    """An access that Linux answers with SIGBUS: a hugetlb fault that finds no huge
    page it may take (the pool is used up or reserved by others, the page lies past
    the end of the hugetlbfs file, or the owner of the mapping took it back), or a
    page of a shared mapping past the end of its object (a shmem mapping grown by
    ``mremap``). ``address`` is the faulting address; every page before it in the
    same ``touch`` call was accessed."""

    def __init__(self, address, message=None):
        self.address = address
        super().__init__(message or f"SIGBUS at {address:#x}")
