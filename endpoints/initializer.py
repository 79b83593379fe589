"""A deployment pod's storage initializer (its init container): the code and the model
into the pod's app folder, and the deployment's environment built, before the model
server starts.

    python3 initializer.py

- `$KSTUDIO_DIR` (the ConfigMap) holds `code.tar.gz` and `model.tar.gz` when they were
  small enough to travel there; otherwise `fetch.json` says where the studio is, and they
  are fetched (`/api/v1/deployment-io/...`) with the generation's token (KSTUDIO_TOKEN,
  from its Secret).
- `environment.json`, when the deployment has packages to install: the launcher's builder
  makes the virtual environment (in the namespace's cache when there is one).
- `$APP/python` is left naming the interpreter the model server runs on.

Standard library only, Python 3.8 and later: it runs in the deployment's image.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
from typing import Any, BinaryIO


def unpack(source: str, target: str) -> None:
    with tarfile.open(source) as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.12 (and patched 3.8-3.11)
            archive.extraction_filter = tarfile.data_filter
        else:
            for member in archive.getmembers():
                name = os.path.normpath(member.name)
                if name.startswith(("/", "..")) or member.issym() or member.islnk():
                    raise ValueError(f"archive member {member.name!r} leaves the folder")
        archive.extractall(target)  # noqa: S202 - members checked or filtered above


def fetch(plan: dict[str, Any], path: str) -> BinaryIO:
    request = urllib.request.Request(  # noqa: S310 - the studio's own URL
        plan["url"].rstrip("/") + "/api/v1/deployment-io/" + path,
        headers={"Authorization": "Bearer " + os.environ["KSTUDIO_TOKEN"]},  # its Secret's
    )
    return urllib.request.urlopen(request, timeout=600)  # noqa: S310


def fetched(plan: dict[str, Any], app: str) -> None:
    """The code archive and the model's files, from the studio."""
    if plan.get("code"):
        archive = os.path.join(app, "code.tar.gz")
        with fetch(plan, "code") as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out, 1024 * 1024)
        unpack(archive, os.path.join(app, "code"))
        os.remove(archive)
        print("fetched the code", flush=True)
    model = plan.get("model")
    if model:
        with fetch(plan, "model/files/") as response:
            files = json.load(response)["files"]
        base = os.path.join(app, "models", model["dir"], model["folder"])
        for entry in files:
            target = base if model["single"] else os.path.join(base, entry["path"])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            quoted = urllib.parse.quote(entry["path"])
            with fetch(plan, "model/files/" + quoted) as response, open(target, "wb") as out:
                shutil.copyfileobj(response, out, 1024 * 1024)
        print(f"fetched the model ({len(files)} files)", flush=True)


def main() -> int:
    app, mount = os.environ["APP"], os.environ["KSTUDIO_DIR"]
    for name, target in (("code.tar.gz", "code"), ("model.tar.gz", "models")):
        source = os.path.join(mount, name)
        if os.path.exists(source):
            unpack(source, os.path.join(app, target))
            print("unpacked", name, flush=True)
    plan_file = os.path.join(mount, "fetch.json")
    if os.path.exists(plan_file):
        with open(plan_file) as f:
            fetched(json.load(f), app)
    python = sys.executable
    environment = os.path.join(mount, "environment.json")
    if os.path.exists(environment):
        os.makedirs(os.path.join(os.environ["KSTUDIO_ROOT"], "tmp"), exist_ok=True)
        sys.path.insert(0, mount)
        import launcher  # the launcher beside it in the ConfigMap: its environment builder

        builder = launcher.Launcher(environment)
        builder.build_environment()
        python = builder.spec["python"]
    with open(os.path.join(app, "python"), "w") as f:
        f.write(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
