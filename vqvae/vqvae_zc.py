"""The original's import path of the VQ-VAE modules; they live in ``vqvae.model``."""

from vqvae.model import VQVAE, Decoder, Encoder, Quantize

__all__ = ["VQVAE", "Decoder", "Encoder", "Quantize"]
