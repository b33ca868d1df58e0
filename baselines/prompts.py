"""Text prompts for the text-driven methods, and the paper's protocol that makes them.

The paper (§4): "we caption the first frame of the source video and update the modified concept to the target
one (e.g., 'a dog running' → 'a cat running')". Every text-driven method gets its prompts from `prompts_for`,
which takes, in order:

1. the dataset's own `source_prompt` and `target_prompt` (the sample track, HD-VILA manifests, a folder's
   meta.json): origin `dataset`;
2. `DATASET_DIR/<sample id>/prompts.json`, written by this module's command line (origin `protocol`):

       python -m baselines.prompts DATASET_DIR [--captioner MODEL] [--rewriter MODEL] [--force] [key=value ...]

   It captions source frame 0 (`prompts.captioner`, BLIP) and has a local instruction-following LM
   (`prompts.rewriter`) rewrite the caption as the sample's instruction says. MODEL is a local folder or a hub
   id, optionally `@revision`; the rest of the config comes from conf/ (`models=svd` unless overridden, so real
   weights; `device=cuda`, `prompts.template=...`). Samples with a prompts.json are skipped unless `--force`;
   samples with their own prompts are left alone.
3. `prompts.fallback=caption_edited`: captions of the source frame 0 and of the edited frame 0 (origin
   `caption_edited`), the harness's earlier stand-in;

else the sample fails with a `SampleError` naming the command to run. The changed words (a token diff of the
two prompts, e.g. FateZero's blend words) travel with the prompts.
"""
from __future__ import annotations

import difflib
import json
import logging
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from baselines.prompt_models import captioner, describe, rewriter
from data.folder import SAMPLE_DIR_KEY
from harness import cli
from harness.types import EditSample, SampleError

log = logging.getLogger("prompts")

