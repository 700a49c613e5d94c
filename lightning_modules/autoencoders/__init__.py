"""Autoencoders: the plain and the denoising autoencoder, and the variational autoencoder."""
