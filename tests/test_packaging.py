"""The package as users get it: `python -m build` makes an sdist and a wheel; the wheel
installs into a fresh venv and works from there (not from this source tree), and a
third-party Cython module compiles against its .pxd files and drives the core at C level.

An in-place or editable build can hide a missing package file; this cannot."""

import os
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    try:
        run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    except subprocess.CalledProcessError as e:
        pytest.fail(f"python -m build failed:\n{e.stdout[-3000:]}\n{e.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory):
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    wheel = next(dist.glob("ptreclaim-*.whl"))
    run([str(py), "-m", "pip", "install", "-q", str(wheel)])
    return py


def test_sdist_has_sources_not_generated_c(dist):
    sdist = next(dist.glob("ptreclaim-*.tar.gz"))
    names = tarfile.open(sdist).getnames()
    for needed in ("_core.pyx", "_core.pxd", "_pgtable.pyx", "_pgtable.pxd", "_vma.pyx",
                   "_hugetlb.pyx", "_hugetlb.pxd", "_types.pxd", "_kernelrun.c", "setup.py",
                   "pyproject.toml"):
        assert any(n.endswith(needed) for n in names), needed
    for generated in ("_core.c", "_pgtable.c", "_vma.c", "_hugetlb.c"):
        assert not any(n.endswith("ptreclaim/" + generated) for n in names), generated


def test_wheel_has_every_module_and_contract(dist):
    wheel = next(dist.glob("ptreclaim-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for mod in ("_core", "_pgtable", "_vma", "_hugetlb", "_kernelrun"):
        assert any(n.startswith(f"ptreclaim/{mod}.") and n.endswith(".so") for n in names), mod
    for f in ("__init__.py", "__init__.pxd", "_core.pxd", "_types.pxd", "_pgtable.pxd",
              "_hugetlb.pxd", "_reference.py", "cli.py", "py.typed"):
        assert f"ptreclaim/{f}" in names, f


def test_installed_wheel_runs_from_the_venv(installed, tmp_path):
    code = textwrap.dedent("""
        import ptreclaim, ptreclaim._core, sys
        assert ptreclaim.__file__.startswith(sys.prefix), ptreclaim.__file__
        mm = ptreclaim.MM()
        a = mm.mmap(0x200000000000, 1 << 30, 3, 0x22 | 0x4000 | 0x100000)
        for i in range(512):
            mm.touch(a + i * (2 << 20), 2 << 20)
            mm.madvise(a + i * (2 << 20), 2 << 20, ptreclaim.MADV_DONTNEED)
        print(mm.status()["VmPTE"], ptreclaim.IMPLEMENTATION)
    """)
    out = run([str(installed), "-c", code], cwd=tmp_path).stdout.split()
    assert out == ["8", "core"]
    demo = run([str(installed), "-m", "ptreclaim", "demo", "--size", "1G", "--no-progress"],
               cwd=tmp_path).stdout
    assert "VmPTE" in demo and "8 kB" in demo


def test_pure_python_switch_in_the_installed_package(installed, tmp_path):
    out = run([str(installed), "-c", "import ptreclaim; print(ptreclaim.IMPLEMENTATION)"],
              cwd=tmp_path, env={**os.environ, "PTRECLAIM_PURE_PYTHON": "1"}).stdout.strip()
    assert out == "reference"


def test_cimport_from_a_third_party_module(installed, tmp_path):
    """The .pxd files are a contract: a consumer's Cython drives the core without Python calls."""
    run([str(installed), "-m", "pip", "install", "-q", "cython>=3.1", "setuptools"])
    (tmp_path / "consumer.pyx").write_text(textwrap.dedent("""
        # cython: language_level=3
        from libc.stdint cimport uint64_t
        from ptreclaim._core cimport MM
        from ptreclaim._pgtable cimport pte_none, pte_table_empty, walk_pte

        def faults_then_zap(MM mm, uint64_t addr):
            cdef uint64_t where = 0
            cdef int r
            with nogil:
                r = mm.do_touch(addr, addr + (2 << 20), True, &where)
                if r == 0:
                    r = mm.do_madvise(addr, 2 << 20, 4)
            return r, walk_pte(mm.mm, addr) == NULL
    """))
    (tmp_path / "setup.py").write_text(textwrap.dedent("""
        from setuptools import setup
        from Cython.Build import cythonize
        setup(ext_modules=cythonize("consumer.pyx"))
    """))
    run([str(installed), "setup.py", "build_ext", "--inplace"], cwd=tmp_path)
    code = textwrap.dedent("""
        import ptreclaim, consumer
        mm = ptreclaim.MM()
        a = mm.mmap(0x200000000000, 4 << 20, 3, 0x22 | 0x100000)
        print(consumer.faults_then_zap(mm, a), mm.status()["VmPTE"])
    """)
    assert run([str(installed), "-c", code], cwd=tmp_path).stdout.split() == ["(0,", "True)", "8"]
