"""Interleaving explorer: one madvise() against one concurrent operation.

The simulated kernel runs one thread, but its tracepoints mark where the real kernel
holds no page-table lock. These are the lock-free points:
* the start and end of a zap;
* the moment the zap loop drops its PTE lock midway;
* the slow path of PT reclaim, before it takes its locks.

Another thread could run a page fault at each of them. `explore()` runs the
concurrent operation at every such point, and also before and after the madvise.
It also forces the zap loop to drop its lock after every possible number of entries,
so that the points exist at all. Each run starts from a fresh state, and `check()`
runs after each one. Every outcome is reported.
"""

from collections import Counter, namedtuple

from ptreclaim.errors import InvariantError, SegmentationFault

LOCK_FREE_EVENTS = ("zap_begin", "zap_lock_dropped", "reclaim_slow", "zap_end")

Outcome = namedtuple("Outcome", "resched_after point event address status lost_mappings invariant")
Outcome.__doc__ = """One interleaving and what it left.

resched_after: the zap loop dropped its lock after this many entries (None: never);
point: the concurrent operation ran at the point-th lock-free point (-1: before the
madvise, a large number: after it); event/address: that point's tracepoint;
status: /proc status afterwards; lost_mappings: tables freed under a mapping;
invariant: None if check() passed, else the broken invariant's message."""


def _run(MM, kwargs, setup, madvise_args, concurrent, resched_after, point):
    mm = MM(**kwargs)
    setup(mm)
    hits = []

    def listener(ev):
        index = len(hits)
        hits.append((ev.name, ev.address))
        if index == point:
            try:
                concurrent(ev.mm)
            except SegmentationFault:
                pass

    if point == -1:
        concurrent(mm)
    for name in LOCK_FREE_EVENTS:
        mm.on(name, listener)
    mm.inject_need_resched(resched_after)
    mm.madvise(*madvise_args)
    for name in LOCK_FREE_EVENTS:
        mm.off(name)
    mm.inject_need_resched(None)
    if point >= len(hits):
        concurrent(mm)
    try:
        mm.check()
        broken = None
    except InvariantError as exc:
        broken = str(exc)
    where = hits[point] if 0 <= point < len(hits) else (("before", 0) if point == -1 else ("after", 0))
    return Outcome(resched_after, point, where[0], where[1], mm.status(), mm.lost_mappings,
                   broken), len(hits)


def explore(MM, setup, madvise_args, concurrent, *, resched_choices=None, **mm_kwargs):
    """Every interleaving of madvise(*madvise_args) with concurrent(mm).

    MM: the implementation's MM class (the compiled core has the tracepoints);
    setup(mm): builds the state before the race; concurrent(mm): the other thread's
    operation, typically a touch(); resched_choices: the entry counts after which the
    zap loop drops its lock (default: none, and after each of 1..512 entries).
    Returns the list of Outcomes.
    """
    if resched_choices is None:
        resched_choices = [None] + list(range(1, 513))
    outcomes = []
    for resched in resched_choices:
        # A dry run counts the lock-free points this choice produces.
        _, n_points = _run(MM, mm_kwargs, setup, madvise_args, lambda mm: None, resched, 1 << 30)
        for point in [-1] + list(range(n_points)) + [n_points]:
            outcomes.append(_run(MM, mm_kwargs, setup, madvise_args, concurrent, resched, point)[0])
    return outcomes


def summarize(outcomes):
    """Distinct results: (VmPTE, RssAnon, lost mappings, invariant) -> how many interleavings."""
    return Counter((o.status["VmPTE"], o.status["RssAnon"], o.lost_mappings, o.invariant)
                   for o in outcomes)


def bad(outcomes):
    """The interleavings that left a state Linux must never be in."""
    return [o for o in outcomes if o.invariant is not None]
