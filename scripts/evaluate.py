#!/usr/bin/env python
"""Print the figures of a checkpoint written by scripts/fit.py, for a model of any family:

    python scripts/evaluate.py --ckpt PATH [--data.root DIR] [--device cpu|cuda] [model options] [--video out.gif]
                               [--json PATH] [--raw-weights]

The checkpoint names its model class and the DataModule it was trained with, so no name is needed; the
data is read from where it was (`--data.root DIR` if it moved). First the test metrics, as `trainer.test`
logs them with every random number generator seeded with 0 as the test loop starts (a classifier's accuracy, a VAE's -ELBO, a language
model's loss and bits per character, PPO's greedy return), then the model's own figures when it has an `evaluate(datamodule, **options)` (the
Evaluates contract, lightning_modules/protocols.py). The model options below go to `evaluate` only when
given, and only to a model whose `evaluate` takes them:

    --episodes N, --seed S          PPO: greedy episodes played (default 20) and the first one's seed
    --fid_classifier CKPT           DDPM, EDM, LDM: classifier FID of each sampler against the test set, and
    --samplers ddpm,ddim50,ddim20   the inversion error (a class-conditional EDM: also the share of samples
    --label_classifier CKPT         classified as their label, e.g. --samplers heun18w1,heun18w2, by the
                                    --label_classifier checkpoint, default the FID's);
                                    GAN: the FID and the share of samples per class;
    --samples N                     --samples draws per FID (default 1000); --seed seeds the samples
                                    NCSN: --samplers annealed,plain (annealed5: 5 steps a level, plain400):
                                    the FID of images, or on the two-Gaussian toy the share of --samples
                                    (default 10000) samples in the mode of weight 0.8

`--video PATH.gif` saves one episode of a model that renders (the Renders contract) as an animated GIF.
`--raw-weights` scores the weights being trained instead of the saved ones. A run with Lightning's
EMAWeightAveraging (the diffusion configs) saves their moving average as the model's weights, and
the raw ones beside it while it trains: the two figures say what the average is worth.
`--json PATH` also writes every printed figure, unrounded, with the model's class and the checkpoint
(scripts/plot_fid.py draws the FID against network evaluations from such files).
"""

import argparse
import inspect
import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from argument_types import device, output_file, positive_float, positive_int
from lightning.pytorch.callbacks import LambdaCallback
from PIL import Image

from lightning_modules.checkpoint import load_datamodule, load_model, load_raw_weights
from lightning_modules.protocols import Evaluates, Renders, require
from zoo.errors import BAD_INPUT, report

TEST_SEED = 0  # the test loop runs seeded: a metric that draws (a VAE's sampled -ELBO) is reproducible
# passed to evaluate() when given
MODEL_OPTIONS = ("episodes", "seed", "fid_classifier", "label_classifier", "samplers", "samples")


def save_gif(frames: list[np.ndarray], path: str, fps: float) -> None:
    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a .ckpt file written by scripts/fit.py")
    parser.add_argument("--data.root", dest="data_root", help="where the data is now (default: as trained)")
    parser.add_argument(
        "--device", type=device, choices=["cpu", "cuda"], default="cpu", help="where to run (default cpu)"
    )
    parser.add_argument(
        "--video", type=output_file, metavar="PATH.gif", help="also save one episode as an animated GIF"
    )
    parser.add_argument("--fps", type=positive_float, default=50.0, help="frames per second of the GIF (default 50)")
    parser.add_argument("--json", type=output_file, metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument(
        "--raw-weights",
        action="store_true",
        help="score the weights being trained instead of their average (a checkpoint of a run with EMAWeightAveraging)",
    )
    model = parser.add_argument_group("model options (passed to the model's evaluate when given)")
    model.add_argument("--episodes", type=positive_int, help="episodes to play (PPO; default 20)")
    model.add_argument("--seed", type=int, help="seed of the evaluation (default: the model's own)")
    model.add_argument(
        "--fid_classifier", help="classifier checkpoint whose features the FID uses (diffusion models, GAN)"
    )
    model.add_argument("--label_classifier", help="classifier checkpoint that labels a class-conditional EDM's samples")
    model.add_argument(
        "--samplers",
        help="comma-separated samplers to score, e.g. ddpm,ddim50,ddim20 (DDPM), heun18w2 (EDM), annealed,plain (NCSN)",
    )
    model.add_argument(
        "--samples",
        type=positive_int,
        help="samples drawn per sampler for the FID (diffusion models, GAN; default 1000)",
    )
    return parser.parse_args(argv)


def evaluation_options(model: L.LightningModule, options: argparse.Namespace) -> dict:
    """The model options that were given, refused in one line when the model's evaluate does not take them."""
    given = {k: getattr(options, k) for k in MODEL_OPTIONS if getattr(options, k) is not None}
    accepted = inspect.signature(model.evaluate).parameters if isinstance(model, Evaluates) else {}
    for key in given:
        if key not in accepted:
            raise ValueError(f"{type(model).__name__}'s evaluation takes no --{key}; drop it")
    return given


def formatted(figures: dict) -> list[str]:
    return [f"  {k} = {v:.4f}" if isinstance(v, float) else f"  {k} = {v}" for k, v in figures.items()]


def run(options: argparse.Namespace) -> tuple[list[str], dict]:
    """The printed lines and the figures behind them."""
    model = load_model(options.ckpt)
    if options.raw_weights:
        load_raw_weights(model, options.ckpt)
    name = type(model).__name__
    kwargs = evaluation_options(model, options)
    if options.video:
        require(model, Renders, "--video")
        if not options.video.lower().endswith(".gif"):
            raise ValueError(f"--video writes a GIF; name the file *.gif, got {options.video}")
    datamodule = load_datamodule(options.ckpt, options.data_root)
    lines = [f"{name} from {options.ckpt}"]
    if datamodule is not None:
        trainer = L.Trainer(
            accelerator="gpu" if options.device == "cuda" else "cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            # Seeded when the loop starts, after the data is set up (which may draw random numbers of its own).
            callbacks=[LambdaCallback(on_test_start=lambda *_: L.seed_everything(TEST_SEED, verbose=False))],
        )
        results = trainer.test(model, datamodule=datamodule, verbose=False)
        figures = {k: v for result in results for k, v in sorted(result.items())}
    else:
        figures = {}
        model.to("cuda" if options.device == "cuda" else "cpu")
    with torch.no_grad():
        if isinstance(model, Evaluates):
            figures.update(model.evaluate(datamodule, **kwargs))
        lines += formatted(figures)
        if options.video:
            frames = model.render(**({} if options.seed is None else {"seed": options.seed}))
            save_gif(frames, options.video, options.fps)
            lines.append(f"  video: {options.video} ({len(frames)} frames)")
    weights = {"weights": "raw"} if options.raw_weights else {}
    return lines, {"model": name, "checkpoint": str(options.ckpt), **weights, **figures}


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    try:
        lines, figures = run(options)
    except BAD_INPUT as error:
        return report("evaluate.py", error)
    print("\n".join(lines))
    if options.json:
        Path(options.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
