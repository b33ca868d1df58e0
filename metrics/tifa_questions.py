"""Generate TIFA questions for a dataset with a local language model.

    python -m metrics.tifa_questions DATASET_DIR OUT.json --model LOCAL_LM [models=svd] [device=cuda] [models.root=DIR]

DATASET_DIR is in the common layout. A sample's questions are written from its target caption: meta.json's
`target_prompt` where the dataset has one, else a caption of its edited frame (edited.*) by the `models`
group's image captioner (baselines/prompts.py, BLIP through transformers; tiny and random under models=tiny,
so pass models=svd for real questions). MagicBrush ships instructions, not target captions, so its questions
come from captions. Each question records its text (`caption`) and where that came from (`caption_source`:
`target_prompt` or `captioner:<repo>@<revision>`). The LM (any causal LM that transformers loads from a
local folder) continues a few-shot prompt with one question per line,
`element_type | element | question | choice; choice; ... | answer`, which `parse_questions` reads.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

FEW_SHOT = """Write questions that check whether an image matches its caption, one per line:
element_type | element | question | choices separated by ; | answer

Caption: a red ball rolling on a wooden floor
object | ball | Is there a ball? | yes; no | yes
color | ball | What color is the ball? | red; blue; green; yellow | red
material | floor | What is the floor made of? | wood; stone; carpet; metal | wood

Caption: a cat sitting next to a blue vase
animal | cat | Is there a cat? | yes; no | yes
object | vase | Is there a vase? | yes; no | yes
color | vase | What color is the vase? | blue; red; white; green | blue

Caption: {caption}
"""


def parse_questions(text: str, sample_id: str, caption: str) -> list[dict]:
    """TIFA entries from the model's continuation; stops at the next caption, skips malformed lines."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.lower().startswith("caption:"):
            break
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 5 or not all(parts):
            continue
        element_type, element, question, choices, answer = parts
        choices = [c.strip() for c in choices.split(";") if c.strip()]
        if answer not in choices or len(choices) < 2:
            continue
        out.append({"id": sample_id, "caption": caption, "question": question, "choices": choices, "answer": answer,
                    "element_type": element_type, "element": element})
    return out


def generate(dataset_dir: Path, lm: Callable[[str], str], captioner: Callable[[list[np.ndarray]], list[str]] | None = None,
             captioner_name: str = "captioner") -> list[dict]:
    """Questions for every sample of `dataset_dir`. `lm` continues a prompt; `captioner` captions the edited
    frame of samples without a `target_prompt` (an error if such a sample exists and there is none)."""
    from data.video_io import read_image

    questions = []
    samples = sorted(p for p in Path(dataset_dir).iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    for sample in samples:
        meta = json.loads((sample / "meta.json").read_text()) if (sample / "meta.json").exists() else {}
        caption, source = meta.get("target_prompt"), "target_prompt"
        if not caption:
            edited = next(iter(sorted(sample.glob("edited.*"))), None)
            if captioner is None or edited is None:
                raise ValueError(f"{sample}: no target_prompt in meta.json and "
                                 f"{'no captioner' if edited is not None else 'no edited frame'} to caption")
            caption, source = captioner([read_image(edited)])[0].strip(), f"captioner:{captioner_name}"
        if not caption:
            log.warning("%s: empty caption; no questions", sample.name)
            continue
        found = parse_questions(lm(FEW_SHOT.format(caption=caption)), sample.name, caption)
        if not found:
            log.warning("%s: the language model wrote no usable question for %r", sample.name, caption)
        questions += [{**q, "caption_source": source} for q in found]
    return questions


def load_lm(model_dir: str, device: str, max_new_tokens: int) -> Callable[[str], str]:
    """A greedy text continuation with a local causal LM through transformers."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=model_dir, device=device)
    return lambda prompt: pipe(prompt, max_new_tokens=max_new_tokens, do_sample=False,
                               return_full_text=False)[0]["generated_text"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", required=True, help="a local folder with a causal LM (transformers from_pretrained)")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    args, overrides = ap.parse_known_args(argv)
    from hydra import compose, initialize_config_dir

    import run  # noqa: F401  (registers the repo_root resolver)
    from baselines.prompts import captioner, describe
    from harness.runner import resolve_device

    with initialize_config_dir(config_dir=str(Path(run.__file__).resolve().parent / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    device = resolve_device(cfg.device)
    cap_cfg = cfg.models.captioner
    qs = generate(args.dataset_dir, load_lm(args.model, device, args.max_new_tokens),
                  lambda images: captioner(cap_cfg, device)(images), describe(cap_cfg))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(qs, indent=1) + "\n")
    sources = sorted({q["caption_source"] for q in qs})
    print(f"{len(qs)} questions for {len({q['id'] for q in qs})} samples -> {args.out} (captions from: {', '.join(sources)})")


if __name__ == "__main__":
    main()
