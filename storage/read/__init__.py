"""Reading runs back: entries in seq order, replay into a cache."""
