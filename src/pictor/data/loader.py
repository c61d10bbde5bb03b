"""Training data as tensors: imagefolder and shard datasets, cached text embeddings and latents.

Two input formats, chosen by `open_dataset(path)`:
- a shard folder (`manifest.json` + Parquet shards, pictor.data.shards) written by
  `pictor data prepare` or `pictor data synth --format shards` -> `ShardDataset`;
- Hugging Face "imagefolder": a folder of images plus `metadata.jsonl` with one
  `{"file_name": "00000.png", "text": "a red circle"}` per line -> `ImageFolderDataset`.
Both are read whole into memory (the shapes world and other 64 x 64 sets fit); the order of a
run is `EpochSampler`'s seeded permutation with its resumable position, not the file order.

Training never runs a text encoder or an autoencoder in its hot loop:
- `TextEmbeddingTable` encodes each *unique* caption once (plus "" for classifier-free guidance
  and the validation prompts), pads all of them to one common length and keeps (emb, mask)
  tensors; an example holds only the row index of its caption.
- `encode_images_cached` runs an image encoder (pixel-unshuffle, or an autoencoder) once over
  the whole data set and stores the result on disk (safetensors), keyed by the data set's
  fingerprint and the encoder's identity, so the next run just loads it.
- `pictor data prepare --with-embeddings / --autoencoder` may store both beside the shards
  (`save_prepared_text_table`, `save_prepared_latents`); training then reuses them when the
  encoder identity matches, instead of recomputing (`prepared_text_table`, `prepared_latents`).
- `EpochSampler` yields batches of indices into those preloaded tensors: a seeded permutation per
  epoch and a resumable position (epoch, index). No DataLoader workers: for the shapes world the
  whole data set fits in RAM, and a batch is one `index_select`.

This module is a leaf (torch/numpy/PIL/safetensors only): encoders come in as callables.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from pictor.data.shards import (
    MANIFEST_FILE,
    PREPARED_DIR,
    iter_shard_batches,
    read_manifest,
    read_shards,
    write_manifest,
)

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
    # the record's other keys (e.g. `pictor data synth`'s category and seed)
    extra: dict = field(default_factory=dict, compare=False, hash=False)


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
            rec = ImageRecord(file_name=str(obj["file_name"]), text=str(obj["text"]),
                              extra={k: v for k, v in obj.items()
                                     if k not in ("file_name", "text")})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{meta}:{line_no}: expected a JSON object with 'file_name' and "
                             f"'text' ({e})") from e
        records.append(rec)
        if max_images is not None and len(records) >= max_images:
            break
    if not records:
        raise ValueError(f"{meta} holds no records")
    return records


def load_image(path: str | Path | io.BytesIO, image_size: int | None = None) -> torch.Tensor:
    """One image (a file, or bytes in a BytesIO) as float32 (3, H, W) in [-1, 1]; resized
    (bicubic) to a square if asked."""
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

    @property
    def extras(self) -> list[dict]:
        """Each record's keys besides file_name and text (e.g. synth's category and seed)."""
        return [r.extra for r in self.records]

    def load_all(self) -> torch.Tensor:
        """Every image stacked: (N, 3, H, W) float32 in [-1, 1]."""
        return torch.stack([self[i]["image"] for i in range(len(self))])  # type: ignore[misc]

    def fingerprint(self) -> str:
        """SHA-256 over the image bytes in record order and image_size: the cache key of the
        latents. Captions do not enter, so a data set captioned anew (`pictor data synth
        --captions`, edited metadata) reuses the latents of its images."""
        h = hashlib.sha256(f"image_size={self.image_size}\nn={len(self.records)}\n".encode())
        for rec in self.records:
            h.update(hashlib.sha256((self.root / rec.file_name).read_bytes()).digest())
        return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# The shard format
# ----------------------------------------------------------------------------------------------


class ShardDataset(Dataset):
    """torch Dataset over a shard folder, in manifest order: item i is {"image": (3, H, W) in
    [-1, 1], "text": str}. Captions are read at once, the PNG bytes on first use."""

    def __init__(self, root: str | Path, image_size: int | None = None,
                 max_images: int | None = None) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.image_size = image_size
        self.max_images = max_images
        table = read_shards(self.root, ["key", "caption"], max_images)
        if table.num_rows == 0:
            raise ValueError(f"{self.root} holds no records (see {self.root / 'rejects.jsonl'} "
                             "for why every record was skipped)")
        self._captions: list[str] = table.column("caption").to_pylist()
        self._images: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self._captions)

    def _png(self, i: int) -> bytes:
        if self._images is None:
            self._images = read_shards(self.root, ["image"], self.max_images).column(
                "image").to_pylist()
        return self._images[i]

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"image": load_image(io.BytesIO(self._png(i)), self.image_size),
                "text": self._captions[i]}

    @property
    def captions(self) -> list[str]:
        return list(self._captions)

    @property
    def extras(self) -> list[dict]:
        """Each record's `extra` JSON as a dict (e.g. synth's category and seed)."""
        column = read_shards(self.root, ["extra"], self.max_images).column("extra").to_pylist()
        return [json.loads(e) if e else {} for e in column]

    def load_all(self) -> torch.Tensor:
        """Every image stacked: (N, 3, H, W) float32 in [-1, 1]."""
        return torch.stack([self[i]["image"] for i in range(len(self))])  # type: ignore[misc]

    def iter_image_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The images in order, (b, 3, H, W) at a time, without holding them all."""
        for batch in iter_shard_batches(self.root, ["image"], self.max_images, batch_size):
            yield torch.stack([load_image(io.BytesIO(b), self.image_size)
                               for b in batch.column("image").to_pylist()])

    def fingerprint(self) -> str:
        """SHA-256 over the manifest's shard hashes, image_size and the record count."""
        h = hashlib.sha256(f"image_size={self.image_size}\nn={len(self)}\n".encode())
        for shard in self.manifest.shards:
            h.update(json.dumps([shard.file, shard.num_records, shard.sha256]).encode())
        return h.hexdigest()


