"""Reusable nn.Modules with no training logic, shared by more than one model."""
