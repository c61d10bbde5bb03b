"""Checkpoints: exact round trip, atomic writes, only complete and intact ones are picked."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pictor.training.checkpoints import (
    Checkpoint,
    capture_rng_state,
    find_latest,
    is_complete,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temp_dirs,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
)


def _trained_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    for _ in range(3):
        loss = model(torch.randn(5, 4)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _ckpt(step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> Checkpoint:
    return Checkpoint(step=step, model=model.state_dict(), optimizer=opt.state_dict(),
                      config_yaml="training:\n  seed: 0\n", ema=model.state_dict(),
                      ema_num_updates=step, rng=capture_rng_state(),
                      data_position={"epoch": 2, "index": 7}, extra={"note": "x"})


def test_round_trip_is_exact_and_optimizer_continues_identically(tmp_path):
    model, opt = _trained_optimizer()
    path = save_checkpoint(tmp_path, _ckpt(3, model, opt))
    assert path.name == "step_000000003" and is_complete(path)
    ck = load_checkpoint(path)
    assert ck.step == 3 and ck.data_position == {"epoch": 2, "index": 7}
    assert ck.ema_num_updates == 3 and ck.extra == {"note": "x"}
    assert ck.config_yaml == "training:\n  seed: 0\n"
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model[k], v) and torch.equal(ck.ema[k], v)

    # A restored optimizer takes exactly the same next step as the original.
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model2.load_state_dict(ck.model)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)
    opt2.load_state_dict(ck.optimizer)
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    # no pickle: only safetensors, JSON and YAML in the folder
    assert sorted(p.name for p in path.iterdir()) == [
        "COMPLETE.json", "config.yaml", "ema.safetensors", "model.safetensors",
        "optimizer.safetensors", "state.json"]


def test_rng_state_round_trip():
    gen = torch.Generator().manual_seed(123)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    gen.manual_seed(4)
    state = capture_rng_state({"train": gen})
    expected = (random.random(), np.random.rand(), torch.rand(1).item(),
                torch.rand(1, generator=gen).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    gen.manual_seed(9)
    restore_rng_state(state, {"train": gen})
    got = (random.random(), np.random.rand(), torch.rand(1).item(),
           torch.rand(1, generator=gen).item())
    assert got == expected


def test_latest_skips_incomplete_and_corrupt(tmp_path):
    model, opt = _trained_optimizer()
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, _ckpt(step, model, opt))
    assert find_latest(tmp_path).name == "step_000000030"

    # corrupt the newest: flip a byte in its weights (same size, so only the hash tells)
    f = tmp_path / "step_000000030" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert not is_complete(tmp_path / "step_000000030")
    assert find_latest(tmp_path).name == "step_000000020"

    # truncate the next one; remove the marker of a further one
    g = tmp_path / "step_000000020" / "optimizer.safetensors"
    g.write_bytes(g.read_bytes()[:10])
    assert find_latest(tmp_path).name == "step_000000010"
    (tmp_path / "step_000000010" / "COMPLETE.json").unlink()
    assert find_latest(tmp_path) is None
    # none verifies: --resume latest refuses (never a silent fresh start), naming each and why
    with pytest.raises(ValueError) as info:
        resolve_resume("latest", tmp_path)
    message = str(info.value)
    assert "step_000000030: model.safetensors does not match its SHA-256" in message
    assert "step_000000020: optimizer.safetensors has 10 bytes" in message
    assert "step_000000010: no COMPLETE.json" in message
    with pytest.raises(ValueError, match="not an intact checkpoint folder .no COMPLETE.json"):
        resolve_resume(str(tmp_path / "step_000000010"), tmp_path)
    with pytest.raises(ValueError, match="interrupted"):
        load_checkpoint(tmp_path / "step_000000010")
    # no checkpoints at all: a fresh run
    assert resolve_resume("latest", tmp_path / "none").path is None


def _forge(folder, name: str, data: bytes) -> None:
    """Replace a file of a checkpoint *and* its entry in COMPLETE.json, so that only the
    checks of meaning (not the hashes) can tell."""
    import hashlib
    import json

    (folder / name).write_bytes(data)
    marker = json.loads((folder / "COMPLETE.json").read_text())
    marker["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "COMPLETE.json").write_text(json.dumps(marker))


@pytest.mark.parametrize("change, problem", [
    (lambda s: {**s, "step": 999}, "state.json says step 999, the folder name 10"),
    (lambda s: {**s, "step": -5}, "state.json says step -5"),
    (lambda s: {**s, "step": "10"}, "state.json says step '10'"),
    (lambda s: {k: v for k, v in s.items() if k != "rng"}, "state.json lacks rng"),
    (lambda s: {**s, "optimizer": {}}, "no param_groups"),
    (lambda s: [s], "not a JSON object"),
])
def test_state_json_is_checked_for_meaning(tmp_path, change, problem):
    import json

    model, opt = _trained_optimizer()
    path = save_checkpoint(tmp_path, _ckpt(10, model, opt))
    state = json.loads((path / "state.json").read_text())
    _forge(path, "state.json", json.dumps(change(state)).encode())
    with pytest.raises(ValueError, match=problem):
        load_checkpoint(path)


def test_bad_safetensors_header_and_marker_tricks(tmp_path):
    import json

    model, opt = _trained_optimizer()
    path = save_checkpoint(tmp_path, _ckpt(10, model, opt))
    _forge(path, "model.safetensors", b"\xff" * 8 + b"not a header")
    with pytest.raises(ValueError, match="unreadable: SafetensorError"):
        load_checkpoint(path)
    path = save_checkpoint(tmp_path, _ckpt(20, model, opt))
    marker = json.loads((path / "COMPLETE.json").read_text())
    marker["files"]["../../etc/hostname"] = {"bytes": 1, "sha256": "0"}
    (path / "COMPLETE.json").write_text(json.dumps(marker))
    with pytest.raises(ValueError, match="outside the folder"):
        load_checkpoint(path)


def test_a_damaged_checkpoint_is_moved_aside_never_overwritten(tmp_path):
    from pictor.training.checkpoints import scan_latest

    model, opt = _trained_optimizer()
    save_checkpoint(tmp_path, _ckpt(10, model, opt))
    damaged = save_checkpoint(tmp_path, _ckpt(20, model, opt))
    (damaged / "optimizer.safetensors").write_bytes(b"x")
    scan = scan_latest(tmp_path)
    assert scan.path.name == "step_000000010"
    assert [(p.name, "1 bytes" in problem) for p, problem in scan.damaged] == [
        ("step_000000020", True)]
    # a new run writing step 20 again keeps the damaged folder, byte for byte, beside it
    save_checkpoint(tmp_path, _ckpt(20, model, opt))
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("damaged-step_000000020-")]
    assert (aside / "optimizer.safetensors").read_bytes() == b"x"
    assert "1 bytes" in (aside / "DAMAGED.txt").read_text()
    assert is_complete(tmp_path / "step_000000020")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 20]


def test_interrupted_write_leaves_no_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained_optimizer()
    save_checkpoint(tmp_path, _ckpt(10, model, opt))

    # Simulate a kill right before the marker: the writer's sleep hook raises instead.
    import pictor.training.checkpoints as ckpts

    def killed(step: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpts, "_test_delay", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, _ckpt(20, model, opt))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10]
    assert find_latest(tmp_path).name == "step_000000010"
    assert remove_stale_temp_dirs(tmp_path) and not any(
        p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_keep_last(tmp_path):
    model, opt = _trained_optimizer()
    for step in range(1, 6):
        save_checkpoint(tmp_path, _ckpt(step, model, opt), keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000004", "step_000000005"]
