"""Training checkpoints: written atomically, verified when read, the newest N kept.

A checkpoint is a folder `<run>/checkpoints/step_000001000/` holding

    model.safetensors      live weights (safetensors: no pickle anywhere)
    ema.safetensors        EMA weights (when the run has an EMA)
    optimizer.safetensors  every optimizer tensor (Adam moments, step counters), keyed
                           "state.<param index>.<name>"
    state.json             step, optimizer hyper-parameters, RNG states, data position, extra
    config.yaml            the resolved run config
    COMPLETE.json          size and SHA-256 of every file above, written last

Atomicity: everything is written into a hidden temp folder `.tmp-step_...` next to it, each file
fsync'ed, then COMPLETE.json, then the folder is renamed to its final name (rename is atomic on
POSIX) and the parent folder fsync'ed. A folder is a checkpoint only when its name is
`step_<digits>` *and* COMPLETE.json lists files whose sizes and hashes match, so a process killed
at any moment (even halfway through a write or a deletion) never leaves something that
`latest` would pick.

Test hook: when the environment variable PICTOR_TEST_CHECKPOINT_WRITE_DELAY_SECONDS is set, the
writer sleeps that long after writing the files and before COMPLETE.json and the rename (only for
step PICTOR_TEST_CHECKPOINT_DELAY_AT_STEP when that is set too), so a test can SIGKILL a run in
the middle of a checkpoint write.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

CHECKPOINT_NAME = re.compile(r"^step_(\d+)$")
MARKER = "COMPLETE.json"
FORMAT_VERSION = 1


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly where it stopped."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]                    # torch optimizer.state_dict() layout
    config_yaml: str
    ema: dict[str, torch.Tensor] | None = None
    ema_num_updates: int = 0
    rng: dict[str, Any] = field(default_factory=dict)   # from capture_rng_state()
    data_position: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # small JSON-able values


# ----------------------------------------------------------------------------------------------
# RNG states
# ----------------------------------------------------------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """JSON-able states of Python's, NumPy's, torch's (CPU and CUDA) and named generators."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_json(random.getstate()),
        "numpy": {"name": np_state[0], "keys": np_state[1].tolist(), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": _b64(torch.get_rng_state()),
        "generators": {k: _b64(g.get_state()) for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any],
                      generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of capture_rng_state; generators are restored in place by name."""
    if "python" in state:
        random.setstate(_from_json(state["python"]))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["name"], np.array(s["keys"], dtype=np.uint32), s["pos"],
                             s["has_gauss"], s["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [_unb64(s) for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    for name, g in (generators or {}).items():
        if name not in state.get("generators", {}):
            raise ValueError(f"checkpoint has no state for generator {name!r}")
        g.set_state(_unb64(state["generators"][name]))


def _to_json(x: Any) -> Any:
    if isinstance(x, tuple):
        return {"__tuple__": [_to_json(v) for v in x]}
    if isinstance(x, list):
        return [_to_json(v) for v in x]
    return x


def _from_json(x: Any) -> Any:
    if isinstance(x, dict) and "__tuple__" in x:
        return tuple(_from_json(v) for v in x["__tuple__"])
    if isinstance(x, list):
        return [_from_json(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------
# Optimizer state <-> (tensors, JSON)
# ----------------------------------------------------------------------------------------------


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensors_for_file(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage (tied weights); a copy of each is cheap here.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _test_delay(step: int) -> None:
    delay = os.environ.get("PICTOR_TEST_CHECKPOINT_WRITE_DELAY_SECONDS")
    at_step = os.environ.get("PICTOR_TEST_CHECKPOINT_DELAY_AT_STEP")
    if delay and (not at_step or int(at_step) == step):
        time.sleep(float(delay))


def save_checkpoint(root: str | Path, ckpt: Checkpoint, *, keep_last: int | None = None) -> Path:
    """Write `ckpt` atomically to `root/step_<step>`; then delete all but the newest `keep_last`.

    Returns the final folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(ckpt.step)
    tmp = root / f".tmp-{checkpoint_name(ckpt.step)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()

    meta = {"format": "pictor-checkpoint", "version": str(FORMAT_VERSION), "step": str(ckpt.step)}
    save_file(_tensors_for_file(ckpt.model), tmp / "model.safetensors", metadata=meta)
    if ckpt.ema is not None:
        save_file(_tensors_for_file(ckpt.ema), tmp / "ema.safetensors", metadata=meta)
    opt_tensors, opt_meta = _split_optimizer_state(ckpt.optimizer)
    save_file(opt_tensors, tmp / "optimizer.safetensors", metadata=meta)
    state = {
        "format_version": FORMAT_VERSION,
        "step": ckpt.step,
        "ema_num_updates": ckpt.ema_num_updates,
        "optimizer": opt_meta,
        "rng": ckpt.rng,
        "data_position": ckpt.data_position,
        "extra": ckpt.extra,
    }
    (tmp / "state.json").write_text(json.dumps(state))
    (tmp / "config.yaml").write_text(ckpt.config_yaml)
    files = sorted(p.name for p in tmp.iterdir())
    for name in files:
        _fsync_file(tmp / name)

    _test_delay(ckpt.step)

    marker = {"step": ckpt.step,
              "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)}
                        for n in files}}
    (tmp / MARKER).write_text(json.dumps(marker, indent=1))
    _fsync_file(tmp / MARKER)
    _fsync_dir(tmp)
    if final.exists():  # re-written after resuming from an older checkpoint
        problem = checkpoint_problem(final, verify_hashes=False)
        if problem is None:
            _remove_dir(final)
        else:  # what is damaged is kept for inspection, never overwritten
            move_aside(final, problem)
    os.rename(tmp, final)
    _fsync_dir(root)
    if keep_last is not None:
        prune_checkpoints(root, keep_last)
    return final


