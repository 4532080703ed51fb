"""The web page in a real browser: headless Chromium (Debian's chromium and chromium-driver, put
there by scripts/install) driven by Selenium against a real `lipwass serve`.

Uploads two `.npy` files and a CSV with a header row through the page's file inputs, sees a
refused upload and a refused request explained, starts a long estimate, watches its progress and
cancels it, starts a short one and reads its verdict, figures and picture, opens the shared URL
in a fresh window, pages the list of past estimates; and loads /docs and /redoc, which render
from the app's own files. No page makes a request to any other origin. A screenshot of the result
page is saved (in the test's tmp folder, and in $LIPWASS_WEB_SCREENSHOTS when set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from servers import Server

pytestmark = pytest.mark.slow

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

TINY = {"width": 16, "depth": 2, "batch_size": 64}
LONG_STEPS, SHORT_STEPS = 50_000, 100
WEB_ENV = {
    "LIPWASS_PROGRESS_INTERVAL_S": "0.1",
    "LIPWASS_EVENTS_POLL_S": "0.1",
    "LIPWASS_CANCEL_GRACE_S": "3",
}


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    why = "Debian's chromium and chromium-driver are not installed (scripts/install adds them)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _serving(tmp: Path, env: dict[str, str]) -> Iterator[Server]:
    """A ready `lipwass serve` in ``tmp`` for a module's tests, killed after them."""
    s = Server(tmp / "data", tmp / "server.log", env)
    try:
        s.wait_ready()
        yield s
    finally:
        s.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serving(tmp_path_factory.mktemp("web"), WEB_ENV)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = _browser_paths()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # network events
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1366,900",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    b = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    b.set_page_load_timeout(30)
    try:
        yield b
    finally:
        b.quit()


def wait(b: WebDriver, cond, timeout: float = 30.0, what: str = ""):
    return WebDriverWait(b, timeout, poll_frequency=0.1).until(lambda _: cond(), what)


def js(b: WebDriver, script: str, *args):
    return b.execute_script(script, *args)


def text(b: WebDriver, css: str) -> str:
    return b.find_element(By.CSS_SELECTOR, css).text


def visible(b: WebDriver, css: str) -> bool:
    els = b.find_elements(By.CSS_SELECTOR, css)
    return bool(els) and els[0].is_displayed()


def set_field(b: WebDriver, element_id: str, value: str) -> None:
    el = b.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(value)


def upload(b: WebDriver, role: str, path: Path) -> str:
    """Picks `path` in the role's file input; waits for the upload's answer; the dataset id."""
    b.find_element(By.ID, f"{role}-file").send_keys(str(path))
    fieldset = f"#upload-{role}"
    wait(
        b,
        lambda: (
            b.find_element(By.CSS_SELECTOR, fieldset).get_attribute("data-state")
            in ("ready", "failed")
        ),
        what=f"{role} upload of {path.name}",
    )
    return b.find_element(By.ID, f"{role}-dataset").get_attribute("value") or ""


def job_status(b: WebDriver) -> str:
    return b.find_element(By.ID, "job").get_attribute("data-status") or ""


