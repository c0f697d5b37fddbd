"""``ringtape demo``: a simulated trading session through the whole pipeline."""
