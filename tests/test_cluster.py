"""A real two-node Ray cluster on loopback, MLflow on PostgreSQL over HTTP, Optuna in PostgreSQL,
locked as docker/ deploys it: Ray with token authentication, MLflow's basic-auth app, a
PostgreSQL that asks for a password.

Head on 127.0.0.2 and a node on 127.0.0.3, one CPU each; PostgreSQL and the MLflow server
on 127.0.0.1. Tests run in file order on one cluster: the last one kills the node.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from cluster import MlflowServer, Postgres, RayNode, free_port, wait_nodes
from study_helpers import StudyEnv, readable_by_others, wait_for, write_search

pytestmark = pytest.mark.slow

PG_PASSWORD = "Fl41r:s3cr@t/!"  # characters a URL must encode
RAY_TOKEN = secrets.token_hex(32)
MLFLOW_PASSWORD = "mlflow-" + secrets.token_hex(8)  # the basic-auth app wants 12 or more
SECRETS = [PG_PASSWORD, quote(PG_PASSWORD, safe=""), RAY_TOKEN, MLFLOW_PASSWORD]
RAY_TOKEN_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": RAY_TOKEN}
MLFLOW_LOGIN = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD}


class Cluster:
    def __init__(self, root: Path) -> None:
        self.started = time.time()  # Ray's sessions made since are this cluster's
        self.pg = Postgres(password=PG_PASSWORD)
        self.server = None
        self.head = self.node = None
        try:
            self.server = MlflowServer(
                self.pg.url("mlflow"), root / "artifacts", admin_password=MLFLOW_PASSWORD
            )
            self.head = RayNode(
                "127.0.0.2", cpus=1, head_port=free_port("127.0.0.2"), env=RAY_TOKEN_ENV
            )
            self.node = RayNode("127.0.0.3", cpus=1, address=self.head.address, env=RAY_TOKEN_ENV)
            wait_nodes(self.head.address, 2, env=RAY_TOKEN_ENV)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for part in (self.node, self.head, self.server):
            if part is not None:
                part.close()
        self.pg.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    saved = dict(os.environ)
    os.environ.update(MLFLOW_LOGIN)  # this process's MLflow client reads the server back
    yield c
    os.environ.clear()
    os.environ.update(saved)
    c.close()


def argv(env: StudyEnv, cluster: Cluster, *args: str, storage_flag: bool = True) -> list[str]:
    """The driver's command; `storage_flag` False: the Optuna URL comes from $OPTUNA_STORAGE."""
    out = env.argv(
        # the laptop profile's small U-Nets: --address alone would pick the full profile
        "--profile", "laptop", "--image-size", "32", "--concurrency", "2",
        "--address", cluster.head.address, *args,
    )  # fmt: skip
    if storage_flag:
        out += ["--optuna-storage", cluster.pg.url("optuna")]
    out[out.index("--mlflow-uri") + 1] = cluster.server.url
    return out


def study_cmd(
    env: StudyEnv, cluster: Cluster, study: str, trials: int, epochs: int, storage_flag=True
) -> list[str]:
    return argv(
        env, cluster, "--search", "combo_alpha", "--study", study,
        "--trials", str(trials), "--max-epochs", str(epochs), storage_flag=storage_flag,
    )  # fmt: skip


def driver_env(
    env: StudyEnv, cluster: Cluster, ray: bool = True, mlflow: bool = True, **extra: str
) -> dict[str, str]:
    """The driver's environment: the Ray token, the MLflow login and $OPTUNA_STORAGE, as
    docker/ hands them over; `ray=False` / `mlflow=False` leave those keys out."""
    out = {**env.env(), "OPTUNA_STORAGE": cluster.pg.url("optuna")}
    for wanted, keys in ((ray, RAY_TOKEN_ENV), (mlflow, MLFLOW_LOGIN)):
        for key, value in keys.items():
            if wanted:
                out[key] = value
            else:
                out.pop(key, None)
    return {**out, **extra}


def start_driver(env: StudyEnv, cluster: Cluster, cmd: list[str], log: Path):
    with log.open("w") as handle:
        return subprocess.Popen(
            cmd,
            cwd=env.root,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=driver_env(env, cluster),
        )


def server_runs(cluster: Cluster, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(cluster.server.url)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], max_results=1000)


def optuna_study(cluster: Cluster, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=cluster.pg.url("optuna"))


def run(
    env: StudyEnv, cluster: Cluster, cmd: list[str], timeout: float = 1200, **options
) -> subprocess.CompletedProcess:
    """The driver to its end; `options` go to `driver_env`."""
    return subprocess.run(
        cmd,
        cwd=env.root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=driver_env(env, cluster, **options),
    )


