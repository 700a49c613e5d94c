"""Convolutions from unfold/fold and matrix products: outputs and gradients against PyTorch's, gradcheck in
float64, the drop-in layers' parameters and state_dicts, the conv autoencoder built with them, the speed script
and fit.py."""

import conv_speed
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.autoencoders.autoencoder import Autoencoder
from lightning_modules.blocks.conv_from_scratch import (
    ScratchConv2d,
    ScratchConvTranspose2d,
    conv2d,
    conv_transpose2d,
)

# (kernel, stride, padding, dilation): the autoencoder's (4, 2, 1, 1) and others, square and not.
CONV_OPTIONS = [(4, 2, 1, 1), (3, 1, 0, 1), (3, 1, 1, 1), (3, 2, 2, 1), (3, 3, 1, 2), ((3, 2), (2, 1), (1, 0), (1, 2))]
# (kernel, stride, padding, output_padding, dilation); output_padding must stay below stride or dilation.
TRANSPOSED_OPTIONS = [(4, 2, 1, 0, 1), (4, 2, 1, 1, 1), (3, 1, 0, 0, 1), (3, 3, 2, 2, 1), (3, 2, 1, 1, 2),
                      ((3, 2), (2, 3), (1, 0), (1, 2), (1, 1))]  # fmt: skip


def kernel_shape(kernel) -> tuple[int, int]:
    return (kernel, kernel) if isinstance(kernel, int) else kernel


def conv_inputs(c_in: int, c_out: int, kernel, dtype=torch.float32, transposed: bool = False, size=(2, 9, 8)):
    generator = torch.Generator().manual_seed(0)
    shape = (c_in, c_out) if transposed else (c_out, c_in)
    x = torch.randn(size[0], c_in, *size[1:], dtype=dtype, generator=generator)
    weight = torch.randn(*shape, *kernel_shape(kernel), dtype=dtype, generator=generator)
    bias = torch.randn(c_out, dtype=dtype, generator=generator)
    return [t.requires_grad_() for t in (x, weight, bias)]


def assert_same_outputs_and_gradients(ours, theirs, inputs):
    """Outputs and the gradients of <out, g> for a random g, within 1e-5: float32 sums of C_in kh kw = 36 or fewer
    products of N(0, 1) values (a sum's size ~6, its rounding ~6 * sqrt(36) * 6e-8 = 2e-6), taken in another order
    than PyTorch's."""
    out, expected = ours(*inputs), theirs(*inputs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    for mine, reference in zip(
        torch.autograd.grad(out, inputs, g), torch.autograd.grad(expected, inputs, g), strict=True
    ):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation"), CONV_OPTIONS)
def test_conv2d_equals_pytorchs(kernel, stride, padding, dilation):
    options = {"stride": stride, "padding": padding, "dilation": dilation}
    assert_same_outputs_and_gradients(
        lambda x, w, b: conv2d(x, w, b, **options),
        lambda x, w, b: F.conv2d(x, w, b, **options),
        conv_inputs(3, 4, kernel),
    )


@pytest.mark.parametrize(("kernel", "stride", "padding", "output_padding", "dilation"), TRANSPOSED_OPTIONS)
def test_conv_transpose2d_equals_pytorchs(kernel, stride, padding, output_padding, dilation):
    options = {"stride": stride, "padding": padding, "output_padding": output_padding, "dilation": dilation}
    assert_same_outputs_and_gradients(
        lambda x, w, b: conv_transpose2d(x, w, b, **options),
        lambda x, w, b: F.conv_transpose2d(x, w, b, **options),
        conv_inputs(3, 4, kernel, transposed=True),
    )


@pytest.mark.parametrize("transposed", [False, True])
def test_gradcheck_in_float64(transposed):
    # Central differences against autograd, to gradcheck's float64 defaults; the autoencoder's layer options, on
    # small maps (gradcheck's cost grows with the product of the input and output sizes).
    inputs = conv_inputs(2, 3, 4, torch.float64, transposed, size=(1, 5, 4))
    if transposed:
        assert torch.autograd.gradcheck(lambda x, w, b: conv_transpose2d(x, w, b, 2, 1, 1), inputs)
    else:
        assert torch.autograd.gradcheck(lambda x, w, b: conv2d(x, w, b, 2, 1), inputs)


def test_no_bias():
    x, weight, _ = conv_inputs(3, 4, 3)
    torch.testing.assert_close(conv2d(x, weight, None, 2, 1), F.conv2d(x, weight, None, 2, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("scratch", "reference"), [(ScratchConv2d, nn.Conv2d), (ScratchConvTranspose2d, nn.ConvTranspose2d)]
)
def test_the_layers_are_drop_ins(scratch, reference):
    """The same parameters, initialised alike from the same seed, and the same outputs."""
    torch.manual_seed(0)
    ours = scratch(3, 5, 4, stride=2, padding=1)
    torch.manual_seed(0)
    theirs = reference(3, 5, 4, stride=2, padding=1)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key])
    x = torch.randn(2, 3, 7, 7)
    if reference is nn.ConvTranspose2d:  # output_size picks the output_padding, as PyTorch's does
        for size in ((14, 14), (15, 15)):
            torch.testing.assert_close(ours(x, output_size=size), theirs(x, output_size=size), rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_unsupported_options_are_refused_in_one_line():
    with pytest.raises(ValueError, match="groups=1 only.*nn.Conv2d"):
        ScratchConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="groups=1 only.*nn.ConvTranspose2d"):
        ScratchConvTranspose2d(4, 4, 3, groups=2)
    for options in ({"padding": "same"}, {"padding_mode": "reflect"}):
        with pytest.raises(ValueError, match="zero padding given as numbers.*nn.Conv2d"):
            ScratchConv2d(4, 4, 3, **options)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 7, 9)])
