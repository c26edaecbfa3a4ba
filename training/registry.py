"""A file-based model registry: versioned model directories and which version is live.

Layout under the models root::

    registry.json            {"format": 1, "tasks": {"intent": {"live": "v2", "history": ["v1"]}}}
    intent/v1/ intent/v2/    one directory per trained version (never modified afterwards)
    intent/.staging-*/       a run in progress; renamed to vN only when complete

Every change happens under an exclusive file lock and is written with write-temp-then-rename,
so promotion and rollback are atomic and a reader never sees half a file. An interrupted
training run leaves only a staging directory, which `clean_staging` removes.

Task and version names are checked wherever they come from (the command line, registry.json)
before they become part of a path, so no name can reach outside the models directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.core.datafiles import abbreviate
from bot.core.errors import ModelNotFoundError, RegistryError
from bot.nlu.artifacts import REGISTRY_FILE, TASK_NAME, VERSION_NAME

LOCK_FILE = ".registry.lock"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One trained version of a task's model."""

    task: str
    version: str
    path: Path
    live: bool
    metrics: dict[str, Any]
    created_at: str

    def summary(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "version": self.version,
            "path": str(self.path),
            "live": self.live,
            "created_at": self.created_at,
            "accuracy": self.metrics.get("accuracy"),
            "macro_f1": self.metrics.get("macro_f1"),
        }


def _version_number(name: str) -> int:
    match = VERSION_NAME.fullmatch(name)
    return int(match.group(1)) if match else -1


def _check_task(task: str) -> None:
    if not TASK_NAME.fullmatch(task):
        raise RegistryError(
            f"{abbreviate(task)!r} is not a task name: tasks are lower-case words such as "
            "intent or sentiment"
        )


def _is_entry(task: Any, entry: Any) -> bool:
    """A registry.json task entry whose task and version names are all names, not paths."""
    if not isinstance(task, str) or not TASK_NAME.fullmatch(task) or not isinstance(entry, dict):
        return False
    live, history = entry.get("live"), entry.get("history", [])
    return (
        (live is None or (isinstance(live, str) and bool(VERSION_NAME.fullmatch(live))))
        and isinstance(history, list)
        and all(isinstance(v, str) and VERSION_NAME.fullmatch(v) for v in history)
    )


