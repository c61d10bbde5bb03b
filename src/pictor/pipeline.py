"""Text-to-image sampling from a trained model folder: `load_pipeline(model_dir).generate(prompt)`.

A model folder is a training run's `final/` folder (or a copy of it, e.g. models/shapes-v11):
- `unet.safetensors`: EMA weights of the U-Net, its UNetConfig in the safetensors metadata;
- `config.yaml`: the resolved TrainConfig (text encoder spec and max_length, latent space,
  noise schedule, prediction type, image size);
- `autoencoder.safetensors` (latent models only; else the config's autoencoder_path is used);
- `text_encoder.safetensors` (only when the text encoder was trained with the U-Net,
  `text.spec: trainable`; a frozen pretrained encoder is loaded from its spec).

Reproducibility contract: image i of a call uses its own CPU generator seeded with seed + i, for
x_T and for every noise draw of the sampler, so image i is the same whatever num_images; the
network calls of the n images (and of the two CFG halves, Ho & Salimans 2022) are batched. On
CPU the pixels are bit-identical across runs, processes and torch thread counts (tested).

The text encoder is loaded once per pipeline and each prompt is encoded once (cached); the
embeddings are padded to the encoder's max_length, then trimmed to the longest real token run of
the prompts in one call (masked keys carry exactly zero attention weight).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pictor.config import (
    TrainConfig,
    config_family,
    config_from_yaml_text,
    load_yaml,
    read_text_limited,
)
from pictor.diffusion.denoiser import Denoiser
from pictor.diffusion.forward import q_sample
from pictor.diffusion.schedules import NoiseSchedule
from pictor.guidance import (
    CFG,
    LayoutSettings,
    expand_cond,
    layout_rules,
    plan_layout,
    prompt_layout_bias,
)
from pictor.hardware import device_name, has_native_bf16
from pictor.networks.codec import LatentCodec, build_codec
from pictor.networks.io import load_module
from pictor.networks.unet import UNet, UNetConfig
from pictor.provenance import ProvenanceRecord
from pictor.samplers import SAMPLER_ALIASES, SAMPLERS, get_sampler
from pictor.text.encoders import (
    TEXT_ENCODER_FILE,
    TRAINABLE_SPEC,
    EmbeddingDiskCache,
    default_cache_dir,
    frozen_encoder_identity,
)

UNET_FILE = "unet.safetensors"
CONFIG_FILE = "config.yaml"
AUTOENCODER_FILE = "autoencoder.safetensors"
DEFAULT_GUIDANCE_SCALE = 4.0  # the guidance scale of the shapes validation grids
DEFAULT_NUM_STEPS = 20
DEFAULT_SAMPLER = "dpm++2m"
# Guidance interval (Kynkaenniemi et al. 2024; pictor.guidance): guide while the noise level
# sigma = sqrt((1 - ab) / ab) is >= 1, where layout, colours and shapes are decided; below it the
# conditional prediction alone (one U-Net pass instead of two). Tuned on validation-shapes: the
# same scores as guiding every step, ~20% less time (README of the shipped model). Records
# without the key (older images) were guided at every step: None.
DEFAULT_GUIDANCE_INTERVAL: tuple[float, float | None] | None = (1.0, None)
# The U-Net's compute dtype. bfloat16 runs the network in bf16 (the sampler's arithmetic stays
# float32): faster on CPUs with AVX512-BF16 or AMX and on recent GPUs, slow where it is emulated.
# "auto" takes bfloat16 where the hardware has it natively, else float32. Records name the
# dtype used and `pictor reproduce` follows; records without it were float32.
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEFAULT_COMPUTE_DTYPE = "auto"
# A process that keeps generating (a server, a notebook, a benchmark) runs the U-Net as a
# TorchScript trace once an input shape has come this many times: the same aten kernels on the
# same inputs, so the same bits (tested), without the Python cost of ~300 module calls per pass
# (~17% of a 16x16 pass on 2 cores). Tracing costs ~0.5 s per shape, so a one-image
# `pictor generate` (11 + 9 passes at two shapes) stays eager. None or PICTOR_TRACE=0: never.
TRACE_AFTER_CALLS: int | None = 30
MAX_TRACED_SHAPES = 16  # least recently used traces are dropped beyond this
PROMPT_TERMS_KEPT = 32  # contexts whose U-Net prompt terms are kept (Pipeline._context_terms):
# a micro-batch of the server runs each request's rows with its own context (serving.batching)
# Layout guidance (pictor.guidance): a prompt that states one spatial relation ("A to the left of
# B") has its objects' words steered to their sides in the first steps, and its count words
# weigh more there. Records say whether it ran (extra["layout"]) and with which rules
# (extra["layout_rules"]); records without the first were made without it, records without the
# second with the relation rule only (the one rule before "count" was added).
# Off by default since shapes-v11: its learned layout prior places objects without the rule, and
# on validation-shapes-para (everyday wording) the rule helped nothing and cost two_object 24 ->
# 18 of 64 (docs/alignment.md). `layout=True` / `--layout on` still turns it on.
DEFAULT_LAYOUT = False


def layout_extra(layout: bool | Sequence[str]) -> dict[str, Any]:
    """What a record's extra says about layout guidance (see DEFAULT_LAYOUT)."""
    rules = layout_rules(layout)
    return {"layout": bool(rules), **({"layout_rules": list(rules)} if rules else {})}


