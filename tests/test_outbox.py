"""The driver's MLflow writes survive a server that goes away (study.outbox), against a real
MLflow server stopped for good and brought back on the same port and store."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster import MlflowServer

from study import tracking
from study.outbox import LOCAL_PREFIX, Outbox


def _metric(key: str, value: float, step: int):
    from mlflow.entities import Metric

    return Metric(key, value, 1_700_000_000_000 + step, step)


def test_writes_wait_on_disk_while_the_server_is_away_and_replay_once(tmp_path: Path) -> None:
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    server = MlflowServer(backend, tmp_path / "artifacts")
    try:
        c = tracking.client(server.url)
        experiment = c.create_experiment("outage")
        box = Outbox(server.url, tmp_path / "outbox")
        before = box.create_run(experiment, run_name="before", tags={"k": "v"})
        box.log_batch(before, metrics=[_metric("val_iou", 0.1, 1)])
        assert box.pending() == 0 and not box.journal.exists()  # straight to the server
    finally:
        server.close()  # gone for good, as far as the writes below know

    after = box.create_run(experiment, run_name="after", tags={"k": "w"})
    assert after.startswith(LOCAL_PREFIX)
    pictures = tmp_path / "pictures"  # a temporary folder the caller removes
    pictures.mkdir()
    (pictures / "epoch1.png").write_bytes(b"png")
    for run_id in (before, after):
        box.log_batch(run_id, metrics=[_metric("val_iou", 0.2, 2)])
        box.log_artifacts(run_id, str(pictures), "evolution")
        box.set_tag(run_id, "status", "completed")
        box.set_terminated(run_id, status="FINISHED")
    (pictures / "epoch1.png").unlink()
    assert box.pending() == 9 and not box.flush()  # still away

    back = MlflowServer(backend, tmp_path / "artifacts", port=server.port)
    try:
        assert box.flush() and box.pending() == 0
        journal = box.journal
        box.journal.parent.mkdir(exist_ok=True)
        c = tracking.client(back.url)
        runs = {r.info.run_name: r for r in c.search_runs([experiment])}
        assert set(runs) == {"before", "after"}
        for run in runs.values():
            assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
            history = c.get_metric_history(run.info.run_id, "val_iou")
            assert [(m.step, m.value) for m in history][-1] == (2, 0.2)
            assert [a.path for a in c.list_artifacts(run.info.run_id, "evolution")] == [
                "evolution/epoch1.png"
            ]
        assert not journal.exists()
        # a later write naming the local id reaches the run the replay created
        box.set_tag(after, "late", "yes")
        assert c.get_run(runs["after"].info.run_id).data.tags["late"] == "yes"
    finally:
        back.close()


@pytest.mark.slow
def test_a_replay_cut_short_is_replayed_without_duplicates(tmp_path: Path) -> None:
    """A driver killed after the server took writes but before it recorded them: the next
    replay finds the run it created and logs each metric once."""
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    server = MlflowServer(backend, tmp_path / "artifacts")
    c = tracking.client(server.url)
    experiment = c.create_experiment("cut")
    server.close()
    box = Outbox(server.url, tmp_path / "outbox")
    run_id = box.create_run(experiment, run_name="cut", tags={})
    box.log_batch(run_id, metrics=[_metric("val_iou", 0.3, 1), _metric("val_iou", 0.4, 2)])
    back = MlflowServer(backend, tmp_path / "artifacts", port=server.port)
    try:
        ops = box.journal.read_text()
        assert box.flush()
        box.journal.write_text(ops)  # as if the record of the replay had been lost
        (box.folder / "ids.json").unlink()
        assert box.flush()
        (run,) = c.search_runs([experiment])
        history = c.get_metric_history(run.info.run_id, "val_iou")
        assert [(m.step, m.value) for m in history] == [(1, 0.3), (2, 0.4)]
    finally:
        back.close()
