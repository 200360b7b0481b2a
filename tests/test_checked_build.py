"""The suite's tests of compiled code, once more, against a checked build of the core:
Cython's bounds, wraparound and initialisation checks on (PTRECLAIM_CYTHON_DEBUG=1, -O0). The build goes
to a copy of the sources, so the optimised build under test elsewhere is untouched."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_suite_passes_on_the_checked_build(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        "*.so", "*.c", "build", ".venv*", "*.egg-info", "__pycache__", ".hypothesis",
        ".benchmarks", ".git", "dist"))
    shutil.copy(ROOT / "ptreclaim" / "_kernelrun.c", src / "ptreclaim" / "_kernelrun.c")
    env = {**os.environ, "PTRECLAIM_CYTHON_DEBUG": "1"}
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src,
                           env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    env["PYTHONPATH"] = str(src)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests",
         "-m", "not slow", "--ignore", "tests/test_checked_build.py",
         # What never runs compiled code (the reference alone), and the host-kernel
         # comparisons, whose time goes to the kernel, run once, in the main suite.
         "-k", "not reference", "--ignore", "tests/test_random_vs_kernel.py"],
        cwd=src, env=env, capture_output=True, text=True)
    tail = tests.stdout[-3000:]
    assert tests.returncode == 0, tail
    probe = subprocess.run([sys.executable, "-c", "import ptreclaim._core as c; print(c.__file__)"],
                           cwd=src, env=env, capture_output=True, text=True)
    assert probe.stdout.startswith(str(src)), "the suite did not run against the checked build"
    assert " passed" in tail
