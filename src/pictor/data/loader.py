"""Training data as tensors: an imagefolder dataset, cached text embeddings and latents.

Input format (Hugging Face "imagefolder"): a folder of images plus `metadata.jsonl` with one
`{"file_name": "00000.png", "text": "a red circle"}` per line.

Training never runs a text encoder or an autoencoder in its hot loop:
- `TextEmbeddingTable` encodes each *unique* caption once (plus "" for classifier-free guidance
  and the validation prompts), pads all of them to one common length and keeps (emb, mask)
  tensors; an example holds only the row index of its caption.
- `encode_images_cached` runs an image encoder (pixel-unshuffle, or an autoencoder) once over
  the whole data set and stores the result on disk (safetensors), keyed by the data set's
  fingerprint and the encoder's identity, so the next run just loads it.
- `EpochSampler` yields batches of indices into those preloaded tensors: a seeded permutation per
  epoch and a resumable position (epoch, index). No DataLoader workers: for the shapes world the
  whole data set fits in RAM, and a batch is one `index_select`.

This module is a leaf (torch/numpy/PIL/safetensors only): encoders come in as callables.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

METADATA_FILE = "metadata.jsonl"

# encode(list of captions) -> (emb (B, L, D) float, mask (B, L) bool)
TextEncodeFn = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
# encode(images (B, 3, H, W) in [-1, 1]) -> (B, C, h, w)
ImageEncodeFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# The imagefolder format
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    file_name: str  # relative to the data folder
    text: str       # the caption


def read_imagefolder(root: str | Path, max_images: int | None = None) -> list[ImageRecord]:
    """Records of `root/metadata.jsonl`, in file order (first `max_images` when given)."""
    root = Path(root)
    meta = root / METADATA_FILE
    if not meta.is_file():
        raise ValueError(f"{root} is not an imagefolder data set: {meta} is missing (create one "
                         f"with `pictor data synth --out {root}` or set data.path)")
    records = []
    for line_no, line in enumerate(meta.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            rec = ImageRecord(file_name=str(obj["file_name"]), text=str(obj["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{meta}:{line_no}: expected a JSON object with 'file_name' and "
                             f"'text' ({e})") from e
        records.append(rec)
        if max_images is not None and len(records) >= max_images:
            break
    if not records:
        raise ValueError(f"{meta} holds no records")
    return records


def load_image(path: str | Path, image_size: int | None = None) -> torch.Tensor:
    """One image as float32 (3, H, W) in [-1, 1]; resized (bicubic) to a square if asked."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()  # (3, H, W) in [0, 255]
    return x / 127.5 - 1.0


class ImageFolderDataset(Dataset):
    """torch Dataset over an imagefolder: item i is {"image": (3, H, W) in [-1, 1], "text": str}."""

    def __init__(self, root: str | Path, image_size: int | None = None,
                 max_images: int | None = None) -> None:
        self.root = Path(root)
        self.image_size = image_size
        self.records = read_imagefolder(self.root, max_images)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, object]:
        rec = self.records[i]
        path = self.root / rec.file_name
        if not path.is_file():
            raise ValueError(f"{path} listed in {self.root / METADATA_FILE} does not exist")
        return {"image": load_image(path, self.image_size), "text": rec.text}

    @property
    def captions(self) -> list[str]:
        return [r.text for r in self.records]

    def load_all(self) -> torch.Tensor:
        """Every image stacked: (N, 3, H, W) float32 in [-1, 1]."""
        return torch.stack([self[i]["image"] for i in range(len(self))])  # type: ignore[misc]

    def fingerprint(self) -> str:
        """SHA-256 over the records, the image bytes and image_size: the cache key of the data."""
        h = hashlib.sha256(f"image_size={self.image_size}\n".encode())
        for rec in self.records:
            h.update(json.dumps([rec.file_name, rec.text]).encode())
            h.update(hashlib.sha256((self.root / rec.file_name).read_bytes()).digest())
        return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# A small safetensors cache
# ----------------------------------------------------------------------------------------------


def _cache_path(cache_dir: str | Path, kind: str, key: str) -> Path:
    return Path(cache_dir) / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def _read_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None  # a hash-prefix collision or a stale file: recompute
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception:  # a torn file from a killed writer: recompute
        return None


def _write_cache(path: Path, key: str, tensors: dict[str, torch.Tensor],
                 extra: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{np.random.randint(1 << 30)}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"key": key, **(extra or {})})
    tmp.replace(path)  # atomic: readers see the old file or the whole new one


# ----------------------------------------------------------------------------------------------
# Text embeddings, once per unique caption
# ----------------------------------------------------------------------------------------------


