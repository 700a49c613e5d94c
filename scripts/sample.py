#!/usr/bin/env python
"""Sample from a trained model of the zoo, given only its checkpoint:

    python scripts/sample.py --ckpt PATH --prompt "Winston" [--max_new_tokens 500] [--temperature 0.8] [--top_k K]
    python scripts/sample.py --ckpt PATH --n 64 --out grid.png [--sampler ddim --steps 50 --eta 0]
    python scripts/sample.py --ckpt PATH --n 64 --out grid.png --steps 18 --guidance 2 --label 3
    python scripts/sample.py --ckpt PATH --n 8 --inpaint box|random|grid --out inpainted.png
    python scripts/sample.py --ckpt PATH --n 8 --invert --steps 100 --out inverted.png

A model with `generate` (a language model) continues the prompt and prints the text; the vocabulary is
read from the checkpoint, so no data file is needed. A model with `sample(n)` (VAE, diffusion, ...) draws
n images in [0, 1] and saves them as one grid PNG; `--sampler`, `--steps`, `--eta`, `--guidance` and `--label`
go to `sample` when given and the model's `sample` takes them (diffusion models). `--inpaint MASK` and `--invert` take the first n test images of the data the model
was trained on (`--data.root` if they moved): the first writes rows of originals, masked inputs and
completions (`inpaint(x, mask)`), the second originals, noise latents (when the codes are images, as a
diffusion model's are) and regenerations (`encode`, `decode`) and prints the reconstruction error.
"""

import argparse
import inspect
import math
import sys

import torch
from argument_types import device, output_file, positive_int
from torchvision.utils import save_image

from callbacks.sample_grid import scatter_figure
from lightning_modules.checkpoint import load_datamodule, load_model, read_checkpoint
from lightning_modules.masks import MASKS
from lightning_modules.protocols import Encodes, GeneratesText, Inpaints, Samples, missing, require
from zoo.errors import BAD_INPUT, report

DEFAULT_OUT = "samples.png"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a .ckpt file written by scripts/fit.py")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:1, ...")
    text = parser.add_argument_group("text models (generate)")
    text.add_argument("--prompt", default="\n", help="the text to continue (default: a new line)")
    text.add_argument("--max_new_tokens", type=positive_int, default=500, help="characters to generate")
    text.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy")
    text.add_argument("--top_k", type=positive_int, default=None, help="sample among the k likeliest tokens only")
    text.add_argument("--num_samples", type=positive_int, default=1, help="independent continuations to print")
    images = parser.add_argument_group("image models (sample)")
    images.add_argument("--n", type=positive_int, default=64, help="images to draw")
    images.add_argument("--out", type=output_file, help=f"PNG file for the grid (default {DEFAULT_OUT})")
    images.add_argument("--sampler", help="diffusion sampler: ddpm (all T steps) or ddim")
    images.add_argument("--steps", type=positive_int, help="diffusion sampling, inpainting or inversion steps")
    images.add_argument("--eta", type=float, help="DDIM stochasticity: 0 deterministic, 1 ancestral")
    images.add_argument(
        "--guidance", type=float, help="classifier-free guidance weight: 1 plain conditional, 0 unconditional"
    )
    images.add_argument("--label", type=int, help="the class of every image (class-conditional models)")
    images.add_argument("--inpaint", choices=sorted(MASKS), help="complete test images hidden by this mask")
    images.add_argument(
        "--resample", type=positive_int, default=1, help="RePaint resampling rounds per inpainting step"
    )
    images.add_argument("--invert", action="store_true", help="invert test images to noise and regenerate them")
    images.add_argument("--data.root", dest="data_root", help="where the test images are (default: as trained)")
    return parser.parse_args(argv)


def default_output() -> str:
    """DEFAULT_OUT, checked as a given --out is, but only by the image paths: text sampling writes no file."""
    try:
        return output_file(DEFAULT_OUT)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"--out: {error} (the default --out)") from None


def checkpoint_vocab(path: str) -> str:
    """The vocabulary a text DataModule saved in the checkpoint (its `state_dict`, under its class name)."""
    for value in read_checkpoint(path).values():
        if isinstance(value, dict) and isinstance(value.get("vocab"), str):
            return value["vocab"]
    raise ValueError(f"checkpoint {path} holds no vocabulary; was it trained on --data text?")


def encode(prompt: str, vocab: str) -> torch.Tensor:
    if not prompt:
        raise ValueError("--prompt is empty; give at least one character (e.g. a new line, the default)")
    index = {char: i for i, char in enumerate(vocab)}
    unknown = sorted({char for char in prompt if char not in index})
    if unknown:
        raise ValueError(
            f"the prompt has characters outside the model's vocabulary: {''.join(unknown)!r}; "
            f"remove them (the vocabulary: {vocab!r})"
        )
    return torch.tensor([[index[char] for char in prompt]], dtype=torch.long)


