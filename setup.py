"""Build the compiled core: the Cython extensions and the kernel runner."""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# One set of compiler directives for every module; PTRECLAIM_CYTHON_DEBUG=1
# turns the checks back on for a test run of a checked build.
DEBUG = os.environ.get("PTRECLAIM_CYTHON_DEBUG") == "1"
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O3"]

extensions = [
    Extension(f"ptreclaim.{name}", [f"ptreclaim/{name}.pyx"],
              include_dirs=[numpy.get_include()], extra_compile_args=CFLAGS,
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    for name in ("_pgtable", "_hugetlb", "_vma", "_core")
]
# The host-kernel runner: plain C, so the forked child never runs Python.
extensions.append(Extension("ptreclaim._kernelrun", ["ptreclaim/_kernelrun.c"],
                            extra_compile_args=["-O2"]))

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
