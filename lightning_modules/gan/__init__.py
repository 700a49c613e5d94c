"""Generative adversarial networks: DCGAN (Radford et al. 2016)."""
