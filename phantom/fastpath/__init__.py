"""The Cython fast path (``phantomd --fast``), uvloop style.

* ``_engine`` (``_engine.pyx`` + ``_engine.pxd``) is the extension phantomd
  loads: the tables, the worker loop and the per-packet code, written as one
  ``.pxi`` part per job (see docs/fastpath.md);
* ``includes/*.pxd`` declare the C APIs it calls (system calls, libsodium,
  OpenSSL's libcrypto);

:mod:`phantom.dataplane.fast` drives it behind the DataPath contract.
Nothing is imported here: importing the package never needs the extension
to be built.
"""
