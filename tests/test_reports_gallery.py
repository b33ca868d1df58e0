"""The gallery opens from disk in headless Chromium, every video in it loads, a sample's videos play and
seek together, the layout fits the window, and a screenshot is saved.

Needs Debian's `chromium` package (`.ci/run` installs it when absent). Without a browser this test FAILS
with instructions; set REPORTS_SKIP_BROWSER=1 to skip it on a machine that cannot have one (the CI never
sets it). CHROMIUM=/path/to/binary picks another Chromium-compatible browser.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from harness.results import RunDir
from harness.types import Costs, ScoreRow
from reports.gallery import collect_samples
from reports.tables import write_report

SAMPLES = ["astronaut_add_logo", "coffee_remove_cat"]
METHODS = ["identity", "static", "oracle", "copy_a", "copy_b"]  # five methods: a sample's strip must not wrap
WINDOW = (1400, 2000)


SYNC_CHECK = """<script>
(function () {
  var group = document.querySelector(".sample"), videos = Array.prototype.slice.call(group.querySelectorAll("video"));
  var out = document.createElement("pre"); out.id = "sync-check"; document.body.appendChild(out);
  var ready = 0;
  function report() { out.textContent = JSON.stringify(videos.map(function (v) { return [v.currentTime, v.duration]; })); }
  videos.forEach(function (v) {
    function go() {
      if (++ready < videos.length) { return; }
      var s = group.querySelector(".seek"); s.value = 0.5; s.dispatchEvent(new Event("input"));
      setTimeout(report, 2000);  // virtual time: the seeks have settled
    }
    if (v.readyState >= 2) { go(); } else { v.addEventListener("loadeddata", go); }
  });
})();
</script>
"""


PLAY_CHECK = """<script>
(function () {
  var group = document.querySelector(".sample"), videos = Array.prototype.slice.call(group.querySelectorAll("video"));
  var out = document.createElement("pre"); out.id = "play-check"; document.body.appendChild(out);
  var ready = 0, lead = videos[0];
  function report() {
    out.textContent = JSON.stringify(videos.map(function (v) { return [v.currentTime, v.duration, v.paused]; }));
  }
  videos.forEach(function (v) {
    function go() {
      if (++ready < videos.length) { return; }
      // Read every video's time once the lead has played for a while (media time, not the page's virtual clock).
      lead.addEventListener("timeupdate", function once() {
        if (lead.currentTime > 0.4) { lead.removeEventListener("timeupdate", once); report(); }
      });
      group.querySelector(".play").click();
    }
    if (v.readyState >= 2) { go(); } else { v.addEventListener("loadeddata", go); }
  });
})();
</script>
"""

LAYOUT_CHECK = """<script>
window.addEventListener("load", function () {
  var out = document.createElement("pre"); out.id = "layout-check";
  var strips = Array.prototype.slice.call(document.querySelectorAll(".strip")).map(function (s) {
    return Array.prototype.slice.call(s.querySelectorAll(":scope > figure")).map(function (f) { return f.offsetTop; });
  });
  out.textContent = JSON.stringify({page: document.documentElement.scrollWidth, window: window.innerWidth, strips: strips});
  document.body.appendChild(out);
});
</script>
"""


def chromium() -> str:
    exe = os.environ.get("CHROMIUM") or next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if exe:
        return exe
    if os.environ.get("REPORTS_SKIP_BROWSER") == "1":
        pytest.skip("REPORTS_SKIP_BROWSER=1: no browser on this machine, the gallery is not checked")
    pytest.fail("the gallery test needs headless Chromium: apt-get install -y chromium (or set CHROMIUM=/path/to/browser)")


#: Browser launches allowed for the Play check (media time needs real CPU time, scarce on a busy 2-core CI box).
PLAY_TRIES = 3


def browse(exe: str, page: Path, tmp: Path, *extra: str) -> str:
    """Chromium headless on a file:// page, scripts given 10 s of virtual time; returns stdout (the DOM with --dump-dom)."""
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run", "--mute-audio", f"--user-data-dir={tmp / 'chromium-profile'}",
           "--virtual-time-budget=10000", *extra, page.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"chromium failed ({out.returncode}): {out.stderr[-2000:]}"
    return out.stdout


def video_status(dom: str) -> dict[str, int]:
    m = re.search(r'<p id="video-status" data-total="(\d+)" data-loaded="(\d+)" data-failed="(\d+)"', dom)
    assert m, "the page has no #video-status element"
    return dict(zip(("total", "loaded", "failed"), map(int, m.groups())))


