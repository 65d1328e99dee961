"""VQ-VAE architecture: the released keys/shapes, down-sampling, and the EMA quantizer against brute force."""

import pytest
import torch
import torch.nn.functional as F

from vqvae import VQVAE, Quantize, new_model

# Reference §5.2: every key and shape of the released vqvae_hard_biggerset_011.pt (without `module.`).
RELEASED_SHAPES = {
    "enc_b.blocks.0.weight": [512, 3, 4, 4],
    "enc_b.blocks.0.bias": [512],
    "enc_b.blocks.2.weight": [512, 512, 4, 4],
    "enc_b.blocks.2.bias": [512],
    "enc_b.blocks.4.weight": [512, 512, 4, 4],
    "enc_b.blocks.4.bias": [512],
    "enc_b.blocks.6.weight": [256, 512, 1, 1],
    "enc_b.blocks.6.bias": [256],
    "quantize_t.embed": [256, 8192],
    "quantize_t.cluster_size": [8192],
    "quantize_t.embed_avg": [256, 8192],
    "dec.blocks.0.weight": [256, 512, 4, 4],
    "dec.blocks.0.bias": [512],
    "dec.blocks.2.weight": [512, 512, 4, 4],
    "dec.blocks.2.bias": [512],
    "dec.blocks.4.weight": [512, 512, 4, 4],
    "dec.blocks.4.bias": [512],
    "dec.blocks.6.weight": [3, 512, 1, 1],
    "dec.blocks.6.bias": [3],
}


def test_default_model_has_the_released_keys_shapes_and_parameter_count():
    with torch.device("meta"):
        model = new_model()
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == RELEASED_SHAPES
    assert sum(p.numel() for p in model.parameters()) == 19_034_883
    assert model.downsample_factor == 8
    assert model.n_embed == 8192
    assert isinstance(model.dec.blocks[0], torch.nn.ConvTranspose2d)


def test_channel_2048_forces_no_residual_blocks_and_other_layouts_are_refused():
    with torch.device("meta"):
        wide = VQVAE(channel=2048, n_res_block=2)
        assert list(wide.state_dict()["enc_b.blocks.6.weight"].shape) == [256, 2048, 1, 1]
        with pytest.raises(ValueError, match="n_res_block=2"):
            VQVAE(n_res_block=2)
        with pytest.raises(ValueError, match="simple=False"):
            VQVAE(simple=False)
        with pytest.raises(ValueError, match="stride must be an even number"):
            VQVAE(stride=5)


