"""Builds the stanchion._core extension.

STANCHION_DEBUG=1     -O0 -g3, assertions on, warnings are errors
STANCHION_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer
CI=true               warnings are errors (set by CI services and .ci/run)

A user's build (pip install of the sdist) never fails on a warning that a
newer compiler adds: -Werror is only on in CI and debug builds.
"""

import os
import sys
from glob import glob

from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


extra_compile_args = []
extra_link_args = []
undef_macros = []
# shm_open lives in librt before glibc 2.34 (the manylinux_2_28 images);
# later glibc and musl keep an empty librt for compatibility.
libraries = ["rt"] if sys.platform.startswith("linux") else []

if sys.platform != "win32":
    extra_compile_args = ["-std=c11", "-Wall", "-Wextra"]
    if _flag("STANCHION_DEBUG") or _flag("CI"):
        extra_compile_args += ["-Werror"]
    if _flag("STANCHION_DEBUG"):
        extra_compile_args += ["-O0", "-g3"]
        undef_macros = ["NDEBUG"]
    else:
        extra_compile_args += ["-O3"]
    if _flag("STANCHION_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        extra_compile_args += san + ["-fno-sanitize-recover=undefined"]
        extra_link_args += san

setup(
    ext_modules=[
        Extension(
            "stanchion._core",
            sources=sorted(glob("src/*.c")),
            include_dirs=["src"],
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
            libraries=libraries,
            undef_macros=undef_macros,
        )
    ],
)
