#!/usr/bin/env python
"""The FID floor: the FID of n training images against the whole test set, with the project's offline FID
(lightning_modules/metrics.py), i.e. the score a perfect generator would get with n samples:

    python scripts/fid.py --classifier runs/fid/lenet5_mnist.ckpt --data mnist [--data.root DIR] [--n 10000 1000]

The classifier is an ImageClassifier checkpoint trained on the same dataset (scripts/fit.py --model lenet5).
FID depends on the number of samples, so compare a model's score with the floor at the same n.
"""

import argparse
import sys

from datamodules import DATAMODULES, ImageDataModule
from lightning_modules.metrics import ClassifierFID, fid_floor
from zoo.errors import BAD_INPUT, report

# The image datasets read from files (not the embedded digits, which have no test set of their own).
IMAGE_DATA = [
    name
    for name, cls in DATAMODULES.items()
    if issubclass(cls, ImageDataModule) and cls.folder is not ImageDataModule.folder
]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, help="an ImageClassifier .ckpt written by scripts/fit.py")
    parser.add_argument("--data", required=True, choices=IMAGE_DATA, help="the dataset the classifier knows")
    parser.add_argument("--data.root", dest="root", help="data folder (default $LIGHTNING_ZOO_DATA, else ./data)")
    parser.add_argument("--n", type=int, nargs="+", default=[10000], help="training images scored (one or more)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw of training images")
    parser.add_argument("--inception", metavar="PATH", help="Inception weights file: also print the Inception FID")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return parser.parse_args(argv)


def floors(options: argparse.Namespace) -> list[str]:
    fid = ClassifierFID(options.classifier, options.inception, device=options.device)
    datamodule = DATAMODULES[options.data](root=options.root, batch_size=1000)
    datamodule.prepare_data()
    if not datamodule.files_present():
        raise FileNotFoundError(
            f"{datamodule.name} not found: expected {', '.join(datamodule.expected_files())} in "
            f"{datamodule.folder()}; pass --data.root DIR (or set LIGHTNING_ZOO_DATA)"
        )
    datamodule.setup("fit")
    test = datamodule.batch("test", len(datamodule.dataset("test")))[0]
    train = datamodule.batch("train", len(datamodule.dataset("train")))[0]
    fid.set_real(test)
    lines = [f"FID floor on {options.data}: n training images against the {len(test)} test images"]
    for n in options.n:
        scores = fid_floor(fid, train, n, options.seed)
        lines.append(f"  n = {n}: " + ", ".join(f"{name} = {value:.4f}" for name, value in scores.items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    try:
        print("\n".join(floors(options)))
    except BAD_INPUT as error:
        return report("fid.py", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
