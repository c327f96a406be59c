"""Outside witnesses of checkpoints: RFC 3161 time-stamp tokens and C2SP tlog-witness cosignatures.

The sidecar asks a time-stamping authority and configured witnesses to vouch for each new signed
checkpoint note, off the acknowledgement path (``submitter``); ``collector-ext witness serve`` is a
witness (``server``, its persisted state in ``state``); verify checks what they returned against
pinned keys and certificates. The pure parts (``cosignature``, ``protocol``, ``timestamp``'s checks)
take and return bytes; the HTTP adapters sit beside them.
"""
