#!/usr/bin/env python
"""Train any registered model, then test it:

    python scripts/fit.py --model NAME [--data NAME] [--seed N] [LightningCLI flags]

`--model NAME` loads configs/NAME.yaml (model, data and trainer defaults: the reference run);
`--data NAME` swaps the DataModule; every other flag is LightningCLI's own (`--trainer.*`, `--model.*`,
`--data.*`, `--ckpt_path`, `--print_config`, `--config`). Set LIGHTNING_ZOO_DEBUG=1 for full tracebacks.
"""

import re
import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks import FiniteLossCheck, RestoreRNGState
from datamodules import DATAMODULES
from lightning_modules.checkpoint import check_compatible
from lightning_modules.registry import config_path, model_names
from one_line_errors import BAD_INPUT, debugging, print_error, report

DEFAULT_SEED = 0
# What a model needs to know about its data flows from the DataModule.
# A model that does not take one of these arguments is simply not linked to it.
DATA_FACTS = ("image_shape", "num_classes", "vocab_size", "data_dim", "sequence_length")


class UsageError(ValueError):
    """A bad command line: reported as one line."""


def catalogue() -> str:
    return f"models: {', '.join(model_names())}; datasets: {', '.join(sorted(DATAMODULES))}"


def _take_value(args: list[str], flag: str) -> tuple[str | None, list[str]]:
    """Remove `flag VALUE` or `flag=VALUE` from args; return VALUE (or None) and the rest, in order."""
    rest, value, i = [], None, 0
    while i < len(args):
        if args[i] == flag:
            if i + 1 >= len(args):
                raise UsageError(f"{flag} needs a value; {catalogue()}")
            value, i = args[i + 1], i + 2
        elif args[i].startswith(flag + "="):
            value, i = args[i].split("=", 1)[1], i + 1
        else:
            rest.append(args[i])
            i += 1
    return value, rest


def translate(argv: list[str]) -> tuple[str | None, list[str]]:
    """Turn the short names of the front (`--model vae`, `--data mnist`, `--seed 3`) into LightningCLI
    arguments; everything else passes through unchanged."""
    wants_help = any(a in ("-h", "--help") for a in argv)
    model, rest = _take_value(argv, "--model")
    if model is None:
        if wants_help:
            return None, rest
        raise UsageError(f"choose a model with --model NAME; {catalogue()}")
    if model not in model_names():
        raise UsageError(f"unknown model {model!r}; {catalogue()}")
    config = config_path(model)
    data, rest = _take_value(rest, "--data")
    seed, rest = _take_value(rest, "--seed")
    args = ["--config", str(config)]
    if data is not None:
        if data not in DATAMODULES:
            raise UsageError(f"unknown dataset {data!r}; {catalogue()}")
        cls = DATAMODULES[data]
        args += ["--data", f"{cls.__module__}.{cls.__qualname__}"]
    if seed is not None:
        args += ["--seed_everything", seed]
    return model, args + rest


def condense(message: str, args: list[str]) -> str:
    """jsonargparse explains a rejected value over a dozen lines (one per Union member); keep the lines
    that say what was wrong, and name the flag when the message only names the option."""
    lines = [line.strip().lstrip("- ").strip() for line in message.splitlines() if line.strip()]
    key = re.match(r'Parser key "([^"]+)"', lines[0]) if lines else None
    boiler = (
        "Parser key",
        "Does not validate",
        "Subtypes:",
        "Errors:",
        "Given value type",
        "Expected a <class 'NoneType'>",
    )
    details = [line for line in lines if not line.startswith(boiler)]
    details = [re.sub(r"Problem with given class_path '([^']+)':", r"\1:", line) for line in details]
    details = [re.sub(r"NestedArg\(key='([^']+)', val='([^']*)'\)", r"\1=\2", line) for line in details]
    text = " ".join(details) if details else message.strip()
    # jsonargparse names the option without its group ("decoder"); name the flag as it was typed instead.
    option = key.group(1) if key else (found.group(1) if (found := re.search(r"Option '([^']+)'", text)) else None)
    flags = [a.split("=")[0] for a in args if option and re.fullmatch(rf"--[\w.]+\.{re.escape(option)}(=.*)?", a)]
    if flags:
        return f"{flags[0]}: {text}"
    return f"--{option}: {text}" if key else text


