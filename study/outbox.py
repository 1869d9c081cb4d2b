"""The driver's MLflow writes, kept on disk while the tracking server is away.

Trials train on whether or not MLflow answers: their results are in Tune and Optuna
regardless. The trial logger writes through an `Outbox`. While the server answers, a write
goes straight to it (failing fast: no minutes of client retries while Tune waits). When a
write finds the server away, it and every later write are appended, in order, to a journal
(`ops.jsonl` in the outbox folder, artifacts copied beside it), and the outbox tries the
server again every `RETRY_S` seconds; when it answers, the journal is replayed in order.

Replays neither lose nor duplicate: tags, params, run status, dataset inputs and artifacts are idempotent
on the server; a metric is replayed with the timestamp of its first attempt (MLflow keeps
one copy of an identical metric); a run created while the server was away gets a local id
and the tag `flairseg.outbox`, and its replay first looks for a run with that tag (an
attempt that reached the server before the answer was lost). What was replayed is recorded
after each write (`applied`), so a driver killed part way resumes the replay where it stood.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from flairseg.errors import ConfigError
from study import tracking

RETRY_S = 30.0  # how often a driver with a journal asks the server again
LOCAL_PREFIX = "outbox-"  # the id of a run created while the server was away
OUTBOX_TAG = "flairseg.outbox"
TIMEOUT_S = 20  # a journaled write waits this long for the server before it is kept


def catch_up(uri: str, tune_path: str, what: str) -> None:
    """Before an invocation's runs are touched again (a --resume, or the next invocation
    closing it out): the writes it kept are replayed, or a ConfigError says where they wait."""
    box = Outbox(uri, folder_for(tune_path))
    waiting = box.pending()
    if waiting and not box.flush():
        raise ConfigError(
            f"MLflow at {uri} still does not answer: {waiting} writes of {what} wait in "
            f"{box.folder}; run this again when it answers (or name it with --mlflow-uri)"
        )


def caught_up(uri: str, tune_path: str) -> tuple[bool, str]:
    """At the end of the trials: (whether every kept write reached the server, where the
    rest wait, said in a few words)."""
    box = Outbox(uri, folder_for(tune_path))
    if box.pending() == 0 or box.flush():
        return True, ""
    return False, f"{box.pending()} writes kept in {box.folder}"


def folder_for(tune_path: str) -> Path:
    """An invocation's outbox: beside its Tune folder when that is on this machine, else in
    the cache (a Tune folder in object storage is not where a driver keeps a journal)."""
    if "://" not in tune_path:
        return Path(tune_path + ".mlflow-outbox")
    return cache_folder(tune_path)


def cache_folder(key: str) -> Path:
    """An outbox in this machine's cache, named by a digest of `key`."""
    from flairseg.data import cache_dir

    return cache_dir() / "outbox" / hashlib.sha256(key.encode()).hexdigest()[:16]


def is_outage(err: BaseException) -> bool:
    """The server is away (no connection, a timeout, a 5xx), not a request it refused."""
    import requests

    if isinstance(err, (requests.exceptions.RequestException, OSError)):
        return True
    text = str(err)
    if "failed with exception" in text:  # MLflow's wording for a connection that failed
        return True
    return any(f"error code {code}" in text for code in (500, 502, 503, 504))


