"""The seeds' own experiments, one module each."""