class ImageDataset(Protocol):
    """What training needs of a data set (ImageFolderDataset and ShardDataset both are one)."""

    def __len__(self) -> int: ...
    @property
    def captions(self) -> list[str]: ...
    @property
    def extras(self) -> list[dict]: ...
    def load_all(self) -> torch.Tensor: ...
    def fingerprint(self) -> str: ...


def open_dataset(root: str | Path, image_size: int | None = None,
                 max_images: int | None = None) -> ShardDataset | ImageFolderDataset:
    """A shard folder (manifest.json) or an imagefolder (metadata.jsonl) at `root`."""
    root = Path(root)
    if (root / MANIFEST_FILE).is_file():
        return ShardDataset(root, image_size, max_images)
    if not (root / METADATA_FILE).is_file():
        raise ValueError(f"{root} is not a data set: it holds neither {MANIFEST_FILE} (shards "
                         f"from `pictor data prepare` or `pictor data synth --format shards`) "
                         f"nor {METADATA_FILE} (an imagefolder from `pictor data synth`); set "
                         "data.path to one")
    return ImageFolderDataset(root, image_size, max_images)


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
              encode_loader: Callable[[], TextEncodeFn] | None = None,
              prepared: TextEmbeddingTable | None = None) -> TextEmbeddingTable:
        """Encode each unique caption once (and "") or load the result from `cache_dir`.

        identity names the encoder (its spec and version) so that a cache is never reused
        across encoders. When `encode_loader` is given instead of `encode` (encode=None), the
        encoder is only loaded on a cache miss. `prepared` (embeddings of the same encoder
        stored beside the shards) supplies the captions it holds; only the others are encoded.
        """
        unique = sorted(set(captions) | {""})
        key = json.dumps({"encoder": identity, "captions": unique})
        path = _cache_path(cache_dir, "text", key) if cache_dir is not None else None
        if path is not None and (hit := _read_cache(path, key)) is not None:
            return cls(unique, hit["emb"].float(), hit["mask"].bool())
        have = [c for c in unique if prepared is not None and c in prepared._row]
        missing = [c for c in unique if prepared is None or c not in prepared._row]
        embs, masks = [], []
        if have:
            e, m = prepared.encode(have)  # type: ignore[union-attr]
            embs.append(e)
            masks.append(m)
        if missing and encode is None:
            if encode_loader is None:
                raise ValueError("TextEmbeddingTable.build needs encode or encode_loader")
            encode = encode_loader()
        with torch.no_grad():
            for i in range(0, len(missing), batch_size):
                e, m = encode(missing[i:i + batch_size])  # type: ignore[misc]  # (b, l, D)
                embs.append(e.detach().float().cpu())
                masks.append(m.detach().bool().cpu())
        if have and missing:  # back to the sorted order of `unique`
            position = {c: i for i, c in enumerate(have + missing)}
            order = torch.tensor([position[c] for c in unique])
        else:
            order = None
        max_len = max(e.shape[1] for e in embs)
        emb = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, max_len - e.shape[1]))
                         for e in embs])                                  # (U, L, D)
        mask = torch.cat([torch.nn.functional.pad(m, (0, max_len - m.shape[1]))
                          for m in masks])                                # (U, L)
        if order is not None:
            emb, mask = emb.index_select(0, order), mask.index_select(0, order)
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


