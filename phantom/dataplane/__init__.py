"""The data plane: everything that touches packets.

Rule: nothing under ``phantom.dataplane`` imports ``phantom.control`` or
``phantom.daemon``.  The control plane drives a data path only through the
:class:`phantom.dataplane.contract.DataPath` Protocol (complete: nothing else,
no ``hasattr`` probe).
"""
