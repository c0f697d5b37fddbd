"""Byte layouts: entry records, frames and segment headers, marker records; pure functions."""
