"""Random operation sequences on the compiled core and the reference model, side by side.

Every step runs one call on both and compares the result (return value, or exception
type + errno / fault address), status(), stats, vmas(), tables(), entries() (flags
exactly, frames up to a consistent renaming), frames in use, and check() on both.
The vocabulary and the comparison live in differential.py, shared with the fuzzer.

Some runs have a small hugetlb pool (2 or 6 huge pages): hugetlb mappings, forks and
switches between the processes then exercise reservations, copy-on-write and SIGBUS.

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
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from ptreclaim.constants import MADV_PAGEOUT

from differential import (
    ADVICES, ANCHORS, DELTAS, LENGTHS, MAP_EXTRA, MAP_TYPES, MREMAP_FLAGS, PROTS, UNSIMULATED_IN_CORE, Pair,
)
from ptreclaim.constants import MAP_HUGETLB

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
    st.sampled_from((0, 1, 1, 2, 2)), st.integers(0, len(ANCHORS) - 1), st.integers(0, len(DELTAS) - 1)
)
mmap_addr_specs = st.tuples(
    st.sampled_from((0, 0, 1, 2, 2, 3)), st.integers(0, len(ANCHORS) - 1), st.integers(0, len(DELTAS) - 1)
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


class CoreMatchesReference(RuleBasedStateMachine):
    @initialize(
        pt_reclaim=st.sampled_from((True, True, True, False, "seed")),
        split_ptlocks=st.sampled_from((True, True, True, False)),
        # (max_frames, totalram_pages, swap_pages): mostly unbounded; sometimes a small
        # machine so that faults run out of frames and big charged mappings fail the
        # overcommit check; sometimes a swap device, small enough to fill up.
        limits=st.sampled_from(((None, None, 0), (None, None, 0), (None, None, 4096), (600, None, 0),
                                (3000, 1024, 0), (600, None, 200), (None, None, 300))),
        hugetlb=st.sampled_from((0, 0, 0, 2, 6)),
    )
    def start(self, pt_reclaim, split_ptlocks, limits, hugetlb):
        self.pair = Pair(pt_reclaim=pt_reclaim, split_ptlocks=split_ptlocks,
                         max_frames=limits[0], totalram_pages=limits[1], swap_pages=limits[2],
                         hugetlb_pages=hugetlb)
        self.pair.compare()

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

    @rule()
    def fork(self):
        if len(self.pair.others) < 2:
            self.pair.step(("fork",))

    @rule(index=st.integers(0, 2))
    def switch(self, index):
        self.pair.step(("switch", index))

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

    def teardown(self):
        if hasattr(self, "pair"):
            self.pair.finish()


CoreMatchesReference.TestCase.settings = settings.get_profile(PROFILE)
TestCoreMatchesReference = CoreMatchesReference.TestCase
