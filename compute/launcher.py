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

and, on a host that shares no disk with the studio (a pod), fetches the job's uploads from
the studio and publishes its outputs there, over HTTP with a token good for this job only
(the launch file's `studio`: its `url` and `token`; uploads named as `{"fetch": key}`),

and keeps its phase in `state.json` (rewritten atomically) so that whoever watches
the job, including a controller restarted mid-run, knows where it stands.

When `run_as` is given (the studio runs as root), the launcher stays root and the user's
command runs as that unprivileged uid: the job folder's `wd/`, `home/`, `tmp/`, inputs and
outputs are the job's, while the launcher's own records (launch.json, state.json,
log.jsonl) stay root's, so a job can neither read the studio's data nor forge its state.
When the command ends, every process left under that uid is killed, so nothing a job
started (even in a session of its own) outlives it.

Keep this file free of third-party and project imports: it is copied as-is next to
user code, so it runs on any Python from 3.8 on (tests/test_launcher.py runs it under the
oldest interpreter present): newer features are used where present, with a fallback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from typing import IO, Any

EXPRESSION = re.compile(r"\$\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")
OPTIONAL_SEGMENT = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)
TERMINAL = ("Completed", "Failed", "Canceled")
EXIT_TIMEOUT = 124  # what coreutils' timeout(1) uses
MAX_LINE = 64 * 1024  # longer output without a newline is cut into lines of this size
DRAIN_SECONDS = 2.0  # how long output is still read once the command itself has exited
# Defaults when the launch file does not say (the studio's settings do).
DEFAULT_LIMITS = {
    "max_log_bytes": 100 * 1024 * 1024,
    "max_archive_members": 20_000,
    "max_archive_bytes": 4 * 1024**3,
    "max_download_bytes": 4 * 1024**3,
}


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


def archive_problem(file: IO[bytes], max_members: int, max_bytes: int) -> str | None:
    """Why an uploaded archive may not be unpacked (too many members, too big unpacked,
    not an archive), or None. Reads member headers only, and stops at the first limit."""
    file.seek(0)
    try:
        if zipfile.is_zipfile(file):
            file.seek(0)
            with zipfile.ZipFile(file) as z:
                members = z.infolist()
                if len(members) > max_members:
                    return f"the archive has more than {max_members:,} members"
                if sum(m.file_size for m in members) > max_bytes:
                    return f"the archive unpacks to more than {max_bytes:,} bytes"
                return None
        file.seek(0)
        count = size = 0
        with tarfile.open(fileobj=file, mode="r:*") as tar:
            while (member := tar.next()) is not None:
                count += 1
                size += member.size
                if count > max_members:
                    return f"the archive has more than {max_members:,} members"
                if size > max_bytes:
                    return f"the archive unpacks to more than {max_bytes:,} bytes"
        return None
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError):
        return "the upload must be a .tar.gz, .tar or .zip archive"
    finally:
        file.seek(0)


def address_problem(address: str, allowed: list[str]) -> str | None:
    """Why a job may not fetch from this IP address, or None.

    Loopback, link-local, private and other non-public addresses are the studio's own
    neighbourhood (its database, a cloud's metadata service): refused unless the address
    falls in a network IT-ops allowed."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if any(ip in ipaddress.ip_network(net, strict=False) for net in allowed):
        return None
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return (
                f"{address} is a {kind.replace('_', '-')} address; downloads from it are "
                "refused unless IT-ops allows its network (STUDIO_ALLOWED_INPUT_NETWORKS)"
            )
    return None


def _guarded(base: type[http.client.HTTPConnection], allowed: list[str]) -> Any:
    class Guarded(base):  # type: ignore[valid-type,misc]
        """Checks the address it actually connected to (after DNS, on every redirect)
        before a byte is sent, so a name that resolves inward is refused too."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)

            def create_connection(*a: object, **k: object) -> socket.socket:
                sock = socket.create_connection(*a, **k)  # type: ignore[arg-type]
                problem = address_problem(sock.getpeername()[0], allowed)
                if problem:
                    sock.close()
                    raise LaunchError(problem)
                return sock

            self._create_connection = create_connection

    return Guarded


def opener(allowed: list[str]) -> urllib.request.OpenerDirector:
    http_conn = _guarded(http.client.HTTPConnection, allowed)
    https_conn = _guarded(http.client.HTTPSConnection, allowed)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(http_conn, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(https_conn, req)

    # No proxy: the check is on the address the bytes go to.
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), HTTPHandler(), HTTPSHandler()
    )


def child_setup(
    uid: int | None, *, new_group: bool = False, umask: int | None = None, then: Any = None
) -> dict[str, Any]:
    """Popen arguments that start the child as `uid` (no supplementary groups), in a
    process group of its own, with a umask. Python 3.11 does it all natively, without
    running Python code between fork and exec; older ones need preexec_fn (the launcher
    is single-threaded, where that is safe)."""
    if sys.version_info >= (3, 11):
        native: dict[str, Any] = {"preexec_fn": then}
        if uid is not None:
            native.update(user=uid, group=uid, extra_groups=[])
        if new_group:
            native["process_group"] = 0
        if umask is not None:
            native["umask"] = umask
        return native

    def setup() -> None:  # pragma: no cover - Python < 3.11
        if new_group:
            os.setpgid(0, 0)
        if umask is not None:
            os.umask(umask)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        if then is not None:
            then()

    return {"preexec_fn": setup}


def kill_user_processes(uid: int) -> None:
    """SIGKILL every process running as `uid` (all of a job's, wherever they went).

    kill(-1) sent from that uid reaches every process of it but the sender: the shell's
    own kill does it (the studio's interpreter may live where the uid cannot read)."""
    subprocess.run(
        ["/bin/sh", "-c", "kill -KILL -1"],
        env={},
        check=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **child_setup(uid),
    )