class OneLineErrorParser(LightningArgumentParser):
    def error(self, message: str, *args, **kwargs):
        if debugging():
            return super().error(message, *args, **kwargs)
        sys.exit(print_error("fit.py", f"{condense(message, sys.argv)} (see --help; {catalogue()})"))


def _data_fact(name: str):
    return lambda datamodule: getattr(datamodule, name, None)


class ZooCLI(LightningCLI):
    def __init__(self, model_name: str | None, args: list[str], extra_callbacks: list[L.Callback] = ()) -> None:
        self.model_name = model_name or "model"
        self.extra_callbacks = list(extra_callbacks)
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=OneLineErrorParser,
            parser_kwargs={
                "description": "Train a model of the zoo, then test it: --model NAME loads configs/NAME.yaml, "
                f"--data NAME swaps the DataModule, --seed N seeds everything; {catalogue()}. "
                "Every other flag below is LightningCLI's own."
            },
            seed_everything_default=DEFAULT_SEED,
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": self.model_name},
                }
            },
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            run=False,
            args=args,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Checkpoint to resume from; 'last' takes the newest last.ckpt of this model's runs.",
        )
        for fact in DATA_FACTS:
            parser.link_arguments(
                "data", f"model.init_args.{fact}", compute_fn=_data_fact(fact), apply_on="instantiate"
            )

    def before_instantiate_classes(self) -> None:
        trainer = self.config.trainer
        callbacks = [FiniteLossCheck(), RestoreRNGState(), *self.extra_callbacks]
        # Lightning saves last.ckpt at train end even under fast_dev_run; a smoke test should leave no files.
        if trainer.enable_checkpointing is not False and not trainer.fast_dev_run:
            callbacks.append(ModelCheckpoint(save_last=True))
        if trainer.enable_progress_bar is not False:
            callbacks.append(RichProgressBar())
        self.trainer_defaults["callbacks"] = callbacks
        if trainer.logger is False:
            # Without a logger the config would be written to the working directory; keep it clean.
            self.save_config_callback = None


def resolve_ckpt_path(path: str | None, trainer: L.Trainer) -> str | None:
    if path is None:
        return None
    if path != "last":
        if not Path(path).is_file():
            raise UsageError(f"checkpoint {path} not found; pass an existing .ckpt file or --ckpt_path last")
        return path
    root = Path(trainer.logger.root_dir if trainer.logger else trainer.default_root_dir)
    found = sorted(root.glob("**/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UsageError(f"--ckpt_path last: no last.ckpt under {root}; train once first, or pass a file")
    return str(found[-1])


def summary(cli: ZooCLI, results: list[dict]) -> str:
    trainer = cli.trainer
    metrics = {k: v for result in results for k, v in result.items()}
    lines = [f"{cli.model_name} on {type(cli.datamodule).__name__}"]
    source = getattr(cli.datamodule, "data_source", None)
    if source:
        lines[0] += f" (data: {source})"
    lines += [f"  {name} = {value:.4f}" for name, value in sorted(metrics.items())]
    checkpoint = trainer.checkpoint_callback
    last = checkpoint.last_model_path if checkpoint is not None else ""
    lines.append(f"  checkpoint: {last or 'none saved'}")
    if trainer.logger is not None and not trainer.fast_dev_run:
        lines.append(f"  tensorboard --logdir {trainer.logger.root_dir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}\n"
    # Tensors in memory are served by the main process; extra workers would only add copies.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LightningCLI's args parameter.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")
    try:
        model_name, args = translate(argv)
        cli = ZooCLI(model_name, args)
        ckpt_path = resolve_ckpt_path(cli.config.ckpt_path, cli.trainer)
        if ckpt_path is not None:
            check_compatible(ckpt_path, cli.model, cli.datamodule)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
        results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    except BAD_INPUT as error:
        return report("fit.py", error)
    if cli.trainer.is_global_zero:
        print(summary(cli, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
