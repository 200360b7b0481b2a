"""Differential execution: one operation vocabulary, run on the compiled core and on
the reference model side by side, with everything observable compared after each step.

Used by tests/test_state_machine.py (Hypothesis chooses the operations) and by
fuzz/fuzz_ops.py (atheris bytes are decoded into the same operations), so the two
explore the same space and a failure from either replays through ``Pair.step``.

An operation is a plain tuple ``(name, args, kwargs)``. Addresses and lengths are
described symbolically (``AddrSpec``/``LenSpec``) and resolved against the current
VMA list, so that random inputs land on VMA edges, table-span boundaries and holes
far more often than uniform integers would; ``resolve`` turns a description into
the concrete call, with per-operation caps that keep the reference model fast.

``("fork",)`` forks a process and ``("exit",)`` ends one; ``("in", k, op)`` runs op in
the k-th live process (0 is the first one, the others are children in creation
order). Every live process is compared after each step.

Files: ``("file", size_i, shmem, cached, write)`` creates a file on both machines and
opens it in the process; ``("mmap_file", ...)`` maps one of its fds (3..6) at one of
``FILE_OFFSETS``; ``("close", fd_i)`` and ``("forget", i)`` (drop the test's own handle
on a file) let the page cache go. They run only when both sides have
``Machine.create_file`` (``Pair.files``).
"""

import errno

import ptreclaim._core as core_impl
import ptreclaim._reference as ref_impl
from ptreclaim.constants import (
    MADV_COLLAPSE, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_NAMES,
    MADV_POPULATE_READ, MADV_POPULATE_WRITE, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_FIXED, MAP_FIXED_NOREPLACE,
    MAP_GROWSDOWN, MAP_HUGETLB, MAP_LOCKED, MAP_NONBLOCK, MAP_NORESERVE, MAP_POPULATE, MAP_PRIVATE,
    MAP_SHARED, MAP_SHARED_VALIDATE, MAP_STACK, MAP_SYNC, MREMAP_DONTUNMAP, MREMAP_FIXED,
    MREMAP_MAYMOVE, PAGE_SIZE, PGDIR_SIZE, PMD_SIZE,
    PROT_EXEC, PROT_GROWSDOWN, PROT_GROWSUP, PROT_READ, PROT_SEM, PROT_WRITE, PTE_PFN_MASK,
    PUD_SIZE, TASK_SIZE, TASK_SIZE_LA57, PGDIR_SIZE_LA57, ZERO_PFN,
    _PAGE_PRESENT, _PAGE_PROTNONE, _PAGE_SPECIAL,
)
from ptreclaim.errors import BusError, InvariantError, OutOfMemory, SegmentationFault

# The huge zero page is frame 2 on both sides (docs/thp.md).
HUGE_ZERO_PFN = 2

K = 1024
M = 1024 * K
G = 1024 * M
U64 = (1 << 64) - 1
# 32 TiB: 512 GiB-aligned and empty in a real process, the base every test uses.
B = 0x2000_0000_0000