@dataclass
class TextEmbeddingTable:
    """(emb, mask) of every unique caption, padded to one common length L.

    captions: sorted unique captions (always including "" for the unconditional branch)
    emb:  (U, L, D) float32
    mask: (U, L) bool, True on real tokens
    """

    captions: list[str]
    emb: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        self._row = {c: i for i, c in enumerate(self.captions)}

    def rows(self, captions: Sequence[str]) -> torch.Tensor:
        """Row indices (len(captions),) long; ValueError for a caption that was not encoded."""
        try:
            return torch.tensor([self._row[c] for c in captions], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"caption {e.args[0]!r} is not in the embedding table; add it to "
                             "the captions given to TextEmbeddingTable.build") from None

    def lookup(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb (B, L, D), mask (B, L)) for row indices (B,)."""
        return self.emb.index_select(0, rows), self.mask.index_select(0, rows)

    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lookup(self.rows(captions))

    @property
    def empty_row(self) -> int:
        return self._row[""]

    @classmethod
    def build(cls, captions: Iterable[str], encode: TextEncodeFn | None, identity: str, *,
              cache_dir: str | Path | None = None, batch_size: int = 256,
              encode_loader: Callable[[], TextEncodeFn] | None = None) -> TextEmbeddingTable:
        """Encode each unique caption once (and "") or load the result from `cache_dir`.

        identity names the encoder (its spec and version) so that a cache is never reused
        across encoders. When `encode_loader` is given instead of `encode` (encode=None), the
        encoder is only loaded on a cache miss.
        """
        unique = sorted(set(captions) | {""})
        key = json.dumps({"encoder": identity, "captions": unique})
        path = _cache_path(cache_dir, "text", key) if cache_dir is not None else None
        if path is not None and (hit := _read_cache(path, key)) is not None:
            return cls(unique, hit["emb"].float(), hit["mask"].bool())
        if encode is None:
            if encode_loader is None:
                raise ValueError("TextEmbeddingTable.build needs encode or encode_loader")
            encode = encode_loader()
        embs, masks = [], []
        with torch.no_grad():
            for i in range(0, len(unique), batch_size):
                e, m = encode(unique[i:i + batch_size])  # (b, l, D), (b, l)
                embs.append(e.detach().float().cpu())
                masks.append(m.detach().bool().cpu())
        max_len = max(e.shape[1] for e in embs)
        emb = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, max_len - e.shape[1]))
                         for e in embs])                                  # (U, L, D)
        mask = torch.cat([torch.nn.functional.pad(m, (0, max_len - m.shape[1]))
                          for m in masks])                                # (U, L)
        # Trim columns that are padding for every caption: a shorter L is cheaper attention.
        used = int(mask.any(0).nonzero().max().item()) + 1 if mask.any() else 1
        emb, mask = emb[:, :used].contiguous(), mask[:, :used].contiguous()
        emb = emb * mask[..., None]  # padding positions hold exact zeros
        if path is not None:
            _write_cache(path, key, {"emb": emb, "mask": mask},
                         {"encoder": identity, "num_captions": str(len(unique))})
        return cls(unique, emb, mask)


# ----------------------------------------------------------------------------------------------
# Image encodings (pixels, pixel-unshuffle, autoencoder latents), once per image
# ----------------------------------------------------------------------------------------------


def encode_images_cached(dataset: ImageFolderDataset, encode: ImageEncodeFn, identity: str, *,
                         cache_dir: str | Path | None = None,
                         batch_size: int = 64) -> torch.Tensor:
    """encode(images) over the whole data set, (N, C, h, w) float32, cached on disk.

    The cache key is the data set fingerprint (records, image bytes, size) plus `identity`, which
    must change whenever the encoder's output would (e.g. the autoencoder weights' hash).
    """
    path = key = None
    if cache_dir is not None:
        key = json.dumps({"data": dataset.fingerprint(), "encoder": identity})
        path = _cache_path(cache_dir, "latents", key)
        if (hit := _read_cache(path, key)) is not None:
            return hit["latents"]
    images = dataset.load_all()  # (N, 3, H, W)
    with torch.no_grad():
        out = torch.cat([encode(images[i:i + batch_size]).float().cpu()
                         for i in range(0, len(images), batch_size)])
    if path is not None and key is not None:
        _write_cache(path, key, {"latents": out}, {"encoder": identity})
    return out


# ----------------------------------------------------------------------------------------------
# Seeded, resumable batches of indices
# ----------------------------------------------------------------------------------------------


class EpochSampler:
    """Batches of indices into a preloaded data set: a fresh seeded permutation every epoch.

    The permutation of epoch e depends only on (seed, e), so the position (epoch, index) is all a
    checkpoint needs to continue the exact same order. A batch that crosses an epoch boundary
    takes the tail of one permutation and the head of the next (every example is seen once per
    epoch, nothing is dropped).
    """

    def __init__(self, num_items: int, seed: int, *, epoch: int = 0, index: int = 0) -> None:
        if num_items < 1:
            raise ValueError("EpochSampler needs at least one item")
        self.num_items = num_items
        self.seed = seed
        self.epoch = epoch
        self.index = index
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = torch.from_numpy(rng.permutation(self.num_items)).long()
            self._perm_epoch = epoch
        return self._perm

    def next(self, batch_size: int) -> torch.Tensor:
        """The next `batch_size` indices (batch_size,) long."""
        parts = []
        need = batch_size
        while need > 0:
            perm = self.permutation(self.epoch)
            take = min(need, self.num_items - self.index)
            parts.append(perm[self.index:self.index + take])
            self.index += take
            need -= take
            if self.index == self.num_items:
                self.epoch += 1
                self.index = 0
        return torch.cat(parts)

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def set_position(self, position: dict[str, int]) -> None:
        self.epoch = int(position["epoch"])
        self.index = int(position["index"])
