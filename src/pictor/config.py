"""Typed experiment configs: one dataclass per component, YAML load/save, `--a.b=value` overrides.

A run is described by one `TrainConfig` (or `AutoencoderTrainConfig` for `pictor
train-autoencoder`), a tree of dataclasses whose every default is commented below. Component
configs owned by other areas are used as they are (`UNetConfig` from `pictor.networks.unet`,
`AutoencoderConfig` from `pictor.networks.autoencoder`, `ScheduleConfig` from
`pictor.diffusion.schedules`), so a field added there is configurable here without edits.

The resolved config (file + overrides) is written as `config.yaml` into every run folder and into
every checkpoint (EDM's training_options.json plays the same part).

Overrides use dotted paths into the tree, e.g. `--training.max_steps=500`,
`--optimizer.betas=[0.9,0.99]`, `--diffusion.min_snr_gamma=null`. Values are converted to the
field's annotated type; an unknown key is a ValueError that lists the valid keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from pictor.diffusion.schedules import ScheduleConfig
from pictor.networks.autoencoder import AutoencoderConfig
from pictor.networks.cvae import VaeConfig
from pictor.networks.gan import GanConfig
from pictor.networks.unet import UNetConfig

T = TypeVar("T")

# ----------------------------------------------------------------------------------------------
# Component configs
# ----------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    # Folder in the imagefolder layout: image files plus metadata.jsonl with one
    # {"file_name": ..., "text": ...} object per line (written by `pictor data synth`).
    path: str = "data/shapes"
    # Images are resized (bicubic) to image_size x image_size when they differ; 64 is the
    # shapes-world canvas.
    image_size: int = 64
    # Use only the first max_images records (None: all of them); small values make quick tests.
    max_images: int | None = None
    # Folder for the text-embedding and latent caches (safetensors keyed by data + encoder
    # identity). None keeps the caches in memory only, recomputed by every run.
    cache_dir: str | None = None


@dataclass
class TextEncoderConfig:
    # `pictor.text.encoders.load_text_encoder` spec: "minilm" (the pip-packaged all-MiniLM-L6-v2,
    # 384-d) or a local folder holding a Hugging Face encoder. Frozen: embeddings are computed once
    # per unique caption and cached. "trainable": a small transformer with a word vocabulary
    # built from the captions (pictor.text.encoders.TrainableTextEncoder), trained from scratch
    # with the U-Net (the comparison Imagen draws: pretrained text encoder vs none).
    spec: str = "minilm"
    # Token budget L: longer prompts are truncated with a warning (32 covers every canonical
    # shapes prompt). The embedding cache trims L to the longest caption actually seen.
    max_length: int = 32
    # spec "trainable" only: token width D (model.context_dim must equal it), layers and heads.
    trainable_dim: int = 256
    trainable_num_layers: int = 2
    trainable_num_heads: int = 4


@dataclass
class LatentSpaceConfig:
    # Where diffusion runs. "pixel": on the images themselves (optionally pixel-unshuffled);
    # "autoencoder": on the latents of a KL autoencoder trained by `pictor train-autoencoder`.
    kind: Literal["pixel", "autoencoder"] = "pixel"
    # Pixel space only: fold each k x k block of pixels into channels (Shi et al. 2016,
    # pixel shuffle), so the U-Net sees (3*k*k, H/k, W/k); 1 disables it.
    pixel_unshuffle_factor: int = 1
    # Autoencoder space only: the safetensors file written by `pictor train-autoencoder`
    # (its config, including scaling_factor, is read from the file's metadata).
    autoencoder_path: str | None = None


@dataclass
class DiffusionConfig:
    # Noise schedule (kind, num_timesteps, betas, zero-terminal-SNR): pictor.diffusion.schedules.
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # What the network predicts: "eps" (Ho et al. 2020), "v" (Salimans & Ho 2022) or "x0".
    prediction_type: Literal["eps", "v", "x0"] = "v"
    # Min-SNR-gamma loss weighting (Hang et al. 2023, eq. 9); None: unweighted MSE on the target.
    min_snr_gamma: float | None = 5.0


@dataclass
class OptimizerConfig:
    # "adamw" (Loshchilov & Hutter 2019), or "sgd": SGD with momentum betas[0], whose update is
    # linear in the gradient (the DDP equivalence test uses it: Adam turns the rounding noise
    # of an exactly-zero gradient into a +-lr step whose sign depends on summation order).
    name: Literal["adamw", "sgd"] = "adamw"
    # Peak learning rate.
    lr: float = 2e-4
    # Adam moment decay rates (beta1, beta2).
    betas: tuple[float, float] = (0.9, 0.999)
    # Decoupled weight decay.
    weight_decay: float = 0.01
    # Adam epsilon.
    eps: float = 1e-8
    # Linear warm-up from 0 to lr over this many optimizer steps.
    warmup_steps: int = 500
    # After warm-up: "constant" keeps lr; "cosine" decays it to min_lr_ratio * lr at max_steps.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # Floor of the cosine schedule as a fraction of lr.
    min_lr_ratio: float = 0.1


@dataclass
class TrainingConfig:
    # Global batch per optimizer step, summed over all processes and accumulation steps.
    batch_size: int = 64
    # Micro-batches accumulated per optimizer step; batch_size must divide by
    # grad_accum_steps * world_size.
    grad_accum_steps: int = 1
    # Number of optimizer steps of the run.
    max_steps: int = 20000
    # Wall-clock budget of one `pictor train` process in seconds (None: none): after the step
    # that reaches it the run stops as if max_steps were reached (checkpoint, validation,
    # final/). The family comparison gives every family the same budget (docs/families.md).
    # A resumed run gets the budget afresh. max_steps still sets the lr schedule's length.
    max_wall_seconds: float | None = None
    # Clip the global gradient norm to this value (None: no clipping, the norm is still logged).
    grad_clip_norm: float | None = 1.0
    # EMA decay per optimizer step of the weights used for sampling.
    ema_decay: float = 0.999
    # When set, replaces ema_decay by 0.5 ** (1 / ema_halflife_steps) (EDM's half-life form).
    ema_halflife_steps: float | None = None
    # Ramp the EMA decay as min(decay, (1 + n) / (10 + n)) so early averages are not dominated by
    # the random initialisation.
    ema_warmup: bool = True
    # Probability of replacing a caption by "" so that the model learns the unconditional
    # prediction classifier-free guidance needs (Ho & Salimans 2022).
    caption_dropout_prob: float = 0.1
    # Start from the weights of a trained U-Net: a model folder (pictor export-model), a run
    # folder (its final/) or a unet.safetensors file. Tensors of the same name and shape are
    # copied; the others (e.g. a newly added text adapter) keep their initialisation. Ignored
    # when resuming (the checkpoint has the weights).
    init_from: str | None = None
    # Weight of the grounding loss (pictor.training.grounding, TokenCompose's token loss): the
    # cross-attention of each word naming an object should fall on that object. Needs object
    # masks, i.e. shapes-world data from `pictor data synth`; 0 turns it off.
    grounding_loss_weight: float = 0.0
    # Weight of the centroid term (pictor.training.grounding.centroid_loss): the centre of each
    # grounded word's attention should be its object's centre, a coarse location signal that
    # still holds at high noise, where the relation of a `position` prompt decides the layout.
    # Same masks and words as the token loss; 0 turns it off.
    grounding_centroid_weight: float = 0.0
    # Weight of the learned layout prior's supervised loss (model.layout_prior_width > 0;
    # pictor.training.grounding.layout_prior_loss): each grounded word's predicted pixel
    # distribution against its object's mask, every other word's against uniform. Same masks
    # and words as the grounding loss; 0 turns it off.
    layout_prior_loss_weight: float = 0.0
    # Cross-attention maps of at least this side (in pixels of the U-Net's input) are grounded.
    grounding_min_resolution: int = 8
    # Which words are grounded: "all" (each object's colour and shape word) or "color" (only
    # colour words: the binding of colours to shapes, leaving shape words and counts free).
    grounding_words: Literal["all", "color"] = "all"
    # Stable Target Field (pictor.diffusion.losses.stable_target, Xu et al. 2023): regress on
    # the posterior mean over this many references with the example's caption (the example
    # itself and others drawn from the data set; "" for dropped captions draws from all) instead
    # of the one image. Lowers the target's variance at high noise, where layout is decided.
    # 0 or 1: off (the plain target).
    stable_target_references: int = 0
    # Timestep emphasis on high noise, where the layout (a `position` prompt's relation) is
    # decided: this fraction of each batch draws t uniformly from {high_noise_min_t, .., T-1}
    # instead of the whole range (0: plain uniform t, the same draws as before).
    high_noise_fraction: float = 0.0
    high_noise_min_t: int = 700
    # Autocast dtype: "auto" uses bf16 where the device computes it natively (CUDA GPUs that
    # support it, CPUs with AVX512-BF16 or AMX) and full precision elsewhere; "bf16"/"fp16"
    # force it (fp16 only on CUDA, with loss scaling); "no" disables it.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # "auto": CUDA when available, else CPU. Under torchrun each process takes cuda:LOCAL_RANK.
    device: str = "auto"
    # Seeds model init, data order, timesteps, noise and caption dropout.
    seed: int = 0
    # Torch intra-op threads per process (None: torch's default).
    num_threads: int | None = None
    # Write a checkpoint every this many optimizer steps (and at the end); 0: only at the end.
    checkpoint_every_steps: int = 1000
    # Keep the newest N complete checkpoints, delete older ones.
    keep_last_checkpoints: int = 3
    # Sample a validation grid every this many steps (and at the end); 0 disables it.
    validation_every_steps: int = 1000
    # Fixed prompts of the validation grid.
    validation_prompts: list[str] = field(
        default_factory=lambda: [
            "a red circle",
            "a blue square and a yellow triangle",
            "three stars",
            "a green circle to the left of a purple star",
        ]
    )
    # Sampler, number of steps and guidance scale of validation grids.
    validation_sampler: str = "dpm++2m"
    validation_num_steps: int = 20
    validation_guidance_scale: float = 4.0
    # Log metrics (JSONL, TensorBoard when installed) every this many steps.
    log_every_steps: int = 10
    # Show a tqdm progress bar (rank 0 only).
    progress_bar: bool = True
    # Run folder: config.yaml, metrics.jsonl, checkpoints/, samples/, final/, loss_curve.png.
    output_dir: str = "runs/shapes"


@dataclass
class TrainConfig:
    """Everything `pictor train` needs; see configs/shapes.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    latent_space: LatentSpaceConfig = field(default_factory=LatentSpaceConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


@dataclass
class AutoencoderLossConfig:
    # Weight of the mean absolute reconstruction error.
    l1_weight: float = 1.0
    # Weight of the mean squared reconstruction error.
    l2_weight: float = 0.0
    # Weight of KL(q(z|x) || N(0, I)) per latent element (Kingma & Welling 2014); small, as in
    # Rombach et al. 2022, so latents stay close to the data but bounded.
    kl_weight: float = 1e-6
    # Weight of an L1 loss on image gradients (finite differences), a cheap perceptual-free
    # sharpness term for flat-coloured shapes; 0 disables it.
    edge_weight: float = 0.0


@dataclass
class AutoencoderTrainConfig:
    """Everything `pictor train-autoencoder` needs; see configs/autoencoder.yaml.

    The training section is shared with diffusion training; caption dropout and validation
    prompts are not used (validation writes reconstructions instead).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-3,
                                                                             warmup_steps=100))
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        output_dir="runs/autoencoder", caption_dropout_prob=0.0, validation_prompts=[]))


@dataclass
class RewardConfig:
    """Reward fine-tuning (`pictor finetune`, pictor.reward): what is sampled, how it is scored
    and how the samples train the model."""

    # Model folder to start from (pictor export-model / a run's final/); `--init DIR` sets it.
    # Its config.yaml fixes the network, text encoder, schedule and latent space.
    init_from: str | None = None
    # "nft": DiffusionNFT's positive/negative objective (pictor.diffusion.losses.nft_loss);
    # "filtered": plain denoising on the samples that pass only (reward-filtered self-training,
    # the baseline that drifts).
    method: Literal["nft", "filtered"] = "nft"
    # NFT's beta: how far the implicit positive/negative policies sit from the old one.
    nft_beta: float = 1.0
    # Prompts per round and images per prompt (a group: rewards are compared within it).
    prompts_per_round: int = 16
    images_per_prompt: int = 8
    # r = 1/2 + clip(A / advantage_clip, -1, 1) / 2 from the group-normalised advantage A
    # (pictor.reward.finetune.optimality_probability): a sample this many standard deviations
    # above its group counts as surely good.
    advantage_clip: float = 2.0
    # Optimizer steps per round; each round samples afresh with the EMA weights (on-policy).
    steps_per_round: int = 2
    # Categories of the shapes world to draw prompts from, CATEGORY=WEIGHT,... (training
    # vocabulary only; never a suite's seeds).
    category_mix: str = ("single_object=0.5,colors=0.5,two_object=1,color_attr=1,counting=2,"
                         "position=3")
    # Share of prompts in the canonical grammar; the rest use training phrasings of the caption
    # language (pictor.data.captions.training_caption; never a held-out phrasing).
    canonical_share: float = 0.3
    # How samples are drawn: the shipped sampling defaults, layout guidance always off (the
    # reward is the model's own).
    sampler: str = "dpm++2m"
    num_steps: int = 20
    guidance_scale: float = 4.0
    # Weight of || f - f_ref ||^2 against the frozen starting model on the same noised samples:
    # a KL penalty (for Gaussian steps the KL between two policies is a weighted squared
    # difference of their predictions); 0 turns it off (and skips the reference pass).
    reference_weight: float = 0.0
    # Weight of the plain denoising loss on fresh ground-truth renders of the round's prompts
    # (the "pretraining mix" of InstructGPT's PPO-ptx, Ouyang et al. 2022): keeps the data
    # distribution, and the unconditional prediction guidance needs, where they were.
    pretrain_weight: float = 0.0
    pretrain_batch_size: int = 32
    pretrain_caption_dropout_prob: float = 0.1
    # This fraction of each batch draws t from {high_noise_min_t, .., T-1}, where layout and
    # counts are decided (0: uniform t).
    high_noise_fraction: float = 0.0
    high_noise_min_t: int = 700
    # Suites scored at every validation (training.validation_every_steps), model alone, with
    # validation_images_per_prompt images per prompt (>= 2 gives per-prompt diversity).
    validation_suites: list[str] = field(default_factory=lambda: ["validation-shapes"])
    validation_images_per_prompt: int = 2
    # A validated checkpoint is rejected (never exported) when its Frechet distance exceeds
    # max_fd_ratio x the starting model's, or its per-prompt diversity falls below
    # min_diversity_ratio x the starting model's: reward hacking shows there first.
    max_fd_ratio: float = 1.25
    min_diversity_ratio: float = 0.9


@dataclass
class FinetuneConfig:
    """Everything `pictor finetune` needs; see configs/reward.yaml. The network, text encoder,
    schedule and latent space are the starting model's (reward.init_from)."""

    reward: RewardConfig = field(default_factory=RewardConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=1e-5, warmup_steps=0))
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        output_dir="runs/reward", max_steps=400, checkpoint_every_steps=100,
        validation_every_steps=100, ema_halflife_steps=2, validation_prompts=[],
        mixed_precision="auto"))