# Places worth aiming at: the base, its 2 MiB / 1 GiB / 512 GiB neighbours, the slot
# below and above it, the top-down mmap area and the top of user space.
ANCHORS = (
    B, B + PMD_SIZE, B + 2 * PMD_SIZE, B - PMD_SIZE, B + PUD_SIZE, B + PUD_SIZE - PMD_SIZE,
    B - PUD_SIZE, B + PGDIR_SIZE, B + PGDIR_SIZE - PMD_SIZE, B - PGDIR_SIZE, B - PAGE_SIZE,
    B + 2 * PGDIR_SIZE - PUD_SIZE, 0x7FFF_F7FF_F000 - 4 * M, TASK_SIZE - PMD_SIZE, 0,
)
# Address kind 4: places only 5-level paging can map (4 levels must refuse them
# alike): just above the 128 TiB window, the edges of the second 256 TiB region, a
# fresh region, and the top of LA57 user space. Kept apart from ANCHORS so that the
# fuzzer's encoding of addresses does not change.
HIGH_ANCHORS = (
    TASK_SIZE + PAGE_SIZE, PGDIR_SIZE_LA57, PGDIR_SIZE_LA57 - PMD_SIZE, PGDIR_SIZE_LA57 + PGDIR_SIZE,
    4 * PGDIR_SIZE_LA57 + B, TASK_SIZE_LA57 - PMD_SIZE, TASK_SIZE_LA57 - 4 * M,
)
# Added to an anchor or a VMA edge: exact, a page either side, unaligned, a span over.
DELTAS = (0, 0, 0, PAGE_SIZE, -PAGE_SIZE, 2 * PAGE_SIZE, 16 * PAGE_SIZE, -16 * PAGE_SIZE,
          1, 4095, PMD_SIZE, -PMD_SIZE, PMD_SIZE // 2, 3 * PAGE_SIZE + 1)
LENGTHS = (
    PAGE_SIZE, 2 * PAGE_SIZE, 16 * PAGE_SIZE, 64 * K, 1 * M, PMD_SIZE - PAGE_SIZE, PMD_SIZE,
    PMD_SIZE + PAGE_SIZE, 3 * M, 4 * M, 6 * M, 8 * M, 0, 1, 4095, 4097,
    # Rare, large: cross 1 GiB or a whole slot; only for calls that do not populate.
    PUD_SIZE + PMD_SIZE, PGDIR_SIZE,
    # Bad or wrapping sizes.
    U64, U64 - 4095, U64 - 8191, 1 << 63, TASK_SIZE,
)
PROTS = (PROT_READ | PROT_WRITE, PROT_READ, 0, PROT_WRITE, PROT_READ | PROT_WRITE | PROT_EXEC,
         PROT_EXEC, PROT_READ | PROT_EXEC, PROT_SEM | PROT_READ, 0x10 | PROT_READ,
         PROT_GROWSDOWN | PROT_READ, PROT_GROWSUP | PROT_READ, PROT_GROWSDOWN | PROT_GROWSUP,
         0x80000 | PROT_WRITE, -1)
MAP_TYPES = (MAP_PRIVATE, MAP_PRIVATE, MAP_PRIVATE, MAP_SHARED, MAP_SHARED, MAP_SHARED_VALIDATE, 0,
             MAP_DROPPABLE, 0xF)
# Each optional mmap flag, drawn independently.
MAP_EXTRA = (MAP_FIXED_NOREPLACE, MAP_FIXED, MAP_NORESERVE, MAP_POPULATE, MAP_LOCKED, MAP_NONBLOCK,
             MAP_GROWSDOWN, MAP_STACK, MAP_HUGETLB, MAP_SYNC)
# Every advice Linux defines, plus values it rejects.
ADVICES = tuple(sorted(set(MADV_NAMES.values()))) + (5, 7, 26, 99, 104, 9999, -1, -(1 << 31))

# mremap flags: mostly valid combinations, some the kernel rejects.
MREMAP_FLAGS = (0, MREMAP_MAYMOVE, MREMAP_MAYMOVE | MREMAP_FIXED, MREMAP_MAYMOVE | MREMAP_FIXED,
                MREMAP_MAYMOVE | MREMAP_DONTUNMAP, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
                MREMAP_FIXED, MREMAP_DONTUNMAP, 8, MREMAP_MAYMOVE | 0x10)

# File sizes (bytes) and mmap offsets for the file operations: whole pages, a page and a
# byte, short files a mapping runs past, offsets far past EOF, misaligned and too large.
FILE_SIZES = (4 * K, 8 * K + 1, 20 * K + 100, 64 * K, 1 * M, 2 * M, 4 * M + 4 * K, 0)
FILE_OFFSETS = (0, 0, 0, PAGE_SIZE, 16 * PAGE_SIZE, 1 * M, 2 * M, 2 * M - 8 * K, 1 * G, 100,
                0x7FFF_FFFF_FFFF_F000)
# The fds a file operation aims at: the first files a process opens get 3, 4, ...
FIRST_FD = 3
NR_FDS = 4

# Calls that fault pages in: their length is capped so one step stays cheap.
POPULATE_CAP = 8 * M
TOUCH_CAP = 4 * M


def _clamp(addr, length, cap):
    # Keep small lengths and those that wrap past 2**64 (an error or a no-op, never
    # work); bring every other big length under cap.
    if length <= cap or addr + length > U64:
        return length
    return length % cap or cap


def addr_of(mm_vmas, spec):
    """spec = (kind, index, delta): kind 0 an anchor, 1 a VMA start, 2 a VMA end,
    4 a high anchor."""
    kind, index, delta = spec
    if kind == 4:
        base = HIGH_ANCHORS[index % len(HIGH_ANCHORS)]
    elif kind == 0 or not mm_vmas:
        base = ANCHORS[index % len(ANCHORS)]
    else:
        vma = mm_vmas[index % len(mm_vmas)]
        base = vma[0] if kind == 1 else vma[1]
    addr = base + DELTAS[delta % len(DELTAS)]
    return min(max(addr, 0), U64)


def length_of(spec):
    """spec = (index, pages): a listed length, or (index < 0) that many pages plus one byte."""
    index, pages = spec
    if index >= 0:
        return LENGTHS[index % len(LENGTHS)]
    return pages * PAGE_SIZE + (1 if index == -2 else 0)


def resolve(vmas, op, files=True):
    """Turn a symbolic operation into (method, args, kwargs) for MM. Without ``files``
    (an implementation without file mappings) an fd is never passed for a mapping."""
    name = op[0]
    if name == "mmap_file":
        _, aspec, lspec, prot_i, shared, extra_bits, fd_i, off_i = op
        addr = addr_of(vmas, aspec)
        if aspec[0] == 3:
            addr = 0
        length = length_of(lspec)
        flags = (MAP_SHARED if shared else MAP_PRIVATE)
        for i, bit in enumerate(MAP_EXTRA):
            if extra_bits >> i & 1:
                flags |= bit
        if flags & (MAP_POPULATE | MAP_LOCKED):
            length = _clamp(addr, length, POPULATE_CAP)
        return "mmap", (addr, length, PROTS[prot_i % len(PROTS)], flags, FIRST_FD + fd_i % NR_FDS,
                        FILE_OFFSETS[off_i % len(FILE_OFFSETS)]), {}
    if name == "close":
        return "close", (FIRST_FD + op[1] % NR_FDS,), {}
    if name == "mmap":
        _, aspec, lspec, prot_i, type_i, extra_bits, anon, fd_off = op
        addr = addr_of(vmas, aspec)
        if aspec[0] == 3:
            addr = 0  # let the kernel choose
        length = length_of(lspec)
        flags = MAP_TYPES[type_i % len(MAP_TYPES)] | (MAP_ANONYMOUS if anon else 0)
        for i, bit in enumerate(MAP_EXTRA):
            if extra_bits >> i & 1:
                flags |= bit
        if flags & (MAP_POPULATE | MAP_LOCKED):
            length = _clamp(addr, length, POPULATE_CAP)
        fd, offset = ((-1, 0), (-1, 0), (-1, 0), (FIRST_FD, 0), (-1, 1), (-1, PAGE_SIZE), (-1, U64 - 4095),
                      (-1, PMD_SIZE))[fd_off % 8]
        if not files and not flags & MAP_ANONYMOUS:
            # Without file mappings an fd >= 0 would only give ENODEV on one side.
            fd = -1
        return "mmap", (addr, length, PROTS[prot_i % len(PROTS)], flags, fd, offset), {}
    if name in ("munmap", "mlock", "munlock"):
        _, aspec, lspec = op
        addr, length = addr_of(vmas, aspec), length_of(lspec)
        if name == "mlock":
            length = _clamp(addr, length, POPULATE_CAP)
        return name, (addr, length), {}
    if name == "mprotect":
        _, aspec, lspec, prot_i = op
        return name, (addr_of(vmas, aspec), length_of(lspec), PROTS[prot_i % len(PROTS)]), {}
    if name == "madvise":
        _, aspec, lspec, adv_i = op
        advice = ADVICES[adv_i % len(ADVICES)]
        addr, length = addr_of(vmas, aspec), length_of(lspec)
        if advice in (MADV_POPULATE_READ, MADV_POPULATE_WRITE):
            length = _clamp(addr, length, POPULATE_CAP)
        return name, (addr, length, advice), {}
    if name == "mremap":
        _, aspec, old_lspec, new_lspec, flags_i, new_aspec = op
        addr = addr_of(vmas, aspec)
        new_addr = 0 if new_aspec[0] == 3 else addr_of(vmas, new_aspec)
        # A locked VMA that grows is populated: cap the new length like mlock's.
        new_len = _clamp(addr, length_of(new_lspec), POPULATE_CAP)
        return name, (addr, length_of(old_lspec), new_len, MREMAP_FLAGS[flags_i % len(MREMAP_FLAGS)],
                      new_addr), {}
    if name == "touch":
        _, aspec, lspec, write = op
        addr, length = addr_of(vmas, aspec), length_of(lspec)
        if length > TOUCH_CAP:
            # A touch that wraps is a ValueError; anything else big is capped.
            length = length if addr + length > 1 << 64 else TOUCH_CAP
        return name, (addr, length), {"write": bool(write)}
    raise ValueError(f"unknown operation {name!r}")


def outcome(mm, method, args, kwargs):
    """Run one call; what it returned or raised, in a form both sides can match."""
    try:
        return ("ok", getattr(mm, method)(*args, **kwargs))
    except SegmentationFault as e:
        return ("SIGSEGV", e.address)
    except BusError as e:
        return ("SIGBUS", e.address)
    except OSError as e:
        return ("OSError", errno.errorcode.get(e.errno, e.errno))
    except OutOfMemory:
        return ("OutOfMemory",)
    except InvariantError as e:
        return ("InvariantError", e.invariant)
    except (NotImplementedError, ValueError, TypeError, OverflowError) as e:
        return (type(e).__name__,)


class Divergence(AssertionError):
    """The core and the reference disagree."""


_NOT_PFN = U64 & ~PTE_PFN_MASK
# Pages of the hugetlb pool have PFNs from here on in both implementations, handed
# out in the same order, so their entries compare whole.
HUGETLB_PFN_BASE = 1 << 33


def _entry_pfn(entry):
    # pte_pfn(): a PROT_NONE entry stores its PFN inverted (L1TF).
    return ((entry if entry & _PAGE_PRESENT else entry ^ PTE_PFN_MASK) & PTE_PFN_MASK) >> 12


def hugetlb_pmds(mm):
    """The huge PMDs of mm that map hugetlb pages."""
    return [(a, e) for a, e in mm.huge_pmds() if _entry_pfn(e) >= HUGETLB_PFN_BASE]


def core_supports_guard():
    """Whether the compiled core simulates guard markers yet (it raised
    NotImplementedError for them when this suite was written)."""
    mm = core_impl.MM()
    mm.mmap(B, PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    try:
        mm.madvise(B, PAGE_SIZE, MADV_GUARD_INSTALL)
    except NotImplementedError:
        return False
    return True


# Advice the core does not simulate yet, and which the reference already does:
# excluded from generation (not tolerated after the fact) until the core has them.
UNSIMULATED_IN_CORE = () if core_supports_guard() else (MADV_GUARD_INSTALL, MADV_GUARD_REMOVE)
# Both simulate it, for private memory and for shmem.
assert MADV_COLLAPSE in ADVICES


class Pair:
    """A core MM and a reference MM built alike, stepped and compared together, with
    the processes forked from them."""

    def __init__(self, pt_reclaim=True, split_ptlocks=True, max_frames=None, totalram_pages=None,
                 thp="madvise", swap_pages=0, hugetlb_pages=0, paging_levels=4, core_module=core_impl):
        self.config = dict(pt_reclaim=pt_reclaim, split_ptlocks=split_ptlocks,
                           max_frames=max_frames, totalram_pages=totalram_pages, thp=thp,
                           swap_pages=swap_pages)
        if hugetlb_pages:
            self.config["hugetlb_pages"] = hugetlb_pages
        if paging_levels != 4:
            self.config["paging_levels"] = paging_levels
        # core_module=ref_impl runs the reference against itself: only check() and the
        # determinism of the two runs are tested then.
        self.core_machine = core_module.Machine(max_frames, totalram_pages, swap_pages,
                                                hugetlb_pages=hugetlb_pages)
        self.ref_machine = ref_impl.Machine(max_frames, totalram_pages, swap_pages,
                                            hugetlb_pages=hugetlb_pages)
        self.core = core_module.MM(pt_reclaim=pt_reclaim, split_ptlocks=split_ptlocks, thp=thp,
                                   machine=self.core_machine, paging_levels=paging_levels)
        self.ref = ref_impl.MM(pt_reclaim=pt_reclaim, split_ptlocks=split_ptlocks, thp=thp,
                               machine=self.ref_machine, paging_levels=paging_levels)
        # The live processes as (core, reference) pairs; the first is the one made
        # above, the others are children in the order they were forked.
        self.procs = [(self.core, self.ref)]
        self.pfn_map = {}  # core pfn -> reference frame object
        self.log = []  # concrete calls so far, for the failure message
        # Whether both sides simulate files; the test's own (core, reference) File handles.
        self.files = hasattr(self.core_machine, "create_file") and hasattr(self.ref_machine, "create_file")
        self.handles = []

    def describe(self):
        lines = [f"Pair({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"]
        for target, method, args, kwargs in self.log:
            shown = ", ".join(hex(a) if isinstance(a, int) and abs(a) > 4096 else repr(a) for a in args)
            shown += "".join(f", {k}={v!r}" for k, v in kwargs.items())
            lines.append(f"  {f'[process {target}] ' if target else ''}{method}({shown})")
        return "\n".join(lines)

    def fail(self, what, core_value, ref_value):
        raise Divergence(f"{what} differs\n  core:      {core_value!r}\n  reference: {ref_value!r}\n"
                         f"after:\n{self.describe()}")

    def step(self, op, compare=True):
        target = 0
        if op[0] == "in":
            _, k, op = op
            target = k % len(self.procs)
        if op[0] in ("file", "mmap_file", "close", "forget") and not self.files:
            raise ValueError("a file operation on an implementation without files")
        if op[0] == "file":
            _, size_i, shmem, cached, write = op
            return self.create_file(FILE_SIZES[size_i % len(FILE_SIZES)], bool(shmem), bool(cached),
                                    bool(write), target, compare)
        if op[0] == "forget":
            if self.handles:
                del self.handles[op[1] % len(self.handles)]
            self.log.append((target, "forget", (op[1],), {}))
            if compare:
                self.compare()
            return ("ok", None)
        if op[0] in ("fork", "exit"):
            method, args, kwargs = op[0], (), {}
        else:
            method, args, kwargs = resolve(self.procs[target][1].vmas(), op, self.files)
        return self.call(method, args, kwargs, compare, target)

    def create_file(self, size, shmem, cached, write, target=0, compare=True):
        """Machine.create_file on both sides, then open() in the target process."""
        core, ref = self.procs[target]
        self.log.append((target, "create_file+open", (size,), dict(shmem=shmem, cached=cached, write=write)))
        got = []
        for machine, mm in ((self.core_machine, core), (self.ref_machine, ref)):
            try:
                f = machine.create_file(size, shmem=shmem, cached=cached)
            except OutOfMemory:
                got.append((("OutOfMemory",), None))
                continue
            got.append((outcome(mm, "open", (f,), {"write": write}), f))
        (got_core, core_file), (got_ref, ref_file) = got
        if got_core != got_ref:
            self.fail("the result of create_file+open", got_core, got_ref)
        if core_file is not None:
            self.handles.append((core_file, ref_file))
        if compare:
            self.compare()
        return got_core

    def call(self, method, args, kwargs=None, compare=True, target=0):
        kwargs = kwargs or {}
        core, ref = self.procs[target]
        self.log.append((target, method, args, kwargs))
        got_core = outcome(core, method, args, kwargs)
        got_ref = outcome(ref, method, args, kwargs)
        if method == "fork" and got_core[0] == got_ref[0] == "ok":
            self.procs.append((got_core[1], got_ref[1]))
            got_core = got_ref = ("ok", "child")
        if got_core != got_ref:
            self.fail(f"the result of {method}", got_core, got_ref)
        if method == "exit" and got_core[0] == "ok" and target:
            del self.procs[target]
        if compare:
            self.compare()
        return got_core

    def compare(self, full=True):
        for k, (core, ref) in enumerate(self.procs):
            who = f"process {k}: " if k else ""
            for name, get in (("status()", lambda mm: mm.status()), ("stats", lambda mm: mm.stats),
                              ("vmas()", lambda mm: mm.vmas()), ("tables()", lambda mm: mm.tables()),
                              ("pgtables_bytes", lambda mm: mm.pgtables_bytes),
                              ("hugetlb PMDs", hugetlb_pmds)):
                a, b = get(core), get(ref)
                if a != b:
                    self.fail(who + name, a, b)
        if self.core_machine.frames_in_use != self.ref_machine.frames_in_use:
            self.fail("Machine.frames_in_use", self.core_machine.frames_in_use,
                      self.ref_machine.frames_in_use)
        if self.core_machine.hugetlb_meminfo() != self.ref_machine.hugetlb_meminfo():
            self.fail("Machine.hugetlb_meminfo()", self.core_machine.hugetlb_meminfo(),
                      self.ref_machine.hugetlb_meminfo())
        if self.core_machine.swap_used != self.ref_machine.swap_used:
            self.fail("Machine.swap_used", self.core_machine.swap_used, self.ref_machine.swap_used)
        for i, (cf, rf) in enumerate(self.handles):
            a = (cf.size, cf.shmem, cf.nr_cached, cf.nr_dirty)
            b = (rf.size, rf.shmem, rf.nr_cached, rf.nr_dirty)
            if a != b:
                self.fail(f"file {i} (size, shmem, nr_cached, nr_dirty)", a, b)
        if full:
            for k, (core, ref) in enumerate(self.procs):
                self.compare_entries(core, ref, f"process {k}: " if k else "")
        for k, (core, ref) in enumerate(self.procs):
            for side, mm in (("core", core), ("reference", ref)):
                try:
                    mm.check()
                except InvariantError as e:
                    raise Divergence(f"{side} check() of process {k} failed: {e}\n"
                                     f"after:\n{self.describe()}") from None

    def compare_entries(self, core=None, ref=None, who=""):
        core = self.core if core is None else core
        ref = self.ref if ref is None else ref
        core_entries = list(core.entries())
        ref_entries = list(ref.entries())
        if [a for a, _ in core_entries] != [a for a, _ in ref_entries]:
            self.fail(who + "the addresses of entries()", [hex(a) for a, _ in core_entries],
                      [hex(a) for a, _ in ref_entries])
        core_huge = core.huge_pmds()
        ref_huge = ref.huge_pmds()
        if [a for a, _ in core_huge] != [a for a, _ in ref_huge]:
            self.fail(who + "the addresses of huge_pmds()", [hex(a) for a, _ in core_huge],
                      [hex(a) for a, _ in ref_huge])
        # The map pairs a core PFN with the reference's frame object, not its PFN: a
        # frame freed and reallocated within one call is a new frame, whose PFN
        # either side may have reused. Pairs whose reference frame is gone are
        # dropped; the core PFN may be renamed from then on.
        live = self.ref_machine.mem.frames
        self.pfn_map = {c: f for c, f in self.pfn_map.items() if live.get(f.pfn) is f}
        inverse = {id(f): c for c, f in self.pfn_map.items()}
        carries = _PAGE_PRESENT | _PAGE_PROTNONE
        for (addr, ce), (_, re) in zip(core_huge, ref_huge):
            # A huge PMD maps its THP's first frame, or the huge zero page; the
            # other 511 frames are paired when PTEs map them after a split.
            if (ce ^ re) & _NOT_PFN:
                self.fail(f"{who}the huge PMD flags at {addr:#x}", hex(ce & _NOT_PFN), hex(re & _NOT_PFN))
            cp = ((ce if ce & _PAGE_PRESENT else ce ^ PTE_PFN_MASK) & PTE_PFN_MASK) >> 12
            rp = ((re if re & _PAGE_PRESENT else re ^ PTE_PFN_MASK) & PTE_PFN_MASK) >> 12
            if cp >= HUGETLB_PFN_BASE or rp >= HUGETLB_PFN_BASE:
                if cp != rp:
                    self.fail(f"{who}the hugetlb page at {addr:#x}", cp, rp)
                continue           # pages of the hugetlb pool: compared by hugetlb_pmds()
            if ce & _PAGE_SPECIAL or cp == HUGE_ZERO_PFN or rp == HUGE_ZERO_PFN:
                if cp != rp or cp != HUGE_ZERO_PFN:
                    self.fail(f"{who}the huge zero page PFN at {addr:#x}", cp, rp)
                continue
            self._pair_frame(f"{who}the THP at {addr:#x}", cp, rp, live, inverse)
        for (addr, ce), (_, re) in zip(core_entries, ref_entries):
            if not ce & carries:
                # A swap-format entry (guard marker, swap entry): no frame, compare
                # it whole; both sides give out the lowest free swap slot.
                if ce != re:
                    self.fail(f"{who}the entry at {addr:#x}", hex(ce), hex(re))
                continue
            if (ce ^ re) & _NOT_PFN:
                self.fail(f"{who}the entry flags at {addr:#x}", hex(ce & _NOT_PFN), hex(re & _NOT_PFN))
            # The PFN, inverted in a PROT_NONE entry (L1TF), as pte_pfn() reads it.
            cp = ((ce if ce & _PAGE_PRESENT else ce ^ PTE_PFN_MASK) & PTE_PFN_MASK) >> 12
            rp = ((re if re & _PAGE_PRESENT else re ^ PTE_PFN_MASK) & PTE_PFN_MASK) >> 12
            if ce & _PAGE_SPECIAL or cp == ZERO_PFN or rp == ZERO_PFN:
                if cp != rp or cp != ZERO_PFN:
                    self.fail(f"{who}the zero-page PFN at {addr:#x}", cp, rp)
                continue
            self._pair_frame(f"{who}the frame at {addr:#x}", cp, rp, live, inverse)

    def _pair_frame(self, what, cp, rp, live, inverse):
        """Core pfn cp and reference pfn rp must name the same frame, consistently."""
        frame = live.get(rp)
        if frame is None:
            self.fail(f"{what} (the reference maps a free pfn)", cp, rp)
        paired = self.pfn_map.setdefault(cp, frame)
        if paired is not frame:
            self.fail(f"{what} (core pfn {cp} was paired with reference pfn {paired.pfn})", cp, rp)
        if inverse.setdefault(id(frame), cp) != cp:
            self.fail(f"{what} (reference pfn {rp} was paired with core pfn {inverse[id(frame)]})", cp, rp)

    def finish(self):
        """exit() on every process, children first; each emptied process must look the same."""
        while len(self.procs) > 1:
            self.call("exit", (), {}, target=len(self.procs) - 1)
        self.call("exit", (), {})