def safe_members(tar: tarfile.TarFile, target: str) -> list[tarfile.TarInfo]:
    """Where tarfile has no extraction filters (before 3.8.17, 3.9.17, 3.10.12, 3.11.4):
    what the "data" filter refuses, refused here: paths and links that leave the folder,
    devices and FIFOs; special permission bits are dropped."""
    root = os.path.realpath(target)
    members = []
    for member in tar.getmembers():
        path = os.path.realpath(os.path.join(root, member.name))
        if not (path == root or path.startswith(root + os.sep)):
            raise LaunchError(f"archive member {member.name!r} escapes the folder")
        if member.isdev() or member.isfifo():
            raise LaunchError(f"archive member {member.name!r} is a device or FIFO")
        if member.issym() or member.islnk():
            base = os.path.dirname(path) if member.issym() else root
            link = os.path.realpath(os.path.join(base, member.linkname))
            if not (link == root or link.startswith(root + os.sep)):
                raise LaunchError(f"archive member {member.name!r} links out of the folder")
        member.mode &= 0o755
        members.append(member)
    return members


def distribution_environment(distribution: dict[str, Any] | None, env: Any) -> dict[str, str]:
    """The variables a distributed framework expects, as Azure ML sets them, for this
    instance (its index from the Indexed Job: JOB_COMPLETION_INDEX). With several
    processes per instance, each process's RANK and LOCAL_RANK are set as it starts
    (see `per_process`)."""
    if not distribution or distribution["type"] == "mpi":  # mpirun sets its ranks' own
        return {}
    index = int(env.get("JOB_COMPLETION_INDEX", "0"))
    hosts = list(distribution["hosts"])
    port = int(distribution["port"])
    processes = int(distribution.get("process_count_per_instance") or 1)
    if distribution["type"] == "tensorflow":
        # Each process a worker of its own, on its own port (port, port + 1, ...).
        workers = [f"{host}:{port + i}" for host in hosts for i in range(processes)]
        if processes > 1:  # TF_CONFIG is made per process (see PER_PROCESS)
            return {"KSTUDIO_TF_WORKERS": json.dumps(workers), "NODE_RANK": str(index),
                    "KSTUDIO_PROCESSES": str(processes)}  # fmt: skip
        config = {
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": index},
            "environment": "cloud",
        }
        return {"TF_CONFIG": json.dumps(config)}
    return {
        "MASTER_ADDR": hosts[0],
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(len(hosts) * processes),
        "NODE_RANK": str(index),
        "RANK": str(index * processes),
        "LOCAL_RANK": "0",
        "KSTUDIO_PROCESSES": str(processes),
    }


# Runs the job's command (in $KSTUDIO_COMMAND) once per process of the instance, each
# with its own LOCAL_RANK and RANK (and, for tensorflow, its own TF_CONFIG: worker RANK
# of KSTUDIO_TF_WORKERS), and ends with the first failure's status. The first process to
# fail stops the others (SIGTERM to the process group this shell leads: the launcher
# starts it in one of its own), as torchrun does: they would otherwise wait for their
# lost peer until the job's timeout. This shell ignores SIGTERM from the start; each
# process takes SIGTERM's default back before it starts, and one that did so only after
# the others were stopped sees the stop file and does not start. Their SIGTERM ends (143)
# do not hide the failure's status.
PER_PROCESS = """\
status=0; pids=""; i=0; stopped="${TMPDIR:-/tmp}/kstudio-stopped.$$"
trap '' TERM
while [ "$i" -lt "$KSTUDIO_PROCESSES" ]; do
  (trap - TERM
   [ -e "$stopped" ] && exit 143
   export LOCAL_RANK=$i RANK=$((NODE_RANK * KSTUDIO_PROCESSES + i))
   if [ -n "${KSTUDIO_TF_WORKERS:-}" ]; then
     f='{"cluster": {"worker": %s}, "task": {"type": "worker", "index": %s}, '
     TF_CONFIG=$(printf "$f"'"environment": "cloud"}' "$KSTUDIO_TF_WORKERS" "$RANK")
     export TF_CONFIG
   fi
   "$0" -c "$KSTUDIO_COMMAND"
   code=$?
   if [ "$code" -ne 0 ]; then
     echo "a process of this instance exited with $code: stopping the others" >&2
     trap '' TERM; : > "$stopped"; kill -s TERM -- "-$$" 2>/dev/null
   fi
   exit "$code") &
  pids="$pids $!"; i=$((i + 1))
done
for pid in $pids; do
  wait "$pid"; code=$?
  if [ "$code" -ne 0 ] && { [ "$status" -eq 0 ] || [ "$status" -eq 143 ]; }; then
    status=$code
  fi
done
rm -f "$stopped"
exit "$status"
"""


def runnable_by_anyone(path: str) -> bool:
    """Whether any uid may run this file: it and every folder above it passable."""
    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        folder = os.path.dirname(path)
        while folder not in ("/", ""):
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return False
            folder = os.path.dirname(folder)
    except OSError:
        return False
    return True


def per_process(command: str, distribution: dict[str, Any] | None) -> tuple[str, dict[str, str]]:
    """The command as run, and what it needs in its environment: itself, started once
    per process when an instance runs several."""
    processes = int((distribution or {}).get("process_count_per_instance") or 1)
    if processes <= 1:
        return command, {}
    return PER_PROCESS, {"KSTUDIO_COMMAND": command}


# -- MPI ----------------------------------------------------------------------------------
# Instance 0 runs Open MPI's mpirun with a hostfile of the instances; mpirun starts its
# daemon (orted) on the others through a remote shell, and that remote shell is this
# launcher (`launcher.py rsh HOST COMMAND...`), not ssh: images need no sshd and no keys.
# Every instance serves one launch on the distribution port (instance 0 too: mpirun may
# not take its own pod's name for itself), from a caller that proves, with an HMAC of a
# fresh nonce, that it holds the job's secret; the launch runs as the job's command would
# and the instance ends when it does.
MPI_RUN = """\
command -v mpirun >/dev/null 2>&1 || {
  echo "distribution mpi runs Open MPI's mpirun, which is not in this image" >&2; exit 127; }
"$KSTUDIO_PYTHON" "$KSTUDIO_LAUNCHER" rsh-serve & serving=$!
mpirun --hostfile "$KSTUDIO_HOSTFILE" -np "$KSTUDIO_RANKS" --leave-session-attached \
  --mca plm_rsh_agent "$KSTUDIO_PYTHON $KSTUDIO_LAUNCHER rsh" --mca plm_rsh_no_tree_spawn 1 \
  --mca orte_keep_fqdn_hostnames 1 /bin/sh -c "$KSTUDIO_COMMAND"
status=$?
kill "$serving" 2>/dev/null
exit "$status"
"""
MPI_WAIT = 600.0  # how long an instance waits for mpirun to reach it


