"""The sealing core: entry bytes, hash chain, signatures, segments and checkpoints.

Everything here takes and returns bytes and frozen dataclasses. Nothing here opens a file, a socket
or a thread, or reads the environment; the adapters in ``receive``, ``deliver`` and ``verify`` do
that. proto/FORMAT.md is the byte-level specification this package implements.
"""
