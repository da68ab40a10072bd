"""Browser test of the MLflow UI over a finished sweep: a real `mlflow server` on the sweep's SQLite store,
driven by headless Chromium through selenium. It checks what a user sees: the sweep's parent run in the
experiment's runs table, its child runs nested under it (and each child's "Parent run" link), and a
logged PNG picture of a child run rendered on its artifacts page; then the experiment named after the
sweep, the sweep metric and the swept key picked as columns from the Columns menu with each trial's
value, the sweep file as Source, the trial's logged models, and the paper's value on the parent."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TIMEOUT = 60  # seconds for any one thing to appear in the browser
SERVER_TIMEOUT = 90  # seconds for the server to answer /health


@pytest.fixture(scope="session")
def browser_available():
    """Chromium, chromedriver and selenium present; else skip (locally) or fail (in CI, which installs
    them). Session-scoped so that it runs before, and can skip, the expensive sweep fixture."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("python package selenium (the project's test extra)")
    if missing:
        msg = f"browser test needs {', '.join(missing)} (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "<no log>"


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server's whole process group (the CLI spawns uvicorn workers)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure no worker of its group outlives it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


@pytest.fixture(scope="module")
def mlflow_ui(browser_available, finished_sweep):
    """A real `mlflow server` on the finished sweep's store: (base URL, server log path)."""
    tmp, uri, _, _ = finished_sweep
    port = free_port()
    log = tmp / "mlflow_server.log"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no extra job-runner process
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(base + "health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer {base}health within {SERVER_TIMEOUT} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield base, log
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def driver(browser_available):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield d
    finally:
        d.quit()


class UI:
    """Waits on the browser; on a timeout, saves a screenshot and fails with what the page showed."""

    def __init__(self, driver, base: str, shots: Path, server_log: Path):
        self.d, self.base, self.shots, self.server_log = driver, base, shots, server_log
        self.n = 0

    def go(self, route: str) -> None:
        self.d.get(self.base + route)

    def text(self) -> str:
        from selenium.webdriver.common.by import By
        try:
            return self.d.find_element(By.TAG_NAME, "body").text
        except Exception:  # noqa: BLE001 - page in flux
            return ""

    def until(self, cond, what: str):
        """Wait up to TIMEOUT for cond(driver) to be truthy; return its value."""
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            StaleElementReferenceException,
            TimeoutException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        # the React/ag-grid UI re-renders freely: a stale or covered element just means "try again"
        wait = WebDriverWait(self.d, TIMEOUT, poll_frequency=0.25,
                             ignored_exceptions=(StaleElementReferenceException, ElementClickInterceptedException))
        try:
            return wait.until(cond)
        except TimeoutException:
            self.fail(f"timed out after {TIMEOUT} s waiting for {what}")

    def fail(self, msg: str):
        self.n += 1
        shot = self.shots / f"mlflow_ui_failure_{self.n}.png"
        try:
            self.d.save_screenshot(str(shot))
        except Exception as e:  # noqa: BLE001
            shot = f"<screenshot failed: {e}>"
        source = self.d.page_source
        body = source[source.find("<body"):] if "<body" in source else source
        body = re.sub(r"<(svg|style|script|aside)\b.*?</\1>", "", body, flags=re.S)
        body = re.sub(r"data:[^\"')]{80,}", "data:...", body)
        pytest.fail(f"{msg}\nurl: {self.d.current_url}\nscreenshot: {shot}\n"
                    f"--- visible text ---\n{self.text()[:2000]}\n"
                    f"--- page source (body, trimmed) ---\n{body[:4000]}\n"
                    f"--- server log tail ---\n{_tail(self.server_log, 1500)}")


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_mlflow_ui_shows_sweep_children_pictures_and_summary(finished_sweep, mlflow_ui, driver, tmp_path):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    _, uri, parent_id, _ = finished_sweep
    base, server_log = mlflow_ui
    client = MlflowClient(uri)
    eid = client.get_experiment_by_name("tiny").experiment_id
    parent = client.get_run(parent_id)
    assert parent.info.run_name == "sweep-tiny"
    children = client.search_runs([eid], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 2, [c.info.run_name for c in children]
    child_names = {c.info.run_id: c.info.run_name for c in children}
    child = sorted(children, key=lambda c: c.info.run_name)[0]
    pictures = [a.path for a in client.list_artifacts(child.info.run_id, "pictures") if a.path.endswith(".png")]
    picture = next((p for p in pictures if "samples_step" in Path(p).name), None)
    assert picture, f"child {child.info.run_name} logged no samples picture: {pictures}"
    width, height = _png_size(Path(client.download_artifacts(child.info.run_id, picture, str(tmp_path))))

    ui = UI(driver, base, tmp_path, server_log)

    def rows(d, run_id):
        return [r for r in d.find_elements(By.CSS_SELECTOR, f"[role=row][row-id='{run_id}']") if r.text.strip()]

    # (1) the experiment's runs table shows the sweep's parent run
    ui.go(f"#/experiments/{eid}/runs")
    ui.until(lambda d: any("sweep-tiny" in r.text for r in rows(d, parent_id)),
             f"the parent run 'sweep-tiny' ({parent_id}) in the runs table of experiment {eid}")

    # (2a) its children are nested under it: collapsed until the parent row's expand toggle is clicked
    def expand(d):
        toggles = [b for r in d.find_elements(By.CSS_SELECTOR, f"[role=row][row-id='{parent_id}']")
                   for b in r.find_elements(By.CSS_SELECTOR, "[col-id*='Run Name'] button")]
        if toggles:
            toggles[0].click()
        return bool(toggles)

    if not all(rows(driver, cid) for cid in child_names):
        ui.until(expand, "the expand toggle in the parent run's row")
    for cid, name in child_names.items():
        ui.until(lambda d, cid=cid, name=name: any(name in r.text for r in rows(d, cid)),
                 f"child run {name!r} ({cid}) in the runs table after expanding 'sweep-tiny'")

    # (2b) a child's run page names it and links back to the parent run
    ui.go(f"#/experiments/{eid}/runs/{child.info.run_id}")
    ui.until(lambda d: child.info.run_name in ui.text() and "Parent run" in ui.text(),
             f"the run page of {child.info.run_name!r} with a 'Parent run' entry")
    link = ui.until(
        lambda d: d.find_elements(By.XPATH, "//*[normalize-space(text())='Parent run']"
                                            f"/following::a[contains(@href, '/runs/{parent_id}')][1]"),
        f"a 'Parent run' link to {parent_id} on the child's run page")[0]
    if link.text.strip() != "sweep-tiny":
        ui.fail(f"the child's 'Parent run' link reads {link.text!r}, expected 'sweep-tiny'")

    # (3) the child's artifacts page renders the logged PNG picture
    ui.go(f"#/experiments/{eid}/runs/{child.info.run_id}/artifacts/{picture}")
    ui.until(lambda d: picture in ui.text(), f"the artifact preview header {picture!r}")
    shown = ui.until(lambda d: d.execute_script(
        "return Array.from(document.images).filter(i => i.alt === arguments[0] && i.complete"
        " && i.naturalWidth > 0).map(i => [i.naturalWidth, i.naturalHeight, i.src])", picture),
        f"a loaded <img alt={picture!r}> in the artifact preview")
    if [shown[0][0], shown[0][1]] != [width, height]:
        ui.fail(f"the displayed picture is {shown[0][0]}x{shown[0][1]} px, the logged PNG is {width}x{height}")
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    if not any("get-artifact" in u and child.info.run_id in u and Path(picture).name in u for u in fetched):
        ui.fail(f"the browser never fetched {picture} via get-artifact: {[u for u in fetched if 'artifact' in u]}")

    # (4) the parent run's artifacts page renders the sweep's summary plot
    summary = "summary/summary.png"
    (tmp_path / "parent").mkdir()
    sw, sh = _png_size(Path(client.download_artifacts(parent_id, summary, str(tmp_path / "parent"))))
    ui.go(f"#/experiments/{eid}/runs/{parent_id}/artifacts/{summary}")
    driver.refresh()  # a hash-only change keeps the previous run's artifact view: load the page afresh
    plot = ui.until(lambda d: d.execute_script(
        "return Array.from(document.images).filter(i => i.alt === arguments[0] && i.complete"
        " && i.naturalWidth > 0).map(i => [i.naturalWidth, i.naturalHeight])", summary),
        f"a loaded <img alt={summary!r}> on the parent run's artifacts page")
    if plot[0] != [sw, sh]:
        ui.fail(f"the displayed summary plot is {plot[0]} px, the logged PNG is {sw}x{sh}")


def test_mlflow_ui_shows_the_sweeps_experiment_metric_swept_value_models_and_paper(finished_sweep, mlflow_ui,
                                                                                   driver, tmp_path):
    """What issue 25 asked to find while browsing: the experiment named after the sweep, the sweep's
    metric and swept value on a trial's page (its run name shows the value), the trial's logged models,
    and the paper's value beside ours on the parent run."""
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _, uri, parent_id, _ = finished_sweep
    base, server_log = mlflow_ui
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")  # the sweep's name, not the base config's "sweeps"
    assert exp is not None and client.get_run(parent_id).info.experiment_id == exp.experiment_id
    eid = exp.experiment_id
    child = sorted(client.search_runs([eid], f"tags.mlflow.parentRunId = '{parent_id}'"),
                   key=lambda c: c.info.run_name)[0]
    k = child.data.params["train.K"]
    models = client.search_logged_models([eid], filter_string=f"source_run_id = '{child.info.run_id}'")
    assert {m.name for m in models} == {"annotator", "segmentor"}
    ui = UI(driver, base, tmp_path, server_log)

    def exact(text):
        return lambda d: [e for e in d.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")
                          if e.is_displayed()]

    # (1) the experiment's page is titled with the sweep's name
    ui.go(f"#/experiments/{eid}/runs")
    driver.refresh()
    ui.until(exact("tiny"), "the experiment name 'tiny' on its page")

    # (2) the trial's page: its name with the swept value, the sweep metric, the swept value as tag
    ui.go(f"#/experiments/{eid}/runs/{child.info.run_id}")
    driver.refresh()
    ui.until(lambda d: child.info.run_name in ui.text() and f"K={k}" in child.info.run_name,
             f"the trial's run name {child.info.run_name!r} (with K={k})")
    ui.until(lambda d: "best/val_fg_miou" in ui.text(), "the sweep metric best/val_fg_miou on the trial's page")
    ui.until(lambda d: f"train.K={k}" in ui.text(), f"the swept value train.K={k} (tag lagm.swept) on the page")

    # (3) its logged models on the run page, each a link to the model's own page (not the params'
    # "annotator.width": the link names the model's id)
    for m in models:
        link = ui.until(lambda d, m=m: [a for a in d.find_elements(By.CSS_SELECTOR, f"a[href*='{m.model_id}']")
                                        if a.is_displayed()], f"a link to the logged model {m.name!r} ({m.model_id})")
        if m.name not in " ".join(a.text for a in link):
            ui.fail(f"the link to logged model {m.model_id} reads {[a.text for a in link]}, expected {m.name!r}")

    # (4) the runs table: the sweep metric and the swept key picked as columns through the Columns menu's
    # search (the first hit each), each trial's row showing its value, the Source column the sweep file
    kids = client.search_runs([eid], f"tags.mlflow.parentRunId = '{parent_id}'")
    ui.go(f"#/experiments/{eid}/runs")
    driver.set_window_size(2400, 1000)  # room for the picked columns
    driver.refresh()
    ui.until(exact("Columns"), "the runs table's Columns button")[0].click()
    for key in ("best/val_fg_miou", "train.K"):
        box = ui.until(lambda d: [i for i in d.find_elements(By.CSS_SELECTOR, "input[placeholder='Search columns']")
                                  if i.is_displayed()], "the Columns menu's search box")[0]
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        box.send_keys(key)
        ui.until(lambda d, key=key: [e for e in d.find_elements(
            # the label itself, not a highlighted part of another ("space.<strong>train.K</strong>")
            By.XPATH, f"//*[normalize-space(.)='{key}' and not(*[normalize-space(.)='{key}'])"
                      f" and normalize-space(..)='{key}']") if e.is_displayed()],
            f"{key!r} in the Columns menu")[0].click()
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)

    def cell(d, run_id, col):
        d.execute_script("document.querySelectorAll('.ag-body-horizontal-scroll-viewport, .ag-center-cols-viewport,"
                         " .ag-header-viewport').forEach(e => e.scrollLeft = 1e6)")
        cells = [c.text.strip() for c in d.find_elements(By.CSS_SELECTOR, f"[role=row][row-id='{run_id}'] "
                                                         f"[col-id=\"{col}\"]") if c.text.strip()]
        return cells[0] if cells else None

    def rows(d, run_id):
        return [r for r in d.find_elements(By.CSS_SELECTOR, f"[role=row][row-id='{run_id}']") if r.text.strip()]

    def expand(d):
        if all(rows(d, c.info.run_id) for c in kids):
            return True
        toggles = [b for r in d.find_elements(By.CSS_SELECTOR, f"[role=row][row-id='{parent_id}']")
                   for b in r.find_elements(By.CSS_SELECTOR, "[col-id*='Run Name'] button")]
        if toggles:
            toggles[0].click()
        return False

    ui.until(expand, "the trials' rows under the parent run")
    for c in kids:
        got = ui.until(lambda d, c=c: cell(d, c.info.run_id, "params.`train.K`"), f"train.K of {c.info.run_name}")
        if got != c.data.params["train.K"]:
            ui.fail(f"{c.info.run_name}: the train.K column reads {got!r}, expected {c.data.params['train.K']!r}")
        got = ui.until(lambda d, c=c: cell(d, c.info.run_id, "metrics.`best/val_fg_miou`"),
                       f"best/val_fg_miou of {c.info.run_name}")
        if float(got) != pytest.approx(c.data.metrics["best/val_fg_miou"], rel=1e-3, abs=1e-4):
            ui.fail(f"{c.info.run_name}: best/val_fg_miou reads {got}, MLflow holds {c.data.metrics['best/val_fg_miou']}")
        source = ui.until(lambda d, c=c: cell(d, c.info.run_id, "attributes.`Source`"), "the Source column")
        if source != "tiny.yaml":
            ui.fail(f"{c.info.run_name}: Source reads {source!r}, expected the sweep file tiny.yaml")
    driver.set_window_size(1400, 1000)

    # (5) the parent: the paper's value beside ours
    ui.go(f"#/experiments/{eid}/runs/{parent_id}")
    driver.refresh()
    ui.until(lambda d: "paper/1/miou" in ui.text() and "best/val_fg_miou" in ui.text(),
             "the paper's value paper/1/miou beside best/val_fg_miou on the parent run's page")
    ui.until(lambda d: "0.3371" in ui.text(), "the paper's value 0.3371 (a fraction, like ours) on the parent")
