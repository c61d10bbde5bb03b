"""A frozen Hugging Face encoder compiled once, so later processes encode without transformers.

Importing transformers costs ~2.7 s of a ~4.7 s cold `pictor generate` here (BENCHMARKS.md,
generate_latency), more than the U-Net's 20 steps. The first process that encodes a new prompt
with a frozen encoder therefore also saves, beside the embedding disk cache:

- the encoder as a TorchScript trace of the transformers model itself (the same aten operations
  in the same order, so the embeddings are equal bit for bit; nothing is re-implemented), and
- the `tokenizers` tokenizer that transformers' fast tokenizer wraps, with the padding and
  truncation transformers would apply.

A later process loads both in ~0.2 s with torch and tokenizers alone. The save is verified
first: on probe prompts (the empty one, one that is truncated, the prompt at hand) the compiled
pair must give exactly transformers' ids, masks and embeddings, otherwise only a note that it is
not usable is written (so no later process tries again) and the transformers path stays in use. The folder is keyed like the embedding cache (encoder
files, max_length, device), so a changed encoder never meets an old trace.

TorchScript is deprecated in PyTorch in favour of torch.export, but `torch.export.load` imports
torch._dynamo and re-checks the graph with fake tensors (~1.9 s here, measured), which would
keep only a third of the saving. If a future torch drops torch.jit, `save` and `load` return
False / None and the transformers path is used; nothing else changes. The trace is written and
read only by pictor in the user's own cache folder (never a file handed in by a user).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from pictor.text.encoders import _check_prompts, _warn_truncated

FORMAT = 1
MODULE_FILE = "encoder.ts"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
# Checked at save time besides the prompt that triggered it: the empty prompt (special tokens
# only), a prompt that needs truncation, capitals, punctuation and word pieces.
PROBE_PROMPTS = ("", "a red circle", "Three STARS, above an orange-ish square!",
                 " ".join(["a blue square to the left of a cyan triangle"] * 8))


def folder_name() -> str:
    """Where in an embedding-cache folder the compiled encoder lives: one per torch version
    (a trace is read back only by the version that wrote it)."""
    return f"compiled-torch-{torch.__version__}"


@contextlib.contextmanager
def _no_jit_deprecation_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


class _LastHiddenState(torch.nn.Module):
    """(input_ids (B, L) long, attention_mask (B, L) long) -> last hidden state (B, L, D)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class CompiledTextEncoder:
    """The TextEncoder protocol on a saved (trace, tokenizer) pair; see the module docstring."""

    def __init__(self, module: Any, tokenizer: Any, max_length: int, pad_id: int,
                 pad_token: str, name: str, device: torch.device) -> None:
        self.module = module
        self.max_length = max_length
        self.name = name
        self.device = device
        self._count = tokenizer  # no truncation or padding: the prompt's full length
        self._tokenizer = type(tokenizer).from_str(tokenizer.to_str())
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (B, L) long, attention_mask (B, L) long), as transformers pads them."""
        prompts = _check_prompts(prompts)
        for prompt, enc in zip(prompts, self._count.encode_batch(prompts), strict=True):
            if len(enc.ids) > self.max_length:
                _warn_truncated(prompt, len(enc.ids), self.max_length, self.name)
        encs = self._tokenizer.encode_batch(prompts)
        ids = torch.tensor([e.ids for e in encs], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.long)
        return ids, mask

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(prompts)
        emb = self.module(ids.to(self.device), mask.to(self.device))
        return emb.float(), mask.to(self.device).bool()


def _tokenizer_without_limits(hf_tokenizer: Any) -> Any:
    """A copy of the `tokenizers.Tokenizer` inside a transformers fast tokenizer, with padding
    and truncation off (transformers sets them per call)."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (pure Python) tokenizer: no compiled path
        return None
    tok = type(backend).from_str(backend.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


def save(encoder: Any, folder: str | Path, prompts: tuple[str, ...] = ()) -> bool:
    """Compile the HFTextEncoder `encoder` into `folder` if the result reproduces it exactly on
    PROBE_PROMPTS + `prompts`; True when written. When it does not (or the tokenizer is a slow
    one), `folder` gets only a meta.json that says so, and later processes do not try again.
    Never raises: an error (say, a read-only cache) leaves no files."""
    folder = Path(folder)
    try:
        compiled = _compile(encoder, prompts)
    except Exception:  # noqa: BLE001 - an optional speed-up must never stop a generation
        compiled = None
    if compiled is None:
        _publish(folder, {"format": FORMAT, "usable": False, "torch": torch.__version__})
        return False
    traced, tok = compiled
    hf_tok = encoder.tokenizer

    def write(tmp: Path) -> None:
        with _no_jit_deprecation_warnings():
            torch.jit.save(traced, str(tmp / MODULE_FILE))
        tok.save(str(tmp / TOKENIZER_FILE))

    return _publish(folder, {"format": FORMAT, "usable": True, "max_length": encoder.max_length,
                             "name": encoder.name, "pad_id": hf_tok.pad_token_id,
                             "pad_token": hf_tok.pad_token, "torch": torch.__version__}, write)


def _publish(folder: Path, meta: dict, write: Any = None) -> bool:
    """Write `write(tmp)`'s files and meta.json into a temporary folder, then rename it to
    `folder` (atomic: a concurrent reader sees all files or none; a folder another process
    published first is kept). True when published; never raises, leaves no temporary files."""
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        if write is not None:
            write(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta))
        tmp.replace(folder)
        return True
    except Exception:  # noqa: BLE001 - a cache that cannot be written is skipped
        return False
    finally:
        if tmp.exists():
            for p in tmp.iterdir():
                p.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                tmp.rmdir()


