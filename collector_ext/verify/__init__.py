"""The verifier: checks an archive (S3 or a directory copy) against pinned public keys.

``check`` is the pure core (bytes in, report out); ``source`` reads archives; ``run`` drives the two
with parallel reads and a progress callback; ``render`` turns a report into text or JSON.
"""
