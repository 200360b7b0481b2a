"""Measured scenarios of linux-mm-semantics.md §14, as data.

Each scenario is one fresh process. ``setup`` rows run first and are not
checked; every ``steps`` row is

    (operation, args, expected_errno, dVmPTE, dRssAnon, dRssShmem, dRssFile)

with deltas in kB across that one operation and ``expected_errno`` 0 for
success. Operations and their arguments:

* ``mmap``     (addr, length, prot, flags)       -> MM.mmap(...)
* ``munmap``   (addr, length)
* ``mprotect`` (addr, length, prot)
* ``mlock`` / ``munlock`` (addr, length)
* ``madvise``  (addr, length, advice)
* ``write`` / ``read`` (addr, length)            -> MM.touch(addr, length, write=...)
* ``span_loop`` (base, spans, advice, bytes)     -> for each 2 MiB span i:
  write ``bytes`` at base + i*2M, then madvise(base + i*2M, 2M, advice)
* ``span_poke`` (base, spans)                    -> write 1 byte in each 2 MiB span
* ``mremap``   (addr, old_len, new_len, flags, new_addr) -> MM.mremap(...)
* ``file``     (name, size, *options)            -> f = Machine.create_file(size, ...),
  then MM.open(f): the file is open in the process under ``name``. Options as in
  the script language: ``"ro"`` (O_RDONLY), ``"shmem"`` (a memfd), ``"uncached"``
  (empty page cache).
* ``mmap_file`` (addr, length, prot, flags, name, offset) -> MM.mmap(..., fd, offset)
  with the fd of the file opened as ``name``
* ``close``    (name,)                           -> MM.close(fd of name)

Deltas are the lab machine's (Linux 6.18) for a process whose 512 GiB slot
at ``B`` holds nothing else. Rows the model cannot reproduce yet are left
out; the scenario notes say which.

A scenario that needs more than a default machine names it in ``machine``:
keyword arguments for ``Machine`` (SC-30's swap device, SC-31's hugetlb pool), and the process is
``MM(machine=Machine(**machine))``.
"""

from ptreclaim.constants import (
    MADV_COLD,
    MADV_DONTNEED,
    MADV_DONTNEED_LOCKED,
    MADV_FREE,
    MADV_GUARD_INSTALL,
    MADV_GUARD_REMOVE,
    MADV_PAGEOUT,
    MADV_POPULATE_READ,
    MADV_POPULATE_WRITE,
    MADV_REMOVE,
    MADV_WILLNEED,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_HUGETLB,
    MAP_NORESERVE,
    MAP_PRIVATE,
    MAP_SHARED,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PROT_EXEC,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)

K = 1024
M = 1024 * K
G = 1024 * M
B = 0x200000000000  # 32 TiB: 1 GiB- and 512 GiB-aligned, in an empty slot

RW = PROT_READ | PROT_WRITE
RWX = RW | PROT_EXEC
# The harness's default mapping flags (§14).
ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE
SHARED_ANON = MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE

EINVAL = 22
ENOMEM = 12
EACCES = 13

SIZE_MAX = (1 << 64) - 1

# SC-30's 256 MiB swap file: its first page is the swap header, the rest are slots.
SWAP_FILE_256M = 256 * M // 4096 - 1


def anon(addr, length, prot=RW):
    return ("mmap", (addr, length, prot, ANON))


def ok(op, args, dpte=0, danon=0, dshmem=0, dfile=0):
    return (op, args, 0, dpte, danon, dshmem, dfile)


def err(code, op, args, dpte=0, danon=0, dshmem=0, dfile=0):
    return (op, args, code, dpte, danon, dshmem, dfile)


class Scenario:
    """One fresh process. ``needs`` names the simulator feature the scenario waits
    for (its issue), or None when the simulator has everything it uses;
    ``machine`` the Machine arguments it runs on, or None for a default one."""

    def __init__(self, sid, title, setup, steps, note="", needs=None, machine=None):
        self.id = sid
        self.title = title
        self.setup = setup
        self.steps = steps
        self.note = note
        self.needs = needs
        self.machine = machine

    def __repr__(self):
        return f"<Scenario {self.id}: {self.title}>"