def layout_from_extra(extra: dict[str, Any]) -> tuple[str, ...]:
    """The layout rules a record's extra says the image was made with (layout_extra)."""
    if not extra.get("layout", False):
        return ()
    return layout_rules(extra.get("layout_rules", ["relation"]))


def resolve_compute_dtype(name: str, device: torch.device) -> str:
    """"auto" -> "bfloat16" where `device` computes bf16 natively, else "float32"; other names
    are checked and returned. ValueError for an unknown name."""
    if name == "auto":
        return "bfloat16" if has_native_bf16(device) else "float32"
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype {name!r}: choose auto or one of "
                         f"{', '.join(COMPUTE_DTYPES)}")
    return name
# Samplers that draw noise at every step: run image by image so each uses only its generator.
STOCHASTIC_SAMPLERS = {"ddpm"}
# Prompts whose embeddings a pipeline keeps (least recently used evicted first).
PROMPT_CACHE_SIZE = 1024

# callback(step_index, num_steps, t, x_t, x0_pred), as the samplers call it
Callback = Callable[[int, int, float, torch.Tensor, torch.Tensor], None]


@dataclass
class GeneratedImage:
    image: Image.Image  # RGB
    record: ProvenanceRecord  # what made it (its own seed: seed + i)


@dataclass
class TrajectoryStep:
    step_index: int
    t: float  # the training timestep the network saw
    x_t: Image.Image  # the noisy sample the network saw, decoded
    x0_pred: Image.Image  # the network's estimate of the clean image at this step, decoded


def guidance_interval_value(interval: Sequence[float | None] | None
                            ) -> list[float | None] | None:
    """The JSON form of a guidance interval for provenance records: [lo, hi or None] or None."""
    if interval is None:
        return None
    lo, hi = interval
    return [float(lo), None if hi is None or hi == float("inf") else float(hi)]


def canonical_sampler_name(name: str) -> str:
    """The canonical name of a sampler alias; ValueError listing the samplers if unknown."""
    get_sampler(name)
    key = name.strip().lower()
    return SAMPLER_ALIASES.get(key, key)


def resolve_model_files(model_dir: str | Path) -> tuple[Path, TrainConfig, Path | None]:
    """(model folder, its TrainConfig, autoencoder file or None); ValueError naming what's missing."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise ValueError(
            f"model folder {str(model_dir)!r} does not exist; pass the final/ folder of a "
            "training run (pictor train writes <output_dir>/final/) or set PICTOR_MODEL"
        )
    config_path = model_dir / CONFIG_FILE
    if config_path.is_file():  # a GAN or VAE folder: say so, not "no unet.safetensors"
        family = config_family(load_yaml(read_text_limited(config_path), str(config_path)),
                               str(config_path))
        if family != "diffusion":
            raise ValueError(f"{str(model_dir)!r} holds a {family} model (model.family in its "
                             f"{CONFIG_FILE}); this runs diffusion models only. pictor "
                             "generate, reproduce and eval take every family "
                             "(pictor.families.load_model)")
    for name in (UNET_FILE, CONFIG_FILE):
        if not (model_dir / name).is_file():
            raise ValueError(
                f"model folder {str(model_dir)!r} has no {name} (looked for "
                f"{str(model_dir / name)!r}); a model folder is a training run's final/ folder"
            )
    config = config_from_yaml_text(read_text_limited(model_dir / CONFIG_FILE), TrainConfig,
                                   where=str(model_dir / CONFIG_FILE))
    ae_path = None
    if config.latent_space.kind == "autoencoder":
        tried = [model_dir / AUTOENCODER_FILE]
        if config.latent_space.autoencoder_path:
            tried.append(Path(config.latent_space.autoencoder_path))
        ae_path = next((p for p in tried if p.is_file()), None)
        if ae_path is None:
            raise ValueError(
                f"latent model {str(model_dir)!r} needs its autoencoder; looked for "
                f"{', '.join(repr(str(p)) for p in tried)}. Copy the file written by "
                f"`pictor train-autoencoder` into the model folder as {AUTOENCODER_FILE}"
            )
    if config.text.spec == TRAINABLE_SPEC and not (model_dir / TEXT_ENCODER_FILE).is_file():
        raise ValueError(
            f"model {str(model_dir)!r} was trained with its own text encoder (text.spec: "
            f"trainable) but has no {TEXT_ENCODER_FILE} (looked for "
            f"{str(model_dir / TEXT_ENCODER_FILE)!r})")
    return model_dir, config, ae_path


def _weight_files(model_dir: Path, config: TrainConfig, ae_path: Path | None) -> list[Path]:
    """The files whose bytes define the model (what the provenance digest covers)."""
    files = [model_dir / UNET_FILE] + ([ae_path] if ae_path else [])
    if config.text.spec == TRAINABLE_SPEC:
        files.append(model_dir / TEXT_ENCODER_FILE)
    return files


def _digest(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def model_digest(model_dir: str | Path) -> str:
    """sha256 over the model's weight files (U-Net, autoencoder and trained text encoder if
    any): names sorted, each name then its bytes. What ProvenanceRecord.model_sha256 holds."""
    model_dir, config, ae_path = resolve_model_files(model_dir)
    return _digest(_weight_files(model_dir, config, ae_path))


def model_name_of(model_dir: str | Path) -> str:
    """The name a model folder goes by (provenance records, `pictor serve`): its folder name,
    or <run>/final for a training run's final/ folder."""
    d = Path(model_dir).resolve()
    return f"{d.parent.name}/{d.name}" if d.name == "final" else d.name


