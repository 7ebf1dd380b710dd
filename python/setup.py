"""Builds libfa3c with CMake (the repository root is the parent of this directory) and ships it
inside the fa3c package.

Environment:
  FA3C_LIBRARY     path of a prebuilt libfa3c: copied into the package instead of building
  FA3C_CMAKE_ARGS  extra CMake configure arguments (e.g. "-DFA3C_CUDA=OFF")
  FA3C_BUILD_JOBS  parallel build jobs (default: the CPU count)

pip >= 21.3 builds in place, so the repository root is reachable from here; an older pip that
copies this directory elsewhere needs FA3C_LIBRARY.
"""

import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LIB_NAME = "libfa3c.dylib" if sys.platform == "darwin" else "libfa3c.so"


def _cmake_build(tmp):
    """Configures and builds the shared library in tmp; returns the library's path."""
    if not os.path.isfile(os.path.join(REPO, "CMakeLists.txt")) or not os.path.isfile(
        os.path.join(REPO, "include", "fa3c.h")
    ):
        raise RuntimeError(
            f"fa3c: the repository root ({REPO}) is not next to this setup.py, so libfa3c cannot be "
            "built here (pip < 21.3 builds out of tree). Build it with CMake and set FA3C_LIBRARY."
        )
    configure = [
        "cmake", "-S", REPO, "-B", tmp,
        "-DCMAKE_BUILD_TYPE=Release", "-DFA3C_CUDA=AUTO", "-DFA3C_BUILD_TESTS=OFF",
    ] + shlex.split(os.environ.get("FA3C_CMAKE_ARGS", ""))
    jobs = os.environ.get("FA3C_BUILD_JOBS") or str(os.cpu_count() or 1)
    subprocess.check_call(configure)
    subprocess.check_call(["cmake", "--build", tmp, "--target", "fa3c", "-j", jobs])
    found = sorted(glob.glob(os.path.join(tmp, "**", LIB_NAME), recursive=True))
    if not found:
        raise RuntimeError(f"fa3c: the CMake build in {tmp} produced no {LIB_NAME}")
    return found[0]


def place_library(dest_dir):
    """Copies libfa3c (prebuilt from $FA3C_LIBRARY, else freshly built) to dest_dir/LIB_NAME."""
    os.makedirs(dest_dir, exist_ok=True)
    dest = os.path.join(dest_dir, LIB_NAME)
    prebuilt = os.environ.get("FA3C_LIBRARY")
    if prebuilt:
        shutil.copyfile(os.path.realpath(prebuilt), dest)
        return
    tmp = tempfile.mkdtemp(prefix="fa3c-build-")
    try:
        # Copy the real file (not the SONAME symlinks): the package loads it by path.
        shutil.copyfile(os.path.realpath(_cmake_build(tmp)), dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildPyWithLibrary(build_py):
    def run(self):
        super().run()
        if self.dry_run:
            return
        # Editable installs import the source tree, so the library goes next to the sources there.
        if getattr(self, "editable_mode", False):
            place_library(os.path.join(HERE, "fa3c"))
        else:
            place_library(os.path.join(self.build_lib, "fa3c"))


class BinaryDistribution(Distribution):
    """The package carries a native library: platform-specific wheel, platlib install."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPyWithLibrary}, distclass=BinaryDistribution)
