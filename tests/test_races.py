"""The hard cases of PT reclaim: the lock model, injected contention and lock drops,
tracepoints, and the race the Feb-2025 fix closed, both ways (docs/races.md)."""

import pytest

from ptreclaim import _core, races
from ptreclaim.constants import MADV_DONTNEED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE
from ptreclaim.errors import InvariantError

B = 0x2000_0000_0000
SPAN = 2 << 20


def mapped(**kwargs):
    mm = _core.MM(**kwargs)
    mm.mmap(B, 4 * SPAN, 3, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    mm.touch(B, SPAN)
    return mm


def paths(mm):
    s = mm.stats
    return s["pte_tables_freed_reclaim_fast"], s["pte_tables_freed_reclaim_slow"]


def test_split_ptlocks_take_the_fast_path():
    mm = mapped()
    mm.madvise(B, SPAN, MADV_DONTNEED)
    assert paths(mm) == (1, 0) and mm.status()["VmPTE"] == 8


def test_without_split_ptlocks_every_reclaim_takes_the_slow_path():
    # The PTE and PMD locks are both mm->page_table_lock: the try-lock fails (R57).
    mm = mapped(split_ptlocks=False)
    for i in range(3):
        mm.touch(B + i * SPAN, SPAN)
        mm.madvise(B + i * SPAN, SPAN, MADV_DONTNEED)
    assert paths(mm) == (0, 3) and mm.status()["VmPTE"] == 8
    mm.check()


def test_contention_forces_the_slow_path_with_split_ptlocks():
    mm = mapped()
    mm.set_contention(1.0)
    mm.madvise(B, SPAN, MADV_DONTNEED)
    assert paths(mm) == (0, 1)


def test_contention_probability_is_seeded():
    def run(seed):
        mm = _core.MM()
        mm.mmap(B, 64 * SPAN, 3, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
        mm.set_contention(0.5, seed=seed)
        for i in range(64):
            mm.touch(B + i * SPAN, 4096)
            mm.madvise(B + i * SPAN, SPAN, MADV_DONTNEED)
        return paths(mm)
    assert run(7) == run(7)
    fast, slow = run(7)
    assert fast + slow == 64 and 16 < slow < 48


def test_a_callback_can_hold_the_pmd_lock():
    mm = mapped()
    mm.on("pmd_trylock", lambda ev: True)
    mm.madvise(B, SPAN, MADV_DONTNEED)
    assert paths(mm) == (0, 1)


def test_events_of_one_reclaiming_dontneed_in_order():
    mm = mapped()
    seen = []
    for name in _core.EVENTS:
        mm.on(name, lambda ev: seen.append(ev.name))
    mm.madvise(B, SPAN, MADV_DONTNEED)
    assert seen == ["zap_begin", "pmd_trylock", "reclaim_fast", "pmd_clear", "table_free",
                    "zap_end", "tlb_flush"]


def test_fault_and_table_alloc_events():
    mm = _core.MM()
    mm.mmap(B, SPAN, 3, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    seen = []
    mm.on("fault", lambda ev: seen.append(("fault", ev.address)))
    mm.on("table_alloc", lambda ev: seen.append(("table", ev.arg)))
    mm.touch(B, 8192)
    assert seen == [("fault", B), ("table", 3), ("table", 2), ("table", 1), ("fault", B + 4096)]
    assert mm.status()["RssAnon"] == 8


def test_callbacks_under_a_lock_may_only_observe():
    mm = mapped()
    observed = []
    mm.on("pmd_clear", lambda ev: observed.append(ev.mm.status()["VmPTE"]))
    mm.on("reclaim_fast", lambda ev: ev.mm.touch(B))
    with pytest.raises(RuntimeError, match="may only observe"):
        mm.madvise(B, SPAN, MADV_DONTNEED)
    assert observed == [12]         # VmPTE drops only at free_pte(), after the pmd_clear
    mm.check()


def test_lock_free_callbacks_may_fault_but_not_unmap():
    mm = mapped()
    mm.on("zap_begin", lambda ev: ev.mm.munmap(B, SPAN))
    with pytest.raises(RuntimeError, match="only fault"):
        mm.madvise(B, SPAN, MADV_DONTNEED)
    mm.off("zap_begin")
    mm.madvise(B, SPAN, MADV_DONTNEED)
    assert mm.status()["VmPTE"] == 8


def refill_midway(pt_reclaim):
    """Zap a full span, drop the lock after 256 entries, fault one page back in the
    half already zapped, then finish: the interleaving of the Feb-2025 bug."""
    mm = mapped(pt_reclaim=pt_reclaim)
    mm.on("zap_lock_dropped", lambda ev: ev.mm.touch(B + 4096))
    mm.inject_need_resched(256)
    mm.madvise(B, SPAN, MADV_DONTNEED)
    return mm


def test_the_race_is_safe_with_the_current_rules():
    mm = refill_midway(True)
    # The lock was dropped, so the slow path re-scans and keeps the table.
    assert paths(mm) == (0, 0) and mm.stats["reclaim_slow_abandoned"] == 1
    assert mm.status()["VmPTE"] == 12 and mm.status()["RssAnon"] == 4
    assert mm.read_entry(B + 4096) != 0 and mm.lost_mappings == 0
    mm.check()


def test_the_race_loses_a_mapping_with_the_seed_rules():
    mm = refill_midway("seed")
    # The seed took the fast path after the retry and freed the refilled table.
    assert paths(mm) == (1, 0) and mm.lost_mappings == 1
    assert mm.status()["VmPTE"] == 8 and mm.status()["RssAnon"] == 4
    assert mm.read_entry(B + 4096) == 0
    with pytest.raises(InvariantError, match="lost mapping"):
        mm.check()


def explore(pt_reclaim):
    return races.explore(
        _core.MM, lambda mm: (mm.mmap(B, 4 * SPAN, 3, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE),
                              mm.touch(B, SPAN)),
        (B, SPAN, MADV_DONTNEED), lambda mm: mm.touch(B + 4096),
        resched_choices=[None, 1, 2, 255, 256, 257, 511], pt_reclaim=pt_reclaim)


def test_explorer_finds_the_bad_interleaving_with_the_seed_rules():
    bad = races.bad(explore("seed"))
    assert bad, "the explorer missed the Feb-2025 race"
    # Only refills into the zapped part, during a lock drop, lose the mapping.
    assert {o.event for o in bad} == {"zap_lock_dropped"}
    assert all(o.resched_after is not None and o.resched_after >= 2 for o in bad)
    assert all("lost mapping" in o.invariant for o in bad)


def test_explorer_finds_nothing_bad_with_the_current_rules():
    outcomes = explore(True)
    assert not races.bad(outcomes)
    # The refill either precedes the zap (zapped too: table freed), or follows
    # it (a new table), or lands in between (the table kept, with the page).
    assert {(o.status["VmPTE"], o.status["RssAnon"]) for o in outcomes} == {(8, 0), (12, 4)}


# --- SC-42: userfaultfd write-protect markers (shmem keeps one, anonymous memory not) ------

@pytest.mark.parametrize("shared, rows", [
    # (ΔVmPTE, ΔRss) per step, measured on Linux 6.18 (SC-42, kexp/uffd.c)
    (True, [(12, 2048), (0, 0), (0, 0), (0, -2048), (0, 0), (-12, 0)]),
    (False, [(12, 2048), (0, 0), (0, 0), (-4, -2048), (0, 0), (-8, 0)]),
], ids=["shmem", "anon"])
def test_sc42_uffd_wp_marker_blocks_reclaim_in_shmem_only(shared, rows):
    from ptreclaim.constants import MAP_SHARED
    mm = _core.MM()
    flags = (MAP_SHARED if shared else MAP_PRIVATE) | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
    mm.mmap(B, SPAN, 3, flags)
    rss = "RssShmem" if shared else "RssAnon"
    steps = [lambda: mm.touch(B, SPAN), lambda: mm.uffd_register_wp(B, SPAN),
             lambda: mm.uffd_wp(B, 4096, True), lambda: mm.madvise(B, SPAN, MADV_DONTNEED),
             lambda: mm.madvise(B, SPAN, MADV_DONTNEED), lambda: mm.munmap(B, SPAN)]
    for step, (dpte, drss) in zip(steps, rows):
        before = mm.status()
        step()
        after = mm.status()
        assert (after["VmPTE"] - before["VmPTE"], after[rss] - before[rss]) == (dpte, drss)
        mm.check()


def test_uffd_wp_marker_faults_back_write_protected():
    from ptreclaim.constants import MAP_SHARED
    from ptreclaim.errors import UserfaultfdFault
    mm = _core.MM()
    mm.mmap(B, SPAN, 3, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    mm.touch(B, SPAN)
    mm.uffd_register_wp(B, SPAN)
    mm.uffd_wp(B, 8192, True)
    mm.madvise(B, SPAN, MADV_DONTNEED)
    mm.touch(B, 4096, write=False)              # reads fault the page back in
    assert mm.status()["RssShmem"] > 0
    with pytest.raises(UserfaultfdFault):       # writes would wait for the monitor
        mm.touch(B + 4096, 4096)
    mm.uffd_wp(B, 8192, False)
    mm.touch(B + 4096, 4096)
    mm.madvise(B, SPAN, MADV_DONTNEED)
    assert mm.status()["VmPTE"] == 8            # no marker left: the table is reclaimed
    mm.check()


def test_uffd_argument_errors():
    import errno
    mm = _core.MM()
    mm.mmap(B, SPAN, 3, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    with pytest.raises(OSError) as e:
        mm.uffd_register_wp(B + 1, SPAN)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        mm.uffd_register_wp(B, 2 * SPAN)        # runs into a hole
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        mm.uffd_wp(B, 4096)                     # not registered
    assert e.value.errno == errno.ENOENT
