# C API declarations for phantom/_fastpath.pyx (cimport only; nothing at runtime).
