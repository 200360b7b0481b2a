"""Seeded random operation scripts for comparing the simulator with the host kernel.

``generate(n_ops, seed)`` returns ``n_ops`` script operations (``ptreclaim.script``) that
are *legal* on the host-kernel runner: every ``touch`` lands on memory that is mapped with
the permission it needs (so it never faults), every range stays inside the runner's window
``[base, base + 512 GiB)`` (or has a length that wraps past 2**64), and the memory the
script can make resident stays small.  Everything else is left to chance on purpose:
``madvise``/``mprotect``/``munmap``/``mlock``/``munlock`` ranges cross holes and VMA
boundaries, start unaligned, straddle 2 MiB, 1 GiB and 512 GiB boundaries, use invalid
advice and protections; mappings are private and shared, charged and ``MAP_NORESERVE``.

To know what is mapped with which protection after operations that may fail half-way
(mprotect and mlock stop at the first hole, madvise goes on past holes, mlock sets
VM_LOCKED and then fails to populate PROT_NONE...), the generator runs every operation on
a simulator instance (the *oracle*) as it goes and reads ``vmas()`` back.  The oracle only
decides legality; whether the simulator is *right* is what the comparison with the kernel
judges.  The same seed gives the same script as long as the oracle behaves the same.

``Config`` switches on what the default scripts leave out (``MADV_COLLAPSE``, THP faults
in ``MADV_HUGEPAGE`` regions, a ``fork``, files);
``generate`` uses ``DEFAULT_CONFIG``, which is what ``python -m ptreclaim compare --random N
--seed S`` and ``tests/test_random_vs_kernel.py`` compare.  ``PROFILES`` names the other
configurations (``--profile`` of ``compare``): ``fork`` (one ``fork`` or ``forkp`` at a random
point), ``thp-fork`` (the same, plus ``MADV_HUGEPAGE``/``MADV_NOHUGEPAGE`` on 2 MiB-aligned
mappings whose accesses fault in transparent huge pages), ``file`` (one ``fork`` or
``forkp``, plus mappings of small cached files, ``close`` and ``mremap``) and ``shmem-thp``
(``file`` with memfds and shared memory in 2 MiB spans, and ``MADV_COLLAPSE``).  A profile draws from the seed's
random stream as the default does until its first extra choice, so the default scripts
are the same with or without them.
"""

from __future__ import annotations

import dataclasses
import errno
import random
from dataclasses import dataclass

from . import constants as C
from . import script as S

__all__ = ["Config", "DEFAULT_CONFIG", "FORK_CONFIG", "THP_FORK_CONFIG", "FILE_CONFIG",
           "SHMEM_THP_CONFIG", "PROFILES",
           "VALID_ADVICE", "OPTIONAL_ADVICE", "INVALID_ADVICE",
           "generate", "generate_text", "outcome", "first_difference", "minimize"]

K, M, G = 1 << 10, 1 << 20, 1 << 30
PAGE = C.PAGE_SIZE
WINDOW = 512 * G          # the runner's window (kernel.WINDOW): every range stays inside it
_U64 = 1 << 64

# Every advice the simulator implements: flag-only advice, zapping, freeing, populating.
VALID_ADVICE = (
    C.MADV_NORMAL, C.MADV_RANDOM, C.MADV_SEQUENTIAL, C.MADV_WILLNEED, C.MADV_DONTNEED,
    C.MADV_FREE, C.MADV_REMOVE, C.MADV_DONTFORK, C.MADV_DOFORK, C.MADV_MERGEABLE,
    C.MADV_UNMERGEABLE, C.MADV_HUGEPAGE, C.MADV_NOHUGEPAGE, C.MADV_DONTDUMP, C.MADV_DODUMP,
    C.MADV_WIPEONFORK, C.MADV_KEEPONFORK, C.MADV_COLD, C.MADV_PAGEOUT, C.MADV_POPULATE_READ,
    C.MADV_POPULATE_WRITE, C.MADV_DONTNEED_LOCKED, C.MADV_GUARD_INSTALL, C.MADV_GUARD_REMOVE,
)
# Valid advice the default scripts leave out, so that they stay what they were when their
# figures were taken (docs/validation.md); the shmem-thp profile draws it.
OPTIONAL_ADVICE = (C.MADV_COLLAPSE,)
# Rejected with EINVAL by this kernel (HWPOISON/SOFT_OFFLINE: CONFIG_MEMORY_FAILURE is off).
INVALID_ADVICE = (5, 6, 7, 26, 99, C.MADV_HWPOISON, C.MADV_SOFT_OFFLINE, 104, 9999, -1)

# How often each advice is drawn (relative): the ones that change page tables most.
_ADVICE_WEIGHT = {
    C.MADV_DONTNEED: 12, C.MADV_DONTNEED_LOCKED: 4, C.MADV_FREE: 4, C.MADV_REMOVE: 3,
    C.MADV_PAGEOUT: 3, C.MADV_COLD: 2, C.MADV_POPULATE_READ: 3, C.MADV_POPULATE_WRITE: 3,
    C.MADV_GUARD_INSTALL: 3, C.MADV_GUARD_REMOVE: 2, C.MADV_COLLAPSE: 2,
}

_PROT_NAMES = {"none": 0, "r": 1, "w": 2, "rw": 3, "x": 4, "rx": 5, "wx": 6, "rwx": 7}
_MMAP_PROTS = ((3, 40), (1, 14), (0, 10), (2, 5), (4, 5), (5, 6), (7, 12), (6, 3), (0x10 | 3, 2), (8 | 1, 2))
# mprotect: valid protections, plus PROT_SEM (accepted), an unknown bit and PROT_GROWSDOWN/UP.
_MPROTECT_PROTS = ((3, 30), (1, 20), (0, 16), (2, 4), (4, 4), (5, 5), (7, 8), (6, 2), (8 | 3, 2),
                   (0x10, 2), (C.PROT_GROWSDOWN | 1, 2), (0x02000000 | 1, 1),
                   (C.PROT_GROWSDOWN | 0x02000000, 1))

