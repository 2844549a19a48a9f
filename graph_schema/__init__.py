"""Grid model, its validation, importers and the Bolt graph store (the system of record)."""
