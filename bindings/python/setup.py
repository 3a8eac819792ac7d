"""Builds the Swift engine (scripts/build-lib.sh) and the thin C extension over it.

`python3 -m pip install ./bindings/python` runs this from a checkout: the shipped
libpeftswift.so (Swift runtime linked in statically) is copied into the package next to the
extension, which finds it through an $ORIGIN rpath, so no Swift toolchain is needed at run time.
"""
import os
import pathlib
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class BuildSwiftThenExt(build_ext):
    def run(self):
        prefix = pathlib.Path(self.build_temp).resolve() / "pst"
        subprocess.check_call(["bash", str(ROOT / "scripts/build-lib.sh"), "--prefix", str(prefix)])
        for ext in self.extensions:
            ext.include_dirs.append(str(prefix / "include"))
            ext.library_dirs.append(str(prefix / "lib"))
        super().run()
        # ship the library and the header inside the package
        pkg = pathlib.Path(self.build_lib) / "peftswift"
        pkg.mkdir(parents=True, exist_ok=True)
        shutil.copy2(prefix / "lib/libpeftswift.so", pkg / "libpeftswift.so")
        (pkg / "include").mkdir(exist_ok=True)
        shutil.copy2(prefix / "include/peftswift.h", pkg / "include/peftswift.h")
        if self.inplace:
            shutil.copy2(prefix / "lib/libpeftswift.so", HERE / "peftswift/libpeftswift.so")


native = Extension(
    "peftswift._native",
    sources=["src/_native.c"],
    depends=["src/quant.inc.c", "src/lora.inc.c", "src/optim.inc.c", "src/files.inc.c", "src/llm.inc.c"],
    libraries=["peftswift"],
    runtime_library_dirs=["$ORIGIN"],
    extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers"],
)

setup(ext_modules=[native], cmdclass={"build_ext": BuildSwiftThenExt})
