"""Diffusion models: DDPM/DDIM, with the schedule and samplers beside them (gaussian_diffusion.py)."""
