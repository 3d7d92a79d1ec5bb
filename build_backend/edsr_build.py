"""The PEP 517 build backend of edsr-jax: setuptools, plus the build requirements of the
optional oneDNN convolution (``edsr_jax/csrc/onednn_conv.cc``) only when it is built.

``EDSR_JAX_ONEDNN`` (an environment variable, read when pip builds the package):

- unset, empty or ``auto``: build the extension on x86-64 Linux; a build that fails (no C++
  compiler) prints a note and the package installs without it (XLA's convolutions).
- ``1``: build it; any failure, or another platform, stops the install (CI, CPU servers).
- ``0``: do not build it: no jax/jaxlib/oneDNN build requirements, no compiler (GPU, TPU).

The runtime side, oneDNN's shared library, is the ``onednn-cpu-gomp`` wheel of the
``edsr-jax[cpu]`` extra. Everything else is ``setuptools.build_meta``.
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (build_wheel, build_sdist, ...)

ENV = "EDSR_JAX_ONEDNN"
MODES = {"": "auto", "auto": "auto", "1": "on", "0": "off"}
# What compiling the extension needs, beyond setuptools: XLA's FFI headers
# (jax.ffi.include_dir(), inside jaxlib) and oneDNN's headers and library.
BUILD_REQUIRES = ["jax>=0.10,<0.13", "jaxlib>=0.10,<0.13", "onednn-devel-cpu-gomp>=2023.2,<2024"]


def supported() -> bool:
    """True on the platform the extension builds for: x86-64 Linux."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def onednn_mode() -> str:
    """"auto", "on" or "off" from ``EDSR_JAX_ONEDNN`` (see the module docstring).

    Raises ValueError for another value, or for ``1`` on a platform without oneDNN wheels."""
    value = os.environ.get(ENV, "").strip().lower()
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: use 1 (build the oneDNN convolution), 0 (skip it) "
                         "or auto (build it where possible, the default)")
    mode = MODES[value]
    if mode == "on" and not supported():
        raise ValueError(f"{ENV}=1: the oneDNN convolution builds on x86-64 Linux only, this is "
                         f"{sys.platform} {platform.machine()} (use {ENV}=0)")
    if mode == "auto" and not supported():
        return "off"
    return mode


def _requires() -> list[str]:
    return [] if onednn_mode() == "off" else list(BUILD_REQUIRES)


def get_requires_for_build_wheel(config_settings=None):
    """setuptools' requirements, plus jax/jaxlib/oneDNN headers when the extension is built."""
    return _setuptools.get_requires_for_build_wheel(config_settings) + _requires()


def get_requires_for_build_editable(config_settings=None):
    """As ``get_requires_for_build_wheel``, for ``pip install -e``."""
    return _setuptools.get_requires_for_build_editable(config_settings) + _requires()
