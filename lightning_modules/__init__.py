"""LightningModules grouped by family (autoencoders/, classifiers/, diffusion/, language/, rl/, ...), each
with its loss and its family's mathematics; networks shared across families live in blocks/. The registered
model names come from configs/ (lightning_modules/registry.py); the contracts between models, callbacks and
scripts are in lightning_modules/protocols.py."""
