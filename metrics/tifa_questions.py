"""Generate a dataset's TIFA question-answer pairs as TIFA's published pipeline does, with local models.

    python -m metrics.tifa_questions DATASET_DIR [OUT.json] [--lm MODEL] [--qa MODEL] [--force] [key=value ...]

For every sample of DATASET_DIR (the common layout) it takes the sample's target text: meta.json's
`target_prompt`, else the target prompt of its `prompts.json` (written by `python -m baselines.prompts`), else,
with `tifa_questions.caption_fallback`, a caption of its edited frame (`tifa_questions.captioner`, BLIP). A
local causal LM (`tifa_questions.lm`, loaded by baselines.prompt_models) continues `tifa_questions.template`
in TIFA's question format (`About <element> (<type>):`, `Q:`, `Choices:`, `A:` lines); `parse_questions` reads
the pairs, and a local text QA model (`tifa_questions.qa`, UnifiedQA-style T5) filters them as TIFA does
(metrics/tifa_filter.py). MODEL is a local folder or a hub id, optionally `@revision`; the rest comes from
conf/ (`models=svd` unless overridden, so real weights; `device=cuda`).

OUT (default: data/tifa/<DATASET_DIR's name>.json, where `metrics=paper` looks) is rewritten atomically after
every sample, so an interrupted run resumes: samples already done are skipped, failed ones retried, and a file
made with other settings is refused unless `--force` (which starts it over). Its layout (`FORMAT`):
`questions` (TIFA's records, what metrics/tifa.py scores), `samples` (per sample: the text and where it came
from, the LM's raw output, the pairs dropped and why, or the error), `settings`, `models` (provenance) and
`counts`.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from harness import cli
from metrics.tifa_filter import filter_questions

log = logging.getLogger("tifa_questions")

#: The questions file's `format` and layout `version`.
FORMAT, VERSION = "tifa-questions", 1
COMMAND = "python -m metrics.tifa_questions"
#: Where a sample's target text came from (`caption_source`); a caption's is CAPTIONER + the captioner's name.
SOURCE_TARGET_PROMPT, SOURCE_PROMPTS_FILE, CAPTIONER = "target_prompt", "prompts_file", "captioner:"
STATUS_DONE, STATUS_ERROR = "done", "error"
#: Why the parser dropped a pair (the QA filter's reasons are in metrics.tifa_filter).
DROP_ELEMENT_TYPE, DROP_ANSWER, DROP_CHOICES = "element_type", "answer_not_in_choices", "too_few_choices"
#: `question_type`: a yes/no question or one with other choices.
QUESTION_YES_NO, QUESTION_CHOICE = "yes_no", "multiple_choice"
#: Element types TIFA merges into one (its published records use "animal/human").
MERGED_TYPES = {"animal": "animal/human", "human": "animal/human"}
_ABOUT = re.compile(r"^about\s+(?P<element>.+?)\s*\((?P<type>[^()]+)\)\s*:?\s*$", re.IGNORECASE)

T = TypeVar("T")


class MalformedOutput(ValueError):
    """The LM's output holds no complete question (About/Q/Choices/A)."""


class ModelUnavailable(RuntimeError):
    """A model could not be loaded: every sample would fail, so the run stops."""


class Lazy(Generic[T]):
    """A model made on first use (a dataset whose samples are all done loads nothing)."""

    def __init__(self, make: Callable[[], T], what: str):
        self.make, self.what, self.value = make, what, None

    def __call__(self) -> T:
        if self.value is None:
            try:
                self.value = self.make()
            except Exception as e:  # any loader failure stops the run, naming the model
                raise ModelUnavailable(f"cannot load the {self.what}: {type(e).__name__}: {e}") from e
        return self.value


def parse_questions(text: str, sample_id: str, caption: str, caption_source: str,
                    element_types: list[str]) -> tuple[list[dict], list[dict]]:
    """(pairs, dropped) from an LM output in TIFA's format: each `A:` line completes the `Q:` and `Choices:`
    (comma-separated) before it, about the element of the last `About <element> (<type>):` line. Reading stops
    at a further `Description:` (the LM starting another example). Pairs whose type is not in `element_types`,
    whose answer is not one of the choices, or with fewer than two choices are dropped. `MalformedOutput` when
    no pair is complete."""
    found, element, etype, question, choices = [], None, None, None, None
    for raw in text.splitlines():
        line, low = raw.strip(), raw.strip().lower()
        if low.startswith("description:") and (found or element):
            break
        about = _ABOUT.match(line)
        if about:
            element, etype, question, choices = about["element"].strip(), about["type"].strip().lower(), None, None
        elif low.startswith("q:"):
            question, choices = line[2:].strip(), None
        elif low.startswith("choices:"):
            choices = [c.strip() for c in line[len("choices:"):].split(",") if c.strip()]
        elif low.startswith("a:"):
            if element and question and choices:
                found.append((element, etype, question, choices, line[2:].strip()))
            question, choices = None, None
    if not found:
        raise MalformedOutput("the language model's output holds no complete question (About/Q/Choices/A lines)")
    pairs, dropped = [], []
    for element, etype, question, choices, answer in found:
        match = next((c for c in choices if c.lower() == answer.lower()), None)
        reason = (DROP_ELEMENT_TYPE if etype not in element_types else DROP_ANSWER if match is None
                  else DROP_CHOICES if len({c.lower() for c in choices}) < 2 else None)
        if reason:
            dropped.append({"question": question, "answer": answer, "reason": reason, "element_type": etype,
                            "choices": choices})
            continue
        yes_no = sorted(c.lower() for c in choices) == ["no", "yes"]
        pairs.append({"id": sample_id, "caption": caption, "question": question, "choices": choices, "answer": match,
                      "element_type": MERGED_TYPES.get(etype, etype), "element": element,
                      "question_type": QUESTION_YES_NO if yes_no else QUESTION_CHOICE,
                      "caption_source": caption_source})
    return pairs, dropped


