"""The compose stack, for real: both images built, the stack up under a Docker engine, used
through the API's published port, a worker killed mid-job, `down` and `up` again.

The engine: scripts/docker-engine starts one (installing Debian's docker.io, Compose v2 and
Compose 1.29 when missing) and the module stops it afterwards if it started it. Without an
engine (not root, no apt-get...) the module is skipped with the reason, except under CI=true,
where it fails. LIPWASS_DEPLOY_TESTS=0 skips it on purpose (outside CI).

The images: built here from Debian's packages (tests/deploy/compose.local.yml over
docker-compose.yml, on the Debian base and the wheelhouse of scripts/docker-local): Docker Hub
is not reachable from this project's machines. The profile is "cpu"; the GPU worker (CUDA base)
is not built here. Traffic goes to 127.0.0.1 only (the API's published port) and inside the
stack's own network.

The tests run in file order on one stack (module fixtures); each says what it checks. Timings
go to stderr (`pytest -s`) and, with LIPWASS_DEPLOY_REPORT=path, to a JSON file.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "lipwass-e2e"
TAG = "e2e"
FILES = ["-f", "docker-compose.yml", "-f", "tests/deploy/compose.local.yml"]
UID = "10001"

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.timeout(1800)]

TIMINGS: dict[str, float] = {}


def note(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 1)
    print(f"deploy: {name}: {seconds:.1f} s", file=sys.stderr)


def run(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {out.returncode}\n--- stdout\n{out.stdout[-4000:]}"
            f"\n--- stderr\n{out.stderr[-4000:]}"
        )
    return out


# --- the engine -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    ci = os.environ.get("CI") == "true"
    if os.environ.get("LIPWASS_DEPLOY_TESTS") == "0" and not ci:
        pytest.skip("LIPWASS_DEPLOY_TESTS=0")
    already = run(["scripts/docker-engine", "status"], check=False).returncode == 0
    t = time.monotonic()
    started = run(["scripts/docker-engine", "start"], check=False, timeout=900)
    if started.returncode != 0:
        reason = f"no Docker engine could be started: {started.stderr.strip()[-1500:]}"
        if ci:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    note("engine start (and installs)", time.monotonic() - t)
    yield
    if not already:
        run(["scripts/docker-engine", "stop"], check=False, timeout=120)


# --- the stack --------------------------------------------------------------------------------


class Stack:
    """`docker compose` on this module's project, env file and compose files."""

    def __init__(self, env_file: Path, api_key: str, compose: list[str]) -> None:
        self.env_file = env_file
        self.api_key = api_key
        self.compose_cmd = compose
        self.env = {**os.environ, "LIPWASS_ENV_FILE": str(env_file)}
        for key in list(self.env):  # the env file decides, not the caller's shell
            if key.startswith(("COMPOSE_", "LIPWASS_")) and key != "LIPWASS_ENV_FILE":
                del self.env[key]

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            *self.compose_cmd,
            "--env-file",
            str(self.env_file),
            "-p",
            PROJECT,
            *FILES,
            "--profile",
            "cpu",
            *args,
        ]
        return run(cmd, env=self.env, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        out = self.compose("ps", "-a", "-q", service).stdout.split()
        assert len(out) == 1, (service, out)
        return out[0]

    def inspect(self, service: str) -> dict[str, Any]:
        cid = self.container(service)
        return json.loads(run(["docker", "inspect", cid]).stdout)[0]

    def url(self) -> str:
        port = self.compose("port", "api", "8000").stdout.strip()
        host, _, number = port.rpartition(":")
        assert host == "127.0.0.1", port  # published on loopback only
        return f"http://127.0.0.1:{number}"

    def client(self, key: str | None = "default") -> httpx.Client:
        headers = {}
        if key is not None:
            headers["Authorization"] = f"Bearer {self.api_key if key == 'default' else key}"
        return httpx.Client(base_url=self.url(), headers=headers, timeout=30)

    def up(self) -> float:
        t = time.monotonic()
        self.compose("up", "-d", "--wait", "--wait-timeout", "300", timeout=420)
        return time.monotonic() - t


def write_env_file(path: Path, api_key: str) -> None:
    """.env.example with what an operator sets: passwords, a key, the cpu profile; shorter
    leases than the default so that the killed worker's job runs again sooner."""
    password = secrets.token_urlsafe(16)
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        if key == "POSTGRES_PASSWORD":
            line = f"POSTGRES_PASSWORD={password}"
        elif key == "REDIS_PASSWORD":
            line = f"REDIS_PASSWORD={secrets.token_urlsafe(16)}"
        elif key in (
            "COMPOSE_PROFILES",
            "COMPOSE_PROJECT_NAME",
            "LIPWASS_API_KEYS",
            "LIPWASS_LEASE_S",
            "LIPWASS_HEARTBEAT_S",
        ):
            continue
        lines.append(line)
    lines += [
        f"COMPOSE_PROJECT_NAME={PROJECT}",
        "COMPOSE_PROFILES=cpu",
        f"LIPWASS_IMAGE_TAG={TAG}",
        "LIPWASS_API_PORTS=28000-28049",
        f"LIPWASS_API_KEYS=e2e:read+write+admin:{api_key}",
        "LIPWASS_LEASE_S=10",
        "LIPWASS_HEARTBEAT_S=2",
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


@pytest.fixture(scope="module")
def stack(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    api_key = secrets.token_urlsafe(32)
    env_file = tmp_path_factory.mktemp("deploy") / "e2e.env"
    write_env_file(env_file, api_key)
    s = Stack(env_file, api_key, ["docker", "compose"])
    s.compose("down", "--volumes", "--remove-orphans", check=False)  # a killed run's leftovers
    t = time.monotonic()
    run(["scripts/docker-local"], timeout=900)
    note("base image and wheelhouse (scripts/docker-local)", time.monotonic() - t)
    t = time.monotonic()
    s.compose("build", timeout=1500)
    note("compose build (api, worker-cpu, postgres, redis)", time.monotonic() - t)
    try:
        yield s
    finally:
        logs = s.compose("logs", "--no-color", "--tail", "60", check=False).stdout
        s.compose("down", "--volumes", "--remove-orphans", timeout=180, check=False)
        if report := os.environ.get("LIPWASS_DEPLOY_REPORT"):
            Path(report).write_text(json.dumps(TIMINGS, indent=2) + "\n")
        print(f"deploy timings: {TIMINGS}\n--- last logs\n{logs[-6000:]}", file=sys.stderr)


def samples(shift: float, n: int = 400, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)) + np.array([shift, 0.0])
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def upload(client: httpx.Client, data: bytes, name: str) -> str:
    r = client.post(
        "/v1/datasets",
        params={"name": name},
        content=data,
        headers={"Content-Type": "application/x-npy"},
    )
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def wait_for(client: httpx.Client, est_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        est = client.get(f"/v1/estimates/{est_id}").json()
        if est["status"] in ("succeeded", "failed", "cancelled"):
            return dict(est)
        time.sleep(1)
    raise AssertionError(f"{est_id} not finished after {timeout} s: {est}")


STATE: dict[str, Any] = {}


# --- the tests, in order ----------------------------------------------------------------------


def test_images_share_their_layers_and_hold_no_secret(stack: Stack) -> None:
    api = json.loads(run(["docker", "image", "inspect", f"lipwass-api:{TAG}"]).stdout)[0]
    worker = json.loads(run(["docker", "image", "inspect", f"lipwass-worker-cpu:{TAG}"]).stdout)[0]
    # The CPU worker is the API image plus metadata: every layer shared, none stored twice.
    assert api["RootFS"]["Layers"] == worker["RootFS"]["Layers"]
    sizes = {}
    for name in ("api", "worker-cpu", "postgres", "redis"):
        info = json.loads(run(["docker", "image", "inspect", f"lipwass-{name}:{TAG}"]).stdout)[0]
        sizes[name] = info["Size"]
        TIMINGS[f"image {name} MB"] = round(info["Size"] / 1e6)
        env = " ".join(info["Config"]["Env"] or [])
        assert "PASSWORD" not in env and "API_KEYS" not in env and "DATABASE_URL" not in env
    print(
        f"deploy: image sizes (MB): { {k: round(v / 1e6) for k, v in sizes.items()} }",
        file=sys.stderr,
    )
    assert sizes["api"] < 2.5e9  # CPU torch, no CUDA libraries
    assert api["Config"]["User"] == f"{UID}:{UID}" == worker["Config"]["User"]
    assert worker["Config"]["Cmd"] == ["worker"] and api["Config"]["Cmd"] == ["api"]


def test_stack_comes_up_healthy_after_one_migration(stack: Stack) -> None:
    seconds = stack.up()
    note("up --wait (cold volumes)", seconds)
    migrate = stack.inspect("migrate")
    assert migrate["State"]["Status"] == "exited" and migrate["State"]["ExitCode"] == 0
    assert "database at head" in stack.compose("logs", "--no-color", "migrate").stdout
    version = stack.compose(
        "exec",
        "-T",
        "postgres",
        "sh",
        "-c",
        'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "select version_num from alembic_version"',
    ).stdout.split()
    assert len(version) == 1, version  # the schema, at one revision
    for service in ("api", "worker-cpu", "postgres", "redis"):
        state = stack.inspect(service)["State"]
        assert state["Health"]["Status"] == "healthy", (service, state)
    # The API and the worker started after the migration had finished.
    done = migrate["State"]["FinishedAt"]
    for service in ("api", "worker-cpu"):
        assert stack.inspect(service)["State"]["StartedAt"] > done, service
    with stack.client() as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
    with stack.client(key=None) as c:  # the API refuses anyone without a key
        assert c.get("/v1/datasets").status_code == 401


def test_processes_run_as_the_non_root_user_and_share_the_blob_volume(stack: Stack) -> None:
    for service in ("api", "worker-cpu"):
        ids = stack.compose("exec", "-T", service, "id", "-u").stdout.strip()
        assert ids == UID, service
        # Every process of the container (tini as PID 1 included), not only the exec'd one.
        ps = stack.compose("top", service).stdout
        assert " root " not in ps and "\nroot " not in ps, ps
    probe = f".probe-{secrets.token_hex(4)}"
    stack.compose("exec", "-T", "api", "sh", "-c", f"echo api >/data/{probe}")
    out = stack.compose(
        "exec",
        "-T",
        "worker-cpu",
        "sh",
        "-c",
        f"cat /data/{probe} && echo worker >>/data/{probe} && stat -c %u /data",
    )
    assert out.stdout.split() == ["api", UID]
    stack.compose("exec", "-T", "api", "rm", f"/data/{probe}")


def test_an_estimate_through_the_published_port(stack: Stack) -> None:
    with stack.client() as c:
        source = upload(c, samples(0.0, seed=1), "source")
        target = upload(c, samples(1.0, seed=2), "target")
        t = time.monotonic()
        r = c.post(
            "/v1/estimates", json={"source": source, "target": target, "config": {"steps": 400}}
        )
        assert r.status_code == 202, r.text
        est = wait_for(c, r.json()["id"])
        note("first estimate (n=400, d=2, 400 steps) on the CPU worker", time.monotonic() - t)
    assert est["status"] == "succeeded", est
    result = est["result"]
    assert result["device"] == "cpu"
    assert result["exact"] is not None
    assert result["lower_bound"] <= result["exact"]["value"] * (1 + 1e-9)
    # The shift is 1; the statistics are tests/lipcore's business: here, a sane number.
    assert 0.5 < result["distance"]["value"] < 2.0, result["distance"]
    assert result["verdict"]["differ"] is True
    STATE.update(source=source, target=target, first=est["id"], w1=result["w1"])


def test_a_key_created_with_compose_run_is_accepted(stack: Stack) -> None:
    """The README's way to keys without .env: `lipwass keys create` in a one-off container."""
    out = stack.compose(
        "run",
        "--rm",
        "-T",
        "api",
        "lipwass",
        "keys",
        "create",
        "--tenant",
        "ops",
        "--scopes",
        "read",
    )
    key = out.stdout.strip().splitlines()[-1]
    assert len(key) >= 32, out.stdout
    with stack.client(key=key) as c:
        listed = c.get("/v1/datasets")
        assert listed.status_code == 200, listed.text
        assert listed.json()["items"] == []  # another tenant: the e2e tenant's data is not its
        assert c.post("/v1/datasets", json={"samples": [[0.0]]}).status_code == 403  # read only


def start_long_job(c: httpx.Client, seed: int) -> str:
    """A job of some 10 s on this machine, returned once it is running (step 20 or more)."""
    r = c.post(
        "/v1/estimates",
        json={
            "source": STATE["source"],
            "target": STATE["target"],
            "seed": seed,
            "config": {"steps": 2000, "patience": 0, "min_steps": 2000},
        },
    )
    assert r.status_code == 202, r.text
    est_id = str(r.json()["id"])
    deadline = time.monotonic() + 120
    while True:
        est = c.get(f"/v1/estimates/{est_id}").json()
        if est["status"] == "running" and (est["progress"] or {}).get("step", 0) >= 20:
            return est_id
        assert est["status"] in ("queued", "running"), est
        assert time.monotonic() < deadline, f"the job never ran: {est}"
        time.sleep(0.5)


def wait_healthy(stack: Stack, service: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (state := stack.inspect(service)["State"]).get("Health", {}).get("Status") != "healthy":
        assert time.monotonic() < deadline, (service, state)
        time.sleep(1)


def test_docker_kill_of_the_worker_mid_job_then_a_restart_finishes_the_job(stack: Stack) -> None:
    """`docker kill` is an operator's stop: Docker does not restart the container by itself
    (restart policies skip manual stops). The job's lease expires, the reaper queues it again,
    and `up` brings the worker back, which runs it to the end (attempt 2)."""
    with stack.client() as c:
        est_id = start_long_job(c, seed=1)
        worker = stack.inspect("worker-cpu")
        t = time.monotonic()
        run(["docker", "kill", worker["Id"]])  # SIGKILL: no grace, the lease is orphaned
        deadline = time.monotonic() + 60
        while (est := c.get(f"/v1/estimates/{est_id}").json())["status"] != "queued":
            assert est["status"] == "running", est
            assert time.monotonic() < deadline, f"the dead worker's job was not queued again: {est}"
            time.sleep(0.5)
        note("docker kill: the job queued again after", time.monotonic() - t)
        assert stack.inspect("worker-cpu")["State"]["Status"] == "exited"
        stack.compose("up", "-d", "--wait", "--wait-timeout", "120", timeout=180)
        est = wait_for(c, est_id, timeout=300)
        note("docker kill: kill to succeeded, with `up`", time.monotonic() - t)
    assert est["status"] == "succeeded", est
    assert est["attempt"] == 2, est  # run again, from the start
    assert est["result"]["steps"] == 2000


def test_a_worker_that_dies_mid_job_is_restarted_and_finishes_the_job(stack: Stack) -> None:
    """A crash (the container's processes SIGKILLed from outside, as the kernel's OOM killer
    would): the restart policy brings the worker back by itself, and the job finishes."""
    with stack.client() as c:
        est_id = start_long_job(c, seed=2)
        before = stack.inspect("worker-cpu")
        t = time.monotonic()
        os.kill(before["State"]["Pid"], 9)  # the container's PID 1 (docker-init): all of it dies
        est = wait_for(c, est_id, timeout=300)
        note("crash: kill to succeeded, restarted by the policy", time.monotonic() - t)
    after = stack.inspect("worker-cpu")
    assert after["Id"] == before["Id"]  # the same container, restarted by its restart policy
    assert after["RestartCount"] == before["RestartCount"] + 1
    assert est["status"] == "succeeded", est
    assert est["attempt"] == 2, est
    wait_healthy(stack, "worker-cpu")
    STATE["killed"] = est_id


def test_down_and_up_again_lose_nothing(stack: Stack) -> None:
    with stack.client() as c:
        datasets = c.get("/v1/datasets").json()
        estimates = c.get("/v1/estimates").json()
        potential = c.get(f"/v1/estimates/{STATE['first']}/potential")
        assert potential.status_code == 200
    t = time.monotonic()
    stack.compose("down", timeout=180)  # containers and network go; the volumes stay
    assert stack.compose("ps", "-a", "-q").stdout.strip() == ""
    note("down", time.monotonic() - t)
    note("up --wait (warm volumes)", stack.up())
    with stack.client() as c:
        assert c.get("/v1/datasets").json() == datasets
        assert c.get("/v1/estimates").json() == estimates
        first = c.get(f"/v1/estimates/{STATE['first']}").json()
        assert first["status"] == "succeeded" and first["result"]["w1"] == STATE["w1"]
        again = c.get(f"/v1/estimates/{STATE['first']}/potential")
        assert again.status_code == 200 and again.content == potential.content  # blob volume
        values = c.post(
            f"/v1/estimates/{STATE['first']}/evaluate", json={"points": [[0.0, 0.0], [1.0, 0.0]]}
        )
        assert values.status_code == 200, values.text
        assert len(values.json()["values"]) == 2
        # A new job runs on the new worker, with the datasets kept on the volume.
        r = c.post(
            "/v1/estimates",
            json={
                "source": STATE["source"],
                "target": STATE["target"],
                "seed": 2,
                "config": {"steps": 200},
            },
        )
        assert r.status_code == 202, r.text
        assert wait_for(c, r.json()["id"])["status"] == "succeeded"


def test_compose_1_29_runs_the_same_files(stack: Stack) -> None:
    """Debian 12's and Ubuntu 22.04's docker-compose (1.29): the same files, the images built
    above; the stack comes up healthy and answers. Then everything goes, volumes too."""
    if shutil.which("docker-compose") is None:
        pytest.skip("no docker-compose (1.29) on this machine")
    version = run(["docker-compose", "version", "--short"]).stdout.strip()
    if not version.startswith("1."):
        pytest.skip(f"docker-compose is {version}, not Compose 1.x")
    stack.compose("down", timeout=180)  # the v2 stack's containers; volumes stay
    old = Stack(stack.env_file, stack.api_key, ["docker-compose"])
    for profile in ("gpu", "cpu"):  # the main file alone, as an operator runs it
        run(
            [
                "docker-compose",
                "--env-file",
                str(stack.env_file),
                "-f",
                "docker-compose.yml",
                "--profile",
                profile,
                "config",
                "-q",
            ],
            env=old.env,
        )
    t = time.monotonic()
    old.compose("up", "-d", "--no-build", timeout=300)
    deadline = time.monotonic() + 300
    while True:
        health = {
            s: old.inspect(s)["State"].get("Health", {}).get("Status")
            for s in ("api", "worker-cpu", "postgres", "redis")
        }
        if set(health.values()) == {"healthy"}:
            break
        assert time.monotonic() < deadline, health
        time.sleep(2)
    note("Compose 1.29: up until healthy", time.monotonic() - t)
    with old.client() as c:
        assert c.get("/readyz").json()["status"] == "ready"
        assert c.get(f"/v1/estimates/{STATE['first']}").json()["status"] == "succeeded"
    old.compose("down", "--volumes", timeout=180)
