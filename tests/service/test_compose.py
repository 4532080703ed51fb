"""docker-compose.yml, .env.example and the Dockerfiles: valid and as the deployment issue asks.

No Docker engine runs here, so the compose file is checked against the Compose specification's
JSON schema (the copy check-jsonschema ships, licence Apache-2.0: no network at test time) and
the properties the deployment relies on are asserted one by one, for each profile: "gpu" (the
default, through COMPOSE_PROFILES in .env.example) and "cpu" (no GPU anywhere).
"""

from __future__ import annotations

import copy
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROFILES = ("gpu", "cpu")
WORKERS = ("worker", "worker-cpu")


def active(compose: dict[str, Any], profile: str) -> dict[str, Any]:
    """The services `docker compose --profile <profile> up` starts: those without profiles, and
    those that list it."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if not svc.get("profiles") or profile in svc["profiles"]
    }


def env_example() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(text.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_compose_file_is_valid_against_the_compose_spec(compose, validator) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_check_would_catch_a_mistake(compose, validator) -> None:
    bad = copy.deepcopy(compose)
    bad["services"]["api"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert list(validator.iter_errors(bad))
    bad = copy.deepcopy(compose)
    bad["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["gpus"] = 1
    assert list(validator.iter_errors(bad))


def test_services_and_health_checks(compose) -> None:
    services = compose["services"]
    assert {"api", "worker", "worker-cpu", "postgres", "redis", "migrate"} <= set(services)
    for name in ("api", *WORKERS, "postgres", "redis"):
        hc = services[name]["healthcheck"]
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    for name in WORKERS:
        assert "--check" in services[name]["healthcheck"]["test"]


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_is_a_whole_stack_valid_on_its_own(compose, validator, profile) -> None:
    services = active(compose, profile)
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in validator.iter_errors({**compose, "services": services})
    ]
    assert errors == []
    assert {"postgres", "redis", "migrate", "api"} <= set(services)
    (worker,) = [name for name, svc in services.items() if svc.get("command") == ["worker"]]
    assert worker == {"gpu": "worker", "cpu": "worker-cpu"}[profile]
    for name, svc in services.items():  # nothing waits for a service the profile leaves out
        assert set(svc.get("depends_on", {})) <= set(services), name


def test_profiles_gpu_by_default_and_only_the_workers_have_one(compose) -> None:
    profiled = {n: s["profiles"] for n, s in compose["services"].items() if s.get("profiles")}
    assert profiled == {"worker": ["gpu"], "worker-cpu": ["cpu"]}
    # `docker compose up` reads COMPOSE_PROFILES from .env: the GPU stack, as before profiles.
    assert env_example()["COMPOSE_PROFILES"] == "gpu"


def test_cpu_worker_requests_no_gpu_and_builds_cpu_torch(compose) -> None:
    cpu = compose["services"]["worker-cpu"]
    text = json.dumps(cpu).lower()
    assert "deploy" not in cpu and "gpus" not in cpu and "runtime" not in cpu
    assert "nvidia" not in text and "devices" not in text and "cuda" not in text
    assert cpu["environment"]["LIPWASS_DEVICE"] == "cpu"
    assert cpu["build"]["dockerfile"] == compose["services"]["worker"]["build"]["dockerfile"]
    args = cpu["build"]["args"]
    assert args["BASE_IMAGE"].startswith("ubuntu:")
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    dockerfile = (ROOT / compose["services"]["worker"]["build"]["dockerfile"]).read_text()
    for arg in args:  # an argument the Dockerfile does not declare would be silently ignored
        assert re.search(rf"^ARG {arg}=", dockerfile, re.M), arg
    assert cpu["image"] != compose["services"]["worker"]["image"]  # neither overwrites the other


def test_redis_is_append_only_and_postgres_keeps_a_volume(compose) -> None:
    redis_cmd = compose["services"]["redis"]["command"]
    assert "--appendonly" in redis_cmd
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert any(
        v.endswith(":/var/lib/postgresql/data") for v in compose["services"]["postgres"]["volumes"]
    )
    assert any(v.endswith(":/data") for v in compose["services"]["redis"]["volumes"])


def test_api_and_worker_wait_for_healthy_stores_and_migrations(compose) -> None:
    for name in ("api", *WORKERS):
        dep = compose["services"][name]["depends_on"]
        assert dep["postgres"]["condition"] == "service_healthy"
        assert dep["redis"]["condition"] == "service_healthy"
        assert dep["migrate"]["condition"] == "service_completed_successfully"
        assert compose["services"][name]["environment"]["LIPWASS_MIGRATE_ON_START"] == "false"
    assert compose["services"]["migrate"]["command"] == ["migrate"]


def test_worker_reserves_one_nvidia_gpu(compose) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_api_is_scalable(compose) -> None:
    api = compose["services"]["api"]
    assert "container_name" not in api
    (port,) = api["ports"]
    host_part = port.rsplit(":", 1)[0]
    assert re.search(r"\d+-\d+$", host_part.replace("${LIPWASS_API_PORTS:-", "").rstrip("}"))


def test_blob_volume_is_shared_at_one_path(compose) -> None:
    mounts = {name: compose["services"][name]["volumes"] for name in ("api", *WORKERS)}
    assert all(m == ["blobs:/data"] for m in mounts.values()), mounts
    assert "blobs" in compose["volumes"]


def test_settings_come_from_env_file_and_example_is_safe(compose) -> None:
    for name in ("api", *WORKERS, "migrate"):
        (entry,) = compose["services"][name]["env_file"]
        assert entry["path"] == ".env"
    keys = env_example()
    assert keys["LIPWASS_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert keys["LIPWASS_BROKER_URL"].startswith("redis://")
    assert keys["POSTGRES_PASSWORD"] == "change-me"  # a placeholder, never a real secret
    # Every LIPWASS_* key there is a real setting (a typo would be silently ignored).
    known = {f"LIPWASS_{name.upper()}" for name in Settings.model_fields}
    compose_only = {"LIPWASS_API_BIND", "LIPWASS_API_PORTS", "LIPWASS_IMAGE_TAG"}
    assert {k for k in keys if k.startswith("LIPWASS_")} - known - compose_only == set()
    assert ".env" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.worker"])
def test_dockerfiles_run_as_non_root_with_health_checks_and_no_secrets(name: str) -> None:
    text = (ROOT / "docker" / name).read_text()
    assert re.search(r"^USER [1-9]\d*:[1-9]\d*$", text, re.M)  # numeric: checkable as non-root
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"PASSWORD|SECRET|TOKEN|LIPWASS_DATABASE_URL", code, re.I)
    assert re.search(r"pip install \"torch==\$\{TORCH_VERSION\}\" --index-url", text)
    torch_at = text.index("torch==")
    assert torch_at < text.index('pip install ".[service]"')  # torch first, then the project


def test_images_pick_their_torch_flavour() -> None:
    api = (ROOT / "docker" / "Dockerfile.api").read_text()
    worker = (ROOT / "docker" / "Dockerfile.worker").read_text()
    assert api.startswith("#") and "FROM python:3.11-slim" in api
    assert "download.pytorch.org/whl/cpu" in api
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\S+-runtime-", worker, re.M)
    assert re.search(r"TORCH_INDEX=https://download.pytorch.org/whl/cu\d+", worker)


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.worker"])
def test_dockerfiles_copy_paths_that_exist(name: str) -> None:
    text = (ROOT / "docker" / name).read_text()
    sources = [
        src
        for line in text.splitlines()
        if line.startswith("COPY ")
        for src in [p for p in line.split()[1:-1] if not p.startswith("--")]
    ]
    assert "docker/entrypoint.sh" in sources
    for src in sources:
        assert (ROOT / src).exists(), src
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not any(src.split("/")[0] in ignored for src in sources)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["api"], {}, "serve --host 0.0.0.0 --port 8000"),
        (["api"], {"LIPWASS_PORT": "9000"}, "serve --host 0.0.0.0 --port 9000"),
        (["worker"], {}, "worker"),
        (["worker"], {"LIPWASS_GPU": "1"}, "worker --gpu 1"),
        (["worker", "--check"], {}, "worker --check"),
        (["migrate"], {}, "migrate"),
    ],
)
def test_entrypoint_dispatches_roles(tmp_path: Path, args, env, expected) -> None:
    import os
    import subprocess

    stub = tmp_path / "lipwass"
    stub.write_text('#!/bin/sh\necho "$@"\n')
    stub.chmod(0o755)
    run_env = {"PATH": f"{tmp_path}:/usr/bin:/bin", **env}
    out = subprocess.run(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), *args],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert out.stdout.strip() == expected
    assert os.access(ROOT / "docker" / "entrypoint.sh", os.X_OK)
