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
from tests.conftest import wait_until

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


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_one_failed_process_of_an_instance_stops_the_others_with_its_status(shell):
    """Several processes per instance: each its RANK; the first to fail ends the rest (which
    would wait for their peer for ever) and its status, not their SIGTERM's, is the
    instance's. Under dash as under bash (images differ)."""
    if not os.path.exists(shell):
        pytest.skip(f"no {shell} here")
    command, extra = launcher.per_process(
        "if [ $LOCAL_RANK = 1 ]; then exit 3; fi; sleep 60; echo rank $RANK slept",
        {"process_count_per_instance": 3},
    )
    env = {"PATH": "/usr/bin:/bin", "KSTUDIO_PROCESSES": "3", "NODE_RANK": "1", **extra}
    ended = subprocess.run(
        [shell, "-c", command], env=env, capture_output=True, text=True, timeout=30,
        start_new_session=True,  # as the launcher starts it: a process group of its own
    )  # fmt: skip
    assert ended.returncode == 3
    assert "a process of this instance exited with 3: stopping the others" in ended.stderr
    assert "slept" not in ended.stdout
    ranks = launcher.per_process("echo $RANK $LOCAL_RANK", {"process_count_per_instance": 3})
    env["KSTUDIO_COMMAND"] = ranks[1]["KSTUDIO_COMMAND"]
    done = subprocess.run([shell, "-c", ranks[0]], env=env, capture_output=True, text=True,
                          timeout=30, start_new_session=True)  # fmt: skip
    assert (done.returncode, sorted(done.stdout.splitlines())) == (0, ["3 0", "4 1", "5 2"])


@pytest.mark.parametrize("python", INTERPRETERS)
def test_mpiruns_remote_shell_runs_only_for_the_jobs_secret_and_relays_its_end(python, tmp_path):
    import socket
    import struct

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"PATH": os.environ["PATH"], "KSTUDIO_RSH_ADDRESS": f"127.0.0.1:{port}",
           "KSTUDIO_RSH_PORT": str(port), "KSTUDIO_RSH_SECRET": "the-jobs"}  # fmt: skip
    serving = subprocess.Popen([python, launcher.__file__, "rsh-serve"], env=env,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # A caller without the secret: refused, nothing run, the server waits on.
        marker = tmp_path / "ran"

        def listening() -> socket.socket | None:
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                return None

        stranger = wait_until(listening, 30, "the launcher to listen")
        with stranger:
            stranger.recv(16)
            argv = json.dumps(["touch", str(marker)]).encode()
            stranger.sendall(b"x" * 32 + struct.pack("!I", len(argv)) + argv)
            assert stranger.recv(1) == b""  # closed on it
        assert not marker.exists() and serving.poll() is None
        # mpirun's call: its output comes back, and its status ends both sides.
        called = subprocess.run(
            [python, launcher.__file__, "rsh", "127.0.0.1", "", "echo", "out;", "echo",
             "err", ">&2;", "exit", "3"],
            env={**env, "KSTUDIO_RSH_SECRET": "the-jobs"}, capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert (called.returncode, called.stdout, called.stderr) == (3, "out\n", "err\n")
        assert serving.wait(timeout=30) == 3
        assert "refused a launch from 127.0.0.1" in serving.stderr.read()
    finally:
        serving.kill()


def test_an_mpi_job_without_mpirun_in_its_image_says_so(tmp_path):
    command, extra = launcher.mpi_command(
        "echo hi", {"hosts": ["a-0.a"], "port": 2223}, "secret", str(tmp_path), {}
    )
    ran = subprocess.run(["/bin/sh", "-c", command], env={**extra, "PATH": "/nowhere"},
                         capture_output=True, text=True)  # fmt: skip
    assert ran.returncode == 127
    assert "Open MPI's mpirun, which is not in this image" in ran.stderr
    assert (tmp_path / "hostfile").read_text() == "a-0.a slots=1\n"


def test_an_mpi_jobs_launch_secret_is_the_jobs_own_and_never_a_constant():
    assert launcher.mpi_secret("kjt_a") == launcher.mpi_secret("kjt_a")  # every pod's
    assert launcher.mpi_secret("kjt_a") != launcher.mpi_secret("kjt_b")
    # No token (the local compute): not one anybody could compute, but a fresh one.
    assert launcher.mpi_secret("") != launcher.mpi_secret("")
    assert len(launcher.mpi_secret("")) == 64
