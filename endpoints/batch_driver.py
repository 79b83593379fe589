"""The batch scoring driver: what a batch endpoint's job runs, as Azure's parallel run
does for a model batch deployment (Azure's own is not open source; this follows its
documented contract).

    python _kstudio_batch.py --data INPUT --output OUTPUT_FOLDER [--model MODEL_DIR]

with the deployment's settings in `_kstudio_batch.json` beside it.

- The input's files (one file, or a folder's files in name order) are cut into
  mini-batches of `mini_batch_size` files. With several instances (an Indexed Job on
  Kubernetes) instance i takes every i-th mini-batch and appends to its own part of the
  output file (`<name>.part-<i>`), which the studio joins once the job completes.
- `max_concurrency_per_instance` worker processes each import the scoring script, call its
  `init()` once, then `run(mini_batch)` per mini-batch with the list of file paths. What
  `run` returns (a list, or a pandas DataFrame: a row each) is appended to
  `output_file_name` in the output folder (`append_row`), one line a row, a DataFrame's
  columns separated by spaces as Azure writes them; with `summary_only` the script writes
  what it wants to `AZUREML_BI_OUTPUT_PATH` itself.
- A mini-batch whose `run` raises, whose worker dies, or that takes more than
  `retry_settings.timeout` seconds is tried again up to `max_retries` times (a worker that
  timed out is replaced, and its successor runs `init()` again); then its files count as
  failed, as do files `run` returned no row for. More failed files than `error_threshold`
  (-1: no limit) stops the job, failed.
- Without a scoring script the model is an MLflow model: each file is read as a table
  (csv or parquet) and scored with `mlflow.pyfunc`, a row per prediction, with the file's
  name.
- Progress goes to the log as it happens (`mini-batches: D done, F failed, L left of T`),
  and, when the job has an MLflow run, as the metrics `minibatches_done`,
  `minibatches_failed` and `minibatches_left`.

Standard library only, Python 3.8 and later: it runs in the deployment's environment.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import selectors
import subprocess
import sys
import time
import traceback
import urllib.request
from typing import Any, Callable

SETTINGS = "_kstudio_batch.json"
INIT_FAILED = 3
THRESHOLD_EXCEEDED = 4


# -- the worker: one process running the user's script -------------------------------------
def load_scorer(settings: dict[str, Any]) -> Callable[[list[str]], Any]:
    """The scoring script's `run`, after its `init()`; or the MLflow model's scorer."""
    script = settings.get("scoring_script")
    if not script:
        return mlflow_scorer()
    root = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, root)
    path = os.path.join(root, script)
    spec = importlib.util.spec_from_file_location("batch_score", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["batch_score"] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise AttributeError(f"{script} defines no run(mini_batch) function")
    if callable(getattr(module, "init", None)):
        module.init()
    return module.run


def mlflow_scorer() -> Callable[[list[str]], Any]:
    """An MLflow model under AZUREML_MODEL_DIR, scoring each file as a table."""
    import mlflow.pyfunc  # the deployment's environment must have it
    import pandas as pd

    base = os.environ.get("AZUREML_MODEL_DIR", "")
    folder = base
    for dirpath, _dirs, files in os.walk(base):
        if "MLmodel" in files:
            folder = dirpath
            break
    model = mlflow.pyfunc.load_model(folder)

    def run(mini_batch: list[str]) -> Any:
        results = []
        for path in mini_batch:
            table = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
            predictions = pd.DataFrame(model.predict(table))
            predictions.insert(0, "file", os.path.basename(path))
            results.append(predictions)
        return pd.concat(results) if results else []

    return run


def as_rows(result: Any) -> list[str]:
    """What `run` returned, as lines of the output file."""
    if result is None:
        return []
    if hasattr(result, "to_csv") and hasattr(result, "columns"):  # a pandas DataFrame
        text = result.to_csv(sep=" ", header=False, index=False)
        return [line for line in text.splitlines() if line]
    if isinstance(result, (str, bytes)):
        raise TypeError("run() must return a list or a pandas DataFrame, not a string")
    return [str(item).replace("\n", " ") for item in result]


def worker() -> int:
    """Reads mini-batches (a JSON line each) on stdin; answers on the protocol pipe, fd 1
    as it was. The script's own prints go to stderr, into the job's log."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), SETTINGS)) as f:
        settings = json.load(f)
    logging.basicConfig(level=str(settings.get("logging_level", "info")).upper())
    try:
        run = load_scorer(settings)
    except BaseException:  # the user's code: anything at all can come out of it
        answers.write(json.dumps({"init_failed": traceback.format_exc()}) + "\n")
        return INIT_FAILED
    answers.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        task = json.loads(line)
        try:
            rows = as_rows(run(task["files"]))
        except BaseException:
            answer = {"batch": task["batch"], "error": traceback.format_exc()}
        else:
            answer = {"batch": task["batch"], "rows": rows}
        answers.write(json.dumps(answer) + "\n")
    return 0