# Interesting places in the window: its start (a 512 GiB boundary), 1 GiB boundaries, and
# the top 1 GiB below the window's end (the next 512 GiB boundary).
_ANCHORS = (0, 0, 0, 2 * M, 64 * M, G, G, 2 * G, 3 * G, 64 * G, 255 * G, 256 * G, 511 * G,
            511 * G, WINDOW - 2 * M, WINDOW - 64 * M)


@dataclass(frozen=True)
class Config:
    """What ``generate`` may produce.

    * ``advice``: the valid advice values drawn; ``invalid_advice`` are drawn with
      probability ``p_invalid_advice``.
    * ``thp_faults``: ``False`` (default) keeps every access out of ``VM_HUGEPAGE`` VMAs and
      applies ``MADV_HUGEPAGE`` only where nothing is mapped in the page tables: with THP
      ``madvise`` the kernel would fault 2 MiB pages there (and khugepaged could collapse
      present pages at any time), which the simulator does not model yet.  ``True`` lifts
      both restrictions.
    * ``op_cap``: the most memory one operation may populate (bytes); ``budget``: the most
      all operations of a script may populate together.
    * ``oracle``: ``"reference"`` (default: the scripts do not depend on how the core is
      built), ``"core"`` (faster), or ``None`` (the core when it is built, implements
      every advice in ``advice`` and, if the script forks, ``fork()``; else the reference).
    * ``fork``: ``None`` (default: no fork), ``"fork"``, ``"forkp"`` or ``"any"`` (either,
      drawn): exactly one such operation, at a random line of the script (not the first
      nor the last).  After it the oracle follows the process that runs the rest (the child
      for ``fork``: no ``MADV_DONTFORK`` VMAs, empty ``MADV_WIPEONFORK`` ones, no
      ``VM_LOCKED``), so touches stay legal.  The oracle needs ``fork()``.
    * ``thp_advice``: ``False`` (default), or ``True`` to make THP happen with THP
      ``madvise``: half the mappings are 2 MiB-aligned with lengths of whole 2 MiB spans
      (a few a page off), most are followed by ``MADV_HUGEPAGE`` of exactly their range, and
      ``MADV_HUGEPAGE``/``MADV_NOHUGEPAGE`` are drawn often, on whole VMAs, their 2 MiB
      spans or any range (unaligned ones too).  Most touches go to ``VM_HUGEPAGE``
      VMAs.  Needs ``thp_faults=True``.  The memory budget counts every 2 MiB span such an
      access may fault in.
    * ``files``: ``False`` (default), or ``True`` for file mappings: one or two small files
      (regular or memfd, all pages cached; some opened read-only) created at the start,
      sometimes a third later; a good part of the mappings map them, shared or private, at
      random page offsets, never past the end of the file; ``close`` lines; and ``mremap``
      (shrink, grow in place up to the end of the file, move).  The oracle maps each file
      mapping as an anonymous mapping of the same kind (the simulators may not have files);
      the generator follows which ranges map which file itself (``_Gen.fmaps``).  Nothing
      accesses a regular file's pages again once ``MADV_PAGEOUT`` or ``MADV_REMOVE`` may have
      evicted some: the kernel would read them back with readahead (large folios, more than
      the faulting page), which the simulator does not model.
    * ``shmem_thp``: ``False`` (default), or ``True`` for shmem huge pages: with ``files``,
      the files are mostly memfds of whole 2 MiB spans, half the mappings (memfd and
      ``MAP_SHARED|MAP_ANONYMOUS``) are 2 MiB-aligned with 2 MiB-aligned file offsets, and
      ``MADV_COLLAPSE`` is drawn often, over whole VMAs or their 2 MiB spans.  A collapsed
      folio is then mapped by PMD, split, paged out, punched and moved by the rest of the
      script.  Needs ``files=True``.
    """

    advice: tuple = VALID_ADVICE
    invalid_advice: tuple = INVALID_ADVICE
    p_invalid_advice: float = 0.04
    thp_faults: bool = False
    op_cap: int = 8 * M
    budget: int = 192 * M
    oracle: str | None = "reference"
    fork: str | None = None
    thp_advice: bool = False
    files: bool = False
    shmem_thp: bool = False

    def __post_init__(self):
        if self.fork not in (None, "fork", "forkp", "any"):
            raise ValueError(f"fork must be None, 'fork', 'forkp' or 'any', not {self.fork!r}")
        if self.thp_advice and not self.thp_faults:
            raise ValueError("thp_advice=True needs thp_faults=True")
        if self.shmem_thp and not self.files:
            raise ValueError("shmem_thp=True needs files=True")

    def with_advice(self, *extra):
        """A copy that also draws ``extra`` advice values (e.g. ``OPTIONAL_ADVICE``)."""
        return dataclasses.replace(self, advice=tuple(dict.fromkeys(self.advice + tuple(extra))))


DEFAULT_CONFIG = Config()
# One fork or forkp per script; THP as in the default (no access to VM_HUGEPAGE VMAs): the
# simulators can be compared with the kernel on these now.  The oracle is the reference
# model, as by default: the scripts do not depend on the core under test.  Legality does
# not depend on THP either (it changes what is resident, not which accesses fault), so a
# model with or without THP draws the same scripts.
FORK_CONFIG = Config(fork="any")
# One fork or forkp per script, and THP faults in MADV_HUGEPAGE regions (THP "madvise").
THP_FORK_CONFIG = Config(fork="any", thp_faults=True, thp_advice=True)
# File mappings (regular files and memfds) among the anonymous ones, and one fork or forkp.
FILE_CONFIG = Config(fork="any", files=True)
# Shmem huge pages: memfds and shared anonymous memory in whole 2 MiB spans, MADV_COLLAPSE,
# and one fork or forkp.
SHMEM_THP_CONFIG = Config(fork="any", files=True, shmem_thp=True).with_advice(C.MADV_COLLAPSE)
PROFILES = {"default": DEFAULT_CONFIG, "fork": FORK_CONFIG, "thp-fork": THP_FORK_CONFIG,
            "file": FILE_CONFIG, "shmem-thp": SHMEM_THP_CONFIG}

