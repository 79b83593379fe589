"""The files MLflow's artifact proxy serves, as trees: a run's artifacts, an MLflow 3
logged model's, and trees other apps add through STUDIO_ARTIFACT_ROOTS (the model
registry's versions). Runs' and logged models' files live in the studio's artifact store,
under mlflow/<workspace>/<experiment>/..."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import IO, Any, Protocol

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.utils.module_loading import import_string

from studio.models import Workspace
from tracking import logged_models
from tracking.errors import TrackingError, invalid
from tracking.models import Run

CHUNK = 1024 * 1024


def store() -> Storage:
    return storages["artifacts"]


class Tree(Protocol):
    """Files under one artifact root; paths are relative to it ('' is the root)."""

    def writable_by(self, only_run: str) -> bool: ...
    def listing(self, path: str) -> list[dict[str, Any]]: ...
    def walk(self, path: str, limit: int) -> list[tuple[str, int]]:
        """(path, size) of the file at `path`, or of each file beneath it (paths from the
        tree's root; ValueError past `limit` files)."""

    def open(self, path: str) -> IO[bytes]: ...
    def save(self, path: str, content: IO[bytes]) -> None: ...
    def delete(self, path: str) -> None: ...


class StoreTree:
    """A folder of the artifact store, written by one run (a job's token writes only its
    own run's trees)."""

    def __init__(self, prefix: str, run_id: str) -> None:
        self.prefix, self.run_id = prefix, run_id

    def _name(self, path: str) -> str:
        return f"{self.prefix}/{path}".rstrip("/")

    def writable_by(self, only_run: str) -> bool:
        return not only_run or only_run == self.run_id

    def listing(self, path: str) -> list[dict[str, Any]]:
        name = self._name(path)
        try:
            folders, files = store().listdir(name)
        except FileNotFoundError:
            folders, files = [], []
        if not folders and not files and path and store().exists(name):  # one file
            entry = PurePosixPath(name).name
            return [{"path": entry, "is_dir": False, "file_size": store().size(name)}]
        entries: list[dict[str, Any]] = [{"path": f, "is_dir": True} for f in sorted(folders)]
        entries += [
            {"path": f, "is_dir": False, "file_size": store().size(f"{name}/{f}")}
            for f in sorted(files)
        ]
        return entries

    def walk(self, path: str, limit: int) -> list[tuple[str, int]]:
        name = self._name(path)
        if path and store().exists(name) and not self._is_folder(name):
            return [(path, store().size(name))]
        found: list[tuple[str, int]] = []
        folders = [path.strip("/")]
        while folders:
            folder = folders.pop()
            try:
                subfolders, files = store().listdir(self._name(folder))
            except FileNotFoundError:
                continue
            for file in files:
                inner = f"{folder}/{file}".lstrip("/")
                found.append((inner, store().size(self._name(inner))))
                if len(found) > limit:
                    raise ValueError(f"more than {limit:,} files under {path or 'the root'!r}")
            folders += [f"{folder}/{sub}".lstrip("/") for sub in subfolders]
        return sorted(found)

    def _is_folder(self, name: str) -> bool:
        try:
            folders, files = store().listdir(name)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return bool(folders or files)

    def open(self, path: str) -> IO[bytes]:
        name = self._name(path)
        if not path or not store().exists(name):
            raise TrackingError("RESOURCE_DOES_NOT_EXIST", f"No artifact {path!r}")
        return store().open(name, "rb")

    def save(self, path: str, content: IO[bytes]) -> None:
        name = self._name(path)
        if store().exists(name):
            store().delete(name)
        store().save(name, File(content))

    def delete(self, path: str) -> None:
        name = self._name(path)
        if store().exists(name):
            store().delete(name)


def run_tree(run: Run) -> StoreTree:
    workspace = run.experiment.workspace_id
    return StoreTree(f"mlflow/{workspace}/{run.experiment_id}/{run.run_id}/artifacts", run.run_id)


def logged_model_tree(workspace: Workspace, model_id: str) -> StoreTree:
    model = logged_models.get(workspace, model_id)
    owner = model.run.run_id if model.run else ""
    return StoreTree(
        f"mlflow/{workspace.pk}/{model.experiment_id}/models/{model.model_id}/artifacts", owner
    )


def resolve(ws: Workspace, path: str) -> tuple[Tree, str]:
    """The tree a path names in this workspace, and the path within it; nothing outside
    a tree can be named."""
    parts = PurePosixPath(path.strip("/")).parts
    if any(p in ("..", ".") for p in parts) or not parts:
        raise invalid(f"Not an artifact path: {path!r}")
    roots: dict[str, Callable[[Workspace, list[str]], tuple[Tree, str]]] = {
        root: import_string(where) for root, where in settings.STUDIO_ARTIFACT_ROOTS.items()
    }
    if parts[0] in roots:
        return roots[parts[0]](ws, list(parts[1:]))
    if len(parts) >= 4 and parts[1] == "models" and parts[3] == "artifacts":
        tree: Tree = logged_model_tree(ws, parts[2])
        return tree, "/".join(parts[4:])
    if len(parts) < 3 or parts[2] != "artifacts" or not parts[0].isdigit():
        raise invalid(f"Not a run's artifact path: {path!r}")
    run = (
        Run.objects.select_related("experiment")
        .filter(run_id=parts[1], experiment_id=parts[0], experiment__workspace=ws)
        .first()
    )
    if run is None:
        raise TrackingError(
            "RESOURCE_DOES_NOT_EXIST", f"No run {parts[1]} in experiment {parts[0]}"
        )
    return run_tree(run), "/".join(parts[3:])