# ----------------------------------------------------------------------------------------------
# The other model families (docs/families.md): a conditional GAN and a conditional VAE, trained
# by `pictor train` like diffusion; `model.family` in the YAML says which (default: diffusion)
# ----------------------------------------------------------------------------------------------


@dataclass
class GanObjectiveConfig:
    # Gradient penalty on real, matched pairs: "ma_gp" (DF-GAN's matching-aware zero-centred
    # penalty over image and sentence) or "r1" (Mescheder et al. 2018, image only).
    penalty: Literal["ma_gp", "r1"] = "ma_gp"
    # MA-GP's k (DF-GAN: 2) or R1's gamma.
    penalty_weight: float = 2.0
    # MA-GP's exponent p on the gradient norm (DF-GAN: 6); unused by R1.
    penalty_power: float = 6.0
    # Share of the discriminator's negative term given to real images with a mismatched
    # sentence (DF-GAN: 0.5; 0: an unconditional-style negative term of fakes only).
    mismatch_weight: float = 0.5
    # DiffAugment ops applied to real and fake images before the discriminator (Zhao et al.
    # 2020): a comma-separated subset of color, translation, cutout; "" for none.
    diffaugment: str = "color,translation,cutout"
    # Learning rate of the discriminator as a multiple of optimizer.lr (DF-GAN: 4e-4 against
    # the generator's 1e-4, the two time-scale update rule of Heusel et al. 2017).
    discriminator_lr_scale: float = 4.0
    # From unconditional to conditional training (Shahbazi et al. 2022, "Collapse by
    # Conditioning: Training Class-conditional GANs with Limited Data", ICLR), against the
    # collapse the condition itself can cause on small data: the sentence embedding both
    # players see (and the mismatch term's weight) is scaled by lambda_t, 0 before step
    # condition_ramp_start, rising linearly to 1 at condition_ramp_end. Both 0: conditional
    # from the start (DF-GAN).
    condition_ramp_start: int = 0
    condition_ramp_end: int = 0


