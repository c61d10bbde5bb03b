"""Save and load a network as one safetensors file holding its weights and its config.

The config dataclass is stored as JSON in the safetensors metadata (key "config", with the class
name under "config_class"), so a file is self-describing and loading never unpickles anything:

    save_module(unet, unet.config, "model.safetensors")
    unet = load_module(UNet, UNetConfig, "model.safetensors")   # same weights, same config
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "pictor.module/1"
M = TypeVar("M", bound=nn.Module)
C = TypeVar("C")


def save_module(module: nn.Module, config: Any, path: str | Path,
                extra_metadata: dict[str, str] | None = None,
                dtype: torch.dtype | None = None) -> None:
    """Write module's state_dict (tensors) and `config` (a dataclass, as JSON) to `path`.

    extra_metadata: further string entries for the header (e.g. training step, data hash).
    dtype: store floating-point tensors in this dtype (e.g. torch.float16 to halve a shipped
    model); `load_module` casts them back to the module's dtype.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"config must be a dataclass instance, got {type(config).__name__}")
    metadata = {"format": FORMAT, "config_class": type(config).__name__,
                "config": json.dumps(dataclasses.asdict(config), sort_keys=True)}
    for key, value in (extra_metadata or {}).items():
        if key in metadata or not isinstance(value, str):
            raise ValueError(f"extra_metadata[{key!r}]: keys must not be one of {sorted(metadata)}"
                             " and values must be strings")
        metadata[key] = value
    # safetensors needs contiguous tensors with unshared storage.
    tensors = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # safetensors creates files 0600; a model folder is meant to be shared
    tmp.replace(path)  # atomic: a crash never leaves a half-written model file


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_config(config_cls: type[C], path: str | Path) -> C:
    """The config dataclass stored in a file written by `save_module`."""
    metadata = read_metadata(path)
    if "config" not in metadata:
        raise ValueError(
            f"{path} has no 'config' entry in its safetensors metadata, so it was not written by "
            "pictor.networks.io.save_module; re-save it with save_module(module, config, path)"
        )
    stored_cls = metadata.get("config_class")
    if stored_cls is not None and stored_cls != config_cls.__name__:
        raise ValueError(f"{path} holds a {stored_cls}, not a {config_cls.__name__}; load it "
                         f"with the matching module and config classes")
    return config_from_dict(config_cls, json.loads(metadata["config"]))


def config_from_dict(config_cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a (flat) config dataclass from JSON data: lists become tuples where the field is a
    tuple; unknown keys are an error, missing keys keep their defaults (older files)."""
    if not isinstance(data, dict):
        raise ValueError(f"stored config is a {type(data).__name__}, not a JSON object")
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"stored config has keys unknown to {config_cls.__name__}: {unknown}; "
                         f"the file was written by a different version of pictor")
    kwargs = {}
    for key, value in data.items():
        if isinstance(value, list) and _is_tuple_type(hints[key]):
            value = tuple(value)
        kwargs[key] = value
    return config_cls(**kwargs)


def _is_tuple_type(tp: Any) -> bool:
    if typing.get_origin(tp) is tuple:
        return True
    return any(typing.get_origin(a) is tuple for a in typing.get_args(tp))


def load_module(cls: type[M], config_cls: type, path: str | Path,
                map_location: str | torch.device = "cpu") -> M:
    """Build `cls(config)` from the config stored in `path` and load its weights (strict).

    A damaged or hostile file is a ValueError naming it and the problem: a bad header, a
    truncated file, a config that does not build, tensors missing, unexpected or of the wrong
    shape. The module is first built on the meta device (no memory) and its shapes compared
    with the file's header, so a config asking for a huge network allocates nothing unless the
    file really holds those weights."""
    try:
        config = read_config(config_cls, path)
        with torch.device("meta"):
            skeleton = cls(config)
        _check_shapes(skeleton, path, f"{cls.__name__}({config_cls.__name__})")
        module = cls(config)
        state = load_file(str(path), device=str(map_location))
        module.load_state_dict(state, strict=True)
    except ValueError as error:
        if str(path) in str(error):
            raise
        raise ValueError(f"{path}: {error}") from None
    except (SafetensorError, OSError, TypeError, KeyError, IndexError, RuntimeError,
            AttributeError) as error:
        raise ValueError(f"{path} is not a usable {cls.__name__} file "
                         f"({type(error).__name__}: {str(error)[:300]})") from None
    return module


def _check_shapes(skeleton: nn.Module, path: str | Path, what: str) -> None:
    """ValueError unless the file's tensors are exactly the module's, shape for shape."""
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or unexpected or wrong:
        shapes = [f"{k}: {found[k]} in the file, {expected[k]} in the model" for k in wrong[:3]]
        raise ValueError(f"{path} does not match {what}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, wrong shapes {shapes}")
