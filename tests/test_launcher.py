"""The launcher on its own, under the oldest Python it claims (3.8) and the studio's own:
it runs in users' environments, whose Python is theirs."""

from __future__ import annotations

import glob
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from compute import launcher

OLDEST = sorted(
    glob.glob("/root/.pyenv/versions/3.8*/bin/python3.8")
    + [p for p in ("/usr/bin/python3.8", "/usr/local/bin/python3.8") if os.path.exists(p)]
)
INTERPRETERS = [
    pytest.param(sys.executable, id="studio"),
    pytest.param(
        OLDEST[0] if OLDEST else None,
        id="python3.8",
        marks=pytest.mark.skipif(not OLDEST, reason="no Python 3.8 on this machine"),
    ),
]


def launch(python: str, root: Path, **spec: object) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)
    (root / "launch.json").write_text(json.dumps({"root": str(root), "name": "job1", **spec}))
    subprocess.run(
        [python, launcher.__file__, str(root / "launch.json")],
        check=False,  # 1 when the job failed to prepare: the state says why
        timeout=60,
        env={"PATH": os.environ["PATH"]},
    )
    return json.loads((root / "state.json").read_text())


def lines(root: Path) -> list[str]:
    return [json.loads(x)["line"] for x in (root / "log.jsonl").read_text().splitlines()]


def archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


@pytest.mark.parametrize("python", INTERPRETERS)
def test_a_job_runs_end_to_end(python, tmp_path):
    (tmp_path / "code.tar.gz").write_bytes(archive({"main.sh": "echo code ran\n"}))
    (tmp_path / "data.tar.gz").write_bytes(archive({"in.txt": "from data\n"}))
    run_as = 1_500_000_000 if os.geteuid() == 0 else None
    state = launch(
        python,
        tmp_path / "job",
        command=(
            "sh main.sh; cat ${{inputs.data}}/in.txt; echo ${{inputs.n}};"
            " echo out > outputs/a.txt; echo m > ${{outputs.model}}/m.bin; id -u"
        ),
        code=str(tmp_path / "code.tar.gz"),
        inputs={
            "data": {"type": "uri_folder", "archive": str(tmp_path / "data.tar.gz")},
            "n": {"type": "literal", "value": 3},
        },
        outputs={"model": {"type": "uri_folder"}},
        run_as=run_as,
        timeout=30,
    )
    assert state["phase"] == "Completed", state
    log = lines(tmp_path / "job")
    assert log[:3] == ["code ran", "from data", "3"]
    assert log[3] == str(run_as if run_as is not None else os.geteuid())
    assert sorted((o["output"], o["path"]) for o in state["outputs"]) == [
        ("default", "a.txt"),
        ("model", "m.bin"),
    ]


@pytest.mark.parametrize("python", INTERPRETERS)
def test_an_archive_that_escapes_its_folder_fails_the_job(python, tmp_path):
    (tmp_path / "code.tar.gz").write_bytes(archive({"../escaped.txt": "x"}))
    state = launch(python, tmp_path / "job", command="true", code=str(tmp_path / "code.tar.gz"))
    assert state["phase"] == "Failed"
    assert state["reason"].startswith("Preparing failed")
    assert not (tmp_path / "escaped.txt").exists()


def test_old_pythons_refuse_what_the_data_filter_refuses(tmp_path):
    """The fallback for Pythons without tar extraction filters."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("etc")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    buffer.seek(0)
    with (
        tarfile.open(fileobj=buffer) as tar,
        pytest.raises(launcher.LaunchError, match="links out"),
    ):
        launcher.safe_members(tar, str(tmp_path))
