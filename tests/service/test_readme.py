"""README.md, run: every ```bash, ```sh and ```python block, in order, against a real server.

A block the test cannot run here (a server that never returns, docker compose, a GPU, a fresh
installation) carries a visible marker on the line before it: ``<!-- not run: why -->``; only
those are skipped, and there must be few of them. The shell blocks run in one bash process (so
the variables one block sets serve the next), then the Python blocks in one namespace, all
against a `lipwass serve` on a free loopback port with a temporary data folder: the README's
``$LIPWASS_SERVER`` (default ``http://127.0.0.1:8000``) is set to it. Output blocks (```json, or
no language) are not compared, but the estimator defaults the README prints are.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import lipcore

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUN_LANGS = {"bash": "sh", "sh": "sh", "python": "python"}
MARKER = re.compile(r"^<!--\s*not run:\s*(?P<why>.*?)\s*-->$")
MAX_SKIPPED = 5
DEFAULT_SERVER = "export LIPWASS_SERVER=${LIPWASS_SERVER:-http://127.0.0.1:8000}"


@dataclass(frozen=True)
class Block:
    lang: str  # the fence's info string: bash, sh, python, json, "" ...
    line: int  # 1-based line of the opening fence
    code: str  # dedented to the fence's indentation
    skip: str | None  # the reason of a `<!-- not run: ... -->` marker right before it

    @property
    def kind(self) -> str | None:
        """Which runner takes the block ("sh", "python"); None for an output or other block."""
        return RUN_LANGS.get(self.lang)


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, with the `not run` marker that precedes it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    previous = ""  # the last non-blank line outside a block
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            indent = len(lines[i]) - len(lines[i].lstrip())
            lang = stripped[3:].strip().split(" ")[0].lower()
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
                i += 1
            assert i < len(lines), f"README.md:{start + 1}: unclosed code block"
            m = MARKER.match(previous)
            blocks.append(Block(lang, start + 1, "\n".join(body) + "\n", m["why"] if m else None))
            previous = ""
        elif stripped:
            previous = stripped
        i += 1
    return blocks


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
    return parse_blocks(README.read_text())


def test_markers_are_explicit_and_few(blocks: list[Block]) -> None:
    text = README.read_text()
    assert text.count("<!-- not run:") == sum(b.skip is not None for b in blocks), (
        "every `<!-- not run: ... -->` marker sits on the line right before a code block"
    )
    skipped = [b for b in blocks if b.skip is not None]
    for b in skipped:
        assert b.kind is not None, f"README.md:{b.line}: a marker on a block that never runs"
        assert len(b.skip) >= 10, f"README.md:{b.line}: say why the block is not run"
    assert 1 <= len(skipped) <= MAX_SKIPPED, [(b.line, b.skip) for b in skipped]
    runnable = [b for b in blocks if b.kind and b.skip is None]
    assert sum(b.kind == "sh" for b in runnable) >= 8
    assert sum(b.kind == "python" for b in runnable) >= 2


def test_examples_target_the_server_the_readme_names(blocks: list[Block]) -> None:
    """A hard-coded address in a run block would miss the test's server (and hit yours)."""
    assert any(DEFAULT_SERVER in b.code for b in blocks if b.kind == "sh" and b.skip is None)
    for b in blocks:
        if b.kind is None or b.skip is not None:
            continue
        for n, line in enumerate(b.code.splitlines()):
            if re.search(r"(localhost|127\.0\.0\.1):\d+", line):
                assert "LIPWASS_SERVER" in line, f"README.md:{b.line + 1 + n}: {line}"


def test_printed_config_is_the_estimator_default(blocks: list[Block]) -> None:
    """Every estimate the README prints shows the real defaults (only `steps` is the example's)."""
    defaults = lipcore.EstimatorConfig().to_dict()
    shown = 0
    for b in blocks:
        if b.kind is not None:
            continue
        for line in b.code.splitlines():
            if not line.startswith('{"id":"est_'):
                continue
            config = json.loads(line)["config"]
            assert config == {**defaults, "steps": config["steps"]}, f"README.md:{b.line}"
            shown += 1
    assert shown >= 1