# Advice that sets VMA flags on anonymous memory but fails (and stops the walk) or is
# ignored on file mappings: the oracle's anonymous stand-in would split VMAs the kernel
# does not (or keep guards the kernel removed), so the file profile keeps them off files.
_FILE_SHADOW_ADVICE = {C.MADV_WIPEONFORK, C.MADV_KEEPONFORK, C.MADV_MERGEABLE, C.MADV_UNMERGEABLE,
                       C.MADV_GUARD_INSTALL, C.MADV_GUARD_REMOVE}

# Advice the core raises NotImplementedError for (none now).
_CORE_MISSING = set()


def _oracle_class(cfg):
    want = cfg.oracle
    if want is None:
        want = "reference" if _CORE_MISSING & set(cfg.advice) else "core"
        if want == "core":
            try:
                from ._core import MM
                if cfg.fork is None or hasattr(MM, "fork"):
                    return MM
            except ImportError:
                pass
            want = "reference"
    if want == "core":
        from ._core import MM
    elif want == "reference":
        from ._reference import MM
    else:
        raise ValueError(f"oracle must be 'core', 'reference' or None, not {want!r}")
    if cfg.fork is not None and not hasattr(MM, "fork"):
        raise ValueError(f"Config(fork={cfg.fork!r}) needs an oracle with fork(); "
                         f"{MM.__module__}.MM has none")
    return MM


@dataclass
class _File:
    size: int
    ro: bool
    shmem: bool
    open: bool = True
    evicted: bool = False  # a regular file some of whose pages PAGEOUT/REMOVE may have evicted

    @property
    def pages(self):
        return (self.size + PAGE - 1) // PAGE


def _weighted(rng, pairs):
    values = [v for v, _ in pairs]
    weights = [w for _, w in pairs]
    return rng.choices(values, weights)[0]


def _page_down(a):
    return a & ~(PAGE - 1)


def _page_up(a):
    return (a + PAGE - 1) & ~(PAGE - 1)


_READABLE = C.VM_READ | C.VM_WRITE | C.VM_EXEC


