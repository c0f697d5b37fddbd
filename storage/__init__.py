"""The on-disk format and everything that reads or checks it; no processes, no shared memory.

Rooms: ``format/`` bytes and their layouts, ``segment/`` segment files (bounded reading, the
frame walk, appending), ``check/`` findings, scans and verification, ``run/`` a run directory
(layout, manifest, locks, status, recovery, retention, blobs), ``read/`` reading runs back.
"""