SCENARIOS = [
    Scenario(
        "SC-01",
        "First faults in an empty 512 GiB slot",
        [],
        [
            ok("mmap", (B, 8 * M, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)),
            ok("write", (B, 1), 12, 4),
            ok("write", (B + 4 * K, 1), 0, 4),
            ok("write", (B + 2 * M, 1), 4, 4),
            ok("write", (B + 4 * M, 2 * M), 4, 2048),
        ],
    ),
    Scenario(
        "SC-02",
        "Read faults map the zero page",
        [anon(B, 4 * M)],
        [
            ok("read", (B, 1), 12, 0),
            ok("read", (B, 2 * M), 0, 0),
            ok("write", (B, 1), 0, 4),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, -4),
        ],
    ),
    Scenario(
        "SC-03",
        "PMD-aligned full-span DONTNEED reclaims the PTE table",
        [anon(B, 4 * M)],
        [
            ok("write", (B, 4 * M), 16, 4096),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, -2048),
            ok("madvise", (B + 2 * M, 2 * M, MADV_DONTNEED), -4, -2048),
            ok("write", (B, 1), 4, 4),
        ],
    ),
    Scenario(
        "SC-04",
        "A 2 MiB DONTNEED that straddles two spans reclaims nothing",
        [anon(B, 4 * M)],
        [
            ok("write", (B, 4 * M), 16, 4096),
            ok("madvise", (B + 1 * M, 2 * M, MADV_DONTNEED), 0, -2048),
            ok("madvise", (B, 4 * M, MADV_DONTNEED), -8, -2048),
        ],
    ),
    Scenario(
        "SC-05",
        "Partial head and tail spans",
        [anon(B, 6 * M)],
        [
            ok("write", (B, 6 * M), 20, 6144),
            ok("madvise", (B + 1 * M, 4 * M, MADV_DONTNEED), -4, -4096),
        ],
    ),
    Scenario(
        "SC-06",
        "An all-none table is reclaimed only by a later full-span zap",
        [anon(B, 2 * M)],
        [
            ok("write", (B, 2 * M), 12, 2048),
            ok("madvise", (B + 4 * K, 2 * M - 4 * K, MADV_DONTNEED), 0, -2044),
            ok("madvise", (B, 4 * K, MADV_DONTNEED), 0, -4),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, 0),
        ],
    ),
    Scenario(
        "SC-07",
        "VMA smaller than one span: no reclaim possible",
        [anon(B, 2 * M - 4 * K)],
        [
            ok("write", (B, 2 * M - 4 * K), 12, 2044),
            err(ENOMEM, "madvise", (B, 2 * M, MADV_DONTNEED), 0, -2044),
            ok("munmap", (B, 2 * M - 4 * K), -12, 0),
        ],
    ),
    Scenario(
        "SC-08",
        "One span covered by two VMAs; merge restores eligibility",
        [anon(B, 2 * M)],
        [
            ok("write", (B, 2 * M), 12, 2048),
            ok("mprotect", (B + 1 * M, 1 * M, PROT_READ)),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), 0, -2048),
            ok("mprotect", (B + 1 * M, 1 * M, RW)),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, 0),
        ],
    ),
    Scenario(
        "SC-09",
        "A table holding only zero-page PTEs",
        [anon(B, 2 * M)],
        [
            ok("read", (B, 2 * M), 12, 0),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, 0),
        ],
    ),
    Scenario(
        "SC-10",
        "MADV_FREE keeps tables and RSS",
        [anon(B, 2 * M)],
        [
            ok("write", (B, 2 * M), 12, 2048),
            ok("madvise", (B, 2 * M, MADV_FREE)),
            ok("read", (B, 2 * M)),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, -2048),
        ],
    ),
    Scenario(
        "SC-11",
        "mlock, DONTNEED vs DONTNEED_LOCKED",
        [anon(B, 2 * M)],
        [
            ok("mlock", (B, 2 * M), 12, 2048),
            err(EINVAL, "madvise", (B, 2 * M, MADV_DONTNEED)),
            err(EINVAL, "madvise", (B, 2 * M, MADV_FREE)),
            ok("madvise", (B, 2 * M, MADV_DONTNEED_LOCKED), -4, -2048),
            ok("read", (B, 1), 4, 0),
        ],
    ),
    Scenario(
        "SC-12",
        "madvise argument checks and holes",
        [anon(B, 6 * M)],
        [
            ok("write", (B, 6 * M), 20, 6144),
            err(EINVAL, "madvise", (B + 1, 4 * K, MADV_DONTNEED)),
            ok("madvise", (B, 0, MADV_DONTNEED)),
            err(EINVAL, "madvise", (B + 1, 0, MADV_DONTNEED)),
            err(EINVAL, "madvise", (B, 0, 9999)),
            err(EINVAL, "madvise", (B, 4 * K, 9999)),
            err(EINVAL, "madvise", (B, SIZE_MAX, MADV_DONTNEED)),
            err(EINVAL, "madvise", (B, (1 << 64) - 8 * K, MADV_DONTNEED)),
            ok("madvise", (B, 1, MADV_DONTNEED), 0, -4),
            ok("munmap", (B + 2 * M, 2 * M), -4, -2048),
            err(ENOMEM, "madvise", (B, 6 * M, MADV_DONTNEED), -8, -4092),
            err(ENOMEM, "madvise", (B + 2 * M, 2 * M, MADV_DONTNEED)),
            err(ENOMEM, "madvise", (B + 6 * M, 2 * M, MADV_DONTNEED)),
            ok("write", (B, 2 * M), 4, 2048),
            ok("write", (B + 4 * M, 2 * M), 4, 2048),
            err(ENOMEM, "madvise", (B + 1 * M, 5 * M, MADV_DONTNEED), -4, -3072),
        ],
    ),
    Scenario(
        "SC-13",
        "A guard marker blocks PT reclaim",
        [anon(B, 2 * M)],
        [
            ok("write", (B, 2 * M), 12, 2048),
            ok("madvise", (B + 1 * M, 4 * K, MADV_GUARD_INSTALL), 0, -4),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), 0, -2044),
            ok("madvise", (B + 1 * M, 4 * K, MADV_GUARD_REMOVE)),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, 0),
        ],
    ),
    Scenario(
        "SC-17",
        "Shared anonymous memory (shmem)",
        [("mmap", (B, 4 * M, RW, SHARED_ANON))],
        [
            ok("write", (B, 2 * M), 12, 0, 2048),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, 0, -2048),
            ok("read", (B + 100 * K, 1), 4, 0, 64),
            ok("read", (B + 2 * M, 1), 4, 0, 4),
            ok("read", (B + 2 * M + 8 * K, 1), 0, 0, 4),
            err(EINVAL, "madvise", (B, 2 * M, MADV_FREE)),
            ok("madvise", (B, 2 * M, MADV_REMOVE), 0, 0, -64),
            ok("read", (B + 100 * K, 1), 0, 0, 4),
        ],
    ),
    Scenario(
        "SC-20",
        "munmap frees PTE, PMD and PUD tables",
        [anon(B, 4 * M)],
        [
            ok("write", (B, 4 * M), 16, 4096),
            ok("munmap", (B, 2 * M), -4, -2048),
            ok("munmap", (B + 2 * M, 2 * M), -12, -2048),
        ],
    ),
    Scenario(
        "SC-21",
        "munmap of ranges sharing spans with survivors",
        [anon(B, 4 * M)],
        [
            ok("write", (B, 4 * M), 16, 4096),
            ok("munmap", (B + 1 * M, 2 * M), 0, -2048),
            ok("munmap", (B, 1 * M), -4, -1024),
            ok("munmap", (B + 3 * M, 1 * M), -12, -1024),
        ],
    ),
    Scenario(
        "SC-22",
        "Neighbour VMAs keep PMD and PUD tables",
        [anon(B, 2 * M), anon(B + 512 * M, 2 * M), anon(B + 1 * G, 2 * M)],
        [
            ok("write", (B, 1), 12, 4),
            ok("write", (B + 512 * M, 1), 4, 4),
            ok("write", (B + 1 * G, 1), 8, 4),
            ok("munmap", (B, 2 * M), -4, -4),
            ok("munmap", (B + 1 * G, 2 * M), -8, -4),
            ok("munmap", (B + 512 * M, 2 * M), -12, -4),
        ],
    ),
    Scenario(
        "SC-23",
        "munmap frees tables whether empty or not",
        [anon(B, 64 * M)],
        [
            ok("span_poke", (B, 32), 136, 128),
            ok("madvise", (B, 64 * M, MADV_FREE)),
            ok("madvise", (B + 4 * K, 64 * M - 4 * K, MADV_DONTNEED), -124, -124),
            ok("munmap", (B, 64 * M), -12, -4),
        ],
    ),
    Scenario(
        "SC-24",
        "mprotect never allocates or frees tables",
        [anon(B, 4 * M)],
        [
            ok("write", (B, 2 * M), 12, 2048),
            ok("mprotect", (B, 4 * M, PROT_READ)),
            ok("mprotect", (B + 1 * M, 2 * M, PROT_NONE)),
            ok("mprotect", (B, 4 * M, RW)),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, -2048),
        ],
        note="THP rows (B+1G) left out: THP is not simulated.",
    ),
    Scenario(
        "SC-26a",
        "The seed loop in miniature (1 GiB), MADV_DONTNEED",
        [anon(B, 1 * G)],
        [
            ok("span_loop", (B, 512, MADV_DONTNEED, 2 * M), 8, 0),
            ok("munmap", (B, 1 * G), -8, 0),
        ],
    ),
    Scenario(
        "SC-26b",
        "The seed loop in miniature (1 GiB), MADV_FREE",
        [anon(B, 1 * G)],
        [
            ok("span_loop", (B, 512, MADV_FREE, 2 * M), 2056, 1048576),
            ok("munmap", (B, 1 * G), -2056, -1048576),
        ],
    ),
    Scenario("SC-27", "mremap move", [anon(B, 2 * M)], [
        ok("write", (B, 2 * M), 12, 2048),
        # MREMAP_MAYMOVE | MREMAP_FIXED: the PTE table moves whole (R23).
        ok("mremap", (B, 2 * M, 2 * M, MREMAP_MAYMOVE | MREMAP_FIXED, B + G)),
        # Not 2 MiB-aligned: entries move into two new tables, the old one goes.
        ok("mremap", (B + G, 2 * M, 2 * M, MREMAP_MAYMOVE | MREMAP_FIXED, B + G + 5 * M), 4, 0),
    ]),
    Scenario(
        "SC-28",
        "One madvise over two VMAs that each cover a full span",
        [anon(B, 4 * M)],
        [
            ok("write", (B, 4 * M), 16, 4096),
            ok("mprotect", (B + 2 * M, 2 * M, PROT_READ)),
            ok("madvise", (B, 4 * M, MADV_DONTNEED), -8, -4096),
        ],
    ),
    Scenario(
        "SC-32",
        "MADV_POPULATE_READ / WRITE",
        [anon(B, 4 * M)],
        [
            ok("madvise", (B, 2 * M, MADV_POPULATE_READ), 12, 0),
            ok("madvise", (B + 2 * M, 2 * M, MADV_POPULATE_WRITE), 4, 2048),
            ok("madvise", (B, 4 * M, MADV_DONTNEED), -8, -2048),
        ],
    ),
    Scenario(
        "SC-34",
        "VMA not aligned to 2 MiB",
        [anon(B + 1 * M, 4 * M)],
        [
            ok("write", (B + 1 * M, 4 * M), 20, 4096),
            ok("madvise", (B + 1 * M, 4 * M, MADV_DONTNEED), -4, -4096),
            ok("munmap", (B + 1 * M, 4 * M), -16, 0),
        ],
    ),
    Scenario(
        "SC-35",
        "madvise stops at the first VMA that fails",
        [anon(B, 6 * M)],
        [
            ok("write", (B, 6 * M), 20, 6144),
            ok("mlock", (B + 2 * M, 2 * M)),
            err(EINVAL, "madvise", (B, 6 * M, MADV_DONTNEED), -4, -2048),
            ok("madvise", (B + 4 * M, 2 * M, MADV_DONTNEED), -4, -2048),
        ],
    ),
    Scenario(
        "SC-36",
        "mmap MAP_FIXED over a populated mapping",
        [anon(B, 2 * M)],
        [
            ok("write", (B, 2 * M), 12, 2048),
            ok("mmap", (B, 2 * M, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED), -12, -2048),
            ok("write", (B, 1), 12, 4),
        ],
    ),
    Scenario(
        "SC-37",
        "munmap of several VMAs in one 1 GiB region",
        [anon(B, 2 * M), anon(B + 100 * M, 2 * M, RWX), anon(B + 2 * M + 512 * K, 1 * M, PROT_READ)],
        [
            ok("write", (B, 2 * M), 12, 2048),
            ok("write", (B + 100 * M, 2 * M), 4, 2048),
            ok("read", (B + 2 * M + 512 * K, 1 * M), 4, 0),
            ok("munmap", (B, 102 * M), -20, -4096),
        ],
    ),
    # A shmem huge folio is mapped by a PMD with no deposit: the collapse frees the
    # table, DONTNEED of the PMD frees nothing, and a read maps the folio again (R31, R44).
    Scenario("SC-39", "MADV_COLLAPSE on shmem frees the PTE table",
             [("mmap", (B, 2 * M, RW, SHARED_ANON))], [
        ok("write", (B, 2 * M), 12, 0, 2048),
        ok("madvise", (B, 2 * M, 25), -4, 0, 0),
        ok("madvise", (B, 2 * M, MADV_DONTNEED), 0, 0, -2048),
        ok("read", (B, 1), 0, 0, 2048),
    ]),
    Scenario(
        "SC-40",
        "munmap argument errors; madvise starting in a hole",
        [anon(B + 2 * M, 2 * M)],
        [
            ok("write", (B + 2 * M, 2 * M), 12, 2048),
            err(EINVAL, "munmap", (B, 0)),
            err(EINVAL, "munmap", (B + 2 * M + 1, 4 * K)),
            ok("munmap", (B, 2 * M)),
            err(ENOMEM, "madvise", (B, 4 * M, MADV_DONTNEED), -4, -2048),
            ok("write", (B + 2 * M, 2 * M), 4, 2048),
            ok("munmap", (B + 3 * M, 1), 0, -4),
            err(ENOMEM, "madvise", (B, 4 * M, MADV_FREE)),
        ],
    ),
    Scenario(
        "SC-41",
        "Guard markers on an untouched range",
        [anon(B, 4 * M)],
        [
            ok("madvise", (B, 4 * K, MADV_GUARD_INSTALL), 12, 0),
            ok("madvise", (B + 2 * M, 2 * M, MADV_GUARD_INSTALL), 4, 0),
            ok("madvise", (B, 4 * M, MADV_DONTNEED)),
            ok("madvise", (B + 2 * M, 2 * M, MADV_GUARD_REMOVE)),
            ok("madvise", (B, 4 * M, MADV_DONTNEED), -4, 0),
            ok("munmap", (B, 4 * M), -12, 0),
        ],
    ),
    Scenario("SC-14", "Anonymous THP: the deposit is counted", [anon(B, 4 * M)], [
        ok("madvise", (B, 4 * M, 14)),
        ok("write", (B, 1), 12, 2048),
        ok("write", (B + 2 * M, 1), 4, 2048),
        ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, -2048),
        ok("munmap", (B + 2 * M, 2 * M), -4, -2048),
    ]),
    Scenario("SC-15", "Partial zap of a THP splits it", [anon(B, 2 * M)], [
        ok("madvise", (B, 2 * M, 14)),
        ok("write", (B, 1), 12, 2048),
        ok("madvise", (B, 4 * K, MADV_DONTNEED), 0, -4),
        ok("madvise", (B + 4 * K, 2 * M - 4 * K, MADV_DONTNEED), 0, -2044),
        ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, 0),
    ]),
    Scenario("SC-16", "Huge zero page", [anon(B, 2 * M)], [
        ok("madvise", (B, 2 * M, 14)),
        ok("read", (B, 1), 12, 0),
        ok("write", (B, 1), 0, 2048),
        ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, -2048),
    ]),
    Scenario("SC-24-thp", "mprotect splits a THP but frees no table",
             [anon(B + G, 2 * M)], [
        ok("madvise", (B + G, 2 * M, 14)),
        ok("write", (B + G, 1), 12, 2048),
        ok("mprotect", (B + G, 4 * K, PROT_READ)),
        ok("mprotect", (B + G, 2 * M, RW)),
        ok("madvise", (B + G, 2 * M, MADV_DONTNEED), -4, -2048),
    ]),
    Scenario("SC-33", "MADV_COLLAPSE of anonymous memory", [anon(B, 2 * M)], [
        ok("write", (B, 2 * M), 12, 2048),
        ok("madvise", (B, 2 * M, 25)),
        ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, -2048),
    ]),
    Scenario("SC-25", "fork copies tables only for VMAs with an anon_vma",
             [anon(B, 4 * M), anon(B + G, 2 * M), ("mmap", (B + 2 * G, 2 * M, RW, SHARED_ANON))], [
        ok("write", (B, 4 * M), 16, 4096),
        ok("madvise", (B + 2 * M, 2 * M - 4 * K, MADV_DONTNEED), 0, -2044),
        ok("madvise", (B + 4 * M - 4 * K, 4 * K, MADV_DONTNEED), 0, -4),
        ok("read", (B + G, 2 * M), 8, 0),
        ok("write", (B + 2 * G, 2 * M), 8, 0, 2048),
        ok("fork_child", ()),
    ], note="the child's VmPTE is +16 and RssAnon +2048 over an empty child"),
    Scenario("SC-30", "Swap entries", [anon(B, 4 * M)], [
        ok("write", (B, 4 * M), 16, 4096),
        ok("madvise", (B, 4 * M, MADV_PAGEOUT), 0, -4096),
        ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, 0),
        ok("madvise", (B + 2 * M, 2 * M, MADV_FREE)),
        ok("madvise", (B + 2 * M, 2 * M, MADV_DONTNEED), -4, 0),
    ], note="VmSwap was 4096 kB after PAGEOUT and 0 kB after MADV_FREE (tests/test_swap.py)",
       machine=dict(swap_pages=SWAP_FILE_256M)),
    Scenario("SC-31", "hugetlb: 2 MiB pages from a pool of 4, no PTE table, DONTNEED rounds down", [], [
        ok("mmap", (B, 4 * M, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED_NOREPLACE)),
        ok("write", (B, 1), 8, 0),
        ok("write", (B + 2 * M, 1)),
        err(EINVAL, "madvise", (B + 4 * K, 2 * M - 4 * K, MADV_DONTNEED)),
        ok("madvise", (B, 2 * M + 4 * K, MADV_DONTNEED)),
        err(EINVAL, "madvise", (B + 2 * M, 2 * M, MADV_FREE)),
        ok("madvise", (B + 2 * M, 2 * M, MADV_DONTNEED)),
        ok("munmap", (B, 4 * M), -8, 0),
    ], machine={"hugetlb_pages": 4}),
    Scenario(
        "SC-18",
        "Shared file mapping: fault-around, write, PAGEOUT",
        [("file", ("f", 4 * M))],
        [
            ok("mmap_file", (B, 4 * M, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, "f", 0)),
            ok("read", (B + 100 * K, 1), 12, dfile=64),
            ok("read", (B + 2 * M - 4 * K, 1), 0, dfile=64),
            ok("write", (B + M, 1), 0, dfile=4),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, dfile=-132),
            ok("madvise", (B + 2 * M, 2 * M, MADV_PAGEOUT)),
            ok("read", (B + 2 * M, 2 * M), 4, dfile=2048),
            ok("madvise", (B + 2 * M, 2 * M, MADV_PAGEOUT), 0, dfile=-2048),
            ok("munmap", (B, 4 * M), -12),
        ],
    ),
    Scenario(
        "SC-19",
        "Private file mapping: COW",
        [("file", ("f", 2 * M)), ("mmap_file", (B, 2 * M, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, "f", 0))],
        [
            ok("read", (B + 100 * K, 1), 12, dfile=64),
            ok("write", (B + 100 * K, 1), 0, 4, dfile=-4),
            ok("write", (B + M, 1), 0, 4),
            err(EINVAL, "madvise", (B, 2 * M, MADV_FREE)),
            ok("madvise", (B, 2 * M, MADV_DONTNEED), -4, -8, dfile=-60),
        ],
    ),
    Scenario(
        "SC-38",
        "COLD, PAGEOUT without swap, WILLNEED, REMOVE",
        [
            anon(B, 2 * M),
            ("file", ("f", 2 * M, "uncached")),
            ("mmap_file", (B + G, 2 * M, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, "f", 0)),
            ("mmap_file", (B + 2 * G, 2 * M, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, "f", 0)),
        ],
        [
            ok("write", (B, 2 * M), 12, 2048),
            ok("madvise", (B, 2 * M, MADV_COLD)),
            ok("madvise", (B, 2 * M, MADV_PAGEOUT)),
            ok("madvise", (B, 2 * M, MADV_WILLNEED)),
            err(EINVAL, "madvise", (B, 2 * M, MADV_REMOVE)),
            err(EACCES, "madvise", (B + G, 2 * M, MADV_REMOVE)),
            ok("write", (B + 2 * G, 2 * M), 8, dfile=2048),
            ok("madvise", (B + 2 * G, 2 * M, MADV_REMOVE), 0, dfile=-2048),
            ok("madvise", (B + 2 * G, 2 * M, MADV_DONTNEED), -4),
        ],
        note="the file is a sparse 2 MiB ext4 file (ftruncate): an empty page cache",
    ),
    Scenario("SC-39", "MADV_COLLAPSE on shmem frees the PTE table",
             [("mmap", (B, 2 * M, RW, SHARED_ANON))], [
        ok("write", (B, 2 * M), 12, 0, 2048),
        ok("madvise", (B, 2 * M, 25), -4, 0, 0),
        ok("madvise", (B, 2 * M, MADV_DONTNEED), 0, 0, -2048),
        ok("read", (B, 1), 0, 0, 2048),
    ]),
]


