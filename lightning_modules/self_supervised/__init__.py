"""Self-supervised representation learning: SimCLR and its NT-Xent loss."""