#: A sample's prompts file, in its dataset folder beside meta.json.
PROMPTS_FILE = "prompts.json"
#: The version of the prompts file's layout.
PROMPTS_VERSION = 1
#: Where prompts come from, as rows record it (`prompt_origin`).
ORIGIN_DATASET, ORIGIN_PROTOCOL, ORIGIN_CAPTION_EDITED = "dataset", "protocol", "caption_edited"
#: The allowed `prompts.fallback` values (None: no fallback, a sample without prompts fails).
FALLBACKS = (None, ORIGIN_CAPTION_EDITED)
#: The command that writes prompts files.
COMMAND = "python -m baselines.prompts"
#: The word tokens compared by `changed_words`: letters, digits, apostrophes and inner hyphens.
_WORD = re.compile(r"[\w']+(?:-[\w']+)*")
#: A label the LM may repeat before its answer ("New caption: ...").
_LABEL = re.compile(r"^\s*(?:new |edited |target )?caption\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'`"


@dataclass(frozen=True)
class Prompts:
    """The prompts one edit uses, the words that differ between them, and where they came from."""

    source: str
    target: str
    source_words: tuple[str, ...]  # words of `source` replaced or removed in `target`, in order
    target_words: tuple[str, ...]  # words of `target` that replace or add to `source`'s, in order
    origin: str  # ORIGIN_DATASET | ORIGIN_PROTOCOL | ORIGIN_CAPTION_EDITED
    made_by: str = ""  # the models that made them ("" for the dataset's own)

    def info(self) -> dict[str, Any]:
        """What an edit's `EditedVideo.info` records about its prompts (plain JSON values)."""
        return {"source_prompt": self.source, "target_prompt": self.target, "prompt_origin": self.origin,
                "changed_words_source": list(self.source_words), "changed_words_target": list(self.target_words),
                "prompts_made_by": self.made_by}


def changed_words(source: str, target: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The words that differ between two prompts, by a diff of their word tokens (case-insensitive):
    `("a dog running", "a cat running")` -> `(("dog",), ("cat",))`."""
    a, b = _WORD.findall(source), _WORD.findall(target)
    ops = difflib.SequenceMatcher(None, [w.lower() for w in a], [w.lower() for w in b], autojunk=False).get_opcodes()
    return (tuple(w for tag, i1, i2, _, _ in ops if tag != "equal" for w in a[i1:i2]),
            tuple(w for tag, _, _, j1, j2 in ops if tag != "equal" for w in b[j1:j2]))


def make_prompts(source: str, target: str, origin: str, made_by: str = "") -> Prompts:
    return Prompts(source, target, *changed_words(source, target), origin, made_by)


def prompts_file(sample: EditSample) -> Path:
    """Where `sample`'s prompts file is (or would be): in its folder, as the folder datasets record it."""
    return Path(sample.meta.get(SAMPLE_DIR_KEY) or Path("DATASET_DIR") / sample.id) / PROMPTS_FILE


def _rerun(path: Path, force: bool = False) -> str:
    return f"`{COMMAND} {path.parent.parent}{' --force' if force else ''}` (see README, Prompts)"


def read_prompts_file(sample_id: str, path: Path) -> Prompts:
    """The prompts a prompts file holds; `SampleError` naming the file and the command when it is unusable."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise SampleError(sample_id, path, f"cannot read the prompts ({e}); rewrite it with {_rerun(path, True)}") from e
    problem = record_problem(record)
    if problem:
        raise SampleError(sample_id, path, f"{problem}; rewrite it with {_rerun(path, True)}")
    words = record["changed_words"]
    made_by = f"captioner {record['captioner']['model']}, rewriter {record['rewriter']['model']}"
    return Prompts(record["source_prompt"], record["target_prompt"], tuple(words["source"]), tuple(words["target"]),
                   ORIGIN_PROTOCOL, made_by)


def record_problem(record: Any) -> str | None:
    """What is wrong with a prompts file's content, or None when it fits the layout `protocol_record` writes."""
    if not isinstance(record, dict):
        return "a prompts file is a JSON object"
    if record.get("version") != PROMPTS_VERSION:
        return f"version {record.get('version')!r} is not {PROMPTS_VERSION}"
    for key in ("source_prompt", "target_prompt"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            return f"{key} must be a non-empty string"
    words = record.get("changed_words")
    if not isinstance(words, dict) or not all(isinstance(words.get(k), list) and all(isinstance(w, str) for w in words[k])
                                              for k in ("source", "target")):
        return "changed_words must be {\"source\": [words], \"target\": [words]}"
    if not all(isinstance(record.get(k), dict) and isinstance(record[k].get("model"), str) for k in ("captioner", "rewriter")):
        return "captioner and rewriter must be objects naming their model"
    return None


def checked_config(cfg: Any) -> Any:
    """The `prompts` config node itself once its `fallback` is valid (methods check it when they are built)."""
    if cfg.get("fallback") not in FALLBACKS:
        raise ValueError(f"prompts.fallback must be one of {FALLBACKS}, got {cfg.get('fallback')!r}")
    return cfg


def prepare_prompts(cfg: Any, device: str = "cpu") -> None:
    """Load the models `prompts_for` may use (the captioner, with `fallback=caption_edited`), so that no edit's
    time counts their loading (`EditMethod.prepare`)."""
    if checked_config(cfg).get("fallback") == ORIGIN_CAPTION_EDITED:
        captioner(cfg.captioner, device)


def prompts_for(sample: EditSample, cfg: Any, device: str = "cpu") -> Prompts:
    """The prompts of `sample` for a text-driven method: the dataset's, else its prompts file, else `cfg.fallback`
    (the `prompts` config node); a `SampleError` naming the command to run when there are none."""
    fallback = checked_config(cfg).get("fallback")
    src, tgt = sample.source_prompt, sample.target_prompt
    if src and tgt:
        return make_prompts(src, tgt, ORIGIN_DATASET)
    path = prompts_file(sample)
    if path.exists() or path.is_symlink():
        return read_prompts_file(sample.id, path)
    if fallback == ORIGIN_CAPTION_EDITED:
        caps = captioner(cfg.captioner, device)([sample.source[0], sample.edited_frame])
        return make_prompts(src or caps[0], tgt or caps[1], ORIGIN_CAPTION_EDITED, f"captioner {describe(cfg.captioner)}")
    raise SampleError(sample.id, path, f"no prompts: run {_rerun(path)} to caption source frame 0 and rewrite it "
                      "as the instruction says, or set prompts.fallback=caption_edited to caption the edited frame")


# --- the protocol: caption + rewrite ------------------------------------------------------------------------
class CaptionModel(Protocol):
    provenance: dict[str, Any]

    def __call__(self, images: list[np.ndarray]) -> list[str]: ...


class RewriteModel(Protocol):
    provenance: dict[str, Any]

    def __call__(self, prompt: str) -> str: ...


def parse_rewrite(raw: str) -> str:
    """The caption in an LM's answer: its first non-empty line, without a "New caption:" label, quotes or a
    final period (BLIP captions have none)."""
    line = next((s.strip() for s in raw.splitlines() if s.strip()), "").strip(_QUOTES)
    line = _LABEL.sub("", line).strip().strip(_QUOTES).strip()
    return line[:-1].rstrip() if line.endswith(".") else line


def protocol_record(sample: EditSample, caption_model: CaptionModel, rewrite_model: RewriteModel, template: str,
                    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> dict[str, Any]:
    """The paper's prompts for `sample` with their provenance: the caption of source frame 0 as the source
    prompt, the LM's rewrite of it by the instruction as the target prompt (the layout of a prompts file)."""
    if not sample.instruction.strip():
        raise SampleError(sample.id, prompts_file(sample).parent / "meta.json",
                          "no instruction to rewrite the caption with (meta.json `instruction`)")
    raw_caption = caption_model([sample.source[0]])[0]
    caption = raw_caption.strip()
    if not caption:
        raise SampleError(sample.id, prompts_file(sample), "the captioner returned an empty caption of source frame 0")
    lm_prompt = template.format(caption=caption, instruction=sample.instruction.strip())
    raw = rewrite_model(lm_prompt)
    target = parse_rewrite(raw)
    if not target:
        raise SampleError(sample.id, prompts_file(sample), f"the rewriter returned no caption (raw output {raw!r})")
    src_words, tgt_words = changed_words(caption, target)
    if not src_words and not tgt_words:
        log.warning("sample %s: the rewrite of %r by %r changed no word", sample.id, caption, sample.instruction)
    return {
        "version": PROMPTS_VERSION,
        "sample_id": sample.id,
        "origin": ORIGIN_PROTOCOL,
        "source_prompt": caption,
        "target_prompt": target,
        "changed_words": {"source": list(src_words), "target": list(tgt_words)},
        "instruction": sample.instruction,
        "captioner": {**caption_model.provenance, "input": "source frame 0", "raw_output": raw_caption},
        "rewriter": {**rewrite_model.provenance, "template": template, "prompt": lm_prompt,
                     "input": getattr(rewrite_model, "last_input", lm_prompt), "raw_output": raw},
        "created": now().isoformat(timespec="seconds"),
    }


def write_prompts(root: Path, caption_model: Callable[[], CaptionModel], rewrite_model: Callable[[], RewriteModel],
                  template: str, force: bool = False) -> dict[str, Any]:
    """Write `prompts.json` into every sample folder of the dataset at `root` that needs one; resumable.

    The models are factories, called only when a sample needs them. Returns the counts and failures:
    `written`, `done` (already had a file), `own` (the dataset's prompts), `failed` (id -> error, unsafe folder
    names included; nothing is written for them).
    """
    from data.folder import FolderDataset, sample_dir
    from harness.files import write_json
    from harness.names import check_name

    ds = FolderDataset(root, name="prompts")
    ids = ds.all_ids()
    out: dict[str, Any] = {"written": [], "done": [], "own": [], "failed": dict(ds.unlisted)}
    for name, why in ds.unlisted.items():
        log.error("sample folder %r refused: its name %s", name, why)
    models: dict[str, Any] = {}
    for sid in ids:
        try:
            path = sample_dir(Path(root), check_name(sid, "sample id")) / PROMPTS_FILE
            if not force and (path.exists() or path.is_symlink()):
                try:
                    read_prompts_file(sid, path)
                    out["done"].append(sid)
                    continue
                except SampleError as e:
                    log.warning("%s; writing it again", e)
            sample = ds.load(sid)
            if sample.source_prompt and sample.target_prompt:
                out["own"].append(sid)
                continue
            if not models:
                models.update(caption=caption_model(), rewrite=rewrite_model())
            write_json(path, protocol_record(sample, models["caption"], models["rewrite"], template))
            out["written"].append(sid)
            log.info("sample %s: prompts written to %s", sid, path)
        except (SampleError, ValueError) as e:
            out["failed"][sid] = str(e)
            log.error("%s", e)
    return out


def model_override(spec: str, base: Any) -> dict[str, Any]:
    """A model node for `--captioner/--rewriter SPEC`: a local folder, or a hub id with an optional `@revision`."""
    if Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser().absolute()
        return {**base, "tiny": False, "repo": folder.name, "revision": None, "root": str(folder)}
    repo, _, revision = spec.partition("@")
    return {**base, "tiny": False, "repo": repo, "revision": revision or None, "root": None}


def main(argv: list[str] | None = None) -> int:
    ap = cli.dataset_parser(COMMAND, __doc__)
    ap.add_argument("--captioner", metavar="MODEL", help="image captioner: a local folder or hub id[@revision] "
                    "(default: prompts.captioner)")
    ap.add_argument("--rewriter", metavar="MODEL", help="instruction-following causal LM: a local folder or hub "
                    "id[@revision] (default: prompts.rewriter)")
    ap.add_argument("--force", action="store_true", help="rewrite samples that already have a prompts.json")
    args, overrides = ap.parse_known_args(argv)
    cfg = cli.start(args.dataset_dir, overrides)
    if cfg is None:
        return cli.NO_FOLDER
    from omegaconf import OmegaConf

    from harness.runner import resolve_device

    p = OmegaConf.to_container(cfg.prompts, resolve=True)
    if args.captioner:
        p["captioner"] = model_override(args.captioner, p["captioner"])
    if args.rewriter:
        p["rewriter"] = model_override(args.rewriter, p["rewriter"])
    device = resolve_device(cfg.device)
    cap_cfg, lm_cfg = OmegaConf.create(p["captioner"]), OmegaConf.create(p["rewriter"])
    res = write_prompts(args.dataset_dir, lambda: captioner(cap_cfg, device), lambda: rewriter(lm_cfg, device),
                        p["template"], args.force)
    print(f"{args.dataset_dir}: {len(res['written'])} written, {len(res['done'])} already done, "
          f"{len(res['own'])} with the dataset's own prompts, {len(res['failed'])} failed")
    for sid, err in res["failed"].items():
        print(f"  failed {sid!r}: {err}")
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