def sample_text(model, options: argparse.Namespace) -> str:
    vocab = checkpoint_vocab(options.ckpt)
    prompt = encode(options.prompt, vocab).to(model.device).expand(options.num_samples, -1)
    generator = torch.Generator(device=model.device).manual_seed(options.seed)
    tokens = model.generate(prompt, options.max_new_tokens, options.temperature, options.top_k, generator=generator)
    return "\n---\n".join("".join(vocab[i] for i in row.tolist()) for row in tokens)


def options_taken(method, names: tuple[str, ...], options: argparse.Namespace) -> dict:
    """The options among `names` that were given, refused in one line when `method` (a model's) does not take them."""
    given = {k: getattr(options, k) for k in names if getattr(options, k) is not None}
    accepted = inspect.signature(method).parameters
    for key in given:
        if key not in accepted:
            raise ValueError(f"{type(method.__self__).__name__}.{method.__name__} takes no --{key}; drop it")
    return given


def sampler_arguments(model, options: argparse.Namespace) -> dict:
    return options_taken(model.sample, ("sampler", "steps", "eta", "guidance", "label"), options)


def sample_images(model, options: argparse.Namespace) -> str:
    torch.manual_seed(options.seed)
    with torch.no_grad():
        samples = model.sample(options.n, **sampler_arguments(model, options)).float().cpu()
    if samples.dim() == 2:  # points (a toy 2-D model): a scatter plot, not an image grid
        if samples.shape[1] != 2:
            raise ValueError(f"{type(model).__name__} samples {samples.shape[1]}-D points; only 2-D ones can be drawn")
        scatter_figure(samples, None, f"{options.n} samples of {type(model).__name__}").savefig(options.out)
    else:
        save_image(samples.clamp(0, 1), options.out, nrow=math.ceil(math.sqrt(options.n)))
    return f"{options.n} samples of {type(model).__name__} written to {options.out}"


def test_images(options: argparse.Namespace) -> torch.Tensor:
    """The first --n test images of the DataModule the checkpoint records, as a test step sees them."""
    datamodule = load_datamodule(options.ckpt, options.data_root)
    if datamodule is None or not callable(getattr(datamodule, "batch", None)):
        raise ValueError(f"checkpoint {options.ckpt} records no image DataModule; --inpaint and --invert need one")
    return datamodule.batch("test", options.n)[0]


def inpaint_images(model, options: argparse.Namespace) -> str:
    require(model, Inpaints, "sample.py --inpaint")
    x = test_images(options).to(model.device)
    mask = MASKS[options.inpaint](x.shape).to(x.device)
    generator = torch.Generator(device=model.device).manual_seed(options.seed)
    filled = model.inpaint(x, mask, steps=options.steps, resample=options.resample, generator=generator)
    save_image(torch.cat([x, x * mask, filled]).cpu(), options.out, nrow=len(x))
    return f"{len(x)} test images with a {options.inpaint} mask inpainted to {options.out} (rows: image, input, output)"


def invert_images(model, options: argparse.Namespace) -> str:
    require(model, Encodes, "sample.py --invert")
    steps = options_taken(model.encode, ("steps",), options)
    x = test_images(options).to(model.device)
    with torch.no_grad():
        latents = model.encode(x, **steps)
        back = model.decode(latents, **steps)
    error = (back - x).pow(2).mean().item()
    rows = [x, back]
    if latents.shape == x.shape:  # noise images (DDIM inversion), ~N(0, 1): +-3 sigma onto [0, 1], shown between
        rows.insert(1, ((latents / 3 + 1) / 2).clamp(0, 1))
    save_image(torch.cat(rows).cpu(), options.out, nrow=len(x))
    return f"{len(x)} test images inverted and regenerated to {options.out}; reconstruction MSE {error:.2e}"


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    try:
        model = load_model(options.ckpt, map_location=options.device)
        if not missing(model, GeneratesText):
            if options.inpaint or options.invert:
                flag = "--inpaint" if options.inpaint else "--invert"
                raise ValueError(f"{type(model).__name__} generates text: {flag} is for image models; drop it")
            print(sample_text(model, options))
            return 0
        options.out = options.out or default_output()
        if options.inpaint:
            print(inpaint_images(model, options))
        elif options.invert:
            print(invert_images(model, options))
        else:
            require(model, Samples, "sample.py (or GeneratesText for --prompt)")
            print(sample_images(model, options))
    except BAD_INPUT as error:
        return report("sample.py", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
