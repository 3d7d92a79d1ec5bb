"""Builds the optional oneDNN convolution for XLA:CPU (``edsr_jax/nets/onednn_conv.py``).

``edsr_jax/csrc/onednn_conv.cc`` becomes the shared library ``edsr_jax._onednn_conv``, compiled
against XLA's FFI headers (``jax.ffi.include_dir()``, shipped in jaxlib) and oneDNN (the
onednn-devel-cpu-gomp wheel). ``EDSR_JAX_ONEDNN`` decides (``build_backend/edsr_build.py``,
which also adds those build requirements only when the extension is built):
unset/auto builds it on x86-64 Linux and installs without it where that fails (no C++
compiler); 1 makes a failed build an error; 0 skips it (GPU/TPU installs: no compiler, no
jaxlib build dependency, no oneDNN). Without it the model keeps XLA's convolutions.
Everything else about the package is in pyproject.toml.
"""

import importlib.metadata
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent / "build_backend"))
from edsr_build import ENV, onednn_mode  # noqa: E402


def wheel_file_dir(dist: str, suffix: str) -> str:
    """The directory that holds ``suffix`` (a relative path) among the files of wheel ``dist``."""
    for f in importlib.metadata.distribution(dist).files or []:
        path = Path(f.locate()).resolve()
        if path.as_posix().endswith("/" + suffix):
            return str(path.parents[suffix.count("/")])
    raise FileNotFoundError(f"{suffix} not found in the installed {dist} wheel")


class BuildOneDnn(build_ext):
    """build_ext that finds the FFI and oneDNN headers; optional unless EDSR_JAX_ONEDNN=1."""

    def build_extension(self, ext):
        # A failed (optional) build must not leave an older library in place, in the build
        # directory or in the source tree (where editable installs put it).
        olds = [Path(self.get_ext_fullpath(ext.name))]
        if self.inplace or getattr(self, "editable_mode", False):
            olds.append(Path(__file__).resolve().parent / self.get_ext_filename(ext.name))
        for old in olds:
            old.unlink(missing_ok=True)
        try:
            import jax.ffi

            # -isystem: the third-party headers' own warnings are not ours; our code builds
            # cleanly with -Wall -Wextra.
            for include in (jax.ffi.include_dir(),
                            wheel_file_dir("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")):
                ext.extra_compile_args += ["-isystem", include]
            ext.library_dirs += [wheel_file_dir("onednn-cpu-gomp", "libdnnl.so.3")]
        except (ImportError, FileNotFoundError, importlib.metadata.PackageNotFoundError) as e:
            if not ext.optional:
                raise RuntimeError(f"edsr-jax: cannot build the oneDNN convolution ({e}); "
                                   f"{ENV}=0 installs without it") from e
            print(f"edsr-jax: not building the oneDNN convolution ({e})", file=sys.stderr)
            return
        super().build_extension(ext)


MODE = onednn_mode()  # "auto", "on" or "off" (ValueError for a bad EDSR_JAX_ONEDNN)
onednn_conv = Extension(
    "edsr_jax._onednn_conv", ["edsr_jax/csrc/onednn_conv.cc"], language="c++",
    extra_compile_args=["-O2", "-std=c++17", "-fvisibility=hidden", "-Wall", "-Wextra"],
    extra_link_args=["-l:libdnnl.so.3"], optional=MODE == "auto")

setup(ext_modules=[] if MODE == "off" else [onednn_conv], cmdclass={"build_ext": BuildOneDnn})
