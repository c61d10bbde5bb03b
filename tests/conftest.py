"""Session-wide test settings."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Hermetic runs: persistent prompt-embedding caches go to a fresh folder, not ~/.cache/pictor
# (subprocesses of CLI tests inherit it).
os.environ["PICTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="pictor-test-cache-")
atexit.register(shutil.rmtree, os.environ["PICTOR_CACHE_DIR"], ignore_errors=True)
