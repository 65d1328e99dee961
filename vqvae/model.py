"""The VQ-VAE image tokenizer: convolutional encoder, EMA vector quantizer, convolutional decoder.

Module and parameter names (`enc_b.blocks.N`, `quantize_t`, `dec.blocks.N`) follow the released checkpoint
`vqvae_hard_biggerset_011.pt` so that its state dict loads without renaming. Only the "simple" layout (plain
strided convolutions, no residual blocks) is implemented: it is the one every released model uses. The same
layout scales to tiny test models through `channel`, `embed_dim`, `n_embed` and `stride`.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import InputError


def num_downsamples(stride: int) -> int:
    """Number of stride-2 convolutions for the original `stride` code (6 → 3, i.e. ×8; 4 → 2, i.e. ×4)."""
    if stride < 2 or stride % 2:
        raise InputError(f"VQ-VAE stride must be an even number >= 2 (6 gives x8 downsampling): {stride}.")
    return stride // 2


class Encoder(nn.Module):
    """Image [b, c, H, W] → latent [b, H/f, W/f, embed_dim] (NHWC), with f = 2 ** n_down.

    Layout of `blocks` (n_down = 3 is the released one, keys 0/2/4 down-sampling convs and 6 the projection):
    `n_down` × [Conv2d(k4, s2, p1), ReLU], then Conv2d(channel → embed_dim, k1).
    """

    def __init__(self, in_channel: int, channel: int, embed_dim: int, n_down: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_down):
            in_ch = in_channel if i == 0 else channel
            layers += [nn.Conv2d(in_ch, channel, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(channel, embed_dim, 1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).permute(0, 2, 3, 1)  # [b, h, w, embed_dim]


class Decoder(nn.Module):
    """Latent [b, embed_dim, h, w] (NCHW) → image [b, out_channel, f*h, f*w], with f = 2 ** n_up.

    Layout of `blocks` (n_up = 3 is the released one, keys 0/2/4 transposed convs and 6 the projection):
    `n_up` × [ConvTranspose2d(k4, s2, p1), ReLU], then Conv2d(channel → out_channel, k1).
    """

    def __init__(self, embed_dim: int, channel: int, out_channel: int, n_up: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_up):
            in_ch = embed_dim if i == 0 else channel
            layers += [nn.ConvTranspose2d(in_ch, channel, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(channel, out_channel, 1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(z)


class Quantize(nn.Module):
    """Nearest-neighbour vector quantizer with an EMA-updated codebook (van den Oord et al., 2017, App. A).

    Buffers (the released layout; `embed` is [dim, n_embed], i.e. transposed relative to nn.Embedding):
    `embed` the codebook, `cluster_size` the EMA count of vectors assigned to each code, `embed_avg` the EMA
    sum of those vectors. The codebook is never trained by gradients: in training mode each forward moves it
    towards the mean of its assigned vectors (decay `decay`, Laplace smoothing `eps`).
    """

    def __init__(self, dim: int, n_embed: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.n_embed = n_embed
        self.decay = decay
        self.eps = eps
        embed = torch.empty(dim, n_embed)
        if not embed.is_meta:  # a quantizer built to be loaded draws nothing (and drawing on meta is slow)
            embed.normal_()  # what torch.randn draws
        self.register_buffer("embed", embed)  # [dim, n_embed]
        self.register_buffer("cluster_size", torch.zeros(n_embed))  # [n_embed]
        self.register_buffer("embed_avg", embed.clone())  # [dim, n_embed]

    @torch.no_grad()
    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code under squared L2 for each row of `flat` [n, dim] → [n].

        dist = ‖z‖² − 2 z·E + ‖E‖², evaluated in place in the original's order (bit-identical, with one
        [n, n_embed] buffer instead of four); argmin(dist) is the original's argmax(−dist), first on ties.
        """
        dist = flat @ self.embed  # [n, n_embed]
        dist.mul_(-2).add_(flat.pow(2).sum(1, keepdim=True)).add_(self.embed.pow(2).sum(0, keepdim=True))
        return dist.argmin(1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize `z` [..., dim] → (quantized [..., dim] with straight-through gradient, diff, ids [...]).

        `diff` = mse(quantized.detach(), z) is the commitment term; its gradient only reaches the encoder.
        """
        flat = z.reshape(-1, self.dim)  # [n, dim]
        ids = self.nearest(flat).view(z.shape[:-1])  # [...]
        quantized = self.embed_code(ids)  # looked up before the EMA step, as in the original
        if self.training:
            self._ema_update(flat.detach(), ids.flatten())
        diff = (quantized.detach() - z).pow(2).mean()
        quantized = z + (quantized - z).detach()
        return quantized, diff, ids

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        counts = torch.bincount(ids, minlength=self.n_embed).to(flat.dtype)  # [n_embed]
        sums = torch.zeros(self.n_embed, self.dim, dtype=flat.dtype, device=flat.device)
        sums.index_add_(0, ids, flat)  # [n_embed, dim]; the one-hot matmul without the one-hot matrix
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums.t(), alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.n_embed * self.eps) * n  # [n_embed]
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(0))

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor, threshold: float, generator: torch.Generator) -> int:
        """Move codes whose EMA count is below `threshold` onto random rows of `flat` [n, dim]; count them.

        A restarted code gets `cluster_size = threshold` and a matching `embed_avg`, so the next EMA update
        keeps it where it was put unless it attracts vectors; if it still attracts too few, it restarts again.
        """
        dead = (self.cluster_size < threshold).nonzero().squeeze(1)  # [k]
        if dead.numel() == 0:
            return 0
        picks = torch.randint(flat.shape[0], (dead.numel(),), generator=generator).to(flat.device)
        samples = flat[picks].t().to(self.embed.dtype)  # [dim, k]
        self.embed[:, dead] = samples
        self.embed_avg[:, dead] = samples * threshold
        self.cluster_size[dead] = threshold
        return dead.numel()

    def embed_code(self, ids: torch.Tensor) -> torch.Tensor:
        """Code vectors for `ids` [...] → [..., dim]."""
        return F.embedding(ids, self.embed.t())


class VQVAEOutput(NamedTuple):
    """Everything one training forward produces."""

    recon: torch.Tensor  # [b, 3, H, W] normalised reconstruction
    diff: torch.Tensor  # [] commitment term mse(quantized.detach(), latent)
    ids: torch.Tensor  # [b, h, w] codes
    latent: torch.Tensor  # [b, h, w, embed_dim] encoder output before quantization


class VQVAE(nn.Module):
    """The CogView image tokenizer (released: 256² px → 32×32 codes from a codebook of 8192).

    The arguments are the original constructor's. `stride` is the original layout code: 6 gives ×8
    down-sampling (3 stride-2 convolutions), 4 gives ×4, 2 gives ×2. `n_res_block`, `n_res_channel` and
    `simple` are accepted for signature compatibility; only `n_res_block == 0` and `simple=True` (the released
    layout) are implemented. As in the original, `channel == 2048` forces `n_res_block = 0`.
    """

    def __init__(
        self,
        in_channel: int = 3,
        channel: int = 512,
        n_res_block: int = 0,
        n_res_channel: int = 32,
        embed_dim: int = 256,
        n_embed: int = 8192,
        stride: int = 6,
        simple: bool = True,
        decay: float = 0.99,
    ):
        super().__init__()
        if channel == 2048:
            n_res_block = 0
        if n_res_block != 0 or not simple:
            raise ValueError(
                f"Only the released VQ-VAE layout (simple=True, n_res_block=0) is implemented, "
                f"got simple={simple}, n_res_block={n_res_block}."
            )
        n_down = num_downsamples(stride)
        self.config = {
            "in_channel": in_channel,
            "channel": channel,
            "embed_dim": embed_dim,
            "n_embed": n_embed,
            "stride": stride,
            "decay": decay,
        }
        self.downsample_factor = 2**n_down
        self.enc_b = Encoder(in_channel, channel, embed_dim, n_down)
        self.quantize_t = Quantize(embed_dim, n_embed, decay=decay)
        self.dec = Decoder(embed_dim, channel, in_channel, n_down)

    @property
    def n_embed(self) -> int:
        """Codebook size, i.e. the number of image tokens."""
        return self.quantize_t.n_embed

    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image [b, 3, H, W] → (quantized [b, embed_dim, h, w], diff, ids [b, h, w])."""
        quantized, diff, ids = self.quantize_t(self.enc_b(img))  # [b, h, w, d], [], [b, h, w]
        return quantized.permute(0, 3, 1, 2), diff, ids

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized latent [b, embed_dim, h, w] → normalised image [b, 3, f*h, f*w]."""
        return self.dec(quantized)

    def decode_code(self, ids: torch.Tensor) -> torch.Tensor:
        """Codes [b, h, w] → normalised image [b, 3, f*h, f*w]."""
        return self.decode(self.quantize_t.embed_code(ids).permute(0, 3, 1, 2))

    def forward(self, img: torch.Tensor) -> VQVAEOutput:
        """Reconstruct a normalised image [b, 3, H, W], keeping the codes and the pre-quantization latent.

        (The original returned only `(recon, diff)`; training also needs the latent to restart dead codes.)
        """
        latent = self.enc_b(img)  # [b, h, w, d]
        quantized, diff, ids = self.quantize_t(latent)
        return VQVAEOutput(self.decode(quantized.permute(0, 3, 1, 2)), diff, ids, latent)
