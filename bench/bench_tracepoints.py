"""The tracepoint machinery costs nothing measurable when nobody listens: the seed loop
with no callback, and with a callback registered on an event the loop never fires
(so every event point pays its bit test, and nothing else)."""

import pytest

from ptreclaim import _core
from ptreclaim.demo import seed_experiment

ITERATIONS = 25600


@pytest.mark.parametrize("listening", [False, True], ids=["no-callback", "idle-callback"])
def test_seed_loop_with_tracepoints(benchmark, listening):
    benchmark.group = "seed-loop-tracepoints"
    hits = []

    def factory():
        mm = _core.MM()
        if listening:
            mm.on("lost_mapping", hits.append)
        return mm

    result = benchmark.pedantic(lambda: seed_experiment(factory, iterations=ITERATIONS), rounds=5)
    benchmark.extra_info["units"] = ITERATIONS
    assert result[1]["VmPTE"] == 204 and hits == []
