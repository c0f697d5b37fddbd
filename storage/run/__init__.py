"""A run directory: layout, manifest, locks, status and verdicts, recovery, retention, blobs."""