def test_the_locked_cluster_refuses_whoever_lacks_its_keys(
    tmp_path: Path, phantom_dir: Path, cluster: Cluster
) -> None:
    """Anonymous MLflow reads get 401; a driver without the Ray token or the MLflow login, or
    with a wrong one, ends in one line and exit 2 before it starts a run."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{cluster.server.url}/api/2.0/mlflow/experiments/search")
    assert refused.value.code == 401
    env = StudyEnv(tmp_path, phantom_dir)
    cmd = study_cmd(env, cluster, "refused", trials=1, epochs=1)
    no_token = run(env, cluster, cmd, ray=False, RAY_NUM_REDIS_GET_RETRIES="2")
    assert no_token.returncode == 2, no_token.stdout + no_token.stderr
    assert no_token.stderr.splitlines() == [
        f"error: --address {cluster.head.address}: the Ray cluster wants a token: set "
        "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN (or a file named by "
        "RAY_AUTH_TOKEN_PATH)"
    ]
    anonymous = run(env, cluster, cmd, mlflow=False)
    assert anonymous.returncode == 2, anonymous.stdout + anonymous.stderr
    assert anonymous.stderr.splitlines() == [
        f"error: --mlflow-uri {cluster.server.url}: the tracking server wants a login: set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    ]
    bad_login = run(env, cluster, cmd, MLFLOW_TRACKING_PASSWORD="not-the-password")
    assert bad_login.stderr.splitlines() == [
        f"error: --mlflow-uri {cluster.server.url}: the tracking server refused user admin "
        "(check MLFLOW_TRACKING_PASSWORD)"
    ]
    bad_token = run(env, cluster, cmd, RAY_AUTH_TOKEN="0" * 64, RAY_NUM_REDIS_GET_RETRIES="2")
    assert bad_token.returncode == 2 and "refused this token" in bad_token.stderr
    # the login in the URL instead: handed to MLflow's client (it gets past MLflow), shown as ***
    in_url = list(cmd)
    at = in_url.index("--mlflow-uri") + 1
    in_url[at] = in_url[at].replace("http://", f"http://admin:{MLFLOW_PASSWORD}@")
    url_login = run(env, cluster, in_url, mlflow=False, ray=False, RAY_NUM_REDIS_GET_RETRIES="2")
    assert "the Ray cluster wants a token" in url_login.stderr, url_login.stderr
    for result in (no_token, anonymous, bad_login, bad_token, url_login):
        shown = result.stdout + result.stderr
        assert not [s for s in SECRETS if s in shown], shown
    runs = server_runs(cluster, "combo_alpha")  # the experiment may be there: no run
    assert not [r for r in runs if r.data.tags.get("study") == "refused"]


def test_a_study_runs_on_both_nodes_and_logs_over_http(
    tmp_path: Path, phantom_dir: Path, cluster: Cluster
) -> None:
    """With the keys it runs on both nodes and logs every run; the PostgreSQL password (given
    in --optuna-storage), the Ray token and the MLflow password are written nowhere."""
    env = StudyEnv(tmp_path, phantom_dir)
    cmd = study_cmd(env, cluster, "two-nodes", trials=4, epochs=3)
    result = run(env, cluster, cmd)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [
        r for r in server_runs(cluster, "combo_alpha") if r.data.tags.get("study") == "two-nodes"
    ]
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(trials) == 4
    assert {r.data.tags["node_ip"] for r in trials} == {"127.0.0.2", "127.0.0.3"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.metrics.get("val_iou") is not None for r in runs)
    assert "report: " in result.stdout
    shown = result.stdout + result.stderr
    assert not [s for s in SECRETS if s in shown], shown
    assert _files_holding(tmp_path, SECRETS) == []  # Tune's pickles, the report, the JSON
    # Ray's copies of Tune's state, in the cluster's own session (named after the head's
    # `ray start`): session_latest is whichever Ray started last here, another test's too
    # (a pid recurs: /tmp/ray keeps the sessions of earlier runs)
    (session,) = [
        s
        for s in Path("/tmp/ray").glob(f"session_*_{cluster.head.proc.pid}")
        if s.stat().st_mtime >= cluster.started
    ]
    assert _files_holding(session, SECRETS[:2]) == []
    assert readable_by_others(tmp_path) == []  # the workers' checkpoints included
    (parent,) = [r for r in runs if r.data.tags.get("role") == "study"]
    assert parent.data.tags["optuna_storage"] == cluster.pg.url("optuna", password=False)
    assert '--optuna-storage "$OPTUNA_STORAGE"' in parent.data.tags["command"]
    for r in runs:
        recorded = " ".join([*r.data.tags.values(), *r.data.params.values()])
        assert not [s for s in SECRETS if s in recorded], r.info.run_name
    _assert_database_holds_no_password(cluster.pg.url("optuna"))


def _files_holding(root: Path, needles: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 200_000_000:
            data = path.read_bytes()
            if any(n.encode() in data for n in needles):
                found.append(str(path))
    return found


def _assert_database_holds_no_password(url: str) -> None:
    """The Optuna ledger (study and trial attributes) holds no password."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        for table in ("study_user_attributes", "trial_user_attributes", "trial_system_attributes"):
            text = " ".join(
                conn.execute(sqlalchemy.text(f"select value_json from {table}")).scalars()
            )
            assert not [s for s in SECRETS if s in text], table
    engine.dispose()


