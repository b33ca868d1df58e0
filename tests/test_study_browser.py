"""The served study in headless Chromium (Playwright driving the system's Chromium, no browser download): a
scripted rater starts, watches and answers three pairs, the server is killed (SIGKILL) and restarted, the answers
are in the database, and the rater resumes at their fourth pair.

Needs Debian's `chromium` (`.ci/run` installs it when absent); without it this test FAILS with instructions, as the
gallery's does (REPORTS_SKIP_BROWSER=1 skips both; CHROMIUM=/path picks another Chromium-compatible browser).
"""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from study.build import build_study
from study.settings import Settings
from tests.study_helpers import METHODS, make_runs
from tests.test_reports_gallery import chromium

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    """`python -m study.server` on a free port of 127.0.0.1, once it answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "study.server", str(root), "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/progress/probe", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer within 30 s")


@pytest.mark.slow
def test_rater_answers_in_chromium_and_resumes_after_a_restart(tmp_path, sample_track, data_dir):
    exe = chromium()
    from playwright.sync_api import sync_playwright

    results = make_runs(tmp_path / "results", sample_track, data_dir, samples=["astronaut_add_logo", "coffee_remove_cat"])
    study = build_study(results, Settings(name="browser", dataset="sample", models="tiny", against=["bdia", "rave"],
                                          catch_rate=0.25))
    order = [p.id for p in study.order("alice")]
    assert len(order) == 5  # 2 opponents × 2 samples, and 1 catch pair
    proc, url = start_server(study.root)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
            page = browser.new_page()
            page.goto(url + "/")
            page.fill("#rater", "alice")
            page.click("#start")
            seen = []
            for _ in range(3):
                page.wait_for_url(url + "/rate/alice")
                # every video of the pair loads and decodes, and the candidates play
                page.wait_for_function("Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 2)",
                                       timeout=15000)
                assert page.locator("video").count() == 3 and page.locator("img.frame").count() == 1
                page.wait_for_function("!document.getElementById('left').paused && !document.getElementById('right').paused",
                                       timeout=15000)
                assert page.inner_text("#instruction")
                html = page.content()
                assert all(m not in html for m in METHODS)
                seen.append(page.get_attribute("input[name=pair]", "value"))
                page.check("input[name=editing][value=left]")
                page.check("input[name=video][value=right]")
                with page.expect_navigation():
                    page.click("#submit")
            assert seen == order[:3]

            proc.kill()  # SIGKILL: no chance to flush anything the commit did not already make durable
            proc.wait(10)
            db = sqlite3.connect(study.root / "answers.sqlite")
            rows = db.execute("SELECT rater, pair_id, question, choice, seconds FROM answers ORDER BY id").fetchall()
            db.close()
            assert [(r, p, q, c) for r, p, q, c, _ in rows] == [
                ("alice", p, q, c) for p in seen for q, c in (("editing", "left"), ("video", "right"))]
            assert all(s is not None and s > 0 for *_, s in rows)  # the page's timing came with each answer

            proc, url = start_server(study.root)
            page.goto(url + "/rate/alice")
            assert page.get_attribute("input[name=pair]", "value") == order[3]
            assert "Pair 4 of 5" in page.inner_text("body")
            browser.close()
    finally:
        proc.kill()
        proc.wait(10)
