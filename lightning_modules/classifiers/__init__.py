"""Image classification: one LightningModule for every backbone."""
