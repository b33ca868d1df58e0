"""Generate TIFA questions for a dataset from its target captions with a local language model.

    python -m metrics.tifa_questions DATASET_DIR OUT.json --model LOCAL_MODEL_DIR

DATASET_DIR is in the common layout (each sample's meta.json has `target_prompt`). The model (any causal
LM that transformers loads from a local folder) continues a few-shot prompt with one question per line,
`element_type | element | question | choice; choice; ... | answer`, which `parse_questions` reads.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def generate(dataset_dir: Path, model_dir: str, max_new_tokens: int = 200) -> list[dict]:
    from transformers import pipeline

    lm = pipeline("text-generation", model=model_dir)
    questions = []
    for sample in sorted(p for p in Path(dataset_dir).iterdir() if (p / "meta.json").exists()):
        caption = json.loads((sample / "meta.json").read_text()).get("target_prompt")
        if not caption:
            continue
        prompt = FEW_SHOT.format(caption=caption)
        text = lm(prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)[0]["generated_text"]
        questions += parse_questions(text, sample.name, caption)
    return questions


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", required=True, help="a local folder with a causal LM (transformers from_pretrained)")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    args = ap.parse_args(argv)
    qs = generate(args.dataset_dir, args.model, args.max_new_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(qs, indent=1) + "\n")
    print(f"{len(qs)} questions for {len({q['id'] for q in qs})} samples -> {args.out}")


if __name__ == "__main__":
    main()