def test_scratch_autoencoder_loads_the_torch_one_and_gives_its_outputs(shape):
    torch.manual_seed(0)
    scratch = Autoencoder(image_shape=shape, network="conv", latent_dim=8, conv_channels=(4, 8), conv_impl="scratch")
    reference = Autoencoder(image_shape=shape, network="conv", latent_dim=8, conv_channels=(4, 8))
    reference.load_state_dict(scratch.state_dict())
    assert any(isinstance(m, ScratchConvTranspose2d) for m in scratch.modules())
    x = torch.rand(3, *shape)
    torch.testing.assert_close(
        scratch.decode(scratch.encode(x)), reference.decode(reference.encode(x)), rtol=1e-5, atol=1e-5
    )


def test_bad_conv_impl_is_rejected():
    with pytest.raises(ValueError, match="--model.conv_impl"):
        Autoencoder(network="conv", conv_impl="fft")


def test_speed_script_times_each_convolution_of_the_autoencoder(capsys):
    layers = conv_speed.autoencoder_convolutions((1, 28, 28), [32, 64], 128)
    assert [(type(m).__name__, i[1:], o[1:]) for m, i, o in layers] == [
        ("Conv2d", (1, 28, 28), (32, 14, 14)),
        ("Conv2d", (32, 14, 14), (64, 7, 7)),
        ("ConvTranspose2d", (64, 7, 7), (32, 14, 14)),
        ("ConvTranspose2d", (32, 14, 14), (1, 28, 28)),
    ]
    assert conv_speed.main(["--batch_size", "2", "--channels", "4", "--min_run_time", "0.01"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| Conv")]
    assert [row.split(" | ")[1:3] for row in rows] == [["1x28x28", "4x14x14"], ["4x14x14", "1x28x28"]]


def test_fast_dev_run(data_root, fit_in_process):
    result = fit_in_process(
        "--model", "conv_from_scratch", "--trainer.fast_dev_run", "true", "--data.root", str(data_root),
        "--data.batch_size", "16",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/mse = " in result.stdout
