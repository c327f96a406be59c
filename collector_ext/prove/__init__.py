"""Proofs of single records: built from an archive's tiles and notes, checked offline (FORMAT.md 16.7).

``proof_file`` is the pure part (encoding, parsing and checking a proof file); ``build`` reads what a
proof needs from an archive, without reading the chain.
"""