@dataclass
class GanTrainConfig:
    """Everything `pictor train` needs for a conditional GAN; see configs/gan.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    model: GanConfig = field(default_factory=GanConfig)
    gan: GanObjectiveConfig = field(default_factory=GanObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=1e-4, betas=(0.0, 0.9), weight_decay=0.0, warmup_steps=0))
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        output_dir="runs/gan", caption_dropout_prob=0.0, grad_clip_norm=None,
        mixed_precision="no"))


@dataclass
class VaeObjectiveConfig:
    # KL warm-up (Bowman et al. 2016; Sonderby et al. 2016): the KL term's weight rises linearly
    # from 0 to 1 over this many steps, so the decoder learns to use z before the prior pulls
    # q(z|x,c) onto it; 0: weight 1 from the start. The reported bits/dim always use weight 1.
    kl_warmup_steps: int = 1000
    # Sampling temperature: z = mu_p + temperature * sigma_p * eps (1: the model's prior).
    sample_temperature: float = 1.0


@dataclass
class VaeTrainConfig:
    """Everything `pictor train` needs for a conditional VAE; see configs/vae.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    model: VaeConfig = field(default_factory=VaeConfig)
    vae: VaeObjectiveConfig = field(default_factory=VaeObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=5e-4, weight_decay=0.0, warmup_steps=100))
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        output_dir="runs/vae", caption_dropout_prob=0.0, mixed_precision="no"))


