"""Where sealed records go: the archive (S3 with Object Lock, or a directory with the same layout)."""
