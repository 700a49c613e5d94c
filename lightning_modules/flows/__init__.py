"""Normalizing flows: RealNVP (Dinh et al. 2017) with its couplings and dequantisers."""