FAMILIES = ("diffusion", "gan", "vae")
FAMILY_CONFIGS: dict[str, type] = {"diffusion": TrainConfig, "gan": GanTrainConfig,
                                   "vae": VaeTrainConfig}


def config_family(data: Any, where: str = "config") -> str:
    """The model family a config names in `model.family` ("diffusion" when absent, so every
    config written before the other families existed still reads as diffusion)."""
    model = data.get("model") if isinstance(data, dict) else None
    family = model.get("family", "diffusion") if isinstance(model, dict) else "diffusion"
    if family not in FAMILIES:
        raise ValueError(f"{where}: model.family {family!r} is not one of {', '.join(FAMILIES)}")
    return str(family)


def _family_data(data: Any, where: str) -> tuple[type, dict[str, Any]]:
    """(config class, data) of a parsed YAML mapping; a diffusion config's optional
    `model.family: diffusion` is dropped (UNetConfig has no such field)."""
    if data is not None and not isinstance(data, dict):
        return TrainConfig, data  # from_dict says what is wrong with it
    data = dict(data or {})
    family = config_family(data, where)
    if family == "diffusion" and isinstance(data.get("model"), dict):
        data["model"] = {k: v for k, v in data["model"].items() if k != "family"}
    return FAMILY_CONFIGS[family], data


