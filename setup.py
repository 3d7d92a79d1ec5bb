"""Builds the optional oneDNN convolution for XLA:CPU (``edsr_jax/onednn_conv.py``).

``edsr_jax/csrc/onednn_conv.cc`` becomes the shared library ``edsr_jax._onednn_conv``, compiled
against XLA's FFI headers (from jaxlib) and oneDNN (the onednn-devel-cpu-gomp wheel, both
build requirements in pyproject.toml). On platforms without those wheels, or where the compiler
fails, the package installs without it and the model keeps XLA's convolutions.
Everything else about the package is in pyproject.toml.
"""

import importlib.metadata
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def wheel_file_dir(dist: str, suffix: str) -> str:
    """The directory that holds ``suffix`` (a relative path) among the files of wheel ``dist``."""
    for f in importlib.metadata.distribution(dist).files or []:
        path = Path(f.locate()).resolve()
        if path.as_posix().endswith("/" + suffix):
            return str(path.parents[suffix.count("/")])
    raise FileNotFoundError(f"{suffix} not found in the installed {dist} wheel")


class BuildOneDnn(build_ext):
    def build_extension(self, ext):
        # A failed (optional) build must not leave an older library in place, in the build
        # directory or in the source tree (where editable installs put it).
        olds = [Path(self.get_ext_fullpath(ext.name))]
        if self.inplace or getattr(self, "editable_mode", False):
            olds.append(Path(__file__).resolve().parent / self.get_ext_filename(ext.name))
        for old in olds:
            old.unlink(missing_ok=True)
        try:
            import jaxlib

            ext.include_dirs += [str(Path(jaxlib.__file__).parent / "include"),
                                 wheel_file_dir("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")]
            ext.library_dirs += [wheel_file_dir("onednn-cpu-gomp", "libdnnl.so.3")]
        except (ImportError, FileNotFoundError, importlib.metadata.PackageNotFoundError) as e:
            print(f"edsr-jax: not building the oneDNN convolution ({e})", file=sys.stderr)
            return
        super().build_extension(ext)


SUPPORTED = sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")
onednn_conv = Extension(
    "edsr_jax._onednn_conv", ["edsr_jax/csrc/onednn_conv.cc"], language="c++",
    extra_compile_args=["-O2", "-std=c++17", "-fvisibility=hidden", "-Wno-attributes",
                        "-Wno-return-type"],
    extra_link_args=["-l:libdnnl.so.3"], optional=True)

setup(ext_modules=[onednn_conv] if SUPPORTED else [], cmdclass={"build_ext": BuildOneDnn})
