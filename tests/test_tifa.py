"""TIFA question generation as TIFA publishes it (metrics/tifa_questions.py, metrics/tifa_filter.py): an LM writes
pairs in TIFA's format from each sample's target text, a text QA model filters them, and the questions file
(resumable, with provenance) is what the TIFA metric scores. Offline: stubs, or tiny random models saved and
loaded back through transformers' real loaders."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from baselines.prompt_models import Rewriter, build_tiny_lm
from data.video_io import write_image
from metrics import tifa_questions as TQ
from metrics.tifa import TIFA, load_questions
from metrics.tifa_filter import TextQA, build_tiny_t5, filter_questions, token_f1

REPO = Path(__file__).resolve().parents[1]
#: A short template: the tiny GPT-2 has 1024 positions and its byte tokenizer spends one per character.
SHORT_TEMPLATE = "Description: {caption}\nEntities:"
TINY = {"tiny": True, "seed": 0, "arch": "tiny"}

#: A TIFA-format completion: two usable blocks, a pair of an unknown type, an answer outside its choices, a
#: repeated question, and a next example the parser must not read.
STUB_OUTPUT = """ dog, hat
Activities:
Colors: red
Counting:
Other attributes:
Questions and answers are below:
About dog (animal):
Q: is there a dog?
Choices: yes, no
A: yes
About hat (object):
Q: what is the dog wearing?
Choices: hat, scarf, collar, glasses
A: Hat
Q: is there a dog?
Choices: yes, no
A: yes
About red (color):
Q: what color is the hat?
Choices: red, blue, green, black
A: purple
About mood (feeling):
Q: is the dog happy?
Choices: yes, no
A: yes