def load_family_config(path: str | Path, overrides: list[str] | None = None) -> Any:
    """load_config of a `pictor train` YAML of any family: TrainConfig, GanTrainConfig or
    VaeTrainConfig as its model.family says."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    raw = read_yaml_file(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections")
    cls, data = _family_data(raw, str(path))
    config = from_dict(cls, apply_overrides(data, overrides or [], cls))
    validate(config)
    return config


def family_config_from_yaml_text(text: str, where: str = "config") -> Any:
    """config_from_yaml_text for a saved config of any family (model folders, checkpoints)."""
    cls, data = _family_data(load_yaml(text, where) or {}, where)
    try:
        return from_dict(cls, data)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def family_of(config: Any) -> str:
    """The family of a typed config."""
    return next(f for f, cls in FAMILY_CONFIGS.items() if isinstance(config, cls))


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass, with type conversion and clear errors
# ----------------------------------------------------------------------------------------------


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass tree as plain nested dicts/lists (tuples become lists), ready for YAML/JSON."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass `cls` from nested dicts; missing keys keep their defaults.

    Raises ValueError naming the key path and the valid keys when a key is unknown, and naming the
    expected type when a value cannot be converted.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping of keys to values, got "
                         f"{type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key {_join(where, unknown[0])!r}; valid keys"
            f"{' of ' + repr(where) if where else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], _join(where, name))
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_optional(tp: Any) -> tuple[bool, list[Any]]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = list(typing.get_args(tp))
        return type(None) in args, [a for a in args if a is not type(None)]
    return False, [tp]


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value (or an override's raw string) to annotated type `tp`."""
    optional, choices = _is_optional(tp)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")
                         and (optional or tp is not str)):
        if optional:
            return None
        raise ValueError(f"{where}: may not be null (expected {_type_name(tp)})")
    errors = []
    for choice in choices:
        try:
            return _convert_one(value, choice, where)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not a valid "
                     f"{_type_name(tp)}")


