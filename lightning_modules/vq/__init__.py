"""Vector-quantised models: the VQ-VAE and the latent diffusion model trained on its latents."""