def _compile(encoder: Any, prompts: tuple[str, ...]) -> tuple[Any, Any] | None:
    """(trace, tokenizer) of `encoder` when they reproduce it exactly on the probes, else None."""
    hf_tok = encoder.tokenizer
    tok = _tokenizer_without_limits(hf_tok)
    if tok is None or hf_tok.pad_token_id is None:
        return None
    model = encoder.model
    device = next(model.parameters()).device
    probes = list(dict.fromkeys(PROBE_PROMPTS + tuple(prompts)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the probe that is truncated
        ids, mask = (t.to(device) for t in _hf_ids(encoder, probes))
        with torch.no_grad(), _no_jit_deprecation_warnings():
            traced = torch.jit.trace(_LastHiddenState(model).eval(), (ids, mask),
                                     check_trace=False)
        compiled = CompiledTextEncoder(traced, tok, encoder.max_length, hf_tok.pad_token_id,
                                       hf_tok.pad_token, encoder.name, device)
        c_ids, c_mask = compiled.tokenize(probes)
        if not (torch.equal(c_ids, ids.cpu()) and torch.equal(c_mask, mask.cpu())):
            return None
        # one prompt at a time, as the pipeline encodes, against transformers doing the same
        for prompt in probes:
            if not torch.equal(compiled.encode([prompt])[0], encoder.encode([prompt])[0]):
                return None
    return traced, tok


def _hf_ids(encoder: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    t = encoder.tokenizer(prompts, padding="max_length", truncation=True,
                          max_length=encoder.max_length, return_tensors="pt")
    return t["input_ids"], t["attention_mask"]


def load(folder: str | Path, device: str | torch.device = "cpu") -> CompiledTextEncoder | None:
    """The encoder saved in `folder`, or None when there is none usable (missing, damaged,
    marked unusable, another format or torch version, or no torch.jit)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
        if (meta.get("format") != FORMAT or not meta.get("usable")
                or meta.get("torch") != torch.__version__):
            return None
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        with _no_jit_deprecation_warnings():
            module = torch.jit.load(str(folder / MODULE_FILE), map_location=device)
        return CompiledTextEncoder(module.eval(), tok, int(meta["max_length"]),
                                   int(meta["pad_id"]), str(meta["pad_token"]),
                                   str(meta["name"]), torch.device(device))
    except Exception:  # noqa: BLE001 - an unusable cache entry is a miss
        return None