def _convert_one(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            raise ValueError(f"{where} is a section, not a value; set its fields, e.g. "
                             f"--{where}.{dataclasses.fields(tp)[0].name}=...")
        return from_dict(tp, value, where=where)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        for a in allowed:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{where}: expected a string, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = load_yaml(value, where)  # override string such as "[0.9, 0.99]"
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is list:
            item = args[0] if args else Any
            return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in
                     enumerate(zip(value, args or [Any] * len(value), strict=True)))
    if origin is dict:
        if isinstance(value, str):
            value = load_yaml(value, where)
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError(f"{where}: cannot convert {value!r} to {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# ----------------------------------------------------------------------------------------------
# Overrides, YAML files
# ----------------------------------------------------------------------------------------------


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type) -> dict[str, Any]:
    """Apply `--a.b=value` (or `a.b=value`) strings to nested dict `data`, checking keys on `cls`.

    Returns a new dict; values stay strings here and are converted by `from_dict`.
    """
    out = _deepcopy_dict(data)
    for raw in overrides:
        text = raw[2:] if raw.startswith("--") else raw
        if "=" not in text:
            raise ValueError(f"override {raw!r} must look like --section.key=value")
        key, value = text.split("=", 1)
        parts = key.strip().split(".")
        node_cls: Any = cls
        node = out
        for i, part in enumerate(parts):
            where = ".".join(parts[:i])
            if not dataclasses.is_dataclass(node_cls):
                raise ValueError(f"override {raw!r}: {where!r} is a value, not a section")
            names = [f.name for f in dataclasses.fields(node_cls) if f.init]
            if part not in names:
                raise ValueError(
                    f"unknown config key {'.'.join(parts[: i + 1])!r} in override {raw!r}; valid "
                    f"keys{' of ' + repr(where) if where else ''}: {', '.join(sorted(names))}"
                )
            field_type = typing.get_type_hints(node_cls)[part]
            if i == len(parts) - 1:
                node[part] = value
            else:
                sub = node.get(part)
                if not isinstance(sub, dict):
                    sub = {}
                    node[part] = sub
                node = sub
                _, choices = _is_optional(field_type)
                node_cls = choices[0]
    return out


def _deepcopy_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy_dict(v) if isinstance(v, dict) else v for k, v in d.items()}


# ----------------------------------------------------------------------------------------------
# YAML with limits: config files come from model folders and checkpoints that others hand over
# ----------------------------------------------------------------------------------------------

MAX_YAML_BYTES = 1 << 20   # a config is a few KB
MAX_YAML_NODES = 100_000   # nodes after expanding aliases (a config has a few hundred)


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """Nodes of the document with every alias expanded, counted without expanding them
    (each node once, memoised): an alias bomb of 9 levels x 10 aliases is 10^9 nodes here."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ValueError("the YAML refers to itself (a recursive alias)")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_nodes(child, memo, active)
        if total > MAX_YAML_NODES:
            break
    active.discard(key)
    memo[key] = total
    return total


def load_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with limits: at most MAX_YAML_BYTES characters and MAX_YAML_NODES nodes
    once aliases are expanded (an alias bomb in a model folder's config.yaml hung `pictor
    generate` for minutes). ValueError naming `where` and the problem otherwise."""
    if len(text) > MAX_YAML_BYTES:
        raise ValueError(f"{where}: {len(text)} characters, more than a config may have "
                         f"({MAX_YAML_BYTES})")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node, {}, set()) > MAX_YAML_NODES:
            raise ValueError(f"more than {MAX_YAML_NODES} values once its aliases are "
                             "expanded (an alias bomb?)")
        return loader.construct_document(node)
    except (yaml.YAMLError, ValueError, RecursionError) as error:
        raise ValueError(f"{where}: not a usable YAML config ({type(error).__name__}: "
                         f"{str(error)[:300]})") from None
    finally:
        loader.dispose()


def read_text_limited(path: str | Path) -> str:
    """The text of a regular file of at most MAX_YAML_BYTES bytes; ValueError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a regular file")
    with open(path, "rb") as f:
        data = f.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        raise ValueError(f"{path}: more than {MAX_YAML_BYTES} bytes, more than a config has")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None


def read_yaml_file(path: str | Path) -> Any:
    """load_yaml of a regular file, reading at most MAX_YAML_BYTES + 1 bytes of it."""
    return load_yaml(read_text_limited(path), str(path))


def load_config(path: str | Path | None, cls: type[T] = TrainConfig,  # type: ignore[assignment]
                overrides: list[str] | None = None) -> T:
    """Read YAML file `path` (None: all defaults), apply overrides, return a typed config."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        data = read_yaml_file(path) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping of sections")
    data = apply_overrides(data, overrides or [], cls)
    config = from_dict(cls, data)
    validate(config)
    return config


def config_from_yaml_text(text: str, cls: type[T], where: str = "config") -> T:
    """Parse a config saved by `dump_yaml` (checkpoints, run folders, model folders);
    ValueError naming `where` and the problem when it is not one."""
    data = load_yaml(text, where) or {}
    try:
        return from_dict(cls, data)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None, width=100)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_yaml(config))
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------
# Validation of values that types alone do not catch
# ----------------------------------------------------------------------------------------------


