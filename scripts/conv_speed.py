#!/usr/bin/env python
"""Speed of the convolutions written with unfold/fold and matrix products (blocks/conv_from_scratch.py) against
PyTorch's own (oneDNN on a CPU, cuDNN on a GPU): forward + backward of each convolution of the conv autoencoder,
at its sizes, timed with torch.utils.benchmark on one thread by default.

python scripts/conv_speed.py [--batch_size 128] [--channels 32 64] [--threads 1] [--min_run_time 1] [--device cpu]
"""

import argparse
import sys

import torch
import torch.utils.benchmark as benchmark
from torch import nn

from lightning_modules.blocks.autoencoder_nets import ConvDecoder, ConvEncoder
from lightning_modules.blocks.conv_from_scratch import ScratchConv2d, ScratchConvTranspose2d
from zoo.errors import BAD_INPUT, report

Layer = tuple[nn.Module, tuple[int, ...], tuple[int, ...]]  # the layer, its input's shape, its output's shape


def autoencoder_convolutions(image_shape: tuple[int, int, int], channels: list[int], batch_size: int) -> list[Layer]:
    """The convolutions of the conv autoencoder's encoder and decoder (blocks/autoencoder_nets.py), in order, each
    with the input and output shapes it sees on a batch of `batch_size` images."""
    encoder, decoder = ConvEncoder(image_shape, channels, 32), ConvDecoder(32, channels[::-1], image_shape)
    layers: list[Layer] = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        layers.append((module, (batch_size, *inputs[0].shape[1:]), (batch_size, *output.shape[1:])))

    convolutions = [
        m for m in [*encoder.modules(), *decoder.modules()] if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    hooks = [m.register_forward_hook(record) for m in convolutions]
    with torch.no_grad():
        decoder(encoder(torch.zeros(1, *image_shape)))
    for hook in hooks:
        hook.remove()
    return layers


def scratch_copy(layer: nn.Module) -> nn.Module:
    """The same layer (options and weights) with the forward written from unfold/fold and matrix products."""
    cls = ScratchConvTranspose2d if isinstance(layer, nn.ConvTranspose2d) else ScratchConv2d
    options = {
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "bias": layer.bias is not None,
    }
    if cls is ScratchConvTranspose2d:
        options["output_padding"] = layer.output_padding
    copy = cls(layer.in_channels, layer.out_channels, layer.kernel_size, **options)
    copy.load_state_dict(layer.state_dict())
    return copy


def forward_backward(layer: nn.Module, x: torch.Tensor, output_size: tuple[int, ...]) -> None:
    """One training step's share of the layer: its output (at the autoencoder's size) and the gradients of the
    weights and of the input."""
    out = layer(x, output_size=output_size) if isinstance(layer, nn.ConvTranspose2d) else layer(x)
    out.sum().backward()


def time_layer(layer: nn.Module, in_shape, out_shape, threads: int, min_run_time: float, device: str) -> float:
    """Median seconds of a forward + backward step (torch.utils.benchmark's blocked_autorange)."""
    x = torch.randn(in_shape, device=device, requires_grad=True)
    timer = benchmark.Timer(
        stmt="forward_backward(layer, x, size)",
        globals={"forward_backward": forward_backward, "layer": layer.to(device), "x": x, "size": out_shape[2:]},
        num_threads=threads,
    )
    return timer.blocked_autorange(min_run_time=min_run_time).median


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--image_shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64], help="the encoder's conv channels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min_run_time", type=float, default=1.0, help="seconds of timing per layer and kind")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse(sys.argv[1:] if argv is None else argv)
        if options.batch_size < 1 or options.threads < 1:
            raise ValueError("--batch_size and --threads must be >= 1")
        layers = autoencoder_convolutions(tuple(options.image_shape), options.channels, options.batch_size)
        cpu_backend = "oneDNN" if torch.backends.mkldnn.is_available() else "native"
        backend = "cuDNN" if options.device.startswith("cuda") else cpu_backend
        print(f"forward + backward, batch {options.batch_size}, {options.threads} thread(s), {options.device}")
        print(f"| layer | input | output | PyTorch ({backend}) ms | unfold/fold ms | ratio |")
        print("|---|---|---|---|---|---|")
        for layer, in_shape, out_shape in layers:
            timings = [
                time_layer(impl, in_shape, out_shape, options.threads, options.min_run_time, options.device)
                for impl in (layer, scratch_copy(layer))
            ]
            shapes = ["x".join(map(str, s[1:])) for s in (in_shape, out_shape)]
            print(
                f"| {type(layer).__name__} | {shapes[0]} | {shapes[1]} | {timings[0] * 1e3:.2f} | "
                f"{timings[1] * 1e3:.2f} | {timings[1] / timings[0]:.2f} |"
            )
    except BAD_INPUT as error:
        return report("conv_speed.py", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