class Outbox:
    """MLflow writes of one invocation: to the server, or to the journal in `folder`."""

    def __init__(self, uri: str, folder: str | os.PathLike) -> None:
        self.uri = uri
        self.folder = Path(folder)
        self._client = None
        self._next_try = 0.0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None  # pickled with Tune's state: reconnects when restored
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = tracking.client(self.uri)
        return self._client

    @property
    def journal(self) -> Path:
        return self.folder / "ops.jsonl"

    def pending(self) -> int:
        """Writes in the journal not yet replayed."""
        return max(0, len(self._ops()) - self._applied())

    # -- the writes the trial logger makes (MlflowClient's names and arguments) ----------

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        """The new run's id: the server's, or a local one until the journal is replayed."""
        if not self._queueing():
            try:
                with tracking.quick_failures(TIMEOUT_S):
                    return self.client.create_run(
                        experiment_id, run_name=run_name, tags=tags
                    ).info.run_id
            except Exception as err:
                self._went_away(err)
        local = LOCAL_PREFIX + uuid.uuid4().hex
        self._append({"op": "create_run", "local": local, "experiment_id": experiment_id,
                      "run_name": run_name, "tags": {**tags, OUTBOX_TAG: local}})  # fmt: skip
        return local

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self._write({
            "op": "log_batch", "run_id": run_id,
            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
            "params": [[p.key, p.value] for p in params],
            "tags": [[t.key, t.value] for t in tags],
        })  # fmt: skip

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._write({"op": "set_tag", "run_id": run_id, "key": key, "value": str(value)})

    def update_run(self, run_id: str, status: str) -> None:
        self._write({"op": "update_run", "run_id": run_id, "status": status})

    def set_terminated(self, run_id: str, status: str) -> None:
        self._write({"op": "set_terminated", "run_id": run_id, "status": status})

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self._write({"op": "log_artifact", "run_id": run_id, "path": str(local_path),
                     "artifact_path": artifact_path})  # fmt: skip

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self._write({"op": "log_artifacts", "run_id": run_id, "path": str(local_dir),
                     "artifact_path": artifact_path})  # fmt: skip

    def log_inputs(self, run_id: str, datasets: list[dict[str, Any]]) -> None:
        """Dataset inputs as study.datasets specs (plain dicts, so they journal)."""
        self._write({"op": "log_inputs", "run_id": run_id, "datasets": datasets})

    # -- the journal ---------------------------------------------------------------------

    def flush(self, patient: bool = False) -> bool:
        """Replay the journal in order; True when nothing is left. `patient`: with MLflow's
        own retries (minutes) instead of failing fast."""
        ops = self._ops()
        done = self._applied()
        if done >= len(ops):
            self._clear()
            return True
        ids = self._ids()
        try:
            with tracking.env({}) if patient else tracking.quick_failures(TIMEOUT_S):
                for k in range(done, len(ops)):
                    self._apply(ops[k], ids)
                    self._save_applied(k + 1)
        except Exception as err:
            if not is_outage(err):
                raise
            self._next_try = time.monotonic() + RETRY_S
            return False
        replayed = len(ops) - done
        self._clear()
        print(f"MLflow at {self.uri} answers again: {replayed} kept writes replayed", flush=True)
        return True

    def _queueing(self) -> bool:
        """True while writes go to the journal: it has some, and the server was not asked
        again lately or still does not answer."""
        if not self.journal.exists():
            return False
        if time.monotonic() < self._next_try:
            return True
        return not self.flush()

    def _write(self, op: dict[str, Any]) -> None:
        if not self._queueing():
            try:
                with tracking.quick_failures(TIMEOUT_S):
                    self._apply(op, self._ids())
                return
            except Exception as err:
                self._went_away(err)
        self._append(op)

    def _went_away(self, err: Exception) -> None:
        if not is_outage(err):
            raise err
        if not self.journal.exists():
            print(
                f"warning: MLflow at {self.uri} does not answer ({_why(err)}); trials train on, "
                f"their MLflow writes kept in {self.folder} and replayed when it answers",
                flush=True,
            )
        self._next_try = time.monotonic() + RETRY_S

    def _append(self, op: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if op["op"] in ("log_artifact", "log_artifacts"):  # the source is often a temp folder
            keep = self.folder / "files" / uuid.uuid4().hex
            source = Path(op["path"])
            if source.is_dir():
                shutil.copytree(source, keep)
            else:
                keep.mkdir(parents=True)
                shutil.copy2(source, keep / source.name)
                keep = keep / source.name
            op = {**op, "path": str(keep)}
        with self.journal.open("a") as f:
            f.write(json.dumps(op) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _apply(self, op: dict[str, Any], ids: dict[str, str]) -> None:
        """One write to the server (run ids created while away mapped to the server's)."""
        from mlflow.entities import Metric, Param, RunTag

        c = self.client
        kind = op["op"]
        if kind == "create_run":
            ids[op["local"]] = self._replay_create(op)
            self._save_ids(ids)
            return
        run_id = op["run_id"]
        run_id = ids.get(run_id, run_id) if run_id.startswith(LOCAL_PREFIX) else run_id
        if kind == "log_batch":
            c.log_batch(
                run_id,
                metrics=[Metric(k, float(v), t, s) for k, v, t, s in op["metrics"]],
                params=[Param(k, v) for k, v in op["params"]],
                tags=[RunTag(k, v) for k, v in op["tags"]],
            )
        elif kind == "set_tag":
            c.set_tag(run_id, op["key"], op["value"])
        elif kind == "update_run":
            c.update_run(run_id, status=op["status"])
        elif kind == "set_terminated":
            c.set_terminated(run_id, status=op["status"])
        elif kind == "log_artifact":
            c.log_artifact(run_id, op["path"], op["artifact_path"])
        elif kind == "log_artifacts":
            c.log_artifacts(run_id, op["path"], op["artifact_path"])
        elif kind == "log_inputs":
            from study import datasets

            datasets.log(c, run_id, op["datasets"])

    def _replay_create(self, op: dict[str, Any]) -> str:
        local = op["local"]
        found = self.client.search_runs(
            [op["experiment_id"]], f"tags.`{OUTBOX_TAG}` = '{local}'", max_results=1
        )
        if found:  # an earlier replay created it and then lost the answer
            return found[0].info.run_id
        run = self.client.create_run(op["experiment_id"], run_name=op["run_name"], tags=op["tags"])
        return run.info.run_id

    def _ops(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        ops = []
        for line in self.journal.read_text().splitlines():
            try:
                ops.append(json.loads(line))
            except json.JSONDecodeError:  # the last line of a driver killed mid-append
                break
        return ops

    def _applied(self) -> int:
        path = self.folder / "applied"
        return int(path.read_text()) if path.exists() else 0

    def _save_applied(self, n: int) -> None:
        _write_atomic(self.folder / "applied", str(n))

    def _ids(self) -> dict[str, str]:
        path = self.folder / "ids.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _save_ids(self, ids: dict[str, str]) -> None:
        _write_atomic(self.folder / "ids.json", json.dumps(ids))

    def _clear(self) -> None:
        """The journal replayed: its ops, files and count go; the id map stays (the trial
        logger may still name a run by the local id it was given)."""
        for name in ("ops.jsonl", "applied"):
            (self.folder / name).unlink(missing_ok=True)
        shutil.rmtree(self.folder / "files", ignore_errors=True)


def _why(err: BaseException) -> str:
    """A few words on why the server did not answer."""
    text = str(err)
    for words in ("Connection refused", "timed out", "Name or service not known"):
        if words.lower() in text.lower():
            return words.lower()
    codes = [c for c in (500, 502, 503, 504) if f"error code {c}" in text]
    return f"HTTP {codes[0]}" if codes else type(err).__name__


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