class FileModelRegistry:
    """Versions and live pointers of every task under one models directory.

    Args:
        root: the models directory (created when missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- reading -------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        path = self.root / REGISTRY_FILE
        if not path.exists():
            return {"format": 1, "tasks": {}}
        fix = (
            "restore it from a backup, or delete it and choose the live versions again with "
            "`supportbot models promote TASK VERSION`"
        )
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path} is not valid JSON, or not UTF-8 ({exc}); {fix}") from exc
        if not isinstance(state, dict) or not isinstance(state.get("tasks"), dict):
            raise RegistryError(f'{path} has no "tasks" object; {fix}')
        for task, entry in state["tasks"].items():
            if not _is_entry(task, entry):
                raise RegistryError(
                    f"{path}: the entry of task {abbreviate(str(task))!r} is not a task name "
                    f'with "live" and "history" version names (v1, v2, ...); {fix}'
                )
        return state

    def tasks(self) -> list[str]:
        """Tasks that have at least one version or a live pointer."""
        found = set(self._state()["tasks"])
        if self.root.is_dir():
            found |= {
                p.name
                for p in self.root.iterdir()
                if TASK_NAME.fullmatch(p.name) and p.is_dir() and any(self._version_dirs(p.name))
            }
        return sorted(found)

    def _version_dirs(self, task: str) -> Iterator[Path]:
        folder = self.root / task
        if folder.is_dir():
            yield from (
                p for p in folder.iterdir() if VERSION_NAME.fullmatch(p.name) and p.is_dir()
            )

    def live(self, task: str) -> str | None:
        """The live version name of `task`, or None."""
        entry = self._state()["tasks"].get(task, {})
        return entry.get("live")

    def live_path(self, task: str) -> Path:
        """The directory of the live version of `task`."""
        _check_task(task)
        version = self.live(task)
        if version is None:
            raise ModelNotFoundError(
                f"no live {task} model in {self.root}; train one with "
                f"`supportbot train {task} --data PATH --models {self.root}`"
            )
        return self.root / task / version

    def versions(self, task: str) -> list[ModelVersion]:
        """All versions of `task`, oldest first."""
        live = self.live(task)
        out = []
        for path in sorted(self._version_dirs(task), key=lambda p: _version_number(p.name)):
            metrics_path = path / "metrics.json"
            metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
            out.append(
                ModelVersion(
                    task=task,
                    version=path.name,
                    path=path,
                    live=path.name == live,
                    metrics=metrics.get("test", metrics),
                    created_at=str(metrics.get("created_at", "")),
                )
            )
        return out

    def resolve(self, spec: str) -> Path:
        """A model directory from a path, a task (its live version) or `task/version`.

        A task and a version are names (`intent`, `v2`), never paths: `../v1` or
        `intent/../../x` are not looked up under the models directory.
        """
        if "\x00" not in spec and self._is_model_dir(Path(spec)):
            return Path(spec)
        task, _, version = spec.strip("/").partition("/")
        if TASK_NAME.fullmatch(task):
            if not version and task in self.tasks():
                return self.live_path(task)
            if VERSION_NAME.fullmatch(version) and (self.root / task / version).is_dir():
                return self.root / task / version
        raise ModelNotFoundError(
            f"no model {abbreviate(spec)!r}: give a version directory (e.g. "
            f"{self.root}/intent/v1), a task name for its live version (intent, sentiment) or "
            f"task/version; `supportbot models list --models {self.root}` shows what exists"
        )

    @staticmethod
    def _is_model_dir(path: Path) -> bool:
        try:
            return path.is_dir() and any(
                (path / meta).exists() for meta in ("classifier.json", "entity.json")
            )
        except OSError:  # e.g. a name longer than the file system takes: not a model
            return False

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._state()
                yield state
                self._write(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, state: dict[str, Any]) -> None:
        path = self.root / REGISTRY_FILE
        tmp = path.with_name(f".{REGISTRY_FILE}.{uuid.uuid4().hex}")
        with open(tmp, "w") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def stage(self, task: str) -> Path:
        """A fresh staging directory for a run of `task`; `commit` publishes it."""
        _check_task(task)
        folder = self.root / task
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".staging-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        return staging

    def commit(self, task: str, staging: Path, promote: bool | None = None) -> ModelVersion:
        """Publish a complete staging directory as the next version.

        Args:
            task: the task it belongs to.
            staging: a directory from `stage`, fully written.
            promote: True makes it live, False never, None only when the task has no live
                version yet (the first model of a task becomes live).
        """
        with self._locked() as state:
            numbers = [_version_number(p.name) for p in self._version_dirs(task)]
            version = f"v{max(numbers, default=0) + 1}"
            final = self.root / task / version
            os.rename(staging, final)
            entry = state["tasks"].setdefault(task, {"live": None, "history": []})
            if promote or (promote is None and entry.get("live") is None):
                self._set_live(entry, version)
        return next(v for v in self.versions(task) if v.version == version)

    @staticmethod
    def _set_live(entry: dict[str, Any], version: str) -> None:
        if entry.get("live") and entry["live"] != version:
            entry.setdefault("history", []).append(entry["live"])
        entry["live"] = version

    def promote(self, task: str, version: str) -> None:
        """Make `version` live; the previous live version can be restored with `rollback`."""
        _check_task(task)
        named = VERSION_NAME.fullmatch(version) is not None
        if not named or not (self.root / task / version).is_dir():
            known = ", ".join(v.version for v in self.versions(task)) or "none"
            if not named:
                raise RegistryError(
                    f"{abbreviate(version)!r} is not a version name: versions are v<number> "
                    f"(versions of {task}: {known})"
                )
            raise RegistryError(f"{task} has no version {version!r} (versions: {known})")
        with self._locked() as state:
            entry = state["tasks"].setdefault(task, {"live": None, "history": []})
            self._set_live(entry, version)

    def rollback(self, task: str) -> str:
        """Make the previously live version live again; returns its name."""
        _check_task(task)
        with self._locked() as state:
            entry = state["tasks"].get(task)
            history = entry.get("history", []) if entry else []
            while history and not (self.root / task / history[-1]).is_dir():
                history.pop()  # a version deleted by hand cannot come back
            if not history:
                raise RegistryError(
                    f"{task} has no earlier live version to roll back to; "
                    "use `supportbot models promote` to choose one"
                )
            entry["live"] = history.pop()
            return str(entry["live"])

    def clean_staging(self, task: str) -> int:
        """Remove staging directories left by interrupted runs; returns how many."""
        removed = 0
        folder = self.root / task
        if folder.is_dir():
            for path in folder.glob(".staging-*"):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed


def trained_together(registry: FileModelRegistry) -> bool:
    """Whether the live intent and sentiment models have one encoder (the same weights, as
    `supportbot train intent+sentiment` and a retrain of such a pair make them)."""
    import numpy as np
    from safetensors import safe_open

    paths = []
    for task in ("intent", "sentiment"):
        live = registry.live(task)
        if live is None:
            return False
        paths.append(registry.root / task / live / "model.safetensors")
    if not all(path.is_file() for path in paths):
        return False
    # numpy, not torch: `models list` stays a light command.
    with safe_open(paths[0], "np") as a, safe_open(paths[1], "np") as b:
        names = list(a.keys())
        if set(names) != set(b.keys()):
            return False
        return all(np.array_equal(a.get_tensor(name), b.get_tensor(name)) for name in names)