# -- the driver: mini-batches handed to workers --------------------------------------------
def input_files(data: str) -> list[str]:
    if os.path.isfile(data):
        return [data]
    found: list[str] = []
    for dirpath, dirs, files in os.walk(data):
        dirs.sort()
        found.extend(os.path.join(dirpath, name) for name in sorted(files))
    return found


def mini_batches(files: list[str], size: int, instances: int, index: int) -> list[list[str]]:
    batches = [files[i : i + size] for i in range(0, len(files), size)]
    return batches[index::instances]


class Worker:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # The script's prints reach the log as they happen, and are not lost when a
            # worker is stopped (Python 3.8 buffers a non-interactive stderr).
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.ready = False
        self.task: dict[str, Any] | None = None
        self.deadline = 0.0
        self.buffer = b""

    def send(self, task: dict[str, Any], timeout: float) -> None:
        assert self.process.stdin is not None
        self.task, self.deadline = task, time.monotonic() + timeout
        self.process.stdin.write((json.dumps(task) + "\n").encode())
        self.process.stdin.flush()

    def stop(self, gently: bool = False) -> None:
        """Gently: no more work (its stdin closed), so it ends as its script would; else,
        or when it does not end soon, killed (a mini-batch that ran out of time)."""
        if gently and self.process.stdin is not None:
            self.process.stdin.close()
            try:
                self.process.wait(5)
                return
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class Metrics:
    """Progress as the job's MLflow metrics, when it has a run (at most once a second)."""

    def __init__(self) -> None:
        uri, self.run_id = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_RUN_ID")
        self.url = uri.rstrip("/") + "/api/2.0/mlflow/runs/log-batch" if uri else None
        self.token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
        self.last = 0.0
        self.step = 0

    def log(self, values: dict[str, int], final: bool = False) -> None:
        now = time.monotonic()
        if not self.url or not self.run_id or (not final and now - self.last < 1):
            return
        self.last = now
        stamp = int(time.time() * 1000)
        metrics = [
            {"key": k, "value": v, "timestamp": stamp, "step": self.step} for k, v in values.items()
        ]
        self.step += 1
        body = json.dumps({"run_id": self.run_id, "metrics": metrics}).encode()
        headers = {"Content-Type": "application/json", "Authorization": "Bearer " + self.token}
        request = urllib.request.Request(self.url, body, headers)  # noqa: S310 - the studio's
        try:
            with urllib.request.urlopen(request, timeout=10):  # noqa: S310
                pass
        except Exception as exc:  # progress is also in the log: never fail the job for it
            print(f"(progress metrics not sent: {exc})", file=sys.stderr)