def _remove_dir(path: Path) -> None:
    # Rename first: a half-deleted folder must never look like a checkpoint.
    doomed = path.with_name(f".deleting-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune_checkpoints(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints; return the deleted ones."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    complete = list_checkpoints(root, verify_hashes=False)
    doomed = complete[:-keep_last]
    for _, path in doomed:
        _remove_dir(path)
    return [p for _, p in doomed]


def remove_stale_temp_dirs(root: str | Path) -> list[Path]:
    """Remove leftovers of killed writes/deletions (call before a run starts writing)."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".deleting-")):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


REQUIRED_FILES = ("model.safetensors", "optimizer.safetensors", "state.json", "config.yaml")
REQUIRED_STATE_KEYS = ("format_version", "step", "optimizer", "rng", "data_position")
MAX_JSON_BYTES = 64 * 2**20  # COMPLETE.json and state.json are a few KB; refuse to parse more


def _read_json(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path.name} is {path.stat().st_size} bytes (> {MAX_JSON_BYTES})")
    return json.loads(path.read_text(encoding="utf-8"))


def checkpoint_problem(path: str | Path, *, verify_hashes: bool = True) -> str | None:
    """None when `path` is a finished, intact checkpoint; otherwise what is wrong with it.

    Checked: the folder name, COMPLETE.json (present, parsable, naming the required files with
    sizes and hashes that match), the step (the same non-negative integer in the folder name,
    COMPLETE.json and state.json), state.json's required keys and format version, and that the
    safetensors headers parse. A folder can pass only if it was written whole by
    save_checkpoint or made to look so on purpose (then load errors still name the file).
    """
    path = Path(path)
    m = CHECKPOINT_NAME.match(path.name)
    if not m:
        return "the folder name is not step_<digits>"
    if not (path / MARKER).is_file():
        return f"no {MARKER} (interrupted while being written, or not a checkpoint)"
    try:
        marker = _read_json(path / MARKER)
        files = marker["files"]
        if not isinstance(files, dict):
            return f"{MARKER} lists no files"
        missing = [n for n in REQUIRED_FILES if n not in files]
        if missing:
            return f"{MARKER} does not list {', '.join(missing)}"
        for name, info in files.items():
            if Path(name).name != name:
                return f"{MARKER} names a file outside the folder: {name!r}"
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != info["bytes"]:
                return f"{name} has {f.stat().st_size} bytes, {MARKER} says {info['bytes']}"
            if verify_hashes and _sha256(f) != info["sha256"]:
                return f"{name} does not match its SHA-256 in {MARKER} (damaged after writing)"
        step = int(m.group(1))
        if marker.get("step") != step:
            return f"{MARKER} says step {marker.get('step')!r}, the folder name {step}"
        if not verify_hashes:
            return None
        state = _read_json(path / "state.json")
        if not isinstance(state, dict):
            return "state.json is not a JSON object"
        missing = [k for k in REQUIRED_STATE_KEYS if k not in state]
        if missing:
            return f"state.json lacks {', '.join(missing)}"
        if state["format_version"] != FORMAT_VERSION:
            return (f"state.json has format_version {state['format_version']!r}; this pictor "
                    f"reads {FORMAT_VERSION}")
        if type(state["step"]) is not int or state["step"] != step or step < 0:
            return f"state.json says step {state['step']!r}, the folder name {step}"
        if not isinstance(state["optimizer"], dict) or \
                not isinstance(state["optimizer"].get("param_groups"), list):
            return "state.json's optimizer has no param_groups list"
        for name in files:
            if name.endswith(".safetensors"):
                with safe_open(path / name, framework="pt") as f:
                    f.keys()
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as error:
        return f"unreadable: {type(error).__name__}: {error}"
    return None


def is_complete(path: str | Path, *, verify_hashes: bool = True) -> bool:
    """True when `path` is a finished checkpoint whose files match its COMPLETE.json."""
    return checkpoint_problem(path, verify_hashes=verify_hashes) is None


def list_checkpoints(root: str | Path, *, verify_hashes: bool = True) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root` as (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_NAME.match(p.name)
        if m and p.is_dir() and is_complete(p, verify_hashes=verify_hashes):
            found.append((int(m.group(1)), p))
    return sorted(found)


@dataclass
class LatestScan:
    """What `--resume latest` found: the newest intact checkpoint and the damaged ones newer
    than it (all of them when none is intact), each with what is wrong."""

    path: Path | None
    damaged: list[tuple[Path, str]] = field(default_factory=list)


def scan_latest(root: str | Path) -> LatestScan:
    """Checkpoints under `root` from the newest down to the first that verifies."""
    root = Path(root)
    scan = LatestScan(None)
    if not root.is_dir():
        return scan
    candidates = sorted(
        ((int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_NAME.match(p.name))),
        reverse=True,
    )
    for _, path in candidates:
        problem = checkpoint_problem(path) if path.is_dir() else "not a folder"
        if problem is None:
            scan.path = path
            return scan
        scan.damaged.append((path, problem))
    return scan


def find_latest(root: str | Path) -> Path | None:
    """The newest complete, hash-verified checkpoint under `root`, or None."""
    return scan_latest(root).path


def describe_damaged(damaged: list[tuple[Path, str]]) -> str:
    return "; ".join(f"{p.name}: {problem}" for p, problem in damaged)


def move_aside(path: Path, problem: str) -> Path:
    """Rename a damaged checkpoint to damaged-<name>-<time> beside it (never deleted, never
    overwritten: a new checkpoint of the same step gets the name) with a note of why."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"damaged-{path.name}-{stamp}-{uuid.uuid4().hex[:4]}")
    os.rename(path, target)
    (target / "DAMAGED.txt").write_text(f"{problem}\n")
    return target


def resolve_resume(resume: str | None, checkpoints_root: str | Path) -> LatestScan:
    """`--resume` value -> what to resume from. None: a fresh run. "latest": the newest intact
    checkpoint, with the damaged newer ones (the caller reports and moves them aside); a fresh
    run when there are no checkpoints at all, ValueError naming each when none verifies.
    Otherwise a path that must be an intact checkpoint."""
    if resume is None:
        return LatestScan(None)
    if resume == "latest":
        scan = scan_latest(checkpoints_root)
        if scan.path is None and scan.damaged:
            raise ValueError(
                f"--resume latest: no checkpoint under {checkpoints_root} verifies "
                f"({describe_damaged(scan.damaged)}). Nothing was changed: restore them from a "
                f"copy, resume from another one with --resume PATH, or start a new run in "
                f"another training.output_dir")
        return scan
    path = Path(resume)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--resume {resume!r} is not an intact checkpoint folder ({problem}); "
                         f"use --resume latest to pick the newest intact one under "
                         f"{checkpoints_root}")
    return LatestScan(path)


def load_checkpoint(path: str | Path, *, map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint written by save_checkpoint (verifying it first)."""
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"{path} is not a complete checkpoint: {problem}")
    state = _read_json(path / "state.json")
    model = load_file(path / "model.safetensors", device=map_location)
    ema = (load_file(path / "ema.safetensors", device=map_location)
           if (path / "ema.safetensors").is_file() else None)
    opt_tensors = load_file(path / "optimizer.safetensors", device=map_location)
    return Checkpoint(
        step=int(state["step"]),
        model=model,
        optimizer=_join_optimizer_state(opt_tensors, state["optimizer"]),
        config_yaml=(path / "config.yaml").read_text(),
        ema=ema,
        ema_num_updates=int(state.get("ema_num_updates", 0)),
        rng=state.get("rng", {}),
        data_position=state.get("data_position", {}),
        extra=state.get("extra", {}),
    )