@pytest.mark.parametrize(("stride", "factor"), [(2, 2), (4, 4), (6, 8), (8, 16)])
def test_encoder_downsamples_and_decoder_upsamples_by_the_factor(stride, factor):
    torch.manual_seed(0)
    model = VQVAE(channel=8, embed_dim=4, n_embed=16, stride=stride).eval()
    assert model.downsample_factor == factor
    img = torch.randn(2, 3, 32, 48)
    latent = model.enc_b(img)
    assert latent.shape == (2, 32 // factor, 48 // factor, 4)  # NHWC
    quantized, diff, ids = model.encode(img)
    assert quantized.shape == (2, 4, 32 // factor, 48 // factor)
    assert ids.shape == (2, 32 // factor, 48 // factor)
    assert diff.shape == ()
    assert model.decode(quantized).shape == img.shape
    assert model(img).recon.shape == img.shape


@pytest.fixture
def quantizer():
    torch.manual_seed(0)
    return Quantize(dim=6, n_embed=20, decay=0.9)


def test_quantizer_picks_the_brute_force_nearest_code(quantizer):
    z = torch.randn(3, 5, 7, 6)
    quantized, diff, ids = quantizer.eval()(z)
    codebook = quantizer.embed.t()  # [n_embed, dim]
    brute = torch.stack([((codebook - v).pow(2).sum(1)).argmin() for v in z.reshape(-1, 6)]).view(3, 5, 7)
    assert torch.equal(ids, brute)
    torch.testing.assert_close(quantized, codebook[brute])
    torch.testing.assert_close(quantizer.embed_code(ids), codebook[brute])
    torch.testing.assert_close(diff, F.mse_loss(codebook[brute], z))


def test_quantizer_matches_the_original_distance_formula_exactly():
    torch.manual_seed(1)
    quantizer = Quantize(dim=32, n_embed=256)
    flat = torch.randn(2048, 32) * 0.3
    embed = quantizer.embed
    original = (  # the original implementation, literally
        -(flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed + embed.pow(2).sum(0, keepdim=True))
    ).argmax(1)
    assert torch.equal(quantizer.nearest(flat), original)


def test_quantizer_gradient_is_straight_through_and_diff_only_reaches_the_input(quantizer):
    z = torch.randn(4, 6, requires_grad=True)
    quantized, diff, _ = quantizer.eval()(z)
    (quantized * torch.arange(6.0)).sum().backward()
    torch.testing.assert_close(z.grad, torch.arange(6.0).expand(4, 6))
    z.grad = None
    diff.backward()
    expected = 2 * (z - quantized).detach() / z.numel()
    torch.testing.assert_close(z.grad, expected)


def test_quantizer_ema_update_only_in_training_mode(quantizer):
    z = torch.randn(50, 6)
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    quantizer.eval()(z)
    assert all(torch.equal(before[k], v) for k, v in quantizer.state_dict().items())

    quantized, _, ids = quantizer.train()(z)
    torch.testing.assert_close(quantized, before["embed"].t()[ids])  # the codebook before this update
    onehot = F.one_hot(ids, 20).float()  # [50, 20]
    cluster = 0.9 * before["cluster_size"] + 0.1 * onehot.sum(0)
    embed_avg = 0.9 * before["embed_avg"] + 0.1 * z.t() @ onehot
    n = cluster.sum()
    smoothed = (cluster + 1e-5) / (n + 20 * 1e-5) * n
    torch.testing.assert_close(quantizer.cluster_size, cluster)
    torch.testing.assert_close(quantizer.embed_avg, embed_avg)
    torch.testing.assert_close(quantizer.embed, embed_avg / smoothed)


def test_restart_dead_codes_moves_only_rarely_used_codes_onto_batch_vectors(quantizer):
    quantizer.cluster_size.copy_(torch.linspace(0, 2, 20))  # codes 0..9 are below 1.0
    before = quantizer.embed.clone()
    flat = torch.randn(30, 6)
    restarted = quantizer.restart_dead_codes(flat, 1.0, torch.Generator().manual_seed(0))
    assert restarted == 10
    for code in range(10):
        assert any(torch.equal(quantizer.embed[:, code], row) for row in flat)
    assert torch.equal(quantizer.embed[:, 10:], before[:, 10:])
    assert torch.all(quantizer.cluster_size[:10] == 1.0)
    torch.testing.assert_close(quantizer.embed_avg[:, :10], quantizer.embed[:, :10])
    # Consistent with the EMA: an update that assigns nothing to a restarted code leaves it where it was put.
    restarted_codes = quantizer.embed[:, :10].clone()
    quantizer.train()(quantizer.embed[:, 15].unsqueeze(0))  # assigned to code 15 (distance 0)
    torch.testing.assert_close(quantizer.embed[:, :10], restarted_codes, rtol=1e-3, atol=1e-4)


def test_a_quantizer_draws_its_codebook_as_randn_and_a_meta_one_draws_nothing():
    torch.manual_seed(2)
    drawn = Quantize(dim=6, n_embed=20).embed
    torch.manual_seed(2)
    assert torch.equal(drawn, torch.randn(6, 20))
    state = torch.random.get_rng_state()
    with torch.device("meta"):
        assert Quantize(dim=6, n_embed=20).embed.is_meta
    assert torch.equal(torch.random.get_rng_state(), state)
