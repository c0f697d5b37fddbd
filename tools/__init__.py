"""The ringtape command line."""
