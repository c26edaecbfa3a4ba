"""The file-based model registry: versions, live pointers, atomic writes and locking."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from bot.core.errors import ModelNotFoundError, RegistryError
from training.registry import REGISTRY_FILE, FileModelRegistry, ModelVersion


def publish(
    registry: FileModelRegistry,
    task: str = "intent",
    promote: bool | None = None,
    accuracy: float = 0.9,
) -> ModelVersion:
    """Stage a minimal model directory (the registry reads only metrics.json) and commit it."""
    staging = registry.stage(task)
    (staging / "classifier.json").write_text(json.dumps({"labels": ["a", "b"]}))
    (staging / "metrics.json").write_text(
        json.dumps(
            {"created_at": "2025-01-02T03:04:05Z", "test": {"accuracy": accuracy, "macro_f1": 0.8}}
        )
    )
    return registry.commit(task, staging, promote=promote)


def registry_json(root: Path) -> dict:
    return json.loads((root / REGISTRY_FILE).read_text())


def assert_clean_root(root: Path) -> None:
    """registry.json parses and no write-temp file is left beside it."""
    registry_json(root)
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(f".{REGISTRY_FILE}")]
    assert leftovers == []


def test_commits_are_numbered_v1_v2_v3(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path / "models")

    made = [publish(registry, accuracy=a) for a in (0.7, 0.8, 0.9)]

    assert [m.version for m in made] == ["v1", "v2", "v3"]
    assert [m.path for m in made] == [
        tmp_path / "models" / "intent" / v for v in ("v1", "v2", "v3")
    ]
    assert all((m.path / "classifier.json").exists() for m in made)
    assert not list((tmp_path / "models" / "intent").glob(".staging-*"))
    versions = registry.versions("intent")
    assert [v.metrics["accuracy"] for v in versions] == [0.7, 0.8, 0.9]
    assert versions[0].created_at == "2025-01-02T03:04:05Z"
    assert versions[0].summary()["macro_f1"] == 0.8


def test_versions_sort_numerically(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)

    made = [publish(registry) for _ in range(11)]

    assert made[-1].version == "v11"
    assert [v.version for v in registry.versions("intent")][-3:] == ["v9", "v10", "v11"]


def test_tasks_are_numbered_independently(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)

    publish(registry, "intent")
    publish(registry, "intent")
    sentiment = publish(registry, "sentiment")

    assert sentiment.version == "v1" and sentiment.live
    assert registry.tasks() == ["intent", "sentiment"]


def test_first_commit_goes_live_later_ones_wait(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)

    first = publish(registry)
    second = publish(registry)

    assert first.live and not second.live
    assert registry.live("intent") == "v1"
    assert registry.live_path("intent") == tmp_path / "intent" / "v1"
    assert [v.live for v in registry.versions("intent")] == [True, False]


def test_commit_with_promote_goes_live(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    publish(registry)

    second = publish(registry, promote=True)

    assert second.live
    assert registry.live("intent") == "v2"


def test_first_commit_with_promote_false_stays_offline(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)

    first = publish(registry, promote=False)

    assert not first.live and registry.live("intent") is None
    with pytest.raises(ModelNotFoundError, match="supportbot train intent"):
        registry.live_path("intent")


def live_in_turn(root: Path) -> FileModelRegistry:
    """A registry whose intent versions v1, v2 and v3 were live in that order (v3 now)."""
    registry = FileModelRegistry(root)
    for _ in range(3):
        publish(registry)
    registry.promote("intent", "v2")
    registry.promote("intent", "v3")
    return registry


def test_promote_and_rollback_restore_in_order(tmp_path: Path) -> None:
    registry = live_in_turn(tmp_path)
    assert registry.live("intent") == "v3"

    assert registry.rollback("intent") == "v2"
    assert registry.live("intent") == "v2"
    assert registry.rollback("intent") == "v1"
    assert registry.live("intent") == "v1"
    with pytest.raises(RegistryError, match="no earlier live version"):
        registry.rollback("intent")
    assert registry.live("intent") == "v1"


def test_promoting_the_live_version_again_adds_no_history(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    publish(registry)
    publish(registry)

    registry.promote("intent", "v2")
    registry.promote("intent", "v2")

    assert registry.rollback("intent") == "v1"
    with pytest.raises(RegistryError):
        registry.rollback("intent")


def test_rollback_skips_a_version_deleted_by_hand(tmp_path: Path) -> None:
    registry = live_in_turn(tmp_path)
    for child in (tmp_path / "intent" / "v2").iterdir():
        child.unlink()
    (tmp_path / "intent" / "v2").rmdir()

    assert registry.rollback("intent") == "v1"


def test_rollback_of_an_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="sentiment has no earlier live version"):
        FileModelRegistry(tmp_path).rollback("sentiment")


def test_promote_an_unknown_version(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    publish(registry)
    publish(registry)

    with pytest.raises(RegistryError) as excinfo:
        registry.promote("intent", "v9")

    assert "intent has no version 'v9'" in str(excinfo.value)
    assert "v1, v2" in str(excinfo.value)
    assert registry.live("intent") == "v1"


def test_promote_refuses_a_staging_directory(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    publish(registry)
    staging = registry.stage("intent")  # an unfinished run

    with pytest.raises(RegistryError):
        registry.promote("intent", staging.name)
    assert registry.live("intent") == "v1"


def test_resolve_a_path_a_task_or_a_task_version(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path / "models")
    v1 = publish(registry)
    v2 = publish(registry)

    assert registry.resolve(str(v2.path)) == v2.path
    assert registry.resolve("intent") == v1.path  # the live one
    assert registry.resolve("intent/v2") == v2.path
    assert registry.resolve("intent/v2/") == v2.path


@pytest.mark.parametrize("spec", ["sentiment", "intent/v7", "intent/v1/extra", "nowhere/model"])
def test_resolve_something_unknown(tmp_path: Path, spec: str) -> None:
    registry = FileModelRegistry(tmp_path / "models")
    publish(registry)

    with pytest.raises(ModelNotFoundError) as excinfo:
        registry.resolve(spec)

    message = str(excinfo.value)
    assert repr(spec) in message
    assert "task/version" in message and "supportbot models list" in message


def test_resolve_a_task_without_a_live_version(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    publish(registry, promote=False)

    with pytest.raises(ModelNotFoundError, match="no live intent model"):
        registry.resolve("intent")


def test_registry_json_is_valid_after_every_change(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)

    publish(registry)
    assert_clean_root(tmp_path)
    assert registry_json(tmp_path)["tasks"]["intent"] == {"live": "v1", "history": []}
    publish(registry)
    assert_clean_root(tmp_path)
    registry.promote("intent", "v2")
    assert_clean_root(tmp_path)
    assert registry_json(tmp_path)["tasks"]["intent"] == {"live": "v2", "history": ["v1"]}
    registry.rollback("intent")
    assert_clean_root(tmp_path)
    assert registry_json(tmp_path)["tasks"]["intent"] == {"live": "v1", "history": []}
    assert registry_json(tmp_path)["format"] == 1


def test_a_fresh_registry_reads_an_existing_root(tmp_path: Path) -> None:
    publish(FileModelRegistry(tmp_path))
    publish(FileModelRegistry(tmp_path), promote=True)

    again = FileModelRegistry(tmp_path)

    assert again.live("intent") == "v2"
    assert [v.version for v in again.versions("intent")] == ["v1", "v2"]


@pytest.mark.parametrize("content", ['{"format": 1, "tasks": {', "", "\x00\x00\x00"])
def test_corrupt_registry_json_is_a_registry_error_with_a_fix(tmp_path: Path, content: str) -> None:
    registry = FileModelRegistry(tmp_path)
    publish(registry)
    (tmp_path / REGISTRY_FILE).write_text(content)

    with pytest.raises(RegistryError) as excinfo:
        registry.live("intent")

    message = str(excinfo.value)
    assert str(tmp_path / REGISTRY_FILE) in message
    assert "not valid JSON" in message and "supportbot models promote" in message
    with pytest.raises(RegistryError):
        publish(registry)


@pytest.mark.parametrize("content", ["[]", "{}"])
def test_registry_json_of_the_wrong_shape_is_a_registry_error(tmp_path: Path, content: str) -> None:
    registry = FileModelRegistry(tmp_path)
    publish(registry)
    (tmp_path / REGISTRY_FILE).write_text(content)

    with pytest.raises(RegistryError, match=REGISTRY_FILE):
        registry.live("intent")


def test_clean_staging_removes_interrupted_runs(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    publish(registry)
    left = registry.stage("intent")
    (left / "partial.bin").write_bytes(b"\x00" * 10)
    registry.stage("intent")

    assert registry.clean_staging("intent") == 2
    assert sorted(p.name for p in (tmp_path / "intent").iterdir()) == ["v1"]
    assert registry.clean_staging("sentiment") == 0


def test_concurrent_commits_get_distinct_versions(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path)
    results: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8, timeout=20)

    def worker() -> None:
        try:
            # Separate registry objects, as two training processes would have.
            own = FileModelRegistry(tmp_path)
            staging = own.stage("intent")
            (staging / "metrics.json").write_text("{}")
            start.wait()
            results.append(own.commit("intent", staging).version)
        except BaseException as exc:  # reported below; a thread cannot raise into the test
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert sorted(results, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 9)]
    assert [v.version for v in registry.versions("intent")] == [f"v{i}" for i in range(1, 9)]
    assert registry.live("intent") is not None
    assert_clean_root(tmp_path)


# -- names from the command line ----------------------------------------------------------


def test_resolve_never_leaves_the_models_directory(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path / "models")
    publish(registry)
    outside = tmp_path / "v1"  # models/../v1
    outside.mkdir()
    (outside / "report.txt").write_text("not a model of this registry")

    for spec in ("../v1", "intent/../../v1", "../intent/v1", "./../v1"):
        with pytest.raises(ModelNotFoundError):
            registry.resolve(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "a" * 5000,
        "intent/v" + "1" * 5000,
        "a/" * 2000,
        "intent/v1\x00",
        "nul\x00",
        "intent/v1\n",
        "",
    ],
)
def test_resolve_malformed_specs_is_a_one_line_error(tmp_path: Path, spec: str) -> None:
    registry = FileModelRegistry(tmp_path / "models")
    publish(registry)

    with pytest.raises(ModelNotFoundError) as excinfo:
        registry.resolve(spec)

    message = str(excinfo.value)
    assert "\n" not in message and "\x00" not in message and len(message) < 400


@pytest.mark.parametrize("version", ["v" + "1" * 5000, "../v1", "/etc", "v1/../v1", "v1\x00", "V1"])
def test_promote_refuses_what_is_no_version_name(tmp_path: Path, version: str) -> None:
    registry = FileModelRegistry(tmp_path / "models")
    publish(registry, promote=False)

    with pytest.raises(RegistryError) as excinfo:
        registry.promote("intent", version)

    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 400
    assert "v<number>" in message
    assert registry.live("intent") is None


@pytest.mark.parametrize("task", ["../intent", "", "a" * 5000, "in\x00tent"])
def test_promote_and_rollback_refuse_what_is_no_task_name(tmp_path: Path, task: str) -> None:
    registry = FileModelRegistry(tmp_path / "models")
    publish(registry)

    with pytest.raises(RegistryError, match="task") as excinfo:
        registry.promote(task, "v1")
    assert len(str(excinfo.value)) < 400
    with pytest.raises(RegistryError, match="task"):
        registry.rollback(task)


@pytest.mark.parametrize(
    "tasks",
    [
        {"intent": {"live": "../../elsewhere", "history": []}},
        {"intent": {"live": "v2", "history": ["/etc"]}},
        {"../up": {"live": "v1", "history": []}},
    ],
)
def test_a_registry_json_naming_paths_is_refused(tmp_path: Path, tasks: dict) -> None:
    (tmp_path / REGISTRY_FILE).write_text(json.dumps({"format": 1, "tasks": tasks}))
    registry = FileModelRegistry(tmp_path)

    with pytest.raises(RegistryError, match=REGISTRY_FILE):
        registry.tasks()


def test_the_runtime_ignores_live_versions_that_are_paths(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bot.nlu.artifacts import read_live_versions

    tasks = {
        "intent": {"live": "v2", "history": ["v1"]},
        "sentiment": {"live": "../../elsewhere", "history": []},
        "../up": {"live": "v1", "history": []},
    }
    (tmp_path / REGISTRY_FILE).write_text(json.dumps({"format": 1, "tasks": tasks}))

    assert read_live_versions(tmp_path) == {"intent": "v2"}
    assert "not a task/vN name" in caplog.text
