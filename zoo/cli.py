"""The zoo's command line: LightningCLI with the short names of the zoo.

    lightning-zoo fit|validate|test|predict --model NAME [--data NAME] [--seed N] [LightningCLI flags]
    python scripts/fit.py --model NAME ...      (the short form: fit, then test)

`--model NAME` loads configs/NAME.yaml (model, data and trainer defaults: the reference run), `--model
a.b.Class` takes a LightningModule by class path with its own defaults, `--config FILE` replays a file written
by `--print_config`; `--data NAME` swaps the DataModule; every other flag is LightningCLI's own (`--trainer.*`,
`--model.*`, `--data.*`, `--ckpt_path`, `--print_config`). Set LIGHTNING_ZOO_DEBUG=1 for full tracebacks.
"""

import re
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from callbacks import FiniteLossCheck, RestoreRNGState
from callbacks.console import display_callbacks
from callbacks.prediction_writer import PredictionWriter
from datamodules import DATAMODULES
from lightning_modules.checkpoint import check_compatible, weights_misfit
from lightning_modules.registry import config_path, import_class, model_names
from zoo.errors import BAD_INPUT, debugging, print_error, report
from zoo.precision import fastest_precision
from zoo.resume import find_resumable

DEFAULT_SEED = 0
# What a model needs to know about its data flows from the DataModule.
# A model that does not take one of these arguments is simply not linked to it.
DATA_FACTS = ("image_shape", "num_classes", "vocab_size", "data_dim", "sequence_length", "num_node_features")
# LightningCLI's subcommands, each a Trainer method of the same name.
SUBCOMMANDS = ("fit", "validate", "test", "predict")
HELP_FLAGS = ("-h", "--help")


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


