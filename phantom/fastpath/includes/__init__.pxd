# C API declarations for phantom/fastpath/_engine.pyx and its parts (cimport only; nothing at runtime).
