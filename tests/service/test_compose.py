"""docker-compose.yml, .env.example and the Dockerfiles: valid and as the deployment issue asks.

The static half: the compose file is checked against the Compose specification's JSON schema
(the copy check-jsonschema ships, licence Apache-2.0: no network at test time) and the
properties the deployment relies on are asserted one by one, for each profile: "gpu" (the
default, through COMPOSE_PROFILES in .env.example) and "cpu" (no GPU anywhere). Fast, and with
no engine. tests/deploy builds the images and runs the stack under a Docker engine.
"""

from __future__ import annotations

import copy
import json
import os
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


def test_cpu_worker_requests_no_gpu_and_shares_the_api_build(compose) -> None:
    services = compose["services"]
    cpu = services["worker-cpu"]
    text = json.dumps(cpu).lower()
    assert "deploy" not in cpu and "gpus" not in cpu and "runtime" not in cpu
    assert "nvidia" not in text and "devices" not in text and "cuda" not in text
    assert cpu["environment"]["LIPWASS_DEVICE"] == "cpu"
    # The API's Dockerfile and arguments (its defaults: CPU torch), target worker: the two images
    # share every layer.
    api = services["api"]["build"]
    assert (
        cpu["build"]["dockerfile"] == api["dockerfile"] == services["worker"]["build"]["dockerfile"]
    )
    assert cpu["build"].get("args", {}) == api.get("args", {}) == {}
    assert (cpu["build"]["target"], api["target"]) == ("worker", "api")
    assert services["worker"]["build"]["target"] == "worker"
    images = {services[n]["image"] for n in ("api", "worker", "worker-cpu")}
    assert len(images) == 3  # none overwrites another


