"""LightningModules by short name: the registry that scripts/fit.py reads for `--model NAME`.
Each name has its defaults in configs/NAME.yaml."""

from lightning_modules.vae import VAE

MODELS = {
    "vae": VAE,
}

__all__ = ["MODELS", "VAE"]
