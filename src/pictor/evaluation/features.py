"""Image features for the distribution metrics: a small CNN trained on the shapes world, or the
standard Inception-v3 features when the user has those weights locally.

FID-style metrics compare two sets of images through the features of a fixed network
(Heusel et al. 2017 use Inception-v3's 2048-d pool features). Inception weights cannot be
downloaded here, and an ImageNet network sees little of what matters in the shapes world, so the
project ships its own extractor: `ShapesFeatureNet`, a four-convolution CNN trained (by
`pictor.evaluation.feature_training`) to read off every image what the scene holds: the number
of shapes, which kinds and colours are present, which (kind, colour) pairs, and which kind sits
in which quadrant. Its 128-d embedding (the layer before the label heads), standardised with the
mean and standard deviation it has on real renders, is the feature vector.

    extractor = load_feature_extractor("shapes")          # models/shapes-features (shipped)
    extractor = load_feature_extractor("inception:/path/pt_inception-2015-12-05.pt")
    feats = extractor.features(images)                    # (N, D) float64

Every extractor sees images through one fixed resize (bicubic to its input size) so that real and
generated images take the same path: these metrics move with resizing (Parmar et al. 2022,
"On Aliased Resizing and Surprising Subtleties in GAN Evaluation").
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from pictor.networks.codec import file_sha256

FEATURES_FILE = "shapes_features.safetensors"
DEFAULT_FEATURES_NAME = "shapes-features"
INCEPTION_PREFIX = "inception:"
CLIP_PREFIX = "clip:"
_BATCH_SIZE = 256  # images per forward pass when extracting


class FeatureExtractor(Protocol):
    """What the metrics need from a feature network."""

    name: str  # e.g. "shapes-features" or "inception"
    dim: int  # feature width D
    sha256: str  # of the weights file, for the report

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float64 features of N RGB images."""
        ...


def images_to_tensor(images: Sequence[Image.Image], size_px: int) -> torch.Tensor:
    """RGB images -> (N, 3, size_px, size_px) float32 in [-1, 1], bicubic resize when needed."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (size_px, size_px):
            image = image.resize((size_px, size_px), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32))
    if not arrays:
        return torch.zeros(0, 3, size_px, size_px)
    x = torch.from_numpy(np.stack(arrays))  # (N, H, W, 3) in [0, 255]
    return (x.permute(0, 3, 1, 2) / 127.5 - 1.0).contiguous()


# ---------------------------------------------------------------------------------------------
# The shapes feature network
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapesFeatureNetConfig:
    """A small CNN: strided 4x4 convolutions (each halves the resolution), one 3x3 convolution
    at the last resolution, then pooled summaries into a linear embedding."""

    image_size: int = 64  # input resolution (the shapes canvas); inputs are resized to it
    channels: tuple[int, ...] = (16, 32, 64)  # widths of the strided convolutions
    feature_dim: int = 128  # width of the embedding the metrics use
    num_labels: int = 64  # outputs; their layout is feature_training.LABEL_GROUPS
    norm_groups: int = 8  # GroupNorm groups after every convolution


class ShapesFeatureNet(nn.Module):
    """images (B, 3, 64, 64) in [-1, 1] -> embedding (B, feature_dim) -> label logits.

    The map after the convolutions (B, C, 8, 8) is summarised twice: a global max pool (is a
    pattern anywhere? the presence labels are translation invariant) and a 2 x 2 average pool
    (where is it? the quadrant labels, the count). Both feed the embedding."""

    def __init__(self, config: ShapesFeatureNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ShapesFeatureNetConfig()
        layers: list[nn.Module] = []
        in_ch = 3
        for ch in config.channels:
            if ch % config.norm_groups:
                raise ValueError(f"channels {config.channels} must be multiples of "
                                 f"norm_groups={config.norm_groups}")
            layers += [nn.Conv2d(in_ch, ch, 4, stride=2, padding=1),
                       nn.GroupNorm(config.norm_groups, ch), nn.SiLU()]
            in_ch = ch
        if config.image_size >> len(config.channels) < 2:
            raise ValueError(f"{len(config.channels)} stride-2 convolutions shrink "
                             f"{config.image_size} px below 2 px; use fewer channels entries")
        layers += [nn.Conv2d(in_ch, in_ch, 3, padding=1), nn.GroupNorm(config.norm_groups, in_ch),
                   nn.SiLU()]
        self.convs = nn.Sequential(*layers)
        self.embed = nn.Linear(5 * in_ch, config.feature_dim)  # max pool + 2 x 2 average pool
        self.head = nn.Linear(config.feature_dim, config.num_labels)
        # Per-dimension mean and standard deviation of the embedding on real renders, set after
        # training: the metric features are standardised, so the KID kernel (x.y / d + 1)^3
        # sees O(1) inner products and FD is in units of the real spread.
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_std", torch.ones(config.feature_dim))

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, feature_dim), the features of the metrics (pre-activation)."""
        h = self.convs(x)  # (B, C, H / 2^k, W / 2^k)
        pooled = torch.cat([h.amax(dim=(2, 3)),  # (B, C)
                            nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)], dim=1)  # (B, 4C)
        return self.embed(pooled)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, feature_dim): the embedding standardised by the stored statistics."""
        return (self.embedding(x) - self.feature_mean) / self.feature_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_labels) logits."""
        return self.head(nn.functional.silu(self.embedding(x)))