class Driver:
    def __init__(self, settings: dict[str, Any], files: list[str], output: str) -> None:
        self.settings = settings
        instances = max(1, int(settings.get("instance_count") or 1))
        index = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
        size = max(1, int(settings.get("mini_batch_size") or 10))
        self.batches = mini_batches(files, size, instances, index)
        self.queue = [(i, 0) for i in range(len(self.batches))]  # (mini-batch, attempts made)
        self.attempts: dict[int, int] = {}
        self.done = self.failed = 0
        self.failed_files = 0
        retry = settings.get("retry_settings") or {}
        self.max_retries = int(retry.get("max_retries", 3))
        self.timeout = float(retry.get("timeout", 30))
        self.threshold = int(settings.get("error_threshold", -1))
        self.output_file: str | None = None
        if settings.get("output_action", "append_row") == "append_row":
            name = settings.get("output_file_name") or "predictions.csv"
            if instances > 1:  # each instance a part (no two writers of one file), which
                name = f"{name}.part-{index}"  # the studio joins when the job completes
            self.output_file = os.path.join(output, name)
            open(self.output_file, "w").close()
        self.metrics = Metrics()
        self.selector = selectors.DefaultSelector()
        self.workers: list[Worker] = []

    # -- workers --
    def start_worker(self) -> Worker:
        worker = Worker()
        assert worker.process.stdout is not None
        os.set_blocking(worker.process.stdout.fileno(), False)
        self.selector.register(worker.process.stdout, selectors.EVENT_READ, worker)
        self.workers.append(worker)
        return worker

    def drop_worker(self, worker: Worker, gently: bool = False) -> None:
        assert worker.process.stdout is not None
        self.selector.unregister(worker.process.stdout)
        worker.stop(gently)
        self.workers.remove(worker)

    # -- progress --
    def report(self, final: bool = False, quiet: bool = False) -> None:
        left = len(self.batches) - self.done - self.failed
        if not quiet:
            print(
                f"mini-batches: {self.done} done, {self.failed} failed, {left} left of "
                f"{len(self.batches)}",
                flush=True,
            )
        values = {"minibatches_done": self.done, "minibatches_failed": self.failed}
        self.metrics.log({**values, "minibatches_left": left}, final)

    def finished(self, batch: int, rows: list[str]) -> None:
        files = len(self.batches[batch])
        if self.output_file is not None:
            with open(self.output_file, "a") as f:
                f.writelines(row + "\n" for row in rows)
            missing = max(0, files - len(rows))
            if missing:
                print(
                    f"mini-batch {batch}: run() returned {len(rows)} rows for {files} files; "
                    f"{missing} count as failed",
                    flush=True,
                )
                self.failed_files += missing
        self.done += 1
        self.report()

    def attempt_failed(self, batch: int, why: str) -> None:
        made = self.attempts.get(batch, 0) + 1
        self.attempts[batch] = made
        if made <= self.max_retries:
            print(
                f"mini-batch {batch} failed ({why}); retry {made} of {self.max_retries}", flush=True
            )
            self.queue.append((batch, made))
            return
        print(f"mini-batch {batch} failed after {made} attempts: {why}", flush=True)
        self.failed += 1
        self.failed_files += len(self.batches[batch])
        self.report()

    def over_threshold(self) -> bool:
        return self.threshold != -1 and self.failed_files > self.threshold

    # -- the loop --
    def run(self) -> int:
        total_files = sum(len(b) for b in self.batches)
        print(f"{total_files} files in {len(self.batches)} mini-batches", flush=True)
        concurrency = max(1, int(self.settings.get("max_concurrency_per_instance") or 1))
        for _ in range(min(concurrency, len(self.batches))):
            self.start_worker()
        self.report(final=True)
        try:
            while self.done + self.failed < len(self.batches):
                if not self.workers:  # every worker died: start afresh for what is left
                    self.start_worker()
                self.dispatch()
                code = self.wait()
                if code is not None:
                    return code
                if self.over_threshold():
                    print(
                        f"ERROR: {self.failed_files} files failed, more than error_threshold "
                        f"{self.threshold}; stopping",
                        flush=True,
                    )
                    return THRESHOLD_EXCEEDED
        finally:
            for worker in list(self.workers):
                self.drop_worker(worker, gently=worker.task is None)
            self.report(final=True, quiet=True)
        print(
            "{} files scored, {} failed{}".format(
                total_files - self.failed_files,
                self.failed_files,
                f" (results in {os.path.basename(self.output_file)})" if self.output_file else "",
            ),
            flush=True,
        )
        return 0

    def dispatch(self) -> None:
        for worker in self.workers:
            if worker.ready and worker.task is None and self.queue:
                batch, _made = self.queue.pop(0)
                worker.send({"batch": batch, "files": self.batches[batch]}, self.timeout)

    def wait(self) -> int | None:
        """Read what the workers answered; None to go on, or the driver's exit code."""
        busy = [w.deadline for w in self.workers if w.task is not None]
        timeout = max(0.0, min(busy) - time.monotonic()) if busy else None
        for key, _events in self.selector.select(timeout):
            worker: Worker = key.data
            chunk = os.read(key.fd, 1 << 20)
            if not chunk:  # the worker died
                task = worker.task
                self.drop_worker(worker)
                if not worker.ready:
                    print(
                        "ERROR: a worker process died before init() finished "
                        f"(exit code {worker.process.returncode})",
                        flush=True,
                    )
                    return INIT_FAILED
                if task is not None:
                    self.attempt_failed(task["batch"], "its worker process died")
                    self.start_worker()
                continue
            worker.buffer += chunk
            while b"\n" in worker.buffer:
                line, worker.buffer = worker.buffer.split(b"\n", 1)
                code = self.answer(worker, json.loads(line))
                if code is not None:
                    return code
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.task is not None and now >= worker.deadline:
                batch = worker.task["batch"]
                self.drop_worker(worker)
                self.attempt_failed(batch, f"timed out after {self.timeout:g} s")
                self.start_worker()
        return None

    def answer(self, worker: Worker, message: dict[str, Any]) -> int | None:
        if "init_failed" in message:
            print(message["init_failed"], file=sys.stderr, flush=True)
            print("ERROR: the scoring script failed to start (init)", flush=True)
            return INIT_FAILED
        if message.get("ready"):
            worker.ready = True
            return None
        worker.task = None
        if "error" in message:
            print(message["error"], file=sys.stderr, end="", flush=True)
            last = message["error"].strip().splitlines()[-1]
            self.attempt_failed(message["batch"], last)
        else:
            self.finished(message["batch"], message["rows"])
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data")
    parser.add_argument("--output")
    parser.add_argument("--model", default="")
    args = parser.parse_args(argv)
    if args.worker:
        return worker()
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), SETTINGS)) as f:
        settings = json.load(f)
    os.makedirs(args.output, exist_ok=True)
    os.environ["AZUREML_BI_OUTPUT_PATH"] = args.output
    if args.model:
        os.environ["AZUREML_MODEL_DIR"] = args.model
    return Driver(settings, input_files(args.data), args.output).run()


if __name__ == "__main__":
    sys.exit(main())
