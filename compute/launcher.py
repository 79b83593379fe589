"""The job launcher: one small stdlib-only program that runs every job the same way.

It runs inside the job's process (local compute) and, later, inside the job's pod.
Given a launch file (JSON) it:

1. unpacks the code snapshot into the working directory,
2. materializes inputs (uploaded files and folders, http(s) downloads, literals),
3. substitutes ${{inputs.X}}, ${{outputs.X}} and ${{name}} in the command and drops
   optional segments $[[ ... ]] whose inputs are absent,
4. runs the command with stdout and stderr captured line by line into `log.jsonl`
   (one JSON object a line: ts, stream, line), enforcing limits.timeout,
5. lists what the job wrote to ./outputs and its named outputs,

and keeps its phase in `state.json` (rewritten atomically) so that whoever watches
the job, including a controller restarted mid-run, knows where it stands.

Keep this file free of third-party and project imports: it is copied as-is next to
user code that may run on any Python 3.8+.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
import zipfile

EXPRESSION = re.compile(r"\$\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")
OPTIONAL_SEGMENT = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)
TERMINAL = ("Completed", "Failed", "Canceled")
EXIT_TIMEOUT = 124  # what coreutils' timeout(1) uses
MAX_LINE = 64 * 1024  # longer output without a newline is cut into lines of this size


class LaunchError(Exception):
    """A problem preparing the job: it fails with this message as its reason."""


def references(command: str) -> list[tuple[str, bool]]:
    """Every ${{...}} expression in the command, with whether it sits in $[[ ]]."""
    found = []
    optional_spans = [m.span() for m in OPTIONAL_SEGMENT.finditer(command)]
    for match in EXPRESSION.finditer(command):
        inside = any(start <= match.start() < end for start, end in optional_spans)
        found.append((match.group(1), inside))
    return found


def substitute(command: str, values: dict[str, str]) -> str:
    """Fill in expressions; an optional segment whose expressions are not all known is dropped."""

    def optional(match: re.Match[str]) -> str:
        body = match.group(1)
        names = [m.group(1) for m in EXPRESSION.finditer(body)]
        if all(name in values for name in names):
            return body
        return ""

    command = OPTIONAL_SEGMENT.sub(optional, command)

    def expression(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise LaunchError(f"command: ${{{{{name}}}}} has no value")
        return values[name]

    return EXPRESSION.sub(expression, command)


class Launcher:
    def __init__(self, launch_file: str) -> None:
        with open(launch_file, encoding="utf-8") as f:
            self.spec = json.load(f)
        self.root = self.spec["root"]
        self.workdir = os.path.join(self.root, "wd")
        self.child: subprocess.Popen[bytes] | None = None
        self.canceled = False
        self.state: dict[str, object] = {"launcher_pid": os.getpid()}

    # -- state ---------------------------------------------------------------------------
    def set_state(self, **values: object) -> None:
        self.state.update(values, updated_at=time.time())
        tmp = os.path.join(self.root, "state.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state, f)
        os.replace(tmp, os.path.join(self.root, "state.json"))

    # -- preparing -----------------------------------------------------------------------
    def unpack(self, archive: str, target: str) -> None:
        os.makedirs(target, exist_ok=True)
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    path = os.path.realpath(os.path.join(target, member))
                    if not path.startswith(os.path.realpath(target) + os.sep) and path != (
                        os.path.realpath(target)
                    ):
                        raise LaunchError(f"archive member {member!r} escapes the folder")
                z.extractall(target)  # noqa: S202 - members checked above
        else:
            with tarfile.open(archive) as t:
                t.extractall(target, filter="data")

    def download(self, url: str, target_dir: str) -> str:
        os.makedirs(target_dir, exist_ok=True)
        name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
        path = os.path.join(target_dir, name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:  # noqa: S310 - http(s) checked at submit
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise LaunchError(f"could not download {url}: {exc}") from exc
        return path

    def materialize_inputs(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, item in self.spec.get("inputs", {}).items():
            kind = item["type"]
            target = os.path.join(self.root, "inputs", name)
            if kind == "literal":
                values[f"inputs.{name}"] = str(item["value"])
            elif "url" in item:
                path = self.download(item["url"], target)
                values[f"inputs.{name}"] = path if kind == "uri_file" else target
            elif kind == "uri_folder":
                self.unpack(item["archive"], target)
                values[f"inputs.{name}"] = target
            else:  # uri_file uploaded as a plain file
                os.makedirs(target, exist_ok=True)
                path = os.path.join(target, item["filename"])
                shutil.copyfile(item["file"], path)
                values[f"inputs.{name}"] = path
        return values

    def prepare(self) -> dict[str, str]:
        os.makedirs(self.workdir, exist_ok=True)
        if self.spec.get("code"):
            self.unpack(self.spec["code"], self.workdir)
        values = self.materialize_inputs()
        os.makedirs(os.path.join(self.workdir, "outputs"), exist_ok=True)
        for name in self.spec.get("outputs", {}):
            path = os.path.join(self.root, "outputs", name)
            os.makedirs(path, exist_ok=True)
            values[f"outputs.{name}"] = path
        values["name"] = self.spec["name"]
        return values

    # -- running -------------------------------------------------------------------------
    def limit_child(self) -> None:
        """Runs in the child before exec: the limits the OS can enforce."""
        limits = self.spec.get("limits", {})
        if limits.get("memory_bytes"):
            import resource

            size = int(limits["memory_bytes"])
            resource.setrlimit(resource.RLIMIT_DATA, (size, size))
        if limits.get("cpus") and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(limits["cpus"]))

    def signal_command(self, sig: int) -> None:
        """Signal the user's command and everything it started (its process group)."""
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, sig)

    def on_term(self, signum: int, frame: object) -> None:
        self.canceled = True
        self.signal_command(signal.SIGTERM)

    def run(self, command: str) -> int:
        env = dict(os.environ)
        env.update({k: str(v) for k, v in self.spec.get("environment_variables", {}).items()})
        env.update(
            PYTHONUNBUFFERED="1",
            AZUREML_RUN_ID=self.spec["name"],
            KSTUDIO_JOB_NAME=self.spec["name"],
        )
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        self.child = subprocess.Popen(
            [shell, "-c", command],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
            preexec_fn=self.limit_child,
        )
        self.set_state(phase="Running", child_pgid=self.child.pid, started_at=time.time())
        timeout = self.spec.get("timeout")
        deadline = time.monotonic() + timeout if timeout else None
        grace = float(self.spec.get("grace_seconds", 10))
        timed_out = False
        kill_at: float | None = None
        selector = selectors.DefaultSelector()
        assert self.child.stdout is not None and self.child.stderr is not None
        selector.register(self.child.stdout, selectors.EVENT_READ, "stdout")
        selector.register(self.child.stderr, selectors.EVENT_READ, "stderr")
        partial = {"stdout": b"", "stderr": b""}
        with open(os.path.join(self.root, "log.jsonl"), "a", encoding="utf-8") as log:

            def emit(stream: str, raw: bytes) -> None:
                line = raw.decode("utf-8", errors="replace").rstrip("\r")
                log.write(json.dumps({"ts": time.time(), "stream": stream, "line": line}) + "\n")

            while selector.get_map():
                now = time.monotonic()
                if deadline is not None and now >= deadline and not timed_out:
                    timed_out = True
                    kill_at = now + grace
                    self.signal_command(signal.SIGTERM)
                if self.canceled and kill_at is None:
                    kill_at = now + grace
                if kill_at is not None and now >= kill_at:
                    self.signal_command(signal.SIGKILL)
                for key, _ in selector.select(timeout=0.2):
                    stream = key.data
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        if partial[stream]:
                            emit(stream, partial[stream])
                            partial[stream] = b""
                        continue
                    *lines, partial[stream] = (partial[stream] + chunk).split(b"\n")
                    if len(partial[stream]) > MAX_LINE:  # a progress bar without newlines
                        lines.append(partial[stream])
                        partial[stream] = b""
                    for raw in lines:
                        emit(stream, raw)
                log.flush()
        code = self.child.wait()
        if timed_out:
            self.set_state(timed_out=True)
            return EXIT_TIMEOUT
        return code

    # -- finishing -----------------------------------------------------------------------
    def list_outputs(self) -> list[dict[str, object]]:
        found = []
        folders = {"default": os.path.join(self.workdir, "outputs")}
        for name in self.spec.get("outputs", {}):
            folders[name] = os.path.join(self.root, "outputs", name)
        for output, folder in folders.items():
            for dirpath, _dirs, files in os.walk(folder):
                for filename in sorted(files):
                    path = os.path.join(dirpath, filename)
                    found.append(
                        {
                            "output": output,
                            "path": os.path.relpath(path, folder),
                            "size": os.path.getsize(path),
                        }
                    )
        return found

    def main(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        self.set_state(phase="Preparing")
        try:
            values = self.prepare()
            command = substitute(self.spec["command"], values)
        except (LaunchError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
            self.set_state(phase="Failed", exit_code=None, reason=f"Preparing failed: {exc}")
            return 1
        if self.canceled:
            self.set_state(phase="Canceled", exit_code=None, reason="Canceled before it started.")
            return 1
        try:
            code = self.run(command)
        except OSError as exc:
            self.set_state(phase="Failed", exit_code=None, reason=f"Could not start: {exc}")
            return 1
        self.set_state(phase="Finalizing", exit_code=code)
        outputs = self.list_outputs()
        if self.canceled:
            phase, reason = "Canceled", "Canceled by request."
        elif self.state.get("timed_out"):
            phase = "Failed"
            reason = f"The job exceeded limits.timeout ({self.spec['timeout']} s) and was stopped."
        elif code == 0:
            phase, reason = "Completed", ""
        elif code < 0:
            phase, reason = "Failed", f"The command was killed by signal {-code}."
        else:
            phase, reason = "Failed", f"The command exited with code {code}."
        self.set_state(phase=phase, exit_code=code, reason=reason, outputs=outputs)
        return 0


if __name__ == "__main__":
    sys.exit(Launcher(sys.argv[1]).main())