Description: a cat on a mat
About cat (animal):
Q: is there a cat?
Choices: yes, no
A: yes"""


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**over):
    """The `tifa_questions` node as conf/ composes it under models=tiny, with `over` applied."""
    import run

    cfg = run.compose("models=tiny")
    node = OmegaConf.to_container(cfg.tifa_questions, resolve=True)
    node.update(over)
    return OmegaConf.create(node)


class StubLM:
    provenance = {"model": "stub-lm", "revision": "beef", "loaded_from": "/stub/lm", "tiny": False}

    def __init__(self, outputs: dict[str, str] | None = None, default: str = STUB_OUTPUT):
        self.outputs, self.default, self.prompts = outputs or {}, default, []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return next((v for k, v in self.outputs.items() if k in prompt), self.default)


class StubQA:
    """Answers like a perfect reader of the caption, except for the questions in `wrong` (question -> answer)."""

    provenance = {"model": "stub-qa", "revision": "cafe", "loaded_from": "/stub/qa", "tiny": False}

    def __init__(self, wrong: dict[str, str] | None = None, free: dict[str, str] | None = None):
        self.wrong, self.free, self.inputs = wrong or {}, free or {}, []

    def __call__(self, text: str) -> str:
        self.inputs.append(text)
        question = text.split(" \n ")[0]
        if text.count(" \n ") == 1:  # the free-form input: question and caption only
            return self.free.get(question, "hat")
        if question in self.wrong:
            return self.wrong[question]
        return {"is there a dog?": "yes", "what is the dog wearing?": "hat"}.get(question, "yes")


class StubCaptioner:
    provenance = {"model": "stub-blip", "revision": "c0ffee", "loaded_from": "/stub/blip", "tiny": False}

    def __call__(self, images):
        return [" a dog wearing a hat "] * len(images)


def _dataset(root: Path, samples: dict[str, dict]) -> Path:
    """Sample folders with a 14-frame source, an edited frame and `meta.json` (None: no meta.json)."""
    rng = np.random.default_rng(0)
    for sid, meta in samples.items():
        d = root / sid
        (d / "source").mkdir(parents=True)
        for t in range(14):
            write_image(d / "source" / f"{t:03d}.png", rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
        write_image(d / "edited.png", rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
        if meta is not None:
            (d / "meta.json").write_text(json.dumps(meta))
    return root


def test_parser_reads_tifa_format_into_records():
    types = list(_cfg().element_types)
    pairs, dropped = TQ.parse_questions(STUB_OUTPUT, "s1", "a dog wearing a red hat", "target_prompt", types)
    base = {"id": "s1", "caption": "a dog wearing a red hat", "caption_source": "target_prompt"}
    assert pairs == [
        {**base, "question": "is there a dog?", "choices": ["yes", "no"], "answer": "yes", "element_type": "animal/human",
         "element": "dog", "question_type": "yes_no"},
        {**base, "question": "what is the dog wearing?", "choices": ["hat", "scarf", "collar", "glasses"], "answer": "hat",
         "element_type": "object", "element": "hat", "question_type": "multiple_choice"},
        {**base, "question": "is there a dog?", "choices": ["yes", "no"], "answer": "yes", "element_type": "object",
         "element": "hat", "question_type": "yes_no"},
    ]
    assert [(d["question"], d["reason"]) for d in dropped] == [("what color is the hat?", "answer_not_in_choices"),
                                                               ("is the dog happy?", "element_type")]
    with pytest.raises(TQ.MalformedOutput, match="no complete question"):
        TQ.parse_questions("Entities: dog\nQ: is there a dog?\nA: yes", "s1", "a dog", "target_prompt", types)


def test_filter_drops_pairs_the_qa_model_does_not_reproduce():
    types, flt = list(_cfg().element_types), _cfg().filter
    pairs, _ = TQ.parse_questions(STUB_OUTPUT, "s1", "a dog wearing a red hat", "target_prompt", types)
    qa = StubQA()
    kept, dropped = filter_questions(pairs, qa, flt)
    assert [p["question"] for p in kept] == ["is there a dog?", "what is the dog wearing?"]
    assert dropped == [{"question": "is there a dog?", "answer": "yes", "reason": "duplicate"}]
    assert qa.inputs[1] == "what is the dog wearing? \n a dog wearing a red hat \n (A) hat (B) scarf (C) collar (D) glasses"
    assert qa.inputs[2] == "what is the dog wearing? \n a dog wearing a red hat"  # free-form check: not yes/no
    kept, dropped = filter_questions(pairs, StubQA(wrong={"is there a dog?": "no"}, free={"what is the dog wearing?": "a scarf"}), flt)
    assert kept == []
    assert [(d["reason"], d.get("qa_answer")) for d in dropped] == [("qa_choice", "no"), ("qa_free_form", "a scarf"),
                                                                    ("duplicate", None)]
    assert token_f1("2", "two") == 1.0 and token_f1("red hat", "a red hat") == pytest.approx(0.8)
    assert token_f1("red", "blue") == 0.0


def test_stub_models_write_the_questions_file_with_provenance_and_resume(tmp_path):
    """Target texts come from target_prompt, then prompts.json, then a caption; a malformed output fails only its
    sample; a rerun skips done samples and retries the failed one; the TIFA metric reads the file."""
    root = _dataset(tmp_path / "ds", {"a_prompt": {"instruction": "add a hat", "target_prompt": "a dog wearing a red hat"},
                                      "b_file": {"instruction": "add a hat"}, "c_caption": {"instruction": "add a hat"},
                                      "d_bad": {"instruction": "x", "target_prompt": "a broken sample"}})
    (root / "b_file" / "prompts.json").write_text(json.dumps({
        "version": 1, "source_prompt": "a dog", "target_prompt": "a dog wearing a hat", "changed_words": {
            "source": [], "target": ["wearing", "a", "hat"]}, "captioner": {"model": "m"}, "rewriter": {"model": "r"}}))
    lm, out = StubLM({"a broken sample": "I cannot help with that."}), tmp_path / "q.json"
    loads = []
    res = TQ.generate(root, out, _cfg(), lambda: loads.append("lm") or lm, lambda: loads.append("qa") or StubQA(),
                      lambda: loads.append("cap") or StubCaptioner())
    assert sorted(loads) == ["cap", "lm", "qa"]  # each model loaded once
    assert res["written"] == ["a_prompt", "b_file", "c_caption"] and list(res["failed"]) == ["d_bad"]
    doc = json.loads(out.read_text())
    assert (doc["format"], doc["version"]) == ("tifa-questions", 1)
    assert doc["models"] == {"lm": StubLM.provenance, "qa": StubQA.provenance, "captioner": StubCaptioner.provenance}
    assert doc["settings"]["lm"] == {"model": "tiny random (seed 0)", "revision": None, "tiny": True, "max_new_tokens": 512}
    s = doc["samples"]
    assert [(s[k]["caption"], s[k]["caption_source"]) for k in ("a_prompt", "b_file", "c_caption")] == [
        ("a dog wearing a red hat", "target_prompt"), ("a dog wearing a hat", "prompts_file"),
        ("a dog wearing a hat", "captioner:tiny random BLIP (seed 0)")]
    assert s["a_prompt"]["raw_output"] == STUB_OUTPUT and (s["a_prompt"]["parsed"], s["a_prompt"]["kept"]) == (5, 2)
    assert s["d_bad"]["status"] == "error" and "MalformedOutput" in s["d_bad"]["error"]
    assert s["d_bad"]["raw_output"] == "I cannot help with that."
    assert doc["counts"] == {"samples_done": 3, "samples_failed": 1, "questions": 6,
                             "dropped": {"answer_not_in_choices": 3, "duplicate": 3, "element_type": 3}}
    assert lm.prompts[0].endswith("Description: a dog wearing a red hat\nEntities:")
    got = load_questions(out)
    assert sorted(got) == ["a_prompt", "b_file", "c_caption"] and got["c_caption"][0]["caption"] == "a dog wearing a hat"
    metric = TIFA(str(out), TINY, TINY)
    assert "made by lm tiny random (seed 0)@None, qa tiny random (seed 0)@None" in metric.info["tifa_questions"]

    lm2 = StubLM()
    res = TQ.generate(root, out, _cfg(), lambda: lm2, StubQA, lambda: pytest.fail("nothing needs a caption"))
    assert res["done"] == ["a_prompt", "b_file", "c_caption"] and res["written"] == ["d_bad"] and not res["failed"]
    assert len(lm2.prompts) == 1 and "a broken sample" in lm2.prompts[0]
    before = out.stat().st_mtime_ns
    res = TQ.generate(root, out, _cfg(), lambda: pytest.fail("no model is needed"), StubQA, None)
    assert len(res["done"]) == 4 and out.stat().st_mtime_ns == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporaries left


def test_other_settings_or_a_hand_written_file_are_not_resumed(tmp_path):
    root = _dataset(tmp_path / "ds", {"a": {"target_prompt": "a dog wearing a red hat"}})
    out = tmp_path / "q.json"
    TQ.generate(root, out, _cfg(), StubLM, StubQA, None)
    with pytest.raises(ValueError, match="other settings.*filter"):
        TQ.generate(root, out, _cfg(filter={**_cfg().filter, "free_form_f1_threshold": 0.5}), StubLM, StubQA, None)
    hand = tmp_path / "hand.json"
    hand.write_text((REPO / "data/tifa/sample.json").read_text())
    with pytest.raises(ValueError, match="not a questions file written by"):
        TQ.generate(root, hand, _cfg(), StubLM, StubQA, None)
    res = TQ.generate(root, hand, _cfg(), StubLM, StubQA, None, force=True)
    assert res["written"] == ["a"] and json.loads(hand.read_text())["format"] == "tifa-questions"


def test_without_text_or_fallback_a_sample_fails_naming_the_prompts_command(tmp_path):
    root = _dataset(tmp_path / "ds", {"a": {"instruction": "add a hat"}})
    res = TQ.generate(root, tmp_path / "q.json", _cfg(caption_fallback=False), StubLM, StubQA, None)
    assert "python -m baselines.prompts" in res["failed"]["a"] and "caption_fallback is off" in res["failed"]["a"]


def test_unsafe_sample_ids_are_refused(tmp_path):
    root = _dataset(tmp_path / "ds", {"ok": {"target_prompt": "a dog wearing a red hat"},
                                      "bad name ": {"target_prompt": "a dog"}})
    outside = _dataset(tmp_path / "outside", {"elsewhere": {"target_prompt": "a cat"}})
    (root / "escape").symlink_to(outside / "elsewhere", target_is_directory=True)
    out = tmp_path / "q.json"
    res = TQ.generate(root, out, _cfg(), StubLM, StubQA, None)
    assert res["written"] == ["ok"] and set(res["failed"]) == {"bad name ", "escape"}
    doc = json.loads(out.read_text())
    assert "white space" in doc["refused"]["bad name "] and "outside the dataset folder" in doc["samples"]["escape"]["error"]
    assert {q["id"] for q in doc["questions"]} == {"ok"}
    with pytest.raises(Exception, match="path separator"):
        TQ.target_text(root, "../x", None, "")


def test_tiny_real_lm_and_t5_end_to_end(tmp_path, capsys):
    """The tiny GPT-2 and the tiny T5, saved with save_pretrained and loaded back by the command (`--lm DIR
    --qa DIR`, AutoModelForCausalLM / AutoModelForSeq2SeqLM): the LM's output is noise, so its samples fail with
    the raw output recorded; then a TIFA block appended to the real LM's output gives the real T5 pairs to judge."""
    root = _dataset(tmp_path / "ds", {"a": {"target_prompt": "a red hat"}, "b": {"target_prompt": "a blue cup"}})
    lm_dir, qa_dir = build_tiny_lm(seed=1, folder=tmp_path / "tiny-lm"), build_tiny_t5(seed=1, folder=tmp_path / "tiny-t5")
    out = tmp_path / "q.json"
    over = ["models=tiny", "device=cpu", "tifa_questions.lm.max_new_tokens=16", "tifa_questions.qa.max_new_tokens=4",
            f"tifa_questions.template='{SHORT_TEMPLATE}'"]
    assert TQ.main([str(root), str(out), "--lm", str(lm_dir), "--qa", str(qa_dir), *over]) == 1
    assert "0 written, 0 already done, 2 failed" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert (doc["models"]["lm"]["loaded_from"], doc["models"]["lm"]["tiny"]) == (str(lm_dir), False)
    assert doc["settings"]["lm"]["model"] == "tiny-lm" and doc["settings"]["qa"]["model"] == "tiny-t5"
    assert all(s["status"] == "error" and "raw_output" in s for s in doc["samples"].values())

    cfg = OmegaConf.create({"repo": "tiny-lm", "root": str(lm_dir), "tiny": False, "max_new_tokens": 16})
    real_lm = Rewriter(cfg, "cpu")
    lm = lambda prompt: real_lm(prompt) + "\n" + STUB_OUTPUT  # noqa: E731
    lm.provenance = real_lm.provenance
    qa = TextQA(OmegaConf.create({"repo": "tiny-t5", "root": str(qa_dir), "tiny": False, "max_new_tokens": 4}), "cpu")
    res = TQ.generate(root, tmp_path / "q2.json", _cfg(template=SHORT_TEMPLATE), lambda: lm, lambda: qa, None)
    assert res["written"] == ["a", "b"]
    doc = json.loads((tmp_path / "q2.json").read_text())
    assert doc["models"]["qa"]["loaded_from"] == str(qa_dir)
    judged = [d for s in doc["samples"].values() for d in s["dropped"] if d["reason"] in ("qa_choice", "qa_free_form")]
    assert len(judged) + doc["counts"]["questions"] == 4  # two distinct pairs per sample reach the QA model
    assert all("qa_answer" in d for d in judged)