def _name_in_config(path: str) -> str:
    """The run's name in a config file written by --print_config: its logger's name, else the model's class."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "model"  # the parser reports the file itself, with the flag
    logger = (config.get("trainer") or {}).get("logger")
    if isinstance(logger, dict) and (logger.get("init_args") or {}).get("name"):
        return str(logger["init_args"]["name"])
    class_path = (config.get("model") or {}).get("class_path", "model") if isinstance(config, dict) else "model"
    return str(class_path).rpartition(".")[2].lower()


def translate(argv: list[str]) -> tuple[str | None, list[str]]:
    """Turn the short names of the front (`--model vae`, `--data mnist`, `--seed 3`) into LightningCLI
    arguments; a class path after --model, and everything else, passes through unchanged."""
    model, rest = _take_value(argv, "--model")
    data, rest = _take_value(rest, "--data")
    seed, rest = _take_value(rest, "--seed")
    config_file, _ = _take_value(rest, "--config")
    args = []
    if model is None:
        if config_file is None and not any(a in HELP_FLAGS for a in argv):
            raise UsageError(f"choose a model with --model NAME (or --config FILE); {catalogue()}")
        name = _name_in_config(config_file) if config_file else None
    elif model in model_names():
        name, args = model, ["--config", str(config_path(model))]
    elif "." in model:  # a LightningModule by class path, with its own defaults, as LightningCLI takes it
        name, args = model.rpartition(".")[2].lower(), ["--model", model]
    else:
        raise UsageError(f"unknown model {model!r}; {catalogue()}")
    if data is not None:
        if data in DATAMODULES:
            cls = DATAMODULES[data]
            data = f"{cls.__module__}.{cls.__qualname__}"
        elif "." not in data:
            raise UsageError(f"unknown dataset {data!r}; {catalogue()}")
        args += ["--data", data]
    if seed is not None:
        args += ["--seed_everything", seed]
    return name, args + rest


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


def program() -> str:
    """The name errors start with: the script's file name, or the console script's."""
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "lightning-zoo"


class OneLineErrorParser(LightningArgumentParser):
    def error(self, message: str, *args, **kwargs):
        if debugging():
            return super().error(message, *args, **kwargs)
        sys.exit(print_error(program(), f"{condense(message, sys.argv)} (see --help; {catalogue()})"))


def _data_fact(name: str):
    return lambda datamodule: getattr(datamodule, name, None)


def _shuffle_seed(seed: int | bool) -> int:
    # `--seed_everything true` draws its seed only after parsing: ZooCLI.order_data_by_the_seed sets it then.
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def model_help(config: Namespace, prog: str) -> str:
    """The options of the chosen model and DataModule with the values this command line gives them (its
    config file's, not the classes' defaults); the facts the data tells the model are not options."""
    parser = ArgumentParser(
        prog=prog,
        description=f"{config.model.class_path} on {config.data.class_path}. The Trainer's and LightningCLI's "
        f"flags: --help without --model. {catalogue()}.",
    )
    for group in ("model", "data"):
        added = parser.add_class_arguments(
            import_class(config[group].class_path), group, skip=set(DATA_FACTS) | {"shuffle_seed"}
        )
        values = vars(config[group].get("init_args") or Namespace())
        parser.set_defaults({f"{group}.{k}": v for k, v in values.items() if f"{group}.{k}" in added})
    # jsonargparse lists every known subclass of a network's type: all of torch.nn, hundreds of lines.
    return re.sub(r",\s+known\s+subclasses:[^)]*\)", ")", parser.format_help())


class ZooCLI(LightningCLI):
    def __init__(
        self,
        model_name: str | None,
        args: list[str],
        extra_callbacks: list[L.Callback] = (),
        subcommand: str | None = None,
    ) -> None:
        """`subcommand`: the Trainer method the caller will run (None: fit, then test), for the callbacks that
        write at its end (the HParams entry, the predictions)."""
        self.model_name = model_name or "model"
        self.zoo_subcommand = subcommand
        self.extra_callbacks = list(extra_callbacks)
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=OneLineErrorParser,
            parser_kwargs={
                "description": "Train, validate, test or predict with a model of the zoo: --model NAME loads "
                "configs/NAME.yaml (or a LightningModule's class path), --data NAME swaps the DataModule, "
                f"--seed N seeds everything, the data order included; {catalogue()}. "
                "--model NAME --help shows that model's options. Every other flag below is LightningCLI's own."
            },
            seed_everything_default=DEFAULT_SEED,
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": self.model_name, "default_hp_metric": False},
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
            help="Checkpoint to start from; 'last' resumes this run: the newest last.ckpt of the same model, "
            "data and seed, logging on into its TensorBoard version.",
        )
        for fact in DATA_FACTS:
            parser.link_arguments(
                "data", f"model.init_args.{fact}", compute_fn=_data_fact(fact), apply_on="instantiate"
            )
        # The seed orders the training data too; a DataModule without a shuffle seed is simply not linked.
        parser.link_arguments("seed_everything", "data.init_args.shuffle_seed", compute_fn=_shuffle_seed)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """`--model NAME --help` (or `--config FILE --help`): the model's and its data's options, not the
        whole Trainer's."""
        rest = [a for a in args if a not in HELP_FLAGS]
        if len(rest) == len(args) or not any(a.split("=")[0] in ("--config", "--model") for a in rest):
            return super().parse_arguments(parser, args)
        print(model_help(parser.parse_args(rest), f"{program()} --model {self.model_name}"))
        sys.exit(0)

    def before_instantiate_classes(self) -> None:
        trainer = self.config.trainer
        if str(trainer.accelerator) in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"--trainer.accelerator {trainer.accelerator}: this machine has no CUDA GPU that torch can use; "
                "use --trainer.accelerator cpu (or auto)"
            )
        self.order_data_by_the_seed()
        if trainer.precision is None:  # neither the config nor the command line chose
            trainer.precision, why = fastest_precision(str(trainer.accelerator))
            rank_zero_info(
                f"Precision: {trainer.precision} ({why}); --trainer.precision 32-true or bf16-mixed forces one"
            )
        if self.config.ckpt_path == "last":
            self.config.ckpt_path = self.resume_this_run()
        callbacks = [FiniteLossCheck(), RestoreRNGState(), *self.extra_callbacks]
        if self.zoo_subcommand == "predict":
            callbacks.append(PredictionWriter())
        # Lightning saves last.ckpt at train end even under fast_dev_run; a smoke test should leave no files.
        trains = self.zoo_subcommand in (None, "fit")
        if not trains:
            # Nothing to save, and the callbacks that wrote the loaded checkpoint have no state to restore here.
            trainer.enable_checkpointing = False
            warnings.filterwarnings("ignore", ".*callbacks used to create the checkpoint need to be provided.*")
        if trains and trainer.enable_checkpointing is not False and not trainer.fast_dev_run:
            # A resumed run writes into its own folder again: overwrite last.ckpt rather than add last-v1.ckpt.
            callbacks.append(ModelCheckpoint(save_last=True, enable_version_counter=False))
        last_stage = {None: "test", "predict": None}.get(self.zoo_subcommand, self.zoo_subcommand)
        callbacks += display_callbacks(trainer.enable_progress_bar, trainer.enable_model_summary, last_stage)
        self.trainer_defaults["callbacks"] = callbacks
        if trainer.logger is False:
            # Without a logger the config would be written to the working directory; keep it clean.
            self.save_config_callback = None

    def order_data_by_the_seed(self) -> None:
        """`--seed_everything true` draws its seed after parsing, when the link to the data order has already given
        it the default; give it the seed drawn (LightningCLI has put it in the config by now)."""
        seed, init_args = self.config.seed_everything, self.config.data.get("init_args")
        if (
            isinstance(seed, int)
            and not isinstance(seed, bool)
            and init_args is not None
            and "shuffle_seed" in init_args
        ):
            init_args.shuffle_seed = seed

    def resume_this_run(self) -> str:
        """The newest last.ckpt of a run of this configuration; the logger writes on into that run's version."""
        logger = self.config.trainer.logger
        init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
        if init_args is None or init_args.get("save_dir") is None or init_args.get("name") is None:
            raise UsageError(
                "--ckpt_path last finds this run's checkpoint through its logger's folder; with another "
                "--trainer.logger pass the .ckpt file itself"
            )
        this_run = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True))
        checkpoint = find_resumable(Path(init_args.save_dir) / init_args.name, this_run)
        init_args.version = checkpoint.parents[1].name
        return str(checkpoint)


