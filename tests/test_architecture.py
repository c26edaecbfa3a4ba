"""The layering of docs/architecture.md, as import-linter contracts ([tool.importlinter] in
pyproject.toml), checked with every test run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "connectors", "training")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(lint), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_imports_keep_the_layers() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_core_module_importing_the_store_breaks_the_contracts(tmp_path: Path) -> None:
    """The contracts are live: run on a copy of the tree whose core imports the store."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("static"))
    (tmp_path / "bot" / "core" / "probe.py").write_text("from bot.store import conversations\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "bot.core.probe -> bot.store.conversations" in done.stdout
