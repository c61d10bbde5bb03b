"""The import direction of architecture.md, checked by parsing every module's imports.

diffusion, networks, text and data are leaves; samplers use only diffusion; training uses the
leaves; pipeline uses text, networks, diffusion, samplers and guidance; families (GAN, VAE
sampling) uses pipeline; evaluation uses pipeline and families;
serving and cli sit on top and nothing imports them. Spark is imported only by data/spark.py
and training/spark.py (TorchDistributor).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "pictor"

# area -> the pictor areas it may import (besides itself). Top-level modules count as areas.
ALLOWED = {
    "diffusion": set(),
    "networks": set(),
    "text": set(),
    "data": set(),
    "samplers": {"diffusion"},
    "guidance": {"diffusion"},
    "provenance": set(),
    "prompts": set(),
    "hardware": set(),
    "config": {"diffusion", "networks", "text", "data", "training"},
    "training": {"diffusion", "networks", "text", "data", "config", "samplers", "guidance",
                 "hardware"},
    "pipeline": {"text", "networks", "diffusion", "samplers", "guidance", "provenance", "config",
                 "hardware"},
    "families": {"pipeline", "text", "networks", "provenance", "config", "hardware"},
    "evaluation": {"pipeline", "families", "data", "text", "networks", "diffusion", "samplers",
                   "guidance", "provenance", "config", "hardware"},
    "reward": {"training", "pipeline", "evaluation", "data", "text", "networks", "diffusion",
               "samplers", "guidance", "provenance", "config", "hardware"},
    "serving": {"*"},
    "cli": {"*"},
}
NOBODY_IMPORTS = {"serving", "cli"}
# The modules that may import pyspark (an optional extra, imported inside their functions):
# data preparation on Spark, and the trainer launched by Spark's TorchDistributor.
SPARK_MODULES = {"data/spark.py", "training/spark.py"}


def _area(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _pictor_imports(path: Path) -> list[tuple[str, str]]:
    """(imported pictor area, full module name) for each import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    package = ".".join(("pictor",) + path.relative_to(SRC).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "pictor" and len(parts) > 1:
                out.append((parts[1], name))
            elif parts[0] in ("pyspark",):
                out.append(("<spark>", name))
    return out


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def test_import_direction() -> None:
    violations = []
    for path in _modules():
        area = _area(path)
        if area == "__init__" or area == "__main__":
            continue
        allowed = ALLOWED.get(area)
        assert allowed is not None, f"{path}: area {area!r} is missing from ALLOWED in this test"
        for target, name in _pictor_imports(path):
            if target == "<spark>":
                if path.relative_to(SRC).as_posix() not in SPARK_MODULES:
                    violations.append(f"{path.relative_to(SRC)} imports Spark ({name})")
                continue
            if target == area or target == "__init__":
                continue
            if target in NOBODY_IMPORTS and area not in NOBODY_IMPORTS:
                violations.append(f"{path.relative_to(SRC)} imports {name}: nothing imports {target}")
            elif "*" not in allowed and target not in allowed:
                violations.append(f"{path.relative_to(SRC)} ({area}) may not import {name}")
    assert not violations, "\n".join(violations)