class ShapesFeatures:
    """The shapes feature extractor loaded from a safetensors file of `save_module`."""

    def __init__(self, path: str | Path) -> None:
        from pictor.networks.io import load_module

        self.path = Path(path)
        self.net = load_module(ShapesFeatureNet, ShapesFeatureNetConfig, self.path)
        self.net = self.net.float().eval().requires_grad_(False)
        self.name = DEFAULT_FEATURES_NAME
        self.dim = self.net.config.feature_dim
        self.sha256 = file_sha256(self.path)

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        size = self.net.config.image_size
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), _BATCH_SIZE):
                x = images_to_tensor(images[start:start + _BATCH_SIZE], size)  # (b, 3, H, W)
                out.append(self.net.features(x).double().numpy())  # (b, D)
        return np.concatenate(out) if out else np.zeros((0, self.dim))


# ---------------------------------------------------------------------------------------------
# Inception features from a local TorchScript file
# ---------------------------------------------------------------------------------------------
class InceptionFeatures:
    """Inception-v3 pool features from a local TorchScript file; nothing is ever downloaded.

    Expected: NVIDIA's `pt_inception-2015-12-05.pt` (the TF FID network exported to TorchScript
    for the StyleGAN2-ADA metrics), called as `module(x, return_features=True)` on
    (B, 3, 299, 299) float32 in [0, 255], returning (B, 2048). A module that rejects the keyword
    is called as `module(x)`; its output is flattened to (B, D).
    """

    input_size_px = 299

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ValueError(f"no Inception weights at {str(self.path)!r}; pass a local "
                             "TorchScript file (pictor never downloads weights)")
        if self.path.suffix == ".safetensors":
            raise ValueError(
                f"{self.path} is a safetensors file, but Inception needs its network definition "
                "(torchvision is not a dependency of pictor). Pass a TorchScript export instead, "
                "e.g. NVIDIA's pt_inception-2015-12-05.pt, or use the shapes features")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, yet it is the format
                warnings.simplefilter("ignore", DeprecationWarning)  # these weights ship in
                self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
        except RuntimeError as err:
            raise ValueError(f"{self.path} is not a TorchScript file torch.jit.load can read "
                             f"({err}); export the network with torch.jit.script/trace") from None
        self.name = "inception"
        self.sha256 = file_sha256(self.path)
        self.dim = int(self._forward(torch.zeros(1, 3, self.input_size_px,
                                                 self.input_size_px)).shape[1])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            try:
                y = self.module(x, return_features=True)
            except (RuntimeError, TypeError):
                y = self.module(x)
        return y.reshape(y.shape[0], -1)

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for start in range(0, len(images), 32):
            x = images_to_tensor(images[start:start + 32], self.input_size_px)  # (b, 3, 299, 299)
            out.append(self._forward((x + 1.0) * 127.5).double().numpy())  # (b, D)
        return np.concatenate(out) if out else np.zeros((0, self.dim))


# ---------------------------------------------------------------------------------------------
# Loading by spec
# ---------------------------------------------------------------------------------------------
def default_features_dir() -> Path:
    """<repo>/models/shapes-features: where the shipped shapes extractor lives."""
    import pictor

    return Path(pictor.__file__).resolve().parents[2] / "models" / DEFAULT_FEATURES_NAME


def load_feature_extractor(spec: str | Path = "shapes") -> FeatureExtractor:
    """A feature extractor from a spec:

    - "shapes": the shipped shapes extractor (models/shapes-features);
    - a folder holding shapes_features.safetensors, or that file itself;
    - "inception:PATH" or a .pt/.pth/.jit file: Inception features from a local TorchScript file;
    - "clip:DIR": the standardised image embeddings of a CLIP of `pictor train-clip`.
    ValueError (saying what to pass) when nothing usable is found.
    """
    text = str(spec)
    if text.startswith(INCEPTION_PREFIX):
        return InceptionFeatures(text[len(INCEPTION_PREFIX):])
    if text.startswith(CLIP_PREFIX):
        from pictor.evaluation.clip_eval import load_clip

        return load_clip(text[len(CLIP_PREFIX):])
    path = default_features_dir() if text == "shapes" else Path(text).expanduser()
    if path.suffix in (".pt", ".pth", ".jit"):
        return InceptionFeatures(path)
    if path.is_dir():
        path = path / FEATURES_FILE
    if not path.is_file():
        raise ValueError(
            f"no feature extractor at {str(path)!r}. Train one with `pictor train-features "
            f"-o {path.parent}`, pass a folder holding {FEATURES_FILE}, or "
            "'inception:/path/to/pt_inception.pt' for local Inception weights")
    return ShapesFeatures(path)