def mpi_secret(token: str) -> str:
    """What callers of rsh-serve must prove they hold: one the job's pods all derive from
    the job's token; without one (the local compute: one host, one launcher), a random
    one that only this job's processes get, in their environment."""
    if not token:
        return os.urandom(32).hex()
    return hmac.new(token.encode(), b"mpi", hashlib.sha256).hexdigest()


def mpi_command(
    command: str,
    distribution: dict[str, Any],
    secret: str,
    folder: str,
    env: Any,
    python: str = "",
) -> tuple[str, dict[str, str]]:
    """The instance's part of an MPI job, and what it needs in its environment. `folder`
    is the job's own (its temporary one): the hostfile and a copy of this launcher go
    there, where the job's user may read them (the launcher's own copy may be in a folder
    only the studio reads, as may `sys.executable`: `python` is the job's)."""
    index = int(env.get("JOB_COMPLETION_INDEX", "0"))
    hosts = list(distribution["hosts"])
    slots = int(distribution.get("process_count_per_instance") or 1)
    copy = os.path.join(folder, "kstudio-launcher.py")
    shutil.copyfile(os.path.abspath(__file__), copy)
    os.chmod(copy, 0o644)
    extra = {
        "KSTUDIO_PYTHON": python or sys.executable,
        "KSTUDIO_LAUNCHER": copy,
        "KSTUDIO_RSH_SECRET": secret,
        "KSTUDIO_RSH_ADDRESS": "{}:{}".format(hosts[index], distribution["port"]),
        "KSTUDIO_RSH_PORT": str(distribution["port"]),
    }
    if os.geteuid() == 0:  # as containers often run: mpirun refuses root unless told
        extra.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if index > 0:
        return '"$KSTUDIO_PYTHON" "$KSTUDIO_LAUNCHER" rsh-serve', extra
    hostfile = os.path.join(folder, "hostfile")
    with open(hostfile, "w") as f:
        f.write("".join(f"{host} slots={slots}\n" for host in hosts))
    os.chmod(hostfile, 0o644)
    extra.update(KSTUDIO_HOSTFILE=hostfile, KSTUDIO_RANKS=str(len(hosts) * slots),
                 KSTUDIO_COMMAND=command)  # fmt: skip
    return MPI_RUN, extra


def _frame(sock: socket.socket, kind: int, data: bytes) -> None:
    sock.sendall(struct.pack("!BI", kind, len(data)) + data)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the connection closed")
        data += chunk
    return data


def rsh_serve() -> int:
    """Serve one launch (see MPI_RUN) and end with it; none within MPI_WAIT fails."""
    host, port = os.environ["KSTUDIO_RSH_ADDRESS"].rsplit(":", 1)
    secret = os.environ["KSTUDIO_RSH_SECRET"].encode()
    server = socket.create_server((socket.gethostbyname(host), int(port)))
    server.settimeout(MPI_WAIT)
    while True:
        try:
            peer, address = server.accept()
        except socket.timeout:
            print("mpirun on instance 0 did not reach this instance in time", file=sys.stderr)
            return 1
        nonce = os.urandom(16)
        try:
            peer.settimeout(30)
            peer.sendall(nonce)
            proof = _read_exactly(peer, 32)
            size = struct.unpack("!I", _read_exactly(peer, 4))[0]
            argv = json.loads(_read_exactly(peer, min(size, 1 << 20)))
        except (OSError, EOFError, ValueError):
            peer.close()
            continue
        if not hmac.compare_digest(proof, hmac.new(secret, nonce, hashlib.sha256).digest()):
            print(f"refused a launch from {address[0]} without the job's secret",
                  file=sys.stderr)  # fmt: skip
            peer.close()
            continue
        server.close()
        peer.settimeout(None)
        return _run_launch(peer, argv)