def target_text(root: Path, sid: str, captioner: Lazy | None, captioner_name: str) -> tuple[str, str]:
    """(text, where it came from) for sample `sid`: its target_prompt, its prompts.json's target prompt, or a
    caption of its edited frame when `captioner` is given; `SampleError` when there is none."""
    from baselines.prompts import COMMAND as PROMPTS_COMMAND
    from baselines.prompts import PROMPTS_FILE, read_prompts_file
    from data.folder import FolderDataset, read_meta, sample_dir
    from harness.types import SampleError

    d = sample_dir(root, sid)
    text = (read_meta(sid, d / "meta.json").get("target_prompt") or "").strip()
    if text:
        return text, SOURCE_TARGET_PROMPT
    path = d / PROMPTS_FILE
    if path.exists() or path.is_symlink():
        return read_prompts_file(sid, path).target, SOURCE_PROMPTS_FILE
    if captioner is None:
        raise SampleError(sid, d, f"no target text: no target_prompt in meta.json, no {PROMPTS_FILE} (run "
                          f"`{PROMPTS_COMMAND} {root}`), and tifa_questions.caption_fallback is off")
    caption = captioner()([FolderDataset(root).load(sid).edited_frame])[0].strip()
    if not caption:
        raise SampleError(sid, d, "the captioner returned an empty caption of the edited frame")
    return caption, CAPTIONER + captioner_name


def settings_of(cfg: Any) -> dict[str, Any]:
    """What the questions depend on (a file made with other settings is not resumed): models by name and
    revision, token limits, the template, the filter and where texts come from."""
    from omegaconf import OmegaConf

    from baselines.prompt_models import describe

    def model(m: Any) -> dict[str, Any]:
        tiny = bool(m.get("tiny", False))
        return {"model": f"tiny random (seed {m.get('seed')})" if tiny else str(m.get("repo")),
                "revision": None if tiny or m.get("root") else m.get("revision"), "tiny": tiny,
                "max_new_tokens": int(m.get("max_new_tokens"))}

    plain = lambda node: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node  # noqa: E731
    return json.loads(json.dumps({
        "lm": model(cfg.lm), "qa": model(cfg.qa), "template": cfg.template, "filter": plain(cfg.filter),
        "element_types": list(cfg.element_types), "caption_fallback": bool(cfg.caption_fallback),
        "captioner": describe(cfg.captioner) if cfg.caption_fallback else None}))


