"""`pictor train` and `pictor train-autoencoder`: thin wrappers over pictor.training.

    pictor train --config configs/shapes.yaml [--section.key=value ...] [--resume latest]
    pictor train-autoencoder --config configs/autoencoder.yaml [--section.key=value ...]
    pictor finetune --config configs/reward.yaml --init MODEL_DIR [--section.key=value ...]

Overrides are dotted paths into the config (see pictor.config), always in the `--a.b=value`
form. `--resume latest` continues from the newest complete checkpoint of the run folder (or
starts fresh if there is none); `--resume PATH` from a given checkpoint folder, whose saved
config is used when --config is omitted. Under torchrun, every process runs the same command
(see pictor.training.distributed); `--launcher spark --num-processes N` starts the N processes
through Spark's TorchDistributor instead (pictor.training.spark).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_OVERRIDE = re.compile(r"^--[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+=")


class _OverridesParser(argparse.ArgumentParser):
    """An ArgumentParser that also accepts `--a.b=value` config overrides anywhere.

    argparse has no notion of open-ended option names, so the overrides are taken out of the
    argument list before the regular parse and stored as `namespace.overrides`.
    """

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        overrides = [a for a in args if _OVERRIDE.match(a)]
        rest = [a for a in args if not _OVERRIDE.match(a)]
        namespace, extras = super().parse_known_args(rest, namespace)
        namespace.overrides = list(getattr(namespace, "overrides", None) or []) + overrides
        return namespace, extras


def _add(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=help_text, description=help_text,
        epilog="Config overrides: --section.key=value, e.g. --training.max_steps=500 "
               "--optimizer.lr=1e-4 --training.validation_prompts='[\"a red circle\"]'.")
    parser.__class__ = _OverridesParser  # same parser, plus the override handling above
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config file (e.g. configs/shapes.yaml)")
    parser.add_argument("--resume", default=None, metavar="latest|PATH",
                        help="continue from the newest complete checkpoint of the run folder "
                             "('latest') or from a checkpoint folder")
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    p = _add(subparsers, "train", "Train a text-to-image model: the diffusion U-Net, or the "
             "conditional GAN or VAE when the config's model.family says gan or vae.")
    p.add_argument("--launcher", choices=("local", "spark"), default="local",
                   help="local: this process (or each process torchrun started); spark: "
                        "--num-processes processes through Spark's TorchDistributor "
                        "(pictor.training.spark; default local)")
    p.add_argument("--num-processes", type=int, default=2,
                   help="with --launcher spark: processes (ranks) in all (default 2)")
    p.add_argument("--spark-mode", choices=("local", "cluster"), default="local",
                   help="with --launcher spark: local runs the processes on the driver, cluster "
                        "as barrier tasks on the executors (default local)")
    p.add_argument("--spark-master", default=None, metavar="URL",
                   help="with --launcher spark: Spark master when no session is active "
                        "(default: the active session, else local[*])")
    p.set_defaults(func=run_train)
    p = _add(subparsers, "train-autoencoder",
             "Train the KL autoencoder for latent diffusion; stores its latent scaling_factor.")
    p.set_defaults(func=run_train_autoencoder)
    p = _add(subparsers, "finetune",
             "Reward fine-tuning of a trained model: it samples, the scorer judges, the U-Net "
             "learns from good and bad samples (DiffusionNFT).")
    p.add_argument("--init", default=None, metavar="MODEL_DIR",
                   help="model folder to start from (sets reward.init_from)")
    p.set_defaults(func=run_finetune)
    p = subparsers.add_parser(
        "train-layout-prior",
        help="Train a model's learned layout prior from text and masks alone (minutes).",
        description="Train the layout prior of MODEL_DIR (model.layout_prior_width > 0) on a "
                    "shapes-world data set made by `pictor data synth`; the U-Net is untouched. "
                    "Writes MODEL_DIR with the new prior to OUT.")
    p.add_argument("model", type=Path, help="model folder with a layout prior")
    p.add_argument("--data", type=Path, required=True, help="shapes-world data set (synth)")
    p.add_argument("-o", "--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--cache-dir", type=Path, default=Path("data/cache"),
                   help="text-embedding cache (the one `pictor train` fills; default data/cache)")
    p.set_defaults(func=run_train_layout_prior)
    p = subparsers.add_parser(
        "export-model", help="Make a model folder (to ship or serve) from a finished run.",
        description="Copy RUN/final plus the training log, loss curve and last validation grid "
                    "into OUT; optionally store the weights in float16. --checkpoint exports a "
                    "checkpoint instead (also of a run still training). A `pictor train-clip` "
                    "folder is copied the same way, its weights in --dtype.")
    p.add_argument("run", type=Path,
                   help="run folder of `pictor train` (holds final/), or of `pictor train-clip`")
    p.add_argument("out", type=Path, help="model folder to write, e.g. models/my-model")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="storage dtype of the weights (default float32)")
    p.add_argument("--checkpoint", metavar="STEP", default=None,
                   help="export RUN/checkpoints/step_STEP (its EMA weights), 'latest', or a "
                        "checkpoint folder, instead of RUN/final")
    p.set_defaults(func=run_export_model)


def run_train_layout_prior(args: argparse.Namespace) -> int:
    from pictor.training.layout_prior import LayoutPriorRun, train_layout_prior

    try:
        if args.steps < 1 or not args.lr > 0:
            raise ValueError("--steps must be >= 1 and --lr > 0")
        train_layout_prior(args.model, args.data, args.out,
                           LayoutPriorRun(steps=args.steps, lr=args.lr), cache_dir=args.cache_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run_export_model(args: argparse.Namespace) -> int:
    from pictor.evaluation.clip_training import CLIP_FILE, export_clip
    from pictor.training.export import STORAGE_DTYPES, export_model

    try:
        if (args.run / CLIP_FILE).is_file():  # a train-clip folder: the judge, in --dtype
            if args.checkpoint is not None:
                raise ValueError(f"{args.run} is a train-clip folder: it has no checkpoints "
                                 "to export")
            out = export_clip(args.run, args.out, STORAGE_DTYPES[args.dtype])
        else:
            out = export_model(args.run, args.out, dtype=args.dtype, checkpoint=args.checkpoint)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"model folder: {out}")
    return 0


def _family_trainer(config):
    """train / train_gan / train_vae for a TrainConfig / GanTrainConfig / VaeTrainConfig."""
    from pictor.config import family_of

    family = family_of(config)
    if family == "gan":
        from pictor.training.gan import train_gan

        return train_gan
    if family == "vae":
        from pictor.training.vae import train_vae

        return train_vae
    from pictor.training.trainer import train

    return train


def _resolve_config(args: argparse.Namespace, cls: type | None):
    """The run's config; cls None: a `pictor train` config of any family (model.family)."""
    from pictor.config import (
        apply_overrides,
        from_dict,
        load_config,
        load_family_config,
        read_yaml_file,
        validate,
    )

    if args.config is None:
        if args.resume and args.resume != "latest":
            saved = Path(args.resume) / "config.yaml"
            if not saved.is_file():
                raise ValueError(f"{saved} does not exist; pass --config")
            if cls is None:
                return load_family_config(saved, args.overrides)
            data = apply_overrides(read_yaml_file(saved) or {}, args.overrides, cls)
            config = from_dict(cls, data)
            validate(config)
            return config
        raise ValueError("pass --config FILE (e.g. configs/shapes.yaml), or --resume "
                         "CHECKPOINT_FOLDER to reuse a checkpoint's config")
    if cls is None:
        return load_family_config(args.config, args.overrides)
    return load_config(args.config, cls, args.overrides)


