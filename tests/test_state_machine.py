"""Random operation sequences on the compiled core and the reference model, side by side.

Every step runs one call on both and compares the result (return value, or exception
type + errno / fault address), status(), stats, vmas(), tables(), entries() and
huge_pmds() (flags exactly, frames up to a consistent renaming), frames in use, and
check() on both, for every live process (fork makes children; some rules act in them).
The vocabulary and the comparison live in differential.py, shared with the fuzzer.
Some rules aim at transparent huge pages: 2 MiB-aligned mappings with MADV_HUGEPAGE,
then partial zaps, mprotects and unmaps, FREE/COLD/PAGEOUT, COLLAPSE and fork.

A third of the runs use 5-level paging (MM(paging_levels=5)); address kind 4 aims
at places only 5 levels can map, which 4-level runs must refuse alike.

Some runs have a small hugetlb pool (2 or 6 huge pages): hugetlb mappings, forks and
switches between the processes then exercise reservations, copy-on-write and SIGBUS.

File rules (create a file and open it, map it shared or private at an offset, close,
drop the test's handle, advice aimed at file mappings) run when both implementations
have ``Machine.create_file`` (``Pair.files``), which both do.

Profiles (HYPOTHESIS_PROFILE, default "ci"):

* ci: 300 examples x 50 steps, derandomized and without a database, so every CI run
  tries the same sequences and a failure reproduces anywhere.
* long: random seeds, 5000 examples x 100 steps, with the local example database;
  for exploration on a developer machine:
  HYPOTHESIS_PROFILE=long python -m pytest tests/test_state_machine.py -p no:cacheprovider
"""

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import ptreclaim._core as core_impl
from differential import (
    ADVICES, ANCHORS, DELTAS, FILE_OFFSETS, FILE_SIZES, LENGTHS, MAP_EXTRA, MAP_TYPES, MREMAP_FLAGS, NR_FDS,
    PROTS, UNSIMULATED_IN_CORE, Pair,
)
from ptreclaim.constants import (
    MADV_COLD, MADV_COLLAPSE, MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT,
    MADV_POPULATE_READ, MADV_POPULATE_WRITE, MADV_REMOVE, MADV_WILLNEED, MAP_HUGETLB, PMD_SIZE,
)

