"""ringtape on-disk format: segments, frames, manifests, readers, recovery, verification."""