def foreign_requests(b: WebDriver, origin: str) -> list[str]:
    """The http(s) requests to another origin that left the browser since the last call (from
    DevTools' network events; one refused by the page's Content-Security-Policy never does)."""
    sent: dict[str, str] = {}
    blocked: set[str] = set()
    for entry in b.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        params = msg.get("params", {})
        if msg["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif msg["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.add(params["requestId"])
    return [
        url
        for rid, url in sent.items()
        if url.startswith(("http:", "https:")) and not url.startswith(origin + "/")
        if rid not in blocked
    ]


def open_page(b: WebDriver, url: str) -> None:
    b.get(url)
    wait(b, lambda: js(b, "return document.body.dataset.ready === 'true'"), what="page ready")


def test_docs_offline(server: Server, browser: WebDriver) -> None:
    b = browser
    foreign_requests(b, server.url)
    b.get(server.url + "/docs")
    wait(b, lambda: visible(b, ".swagger-ui .info .title"), what="Swagger UI rendered")
    assert "lipwass" in text(b, ".swagger-ui .info .title")
    assert b.find_elements(By.CSS_SELECTOR, ".opblock"), "no operation listed"
    assert foreign_requests(b, server.url) == []
    b.get(server.url + "/redoc")
    wait(b, lambda: "submit_estimate" in b.page_source or visible(b, "h1"), what="ReDoc")
    wait(b, lambda: "lipwass" in b.find_element(By.TAG_NAME, "h1").text, what="ReDoc title")
    assert foreign_requests(b, server.url) == []


def save_shot(b: WebDriver, path: Path) -> None:
    b.save_screenshot(str(path))
    if out := os.environ.get("LIPWASS_WEB_SCREENSHOTS"):
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


def test_upload_estimate_cancel_result_share(
    server: Server, browser: WebDriver, tmp_path: Path
) -> None:
    try:
        _scenario(server, browser, tmp_path)
    except BaseException:
        save_shot(browser, tmp_path / "failure.png")
        console = [e["message"] for e in browser.get_log("browser")]
        body = browser.find_element(By.TAG_NAME, "body").text
        print(f"page text:\n{body}\nconsole:\n{console}\nserver:\n{server.tail()}")
        raise


def _scenario(server: Server, b: WebDriver, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 2)), rng.normal(size=(70, 2)) + [1.5, 0.0]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.savetxt(tmp_path / "y.csv", y, delimiter=",", header="u,v", comments="", fmt="%.17g")
    (tmp_path / "bad.csv").write_text("u,v\n1,2\n3,abc\n5,6\n")

    foreign_requests(b, server.url)
    open_page(b, server.url + "/")
    assert b.find_element(By.ID, "cfg-steps").get_attribute("value"), "default steps not shown"
    assert b.find_element(By.ID, "req-holdout").get_attribute("value") == "0.2"
    assert b.find_element(By.ID, "req-method").is_displayed()

    # A refused upload says where: the line and the column.
    assert upload(b, "target", tmp_path / "bad.csv") == ""
    refused = text(b, "#upload-target .upload-problem")
    assert "Invalid upload" in refused and re.search(r"(line|row) 3", refused), refused

    # Two .npy files.
    src = upload(b, "source", tmp_path / "x.npy")
    tgt = upload(b, "target", tmp_path / "y.npy")
    assert src.startswith("ds_") and tgt.startswith("ds_"), (src, tgt)
    assert "80 samples × 2 features" in text(b, "#upload-source .dataset")
    assert not visible(b, "#upload-target .upload-problem")
    save_shot(b, tmp_path / "upload.png")

    # A refused request: the problem's field and message.
    set_field(b, "req-holdout", "2")
    b.find_element(By.ID, "submit").click()
    wait(b, lambda: visible(b, "#form-problem"), what="validation problem")
    assert "holdout" in text(b, "#form-problem")
    set_field(b, "req-holdout", "0.2")

    # A long job: progress from the SSE stream, then cancel.
    Select(b.find_element(By.ID, "req-method")).select_by_visible_text("lipschitz")
    set_field(b, "cfg-steps", str(LONG_STEPS))
    set_field(b, "config-extra", json.dumps({**TINY, "patience": 0, "progress_every": 1}))
    b.find_element(By.ID, "submit").click()
    wait(b, lambda: "/estimates/est_" in b.current_url, what="navigated to the job")
    long_id = b.current_url.rsplit("/", 1)[1]
    wait(
        b,
        lambda: js(b, "return document.getElementById('job-bar').value") > 0,
        timeout=60,
        what="progress shown",
    )
    assert re.search(r"step \d+ of 50000", text(b, "#job-phase")), text(b, "#job-phase")
    b.find_element(By.ID, "cancel").click()
    wait(b, lambda: job_status(b) == "cancelled", timeout=30, what="cancelled")
    assert "Cancelled" in text(b, "#job-problem")
    assert not visible(b, "#job-progress")

    # A short job with the CSV (header row) as target: the verdict, the figures, the picture.
    if b.find_elements(By.ID, "target-opt-header"):  # servers that take ?header=
        b.find_element(By.CSS_SELECTOR, "#upload-target details.options summary").click()
        Select(b.find_element(By.ID, "target-opt-header")).select_by_visible_text("true")
    csv_id = upload(b, "target", tmp_path / "y.csv")
    assert csv_id.startswith("ds_"), text(b, "#upload-target")
    assert "70 samples × 2 features" in text(b, "#upload-target .dataset")
    if b.find_elements(By.ID, "target-opt-header"):
        assert "columns u, v" in text(b, "#upload-target .dataset")
        save_shot(b, tmp_path / "csv-options.png")
    set_field(b, "cfg-steps", str(SHORT_STEPS))
    set_field(b, "config-extra", json.dumps(TINY))
    b.find_element(By.ID, "submit").click()
    wait(b, lambda: "/estimates/est_" in b.current_url and long_id not in b.current_url)
    est_id = b.current_url.rsplit("/", 1)[1]
    wait(b, lambda: job_status(b) in ("succeeded", "failed"), timeout=90, what="finished")
    assert job_status(b) == "succeeded", text(b, "#job")
    verdict = text(b, "#verdict")
    assert "Wasserstein" in verdict or "differ" in verdict, verdict
    assert text(b, "#distance").startswith("Distance:")
    figures = text(b, "#figures")
    assert "Exact empirical W1" in figures and "Empirical lower bound" in figures, figures
    wait(b, lambda: js(b, "return document.getElementById('report-img').naturalWidth") > 0)
    assert b.find_element(By.ID, "report").get_attribute("data-state") == "loaded"

    # The list of past estimates: newest first, the current one marked.
    wait(b, lambda: est_id in text(b, "#history-rows"), what="history lists the job")
    rows = b.find_elements(By.CSS_SELECTOR, "#history-rows tr[data-id]")
    ids = [r.get_attribute("data-id") for r in rows]
    assert ids[:2] == [est_id, long_id], ids
    assert rows[0].get_attribute("aria-current") == "true"
    assert foreign_requests(b, server.url) == []

    shot = tmp_path / "result.png"
    b.execute_script("window.scrollTo(0, document.getElementById('job').offsetTop - 8)")
    save_shot(b, shot)
    assert shot.stat().st_size > 10_000

    # The shared URL, in a fresh window: the same result.
    share = b.find_element(By.ID, "share-link").get_attribute("href")
    assert share == f"{server.url}/estimates/{est_id}"
    b.switch_to.new_window("window")
    open_page(b, share)
    wait(b, lambda: job_status(b) == "succeeded", what="shared page shows the result")
    assert text(b, "#verdict") == verdict
    assert text(b, "#job-id") == est_id

    save_shot(b, tmp_path / "shared.png")

    # The cancelled one, from the list: a click opens it in place.
    b.find_element(By.CSS_SELECTOR, f'#history-rows a[data-id="{long_id}"]').click()
    wait(b, lambda: job_status(b) == "cancelled", what="cancelled job from the list")
    assert b.current_url == f"{server.url}/estimates/{long_id}"
    b.back()
    wait(b, lambda: job_status(b) == "succeeded" and text(b, "#job-id") == est_id)

    # The fields of newer servers (the two-sample test's verdict, the distance with its kind, the
    # upper bound and bracket, per-feature figures): shown when present, the summary first.
    future = {
        **js(b, f"return fetch('/v1/estimates/{est_id}').then(r => r.json())"),
        "id": "est_future",
    }
    future["result"] |= {
        "verdict": {
            "differ": True,
            "alpha": 0.05,
            "p_value": 0.001,
            "test": "permutation",
            "permutations": 1000,
            "summary": "The two sets differ (p = 0.001 < α = 0.05): W1 ≈ 1.21.",
        },
        "distance": {"value": 1.21, "ci95": [0.9, 1.5], "kind": "held-out"},
        "upper_bound": 1.4,
        "bracket_width": 0.1,
        "features": [
            {"name": "u", "index": 0, "marginal_w1": 1.5, "attribution": 0.93, "direction": 1},
            {"name": "v", "index": 1, "marginal_w1": 0.08, "attribution": 0.07, "direction": -1},
        ],
    }
    future["result"]["diagnostics"] = {
        **(future["result"].get("diagnostics") or {}),
        "envelope": {"side": "source", "anchors": 512, "validation": {"network": 1.0}},
    }
    js(b, "window.lipwass.showFinal(arguments[0])", future)
    assert text(b, "#verdict") == future["result"]["verdict"]["summary"]
    assert b.find_element(By.ID, "verdict").get_attribute("data-differ") == "true"
    assert "1.21, 95 % CI [0.9, 1.5]" in text(b, "#distance")
    figures = text(b, "#figures")
    for label in ("p-value", "Empirical upper bound", "Bracket width", "Distance (held-out)"):
        assert label in figures, figures
    assert "source envelope" in figures and "over 512 training samples" in figures, figures
    rows = b.find_elements(By.CSS_SELECTOR, "#features tbody tr")
    assert [r.text.split()[0] for r in rows] == ["u", "v"]
    save_shot(b, tmp_path / "verdict.png")

    # An unknown id: the API's problem, on the page.
    open_page(b, server.url + "/estimates/est_nope")
    wait(b, lambda: visible(b, "#job-problem"), what="not-found problem")
    assert "not found" in text(b, "#job-problem").lower()