def encode_images_cached(dataset: ImageDataset, encode: ImageEncodeFn, identity: str, *,
                         cache_dir: str | Path | None = None,
                         batch_size: int = 64) -> torch.Tensor:
    """encode(images) over the whole data set, (N, C, h, w) float32, cached on disk.

    The cache key is the data set fingerprint (records, image bytes, size) plus `identity`, which
    must change whenever the encoder's output would (e.g. the autoencoder weights' hash).
    Latents stored beside shards by `pictor data prepare` for the same identity are used as
    they are.
    """
    if (ready := prepared_latents(dataset, identity)) is not None:
        return ready
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
# Text embeddings and latents stored beside shards (pictor data prepare)
# ----------------------------------------------------------------------------------------------


def _prepared_name(kind: str, identity: str) -> str:
    return f"{kind}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def _register_prepared(root: Path, kind: str, entry: dict[str, str]) -> None:
    manifest = read_manifest(root)
    entries = [e for e in manifest.prepared.get(kind, []) if e["identity"] != entry["identity"]]
    manifest.prepared[kind] = [*entries, entry]
    write_manifest(root, manifest)


def save_prepared_text_table(root: str | Path, table: TextEmbeddingTable, identity: str) -> Path:
    """Store `table` (encoder `identity`) beside the shards at `root` and list it in the
    manifest. The captions go to a JSON file (a safetensors header holds at most 100 MB)."""
    root = Path(root)
    name = _prepared_name("text", identity)
    folder = root / PREPARED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.captions.json").write_text(json.dumps(table.captions, ensure_ascii=False))
    _write_cache(folder / f"{name}.safetensors", identity, {"emb": table.emb, "mask": table.mask})
    _register_prepared(root, "text_embeddings", {
        "identity": identity, "file": f"{PREPARED_DIR}/{name}.safetensors",
        "captions": f"{PREPARED_DIR}/{name}.captions.json"})
    return folder / f"{name}.safetensors"


def prepared_text_table(dataset: object, identity: str) -> TextEmbeddingTable | None:
    """The text embeddings stored beside a ShardDataset for encoder `identity`, else None."""
    if not isinstance(dataset, ShardDataset):
        return None
    for entry in dataset.manifest.prepared.get("text_embeddings", []):
        if entry["identity"] == identity:
            hit = _read_cache(dataset.root / entry["file"], identity)
            if hit is None:
                return None
            captions = json.loads((dataset.root / entry["captions"]).read_text())
            return TextEmbeddingTable(captions, hit["emb"].float(), hit["mask"].bool())
    return None


def save_prepared_latents(root: str | Path, latents: torch.Tensor, identity: str) -> Path:
    """Store the latents (N, C, h, w) of every record of the shard folder at `root`, in
    manifest order, for image encoder `identity`, and list them in the manifest."""
    root = Path(root)
    name = _prepared_name("latents", identity)
    path = root / PREPARED_DIR / f"{name}.safetensors"
    _write_cache(path, identity, {"latents": latents.float()})
    _register_prepared(root, "latents", {"identity": identity,
                                         "file": f"{PREPARED_DIR}/{name}.safetensors"})
    return path


def prepared_latents(dataset: object, identity: str) -> torch.Tensor | None:
    """Latents stored beside a ShardDataset for `identity` (valid only at the prepared image
    size), the first len(dataset) of them; else None."""
    if not isinstance(dataset, ShardDataset):
        return None
    if dataset.image_size not in (None, dataset.manifest.image_size):
        return None
    for entry in dataset.manifest.prepared.get("latents", []):
        if entry["identity"] == identity:
            hit = _read_cache(dataset.root / entry["file"], identity)
            if hit is None or hit["latents"].shape[0] < len(dataset):
                return None
            return hit["latents"][: len(dataset)].contiguous()
    return None


def precompute_prepared(root: str | Path, *, text_encode: TextEncodeFn | None = None,
                        text_identity: str | None = None,
                        image_encode: ImageEncodeFn | None = None,
                        image_identity: str | None = None,
                        batch_size: int = 64) -> list[Path]:
    """Text embeddings of every caption and/or latents of every image of a shard folder,
    stored beside its shards (`pictor data prepare --with-embeddings / --autoencoder`)."""
    dataset = ShardDataset(root)
    written = []
    if text_encode is not None and text_identity is not None:
        table = TextEmbeddingTable.build(dataset.captions, text_encode, text_identity)
        written.append(save_prepared_text_table(root, table, text_identity))
    if image_encode is not None and image_identity is not None:
        with torch.no_grad():
            latents = torch.cat([image_encode(x).float().cpu()
                                 for x in dataset.iter_image_batches(batch_size)])
        written.append(save_prepared_latents(root, latents, image_identity))
    return written


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