def check_checkpoint(path: str | None) -> str | None:
    if path is not None and not Path(path).is_file():
        raise UsageError(f"checkpoint {path} not found; pass an existing .ckpt file or --ckpt_path last")
    return path


def summary(cli: ZooCLI, results: list[dict]) -> str:
    trainer = cli.trainer
    metrics = {k: v for result in results for k, v in result.items()}
    lines = [f"{cli.model_name} on {type(cli.datamodule).__name__}"]
    source = getattr(cli.datamodule, "data_source", None)
    if source:
        lines[0] += f" (data: {source})"
    lines += [f"  {name} = {value:.4f}" for name, value in sorted(metrics.items())]
    if cli.zoo_subcommand in (None, "fit"):
        checkpoint = trainer.checkpoint_callback
        last = checkpoint.last_model_path if checkpoint is not None else ""
        lines.append(f"  checkpoint: {last or 'none saved'}")
    else:
        lines.append(f"  from checkpoint: {cli.config.ckpt_path or 'none (the initial weights)'}")
    for writer in (c for c in trainer.callbacks if isinstance(c, PredictionWriter)):
        lines += [f"  predictions: {path}" for path in writer.paths]
    if trainer.logger is not None and not trainer.fast_dev_run:
        lines.append(f"  tensorboard --logdir {trainer.logger.root_dir}")
    return "\n".join(lines)


def check_predicts(cli: ZooCLI) -> None:
    """predict needs a model with its own predict_step and data with a predict split."""
    if type(cli.model).predict_step is L.LightningModule.predict_step:
        raise UsageError(f"{type(cli.model).__name__} has no predict_step; predict works for models that define one")
    if not callable(getattr(cli.datamodule, "predict_dataloader", None)):
        raise UsageError(f"{type(cli.datamodule).__name__} has no predict_dataloader; choose data with a predict split")


def run_subcommand(cli: ZooCLI, subcommand: str | None) -> list[dict]:
    """Run the Trainer method of the subcommand (None: fit, then test); the metrics to print."""
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    ckpt_path = check_checkpoint(cli.config.ckpt_path)
    trains = subcommand in (None, "fit")
    if ckpt_path is not None:
        check_compatible(ckpt_path, model, data, same_hyperparameters=trains)
    if trains:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        if subcommand == "fit":
            return [{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}]
        return trainer.test(model, datamodule=data, verbose=False)
    if subcommand == "predict":
        check_predicts(cli)
    try:
        if subcommand == "predict":
            trainer.predict(model, datamodule=data, ckpt_path=ckpt_path)
            return []
        return getattr(trainer, subcommand)(model, datamodule=data, ckpt_path=ckpt_path, verbose=False)
    except RuntimeError as error:
        if ckpt_path is not None and str(error).startswith("Error(s) in loading state_dict"):
            raise weights_misfit(ckpt_path, model) from None
        raise


def split_subcommand(argv: list[str], short_form: bool) -> tuple[str | None, list[str]]:
    if argv and argv[0] in SUBCOMMANDS:
        return argv[0], argv[1:]
    if short_form:
        return None, argv
    if argv and argv[0] in HELP_FLAGS:
        print(f"usage: {program()} {{{','.join(SUBCOMMANDS)}}} --model NAME [options]\n\n{__doc__.strip()}\n")
        sys.exit(0)
    raise UsageError(f"choose a subcommand: {', '.join(SUBCOMMANDS)} (e.g. {program()} fit --model vae)")


def main(argv: list[str] | None = None, short_form: bool = False, cli_class: type[ZooCLI] = ZooCLI) -> int:
    """The command line; `short_form`: no subcommand, fit then test (scripts/fit.py)."""
    argv = sys.argv[1:] if argv is None else argv
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}\n"
    # Tensors in memory are served by the main process; extra workers would only add copies.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LightningCLI's args parameter.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")
    # Mixed precision keeps the weights in fp32, so the summary's fp32 size is the right one.
    warnings.filterwarnings("ignore", ".*Precision bf16-mixed is not supported by the model summary.*")
    try:
        subcommand, rest = split_subcommand(argv, short_form)
        model_name, args = translate(rest)
        cli = cli_class(model_name, args, subcommand=subcommand)
        results = run_subcommand(cli, subcommand)
    except BAD_INPUT as error:
        return report(program(), error)
    if cli.trainer.is_global_zero:
        print(summary(cli, results))
    release_process_group()
    return 0


def release_process_group() -> None:
    """Lightning leaves DDP's process group open at the end of a run; at interpreter exit Gloo's worker threads
    may then still hold work with Python references, and tearing them down aborts the process ("terminate called
    without an active exception", pytorch/pytorch#190489). Destroyed here, after a run every process finished
    (not after an error, when another process may still be inside a collective)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def console() -> None:
    """The `lightning-zoo` console script."""
    sys.exit(main())
