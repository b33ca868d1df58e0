"""The study's local web app (Flask): one pair at a time, answers in SQLite (`study.store`).

    python -m study.server results/_study/<name> [--host 127.0.0.1] [--port 5000]
    python run.py stage=serve                      the same, for the study named by the config

A rater opens `/`, gives an id and lands on `/rate/<id>`: the next pair they have not answered, in their own
order (`study.build.rater_order`). The page shows the instruction, the source video, the edited first frame and
the two candidates (A left, B right) playing in sync, asks the paper's two questions and posts them together
to `/answer`, with the seconds since the page was shown. Answers are committed before the reply, so stopping
and restarting the server loses nothing, and a returning rater resumes at their next unanswered pair.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from flask import Flask, abort, redirect, render_template, request, send_from_directory, url_for

from study.build import Study
from study.store import Store
from study.types import QUESTIONS, Answer, DuplicateAnswer, StudyError, UnknownPair, check_rater

log = logging.getLogger("study")
TEMPLATES = Path(__file__).resolve().parent / "templates"


def create_app(study_root: str | Path) -> Flask:
    """The app for the study built in `study_root`."""
    study = Study.load(study_root)
    store = Store(study.root, [p.id for p in study.pairs], study.settings.tie_option)
    app = Flask(__name__, template_folder=str(TEMPLATES))
    app.jinja_env.autoescape = True  # instructions come from data; Flask escapes only *.html templates by default
    app.config["study"], app.config["store"] = study, store
    choices = ["left", "right", *(["tie"] if study.settings.tie_option else [])]

    def rater_or_400(rater: str) -> str:
        try:
            return check_rater(rater)
        except StudyError as e:
            abort(400, str(e))

    @app.get("/")
    def start():
        rater = request.args.get("rater")
        if rater:
            return redirect(url_for("rate", rater=rater_or_400(rater)))
        return render_template("start.html.j2", name=study.settings.name)

    @app.get("/rate/<rater>")
    def rate(rater: str):
        rater = rater_or_400(rater)
        done = store.answered(rater)
        order = study.order(rater)
        nxt = next((p for p in order if p.id not in done), None)
        if nxt is None:
            return render_template("done.html.j2", rater=rater, n=len(order))
        return render_template("pair.html.j2", rater=rater, pair=nxt, position=len(done) + 1, total=len(order),
                               questions=study.settings.questions, choices=choices, urls=nxt.urls("/"), action="/answer")

    @app.post("/answer")
    def answer():
        form = request.form
        rater = rater_or_400(form.get("rater", ""))
        pair_id = form.get("pair", "")
        missing = [q for q in QUESTIONS if not form.get(q)]
        if missing:
            return _error(400, f"answer every question (missing: {', '.join(missing)})", rater)
        try:
            seconds = float(form.get("seconds", "nan"))
        except ValueError:
            seconds = math.nan
        seconds = seconds if math.isfinite(seconds) and seconds >= 0 else None
        try:
            store.add([Answer(rater, pair_id, q, form[q], seconds, "lab") for q in QUESTIONS])
        except UnknownPair as e:
            return _error(404, str(e), rater)
        except DuplicateAnswer as e:
            return _error(409, str(e), rater)
        except StudyError as e:
            return _error(400, str(e), rater)
        return redirect(url_for("rate", rater=rater), code=303)

    @app.get("/progress/<rater>")
    def progress(rater: str):
        rater = rater_or_400(rater)
        return {"rater": rater, "answered": len(store.answered(rater)), "total": len(study.pairs)}

    @app.get("/media/<path:path>")
    def media(path: str):
        return send_from_directory(study.root / "media", path, max_age=3600)

    def _error(code: int, message: str, rater: str):
        log.warning("study: %s", message)
        return render_template("error.html.j2", message=message, rater=rater), code

    return app


def serve(study_root: str | Path, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Run the app until interrupted (Flask's threaded server: enough for a lab study)."""
    app = create_app(study_root)
    study = app.config["study"]
    log.info("study %s: %d pairs; raters open http://%s:%d/", study.settings.name, len(study.pairs), host, port)
    app.run(host=host, port=port, threaded=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m study.server", description=__doc__.split("\n\n")[0])
    p.add_argument("study", help="the study folder (results_dir/_study/<name>)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(a.study, a.host, a.port)


if __name__ == "__main__":
    main()