class _PreparedContextUNet(torch.nn.Module):
    """unet(x, t, context, mask, context_prepared=True, prompt_terms=terms) as a module with
    positional inputs only (what torch.jit.trace takes)."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor, terms: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.unet(x, t, context, mask, context_prepared=True, prompt_terms=terms)


class _PreparedContextLayoutUNet(_PreparedContextUNet):
    """The same with the layout-guidance bias as an input before the terms."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,  # type: ignore[override]
                mask: torch.Tensor, layout: torch.Tensor, terms: tuple[torch.Tensor, ...]
                ) -> torch.Tensor:
        return self.unet(x, t, context, mask, context_prepared=True, layout=layout,
                         prompt_terms=terms)


def _trace_unet(unet: UNet, example: tuple[torch.Tensor, ...]) -> Any:
    """A TorchScript trace of the U-Net for the example's shapes, or None if tracing fails.
    The traced branch of `layers.attention` is the one for rows that all have a real key, which
    every encoded prompt has ([CLS] and [SEP] at least)."""
    import warnings

    if not bool(example[3].any(dim=1).all()):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about the branches above
            with torch.no_grad():
                wrapper = _PreparedContextUNet if len(example) == 5 else _PreparedContextLayoutUNet
                module = wrapper(unet).eval()
                # One eager pass first fills the caches of values computed once per weight
                # version (packed convolution weights, position terms), so that the trace reads
                # them as constants instead of recording their computation.
                module(*example)
                return torch.jit.trace(module, example, check_trace=False)
    except Exception:  # noqa: BLE001 - TorchScript is optional; eager is always right
        return None


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B RGB images (round half away from zero of (x+1)*127.5)."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    return [Image.fromarray(np.ascontiguousarray(a), "RGB") for a in arr]


def pil_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB image -> (1, 3, size, size) in [-1, 1] (bicubic resize when the size differs)."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # (H, W, 3)
    return (arr.permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0).contiguous()