@pytest.fixture
def gallery_results(tmp_path, sample_track, data_dir) -> Path:
    """Five methods' edits of two sample-track clips, plus one NaN edit (no video), as the runner stores them."""
    res = tmp_path / "results"
    dataset_cfg = {"_target_": "data.sample_track.SampleTrack", "name": "sample", "data_dir": str(data_dir)}
    still = lambda s: np.repeat(s.source[:1], len(s.source), 0)  # noqa: E731
    makers = dict(zip(METHODS, (lambda s: s.source, still, lambda s: s.target_video, lambda s: s.source[::-1], still)))
    for method, make in makers.items():
        rd = RunDir(res / "sample" / "tiny" / method)
        rd.claim({"dataset": "sample", "method": method, "method_name": method, "models": "tiny", "tiny_models": True,
                  "fingerprint": "x", "fingerprint_config": {}, "config": {"dataset": dataset_cfg}})
        for sid in SAMPLES:
            sample = sample_track.load(sid)
            rd.save_video(sid, make(sample), sample.fps)
            rd.write_row(ScoreRow(sid, "ok", {"ssim": 0.9}, Costs(seconds=1.0)))
        rd.write_summary({"tiny": True, "columns": {"ssim": {"percent": True, "higher_is_better": True}}, "scores": {}})
    rd = RunDir(res / "sample" / "tiny" / "unstable")
    rd.claim({"dataset": "sample", "method": "unstable", "models": "tiny", "tiny_models": True, "fingerprint": "x",
              "fingerprint_config": {}, "config": {"dataset": dataset_cfg}})
    rd.write_row(ScoreRow(SAMPLES[0], "nan", {"ssim": float("nan")}, Costs(seconds=1.0), "NonFiniteEdit: latents diverged"))
    return res


@pytest.mark.slow
def test_gallery_opens_from_disk_and_every_video_loads(gallery_results, tmp_path):
    exe = chromium()
    write_report(gallery_results)
    page = gallery_results / "index.html"
    html = page.read_text()
    for sid in SAMPLES:
        for name in ("source.mp4", "edited.png", "mask.png"):
            assert (gallery_results / "gallery" / "sample" / sid / name).is_file()
    srcs = re.findall(r'<video src="([^"]+)"', html)
    assert len(srcs) == len(SAMPLES) * (1 + len(METHODS))  # source + every method; the NaN edit has no video
    assert all(not s.startswith(("/", "file:")) for s in srcs), "the page must use relative paths to open from anywhere"
    assert "NonFiniteEdit: latents diverged" in html and "NaN" in html
    assert html.index("Table 2: MagicBrush-derived videos") < html.index('class="sample"')  # tables first

    status = video_status(browse(exe, page, tmp_path, "--dump-dom"))
    assert status == {"total": len(srcs), "loaded": len(srcs), "failed": 0}

    shot = tmp_path / "gallery.png"
    browse(exe, page, tmp_path, "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}")
    img = iio.imread(shot)
    assert img.shape[:2] == (WINDOW[1], WINDOW[0])
    assert img[..., :3].std() > 10  # not a blank page

    # Seeking one sample's slider moves all of its videos to the same time (a test-only script drives the page).
    check = page.with_name("sync_check.html")
    check.write_text(html.replace("</body>", SYNC_CHECK + "</body>"))
    times = json.loads(re.search(r'<pre id="sync-check">([^<]*)</pre>', browse(exe, check, tmp_path, "--dump-dom")).group(1))
    assert len(times) == 1 + len(METHODS) and all(d > 0 for _, d in times)
    assert all(abs(t - 0.5 * d) < 0.05 * d for t, d in times), times

    # Pressing Play on one sample plays all of its videos, together.
    check.write_text(html.replace("</body>", PLAY_CHECK + "</body>"))
    for _ in range(PLAY_TRIES):  # media time runs on the real clock: a starved headless browser may not reach 0.4 s
        played = re.search(r'<pre id="play-check">([^<]*)</pre>', browse(exe, check, tmp_path, "--dump-dom")).group(1)
        if played:
            break
    assert played, f"after Play the first video never passed 0.4 s in {PLAY_TRIES} tries: the videos did not play"
    played = json.loads(played)
    assert len(played) == 1 + len(METHODS) and not any(paused for _, _, paused in played), played
    lead, duration = played[0][0], played[0][1]
    gap = [min(abs(t - lead), duration - abs(t - lead)) for t, _, _ in played]  # they loop: compare around the circle
    assert max(gap) < 0.2, played  # under 1.5 frames at 7 fps; the page re-syncs drifts over 0.1 s

    # At 1400 px the page does not overflow: wide tables scroll in their boxes, and each sample's videos stay on one row.
    check.write_text(html.replace("</body>", LAYOUT_CHECK + "</body>"))
    dom = browse(exe, check, tmp_path, f"--window-size={WINDOW[0]},{WINDOW[1]}", "--dump-dom")
    layout = json.loads(re.search(r'<pre id="layout-check">([^<]*)</pre>', dom).group(1))
    assert layout["page"] <= layout["window"], layout
    assert len(layout["strips"]) == len(SAMPLES) and all(len(set(tops)) == 1 for tops in layout["strips"]), layout
    assert '<div class="table"><table class="paper">' in html

    views, left_out = collect_samples(gallery_results, max_samples=1)  # report.gallery_max_samples
    assert [v.id for v in views] == SAMPLES[:1] and left_out == {"sample": len(SAMPLES) - 1}

    # The check can fail: a corrupt video is reported as such.
    (gallery_results / "sample" / "tiny" / "static" / "samples" / SAMPLES[0] / "edited.mp4").write_bytes(b"not a video")
    status = video_status(browse(exe, page, tmp_path, "--dump-dom"))
    assert status["failed"] == 1 and status["loaded"] == len(srcs) - 1
