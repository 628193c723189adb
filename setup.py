"""Build shoal's native hot paths: every ext/<name>.pyx becomes shoal._ext.<name>.

The extensions are optional. With SHOAL_NO_EXTENSIONS=1, without Cython, or when the
C compiler fails, the package still installs and runs on its pure-Python twins
(shoal._pure.<name>), which expose the same API.
"""

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent


class OptionalBuildExt(build_ext):
    """Build what compiles; warn, do not fail, on what does not."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            print(f"shoal: native extensions not built ({exc}); using pure-Python twins", file=sys.stderr)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"shoal: {ext.name} not built ({exc}); its pure-Python twin will be used", file=sys.stderr)


def extensions() -> list:
    if os.environ.get("SHOAL_NO_EXTENSIONS") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("shoal: Cython missing; installing pure-Python twins only", file=sys.stderr)
        return []
    from setuptools import Extension

    built = []
    for pyx in sorted((HERE / "ext").glob("*.pyx")):
        ext = Extension(f"shoal._ext.{pyx.stem}", [str(pyx.relative_to(HERE))], extra_compile_args=["-O3"])
        try:
            built += cythonize(
                [ext],
                language_level=3,
                compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
                quiet=True,
            )
        except Exception as exc:  # a .pyx that does not translate must not break the install
            print(
                f"shoal: {pyx.name} not translated ({exc}); its pure-Python twin will be used",
                file=sys.stderr,
            )
    return built


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