KEY = "web-" + "k" * 40


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**WEB_ENV, "LIPWASS_API_KEYS": f"team:read+write:{KEY}"}
    yield from _serving(tmp_path_factory.mktemp("web-keyed"), env)


def test_a_server_with_keys_asks_for_one_and_the_page_works_with_it(
    keyed_server: Server, browser: WebDriver, tmp_path: Path
) -> None:
    """Upload, follow (SSE read with the key), result and picture, all sent with the key."""
    b = browser
    try:
        rng = np.random.default_rng(1)
        np.save(tmp_path / "x.npy", rng.normal(size=(60, 2)))
        np.save(tmp_path / "y.npy", rng.normal(size=(60, 2)) + [1.0, 0.0])
        foreign_requests(b, keyed_server.url)  # drop the log of the tests before
        open_page(b, keyed_server.url + "/")
        assert visible(b, "#key-form")
        # Without the key: the server's own word, not a broken page.
        wait(b, lambda: "API key" in b.find_element(By.TAG_NAME, "body").text)
        set_field(b, "api-key", KEY)
        b.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait(b, lambda: text(b, "#key-state") == "key set", what="key taken")
        assert upload(b, "source", tmp_path / "x.npy").startswith("ds_")
        assert upload(b, "target", tmp_path / "y.npy").startswith("ds_")
        set_field(b, "cfg-steps", str(SHORT_STEPS))
        set_field(b, "config-extra", json.dumps(TINY))
        b.find_element(By.ID, "submit").click()
        wait(b, lambda: "/estimates/est_" in b.current_url, what="navigated to the job")
        wait(b, lambda: job_status(b) in ("succeeded", "failed"), timeout=90, what="finished")
        assert job_status(b) == "succeeded", text(b, "#job")
        wait(b, lambda: js(b, "return document.getElementById('report-img').naturalWidth") > 0)
        # The shared URL in this tab (the key stays for the tab): the same result.
        open_page(b, b.current_url)
        wait(b, lambda: job_status(b) == "succeeded", what="reloaded result")
        save_shot(b, tmp_path / "keyed.png")
        assert foreign_requests(b, keyed_server.url) == []
    except BaseException:
        save_shot(b, tmp_path / "keyed-failure.png")
        print(f"page text:\n{b.find_element(By.TAG_NAME, 'body').text}\n{keyed_server.tail()}")
        raise
