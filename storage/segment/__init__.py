"""Segment files: bounded reading, the frame walk and its torn-tail rules, appending."""