def test_gpu_worker_builds_on_cuda_with_cuda_torch(compose) -> None:
    args = compose["services"]["worker"]["build"]["args"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu\S+", args["BASE_IMAGE"])
    cuda = re.search(r":(\d+)\.(\d+)", args["BASE_IMAGE"])
    assert cuda
    # The torch wheels' CUDA is the base image's (cu128 on 12.8.x).
    assert args["TORCH_INDEX"] == f"https://download.pytorch.org/whl/cu{cuda[1]}{cuda[2]}"
    dockerfile = (ROOT / compose["services"]["worker"]["build"]["dockerfile"]).read_text()
    for arg in args:  # an argument the Dockerfile does not declare would be silently ignored
        assert re.search(rf"^ARG {arg}=", dockerfile, re.M), arg


def test_compose_1_29_can_read_the_file(compose) -> None:
    """Compose 1.29 (Debian 12's and Ubuntu 22.04's docker-compose) rejects a top-level name and
    the long form of env_file; tests/deploy runs the stack under it."""
    assert "name" not in compose and "version" not in compose
    for name, svc in compose["services"].items():
        if "env_file" in svc:
            assert isinstance(svc["env_file"], str), name
    assert env_example()["COMPOSE_PROJECT_NAME"] == "lipwass"


def test_local_override_builds_every_image_from_the_debian_base(compose) -> None:
    local = yaml.safe_load((ROOT / "tests" / "deploy" / "compose.local.yml").read_text())
    assert set(local["services"]) == {"postgres", "redis", "migrate", "api", "worker-cpu"}
    for name, svc in local["services"].items():
        assert svc["build"]["args"]["BASE_IMAGE"].startswith("${LIPWASS_DEBIAN_IMAGE:-"), name
        dockerfile = (ROOT / svc["build"]["dockerfile"]).read_text()
        for arg in svc["build"]["args"]:
            assert re.search(rf"^ARG {arg}=", dockerfile, re.M), (name, arg)
        if name in compose["services"] and "build" in compose["services"][name]:
            assert svc["build"]["target"] == compose["services"][name]["build"]["target"]
            assert svc["build"]["args"]["PIP_NO_INDEX"] == "1"
    # The stand-ins keep the official images' volume paths.
    assert local["services"]["postgres"]["image"] != compose["services"]["postgres"]["image"]
    assert (
        'VOLUME ["/var/lib/postgresql/data"]' in (ROOT / "docker/Dockerfile.postgres").read_text()
    )
    assert 'VOLUME ["/data"]' in (ROOT / "docker/Dockerfile.redis").read_text()


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
        # .env by default; LIPWASS_ENV_FILE names another (tests/deploy: a file of its own).
        assert compose["services"][name]["env_file"] == "${LIPWASS_ENV_FILE:-.env}"
    keys = env_example()
    # No default password anywhere: empty in .env.example, required (:?) where compose uses it.
    assert keys["POSTGRES_PASSWORD"] == "" and keys["REDIS_PASSWORD"] == ""
    text = COMPOSE.read_text()
    assert "${POSTGRES_PASSWORD:-" not in text and "${REDIS_PASSWORD:-" not in text
    urls = compose["x-store-urls"]
    assert urls["LIPWASS_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "${POSTGRES_PASSWORD:?" in urls["LIPWASS_DATABASE_URL"]
    assert urls["LIPWASS_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    for name in ("api", *WORKERS, "migrate"):  # every lipwass process gets both URLs
        env = compose["services"][name]["environment"]
        assert {k: env[k] for k in urls} == urls, name
    redis = compose["services"]["redis"]
    assert "--requirepass" in redis["command"] and "REDISCLI_AUTH" in redis["environment"]
    # Every LIPWASS_* key there is a real setting (a typo would be silently ignored).
    known = {f"LIPWASS_{name.upper()}" for name in Settings.model_fields}
    compose_only = {"LIPWASS_API_BIND", "LIPWASS_API_PORTS", "LIPWASS_IMAGE_TAG"}
    assert keys["LIPWASS_API_KEYS"] == ""  # no well-known key: the operator makes one
    assert {k for k in keys if k.startswith("LIPWASS_")} - known - compose_only == set()
    assert ".env" in (ROOT / ".gitignore").read_text().split()


DOCKERFILES = ["Dockerfile", "Dockerfile.postgres", "Dockerfile.redis"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfiles_run_as_non_root_with_health_checks_and_no_secrets(name: str) -> None:
    text = (ROOT / "docker" / name).read_text()
    assert re.search(r"^USER [1-9]\d*:[1-9]\d*$", text, re.M)  # numeric: checkable as non-root
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"PASSWORD|SECRET|TOKEN|LIPWASS_DATABASE_URL|API_KEYS", code, re.I)
    # The base is an argument (hosts without Docker Hub build on a base of their own).
    assert re.search(r"^ARG BASE_IMAGE=\S+$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)


def stages(text: str) -> dict[str, str]:
    """The Dockerfile's stages by name: the text from each FROM to the next."""
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    return {re.match(r"FROM \S+ AS (\S+)", p)[1]: p for p in parts[1:]}  # type: ignore[index]


def test_the_images_targets_torch_and_wheelhouse() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    st = stages(text)
    assert list(st)[-1] == "api"  # the default target
    assert {"worker", "api"} <= set(st)
    # Both final stages add metadata only (no layer): the API and the CPU worker share them all.
    for target in ("worker", "api"):
        assert st[target].startswith("FROM runtime AS")
        assert not re.search(r"^(RUN|COPY|ADD) ", st[target], re.M), target
    assert "/service.worker" not in st["api"] and "--check" in st["worker"]
    assert "/healthz" in st["api"] and 'CMD ["api"]' in st["api"]
    # torch first (from TORCH_INDEX), then the dependencies, then lipwass without them.
    deps = st["deps"]
    assert re.search(
        r'pip install --find-links /wheels "torch==\$\{TORCH_VERSION\}" --index-url', deps
    )
    assert deps.index("torch==") < deps.index("-r /src/requirements.txt")
    assert "pip install --no-deps --no-index /tmp/dist/*.whl" in st["runtime"]
    assert "pip check" in st["runtime"]
    # The wheelhouse is a build stage's only: never in the runtime image.
    assert "/wheels" not in st["runtime"] + st["api"] + st["worker"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfiles_copy_paths_that_exist(name: str) -> None:
    text = (ROOT / "docker" / name).read_text()
    sources = [
        src
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for src in [p for p in line.split()[1:-1] if not p.startswith("--")]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        if src.endswith(".sh"):  # entry points: COPY keeps the mode git gave them
            assert os.access(ROOT / src, os.X_OK), src
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not any(src.split("/")[0] in ignored for src in sources)
    if name == "Dockerfile":
        assert "docker/entrypoint.sh" in sources


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
