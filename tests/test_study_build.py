"""Building a study from finished runs (stage=study), its answer store, the web app through Flask's test client,
the crowdsourcing bundle and results import (good and malformed CSVs), and stage=report's human table."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import run
from data.video_io import read_video
from harness.names import UnsafeName
from study.build import Study, build_study
from study.crowd import import_results
from study.server import create_app
from study.settings import Settings
from study.store import Store
from study.types import Answer, DuplicateAnswer, StudyError, UnknownPair
from tests.study_helpers import METHODS, SAMPLES, make_runs

AGAINST = ["bdia", "rave"]


def config(results: Path, data_dir: Path, *overrides: str):
    return run.compose(f"results_dir={results}", f"data_dir={data_dir}", "dataset=sample", "models=tiny",
                       f"study.against=[{','.join(AGAINST)}]", "study.catch_rate=0.25", *overrides)


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_track, data_dir) -> Path:
    """The runs, and the study built from them by `python run.py stage=study` (kept pristine; tests copy it)."""
    results = make_runs(tmp_path_factory.mktemp("study") / "results", sample_track, data_dir)
    run.main(config(results, data_dir, "stage=study"))
    return results


@pytest.fixture
def study(built, tmp_path) -> Study:
    """A private copy of the built study, to answer into."""
    root = tmp_path / "study"
    shutil.copytree(built / "_study" / "videoshop_vs_baselines", root)
    return Study.load(root)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_study_pairs_are_blind_and_complete(built, data_dir):
    root = built / "_study" / "videoshop_vs_baselines"
    study = Study.load(root)
    real = [p for p in study.pairs if not p.is_catch]
    catch = [p for p in study.pairs if p.is_catch]
    assert sorted((p.opponent, p.sample_id) for p in real) == sorted((o, s) for o in AGAINST for s in SAMPLES)
    assert len(catch) == math.ceil(0.25 * len(real))
    for o in AGAINST:  # the reference sits on the right in exactly half of each opponent's pairs
        assert sum(p.side_of("videoshop") == "right" for p in real if p.opponent == o) == len(SAMPLES) // 2
    for p in real:  # each side shows exactly that method's edit of that sample, under a name that hides it
        for side in ("left", "right"):
            method, media = p.method_of(side), getattr(p, side)
            assert sha(root / media) == sha(built / "sample" / "tiny" / method / "samples" / p.sample_id / "edited.mp4")
        assert {p.left_method, p.right_method} == {"videoshop", p.opponent}
        assert p.scores["videoshop"]["ssim"] > p.scores[p.opponent]["ssim"]
        assert (root / p.source).is_file() and (root / p.edited_frame).is_file() and p.instruction
    for p in catch:  # the corrupted side is far from the reference's edit; the good side is that edit
        good, bad = (p.right, p.left) if p.catch_bad == "left" else (p.left, p.right)
        ref = read_video(built / "sample" / "tiny" / "videoshop" / "samples" / p.sample_id / "edited.mkv")
        assert np.abs(read_video(root / bad).astype(float) - ref).mean() > 30
        assert sha(root / good) == sha(built / "sample" / "tiny" / "videoshop" / "samples" / p.sample_id / "edited.mp4")
    shown = [*(root / "crowd").rglob("*.html"), root / "crowd" / "tasks.csv", *(root / "media").rglob("*")]
    text = "\n".join(str(f.relative_to(root)) + (f.read_text() if f.suffix in (".html", ".csv") else "") for f in shown)
    for method in [*METHODS, "catch"]:
        assert method not in text, f"{method} is visible to raters"
    tasks = list(csv.DictReader((root / "crowd" / "tasks.csv").open()))
    assert [t["pair_id"] for t in tasks] == [p.id for p in study.pairs]
    assert "${left}" in (root / "crowd" / "hit.html").read_text()
    # The same config rebuilds the same study; another seed swaps sides.
    again = build_study(built, Settings(name="again", dataset="sample", models="tiny", against=AGAINST, catch_rate=0.25))
    assert [p.to_json() for p in again.pairs] == [p.to_json() for p in study.pairs]
    other = build_study(built, Settings(name="other", dataset="sample", models="tiny", against=AGAINST, catch_rate=0.25, seed=1))
    assert [p.left_method for p in other.pairs] != [p.left_method for p in study.pairs]


@pytest.mark.slow
def test_bad_study_configs_are_refused(built, data_dir, tmp_path):
    with pytest.raises(StudyError, match="no finished run of pix2video on sample/tiny") as e:
        run.main(config(built, data_dir, "stage=study", "study.against=[pix2video]"))
    assert run.user_error(e.value) is e.value  # one line for the user, no traceback
    before = sorted(p for p in built.parent.rglob("*"))
    with pytest.raises(UnsafeName):
        run.main(config(built, data_dir, "stage=study", "study.name=../escape"))
    assert sorted(p for p in built.parent.rglob("*")) == before
    with pytest.raises(StudyError, match="must name at least one opponent"):
        Settings(against=["videoshop"])
    # A study with answers keeps its pairs: a rebuild that changes them is refused and the answers stay.
    settings = Settings(name="answered", dataset="sample", models="tiny", against=AGAINST, catch_rate=0.25)
    study = build_study(built, settings)
    with Store(study.root) as store:
        store.add([Answer("alice", study.pairs[0].id, "editing", "left")])
    with pytest.raises(StudyError, match="already holds 1 answers"):
        build_study(built, Settings(name="answered", dataset="sample", models="tiny", against=["bdia"]))
    assert len(Study.load(study.root).pairs) == len(study.pairs)
    with Store(study.root) as store:
        assert store.count() == 1


def test_store_refuses_bad_answers_and_keeps_what_it_has(study):
    pid = study.pairs[0].id
    with Store(study.root, [p.id for p in study.pairs], allow_tie=False) as store:
        assert store.add([Answer("alice", pid, "editing", "left"), Answer("alice", pid, "video", "right")]) == 2
        with pytest.raises(DuplicateAnswer, match="already recorded"):
            store.add([Answer("alice", study.pairs[1].id, "editing", "left"), Answer("alice", pid, "editing", "right")])
        with pytest.raises(UnknownPair, match="'nope'"):
            store.add([Answer("alice", "nope", "editing", "left")])
        with pytest.raises(StudyError, match="must be one of left, right"):
            store.add([Answer("bob", pid, "editing", "tie")])
        with pytest.raises(StudyError, match="rater id"):
            store.add([Answer("../bob", pid, "editing", "left")])
        assert [(a.rater, a.pair_id, a.question, a.choice) for a in store.answers()] == [
            ("alice", pid, "editing", "left"), ("alice", pid, "video", "right")]  # the first answers, nothing else
        assert store.answered("alice") == {pid}
    # Concurrent submissions of one answer (a double click, two tabs): exactly one is recorded.
    from concurrent.futures import ThreadPoolExecutor

    def submit(store: Store) -> str:
        try:
            store.add([Answer("carol", pid, "editing", "left"), Answer("carol", pid, "video", "left")])
            return "ok"
        except DuplicateAnswer:
            return "duplicate"

    shared, other = Store(study.root), Store(study.root)  # threads on one connection, and a second process's connection
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(submit, [shared, other] * 8))
    assert sorted(outcomes) == ["duplicate"] * 15 + ["ok"]
    assert shared.count() == 4
    shared.close(), other.close()
    # The unique constraint holds in the database itself, whatever the code in front of it does.
    db = sqlite3.connect(study.root / "answers.sqlite")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO answers (rater, pair_id, question, choice, origin, recorded_at) VALUES "
                   "('alice', ?, 'editing', 'right', 'lab', 0)", (pid,))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_web_app_records_resumes_and_refuses(study):
    # An instruction from data is text, never markup.
    raw = json.loads((study.root / "study.json").read_text())
    for p in raw["pairs"]:
        p["instruction"] = "<script>alert(1)</script> & more"
    (study.root / "study.json").write_text(json.dumps(raw))
    client = create_app(study.root).test_client()
    order = [p.id for p in study.order("alice")]
    seen = []
    for _ in range(3):
        page = client.get("/rate/alice")
        assert page.status_code == 200
        pid = re.search(r'name="pair" value="([^"]+)"', page.text).group(1)
        assert all(m not in page.text for m in [*METHODS, "catch"])
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page.text and "<script>alert" not in page.text
        seen.append(pid)
        r = client.post("/answer", data={"rater": "alice", "pair": pid, "editing": "left", "video": "right", "seconds": "2.5"})
        assert r.status_code == 303 and r.headers["Location"].endswith("/rate/alice")
    assert seen == order[:3]
    # A new app on the same study (a restarted server) resumes alice at her fourth pair.
    client = create_app(study.root).test_client()
    assert f'name="pair" value="{order[3]}"' in client.get("/rate/alice").text
    assert client.get("/progress/alice").json == {"rater": "alice", "answered": 3, "total": len(order)}
    r = client.post("/answer", data={"rater": "alice", "pair": seen[0], "editing": "right", "video": "right"})
    assert r.status_code == 409 and "already recorded" in r.text
    assert client.post("/answer", data={"rater": "alice", "pair": "nope", "editing": "left", "video": "left"}).status_code == 404
    assert client.post("/answer", data={"rater": "alice", "pair": order[3], "editing": "left"}).status_code == 400
    assert client.post("/answer", data={"rater": "alice", "pair": order[3], "editing": "tie", "video": "left"}).status_code == 400
    assert client.get("/rate/a%2F..").status_code in (400, 404)
    assert client.get("/media/../study.json").status_code == 404
    with Store(study.root) as store:
        answers = store.answers()
    assert len(answers) == 6 and {a.seconds for a in answers} == {2.5}
    assert {(a.pair_id, a.question, a.choice) for a in answers} == {(p, q, c) for p in seen for q, c in (("editing", "left"), ("video", "right"))}
    media = client.get("/" + study.pairs[0].left)
    assert media.status_code == 200 and media.data == (study.root / study.pairs[0].left).read_bytes()


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


MTURK = ["HITId", "WorkerId", "WorkTimeInSeconds", "Input.pair_id", "Input.left", "Answer.editing", "Answer.video"]


def test_crowd_results_import_and_malformed_files(study, tmp_path):
    pairs = study.pairs
    good = write_csv(tmp_path / "batch.csv", MTURK, [
        [f"H{i}", w, "31", p.id, p.left, "left", "right"] for i, p in enumerate(pairs[:4]) for w in ("W1", "W2")])
    assert import_results(study, good) == 16
    with Store(study.root) as store:
        kept = store.answers()
    assert {a.origin for a in kept} == {"crowd"} and {a.seconds for a in kept} == {31.0}
    assert {(a.rater, a.pair_id) for a in kept} == {(w, p.id) for p in pairs[:4] for w in ("W1", "W2")}

    bad = {
        "missing_column": (["HITId", "WorkerId", "Input.pair_id", "Answer.editing"], [["H", "W3", pairs[5].id, "left"]],
                           r"missing column\(s\) Answer.video"),
        "unknown_pair": (MTURK, [["H", "W3", "1", pairs[5].id, "", "left", "left"], ["H", "W3", "1", "zzz", "", "left", "left"]],
                         r"row 3: unknown pair 'zzz'"),
        "bad_answer": (MTURK, [["H", "W3", "1", pairs[5].id, "", "A", "left"]], r"row 2: Answer.editing is 'A'"),
        "tie_in_forced_choice": (MTURK, [["H", "W3", "1", pairs[5].id, "", "tie", "left"]], r"row 2: Answer.editing is 'tie'"),
        "duplicate_in_file": (MTURK, [["H", "W3", "1", pairs[5].id, "", "left", "left"]] * 2, "twice in one submission"),
        "already_imported": (MTURK, [["H", "W3", "1", pairs[5].id, "", "left", "left"], ["H", "W1", "1", pairs[0].id, "", "left", "left"]],
                             r"already recorded \(rater 'W1'"),
        "short_row": (MTURK, [["H", "W3", "1", pairs[5].id]], "row 2: wrong number of fields"),
    }
    for name, (header, rows, message) in bad.items():
        with pytest.raises(StudyError, match=message):
            import_results(study, write_csv(tmp_path / f"{name}.csv", header, rows))
        with Store(study.root) as store:
            assert store.answers() == kept, f"{name}: the database changed"
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StudyError, match="binary.csv"):
        import_results(study, tmp_path / "binary.csv")


@pytest.mark.slow
def test_report_writes_the_human_table_beside_the_papers(built, data_dir, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(built, results, ignore=shutil.ignore_patterns("again", "other", "answered"))
    study = Study.load(results / "_study" / "videoshop_vs_baselines")
    answers = []
    for rater in ("r1", "r2", "r3"):  # careful raters: the reference wins everything against bdia, half against rave
        for i, p in enumerate(study.pairs):
            ref = p.side_of("videoshop")
            other = "right" if ref == "left" else "left"
            if p.is_catch:
                answers += [Answer(rater, p.id, q, ref) for q in ("editing", "video")]
            else:
                answers += [Answer(rater, p.id, q, ref if p.opponent == "bdia" or i % 2 else other) for q in ("editing", "video")]
    careless = [Answer("r4", p.id, q, p.catch_bad or "left") for p in study.pairs for q in ("editing", "video")]
    with Store(study.root) as store:
        store.add(answers)
        store.add(careless)
    run.main(config(results, data_dir, "stage=report"))
    assert (results / "table.md").is_file() and (results / "paper" / "table4.md").is_file()  # the usual outputs
    import pandas as pd

    t = pd.read_csv(results / "table4_human.csv").set_index(["opponent", "question"])
    bdia = t.loc[("bdia", "editing")]
    assert bdia["pref_pct"] == 100 and bdia["n"] == 3 * len(SAMPLES)  # r4 failed every catch pair: excluded
    assert bdia["paper_pct"] == 94.89 and bdia["lo_pct"] == pytest.approx(100 * 12 / (12 + 1.959964 ** 2), abs=1e-3)  # Wilson at k = n
    rave = [p for p in study.pairs if p.opponent == "rave"]
    won = sum(study.pairs.index(p) % 2 for p in rave)
    assert t.loc[("rave", "video"), "pref_pct"] == pytest.approx(100 * won / len(rave))
    md = (results / "table4_human.md").read_text()
    assert "| bdia" in md and "94.89" in md and f"(n={3 * len(SAMPLES)})" in md
    assert "not comparable with the paper (tiny models, dataset sample)" in md and not t["comparable"].any()
    catch = pd.read_csv(study.root / "catch.csv").set_index("rater")
    assert catch.loc["r4", "excluded"] and catch.loc["r4", "failure_rate"] == 1 and not catch.loc["r1", "excluded"]
    assert "Bradley" in (study.root / "report.md").read_text()
