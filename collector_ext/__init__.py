"""collector_ext: seal OpenTelemetry log records into a signed hash chain and archive them as evidence.

The data path, one subpackage per stage:

- ``receive``: the OTLP/gRPC LogsService endpoint the collector exports to;
- ``seal``: the pure core (entry bytes, chain, signatures, segments, checkpoints), no I/O;
- ``deliver``: where sealed records go (the S3 or directory archive);
- ``verify``: the offline verifier that checks an archive against pinned public keys.

``service`` is the one composition root that wires these together from a ``config.SidecarConfig``.
"""

__version__ = "0.1.0"