def test_serve_flags_table_is_the_cli(blocks: list[Block]) -> None:
    """The README's table of `lipwass serve` flags names every flag, with its default."""
    import argparse

    from service.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    actions = {a.option_strings[-1]: a for a in sub.choices["serve"]._actions if a.dest != "help"}
    rows = {
        m["flag"]: m["default"]
        for m in re.finditer(
            r"^\| `(?P<flag>--[\w-]+)` \| (?P<default>[^|]*) \|", README.read_text(), re.M
        )
    }
    assert set(rows) == set(actions)
    for flag, action in actions.items():
        if action.default is not None:
            assert f"`{action.default}`" in rows[flag], flag
        for choice in action.choices or ():
            assert f"`{choice}`" in README.read_text(), (flag, choice)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lipwass() -> list[str]:
    script = Path(sys.executable).parent / "lipwass"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """`lipwass serve` on a free loopback port, embedded, in a fresh data folder (no .env)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp_path / "server"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPWASS_")}
    env |= {"LIPWASS_DEVICE": "cpu", "LIPWASS_PROGRESS_INTERVAL_S": "0.2", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "server.log"
    cmd = [*_lipwass(), "serve", "--port", str(port), "--data-dir", str(home / "data")]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*cmd, "--log-level", "warning"],
            cwd=home,  # a folder without a .env: the settings are the defaults
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "not ready in 60 s:\n" + log.read_text()[-4000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _shell_script(blocks: list[Block]) -> str:
    parts = ["set -euo pipefail"]
    for b in blocks:
        parts.append(f'echo ">>> README.md:{b.line} at ${{EPOCHREALTIME:-$SECONDS}}" >&2')
        parts.append(f"echo '>>> README.md:{b.line}'")
        parts.append(b.code)
    return "\n".join(parts) + "\n"


PY_RUNNER = """
import json, sys, time
blocks = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
for line, code in blocks:
    print(f">>> README.md:{line} at {time.time():.3f}", file=sys.stderr, flush=True)
    print(f">>> README.md:{line}", flush=True)
    exec(compile(code, f"README.md:{line}", "exec"), ns)
"""


def _tail(text: str, n: int = 6000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


@pytest.mark.slow
def test_readme_blocks_run_against_a_real_server(
    blocks: list[Block], server: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPWASS_")}
    env |= {
        "LIPWASS_SERVER": server,
        "LIPWASS_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(tmp_path),  # the walk-through's `mktemp -d` lands here
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
    }
    bash = shutil.which("bash")
    assert bash, "bash runs the README's shell blocks"

    shell = [b for b in blocks if b.kind == "sh" and b.skip is None]
    script = tmp_path / "readme.sh"
    script.write_text(_shell_script(shell))
    out = subprocess.run(
        [bash, str(script)],
        cwd=ROOT,  # the walk-through starts in the repository root
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    (tmp_path / "readme-sh.out").write_text(out.stdout + "\n--- stderr\n" + out.stderr)
    assert out.returncode == 0, f"stdout:\n{_tail(out.stdout)}\nstderr:\n{_tail(out.stderr)}"
    assert "Traceback" not in out.stderr, _tail(out.stderr)
    assert '"type":"/problems/estimate-not-found"' in out.stdout  # the problem-document example
    assert "200 image/png" in out.stdout  # the report picture

    python = [(b.line, b.code) for b in blocks if b.kind == "python" and b.skip is None]
    (tmp_path / "blocks.json").write_text(json.dumps(python))
    work = tmp_path / "py"
    work.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", PY_RUNNER, str(tmp_path / "blocks.json")],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    (tmp_path / "readme-py.out").write_text(out.stdout + "\n--- stderr\n" + out.stderr)
    assert out.returncode == 0, f"stdout:\n{_tail(out.stdout)}\nstderr:\n{_tail(out.stderr)}"


def test_parser_sees_markers_indentation_and_output_blocks() -> None:
    text = (
        "a\n\n<!-- not run: needs a Docker engine -->\n```bash\ndocker compose up\n```\n"
        "```json\n{}\n```\n- item:\n  ```bash\n  echo hi\n  ```\n"
    )
    b1, b2, b3 = parse_blocks(text)
    assert (b1.kind, b1.skip, b1.line) == ("sh", "needs a Docker engine", 4)
    assert (b2.kind, b2.skip) == (None, None)
    assert (b3.kind, b3.code, b3.skip) == ("sh", "echo hi\n", None)


def test_settings_table_is_every_setting_with_its_default() -> None:
    """The README's Settings table names every field of Settings, with its real default."""
    from service.settings import Settings

    text = README.read_text()
    rows = dict(re.findall(r"^\| `(LIPWASS_[A-Z0-9_]+)` \| ([^|]+) \|", text, re.M))
    fields = {"LIPWASS_" + n.upper(): f.default for n, f in Settings.model_fields.items()}
    assert set(rows) == set(fields), (set(fields) - set(rows), set(rows) - set(fields))
    for env, default in fields.items():
        shown = rows[env].strip()
        expected = "unset" if default is None else f"`{default}`"
        assert shown == expected, (env, shown, expected)