settings.register_profile(
    "ci", max_examples=300, stateful_step_count=50, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long", max_examples=5000, stateful_step_count=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

# Address descriptions (see differential.addr_of): mostly VMA edges and anchors.
addr_specs = st.tuples(
    st.sampled_from((0, 1, 1, 2, 2, 4)), st.integers(0, len(ANCHORS) - 1), st.integers(0, len(DELTAS) - 1)
)
mmap_addr_specs = st.tuples(
    st.sampled_from((0, 0, 1, 2, 2, 3, 4)), st.integers(0, len(ANCHORS) - 1), st.integers(0, len(DELTAS) - 1)
)
# Length descriptions: a listed length, or a page count (plus one byte when index -2).
length_specs = st.one_of(
    st.tuples(st.integers(0, len(LENGTHS) - 1), st.just(0)),
    st.tuples(st.sampled_from((-1, -2)), st.integers(1, 1100)),
)
small_length_specs = st.one_of(
    st.tuples(st.integers(0, 11), st.just(0)),  # the page..8 MiB part of LENGTHS
    st.tuples(st.just(-1), st.integers(1, 1100)),
)
prot_index = st.integers(0, len(PROTS) - 1)
common_prot_index = st.sampled_from((0, 0, 0, 1, 2, 4))  # RW, RO, NONE, RWX
advice_index = st.integers(0, len(ADVICES) - 1).filter(lambda i: ADVICES[i] not in UNSIMULATED_IN_CORE)

# mmap flag choices for the "likely to succeed" rule, as MAP_EXTRA bit masks.
_BIT = {flag: 1 << i for i, flag in enumerate(MAP_EXTRA)}
_NOREPLACE, _FIXED, _NORESERVE, _POPULATE, _LOCKED = (
    _BIT[f] for f in MAP_EXTRA[:5])
placement_bits = st.sampled_from((_NOREPLACE, _NOREPLACE, _FIXED, 0, _FIXED | _NOREPLACE))
option_bits = st.sampled_from((_NORESERVE, _NORESERVE, 0, _POPULATE | _NORESERVE, _LOCKED, _POPULATE))
_HUGETLB = _BIT[MAP_HUGETLB]
hugetlb_option_bits = st.sampled_from((0, 0, _NORESERVE, _POPULATE, _LOCKED | _NORESERVE))

# THP rules: anchors that are 2 MiB-aligned, a few MiB of memory, and the advice that
# acts on huge PMDs and THPs.
thp_anchor = st.sampled_from([i for i, a in enumerate(ANCHORS) if a and a % PMD_SIZE == 0][:6])
thp_pages = st.sampled_from((512, 1024, 1024, 1536, 2048))
thp_advice = st.sampled_from([ADVICES.index(a) for a in (
    MADV_FREE, MADV_FREE, MADV_COLD, MADV_PAGEOUT, MADV_PAGEOUT, MADV_COLLAPSE, MADV_COLLAPSE,
    MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_POPULATE_WRITE, MADV_POPULATE_READ)])
# Mostly VMA starts and ends, where THP spans begin and end.
vma_edge_specs = st.tuples(st.sampled_from((1, 1, 2)), st.integers(0, 15), st.integers(0, len(DELTAS) - 1))
child_index = st.integers(0, 3)

# File rules: the advice that acts on file mappings and their page cache.
file_advice = st.sampled_from([ADVICES.index(a) for a in (
    MADV_DONTNEED, MADV_DONTNEED, MADV_PAGEOUT, MADV_PAGEOUT, MADV_REMOVE, MADV_REMOVE, MADV_WILLNEED,
    MADV_COLD, MADV_FREE, MADV_POPULATE_READ, MADV_POPULATE_WRITE, MADV_COLLAPSE)])
# Mostly the first file a process opened (fd 3), which the rules create most often.
fd_index = st.sampled_from((0, 0, 0, 0, 1, 1, 2, NR_FDS - 1))


def files_on(self):
    return self.pair.files


class CoreMatchesReference(RuleBasedStateMachine):
    @initialize(
        pt_reclaim=st.sampled_from((True, True, True, False, "seed")),
        split_ptlocks=st.sampled_from((True, True, True, False)),
        # (max_frames, totalram_pages, swap_pages): mostly unbounded; sometimes a small
        # machine so that faults run out of frames and big charged mappings fail the
        # overcommit check; sometimes a swap device, small enough to fill up.
        limits=st.sampled_from(((None, None, 0), (None, None, 0), (None, None, 4096), (600, None, 0),
                                (3000, 1024, 0), (600, None, 200), (None, None, 300))),
        thp=st.sampled_from(("madvise", "madvise", "always", "never")),
        hugetlb=st.sampled_from((0, 0, 0, 2, 6)),
        paging_levels=st.sampled_from((4, 4, 5)),
    )
    def start(self, pt_reclaim, split_ptlocks, limits, thp, hugetlb, paging_levels):
        self.pair = Pair(pt_reclaim=pt_reclaim, split_ptlocks=split_ptlocks,
                         max_frames=limits[0], totalram_pages=limits[1], thp=thp,
                         swap_pages=limits[2], hugetlb_pages=hugetlb, paging_levels=paging_levels,
                         core_module=self.core_module)
        self.pair.compare()

    core_module = core_impl

    # ------------------------------------------------------------------ files

    @precondition(files_on)
    @rule(size=st.integers(0, len(FILE_SIZES) - 1), shmem=st.sampled_from((False, False, True)),
          cached=st.sampled_from((True, True, False)), write=st.sampled_from((True, True, True, False)),
          who=child_index)
    def create_file(self, size, shmem, cached, write, who):
        self.pair.step(("in", who, ("file", size, shmem, cached, write)))

    @precondition(files_on)
    @rule(addr=mmap_addr_specs, length=small_length_specs, prot=common_prot_index, shared=st.booleans(),
          placement=placement_bits, options=option_bits, fd=fd_index,
          offset=st.integers(0, len(FILE_OFFSETS) - 1), who=child_index)
    def mmap_file(self, addr, length, prot, shared, placement, options, fd, offset, who):
        self.pair.step(("in", who, ("mmap_file", addr, length, prot, shared, placement | options, fd, offset)))

    @precondition(files_on)
    @rule(size=st.sampled_from((3, 4, 5, 5, 6, 1)), shmem=st.sampled_from((False, False, True)),
          cached=st.sampled_from((True, True, False)), shared=st.booleans(), prot=st.sampled_from((0, 0, 1)),
          anchor=thp_anchor, pages=st.sampled_from((16, 512, 1024, 1100)),
          offset=st.sampled_from((0, 0, 3, 5, 7, 8)), fill=st.sampled_from(((1, False), (16, True), (600, False))))
    def file_region(self, size, shmem, cached, shared, prot, anchor, pages, offset, fill):
        # A file opened O_RDWR and mapped at once, then a first access: the likely path
        # to file pages in page tables.
        got = self.pair.step(("file", size, shmem, cached, True))
        if got[0] != "ok" or got[1] >= 3 + NR_FDS:
            return
        where = (0, anchor, 0)
        self.pair.step(("mmap_file", where, (-1, pages), prot, shared, _FIXED, got[1] - 3, offset))
        self.pair.step(("touch", where, (-1, fill[0]), fill[1]))

    @precondition(files_on)
    @rule(fd=fd_index, who=child_index)
    def close_file(self, fd, who):
        self.pair.step(("in", who, ("close", fd)))

    @precondition(lambda self: self.pair.files and self.pair.handles)
    @rule(which=st.integers(0, 7))
    def forget_file(self, which):
        self.pair.step(("forget", which))

    @precondition(files_on)
    @rule(addr=vma_edge_specs, length=small_length_specs, advice=file_advice, who=child_index)
    def file_madvise(self, addr, length, advice, who):
        self.pair.step(("in", who, ("madvise", addr, length, advice)))

    @rule(addr=mmap_addr_specs, length=small_length_specs, prot=common_prot_index,
          shared=st.booleans(), placement=placement_bits, options=option_bits)
    def mmap_plain(self, addr, length, prot, shared, placement, options):
        type_i = 3 if shared else 0
        self.pair.step(("mmap", addr, length, prot, type_i, placement | options, True, 0))

    @rule(addr=mmap_addr_specs, length=length_specs, prot=prot_index,
          type_i=st.integers(0, len(MAP_TYPES) - 1), extra=st.integers(0, (1 << len(MAP_EXTRA)) - 1),
          anon=st.sampled_from((True, True, True, False)), fd_off=st.integers(0, 6))
    def mmap_any(self, addr, length, prot, type_i, extra, anon, fd_off):
        self.pair.step(("mmap", addr, length, prot, type_i, extra, anon, fd_off))

    @rule(addr=mmap_addr_specs, huge_pages=st.integers(1, 3), short=st.booleans(), prot=common_prot_index,
          shared=st.booleans(), placement=placement_bits, options=hugetlb_option_bits,
          fd_off=st.sampled_from((0, 0, 7)))
    def mmap_hugetlb(self, addr, huge_pages, short, prot, shared, placement, options, fd_off):
        # 1-3 huge pages (a length a page short is rounded up), offset 0 or 2 MiB.
        length = (-1, 512 * huge_pages - (1 if short else 0))
        self.pair.step(("mmap", addr, length, prot, 3 if shared else 0, placement | options | _HUGETLB,
                        True, fd_off))

    @rule(addr=addr_specs, length=length_specs)
    def munmap(self, addr, length):
        self.pair.step(("munmap", addr, length))

    @rule(addr=addr_specs, length=length_specs, prot=prot_index)
    def mprotect(self, addr, length, prot):
        self.pair.step(("mprotect", addr, length, prot))

    @rule(addr=addr_specs, length=length_specs)
    def mlock(self, addr, length):
        self.pair.step(("mlock", addr, length))

    @rule(addr=addr_specs, length=length_specs)
    def munlock(self, addr, length):
        self.pair.step(("munlock", addr, length))

    @rule(addr=addr_specs, length=length_specs, advice=advice_index)
    def madvise(self, addr, length, advice):
        self.pair.step(("madvise", addr, length, advice))

    @rule(addr=st.tuples(st.just(1), st.integers(0, len(ANCHORS) - 1), st.integers(0, 3)),
          length=small_length_specs)
    def write_and_pageout(self, addr, length):
        # The way pages reach swap (with a swap device) or are dropped: write a range,
        # then page it out; a random advice would rarely be MADV_PAGEOUT, and rarely
        # over written pages.
        self.pair.step(("touch", addr, length, True), compare=False)
        self.pair.step(("madvise", addr, length, ADVICES.index(MADV_PAGEOUT)))

    @rule(addr=addr_specs, old=small_length_specs, new=length_specs,
          flags=st.integers(0, len(MREMAP_FLAGS) - 1), new_addr=mmap_addr_specs)
    def mremap(self, addr, old, new, flags, new_addr):
        self.pair.step(("mremap", addr, old, new, flags, new_addr))

    @rule(addr=addr_specs, length=small_length_specs, write=st.booleans())
    def touch(self, addr, length, write):
        self.pair.step(("touch", addr, length, write))

    @rule(addr=addr_specs, length=small_length_specs)
    def touch_write(self, addr, length):
        # Writes make frames, which most other rules act on: give them extra weight.
        self.pair.step(("touch", addr, length, True))

    @rule(anchor=thp_anchor, pages=thp_pages, prot=st.sampled_from((0, 0, 0, 1)),
          placement=st.sampled_from((_NOREPLACE, _FIXED)), advise=st.sampled_from((True, True, False)),
          fill=st.sampled_from(((1, True), (1, True), (512, True), (1024, True), (1, False), (512, False))))
    def thp_region(self, anchor, pages, prot, placement, advise, fill):
        # An aligned private mapping of 2-8 MiB, mostly with MADV_HUGEPAGE, then a
        # first access (a store maps THPs there, a load the huge zero page).
        where, size = (0, anchor, 0), (-1, pages)
        self.pair.step(("mmap", where, size, prot, 0, placement | _NORESERVE, True, 0))
        if advise:
            self.pair.step(("madvise", where, size, ADVICES.index(MADV_HUGEPAGE)))
        self.pair.step(("touch", where, (-1, fill[0]), fill[1]))

    @rule(addr=vma_edge_specs, length=small_length_specs, advice=thp_advice)
    def thp_madvise(self, addr, length, advice):
        self.pair.step(("madvise", addr, length, advice))

    @precondition(lambda self: len(self.pair.procs) < 3)
    @rule(who=child_index)
    def fork(self, who):
        self.pair.step(("in", who, ("fork",)))

    @precondition(lambda self: len(self.pair.procs) > 1)
    @rule(who=child_index, addr=vma_edge_specs, length=small_length_specs, write=st.booleans(),
          advice=thp_advice, what=st.sampled_from(("touch", "touch", "touch", "madvise", "munmap", "mprotect")))
    def in_child(self, who, addr, length, write, advice, what):
        # Writes and advice in a process other than the first (who 0 may pick it too).
        op = {"touch": ("touch", addr, length, write), "madvise": ("madvise", addr, length, advice),
              "munmap": ("munmap", addr, length), "mprotect": ("mprotect", addr, length, write)}[what]
        self.pair.step(("in", who, op))

    @precondition(lambda self: len(self.pair.procs) > 1)
    @rule(who=st.integers(1, 3))
    def exit_child(self, who):
        self.pair.step(("in", 1 + who % (len(self.pair.procs) - 1), ("exit",)))

    def teardown(self):
        if hasattr(self, "pair"):
            self.pair.finish()


CoreMatchesReference.TestCase.settings = settings.get_profile(PROFILE)
TestCoreMatchesReference = CoreMatchesReference.TestCase
