"""The autoencoders: their losses against independent computations, the corruptions' statistics, the
denoising model's PSNR, and both models through fit.py's main."""

import pytest
import torch

from lightning_modules.autoencoders.autoencoder import (
    Autoencoder,
    DenoisingAutoencoder,
    gaussian_noise,
    random_mask,
    reconstruction_loss,
    salt_and_pepper,
)


def test_reconstruction_losses_match_their_formulas():
    logits, x = torch.randn(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(reconstruction_loss(logits, x, "mse"), ((p - x) ** 2).mean())
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).mean()
    torch.testing.assert_close(reconstruction_loss(logits, x, "bce"), bce)


def test_mlp_ae_has_the_tiny_bottleneck():
    model = Autoencoder(image_shape=(1, 28, 28))
    widths = [layer.out_features for layer in model.encoder.modules() if isinstance(layer, torch.nn.Linear)]
    assert widths == [128, 64, 12, 3]
    assert not isinstance(list(model.encoder.net.modules())[-1], torch.nn.ReLU)  # the code is linear
    x = torch.rand(4, 1, 28, 28)
    assert model.encode(x).shape == (4, 3)
    out = model.decode(model.encode(x))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 7, 9)])
def test_conv_ae_reconstructs_the_exact_shape(shape):
    model = Autoencoder(image_shape=shape, network="conv", latent_dim=32, conv_channels=(4, 8))
    x = torch.rand(2, *shape)
    assert model.encode(x).shape == (2, 32) and model.decode(model.encode(x)).shape == x.shape
    model.loss(x).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gaussian_noise_has_the_stated_sigma():
    torch.manual_seed(0)
    x = torch.full((200_000,), 0.5)
    noisy = gaussian_noise(x, 0.1)  # 5 sigma from the clipping bounds: clipping is negligible
    # Standard errors: the mean's 0.1 / sqrt(2e5) = 2.2e-4, the std's 0.1 / sqrt(4e5) = 1.6e-4; 1e-3 is > 4 of them.
    assert abs(noisy.mean().item() - 0.5) < 1e-3 and abs(noisy.std().item() - 0.1) < 1e-3
    assert gaussian_noise(torch.zeros(1000), 0.5).min() == 0 and gaussian_noise(torch.ones(1000), 0.5).max() == 1


def test_salt_and_pepper_hits_the_stated_fraction_half_white():
    torch.manual_seed(0)
    x = torch.full((200_000,), 0.5)
    noisy = salt_and_pepper(x, 0.3)
    hit = noisy != 0.5
    # Binomial standard errors: sqrt(0.3 * 0.7 / 2e5) = 1.0e-3 for the fraction hit, sqrt(0.25 / 6e4) = 2.0e-3
    # for the white share of the 6e4 hits: the tolerances are 5 of them.
    assert abs(hit.float().mean().item() - 0.3) < 0.005
    assert set(noisy[hit].unique().tolist()) == {0.0, 1.0}
    assert abs((noisy[hit] == 1).float().mean().item() - 0.5) < 0.01


def test_random_mask_zeroes_the_stated_fraction_and_keeps_the_rest():
    torch.manual_seed(0)
    x = torch.rand(200_000) * 0.9 + 0.1
    noisy = random_mask(x, 0.25)
    zeroed = noisy == 0  # x >= 0.1, so only the mask makes zeros
    # Binomial standard error sqrt(0.25 * 0.75 / 2e5) = 9.7e-4: the tolerance is 5 of them.
    assert abs(zeroed.float().mean().item() - 0.25) < 0.005
    assert torch.equal(noisy[~zeroed], x[~zeroed])


def flip_corruption(model: DenoisingAutoencoder) -> DenoisingAutoencoder:
    """A corruption without noise (a left-right flip), so the test knows what the model was fed."""
    model.corrupt = lambda x: x.flip(-1)
    return model


def test_dae_trains_on_corrupted_inputs_against_clean_targets():
    torch.manual_seed(0)
    model = flip_corruption(DenoisingAutoencoder(image_shape=(1, 8, 8), network="mlp", hidden_dims=(16,), latent_dim=4))
    x = torch.rand(5, 1, 8, 8)
    expected = ((model.decode(model.encode(x.flip(-1))) - x) ** 2).mean()
    torch.testing.assert_close(model.loss(x), expected)
    assert not torch.allclose(model.loss(x), ((model.decode(model.encode(x)) - x) ** 2).mean())


def test_dae_psnr_is_computed_against_clean_images():
    torch.manual_seed(0)
    model = flip_corruption(DenoisingAutoencoder(image_shape=(1, 8, 8), network="mlp", hidden_dims=(16,), latent_dim=4))
    model.log = lambda *args, **kwargs: None
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        model.test_step((x[:4], torch.zeros(4)), 0)
        model.test_step((x[4:], torch.zeros(2)), 1)
        denoised = model.decode(model.encode(x.flip(-1)))
    # PSNR of the whole set's MSE, 10 log10(1 / MSE); float32 sums of 384 squares: relative error ~1e-6,
    # a few 1e-6 dB, inside assert_close's float32 tolerance.
    psnr = lambda a: 10 * torch.log10(1 / ((a - x) ** 2).mean())  # noqa: E731
    torch.testing.assert_close(model.test_noisy_psnr.compute(), psnr(x.flip(-1)))
    torch.testing.assert_close(model.test_psnr.compute(), psnr(denoised))


def test_bad_corruption_is_rejected():
    with pytest.raises(ValueError, match="corruption"):
        DenoisingAutoencoder(image_shape=(1, 8, 8), corruption="blur")


@pytest.mark.parametrize(
    ("name", "metric", "extra"),
    [
        ("ae", "test/mse = ", ()),
        ("dae", "test/psnr_gain_db = ", ("--model.corruption", "salt_and_pepper", "--model.noise_level", "0.2")),
    ],
)
def test_fast_dev_run(name, metric, extra, data_root, tmp_path, fit_in_process):
    result = fit_in_process(
        "--model", name, "--trainer.fast_dev_run", "true", "--data.root", str(data_root), "--data.batch_size", "16",
        *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert metric in result.stdout
    assert not list(tmp_path.glob("**/*.png"))  # fast_dev_run's dummy logger: the callbacks write nothing
