"""The deployment templates in resources/dagster/: each parses, and no secret is written in any
of them: every password, key or token is read from the environment (`env: VAR`), named as a
variable to pass on, or named as a secret of the platform (a Kubernetes Secret, an ARN)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

TEMPLATES = Path(__file__).resolve().parents[1] / "resources" / "dagster"
LAUNCHERS = {
    "k8s.yaml": ("dagster_k8s", "K8sRunLauncher"),
    "docker.yaml": ("dagster_docker", "DockerRunLauncher"),
    "ecs.yaml": ("dagster_aws.ecs", "EcsRunLauncher"),
}
SECRET_WORDS = re.compile(r"password|secret|token|api_?key|access_?key|credential", re.I)
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# What a pasted credential looks like: a provider key, an AWS key id, a URL with a password.
LITERAL_SECRET = re.compile(r"sk-[A-Za-z0-9]|nvapi-|AKIA[0-9A-Z]{12}|://[^/\s:@]+:[^/\s@]+@")


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((TEMPLATES / name).read_text())


def _walk(node: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(path, key, value) of every mapping entry, and ("path[i]", None, item) of list items."""
    out: list[tuple[str, Any, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((f"{path}.{k}", k, v))
            out += _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((f"{path}[{i}]", None, v))
            out += _walk(v, f"{path}[{i}]")
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in TEMPLATES.glob("*.yaml")))
def test_template_parses_and_holds_no_secret(name: str) -> None:
    doc = _load(name)
    assert isinstance(doc, dict) and doc["telemetry"] == {"enabled": False}
    for path, key, value in _walk(doc):
        if isinstance(value, str):
            assert not LITERAL_SECRET.search(value), f"{name}{path}: looks like a credential"
        if key is None or not SECRET_WORDS.search(str(key)):
            continue
        # A secret-named setting: read from the environment, or the NAME of a platform secret.
        if isinstance(value, dict):
            assert set(value) == {"env"} and ENV_NAME.match(value["env"]), f"{name}{path}"
        elif key == "secrets":  # ECS: [{name: VAR, valueFrom: ARN}]
            for item in value:
                assert ENV_NAME.match(item["name"]) and item["valueFrom"].startswith("arn:aws:")
        elif key == "env_secrets" or key.endswith("_secret"):  # Kubernetes Secret names
            names = value if isinstance(value, list) else [value]
            assert all(re.fullmatch(r"[a-z0-9][a-z0-9.-]*", n) for n in names), f"{name}{path}"
        else:
            pytest.fail(f"{name}{path}: a secret-named setting with a literal value")
    for entry in (doc.get("run_launcher") or {}).get("config", {}).get("env_vars", []):
        var, _, literal = entry.partition("=")
        assert ENV_NAME.match(var), f"{name}: env var {entry!r}"
        assert not (literal and SECRET_WORDS.search(var)), f"{name}: {var} given a literal value"
    storage = doc.get("storage", {}).get("postgres", {}).get("postgres_db")
    if storage:
        assert storage["password"] == {"env": "DAGSTER_PG_PASSWORD"}


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_templates_run_many_runs_on_one_shared_instance(name: str) -> None:
    doc = _load(name)
    module, cls = LAUNCHERS[name]
    assert doc["run_launcher"]["module"] == module and doc["run_launcher"]["class"] == cls
    assert doc["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert doc["run_coordinator"]["config"]["max_concurrent_runs"] > 1
    assert "postgres" in doc["storage"]  # a SQLite instance cannot be shared by machines
    text = (TEMPLATES / name).read_text()
    for var in ("DD_ASSETS_ROOT", "DD_ASSETS_LLM_CACHE", "DAGSTER_PG_HOST"):
        assert var in text, f"{name} does not pass {var} to run workers"
