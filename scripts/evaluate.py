#!/usr/bin/env python
"""Evaluate a checkpoint written by scripts/fit.py and print the model's own figures:

    python scripts/evaluate.py --ckpt PATH [--episodes N] [--seed S] [--video out.gif]

The checkpoint names its model class, so no model name is needed. A model plugs in by defining
  evaluate(self, seed: int = ..., [episodes: int = ...]) -> dict[str, float]
      its figures, printed one per line as `name = value`; `--seed` is always passed (the first evaluation
      episode, or the seed of whatever randomness the evaluation draws), `--episodes` only when given (a model
      whose evaluate takes no `episodes` rejects it);
  render(self, seed: int = ...) -> list[numpy.ndarray]                       (optional, for --video)
      the frames, (H, W, 3) uint8, of one episode (or any sequence worth watching), saved as an animated GIF.
PPO plays 20 greedy episodes and prints their mean and standard deviation; its --video is one greedy episode.
A generative model's evaluate may also take `fid_classifier`, `samplers` and `data_root`, passed when given:
DDPM prints the classifier FID of each sampler against the test set and its DDIM inversion error:

    python scripts/evaluate.py --ckpt PATH --fid_classifier runs/fid/lenet5_mnist.ckpt \
        --samplers ddpm,ddim50,ddim20 --data.root DIR
"""

import argparse
import inspect
import os
import sys

import numpy as np
import torch
from PIL import Image

from lightning_modules.checkpoint import load_model


def save_gif(frames: list[np.ndarray], path: str, fps: float) -> None:
    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a .ckpt file written by scripts/fit.py")
    parser.add_argument("--episodes", type=int, help="episodes to play (default: the model's own, 20 for PPO)")
    parser.add_argument("--seed", type=int, help="seed of the evaluation (default: the model's own)")
    parser.add_argument("--video", metavar="PATH.gif", help="also save one episode as an animated GIF")
    parser.add_argument("--fps", type=float, default=50.0, help="frames per second of the GIF (default 50)")
    generative = parser.add_argument_group("generative models")
    generative.add_argument("--fid_classifier", help="classifier checkpoint whose features the FID uses")
    generative.add_argument("--samplers", help="comma-separated samplers to score, e.g. ddpm,ddim50,ddim20")
    generative.add_argument("--data.root", dest="data_root", help="where the test images are (default: as trained)")
    return parser.parse_args(argv)


def optional_arguments(evaluate, options: argparse.Namespace, name: str) -> dict:
    """The generative-model options that were given, refused in one line when the model does not take them."""
    given = {k: getattr(options, k) for k in ("fid_classifier", "samplers", "data_root")}
    given = {k: v for k, v in given.items() if v is not None}
    accepted = inspect.signature(evaluate).parameters
    for key in given:
        if key not in accepted:
            flag = "--data.root" if key == "data_root" else f"--{key}"
            raise ValueError(f"{name}'s evaluation takes no {flag}; drop it")
    return given


def run(options: argparse.Namespace) -> list[str]:
    model = load_model(options.ckpt)
    name = type(model).__name__
    evaluate = getattr(model, "evaluate", None)
    if evaluate is None:
        raise ValueError(f"{name} defines no evaluate() method; see the docstring of scripts/evaluate.py")
    kwargs = {} if options.seed is None else {"seed": options.seed}
    if options.episodes is not None:
        if "episodes" not in inspect.signature(evaluate).parameters:
            raise ValueError(f"{name} is not evaluated in episodes; drop --episodes")
        if options.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {options.episodes}")
        kwargs["episodes"] = options.episodes
    kwargs.update(optional_arguments(evaluate, options, name))
    if options.video and not options.video.lower().endswith(".gif"):
        raise ValueError(f"--video writes a GIF; name the file *.gif, got {options.video}")
    if options.video and not hasattr(model, "render"):
        raise ValueError(f"{name} has nothing to render; drop --video")
    with torch.no_grad():
        figures = evaluate(**kwargs)
        lines = [f"{name} from {options.ckpt}"]
        lines += [
            f"  {key} = {value:.4f}" if isinstance(value, float) else f"  {key} = {value}"
            for key, value in figures.items()
        ]
        if options.video:
            frames = model.render(**({} if options.seed is None else {"seed": options.seed}))
            save_gif(frames, options.video, options.fps)
            lines.append(f"  video: {options.video} ({len(frames)} frames)")
    return lines


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    try:
        lines = run(options)
    except (ValueError, FileNotFoundError) as error:
        if os.environ.get("LIGHTNING_ZOO_DEBUG"):
            raise
        print(f"evaluate.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
