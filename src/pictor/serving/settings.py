"""What a `pictor serve` process is allowed to do: address, token, limits, queue and batching.

One typed dataclass, every default commented. `check()` enforces the security rule of the
server: bound to anything but a loopback address it must have a bearer token, else it refuses
to start (ComfyUI's open-by-default port and TorchServe's management API open to the world are
the failures this rules out).
"""

from __future__ import annotations

import ipaddress
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

MIN_TOKEN_CHARS = 16  # a shorter bearer token is guessable; `openssl rand -hex 32` gives 64
# `pictor serve` reads the token from this environment variable when no --token-file is given:
# how containers receive secrets (a Kubernetes Secret as env, `docker run -e`)
TOKEN_ENV = "PICTOR_TOKEN"


def is_loopback_host(host: str) -> bool:
    """True for 'localhost' and loopback IP literals (127.0.0.0/8, ::1); False for anything
    else, including 0.0.0.0 / :: (every interface) and host names other than localhost."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name: it may resolve to a public interface, so treat it as one


def check_token(text: str, where: str) -> str:
    """`text` stripped; ValueError unless it is one word of at least MIN_TOKEN_CHARS."""
    token = text.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"{where} must be one word of at least {MIN_TOKEN_CHARS} "
                         "characters, e.g. `openssl rand -hex 32`")
    return token


def read_token_env(name: str = TOKEN_ENV) -> str | None:
    """The bearer token in environment variable `name`; None when it is unset or empty."""
    text = os.environ.get(name, "")
    return check_token(text, f"${name}") if text.strip() else None


def read_token_file(path: str | Path) -> str:
    """The bearer token stored in `path` (surrounding whitespace stripped). ValueError when the
    file is missing, empty or holds fewer than MIN_TOKEN_CHARS characters; a warning when other
    users may read it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"token file {str(path)!r} does not exist; create one, e.g. "
                         f"`openssl rand -hex 32 > {path} && chmod 600 {path}`")
    token = check_token(path.read_text(encoding="utf-8"), f"token in {str(path)!r}")
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.warn(f"token file {path} is readable by other users; chmod 600 it",
                      stacklevel=2)
    return token


@dataclass
class ServeSettings:
    # Model folder to serve (a training run's final/ folder); None: $PICTOR_MODEL, else
    # models/shapes-v11 (see pictor.cli.generate.default_model_dir). Several models: the first
    # (create_app's `models` holds them all).
    model_dir: str | None = None
    # Address to bind. Loopback by default; any other address requires `token`.
    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer token required on every route but /healthz, /readyz (and the page shell). None is
    # allowed only on loopback; when set it is required on loopback too.
    token: str | None = None
    # Stamp a visible "AI-generated" label into the pixels, on top of the provenance metadata
    # every image carries anyway (the label changes the pixels, so `pictor reproduce` of a
    # marked image reports a mismatch; the record says `visible_mark` in its `extra`).
    visible_mark: bool = False

    # ---- request limits (422 with the reason when exceeded)
    max_num_images: int = 8  # n per request
    max_num_steps: int = 100  # sampler steps per request
    max_prompt_chars: int = 500  # prompt and negative prompt, each
    max_guidance_scale: float = 30.0  # |guidance| above this is a typo, not a setting
    max_body_bytes: int = 16 * 1024  # request bodies above this get 413 (a request is < 1 KiB)

    # ---- queue and worker
    max_queued_jobs: int = 32  # jobs waiting (not running); one more gets 429 + Retry-After
    # Micro-batching: the worker runs compatible queued jobs (same model, sampler, steps,
    # guidance, text length) in one sampler call of at most this many images; 1 = off.
    max_batch_images: int = 16
    # True: the network runs on each job's own rows, so every image is bit-identical to a solo
    # `pictor generate` (CPU kernels are not batch-invariant; see serving.batching). False: one
    # network call for the whole batch, faster; a few channel values may then be one level off.
    exact_batching: bool = True
    # How long an idle worker waits for more compatible jobs before it starts a batch. 0: take
    # what is queued (under load the queue fills while the previous batch runs).
    batch_window_seconds: float = 0.0
    # An x0 preview (SSE `preview` event) every this many steps; 0 = no previews.
    preview_every_steps: int = 4
    # Finished jobs (and their PNGs, kept in memory) retained for GET; the oldest go first.
    max_retained_jobs: int = 256
    # Text embeddings kept per distinct prompt (the pipeline's cache is trimmed to this).
    max_cached_prompts: int = 1024
    # Also keep them on disk between runs (bounded LRU, pictor.text.encoders.EmbeddingDiskCache).
    # Off by default: every entry holds a client's prompt in plain text.
    embedding_disk_cache: bool = False

    def check(self) -> None:
        """ValueError with what to do when the settings are unsafe or inconsistent."""
        if not is_loopback_host(self.host) and not self.token:
            raise ValueError(
                f"refusing to serve on {self.host!r} without a bearer token: anything beyond "
                "loopback needs --token-file FILE (e.g. `openssl rand -hex 32 > token && chmod "
                "600 token`), or bind to 127.0.0.1")
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ValueError(f"token must have at least {MIN_TOKEN_CHARS} characters")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must lie in [0, 65535], got {self.port}")
        positive = {"max_num_images": self.max_num_images, "max_num_steps": self.max_num_steps,
                    "max_prompt_chars": self.max_prompt_chars,
                    "max_body_bytes": self.max_body_bytes,
                    "max_queued_jobs": self.max_queued_jobs,
                    "max_batch_images": self.max_batch_images,
                    "max_retained_jobs": self.max_retained_jobs,
                    "max_cached_prompts": self.max_cached_prompts}
        bad = {k: v for k, v in positive.items() if int(v) < 1}
        if bad:
            raise ValueError(f"these settings must be >= 1: {bad}")
        if self.batch_window_seconds < 0 or self.preview_every_steps < 0:
            raise ValueError("batch_window_seconds and preview_every_steps must be >= 0")
