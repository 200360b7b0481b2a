"""Benchmark fixtures: the implementations side by side, and C programs built with
the host's compiler for the host-kernel and lower-bound references."""

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(params=["core", "reference"])
def impl(request):
    return importlib.import_module(f"ptreclaim._{request.param}")


@pytest.fixture(scope="session")
def c_program(tmp_path_factory):
    """Compile bench/NAME.c with the host's C compiler; returns the binary's path."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    built = {}

    def build(name):
        if cc is None:
            pytest.skip("no C compiler on this host")
        if name not in built:
            out = tmp_path_factory.mktemp("cbench") / name
            subprocess.run([cc, "-O2", "-o", str(out), str(HERE / f"{name}.c")], check=True)
            built[name] = out
        return built[name]

    return build


@pytest.fixture(scope="session")
def linux_host():
    if not sys.platform.startswith("linux"):
        pytest.skip("the host is not Linux: no kernel to measure")