def read_questions_file(path: Path) -> dict[str, Any]:
    """A questions file this module wrote; `ValueError` saying what is wrong otherwise (e.g. hand-written)."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read it ({e}); --force writes it anew") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{path}: not a questions file written by {COMMAND} (format {FORMAT} v{VERSION}); "
                         "--force overwrites it")
    return doc


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _counts(doc: dict[str, Any]) -> dict[str, Any]:
    dropped: dict[str, int] = {}
    for s in doc["samples"].values():
        for d in s.get("dropped", []):
            dropped[d["reason"]] = dropped.get(d["reason"], 0) + 1
    status = [s["status"] for s in doc["samples"].values()]
    return {"samples_done": status.count(STATUS_DONE), "samples_failed": status.count(STATUS_ERROR),
            "questions": len(doc["questions"]), "dropped": dict(sorted(dropped.items()))}


def generate(root: Path, out: Path, cfg: Any, lm: Callable[[], Any], qa: Callable[[], Any],
             captioner: Callable[[], Any] | None, force: bool = False) -> dict[str, Any]:
    """Write the questions file `out` for the dataset at `root` (module docstring); resumable.

    `cfg` is the `tifa_questions` config node; `lm(prompt) -> text`, `qa(text) -> answer` and the captioner are
    factories, called once when a sample first needs them, and their `provenance` is recorded. Returns
    `written`, `done` (already in the file), `failed` (id -> error; unsafe folder names included) and `counts`.
    """
    from data.folder import FolderDataset
    from harness.files import write_json
    from harness.names import check_name

    settings = settings_of(cfg)
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "dataset_dir": str(Path(root).absolute()),
                           "settings": settings, "models": {}, "counts": {}, "refused": {}, "samples": {},
                           "questions": []}
    if out.exists() and not force:
        old = read_questions_file(out)
        if old.get("settings") != settings:
            diff = sorted(k for k in settings.keys() | old.get("settings", {}).keys()
                          if settings.get(k) != old.get("settings", {}).get(k))
            raise ValueError(f"{out} was made with other settings (differing: {', '.join(diff)}); pass --force to "
                             "start it over, or write to another file")
        doc.update({k: old[k] for k in ("models", "samples", "questions") if k in old})
    ds = FolderDataset(root, name="tifa_questions")
    ids = ds.all_ids()
    doc["refused"] = dict(ds.unlisted)
    res: dict[str, Any] = {"written": [], "done": [], "failed": dict(ds.unlisted)}
    models = {"lm": Lazy(lm, "language model"), "qa": Lazy(qa, "QA model"),
              "captioner": Lazy(captioner, "captioner") if captioner and cfg.caption_fallback else None}
    template, order = str(cfg.template), {s: i for i, s in enumerate(ids)}
    for sid in ids:
        if doc["samples"].get(sid, {}).get("status") == STATUS_DONE:
            res["done"].append(sid)
            continue
        entry: dict[str, Any] = {}
        try:
            check_name(sid, "sample id")
            entry["caption"], entry["caption_source"] = target_text(Path(root), sid, models["captioner"],
                                                                    settings["captioner"] or "")
            entry["raw_output"] = models["lm"]()(template.format(caption=entry["caption"]))
            pairs, dropped = parse_questions(entry["raw_output"], sid, entry["caption"], entry["caption_source"],
                                             list(cfg.element_types))
            kept, filtered = filter_questions(pairs, models["qa"](), cfg.filter)
            entry.update(status=STATUS_DONE, parsed=len(pairs) + len(dropped), kept=len(kept), dropped=dropped + filtered)
            if not kept:
                log.warning("sample %s: no question of %r passed the filter; TIFA will not score it", sid, entry["caption"])
        except ModelUnavailable:
            raise
        except Exception as e:  # one sample's failure (its data, a model error on its text, a bad output) is recorded
            entry.update(status=STATUS_ERROR, error=f"{type(e).__name__}: {e}")
            kept = []
            res["failed"][sid] = entry["error"]
            log.error("sample %s: %s", sid, entry["error"])
        doc["samples"][sid] = {**entry, "created": _now()}
        doc["questions"] = sorted([q for q in doc["questions"] if q["id"] != sid] + kept,
                                  key=lambda q: order.get(q["id"], len(order)))
        doc["models"].update({k: m.value.provenance for k, m in models.items() if m is not None and m.value is not None})
        doc["counts"] = _counts(doc)
        write_json(out, doc)
        if entry["status"] == STATUS_DONE:
            res["written"].append(sid)
            log.info("sample %s: %d of %d questions kept", sid, entry["kept"], entry["parsed"])
    res["counts"] = _counts(doc)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = cli.dataset_parser(COMMAND, __doc__)
    ap.add_argument("out", type=Path, nargs="?", help="the questions file (default: data/tifa/<DATASET_DIR name>.json)")
    ap.add_argument("--lm", metavar="MODEL", help="question-writing causal LM: a local folder or hub id[@revision] "
                    "(default: tifa_questions.lm)")
    ap.add_argument("--qa", metavar="MODEL", help="filtering seq2seq QA model: a local folder or hub id[@revision] "
                    "(default: tifa_questions.qa)")
    ap.add_argument("--force", action="store_true", help="start the questions file over")
    args, overrides = ap.parse_known_args(argv)
    cfg = cli.start(args.dataset_dir, overrides)
    if cfg is None:
        return cli.NO_FOLDER
    from omegaconf import OmegaConf

    import run
    from baselines.prompt_models import captioner, rewriter
    from baselines.prompts import model_override
    from harness.runner import resolve_device
    from metrics.tifa_filter import text_qa

    q = OmegaConf.to_container(cfg.tifa_questions, resolve=True)
    for key, spec in (("lm", args.lm), ("qa", args.qa)):
        if spec:
            q[key] = model_override(spec, q[key])
    q = OmegaConf.create(q)
    device = resolve_device(cfg.device)
    out = args.out or run.REPO_ROOT / "data" / "tifa" / f"{args.dataset_dir.resolve().name}.json"
    try:
        res = generate(args.dataset_dir, out, q, lambda: rewriter(q.lm, device), lambda: text_qa(q.qa, device),
                       lambda: captioner(q.captioner, device), args.force)
    except (ValueError, ModelUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c = res["counts"]
    dropped = ", ".join(f"{n} {why}" for why, n in c["dropped"].items()) or "none"
    print(f"{args.dataset_dir}: {len(res['written'])} written, {len(res['done'])} already done, {len(res['failed'])} "
          f"failed; {c['questions']} questions kept, dropped: {dropped} -> {out}")
    for sid, err in res["failed"].items():
        print(f"  failed {sid!r}: {err}")
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
