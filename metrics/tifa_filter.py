"""TIFA's question filter: a text question-answering model reads the caption and must reproduce each answer.

As in TIFA's published pipeline (Hu et al. 2023, `tifascore/question_filter.py`, UnifiedQA-v2 T5-large), a
question-answer pair written by the language model is kept only when

1. its question is not a repeat of an earlier one for the same caption,
2. the QA model, given the question, the caption and the choices, answers with the pair's answer, and
3. for answers other than yes/no, the QA model's free-form answer (question and caption only) overlaps the
   answer with a token F1 above a threshold (numbers written as words count as digits).

The QA model is any seq2seq model transformers loads (`AutoModelForSeq2SeqLM` + `AutoTokenizer`), configured
like the prompt protocol's models (`repo` + `revision`, `root`, or `tiny: true` for a seeded random T5 saved
and loaded back through the same `from_pretrained` calls).
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch

from baselines.prompt_models import _folder, provenance
from harness.cache import cache_key, cached

#: Why a pair was dropped, as the questions file records it.
DROP_DUPLICATE, DROP_QA_CHOICE, DROP_QA_FREE_FORM = "duplicate", "qa_choice", "qa_free_form"
#: Answers the free-form check leaves alone (TIFA checks only the multiple-choice answer of yes/no questions).
YES_NO = ("yes", "no")
#: Number words the free-form check reads as digits when the expected answer is a number.
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
#: The tiny T5's special tokens, in id order (pad is also the decoder's start token, as in T5).
TINY_T5_SPECIALS = ("<pad>", "</s>", "<unk>")
_NOT_WORD = re.compile(r"[^\w\s]|_")


def normalize(text: str) -> str:
    """Lower case, letters, digits and spaces only (how TIFA compares free-form answers)."""
    return " ".join(_NOT_WORD.sub("", text).lower().split())


def token_f1(expected: str, got: str) -> float:
    """TIFA's token F1 of a free-form answer: precision over `got`'s tokens found in `expected`, recall over
    `expected`'s tokens found in `got` (membership, not multiset counts)."""
    gold, pred = normalize(expected).split(), normalize(got).split()
    if not gold:
        return float(not pred)
    pred = [NUMBER_WORDS.get(t, t) for t in pred] if all(t.isdigit() for t in gold) else pred
    hits = sum(g in pred for g in gold)
    extra = sum(p not in gold for p in pred)
    precision = hits / (hits + extra) if hits + extra else 0.0
    recall = hits / len(gold)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def build_tiny_t5(seed: int, folder: Path | None = None) -> Path:
    """A tiny random T5 with a byte-level tokenizer (every text encodes; inputs end with </s> as T5's do),
    saved like a hub repo into `folder` (a new temporary folder by default)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-t5-"))
    vocab = {t: i for i, t in enumerate(TINY_T5_SPECIALS)}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    pad, eos, unk = TINY_T5_SPECIALS
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, vocab[eos])])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, eos_token=eos, unk_token=unk)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        pad_token_id=vocab[pad], eos_token_id=vocab[eos], decoder_start_token_id=vocab[pad]))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class QAModel(Protocol):
    provenance: dict[str, Any]

    def __call__(self, text: str) -> str: ...


class TextQA:
    """A local text QA model (UnifiedQA-style seq2seq): `qa(text)` is its greedy answer, special tokens dropped."""

    def __init__(self, cfg: Any, device: str):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        folder = _folder(cfg, "t5", build_tiny_t5)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32  # T5 overflows in fp16
        self.model = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        self.device = device
        self.max_new_tokens = int(cfg.max_new_tokens)
        self.provenance = provenance(cfg, folder, "T5")

    @torch.no_grad()
    def __call__(self, text: str) -> str:
        inputs = self.tokenizer(text, return_tensors="pt").to(self.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0], skip_special_tokens=True).strip()


def text_qa(cfg: Any, device: str) -> TextQA:
    return cached(cache_key("text_qa", cfg, device), lambda: TextQA(cfg, device))


def filter_questions(pairs: list[dict], qa: QAModel, cfg: Any) -> tuple[list[dict], list[dict]]:
    """(kept, dropped) for one caption's pairs, as TIFA filters them (module docstring). `cfg` is the
    `tifa_questions.filter` node: `mc_input` / `free_form_input` (formats of the two QA inputs), `choice_labels`
    (one per shown choice; further choices are not shown), `free_form_f1_threshold` (a free-form answer
    is kept when its F1 is above it). Each dropped pair is
    `{question, answer, reason, qa_answer[, f1]}`."""
    labels = list(cfg.choice_labels)
    kept, dropped, seen = [], [], set()
    for p in pairs:
        q, answer = p["question"], p["answer"]
        if q in seen:
            dropped.append({"question": q, "answer": answer, "reason": DROP_DUPLICATE})
            continue
        seen.add(q)
        shown = " ".join(f"{label} {c}" for label, c in zip(labels, p["choices"]))
        chosen = qa(cfg.mc_input.format(question=q, context=p["caption"], choices=shown))
        if normalize(chosen) != normalize(answer):
            dropped.append({"question": q, "answer": answer, "reason": DROP_QA_CHOICE, "qa_answer": chosen})
            continue
        if normalize(answer) not in YES_NO:
            free = qa(cfg.free_form_input.format(question=q, context=p["caption"]))
            f1 = token_f1(answer, free)
            if f1 <= float(cfg.free_form_f1_threshold):
                dropped.append({"question": q, "answer": answer, "reason": DROP_QA_FREE_FORM, "qa_answer": free,
                                "f1": round(f1, 4)})
                continue
        kept.append(p)
    return kept, dropped