def _run_launch(peer: socket.socket, argv: list[str]) -> int:
    """The launch's command as a remote shell runs it, its output sent back as it comes;
    the caller gone, the command goes too."""
    child = subprocess.Popen(
        ["/bin/sh", "-c", " ".join(argv)], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ, 1)
    selector.register(child.stderr, selectors.EVENT_READ, 2)
    selector.register(peer, selectors.EVENT_READ, 0)
    open_streams = 2
    try:
        while open_streams:
            for key, _ in selector.select():
                if key.data == 0:  # the caller closed (mpirun was stopped): stop too
                    raise EOFError
                chunk = os.read(key.fd, 65536)
                if chunk:
                    _frame(peer, key.data, chunk)
                else:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
        code = child.wait()
        _frame(peer, 0, struct.pack("!i", code))
        return code
    except (OSError, EOFError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        return child.wait()
    finally:
        peer.close()


def rsh(host: str, words: list[str]) -> int:
    """mpirun's remote shell: run `words` on `host` (its rsh-serve), relaying its output
    and ending with its status. The instance may still be starting: tried until MPI_WAIT."""
    secret = os.environ["KSTUDIO_RSH_SECRET"].encode()
    deadline = time.monotonic() + MPI_WAIT
    while True:
        try:
            peer = socket.create_connection((host, int(os.environ["KSTUDIO_RSH_PORT"])), 10)
            nonce = _read_exactly(peer, 16)
            break
        except (OSError, EOFError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    argv = json.dumps([w for w in words if w]).encode()
    proof = hmac.new(secret, nonce, hashlib.sha256).digest()
    peer.sendall(proof + struct.pack("!I", len(argv)) + argv)
    peer.settimeout(None)
    outputs = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    while True:
        kind, size = struct.unpack("!BI", _read_exactly(peer, 5))
        data = _read_exactly(peer, size)
        if kind == 0:
            return int(struct.unpack("!i", data)[0])
        outputs[kind].write(data)
        outputs[kind].flush()


class SystemMetrics(threading.Thread):
    """Samples the job's CPU and memory (and each GPU, where nvidia-smi answers) every
    `interval` seconds, and logs them to the job's MLflow run as MLflow's own system
    metrics do (`system/...`), so no user code is needed for them."""

    def __init__(self, env: dict, pgid: int, uid: int | None, interval: float) -> None:
        super().__init__(daemon=True, name="system-metrics")
        self.url = env["MLFLOW_TRACKING_URI"].rstrip("/") + "/api/2.0/mlflow/runs/log-batch"
        self.token = env.get("MLFLOW_TRACKING_TOKEN", "")
        self.run_id = env["MLFLOW_RUN_ID"]
        self.pgid, self.uid, self.interval = pgid, uid, interval
        self.stopping = threading.Event()
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def usage(self) -> tuple[int, int]:
        """CPU ticks used and bytes resident, over the job's processes now."""
        ticks = resident = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if self.uid is not None:
                    if os.stat(f"/proc/{entry}").st_uid != self.uid:
                        continue
                elif int(fields[2]) != self.pgid:  # its process group
                    continue
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
            resident += int(fields[21]) * self.page
        return ticks, resident

    def gpus(self) -> list[tuple[float, float]]:
        """(utilization %, memory used MB) per GPU; none without nvidia-smi."""
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return []
        found = []
        for line in out.strip().splitlines():
            with contextlib.suppress(ValueError):
                utilization, memory = (float(v) for v in line.split(","))
                found.append((utilization, memory))
        return found

    def post(self, metrics: list[dict[str, object]]) -> None:
        body = json.dumps({"run_id": self.run_id, "metrics": metrics}).encode()
        request = urllib.request.Request(  # noqa: S310 - the studio's own URL
            self.url, body, {"Content-Type": "application/json",
                             "Authorization": f"Bearer {self.token}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass

    def run(self) -> None:
        last_ticks, last_time = self.usage()[0], time.monotonic()
        step = 0
        while not self.stopping.wait(self.interval):
            ticks, resident = self.usage()
            now = time.monotonic()
            cpu = (ticks - last_ticks) / self.ticks / max(now - last_time, 1e-6) * 100
            last_ticks, last_time = ticks, now
            stamp = int(time.time() * 1000)
            values = {
                "system/cpu_utilization_percentage": round(cpu, 2),
                "system/system_memory_usage_megabytes": round(resident / 1e6, 2),
            }
            for index, (utilization, memory) in enumerate(self.gpus()):
                values[f"system/gpu_{index}_utilization_percentage"] = utilization
                values[f"system/gpu_{index}_memory_usage_megabytes"] = memory
            metrics = [{"key": k, "value": v, "timestamp": stamp, "step": step}
                       for k, v in values.items()]  # fmt: skip
            step += 1
            try:
                self.post(metrics)
            except (OSError, http.client.HTTPException, ValueError):
                continue  # the studio is away for now: the next sample tries again


class Launcher:
    def __init__(self, launch_file: str) -> None:
        with open(launch_file, encoding="utf-8") as f:
            self.spec = json.load(f)
        # Small uploads ride along with the launch file (a pod's Secret), beside it.
        self.beside = os.path.dirname(os.path.abspath(launch_file))
        self.limits = {**DEFAULT_LIMITS, **self.spec.get("bounds", {})}
        # In a pod, the job's folder is where the pod mounted it.
        self.root = os.environ.get("KSTUDIO_ROOT") or self.spec["root"]
        self.spec["root"] = self.root
        # In a pod, the container's log is the job's log, and the termination message
        # says how it ended (the studio reads both through the Kubernetes API).
        self.in_pod = bool(os.environ.get("KSTUDIO_ROOT"))
        self.workdir = os.path.join(self.root, "wd")
        self.home = os.path.join(self.root, "home")
        self.tmp = os.path.join(self.root, "tmp")
        run_as = self.spec.get("run_as")
        self.uid: int | None = int(run_as) if run_as is not None else None
        self.child: subprocess.Popen[bytes] | None = None
        self.canceled = False
        self.started = time.monotonic()
        timeout = self.spec.get("timeout")
        # limits.timeout counts from the launcher's start: downloads are part of the job.
        self.deadline = self.started + timeout if timeout else None
        self.state: dict[str, object] = {"launcher_pid": os.getpid()}
        self.env_bin = ""  # the job's virtual environment's bin folder, once built

    # -- state ---------------------------------------------------------------------------
    def set_state(self, **values: object) -> None:
        self.state.update(values, updated_at=time.time())
        os.makedirs(self.root, exist_ok=True)
        tmp = os.path.join(self.root, "state.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state, f)
        os.replace(tmp, os.path.join(self.root, "state.json"))
        termination_log = os.environ.get("KSTUDIO_TERMINATION_LOG")
        if termination_log and self.state.get("phase") in ("Completed", "Failed", "Canceled"):
            ending = {k: self.state.get(k) for k in ("phase", "exit_code", "reason")}
            with contextlib.suppress(OSError), open(termination_log, "w", encoding="utf-8") as f:
                f.write(json.dumps(ending)[:4000])  # Kubernetes keeps 4096 bytes

    # -- talking to the studio (remote hosts only) ----------------------------------------
    def studio_request(self, path: str, **kwargs: Any) -> http.client.HTTPResponse:
        studio = self.spec["studio"]
        headers = {"Authorization": f"Bearer {studio['token']}", **kwargs.pop("headers", {})}
        url = studio["url"].rstrip("/") + "/api/v1/job-io/" + path
        # The studio may well be at a private address: not the guarded opener of inputs.
        request = urllib.request.Request(url, headers=headers, **kwargs)  # noqa: S310
        return urllib.request.urlopen(request, timeout=60)  # noqa: S310 - the studio's URL

    def fetch_uploads(self) -> None:
        """Bring `{"fetch": key}` uploads (code, uploaded inputs) from the studio, find
        `{"embedded": name}` ones beside the launch file, and name them by their local
        copies, as a local launch file would."""
        folder = os.path.join(self.root, "uploads")

        def local(ref: dict[str, str]) -> str:
            if "embedded" in ref:  # came with the launch file: no call to the studio
                return os.path.join(self.beside, os.path.basename(ref["embedded"]))
            key = ref["fetch"]
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, key)
            try:
                response = self.studio_request("uploads/" + urllib.parse.quote(key))
                with response, open(path, "wb") as out:
                    shutil.copyfileobj(response, out, 1024 * 1024)
            except (OSError, http.client.HTTPException) as exc:
                raise LaunchError(f"could not fetch {key} from the studio: {exc}") from exc
            return path

        code = self.spec.get("code")
        if isinstance(code, dict):
            self.spec["code"] = local(code)
        for item in self.spec.get("inputs", {}).values():
            if "fetch" in item or "embedded" in item:
                item["archive" if item["type"] == "uri_folder" else "file"] = local(item)

    def publish_outputs(self, listed: list[dict[str, object]]) -> list[dict[str, object]]:
        """Send each output file to the studio's artifact store; returns the listing with
        the name each was kept under."""
        published = []
        for entry in listed:
            output, relative = str(entry["output"]), str(entry["path"])
            folder = self.output_folders()[output]
            quoted = urllib.parse.quote(f"{output}/{relative}")
            with open(os.path.join(folder, relative), "rb") as f:
                response = self.studio_request(
                    "outputs/" + quoted,
                    data=f,
                    method="PUT",
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(os.fstat(f.fileno()).st_size),
                    },
                )
            with response:
                published.append({**entry, "artifact": json.load(response)["artifact"]})
        return published

    # -- preparing -----------------------------------------------------------------------
    def unpack(self, archive: str, target: str) -> None:
        with open(archive, "rb") as f:
            problem = archive_problem(
                f, self.limits["max_archive_members"], self.limits["max_archive_bytes"]
            )
        if problem:
            raise LaunchError(problem)
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
                if hasattr(tarfile, "data_filter"):
                    t.extractall(target, filter="data")
                else:  # pragma: no cover - older Pythons
                    t.extractall(target, members=safe_members(t, target))  # noqa: S202

    def download(self, url: str, target_dir: str) -> str:
        os.makedirs(target_dir, exist_ok=True)
        name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
        path = os.path.join(target_dir, name)
        fetch = opener(list(self.spec.get("allowed_networks", [])))
        try:
            response = fetch.open(url, timeout=self.read_timeout())
        except (OSError, http.client.HTTPException) as exc:
            raise LaunchError(f"could not download {url}: {exc}") from exc
        self.keep(response, path, url)
        return path

    def read_timeout(self) -> float:
        remaining = self.deadline - time.monotonic() if self.deadline else 30.0
        return max(0.1, min(30.0, remaining))

    def keep(self, response: Any, path: str, what: str) -> None:
        """Write a download to `path`, within the size cap, limits.timeout and a cancel."""
        cap = int(self.limits["max_download_bytes"])
        try:
            with response, open(path, "wb") as out:
                received = 0
                # read1: what has arrived, so a trickle is still checked against the clock.
                while chunk := response.read1(1024 * 1024):
                    received += len(chunk)
                    if received > cap:
                        raise LaunchError(
                            f"{what} is larger than the download limit ({cap:,} bytes)"
                        )
                    if self.deadline is not None and time.monotonic() > self.deadline:
                        raise LaunchError(
                            f"downloading {what} ran past limits.timeout ({self.spec['timeout']} s)"
                        )
                    if self.canceled:
                        raise LaunchError("canceled while downloading")
                    out.write(chunk)
        except LaunchError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise LaunchError(f"could not download {what}: {exc}") from exc

    def fetch_data(self, name: str, item: dict[str, Any], target: str) -> str:
        """An input that names data in a datastore: its files, each read from a URL the
        studio signed (straight from the storage), a file on this host, or the studio.
        Returns the path the command gets: the folder, or the one file."""
        files = item.get("files")
        if files is None:  # too many to travel in the launch file: asked for now
            with self.studio_request(item["listing"]) as response:
                files = json.load(response)["files"]
        if len(files) > int(self.limits["max_archive_members"]):
            raise LaunchError(
                f"inputs.{name} has {len(files):,} files, more than this studio allows "
                f"({int(self.limits['max_archive_members']):,})"
            )
        os.makedirs(target, exist_ok=True)
        for entry in files:
            relative = entry["path"]
            parts = relative.split("/")
            if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
                raise LaunchError(f"inputs.{name}: {relative!r} is not a path inside the input")
            path = os.path.join(target, *parts)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            what = f"inputs.{name}/{relative}"
            if "url" in entry:
                # Signed by the studio for a datastore IT-ops or an owner set up: the
                # storage's own address, not one a job chose.
                request = urllib.request.Request(entry["url"])  # noqa: S310
                try:
                    response = urllib.request.urlopen(request, timeout=self.read_timeout())  # noqa: S310
                except (OSError, http.client.HTTPException) as exc:
                    raise LaunchError(f"could not read {what}: {exc}") from exc
                self.keep(response, path, what)
            elif "source" in entry or "mounted" in entry:
                # A file of the studio's host, or of the same storage mounted in the pod.
                source = entry.get("source") or os.path.join(
                    os.environ.get("KSTUDIO_DATA", "/kstudio-data"), entry["mounted"]
                )
                try:
                    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
                except OSError as exc:
                    raise LaunchError(f"could not read {what}: {exc}") from exc
                self.keep(os.fdopen(fd, "rb"), path, what)
            else:
                try:
                    response = self.studio_request(entry["studio"])
                except (OSError, http.client.HTTPException) as exc:
                    raise LaunchError(f"could not fetch {what} from the studio: {exc}") from exc
                self.keep(response, path, what)
        if item["type"] == "uri_file":
            return os.path.join(target, files[0]["path"])
        return target

    def say(self, text: str) -> None:
        """A line of the launcher's own in the job's log (what it did for the job)."""
        log = LogWriter(
            os.path.join(self.root, "log.jsonl"), int(self.limits["max_log_bytes"]), self.in_pod
        )
        log.emit("stderr", f"[kstudio] {text}".encode())
        log.close()

    def materialize_inputs(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, item in self.spec.get("inputs", {}).items():
            kind = item["type"]
            target = os.path.join(self.root, "inputs", name)
            for note in item.get("notes", []):
                self.say(f"inputs.{name}: {note}")
            if kind == "literal":
                values[f"inputs.{name}"] = str(item["value"])
            elif "files" in item or "listing" in item:
                values[f"inputs.{name}"] = self.fetch_data(name, item, target)
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

    # -- the job's environment ------------------------------------------------------------
    def build_environment(self) -> None:
        """Install the packages the job's environment asks for into a virtual environment
        kept by their key: built once (under a lock: two jobs wanting it at once build it
        once), reused after. pip's output is the job's log while it builds."""
        env = self.spec.get("environment")
        if not env:
            return
        for note in env.get("notes", []):
            self.say(f"environment: {note}")
        if not env.get("key"):
            return
        python, version, real = self.choose_python(env.get("python"))
        # Where environments are kept: the host's cache, a pod's shared volume, else the
        # job's own folder (built for this job alone).
        cache = (
            os.environ.get("KSTUDIO_ENVIRONMENTS")
            or env.get("cache")
            or os.path.join(self.root, "environments")
        )
        # Per base interpreter too: one built on a Python that other users cannot run (the
        # studio's, under /root) must not be handed to a job's or a deployment's own uid.
        base = hashlib.sha256(real.encode()).hexdigest()[:8]
        folder = os.path.join(cache, f"{env['key']}-py{version}-{base}")
        ready = os.path.join(folder, ".ready")
        if not os.path.exists(ready):
            old_umask = os.umask(0o022)  # the job's uid reads and runs what is built
            try:
                os.makedirs(cache, exist_ok=True)
                with open(folder + ".lock", "w") as lock:
                    self.wait_for(lock, env["label"])
                    if not os.path.exists(ready):
                        self.build_into(folder, python, version, env)
                    else:  # built by the job this one waited for
                        self.say(f"environment: reusing {env['label']} ({env['key']})")
            finally:
                os.umask(old_umask)
        else:
            self.say(f"environment: reusing {env['label']} ({env['key']}, Python {version})")
        self.spec["python"] = os.path.join(folder, "bin", "python")
        self.env_bin = os.path.join(folder, "bin")

    def choose_python(self, pin: str | None) -> tuple[str, str, str]:
        """The interpreter to build on: `python<pin>` when this host has it, else the
        job's usual one (and the log says so); its version and real path."""
        default = self.spec.get("python") or sys.executable
        found = shutil.which(f"python{pin}") if pin else None
        why = f"this host has no python{pin}"
        if found:
            try:
                real = self.interpreter(found)[0]
            except LaunchError:  # a version manager's shim for a version it does not have
                found, why = None, f"python{pin} here does not run"
            else:
                if self.uid is not None and not runnable_by_anyone(real):
                    found, why = None, f"python{pin} here is not one the job's own user may run"
        python = found or default
        real, version = self.interpreter(python)
        if pin and not found and version != pin:  # the usual one may be that Python too
            self.say(f"environment: python={pin} was asked for; {why}, so the job gets "
                     f"Python {version} ({real})")  # fmt: skip
        return python, version, real

    @staticmethod
    def interpreter(python: str) -> tuple[str, str]:
        """The interpreter a command runs (through any shim or link), and its version."""
        script = "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])"
        try:
            real, version = subprocess.check_output([python, "-c", script], text=True).split()
        except (OSError, ValueError, subprocess.CalledProcessError) as exc:
            raise LaunchError(f"cannot run {python}: {exc}") from exc
        return os.path.realpath(real), version

    def wait_for(self, lock: IO[str], label: str) -> None:
        said = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not said:
                    self.say(f"environment: another job is building {label}; waiting for it")
                    said = True
                if self.canceled:
                    raise LaunchError("canceled while waiting for the environment") from None
                if self.deadline is not None and time.monotonic() > self.deadline:
                    raise LaunchError(
                        "limits.timeout passed while waiting for the environment"
                    ) from None
                time.sleep(0.2)

    def build_into(self, folder: str, python: str, version: str, env: dict[str, Any]) -> None:
        shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
        requirements = list(env.get("requirements", []))
        self.say(f"environment: building {env['label']} ({env['key']}, Python {version}, "
                 f"{len(requirements)} package(s))")  # fmt: skip
        try:
            self.run_step([python, "-m", "venv", folder], {}, "creating the virtual environment")
            if requirements:
                listed = os.path.join(folder, "requirements.txt")
                with open(listed, "w", encoding="utf-8") as f:
                    f.write("\n".join(requirements) + "\n")
                pip = [os.path.join(folder, "bin", "python"), "-m", "pip", "install",
                       "--no-input", "--progress-bar", "off", "-r", listed]  # fmt: skip
                extra = {"PIP_ROOT_USER_ACTION": "ignore", **env.get("pip_env", {})}
                self.run_step(pip, extra, "installing the packages")
        except LaunchError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with open(os.path.join(folder, ".ready"), "w", encoding="utf-8") as f:
            f.write(json.dumps({"built_at": time.time(), "requirements": requirements}))
        self.say(f"environment: {env['label']} is ready")

    def run_step(self, argv: list[str], extra: dict[str, str], what: str) -> None:
        """A build step, its output into the job's log; fails with its last lines."""
        log = LogWriter(
            os.path.join(self.root, "log.jsonl"), int(self.limits["max_log_bytes"]), self.in_pod
        )
        tail: list[str] = []
        try:
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **extra}, cwd=self.tmp,
            )  # fmt: skip
            assert process.stdout is not None
            for raw in process.stdout:
                log.emit("stdout", raw.rstrip(b"\n"))
                log.flush()
                tail = [*tail, raw.decode("utf-8", "replace").rstrip()][-12:]
                late = self.deadline is not None and time.monotonic() > self.deadline
                if self.canceled or late:
                    process.kill()
            code = process.wait()
        except OSError as exc:
            raise LaunchError(f"{what} failed: {exc}") from exc
        finally:
            log.close()
        if self.canceled:
            raise LaunchError("canceled while building the environment")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise LaunchError("building the environment ran past limits.timeout")
        if code != 0:
            errors = [line for line in tail if "ERROR" in line] or tail[-3:]
            raise LaunchError(f"{what} failed (exit code {code}): " + " ".join(errors))

    def prepare(self) -> dict[str, str]:
        for folder in (self.workdir, self.home, self.tmp):
            os.makedirs(folder, exist_ok=True)
        self.build_environment()
        if self.spec.get("studio"):
            self.fetch_uploads()
        if self.spec.get("code"):
            self.unpack(self.spec["code"], self.workdir)
        values = self.materialize_inputs()
        os.makedirs(os.path.join(self.workdir, "outputs"), exist_ok=True)
        for name in self.spec.get("outputs", {}):
            path = os.path.join(self.root, "outputs", name)
            os.makedirs(path, exist_ok=True)
            values[f"outputs.{name}"] = path
        values["name"] = self.spec["name"]
        self.hand_over()
        return values

    def hand_over(self) -> None:
        """Give the job's own folders to its uid; the launcher's records stay root's.

        Folders on the way to them are traversable (0711), not listable."""
        if self.uid is None:
            return
        for parent in (
            self.root,
            os.path.join(self.root, "inputs"),
            os.path.join(self.root, "outputs"),
        ):
            if os.path.isdir(parent):
                os.chmod(parent, 0o711)  # noqa: S103 - traverse only
        owned = [self.workdir, self.home, self.tmp]
        for parent in ("inputs", "outputs"):
            folder = os.path.join(self.root, parent)
            if os.path.isdir(folder):
                owned.extend(os.path.join(folder, name) for name in os.listdir(folder))
        for top in owned:
            # Nothing of the job's runs yet, so nothing here can be swapped under us;
            # lchown all the same, never following a link out of the folder.
            os.lchown(top, self.uid, self.uid)
            for dirpath, dirs, files in os.walk(top):
                for name in dirs + files:
                    os.lchown(os.path.join(dirpath, name), self.uid, self.uid)

    # -- running -------------------------------------------------------------------------
    def limit_child(self) -> None:
        """Runs in the child before exec (after it became the job's uid): OS limits."""
        limits = self.spec.get("limits", {})
        if limits.get("memory_bytes"):
            size = int(limits["memory_bytes"])
            resource.setrlimit(resource.RLIMIT_DATA, (size, size))
        if limits.get("cpus") and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(limits["cpus"]))

    def system_metrics(self, pgid: int) -> SystemMetrics | None:
        """Start sampling the job for its MLflow run, when it has one the studio knows."""
        env = self.child_environment()
        interval = float(self.limits.get("system_metrics_seconds") or 0)
        if interval <= 0 or not env.get("MLFLOW_TRACKING_URI") or not env.get("MLFLOW_RUN_ID"):
            return None
        sampler = SystemMetrics(env, pgid, self.uid, interval)
        sampler.start()
        return sampler

    def signal_command(self, sig: int) -> None:
        """Signal the user's command and everything it started (its process group)."""
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, sig)

    def kill_everything(self) -> None:
        """The command's group, and with a uid of its own, whatever escaped the group."""
        self.signal_command(signal.SIGKILL)
        if self.uid is not None:
            kill_user_processes(self.uid)

    def on_term(self, signum: int, frame: object) -> None:
        self.canceled = True
        self.signal_command(signal.SIGTERM)

    def child_environment(self) -> dict[str, str]:
        """The launcher's own environment is already the studio's allow-list; add the
        job's variables and the job's own home and temp folders."""
        env = dict(os.environ)
        env.update({k: str(v) for k, v in self.spec.get("environment_variables", {}).items()})
        env.update(
            PYTHONUNBUFFERED="1",
            AZUREML_RUN_ID=self.spec["name"],
            KSTUDIO_JOB_NAME=self.spec["name"],
            HOME=self.home,
            TMPDIR=self.tmp,
        )
        if self.uid is not None:
            env.update(USER="job", LOGNAME="job")
        env.update(distribution_environment(self.spec.get("distribution"), os.environ))
        if self.spec.get("python"):
            # `python` and `python3` are the interpreter the studio chose for jobs: a
            # script that runs it by its own path, not a link, so a virtual
            # environment's interpreter still finds its pyvenv.cfg (and its packages).
            bin_dir = os.path.join(self.root, "bin")
            os.makedirs(bin_dir, exist_ok=True)
            os.chmod(bin_dir, 0o711)  # noqa: S103 - traverse only
            for name in ("python", "python3"):
                shim = os.path.join(bin_dir, name)
                if not os.path.lexists(shim):
                    with open(shim, "w") as f:
                        f.write(
                            '#!/bin/sh\nexec {} "$@"\n'.format(shlex.quote(self.spec["python"]))
                        )
                    os.chmod(shim, 0o500)  # the job's own user reads and runs it; no other
                    if self.uid is not None:
                        os.chown(shim, self.uid, -1)
            env["PATH"] = bin_dir + os.pathsep + env.get("PATH", os.defpath)
        if self.env_bin:  # its scripts (pip, mlflow...) too, as an activated environment
            env["PATH"] = self.env_bin + os.pathsep + env["PATH"]
            env["VIRTUAL_ENV"] = os.path.dirname(self.env_bin)
        return env

    def run(self, command: str) -> int:
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        distribution = self.spec.get("distribution")
        if distribution and distribution.get("type") == "mpi":
            secret = mpi_secret((self.spec.get("studio") or {}).get("token", ""))
            command, extra = mpi_command(
                command, distribution, secret, self.tmp, os.environ, self.spec.get("python", "")
            )
        else:
            command, extra = per_process(command, distribution)
        try:
            self.child = subprocess.Popen(
                [shell, "-c", command],
                cwd=self.workdir,
                env={**self.child_environment(), **extra},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                **child_setup(self.uid, new_group=True, umask=0o077, then=self.limit_child),
            )
        except PermissionError as exc:
            if self.uid is None:
                raise
            raise LaunchError(
                f"could not run the command as uid {self.uid}: {exc} "
                "(STUDIO_JOB_UID_BASE must be a range of uids this host can use)"
            ) from exc
        self.set_state(phase="Running", child_pgid=self.child.pid, started_at=time.time())
        sampler = self.system_metrics(self.child.pid)
        grace = float(self.spec.get("grace_seconds", 10))
        timed_out = False
        kill_at: float | None = None
        stop_reading_at: float | None = None
        selector = selectors.DefaultSelector()
        assert self.child.stdout is not None and self.child.stderr is not None
        selector.register(self.child.stdout, selectors.EVENT_READ, "stdout")
        selector.register(self.child.stderr, selectors.EVENT_READ, "stderr")
        partial = {"stdout": b"", "stderr": b""}
        log = LogWriter(
            os.path.join(self.root, "log.jsonl"), int(self.limits["max_log_bytes"]), self.in_pod
        )
        try:
            while selector.get_map():
                now = time.monotonic()
                if self.deadline is not None and now >= self.deadline and not timed_out:
                    timed_out = True
                    kill_at = now + grace
                    self.signal_command(signal.SIGTERM)
                if self.canceled and kill_at is None:
                    kill_at = now + grace
                if kill_at is not None and now >= kill_at:
                    self.kill_everything()
                if stop_reading_at is None and self.child.poll() is not None:
                    # The command is over; what it left behind may still hold the pipes.
                    stop_reading_at = now + DRAIN_SECONDS
                    if self.uid is not None:
                        kill_user_processes(self.uid)
                if stop_reading_at is not None and now >= stop_reading_at:
                    break
                for key, _ in selector.select(timeout=0.2):
                    stream = key.data
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        if partial[stream]:
                            log.emit(stream, partial[stream])
                            partial[stream] = b""
                        continue
                    *lines, partial[stream] = (partial[stream] + chunk).split(b"\n")
                    while len(partial[stream]) > MAX_LINE:  # a progress bar, no newlines
                        lines.append(partial[stream][:MAX_LINE])
                        partial[stream] = partial[stream][MAX_LINE:]
                    for raw in lines:
                        log.emit(stream, raw)
                log.flush()
        finally:
            log.close()
            if sampler is not None:
                sampler.stopping.set()
        code = self.child.wait()
        if self.uid is not None:
            kill_user_processes(self.uid)
        if timed_out:
            self.set_state(timed_out=True)
            return EXIT_TIMEOUT
        return code

    # -- finishing -----------------------------------------------------------------------
    def output_folders(self) -> dict[str, str]:
        folders = {"default": os.path.join(self.workdir, "outputs")}
        for name in self.spec.get("outputs", {}):
            folders[name] = os.path.join(self.root, "outputs", name)
        return folders

    def list_outputs(self) -> list[dict[str, object]]:
        """Regular files only: a link is the job pointing elsewhere, never an output."""
        found = []
        for output, folder in self.output_folders().items():
            for dirpath, dirs, files in os.walk(folder):
                dirs.sort()
                for filename in sorted(files):
                    path = os.path.join(dirpath, filename)
                    info = os.lstat(path)
                    if not stat.S_ISREG(info.st_mode):
                        continue
                    found.append(
                        {
                            "output": output,
                            "path": os.path.relpath(path, folder),
                            "size": info.st_size,
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
            if self.canceled:
                self.set_state(
                    phase="Canceled", exit_code=None, reason="Canceled before it started."
                )
            else:
                self.set_state(phase="Failed", exit_code=None, reason=f"Preparing failed: {exc}")
            return 1
        if self.canceled:
            self.set_state(phase="Canceled", exit_code=None, reason="Canceled before it started.")
            return 1
        try:
            code = self.run(command)
        except (LaunchError, OSError) as exc:
            self.set_state(phase="Failed", exit_code=None, reason=f"Could not start: {exc}")
            return 1
        self.set_state(phase="Finalizing", exit_code=code)
        outputs = self.list_outputs()
        if self.spec.get("studio"):
            try:
                outputs = self.publish_outputs(outputs)
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                reason = f"Publishing the outputs to the studio failed: {exc}"
                self.set_state(phase="Failed", exit_code=code, reason=reason, outputs=[])
                return 1
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
        return 0 if phase == "Completed" else 1


class LogWriter:
    """log.jsonl, one JSON object a line; past `cap` bytes, one note and then nothing."""

    def __init__(self, path: str, cap: int, echo: bool = False) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.cap = cap
        self.echo = echo  # also to the launcher's own output: a pod's container log
        self.written = self.file.tell()
        self.full = False

    def emit(self, stream: str, raw: bytes) -> None:
        if self.full:
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        record = json.dumps({"ts": time.time(), "stream": stream, "line": line}) + "\n"
        if self.written + len(record) > self.cap:
            self.full = True
            line = (
                f"[kstudio] This job's log reached its limit ({self.cap:,} bytes); further "
                "output is not kept. The job goes on running."
            )
            record = json.dumps({"ts": time.time(), "stream": "stderr", "line": line}) + "\n"
        self.file.write(record)
        self.written += len(record)
        if self.echo:
            out = sys.stdout if stream == "stdout" else sys.stderr
            out.write(line + "\n")
            out.flush()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


if __name__ == "__main__":
    if sys.argv[1] == "rsh":  # mpirun's remote shell (see MPI_RUN)
        sys.exit(rsh(sys.argv[2], sys.argv[3:]))
    if sys.argv[1] == "rsh-serve":
        sys.exit(rsh_serve())
    sys.exit(Launcher(sys.argv[1]).main())
