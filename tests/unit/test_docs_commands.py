"""Every `pictor ...` command in the README and docs/ parses as written (pasted into a shell, it
reaches its command instead of a usage error), and every `benchmarks/*.py` command passes the
arguments its script requires."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from pictor.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = ("```bash", "```sh", "```shell", "```console")


def shell_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of each command in the file's shell code blocks, with
    backslash-continued lines joined and trailing comments dropped."""
    commands, in_block, pending, start = [], False, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```"):
            in_block = not in_block and line.strip() in SHELL_BLOCKS
            continue
        if not in_block:
            continue
        text = line.split(" #")[0].rstrip()
        text = text[2:] if text.startswith("$ ") else text
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        command, pending = (pending + text).strip(), ""
        if command:
            commands.append((start, command))
    return commands


def _documented(pattern: str) -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for number, command in shell_commands(path):
            match = re.match(pattern, command)
            if match:
                found.append((f"{path.name}:{number}", match.group(1)))
    return found


PICTOR = _documented(r"^(?:\S*/)?pictor\s+(.*)$")
BENCHMARKS = _documented(r"^\S*python\S*\s+(benchmarks/\S+\.py.*)$")


def test_the_docs_hold_commands():
    assert len(PICTOR) >= 30 and len(BENCHMARKS) >= 5


@pytest.mark.parametrize("where, command", PICTOR, ids=[w for w, _ in PICTOR])
def test_documented_pictor_commands_parse(where, command):
    try:
        build_parser().parse_args(shlex.split(command))
    except SystemExit as exit_:
        pytest.fail(f"{where}: `pictor {command}` is a usage error (exit {exit_.code})")


def _required_options(script: Path) -> list[tuple[str, ...]]:
    """Options that the script's argparse calls mark required=True, each with its aliases
    ("-o", "--output-dir"): giving any one of them gives the option."""
    required = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
                and any(k.arg == "required" and getattr(k.value, "value", False)
                        for k in node.keywords)):
            required.append(tuple(a.value for a in node.args if isinstance(a, ast.Constant)))
    return required


@pytest.mark.parametrize("where, command", BENCHMARKS, ids=[w for w, _ in BENCHMARKS])
def test_documented_benchmark_commands_pass_required_arguments(where, command):
    script, *args = shlex.split(command)
    assert (REPO / script).is_file(), f"{where}: {script} does not exist"
    given = {a.split("=", 1)[0] for a in args}
    missing = [names[-1] for names in _required_options(REPO / script)
               if not given & set(names)]
    assert not missing, f"{where}: `{command}` lacks {sorted(missing)}"