def validate(config: Any) -> None:
    """Raise ValueError with an actionable message for inconsistent settings."""
    if isinstance(config, (TrainConfig, AutoencoderTrainConfig)):
        _validate_training(config.training)
        _validate_optimizer(config.optimizer)
        if config.data.image_size <= 0:
            raise ValueError(f"data.image_size must be positive, got {config.data.image_size}")
    if isinstance(config, (GanTrainConfig, VaeTrainConfig)):
        _validate_training(config.training)
        _validate_optimizer(config.optimizer)
        _validate_family(config)
    if isinstance(config, FinetuneConfig):
        _validate_training(config.training)
        _validate_optimizer(config.optimizer)
        _validate_reward(config.reward, config.training)
    if isinstance(config, TrainConfig):
        ls = config.latent_space
        if ls.pixel_unshuffle_factor < 1:
            raise ValueError("latent_space.pixel_unshuffle_factor must be >= 1")
        if ls.kind == "pixel" and config.data.image_size % ls.pixel_unshuffle_factor:
            raise ValueError(
                f"data.image_size={config.data.image_size} is not divisible by "
                f"latent_space.pixel_unshuffle_factor={ls.pixel_unshuffle_factor}")
        if ls.kind == "autoencoder" and not ls.autoencoder_path:
            raise ValueError("latent_space.kind=autoencoder needs latent_space.autoencoder_path "
                             "(a file written by `pictor train-autoencoder`)")
        if config.diffusion.min_snr_gamma is not None and config.diffusion.min_snr_gamma <= 0:
            raise ValueError("diffusion.min_snr_gamma must be positive or null")
        num_t, min_t = config.diffusion.schedule.num_timesteps, config.training.high_noise_min_t
        if not 0 <= min_t < num_t:
            raise ValueError(f"training.high_noise_min_t must be in [0, {num_t}) (diffusion."
                             f"schedule.num_timesteps), got {min_t}")


def _validate_family(config: GanTrainConfig | VaeTrainConfig) -> None:
    size = config.model.image_size
    if config.data.image_size != size:
        levels = "generator_channels" if isinstance(config, GanTrainConfig) else "channels"
        raise ValueError(f"data.image_size={config.data.image_size} but the model makes "
                         f"{size}x{size} images (4 * 2 ** (len(model.{levels}) - 1)); set "
                         f"--data.image_size={size} or change model.{levels}")
    if config.text.spec == "trainable":
        raise ValueError("the GAN and VAE families condition on a frozen text encoder's "
                         "sentence embedding; text.spec 'trainable' is diffusion-only")
    if isinstance(config, GanTrainConfig):
        from pictor.training.diffaugment import parse_policy

        parse_policy(config.gan.diffaugment)
        g = config.gan
        if g.penalty_weight < 0 or g.penalty_power <= 0 or g.discriminator_lr_scale <= 0:
            raise ValueError("gan.penalty_weight must be >= 0, gan.penalty_power > 0 and "
                             "gan.discriminator_lr_scale > 0")
        if not 0 <= g.condition_ramp_start <= g.condition_ramp_end:
            raise ValueError("gan.condition_ramp_start and condition_ramp_end must satisfy "
                             "0 <= start <= end")
        if not 0.0 <= g.mismatch_weight < 1.0:
            raise ValueError(f"gan.mismatch_weight must be in [0, 1), got {g.mismatch_weight}")
    else:
        if config.vae.kl_warmup_steps < 0 or not config.vae.sample_temperature > 0:
            raise ValueError("vae.kl_warmup_steps must be >= 0 and vae.sample_temperature > 0")


