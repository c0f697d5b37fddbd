"""``ringtape bench``: the pipeline against its baselines and the floor, in one run."""