def test_a_scheduled_firing_killed_midway_is_closed_out_by_the_next(
    tmp_path: Path, phantom_dir: Path, cluster: Cluster
) -> None:
    import optuna

    env = StudyEnv(tmp_path, phantom_dir)
    # as the CronJob runs it: the Optuna URL, password and all, from $OPTUNA_STORAGE
    cmd = study_cmd(env, cluster, "nightly", trials=3, epochs=8, storage_flag=False)
    log = tmp_path / "first.log"
    first = start_driver(env, cluster, cmd, log)
    wait_for(log, "trial #", first, timeout=900)
    first.kill()  # the scheduler's pod dies mid-firing
    first.wait(timeout=300)
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # PRUNED: ASHA
    done_before = sum(t.state in ended for t in optuna_study(cluster, "nightly").trials)
    assert done_before >= 1

    second = run(env, cluster, cmd)  # the next firing: the same command
    assert second.returncode == 0, second.stdout + second.stderr
    assert "closed out invocation #1" in second.stdout
    states = Counter(t.state for t in optuna_study(cluster, "nightly").trials)
    assert sum(states[s] for s in ended) == done_before + 3
    assert states[optuna.trial.TrialState.RUNNING] == 0
    runs = [r for r in server_runs(cluster, "combo_alpha") if r.data.tags.get("study") == "nightly"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    numbers = [r.data.tags["optuna_trial"] for r in runs if r.data.tags.get("role") == "trial"]
    assert len(numbers) == len(set(numbers))  # no duplicate run for a trial


LOST = """
description: "U-Nets trained long enough to lose a node mid-trial"
fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}
space:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
trials: 2
asha: {enabled: false, max_epochs: 60}
concurrency: 2
"""


def test_losing_the_worker_node_mid_study(
    tmp_path: Path, phantom_dir: Path, cluster: Cluster
) -> None:

    import optuna

    env = StudyEnv(tmp_path, phantom_dir)
    # no early stopping: laptop-sized trials are quick, and one that ASHA stops can end before
    # the node is lost; each trial runs all its epochs, so the node dies mid-trial
    search = write_search(tmp_path / "lost.yaml", LOST)
    cmd = argv(env, cluster, "--search", str(search), "--study", "lost-node")
    log = tmp_path / "driver.log"
    proc = start_driver(env, cluster, cmd, log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until a trial trains on the node
        assert proc.poll() is None, log.read_text()
        try:
            runs = server_runs(cluster, "lost")
        except Exception:
            runs = []
        if any(
            r.data.tags.get("study") == "lost-node" and r.data.tags.get("node_ip") == "127.0.0.3"
            for r in runs
        ):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no trial trained on the worker node in 300 s:\n{log.read_text()}")
    cluster.node.kill()
    proc.wait(timeout=1200)
    assert proc.returncode == 0, log.read_text()
    runs = [r for r in server_runs(cluster, "lost") if r.data.tags.get("study") == "lost-node"]
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(trials) == 2  # one on each node, at once
    assert not [r for r in runs if r.info.status == "RUNNING"]
    lost = [r for r in trials if r.data.tags.get("node_ip") == "127.0.0.3"]
    assert lost and any(r.data.tags["status"] == "failed" for r in lost), [
        r.data.tags for r in lost
    ]
    assert any(r.data.tags["status"] != "failed" for r in trials)  # finished on the head
    assert not [
        t
        for t in optuna_study(cluster, "lost-node").trials
        if t.state == optuna.trial.TrialState.RUNNING
    ]