def _validate_training(t: TrainingConfig) -> None:
    for name in ("batch_size", "grad_accum_steps", "max_steps", "log_every_steps"):
        if getattr(t, name) < 1:
            raise ValueError(f"training.{name} must be >= 1, got {getattr(t, name)}")
    for name in ("checkpoint_every_steps", "validation_every_steps", "validation_num_steps"):
        if getattr(t, name) < 0:
            raise ValueError(f"training.{name} must be >= 0, got {getattr(t, name)}")
    if t.max_wall_seconds is not None and not t.max_wall_seconds > 0:
        raise ValueError(f"training.max_wall_seconds must be positive or null, got "
                         f"{t.max_wall_seconds}")
    if t.keep_last_checkpoints < 1:
        raise ValueError("training.keep_last_checkpoints must be >= 1")
    if t.batch_size % t.grad_accum_steps:
        raise ValueError(f"training.batch_size={t.batch_size} must be divisible by "
                         f"training.grad_accum_steps={t.grad_accum_steps}")
    if not 0.0 <= t.caption_dropout_prob <= 1.0:
        raise ValueError(f"training.caption_dropout_prob must be in [0, 1], got "
                         f"{t.caption_dropout_prob}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ValueError(f"training.ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.ema_halflife_steps is not None and t.ema_halflife_steps <= 0:
        raise ValueError("training.ema_halflife_steps must be positive or null")
    if t.grad_clip_norm is not None and t.grad_clip_norm <= 0:
        raise ValueError("training.grad_clip_norm must be positive or null")
    if t.grounding_loss_weight < 0:
        raise ValueError(f"training.grounding_loss_weight must be >= 0, got "
                         f"{t.grounding_loss_weight}")
    if t.layout_prior_loss_weight < 0:
        raise ValueError(f"training.layout_prior_loss_weight must be >= 0, got "
                         f"{t.layout_prior_loss_weight}")
    if t.grounding_centroid_weight < 0:
        raise ValueError(f"training.grounding_centroid_weight must be >= 0, got "
                         f"{t.grounding_centroid_weight}")
    if not 0.0 <= t.high_noise_fraction <= 1.0:
        raise ValueError(f"training.high_noise_fraction must be in [0, 1], got "
                         f"{t.high_noise_fraction}")
    if t.stable_target_references < 0:
        raise ValueError(f"training.stable_target_references must be >= 0 (0 = off), got "
                         f"{t.stable_target_references}")
    if t.grounding_min_resolution < 1:
        raise ValueError(f"training.grounding_min_resolution must be >= 1, got "
                         f"{t.grounding_min_resolution}")


def _validate_reward(r: RewardConfig, t: TrainingConfig) -> None:
    for name in ("prompts_per_round", "steps_per_round", "num_steps", "pretrain_batch_size"):
        if getattr(r, name) < 1:
            raise ValueError(f"reward.{name} must be >= 1, got {getattr(r, name)}")
    if r.images_per_prompt < 2:
        raise ValueError(f"reward.images_per_prompt must be >= 2 (rewards are compared within "
                         f"a prompt's group), got {r.images_per_prompt}")
    for name in ("nft_beta", "advantage_clip"):
        if not getattr(r, name) > 0:
            raise ValueError(f"reward.{name} must be > 0, got {getattr(r, name)}")
    for name in ("reference_weight", "pretrain_weight"):
        if getattr(r, name) < 0:
            raise ValueError(f"reward.{name} must be >= 0, got {getattr(r, name)}")
    for name in ("canonical_share", "high_noise_fraction", "pretrain_caption_dropout_prob"):
        if not 0.0 <= getattr(r, name) <= 1.0:
            raise ValueError(f"reward.{name} must be in [0, 1], got {getattr(r, name)}")
    if r.validation_images_per_prompt < 1:
        raise ValueError("reward.validation_images_per_prompt must be >= 1")
    if r.max_fd_ratio <= 0 or r.min_diversity_ratio < 0:
        raise ValueError("reward.max_fd_ratio must be > 0 and reward.min_diversity_ratio >= 0")
    # A round's samples come from the weights at its start; a checkpoint in the middle of a
    # round could not be resumed exactly (the samples would come from later weights).
    for name in ("checkpoint_every_steps", "max_steps"):
        if getattr(t, name) % r.steps_per_round:
            raise ValueError(f"training.{name} ({getattr(t, name)}) must be a multiple of "
                             f"reward.steps_per_round ({r.steps_per_round}), so checkpoints "
                             f"fall between rounds")
    if t.batch_size > r.prompts_per_round * r.images_per_prompt:
        raise ValueError(f"training.batch_size ({t.batch_size}) exceeds the samples of a round "
                         f"(reward.prompts_per_round x images_per_prompt = "
                         f"{r.prompts_per_round * r.images_per_prompt})")


def _validate_optimizer(o: OptimizerConfig) -> None:
    if o.lr <= 0:
        raise ValueError(f"optimizer.lr must be positive, got {o.lr}")
    if not all(0.0 <= b < 1.0 for b in o.betas):
        raise ValueError(f"optimizer.betas must lie in [0, 1), got {list(o.betas)}")
    if o.warmup_steps < 0:
        raise ValueError("optimizer.warmup_steps must be >= 0")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise ValueError("optimizer.min_lr_ratio must be in [0, 1]")
