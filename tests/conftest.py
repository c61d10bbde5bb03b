"""Session-wide test settings."""

from __future__ import annotations

import os
import tempfile

# Hermetic runs: persistent prompt-embedding caches go to a fresh folder, not ~/.cache/pictor
# (subprocesses of CLI tests inherit it).
os.environ["PICTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="pictor-test-cache-")
