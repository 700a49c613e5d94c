"""LightningModules by short name: the registry that scripts/fit.py reads for `--model NAME`.
Each name has its defaults in configs/NAME.yaml."""

from lightning_modules.autoencoder import Autoencoder, DenoisingAutoencoder
from lightning_modules.classifier import ImageClassifier
from lightning_modules.ddpm import DDPM
from lightning_modules.gpt import GPT
from lightning_modules.ppo import PPO
from lightning_modules.vae import VAE

MODELS = {
    "vae": VAE,
    "ae": Autoencoder,
    "dae": DenoisingAutoencoder,
    "gpt": GPT,
    "gpt_shakespeare_cpu": GPT,
    "mlp": ImageClassifier,
    "convnet": ImageClassifier,
    "lenet5": ImageClassifier,
    "resnet": ImageClassifier,
    "vit": ImageClassifier,
    "hybrid_vit": ImageClassifier,
    "pixel_attention": ImageClassifier,
    "ppo": PPO,
    "ddpm": DDPM,
}

__all__ = ["MODELS", "Autoencoder", "DDPM", "DenoisingAutoencoder", "GPT", "ImageClassifier", "PPO", "VAE"]
