"""File descriptors: the process's open-file limit, and how many connections the receivers may hold.

Every connection costs a descriptor, and so do the spool's files, the archive's and Loki's HTTP
connections, the signing workers' pipes and grpc's own sockets. When a flood of connections takes the
last descriptor, everything else fails with EMFILE at once (spool writes, S3 uploads, gRPC accepts).
So the sidecar raises its soft limit to the hard one at start (``raise_open_file_limit``), and the
receivers' connection caps are kept below it with a reserve for the rest (``connection_cap``).
"""

from __future__ import annotations

import resource

# Descriptors kept for everything that is not a client connection (spool, archive, Loki, workers,
# grpc internals, logs), with room to spare.
RESERVED_DESCRIPTORS = 256
# The two receivers (gRPC and OTLP/HTTP) share what is left.
RECEIVERS = 2
MIN_CONNECTIONS = 8


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(configured: int, open_file_limit: int) -> int:
    """The per-receiver connection cap: ``configured``, lowered so that both receivers' connections
    together leave ``RESERVED_DESCRIPTORS`` free (never below ``MIN_CONNECTIONS``)."""
    room = (open_file_limit - RESERVED_DESCRIPTORS) // RECEIVERS
    return max(MIN_CONNECTIONS, min(configured, room))