def _run(args: argparse.Namespace, which: str) -> int:
    from pictor.config import AutoencoderTrainConfig, FinetuneConfig
    from pictor.training.loop import NonFiniteLossError

    try:
        if which == "finetune":
            from pictor.reward.finetune import finetune

            if args.init is not None:
                args.overrides = [*args.overrides, f"--reward.init_from={args.init}"]
            config = _resolve_config(args, FinetuneConfig)
            result = finetune(config, resume=args.resume)
        elif which == "train":  # the family's trainer, as the config's model.family says
            config = _resolve_config(args, None)
            if args.launcher == "spark":
                from pictor.config import family_of

                if family_of(config) != "diffusion":
                    raise ValueError(f"--launcher spark trains the diffusion family; this config "
                                     f"is model.family: {family_of(config)} (train it with the "
                                     "local launcher)")
                return _train_on_spark(args, config)
            result = _family_trainer(config)(config, resume=args.resume)
        else:
            from pictor.training.autoencoder import train_autoencoder

            config = _resolve_config(args, AutoencoderTrainConfig)
            result = train_autoencoder(config, resume=args.resume)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.last_checkpoint is not None:  # rank 0 only
        final = f"last loss {result.losses[-1]:.5f}, " if result.losses else ""
        print(f"done: step {result.step}, {final}run folder {result.run_dir}, "
              f"checkpoint {result.last_checkpoint}")
    return 0


def _train_on_spark(args: argparse.Namespace, config) -> int:
    from pictor.training.checkpoints import find_latest
    from pictor.training.spark import SparkLaunch, train_with_torch_distributor

    launch = SparkLaunch(num_processes=args.num_processes, mode=args.spark_mode,
                         master=args.spark_master)
    try:
        summary = train_with_torch_distributor(config, launch, resume=args.resume)
    except RuntimeError as e:  # a process failed; TorchDistributor quotes its last lines
        print(f"error: {e}", file=sys.stderr)
        return 1
    run_dir = Path(summary["run_dir"])
    print(f"done: step {summary['step']} on {args.num_processes} processes (TorchDistributor), "
          f"run folder {run_dir}, checkpoint {find_latest(run_dir / 'checkpoints')}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    return _run(args, "train")


def run_train_autoencoder(args: argparse.Namespace) -> int:
    return _run(args, "train-autoencoder")


def run_finetune(args: argparse.Namespace) -> int:
    return _run(args, "finetune")