def seed_scenario(spans):
    """SC-44 (a) at B with ``spans`` iterations instead of 25 600.

    Final VmPTE = 4 kB x (1 PUD + one PMD per GiB touched + 0 PTE tables)
    (§12); the full run is spans = 25 600: +204 kB.
    """
    regions = -(-spans // 512)
    return Scenario(
        "SC-44a",
        f"The seed loop at B, {spans} spans",
        [anon(B, 50 * G)],
        [ok("span_loop", (B, spans, MADV_DONTNEED, 2 * M), 4 * (1 + regions), 0)],
    )


def seed_rcu_scenario(spans):
    """SC-44 (b): one byte per span, then one DONTNEED over all of them."""
    regions = -(-spans // 512)
    return Scenario(
        "SC-44b",
        f"One DONTNEED over {spans} populated spans at B",
        [anon(B, 50 * G)],
        [
            ok("span_poke", (B, spans), 4 * (1 + regions + spans), 4 * spans),
            ok("madvise", (B, spans * 2 * M, MADV_DONTNEED), -4 * spans, -4 * spans),
        ],
    )


# Full-size seed run: 25 600 iterations, +204 kB (SC-44 "DONTNEED, at B").
SEED_FULL_SPANS = 25600
SEED_FULL_DVMPTE = 204
