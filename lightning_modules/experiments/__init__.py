"""The seeds' own experiments: small ideas, each a registered model."""