class Pipeline:
    """A loaded model: U-Net, codec, text encoder and schedule. Build with `load_pipeline`."""

    def __init__(self, model_dir: Path, config: TrainConfig, unet: UNet, codec: LatentCodec,
                 model_sha256: str, device: torch.device) -> None:
        self.model_dir = model_dir
        self.config = config
        self.unet = unet
        self.codec = codec
        self.device = device
        self.model_sha256 = model_sha256
        self.model_name = model_name_of(model_dir)
        self.schedule = NoiseSchedule.from_config(config.diffusion.schedule)
        self.prediction_type = config.diffusion.prediction_type
        self.image_size = config.data.image_size
        h = self.image_size // codec.downsampling_factor
        self.latent_shape = (codec.channels, h, h)  # (C, h, w) of x_T
        self._text_encoder: Any = None
        self._offsets_tokenizer: Any = None
        self.layout_settings = LayoutSettings()
        self._compiled_text_encoder: Any = None  # None: not looked for; False: none saved
        # Per-prompt embeddings, least recently used evicted beyond prompt_cache_size (a server
        # sees unboundedly many distinct prompts).
        self._embeddings: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.prompt_cache_size = PROMPT_CACHE_SIZE
        # Keep frozen-encoder embeddings on disk between processes (bounded; the server turns
        # it off unless asked, since entries hold prompts in plain text).
        self.embedding_disk_cache = True
        self.compute_dtype = "float32"
        self.trace_after_calls = (None if os.environ.get("PICTOR_TRACE", "1") == "0"
                                  else TRACE_AFTER_CALLS)
        self._shape_calls: dict[tuple, int] = {}
        self._traces: OrderedDict[tuple, Any] = OrderedDict()
        self._trace_lock = threading.Lock()
        # The U-Net's prompt terms (UNet.prompt_terms) of the last contexts run, so that the
        # steps of a sampler compute them once: [(context, mask, layout, dtype, context in
        # dtype, layout in dtype, terms)], most recent first (Pipeline._context_terms).
        self._prompt_terms: list[tuple] = []
        # Per-prompt results (text-adapter outputs, layout-prior biases) by key and compute dtype
        # (Pipeline._per_prompt).
        self._adapted_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._terms_lock = threading.Lock()  # guards both

    def set_compute_dtype(self, name: str) -> None:
        """Run the U-Net in `name` ("auto" or a key of COMPUTE_DTYPES; resolve_compute_dtype)."""
        name = resolve_compute_dtype(name, self.device)
        self.unet.to(COMPUTE_DTYPES[name])
        self.compute_dtype = name
        with self._trace_lock:  # traces hold the weights as they were
            self._traces.clear()
            self._shape_calls.clear()
        with self._terms_lock:
            self._prompt_terms.clear()
            self._adapted_cache.clear()

    def run_unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                 mask: torch.Tensor, layout: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net's prediction (x's shape and dtype), computed in the compute dtype; context
        as `conditions` returns it (through the text adapter already); layout: the optional
        attention bias of layout guidance (B, L, S, S)."""
        dtype = COMPUTE_DTYPES[self.compute_dtype]
        context, layout, terms = self._context_terms(context, mask, layout, dtype)
        args = (x.to(dtype), t, context, mask)
        if layout is not None:
            args = (*args, layout)
        traced = self._traced_unet(*args, terms=terms)
        if traced is not None:
            out = traced(*args, terms)
        else:
            out = self.unet(*args[:4], context_prepared=True, layout=layout, prompt_terms=terms)
        return out.to(x.dtype)

    def _context_terms(self, context: torch.Tensor, mask: torch.Tensor,
                       layout: torch.Tensor | None, dtype: torch.dtype
                       ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
        """context and layout in dtype and their UNet.prompt_terms, computed on the first step
        that runs them and reused by the next ones (the same values: the same computation on
        the same tensors). The last PROMPT_TERMS_KEPT are kept."""

        def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
            if a is None or b is None:
                return a is b
            return a.shape == b.shape and torch.equal(a, b)

        with self._terms_lock:
            for i, entry in enumerate(self._prompt_terms):
                c, m, lay, d, converted, converted_layout, terms = entry
                if d == dtype and same(c, context) and same(m, mask) and same(lay, layout):
                    self._prompt_terms.insert(0, self._prompt_terms.pop(i))
                    return converted, converted_layout, terms
            converted = context.to(dtype)
            layout_in_dtype = None if layout is None else layout.to(dtype)
            with torch.inference_mode():
                terms = self.unet.prompt_terms(converted, mask, layout_in_dtype)
            self._prompt_terms.insert(0, (context.clone(), mask.clone(),
                                          None if layout is None else layout.clone(), dtype,
                                          converted, layout_in_dtype, terms))
            del self._prompt_terms[PROMPT_TERMS_KEPT:]
            return converted, layout_in_dtype, terms

    def _traced_unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                     mask: torch.Tensor, layout: torch.Tensor | None = None, *,
                     terms: tuple[torch.Tensor, ...]) -> Any:
        """The TorchScript trace for these input shapes once they have come trace_after_calls
        times (TRACE_AFTER_CALLS), else None (run eagerly). Not under autograd, and never when
        a trace fails (the eager module is always right)."""
        if self.trace_after_calls is None or torch.is_grad_enabled():
            return None
        key = (tuple(x.shape), x.dtype, t.dtype, tuple(context.shape), tuple(mask.shape),
               None if layout is None else tuple(layout.shape), str(x.device), id(self.unet))
        with self._trace_lock:
            if key in self._traces:
                self._traces.move_to_end(key)
                return self._traces[key]
            calls = self._shape_calls[key] = self._shape_calls.get(key, 0) + 1
            if calls < self.trace_after_calls:
                return None
            example = ((x, t, context, mask) if layout is None
                       else (x, t, context, mask, layout)) + (terms,)
            traced = _trace_unet(self.unet, example)
            self._traces[key] = traced
            while len(self._traces) > MAX_TRACED_SHAPES:
                self._traces.popitem(last=False)
            return traced

    @property
    def untraced_shapes(self) -> int:
        """How many U-Net input shapes this pipeline has run that are not traced yet (a
        process that keeps generating reaches 0 after TRACE_AFTER_CALLS passes of each)."""
        with self._trace_lock:
            return sum(key not in self._traces for key in self._shape_calls)

    # ------------------------------------------------------------------ text
    @property
    def text_encoder(self) -> Any:
        if self._text_encoder is None:
            t = self.config.text
            if t.spec == TRAINABLE_SPEC:
                from pictor.text.encoders import TrainableTextEncoder, TrainableTextEncoderConfig

                encoder = load_module(TrainableTextEncoder, TrainableTextEncoderConfig,
                                      self.model_dir / TEXT_ENCODER_FILE, map_location=self.device)
                self._text_encoder = encoder.to(self.device).eval().requires_grad_(False)
            else:
                from pictor.text.encoders import load_text_encoder

                self._text_encoder = load_text_encoder(t.spec, t.max_length, device=self.device)
        return self._text_encoder

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb (1, L, D), mask (1, L)) at the encoder's max_length, cached per prompt."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        cache = self._embeddings
        if prompt in cache:
            cache.move_to_end(prompt)
        else:
            disk = self._embedding_disk_cache if self.embedding_disk_cache else None
            hit = disk.get(prompt) if disk is not None else None
            if hit is None:
                emb, mask = self._encode_new_prompt(prompt, disk)
                if disk is not None:
                    disk.put(prompt, emb, mask)
            else:  # a frozen encoder's output from an earlier process: no need to load it
                emb, mask = hit
            cache[prompt] = (emb.to(self.device), mask.to(self.device))
            while len(cache) > max(1, self.prompt_cache_size):
                cache.popitem(last=False)
        return cache[prompt]

    def _encode_new_prompt(self, prompt: str, disk: EmbeddingDiskCache | None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a prompt the caches do not hold. A frozen encoder runs from its compiled copy
        (pictor.text.compiled: the same embeddings bit for bit, without importing transformers)
        when an earlier process saved one; otherwise transformers encodes it and the compiled
        copy is saved for the next process."""
        if disk is None:
            return self.text_encoder.encode([prompt])
        from pictor.text import compiled

        folder = disk.folder / compiled.folder_name()
        if self._text_encoder is None:
            if self._compiled_text_encoder is None:
                self._compiled_text_encoder = compiled.load(folder, self.device) or False
            if self._compiled_text_encoder:
                return self._compiled_text_encoder.encode([prompt])
        out = self.text_encoder.encode([prompt])
        if not folder.exists():
            compiled.save(self.text_encoder, folder, (prompt,))
        return out

    @cached_property
    def _embedding_disk_cache(self) -> EmbeddingDiskCache | None:
        """The persistent embedding cache of a frozen text encoder (None: trainable encoder, or
        PICTOR_CACHE_DIR=none). Keyed by device type too: an embedding computed on a GPU must
        not stand in for the CPU's (pixels are bit-exact per device)."""
        root = default_cache_dir()
        t = self.config.text
        identity = frozen_encoder_identity(t.spec, t.max_length) if root else None
        if root is None or identity is None:
            return None
        return EmbeddingDiskCache(root, f"{identity}|device={self.device.type}")

    def conditions(self, prompt: str, negative_prompt: str = "",
                   layout: bool | Sequence[str] = False) -> tuple[dict, dict]:
        """cond and uncond dicts (batch 1) trimmed to the longest real token run of the two,
        their tokens already through the U-Net's text adapter if it has one (run_unet passes
        context_prepared=True, so the adapter runs once per prompt, not once per step).
        layout (True: every rule, or rule names; guidance.layout_rules) and a prompt that a rule
        applies to: both dicts also hold "layout", the attention bias (1, L, h, w) of layout
        guidance, zero in the uncond one. A U-Net with a learned layout prior gets its own bias
        there for every non-empty prompt (UNet.layout_prior_bias; the rules' bias, when asked
        for, is added to it)."""
        (ce, cm), (ue, um) = self.encode_prompt(prompt), self.encode_prompt(negative_prompt)
        length = max(1, int(cm.sum()), int(um.sum()))
        ce, cm, ue, um = ce[:, :length], cm[:, :length], ue[:, :length], um[:, :length]
        ce_raw = ce if self.unet.layout_prior is not None and prompt else None
        if self.unet.text_adapter is not None:
            ce = self._adapted(prompt, ce, cm)
            ue = self._adapted(negative_prompt, ue, um)
        prior = self._layout_prior(prompt, (ce_raw, cm)) if ce_raw is not None else None
        cond, uncond = {"context": ce, "mask": cm}, {"context": ue, "mask": um}
        rules = layout_rules(layout)
        bias = None
        if rules and self._tokenizer_file() is not None:
            bias = prompt_layout_bias(prompt, lambda: self._token_offsets(prompt), length,
                                      self.latent_shape[-1], rules, self.layout_words,
                                      self.layout_settings)
        if prior is not None:  # the model's own learned layout (+ the rule's, if asked for)
            bias = prior if bias is None else prior + bias.to(prior.device)
        if bias is not None:
            bias = bias.to(self.device)
            cond["layout"], uncond["layout"] = bias, torch.zeros_like(bias)
        return cond, uncond

    def _layout_prior(self, prompt: str, tokens: tuple[torch.Tensor, torch.Tensor]
                      ) -> torch.Tensor:
        """The U-Net's learned layout prior bias (1, L, S, S) for a prompt's frozen tokens
        (UNet.layout_prior_bias), in float32. The uncond pass gets none, as with layout
        guidance."""
        emb, mask = tokens
        return self._per_prompt(("layout_prior", prompt, emb.shape[1]), lambda dtype: (
            self.unet.layout_prior_bias(emb.to(dtype), mask).float()))

    def _adapted(self, prompt: str, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """unet.prepare_context of a prompt's tokens (trimmed to a length), in the compute dtype
        and back."""
        return self._per_prompt(("adapted", prompt, emb.shape[1]), lambda dtype: (
            self.unet.prepare_context(emb.to(dtype), mask).to(emb.dtype)))

    def _per_prompt(self, key: tuple, compute: Callable[[torch.dtype], torch.Tensor]
                    ) -> torch.Tensor:
        """compute(compute dtype) of a prompt's text, run once without autograd and kept per
        (key, compute dtype), least recently used out beyond prompt_cache_size, like the
        embeddings (the empty negative prompt comes with every request)."""
        key = (*key, self.compute_dtype)
        with self._terms_lock:
            if key in self._adapted_cache:
                self._adapted_cache.move_to_end(key)
                return self._adapted_cache[key]
        with torch.inference_mode():
            out = compute(COMPUTE_DTYPES[self.compute_dtype])
        with self._terms_lock:
            self._adapted_cache[key] = out
            while len(self._adapted_cache) > self.prompt_cache_size:
                self._adapted_cache.popitem(last=False)
        return out

    # ------------------------------------------------------------------ layout guidance
    def step_layout(self, t: torch.Tensor, cond: dict) -> torch.Tensor | None:
        """The layout bias a network call at timesteps t gets: cond's "layout" (the learned
        prior's and/or layout guidance's, see conditions) while t >= layout_min_t, else None
        (the plain network)."""
        layout = cond.get("layout")
        if layout is None or float(t.max()) < self.layout_min_t:
            return None
        return layout

    @property
    def layout_min_t(self) -> int:
        """From which timestep on a pass gets the layout bias: the learned layout prior's own
        threshold for a U-Net that has one (layout guidance's rules then act in the same
        steps), else layout guidance's (layout_settings.min_t)."""
        if self.unet.layout_prior is not None:
            return self.unet.config.layout_prior_min_t
        return self.layout_settings.min_t

    @property
    def layout_words(self) -> str:
        """The words layout guidance steers: the colour words for a model whose grounding loss
        trained only those (their attention is on their objects), else all content words."""
        t = self.config.training
        grounded = t.grounding_loss_weight > 0 or t.grounding_centroid_weight > 0
        return "color" if grounded and t.grounding_words == "color" else "all"

    def layout_plan(self, prompt: str) -> Any:
        """The layout plan (guidance.plan_layout) of a prompt, or None (no single spatial
        relation, or a text encoder without a tokenizer file to map words to tokens)."""
        if self._tokenizer_file() is None:
            return None
        return plan_layout(prompt, self.layout_words, self.layout_settings)

    def _tokenizer_file(self) -> Path | None:
        if self.config.text.spec == TRAINABLE_SPEC:
            return None
        from pictor.text.encoders import text_encoder_path

        path = text_encoder_path(self.config.text.spec) / "tokenizer.json"
        return path if path.is_file() else None

    def _token_offsets(self, prompt: str) -> list[tuple[int, int]]:
        """Character span of each token of `prompt` as the text encoder sees it ((0, 0) for
        special tokens), from its `tokenizers` file (no transformers import)."""
        if self._offsets_tokenizer is None:
            from tokenizers import Tokenizer

            self._offsets_tokenizer = Tokenizer.from_file(str(self._tokenizer_file()))
            self._offsets_tokenizer.no_padding()
            self._offsets_tokenizer.enable_truncation(self.config.text.max_length)
        return list(self._offsets_tokenizer.encode(prompt).offsets)

    # ------------------------------------------------------------------ sampling
    def denoiser(self) -> Denoiser:
        """The U-Net as a `pictor.diffusion.denoiser.Denoiser` over {"context", "mask"} conds."""
        run_unet, step_layout = self.run_unet, self.step_layout

        def model(x, t, c):  # x (B, C, h, w), t (B,), c: {"context": (B, L, D), "mask": (B, L)}
            return run_unet(x, t, c["context"], c["mask"], step_layout(t, c))

        return Denoiser(model=model, schedule=self.schedule, prediction_type=self.prediction_type)

    def check_args(self, num_images: int, seed: int, num_steps: int, guidance_scale: float
                   ) -> None:
        """ValueError with the reason when generate() would refuse these settings."""
        if int(num_images) < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 1 <= int(num_steps) <= self.schedule.num_timesteps:
            raise ValueError(f"num_steps must lie in [1, {self.schedule.num_timesteps}], "
                             f"got {num_steps}")
        if not np.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")

    def initial_noise(self, seeds: Sequence[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        """x_T (n, C, h, w): row i drawn from its own CPU generator seeded with seeds[i]."""
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        x_T = torch.stack([torch.randn(self.latent_shape, generator=g) for g in gens])
        return x_T.to(self.device), gens

    def sample_latents(self, prompt: str, seeds: Sequence[int], *, num_steps: int,
                       sampler: str, guidance_scale: float, negative_prompt: str = "",
                       guidance_interval: Sequence[float | None] | None
                       = DEFAULT_GUIDANCE_INTERVAL,
                       callback: Callback | None = None,
                       layout: bool | Sequence[str] = DEFAULT_LAYOUT,
                       **sampler_options: Any) -> torch.Tensor:
        """z_0 (n, C, h, w) for one prompt and n seeds (the reproducibility contract above);
        layout: layout guidance, True for every rule or the rule names (pictor.guidance)."""
        sample = get_sampler(sampler)
        cond, uncond = self.conditions(prompt, negative_prompt, layout=layout)
        # Empty prompt without a negative one: the unconditional model, no guidance needed.
        guidance = None if (prompt == "" and negative_prompt == "") else CFG(
            scale=float(guidance_scale), uncond=uncond,
            interval=None if guidance_interval is None else tuple(guidance_interval))
        denoiser = self.denoiser()
        x_T, gens = self.initial_noise(seeds)
        stochastic = canonical_sampler_name(sampler) in STOCHASTIC_SAMPLERS or (
            float(sampler_options.get("eta", 0.0)) > 0)
        with torch.inference_mode():
            if not stochastic:
                return sample(denoiser, x_T, num_steps, cond=expand_cond(cond, len(seeds)),
                              guidance=guidance,
                              generator=gens[0], callback=callback, **sampler_options)
            return torch.cat([
                sample(denoiser, x_T[i:i + 1], num_steps, cond=cond, guidance=guidance,
                       generator=gens[i], callback=callback, **sampler_options)
                for i in range(len(seeds))])

    def decode(self, z: torch.Tensor) -> list[Image.Image]:
        with torch.inference_mode():
            return tensor_to_pil(self.codec.decode(z.float()))

    def generate(self, prompt: str, *, num_images: int = 1, seed: int = 0,
                 num_steps: int = DEFAULT_NUM_STEPS, sampler: str = DEFAULT_SAMPLER,
                 guidance_scale: float = DEFAULT_GUIDANCE_SCALE, negative_prompt: str = "",
                 guidance_interval: Sequence[float | None] | None = DEFAULT_GUIDANCE_INTERVAL,
                 callback: Callback | None = None,
                 layout: bool | Sequence[str] = DEFAULT_LAYOUT) -> list[GeneratedImage]:
        """num_images RGB images for `prompt`, image i from seed + i, each with its record.

        guidance_interval: (sigma_lo, sigma_hi or None) where guidance applies, None = every
        step (recorded in the record's extra["guidance_interval"]).
        layout: layout guidance, True for every rule or the rule names (pictor.guidance: a
        stated relation, count words; recorded by layout_extra; no effect on other prompts)."""
        self.check_args(num_images, seed, num_steps, guidance_scale)
        name = canonical_sampler_name(sampler)
        seeds = [int(seed) + i for i in range(int(num_images))]
        interval = guidance_interval_value(guidance_interval)
        z = self.sample_latents(prompt, seeds, num_steps=int(num_steps), sampler=name,
                                guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                                guidance_interval=interval, callback=callback,
                                layout=layout_rules(layout))
        out = []
        for s, image in zip(seeds, self.decode(z), strict=True):
            record = ProvenanceRecord(
                prompt=prompt, seed=s, sampler=name, num_steps=int(num_steps),
                guidance_scale=float(guidance_scale), model_name=self.model_name,
                model_sha256=self.model_sha256, negative_prompt=negative_prompt,
                width=image.width, height=image.height,
                extra=self.record_extra(interval, layout))
            out.append(GeneratedImage(image=image, record=record))
        return out

    def record_extra(self, guidance_interval: list[float | None] | None,
                     layout: bool | Sequence[str]) -> dict[str, Any]:
        """A record's `extra` for an image of this pipeline (the CLI's and the server's): the
        model family (GAN and VAE records name theirs: pictor.families), guidance interval
        (guidance_interval_value), compute dtype, processor (device_name) and layout guidance
        (layout_extra)."""
        return {"family": "diffusion", "guidance_interval": guidance_interval,
                "compute_dtype": self.compute_dtype, "device": device_name(self.device),
                **layout_extra(layout)}

    # ------------------------------------------------------------------ teaching views
    def trajectory(self, prompt: str, seed: int = 0, num_steps: int = DEFAULT_NUM_STEPS, *,
                   sampler: str = DEFAULT_SAMPLER,
                   guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                   negative_prompt: str = "", layout: bool | Sequence[str] = DEFAULT_LAYOUT
                   ) -> list[TrajectoryStep]:
        """Per sampler step: the sample x_t the network saw and its x0 prediction, decoded.
        The final image equals generate(prompt, seed=seed, ...)[0]."""
        self.check_args(1, seed, num_steps, guidance_scale)
        seen: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []

        def record(i, n, t, x_t, x0):
            seen.append((i, float(t), x_t.detach().clone(), x0.detach().clone()))

        self.sample_latents(prompt, [int(seed)], num_steps=int(num_steps), sampler=sampler,
                            guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                            callback=record, layout=layout)
        if not seen:
            return []
        x_ts = self.decode(torch.cat([s[2] for s in seen]))
        x0s = self.decode(torch.cat([s[3] for s in seen]))
        return [TrajectoryStep(i, t, a, b)
                for (i, t, _, _), a, b in zip(seen, x_ts, x0s, strict=True)]

    def forward_strip(self, image: Image.Image, timesteps: Sequence[int], *, seed: int = 0
                      ) -> list[Image.Image]:
        """The forward process q(x_t | x_0) (Ho et al. 2020, eq. 4) of `image` at each training
        timestep, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with one eps for all t, decoded."""
        T = self.schedule.num_timesteps
        ts = [int(t) for t in timesteps]
        bad = [t for t in ts if not 0 <= t < T]
        if bad:
            raise ValueError(f"timesteps must lie in [0, {T - 1}], got {bad}")
        with torch.inference_mode():
            z0 = self.codec.encode(pil_to_tensor(image, self.image_size).to(self.device))
            noise = torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(seed))
            n = len(ts)
            z0 = z0.expand(n, -1, -1, -1).double()
            eps = noise.to(self.device).expand(n, -1, -1, -1).double()
            t = torch.tensor(ts, dtype=torch.long)
            x_t = q_sample(z0, t, eps, self.schedule.alphas_cumprod.to(self.device))
        return self.decode(x_t)


def build_model_codec(config: TrainConfig, ae_path: Path | None,
                      device: torch.device) -> LatentCodec:
    """The latent codec of a model folder (resolve_model_files gives its config and file)."""
    ls = config.latent_space
    return build_codec(ls.kind, pixel_unshuffle_factor=ls.pixel_unshuffle_factor,
                       autoencoder_path=ae_path, device=device)


def load_pipeline(model_dir: str | Path, device: str | torch.device = "cpu", *,
                  compute_dtype: str = DEFAULT_COMPUTE_DTYPE) -> Pipeline:
    """Load a model folder (see the module docstring); ValueError naming any missing path."""
    device = torch.device(device)
    resolve_compute_dtype(compute_dtype, device)  # a bad name fails before any loading
    model_dir, config, ae_path = resolve_model_files(model_dir)
    unet = load_module(UNet, UNetConfig, model_dir / UNET_FILE, map_location=device)
    # the U-Net file carries its own config: it must fit the folder's (latents, text encoder)
    differ = [f"{k}: {getattr(unet.config, k)} vs {getattr(config.model, k)}"
              for k in ("in_channels", "out_channels", "context_dim")
              if getattr(unet.config, k) != getattr(config.model, k)]
    if differ:
        raise ValueError(f"{model_dir / UNET_FILE} does not fit {model_dir / CONFIG_FILE} "
                         f"({', '.join(differ)}): the folder mixes files of two models")
    unet = unet.to(device).eval().requires_grad_(False)
    codec = build_model_codec(config, ae_path, device)
    sha = _digest(_weight_files(model_dir, config, ae_path))
    pipe = Pipeline(model_dir, config, unet, codec, sha, device)
    pipe.set_compute_dtype(compute_dtype)
    return pipe


__all__ = ["COMPUTE_DTYPES", "DEFAULT_COMPUTE_DTYPE", "DEFAULT_GUIDANCE_INTERVAL", "DEFAULT_LAYOUT",
           "DEFAULT_GUIDANCE_SCALE", "GeneratedImage", "Pipeline",
           "SAMPLERS", "TrajectoryStep", "guidance_interval_value", "layout_extra",
           "layout_from_extra", "load_pipeline", "model_digest", "resolve_compute_dtype",
           "resolve_model_files", "build_model_codec"]
