"""Build the Cython fast path: ``phantom.fastpath._engine`` (what phantomd
loads), ``phantom.fastpath._testing`` (test and benchmark hooks over the
engine's C API; never loaded by phantomd) and
``phantom.protocols.phantom._responder`` (the Phantom handshake's responder
in C, which phantomd --fast answers initiations with).

Everything else about the package lives in pyproject.toml.

Build switches (environment variables, like uvloop's):

* ``PHANTOM_DEBUG=1``    -- debug build: Cython line tracing, bounds/wraparound
  checks and assertions on, C compiled with ``-O0 -g``.
* ``PHANTOM_ANNOTATE=1`` -- also write ``phantom/fastpath/_engine.html`` and ``_testing.html`` (Cython's
  annotated source: yellow lines call into the Python C API).

A missing C compiler or missing Python headers stop the build with a message
that says what to install, instead of a compiler traceback.
"""

from __future__ import annotations

import os
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HINT = (
    "Phantom's fast path (phantom.fastpath._engine) is a C extension; building it needs "
    "a C compiler and the Python development headers.\n"
    "  On Debian/Ubuntu:  apt-get install gcc python3-dev\n"
    "  (for a pyenv or self-built Python the headers come with that Python; "
    "check that %s exists)" % os.path.join(sysconfig.get_paths()["include"], "Python.h")
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "yes", "true", "on")


DEBUG = _flag("PHANTOM_DEBUG")
ANNOTATE = _flag("PHANTOM_ANNOTATE")


class BuildError(SystemExit):
    """Stops setup.py with a one-paragraph explanation (exit status 1)."""

    def __init__(self, message: str):
        super().__init__("\nerror: " + message + "\n")


def _check_headers() -> None:
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        raise BuildError("Python.h not found in %s.\n%s" % (include, HINT))


class checked_build_ext(build_ext):
    """build_ext that turns compiler failures into an actionable message."""

    def run(self):
        _check_headers()
        super().run()

    def build_extension(self, ext):
        # Imported here: distutils lives inside setuptools on 3.12+.
        from distutils.errors import (CCompilerError, CompileError, DistutilsExecError,
                                      DistutilsPlatformError, LinkError)
        try:
            super().build_extension(ext)
        except (CCompilerError, CompileError, LinkError, DistutilsExecError,
                DistutilsPlatformError, FileNotFoundError) as exc:
            raise BuildError("building %s failed: %s\n%s" % (ext.name, exc, HINT)) from exc


def _generate() -> None:
    """phantom/fastpath/_generated.pxi from the Python enums (drop reasons,
    message types): loaded by path, so that nothing of phantom is imported."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "phantom", "fastpath", "generate.py")
    spec = importlib.util.spec_from_file_location("_phantom_fastpath_generate", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    try:
        gen.write()
    except gen.GenerateError as exc:
        raise BuildError("generating phantom/fastpath/_generated.pxi failed: %s" % exc) from exc


def _extensions():
    _generate()
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        raise BuildError(
            "Cython >= 3 is needed to build phantom.fastpath._engine "
            "(pip install 'Cython>=3', or use `pip install .`, which installs it "
            "for the build)") from exc

    directives = {"language_level": 3, "embedsignature": True}
    macros = []
    cflags = []
    if DEBUG:
        directives.update(linetrace=True, profile=True, boundscheck=True,
                          wraparound=True, initializedcheck=True, overflowcheck=True)
        macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
        cflags += ["-O0", "-g", "-UNDEBUG"]
    else:
        cflags += ["-O2"]

    # _engine: the extension phantomd loads; _testing: the test and benchmark
    # hooks over _engine's C API (tests/ and bench/ import it, phantomd never does).
    exts = [Extension("phantom.fastpath.%s" % name,
                      sources=["phantom/fastpath/%s.pyx" % name],
                      define_macros=macros,
                      extra_compile_args=cflags)
            for name in ("_engine", "_testing")]
    # the Phantom handshake's responder in C (issue 23 item 3): control-plane
    # code, loaded by phantom.protocols.phantom.protocol when built
    exts.append(Extension("phantom.protocols.phantom._responder",
                          sources=["phantom/protocols/phantom/_responder.pyx"],
                          define_macros=macros, extra_compile_args=cflags))
    return cythonize(
        exts,
        compiler_directives=directives,
        annotate=ANNOTATE,
        # The debug build keeps its generated C apart, so that switching back to
        # a release build never compiles stale debug C (or the other way round).
        build_dir="build/cython-debug" if DEBUG else None,
        force=ANNOTATE,
        quiet=True,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": checked_build_ext})
