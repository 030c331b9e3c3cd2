"""Recipe schema, stage graph, run directory, cache keys, resume and lock. Knows no torch."""