class _Gen:
    def __init__(self, rng, cfg, mm, base):
        self.rng = rng
        self.cfg = cfg
        self.mm = mm
        self.base = base
        self.spent = 0  # bytes the script's operations may have populated so far
        self.vmas = []  # (start, end, flags, anon_vma), relative to the base
        self.guards = C.MADV_GUARD_INSTALL in cfg.advice
        self.advice = [(a, _ADVICE_WEIGHT.get(a, 1)) for a in cfg.advice]
        self.idle = []     # the oracle's processes a fork left behind (kept alive, as on the host)
        self.pending = []  # operations to emit next (thp_advice: MADV_HUGEPAGE after an mmap)
        self.files = {}    # name -> _File (files: the files the script created)
        self.nfiles = 0    # `file` lines drawn so far
        self.fmaps = []    # [start, end, name, offset]: which file each range maps (relative)
        self._last_ret = None  # what the oracle's last mmap/mremap returned

    # --- the oracle -------------------------------------------------------------------------

    def apply(self, op):
        if isinstance(op, (S.Fork, S.ForkP)):
            child = self.mm.fork()
            if isinstance(op, S.Fork):
                self.idle.append(self.mm)
                self.mm = child
            else:
                self.idle.append(child)
            self._read_vmas()
            self._sync_fmaps()
            return 0
        if isinstance(op, (S.CreateFile, S.Close)) or isinstance(op, S.Mmap) and op.file is not None:
            return self._apply_file(op)
        moved = self._mremap_pieces(op) if isinstance(op, S.Mremap) else None
        err = self._apply_oracle(op)
        if err == 0 and isinstance(op, S.Mmap):
            self._fmaps_remove(op.addr, op.addr + _page_up(op.length))
        if err == 0 and moved is not None:
            self._mremap_follow(op, moved)
        if isinstance(op, S.Madvise) and op.advice in (C.MADV_PAGEOUT, C.MADV_REMOVE):
            # Some pages may have left the page cache, whatever the errno (madvise acts
            # VMA by VMA before an error stops it).
            for _, _, name, _ in self._fmaps_in(op.addr, op.length):
                if not self.files[name].shmem:
                    self.files[name].evicted = True
        self._sync_fmaps()
        return err

    def _apply_oracle(self, op):
        self._last_ret = None
        try:
            err, fault, self._last_ret = S._apply(self.mm, op, self.base)
        except NotImplementedError:
            # An optional advice the oracle does not simulate (MADV_COLLAPSE): it refuses
            # before changing anything, and the advice changes no VMA or protection on the
            # kernel either, so the layout the generator needs stays right.
            return None
        if fault is not None:
            # The generator chose a touch the oracle says faults: a generator bug, not a
            # finding (the kernel comparison judges the simulator, not this).
            raise RuntimeError(f"generated touch faulted in the oracle: {op} at {fault - self.base:#x}")
        self._read_vmas()
        return err

    def _read_vmas(self):
        self.vmas = [(s - self.base, e - self.base, f, a) for s, e, f, a in self.mm.vmas()
                     if self.base <= s < self.base + WINDOW]

    def room(self):
        return self.cfg.budget - self.spent

    # --- files (the oracle maps them as anonymous memory of the same kind) -------------------

    def _apply_file(self, op):
        if isinstance(op, S.CreateFile):
            self.files[op.name] = _File(op.size, op.ro, op.shmem)
            return 0
        f = self.files[op.name if isinstance(op, S.Close) else op.file]
        if isinstance(op, S.Close):
            err = 0 if f.open else errno.EBADF
            f.open = False
            return err
        # Checks the anonymous stand-in would not make.  Whichever error the kernel reports
        # first, nothing is mapped, which is all the generator needs to know.
        if op.offset % PAGE:
            return errno.EINVAL
        if not f.open:
            return errno.EBADF
        if op.shared and f.ro and op.prot & C.PROT_WRITE:
            return errno.EACCES
        err = self._apply_oracle(dataclasses.replace(op, file=None, offset=0))
        if err == 0:
            end = op.addr + _page_up(op.length)
            self._fmaps_remove(op.addr, end)
            self.fmaps.append([op.addr, end, op.file, op.offset])
            self._sync_fmaps()
        return err

    def _fmaps_in(self, a, n):
        """The file pieces overlapping [a, a + n) (page-rounded)."""
        if n >= _U64 // 2:
            return []
        lo, hi = _page_down(a), _page_up(a + n)
        return [p for p in self.fmaps if p[0] < hi and p[1] > lo]

    def _fmaps_remove(self, lo, hi):
        out = []
        for s, e, name, off in self.fmaps:
            if e <= lo or s >= hi:
                out.append([s, e, name, off])
                continue
            if s < lo:
                out.append([s, lo, name, off])
            if e > hi:
                out.append([hi, e, name, off + hi - s])
        self.fmaps = out

    def _sync_fmaps(self):
        """Keep only the parts of the file pieces the oracle still maps (munmap, a fork's
        child without the MADV_DONTFORK VMAs...)."""
        out = []
        for s, e, name, off in self.fmaps:
            for vs, ve, _, _ in self.vmas:
                lo, hi = max(s, vs), min(e, ve)
                if lo < hi:
                    out.append([lo, hi, name, off + lo - s])
        self.fmaps = out

    def _mremap_pieces(self, op):
        if not self.cfg.files or op.addr % PAGE or op.length >= _U64 // 2:
            return None
        return [list(p) for p in self._fmaps_in(op.addr, op.length)]

    def _mremap_follow(self, op, pieces):
        """Move the file pieces of the old range where mremap put them, and give a growth
        the file of the page before it."""
        old_lo, old_hi = op.addr, op.addr + _page_up(op.length)
        new_len = _page_up(op.new_length)
        dest = self._last_ret - self.base if self._last_ret is not None else op.addr
        if dest != old_lo:
            self._fmaps_remove(old_lo, old_hi)
        else:
            self._fmaps_remove(old_lo + min(new_len, old_hi - old_lo), old_hi)
        for s, e, name, off in pieces:
            lo, hi = max(s, old_lo), min(e, old_hi)
            if lo - old_lo >= new_len:
                continue
            nlo, nhi = dest + lo - old_lo, dest + min(hi - old_lo, new_len)
            if dest != old_lo:
                self._fmaps_remove(nlo, nhi)
                self.fmaps.append([nlo, nhi, name, off + lo - s])
            if hi == old_hi and new_len > old_hi - old_lo:
                # The growth continues the VMA that held the last page.
                self.fmaps.append([dest + old_hi - old_lo, dest + new_len, name, off + hi - s])

    def evicted(self, a, n):
        """Does [a, a + n) map a regular file some of whose pages may have been evicted?"""
        return any(self.files[name].evicted for _, _, name, _ in self._fmaps_in(a, n))

    # --- addresses and ranges ---------------------------------------------------------------

    def small_offset(self):
        r = self.rng.random()
        if r < 0.3:
            return 0
        if r < 0.6:
            return self.rng.randint(-16, 16) * PAGE
        if r < 0.85:
            return self.rng.randint(-4, 4) * 2 * M + self.rng.choice((0, 0, PAGE, -PAGE))
        return self.rng.randint(-64, 64) * 64 * K

    def addr(self):
        """A page-aligned address in the window: near an anchor or near a VMA edge."""
        rng = self.rng
        if self.vmas and rng.random() < 0.55:
            s, e, _, _ = rng.choice(self.vmas)
            a = rng.choice((s, e, s, e, (s + e) // 2 & ~(PAGE - 1))) + self.small_offset()
        else:
            a = rng.choice(_ANCHORS) + self.small_offset()
        return min(max(a, 0), WINDOW - PAGE)

    def length(self, big=True):
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            n = rng.randint(1, 16) * PAGE
        elif r < 0.65:
            n = rng.randint(1, 4) * 2 * M + rng.choice((0, 0, 0, PAGE, -PAGE, 512 * K))
        elif r < 0.8:
            n = rng.randint(1, 64) * 256 * K
        elif r < 0.9 or not big:
            n = rng.randint(1, 24) * M
        else:
            n = rng.choice((G, G + 2 * M, 2 * G, 3 * G + PAGE, 64 * G, 300 * G))
        if rng.random() < 0.1:
            n += rng.randint(1, PAGE - 1) - PAGE  # unaligned: the kernel rounds it up
        return max(n, 1)

    def fit(self, a, n):
        """Clamp [a, a + n) to the window (page-rounded end <= WINDOW)."""
        if a + _page_up(n) > WINDOW:
            n = WINDOW - a
        return n

    def range(self, big=True):
        """(addr, len) for madvise/mprotect/munmap/mlock/munlock: mostly aligned."""
        rng = self.rng
        r = rng.random()
        if r < 0.03:
            # A length that wraps past 2**64: rejected (or, mlock/munlock, a no-op) before acting.
            return self.addr(), rng.choice((-PAGE, -2 * PAGE, -1, -(2 * M))) % _U64
        if r < 0.06:
            return self.addr(), 0
        if self.vmas and r < 0.5:
            a, end = self.inside_vma()
        elif self.vmas and r < 0.7:
            a, end = self.across_vmas(holes=False)
        elif self.vmas and r < 0.82:
            a, end = self.across_vmas(holes=True)
        else:
            a = self.addr()
            end = a + self.length(big)
        if rng.random() < 0.08:
            end += rng.choice((1, 100, PAGE // 2, 1 - PAGE))  # unaligned length: rounded up
        if rng.random() < 0.05:
            a += rng.choice((1, 100, PAGE // 2, PAGE - 1))  # unaligned start
        a = min(max(a, 0), WINDOW - PAGE)
        n = end - a if end > a else self.length(big)
        return a, self.fit(a, n)

    def inside_vma(self, spans=False):
        """A range inside one VMA: all of it, its whole 2 MiB spans, or a random part."""
        rng = self.rng
        vmas = self.vmas
        if spans:
            vmas = [v for v in vmas if (v[0] + 2 * M - 1) & ~(2 * M - 1) < v[1] & ~(2 * M - 1)] or vmas
        s, e, _, _ = rng.choice(vmas)
        r = 0.3 if spans else rng.random()
        if r < 0.25:
            return s, e
        if r < 0.5:
            lo, hi = (s + 2 * M - 1) & ~(2 * M - 1), e & ~(2 * M - 1)
            if lo < hi:
                k = rng.randint(1, (hi - lo) // (2 * M))
                lo += rng.randint(0, (hi - lo) // (2 * M) - k) * 2 * M
                return lo, lo + k * 2 * M
        a = s + _page_down(rng.randrange(e - s))
        return a, a + _page_up(rng.randint(1, e - a))

    def across_vmas(self, holes):
        """A range over several neighbouring VMAs (touching each other unless ``holes``)."""
        rng = self.rng
        i = rng.randrange(len(self.vmas))
        j = i
        while j + 1 < len(self.vmas) and rng.random() < 0.6 and (holes or self.vmas[j + 1][0] == self.vmas[j][1]):
            j += 1
        s, e = self.vmas[i][0], self.vmas[j][1]
        a = s + rng.choice((0, 0, 0, PAGE, -PAGE, 2 * M, -2 * M, (e - s) // 2 & ~(PAGE - 1)))
        end = e + rng.choice((0, 0, 0, PAGE, -PAGE, 2 * M, -2 * M))
        return a, end

    # --- what the current layout allows ---------------------------------------------------

    def overlapping(self, a, n):
        lo, hi = _page_down(a), _page_up(a + n) if n else _page_down(a)
        return [v for v in self.vmas if v[0] < hi and v[1] > lo]

    def mapped_bytes(self, a, n, need=None):
        lo, hi = _page_down(a), _page_up(a + n)
        return sum(min(hi, e) - max(lo, s) for s, e, f, _ in self.overlapping(a, n)
                   if need is None or f & need)

    def hits_hugepage(self, a, n, also=0):
        if self.cfg.thp_faults:
            return False
        return any(f & C.VM_HUGEPAGE and (not also or f & also) for _, _, f, _ in self.overlapping(a, n))

    def has_entries(self, a, n):
        lo, hi = _page_down(a), min(_page_up(a + n), WINDOW)
        for _ in self.mm.entries(self.base + lo, self.base + hi):
            return True
        return False

    def guarded(self, a, n):
        if not self.guards:
            return False
        lo, hi = _page_down(a), min(_page_up(a + n), WINDOW)
        for _, entry in self.mm.entries(self.base + lo, self.base + hi):
            if not entry & (C._PAGE_PRESENT | C._PAGE_PROTNONE):
                return True
        return False

    def thp_extra(self, a, n, need=None):
        """Bytes beyond [a, a + n) that THP faults may populate: with ``thp_advice``, an
        access in a ``VM_HUGEPAGE`` VMA may fault in the whole 2 MiB span around it."""
        if not self.cfg.thp_advice or n >= _U64 // 2:
            return 0
        lo, hi = _page_down(a), _page_up(a + n)
        extra = 0
        for s, e, f, _ in self.overlapping(a, n):
            if f & C.VM_HUGEPAGE and (need is None or f & need):
                inner = min(hi, e) - max(lo, s)
                outer = min((hi + 2 * M - 1) & ~(2 * M - 1), e) - max(lo & ~(2 * M - 1), s)
                extra += outer - inner
        return extra

    def spend(self, nbytes):
        if nbytes > self.cfg.op_cap or nbytes > self.room():
            return False
        self.spent += nbytes
        return True

    # --- operations -------------------------------------------------------------------------

    def op_mmap(self):
        rng = self.rng
        fixed = rng.random() < 0.15
        prot = _weighted(rng, _MMAP_PROTS)
        shared = rng.random() < 0.3
        noreserve = rng.random() < 0.6
        n = self.length(big=noreserve)
        if not noreserve:
            n = min(n, 256 * M)  # charged: far below RAM, so the overcommit check passes
            if rng.random() < 0.5:
                n = min(n, 16 * M)
        # Without MAP_FIXED, an occupied address fails with EEXIST: keep that occasional.
        for _ in range(1 if fixed or rng.random() < 0.12 else 8):
            a = self.addr()
            if self.vmas and rng.random() < 0.3:
                s, e, _, _ = rng.choice(self.vmas)
                a = e if rng.random() < 0.6 else s - _page_up(n)  # adjacent: may merge
                a = min(max(a, 0), WINDOW - PAGE)
            if not self.overlapping(a, self.fit(a, n)):
                break
        populate = rng.random() < 0.08
        locked = rng.random() < 0.06
        r = rng.random()
        if r < 0.03:
            n = 0  # EINVAL
        elif r < 0.06:
            a += rng.choice((1, PAGE // 2))  # EINVAL
        hugepage = False
        if self.cfg.shmem_thp and n and not a % PAGE and rng.random() < 0.5:
            # Whole 2 MiB spans at a 2 MiB boundary, mostly shared: room for shmem THPs.
            a = min(a & ~(2 * M - 1), WINDOW - 8 * M)
            if self.overlapping(a, 8 * M) and rng.random() < 0.8:
                a = self.free_aligned(a)
            prot = rng.choice((3, 3, 3, 1, 7))
            shared = rng.random() < 0.7
            n = rng.randint(1, 3) * 2 * M
        elif self.cfg.thp_advice and n and not a % PAGE and rng.random() < 0.5:
            # Whole 2 MiB spans at a 2 MiB boundary: a fault there maps a huge page once
            # MADV_HUGEPAGE is set; a few start or end a page off (THP only in the spans
            # that fit inside the VMA).
            hugepage = True
            a = min(a & ~(2 * M - 1), WINDOW - 8 * M)
            if self.overlapping(a, 8 * M) and rng.random() < 0.8:
                a = self.free_aligned(a)
            prot = rng.choice((3, 3, 3, 3, 1, 7, 0))
            shared = rng.random() < 0.1
            n = rng.randint(1, 4) * 2 * M
            if rng.random() < 0.2:
                if rng.random() < 0.5:
                    a += PAGE
                n += rng.choice((PAGE, -PAGE))
            populate = populate and rng.random() < 0.5
        n = self.fit(a, n)
        if n <= 0:
            return None
        if (populate or locked) and prot & 7:
            if n > self.cfg.op_cap:
                n = rng.randint(1, self.cfg.op_cap // PAGE) * PAGE
            if not self.spend(_page_up(n)):
                populate = locked = False
        if hugepage and rng.random() < 0.75:
            self.pending.append(S.Madvise(a, n, C.MADV_HUGEPAGE))
        return S.Mmap(a, n, prot, shared=shared, populate=populate, locked=locked,
                      noreserve=noreserve, fixed=fixed)

    def free_aligned(self, a):
        """A 2 MiB-aligned address near ``a`` with 8 MiB free above it (else ``a``)."""
        for step in range(1, 64):
            for b in (a + step * 2 * M, a - step * 2 * M):
                if 0 <= b <= WINDOW - 8 * M and not self.overlapping(b, 8 * M):
                    return b
        return a

    def op_touch(self):
        rng = self.rng
        write = rng.random() < 0.65
        need = C.VM_WRITE if write else _READABLE
        ok = [v for v in self.vmas if v[2] & need
              and (self.cfg.thp_faults or not v[2] & C.VM_HUGEPAGE)]
        if not ok:
            return None
        if self.cfg.thp_advice and rng.random() < 0.6:
            ok = [v for v in ok if v[2] & C.VM_HUGEPAGE] or ok
        if self.cfg.shmem_thp and rng.random() < 0.6:
            ok = [v for v in ok if v[2] & C.VM_SHARED] or ok
        s, e, _, _ = rng.choice(ok)
        # Extend across neighbours that allow the access too.
        runs = {v[0]: v for v in ok}
        while e in runs and rng.random() < 0.7:
            e = runs[e][1]
        r = rng.random()
        lo, hi = (s + 2 * M - 1) & ~(2 * M - 1), e & ~(2 * M - 1)
        if r < 0.3 and lo < hi:
            # One whole 2 MiB span: a full PTE table, which a later DONTNEED can reclaim.
            a = lo + rng.randrange((hi - lo) // (2 * M)) * 2 * M
            if self.guarded(a, 2 * M) or not self.spend(2 * M + self.thp_extra(a, 2 * M)):
                return None
            return S.Touch(a, 2 * M, write)
        if r < 0.4:
            a = s
        elif r < 0.55:
            a = max(s, _page_down(e - rng.randint(1, 8) * PAGE))
        else:
            a = s + _page_down(rng.randrange(e - s))
        if rng.random() < 0.15:
            a += rng.randint(1, PAGE - 1)  # the first access need not be page-aligned
        cap = min(e - a, rng.choice((PAGE, 16 * K, 2 * M, 4 * M, 4 * M, self.cfg.op_cap)))
        n = rng.randint(1, cap) if rng.random() < 0.4 else cap
        if self.guarded(a, n):
            return None
        if not self.spend(_page_up(a + n) - _page_down(a) + self.thp_extra(a, n)):
            return None
        return S.Touch(a, n, write)

    def op_thp_advice(self):
        """thp_advice: MADV_HUGEPAGE or MADV_NOHUGEPAGE on a whole VMA, its 2 MiB spans, or
        any range (unaligned starts and lengths included)."""
        rng = self.rng
        advice = C.MADV_HUGEPAGE if rng.random() < 0.7 else C.MADV_NOHUGEPAGE
        r = rng.random()
        if self.vmas and r < 0.35:
            s, e, _, _ = rng.choice(self.vmas)
            a, n = s, e - s
        elif self.vmas and r < 0.6:
            a, end = self.inside_vma(spans=True)
            n = end - a
        else:
            a, n = self.range()
        return S.Madvise(a, n, advice)

    def op_madvise(self):
        rng = self.rng
        if self.cfg.thp_advice and rng.random() < 0.3:
            return self.op_thp_advice()
        if self.cfg.shmem_thp and self.vmas and rng.random() < 0.15:
            # MADV_COLLAPSE of a whole VMA or of its 2 MiB spans, mostly shared ones.
            shared = [v for v in self.vmas if v[2] & C.VM_SHARED and v[1] - v[0] >= 2 * M]
            if shared and rng.random() < 0.7:
                s, e, _, _ = rng.choice(shared)
                lo, hi = (s + 2 * M - 1) & ~(2 * M - 1), e & ~(2 * M - 1)
                if lo < hi and rng.random() < 0.5:
                    a = lo + rng.randrange((hi - lo) // (2 * M)) * 2 * M
                    n = 2 * M
                else:
                    a, n = s, e - s
            elif rng.random() < 0.5:
                s, e, _, _ = rng.choice(self.vmas)
                a, n = s, e - s
            else:
                a, end = self.inside_vma(spans=True)
                n = end - a
            if not self.spend(self.mapped_bytes(a, n) + 4 * M):
                return None
            return S.Madvise(a, n, C.MADV_COLLAPSE)
        if rng.random() < self.cfg.p_invalid_advice:
            advice = rng.choice(self.cfg.invalid_advice)
        else:
            advice = _weighted(rng, self.advice)
        if advice in (C.MADV_DONTNEED, C.MADV_DONTNEED_LOCKED) and self.vmas and rng.random() < 0.5:
            a, end = self.inside_vma(spans=True)  # whole PTE tables: PT reclaim's case
            n = end - a
        else:
            a, n = self.range()
        if advice in _FILE_SHADOW_ADVICE and self._fmaps_in(a, n):
            return None
        if advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE):
            if self.hits_hugepage(a, n):
                return None
            if not self.spend(self.mapped_bytes(a, n, _READABLE) + self.thp_extra(a, n, _READABLE)):
                return None
        elif advice == C.MADV_HUGEPAGE and not self.cfg.thp_faults:
            if a % PAGE == 0 and self.has_entries(a, n):
                return None
        elif advice == C.MADV_GUARD_INSTALL:
            # A marker in every page of the mapped part: page tables for all of it, and a
            # slow walk in the reference model. Keep it to a few 2 MiB spans.
            if self.mapped_bytes(a, n) > 16 * M:
                return None
        elif advice == C.MADV_GUARD_REMOVE:
            # The reference model visits every page of the mapped part (the kernel only
            # the tables that exist): keep the oracle fast.
            if self.mapped_bytes(a, n) > G:
                return None
        elif advice == C.MADV_COLLAPSE:
            # Collapsing fills the huge page: as much memory as the 2 MiB spans in range.
            if not self.spend(self.mapped_bytes(a, n) + 4 * M):
                return None
        return S.Madvise(a, n, advice)

    def op_mprotect(self):
        prot = _weighted(self.rng, _MPROTECT_PROTS)
        a, n = self.range()
        if prot & C.PROT_WRITE:
            # mprotect_fixup() populates VM_LOCKED VMAs that become writable.
            if self.hits_hugepage(a, n, also=C.VM_LOCKED):
                return None
            locked = self.mapped_bytes(a, n, C.VM_LOCKED)
            if locked and not self.spend(locked + self.thp_extra(a, n, C.VM_LOCKED)):
                return None
        return S.Mprotect(a, n, prot)

    def op_munmap(self):
        a, n = self.range()
        return S.Munmap(a, n)

    def op_mlock(self):
        a, n = self.range(big=False)
        if n < _U64 // 2:
            if self.hits_hugepage(a, n):
                return None
            # mlock populates every accessible VMA in range (unless it fails first).
            if not self.spend(self.mapped_bytes(a, n, _READABLE) + self.thp_extra(a, n, _READABLE)):
                return None
        return S.Mlock(a, n)

    def op_munlock(self):
        a, n = self.range()
        return S.Munlock(a, n)

    # --- file operations (Config.files) --------------------------------------------------

    def op_file(self):
        rng = self.rng
        if self.nfiles >= 3:
            return None
        self.nfiles += 1
        pages = _weighted(rng, ((1, 2), (4, 3), (16, 4), (17, 2), (64, 3), (300, 2), (512, 2), (1024, 1)))
        shmem = rng.random() < 0.4
        if self.cfg.shmem_thp:
            shmem = rng.random() < 0.85
            if rng.random() < 0.8:
                pages = rng.choice((512, 1024, 1024, 1536, 2048))
        size = pages * PAGE
        if rng.random() < 0.25 and not (self.cfg.shmem_thp and pages % 512 == 0):
            size -= rng.randint(1, PAGE - 1)  # a partial last page: still mapped, up to EOF
        return S.CreateFile(name=f"F{self.nfiles - 1}", size=size, ro=rng.random() < 0.2,
                            shmem=shmem)

    def op_close(self):
        names = [n for n, f in self.files.items() if f.open]
        if not names or self.rng.random() < (0.9 if self.cfg.shmem_thp else 0.5):
            return None
        return S.Close(name=self.rng.choice(names))

    def op_file_mmap(self):
        rng = self.rng
        if not self.files:
            return None
        name = rng.choice(sorted(self.files))
        f = self.files[name]
        first = rng.randrange(f.pages) if rng.random() < 0.6 else 0
        n = rng.randint(1, f.pages - first) * PAGE if rng.random() < 0.7 else (f.pages - first) * PAGE
        if rng.random() < 0.1:
            n -= rng.randint(1, PAGE - 1)  # rounded up: still inside the file
        offset = first * PAGE
        shared = rng.random() < (0.25 if f.ro else 0.55)
        prot = _weighted(rng, _MMAP_PROTS)
        aligned = self.cfg.shmem_thp and f.pages >= 512 and rng.random() < 0.6
        if aligned:
            # A 2 MiB-aligned file offset and whole spans, placed at a 2 MiB boundary below.
            first = rng.randrange(f.pages // 512) * 512
            n = rng.randint(1, f.pages // 512 - first // 512) * 2 * M
            offset = first * PAGE
            shared = rng.random() < (0.3 if f.ro else 0.7)
            prot = rng.choice((3, 3, 1, 7)) if not (shared and f.ro) else 1
        if shared and f.ro and rng.random() < 0.9:
            prot &= ~C.PROT_WRITE  # (else EACCES)
        if rng.random() < 0.03:
            offset += rng.choice((1, 100, PAGE // 2))  # EINVAL
        fixed = rng.random() < 0.1
        for _ in range(1 if fixed else 8):
            a = self.addr()
            if self.vmas and rng.random() < 0.3:
                vs, ve, _, _ = rng.choice(self.vmas)
                a = min(max(ve if rng.random() < 0.6 else vs - _page_up(n), 0), WINDOW - PAGE)
            if aligned:
                a = min(a & ~(2 * M - 1), WINDOW - 8 * M)
                if self.overlapping(a, n) and rng.random() < 0.9:
                    a = self.free_aligned(a)
            if not self.overlapping(a, self.fit(a, n)):
                break
        if a + _page_up(n) > WINDOW:
            return None
        populate = rng.random() < 0.08
        locked = rng.random() < 0.06
        if (populate or locked) and prot & 7 and not self.spend(_page_up(n)):
            populate = locked = False
        return S.Mmap(a, n, prot, shared=shared, populate=populate, locked=locked,
                      noreserve=rng.random() < 0.5, fixed=fixed, file=name, offset=offset)

    def op_mremap(self):
        """Shrink, grow in place (a file mapping up to the end of its file) or move (to a
        given address: one the kernel chose could lie outside the window) a range inside
        one VMA and, for a file mapping, inside one piece of one file."""
        rng = self.rng
        if not self.vmas:
            return None
        s, e, flags, _ = rng.choice(self.vmas)
        pieces = self._fmaps_in(s, e - s)
        limit = None  # bytes of file from `lo` on
        if pieces:
            ps, pe, name, off = rng.choice(pieces)
            lo, hi = max(ps, s), min(pe, e)
            limit = self.files[name].pages * PAGE - (off + lo - ps)
        else:
            lo, hi = s, e
        a = lo if rng.random() < 0.5 else lo + _page_down(rng.randrange(hi - lo))
        old = hi - a if rng.random() < 0.6 else _page_up(rng.randint(1, hi - a))
        r = rng.random()
        new_addr = None
        mflags = 0
        if r < 0.3:
            new = _page_down(rng.randint(0, old - 1)) if old > PAGE else old
        elif r < 0.65:
            room = rng.choice((PAGE, 4 * PAGE, 64 * K, 2 * M))
            if limit is not None:
                room = min(room, limit - (a - lo) - old)
            # Growing a locked VMA populates the growth; a shared one grows past the end of
            # the oracle's stand-in shmem object (SIGBUS there, not in the file).
            if room < PAGE or flags & (C.VM_LOCKED | C.VM_SHARED):
                return None
            new = old + _page_up(rng.randint(1, room))
            if a + new > WINDOW:
                return None
        else:
            new = old
            if r > 0.85:
                new = _page_down(rng.randint(PAGE, old)) if old > PAGE else old
            mflags = C.MREMAP_MAYMOVE | C.MREMAP_FIXED
            new_addr = self.addr()
            if new_addr + new > WINDOW:
                return None
        return S.Mremap(a, old, new, mflags, new_addr)

    def reads_evicted(self, op):
        """Could ``op`` fault in a page of a regular file that PAGEOUT or REMOVE may have
        evicted (the kernel would read it back with readahead)?"""
        if not self.cfg.files:
            return False
        if isinstance(op, S.Mmap):
            return op.file is not None and (op.populate or op.locked) and self.files[op.file].evicted
        populating = (isinstance(op, (S.Touch, S.Mlock, S.Mremap))
                      or isinstance(op, S.Madvise) and op.advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE)
                      or isinstance(op, S.Mprotect) and op.prot & C.PROT_WRITE)
        return populating and self.evicted(op.addr, op.length)

    def ro_shared_made_writable(self, op):
        """mprotect(PROT_WRITE) over a shared mapping of an O_RDONLY file fails (EACCES) on
        the kernel but not in the oracle's anonymous stand-in: leave it out."""
        if not (self.cfg.files and isinstance(op, S.Mprotect) and op.prot & C.PROT_WRITE):
            return False
        for ps, pe, name, _ in self._fmaps_in(op.addr, op.length):
            if self.files[name].ro and any(f & C.VM_SHARED for _, _, f, _ in self.overlapping(ps, pe - ps)):
                return True
        return False

    _KINDS = (("op_mmap", 18), ("op_touch", 24), ("op_madvise", 24), ("op_mprotect", 10),
              ("op_munmap", 9), ("op_mlock", 7), ("op_munlock", 5))
    _FILE_KINDS = _KINDS + (("op_file_mmap", 14), ("op_mremap", 7), ("op_close", 1), ("op_file", 1))

    def next_op(self):
        if self.pending:
            return self.pending.pop(0)
        kinds = self._FILE_KINDS if self.cfg.files else self._KINDS
        for _ in range(200):
            if not self.vmas or self.rng.random() < 0.05:
                kind = "op_file_mmap" if self.cfg.files and self.rng.random() < 0.5 else "op_mmap"
            else:
                kind = _weighted(self.rng, kinds)
            op = getattr(self, kind)()
            if op is not None and not self.reads_evicted(op) and not self.ro_shared_made_writable(op):
                return op
        return S.Madvise(0, 0, C.MADV_NORMAL)  # nothing else fits: a harmless no-op


def generate(n_ops, seed, config=DEFAULT_CONFIG, *, base=S.DEFAULT_BASE):
    """``n_ops`` legal script operations drawn from ``seed`` (lines numbered 1..n_ops).

    The script runs unchanged on the host kernel (``ptreclaim.kernel.run``) and in the
    simulator (``ptreclaim.script.run``); ``base`` only places the oracle's copy.
    """
    if not isinstance(n_ops, int) or n_ops < 0:
        raise ValueError(f"n_ops must be a non-negative int, not {n_ops!r}")
    rng = random.Random(f"ptreclaim.randscript:{seed}")
    gen = _Gen(rng, config, _oracle_class(config)(pt_reclaim=True, thp="madvise"), base)
    fork_at = -1
    if config.fork is not None and n_ops >= 1:
        # Its own stream: where the fork goes does not change what is drawn around it.
        frng = random.Random(f"ptreclaim.randscript:fork:{seed}")
        fork_at = frng.randint(1, n_ops - 2) if n_ops >= 3 else n_ops - 1
        kind = config.fork if config.fork != "any" else frng.choice(("fork", "forkp"))
        fork_op = S.Fork() if kind == "fork" else S.ForkP()
    if config.files:
        gen.pending += [gen.op_file() for _ in range(rng.choice((1, 2)))]
    ops = []
    for i in range(n_ops):
        op = fork_op if i == fork_at else gen.next_op()
        op = dataclasses.replace(op, lineno=i + 1)
        gen.apply(op)
        ops.append(op)
    return ops


def generate_text(n_ops, seed, config=DEFAULT_CONFIG):
    """The script of ``generate`` as text (``python -m ptreclaim run -`` reads it)."""
    return S.dumps(generate(n_ops, seed, config))


# --- comparing and minimising ---------------------------------------------------------------

def outcome(result):
    """What the comparison checks of one ``Result``: errno, fault, mmap's address, deltas."""
    return result.errno, result.fault, result.ret, result.delta


def first_difference(a, b):
    """Index of the first operation whose ``outcome`` differs between two result lists."""
    for i, (x, y) in enumerate(zip(a, b)):
        if outcome(x) != outcome(y):
            return i
    return None


def minimize(ops, run_a, run_b):
    """A short script on which ``run_a`` and ``run_b`` (ops -> results) still differ.

    Cuts the script after its first differing operation, then removes chunks of earlier
    operations (delta debugging) as long as the last operation still differs and every
    operation before it still agrees, so the last line shows the same disagreement.
    """
    ops = list(ops)

    def last_differs(cand):
        i = first_difference(run_a(cand), run_b(cand))
        return i == len(cand) - 1

    i = first_difference(run_a(ops), run_b(ops))
    if i is None:
        return None
    ops = ops[:i + 1]
    chunk = max(1, len(ops) // 2)
    while chunk >= 1:
        pos, removed = 0, False
        while pos < len(ops) - 1:
            cand = ops[:pos] + ops[pos + chunk:] if pos + chunk < len(ops) else None
            if cand and last_differs(cand):
                ops, removed = cand, True
            else:
                pos += chunk
        if not removed:
            chunk //= 2
    return [dataclasses.replace(op, lineno=n + 1) for n, op in enumerate(ops)]
