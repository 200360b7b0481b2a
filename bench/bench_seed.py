"""The seed loop (touch 2 MiB, MADV_DONTNEED 2 MiB) per iteration: the simulator
next to the host kernel, measured in the same run. Compare means divided by
extra_info["iterations"]; a ratio in one run is the figure, never a timing gate."""

import subprocess

import pytest

from ptreclaim.constants import MADV_DONTNEED, PMD_SIZE
from ptreclaim.demo import BASE, seed_experiment

# 2,560 iterations = 5 GiB of the 50 GiB mapping: long enough to time, short
# enough for the host kernel (about 1.5 ms an iteration here).
ITERATIONS = 2560


def _assert_seed_result(after, iterations):
    # Every table emptied by a whole-span DONTNEED is reclaimed: only the PUD
    # and the PMD tables of the 1 GiB regions touched remain.
    assert after["VmPTE"] == 4 * (1 + (iterations * PMD_SIZE + (1 << 30) - 1) // (1 << 30))
    assert after["VmRSS"] == 0


@pytest.mark.benchmark(group="seed-loop")
def test_seed_loop_simulator(benchmark, impl):
    iterations = ITERATIONS if impl.__name__.endswith("_core") else ITERATIONS // 10
    result = benchmark.pedantic(
        lambda: seed_experiment(impl.MM, iterations=iterations, advice=MADV_DONTNEED),
        rounds=5 if iterations == ITERATIONS else 2, iterations=1)
    benchmark.extra_info["iterations"] = iterations
    _assert_seed_result(result[1], iterations)


@pytest.mark.benchmark(group="seed-loop")
def test_seed_loop_host_kernel(benchmark, c_program, linux_host):
    binary = c_program("seed_loop")

    def run():
        out = subprocess.run([str(binary), str(ITERATIONS)], check=True, capture_output=True,
                             text=True).stdout.split()
        return int(out[0]), int(out[1]), int(out[2])

    n, ns, dvmpte = benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["iterations"] = n
    benchmark.extra_info["loop_ns_per_iteration"] = ns / n
    assert dvmpte == 4 * (1 + 5), "the host kernel did not reclaim as PT reclaim does"
