"""``evolkv report``: one self-contained HTML page, rendered by a real browser (headless Chromium, installed by
``.ci/run``) with no console error, its DOM holding every section with the numbers of ``runs show --json``;
a screenshot is kept for a person to look at."""

import json
import os
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from evolkv.cli import app
from evolkv.html_report import SECTIONS

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(model_dirs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    db = f"sqlite:///{folder / 'evolkv.db'}"
    for budget in ("20%", "40%"):  # two budgets: a quality-against-budget curve of two points
        result = invoke("search", "--model", model_dirs["llama"], "--budget", budget, "--per-head", "--generations",
                        2, "--population", 3, "--samples", 1, "--length", 200, "--tasks", "passkey,multikey",
                        "--baselines", "full,uniform,pyramid,adakv", "--db", db, "--json", "--quiet")
        assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    page = folder / "run.html"
    written = invoke("report", detail["id"], "--out", page, "--db", db)
    assert written.exit_code == 0, written.output
    return db, json.loads(invoke("runs", "show", detail["id"], "--db", db, "--json").stdout), page


def test_the_page_is_self_contained_and_holds_every_section(run):
    _, detail, page = run
    text = page.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in text
    for forbidden in ("<script", "http://", "https://", "<link", "@import"):  # nothing to fetch at view time
        assert forbidden not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "evolkv search" in text and detail["id"] in text


def test_chromium_renders_the_page_with_the_numbers_of_runs_show(run, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("EVOLKV_REQUIRE_CHROMIUM"):
            pytest.fail("EVOLKV_REQUIRE_CHROMIUM is set and no chromium is on the PATH")
        pytest.skip("needs Chromium (Debian's chromium package; .ci/run installs it)")
    _, detail, page = run
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr  # no console error while rendering
    for section in SECTIONS:
        assert f'id="{section}"' in dom.stdout
    for label, splits in detail["results"].items():
        value = (splits.get("heldout") or {}).get("objective")
        if value is not None:
            assert f"{value:.4f}" in dom.stdout, label
    for stage in detail["timings"]["stages"]:
        assert stage["stage"] in dom.stdout
    shot = os.environ.get("EVOLKV_REPORT_SCREENSHOT") or str(tmp_path / "report.png")
    png = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2600", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert png.returncode == 0 and os.path.getsize(shot) > 10_000, png.stderr[-2000:]
