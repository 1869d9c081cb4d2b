"""`flairseg.predict --model models:/NAME@champion` (or `models:/NAME/3`): the checkpoint of a
registered model, fetched from MLflow's model registry.

`flairseg` imports no MLflow: it finds `fetch` through the entry point group
`flairseg.model_uris` (pyproject.toml), by the URI's scheme. A model that study.register
logged carries its checkpoint as `extra_files/state.pt`, which predict reads as it reads
`--checkpoint` (weights only: no code is unpickled). The store: $MLFLOW_TRACKING_URI, else
./mlflow.db, as for `python -m study.run`.
"""

from __future__ import annotations

import re
from pathlib import Path

from flairseg.errors import ConfigError
from study import schema, secrets, tracking

URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
CHECKPOINT = "extra_files/state.pt"


def fetch(uri: str, folder: str) -> str:
    """The local path of the registered model's checkpoint, downloaded into `folder`."""
    from mlflow.exceptions import MlflowException

    found = URI.match(uri)
    if found is None:
        raise ConfigError(f"--model {uri}: give models:/NAME@ALIAS or models:/NAME/VERSION")
    store = secrets.take(schema.default_uri(), "MLFLOW_TRACKING_URI")  # shown without it
    name, alias, version = found["name"], found["alias"], found["version"]
    where = f"in {secrets.scrub(store)} (set MLFLOW_TRACKING_URI to the study's store)"
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--model {uri}: no MLflow store {where}")
    c = tracking.client(store)
    try:
        with tracking.quick_failures(20):
            model = c.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ConfigError(f"--model {uri}: no registered model {name} {where}") from None
        raise ConfigError(f"--model {uri}: {secrets.first_line(err)} ({where})") from None
    except Exception as err:  # an unreachable store: SQLAlchemy's or requests' errors
        raise ConfigError(
            f"--model {uri}: cannot read the registry ({secrets.first_line(err)}) {where}"
        ) from None
    if alias and alias not in model.aliases:
        have = ", ".join(sorted(model.aliases)) or "none"
        raise ConfigError(f"--model {uri}: model {name} has no alias {alias} (it has: {have})")
    try:
        mv = (
            c.get_model_version_by_alias(name, alias)
            if alias
            else c.get_model_version(name, version)
        )
    except MlflowException:
        raise ConfigError(f"--model {uri}: model {name} has no version {version}") from None
    import mlflow.artifacts

    try:
        with tracking.env({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{mv.version}/{CHECKPOINT}",
                dst_path=folder,
                tracking_uri=store,
            )
    except Exception as err:
        raise ConfigError(
            f"--model {uri}: version {mv.version} has no flairseg checkpoint "
            f"({secrets.first_line(err)})"
        ) from None
    return local
