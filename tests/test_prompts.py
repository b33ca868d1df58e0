"""The prompt protocol (baselines/prompts.py): caption source frame 0, rewrite it by the instruction with a local
LM, write prompts.json per sample with provenance; and the one path every text-driven method reads prompts by."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import run
from baselines import prompts as P
from baselines.prompt_models import Rewriter, build_tiny_lm
from data.folder import SAMPLE_DIR_KEY, FolderDataset
from harness.results import RunDir
from harness.types import EditSample, SampleError

TEMPLATE = "Caption: {caption}\nEdit: {instruction}\nNew caption:"
TINY_BLIP = {"repo": "Salesforce/blip-image-captioning-base", "tiny": True, "seed": 0, "max_new_tokens": 5}


pytestmark = pytest.mark.usefixtures("one_thread")


class StubCaptioner:
    provenance = {"model": "stub-blip", "revision": "c0ffee", "loaded_from": "/stub/blip", "tiny": False}

    def __init__(self, caption: str = "a dog running on grass"):
        self.caption, self.seen = caption, []

    def __call__(self, images):
        self.seen += list(images)
        return [f" {self.caption} "] * len(images)


class StubRewriter:
    provenance = {"model": "stub-lm", "revision": "beef", "loaded_from": "/stub/lm", "tiny": False}

    def __init__(self, answer: str = "New caption: a cat running on grass.\nCaption: more"):
        self.answer, self.prompts = answer, []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        return self.answer


def _bare_folder(sample_track, root: Path, n: int = 2, instruction: str | None = "make the dog a cat") -> list[str]:
    """`n` samples of the sample track copied into `root` without their prompts (and with `instruction`)."""
    ids = sample_track.ids()[:n]
    for sid in ids:
        shutil.copytree(sample_track.root / sid, root / sid, ignore=shutil.ignore_patterns("truth"))
        meta = json.loads((root / sid / "meta.json").read_text())
        meta.update(source_prompt=None, target_prompt=None, instruction=instruction)
        (root / sid / "meta.json").write_text(json.dumps(meta))
    return ids


def test_changed_words_by_a_token_diff():
    assert P.changed_words("a dog running on grass", "a cat running on grass") == (("dog",), ("cat",))
    assert P.changed_words("a man walking", "a man wearing a red hat walking") == ((), ("wearing", "a", "red", "hat"))
    assert P.changed_words("A Dog, running", "a dog running") == ((), ())  # case and punctuation are not words
    assert P.changed_words("a brown dog", "a black-and-white cat") == (("brown", "dog"), ("black-and-white", "cat"))


def test_protocol_captions_source_frame_0_and_rewrites_it_with_provenance(sample_track):
    sample = dataclasses.replace(sample_track.load(sample_track.ids()[0]), instruction="make the dog a cat",
                                 source_prompt=None, target_prompt=None)
    cap, lm = StubCaptioner(), StubRewriter()
    rec = P.protocol_record(sample, cap, lm, TEMPLATE)
    np.testing.assert_array_equal(cap.seen[0], sample.source[0])  # the source's frame 0, not the edited frame
    assert len(cap.seen) == 1
    assert lm.prompts == ["Caption: a dog running on grass\nEdit: make the dog a cat\nNew caption:"]
    assert (rec["source_prompt"], rec["target_prompt"]) == ("a dog running on grass", "a cat running on grass")
    assert rec["changed_words"] == {"source": ["dog"], "target": ["cat"]}
    assert rec["origin"] == "protocol" and rec["instruction"] == "make the dog a cat" and rec["sample_id"] == sample.id
    assert rec["captioner"] == {**StubCaptioner.provenance, "input": "source frame 0", "raw_output": " a dog running on grass "}
    assert rec["rewriter"] == {**StubRewriter.provenance, "template": TEMPLATE, "prompt": lm.prompts[0],
                               "input": lm.prompts[0], "raw_output": lm.answer}
    assert rec["created"].endswith("+00:00") and P.record_problem(rec) is None
    with pytest.raises(SampleError, match="no instruction"):
        P.protocol_record(dataclasses.replace(sample, instruction=" "), cap, lm, TEMPLATE)
    with pytest.raises(SampleError, match="returned no caption"):
        P.protocol_record(sample, cap, StubRewriter("\n  \n"), TEMPLATE)


def test_cli_writes_prompts_per_sample_and_a_rerun_skips(sample_track, tmp_path, capsys):
    root = tmp_path / "ds"
    ids = _bare_folder(sample_track, root)
    assert P.main([str(root), "models=tiny", "device=cpu"]) == 0
    assert "2 written, 0 already done" in capsys.readouterr().out
    for sid in ids:
        rec = json.loads((root / sid / "prompts.json").read_text())
        assert P.record_problem(rec) is None and rec["sample_id"] == sid
        assert rec["captioner"]["model"] == "tiny random BLIP (seed 0)" and rec["rewriter"]["model"] == "tiny random GPT-2 (seed 0)"
        assert rec["rewriter"]["chat_template"] and rec["rewriter"]["input"].startswith("user: Rewrite an image caption")
        assert rec["rewriter"]["raw_output"] and rec["captioner"]["raw_output"]
    before = {sid: (root / sid / "prompts.json").stat().st_mtime_ns for sid in ids}
    assert P.main([str(root), "models=tiny", "device=cpu"]) == 0
    assert "0 written, 2 already done" in capsys.readouterr().out
    assert {sid: (root / sid / "prompts.json").stat().st_mtime_ns for sid in ids} == before
    assert P.main([str(root), "models=tiny", "device=cpu", "--force"]) == 0
    assert "2 written, 0 already done" in capsys.readouterr().out
    assert sorted(p.name for p in (root / ids[0]).iterdir() if p.name.startswith(".")) == []  # no temporaries left


def test_stub_models_through_write_prompts_then_prompts_for_reads_them(sample_track, tmp_path):
    root = tmp_path / "ds"
    ids = _bare_folder(sample_track, root)
    calls = []
    res = P.write_prompts(root, lambda: calls.append("cap") or StubCaptioner(), lambda: StubRewriter(), TEMPLATE)
    assert res["written"] == ids and calls == ["cap"]  # the models are loaded once, when first needed
    sample = FolderDataset(root).load(ids[0])
    got = P.prompts_for(sample, OmegaConf.create({"fallback": None}))
    assert got == P.Prompts("a dog running on grass", "a cat running on grass", ("dog",), ("cat",), "protocol",
                            "captioner stub-blip, rewriter stub-lm")
    assert got.info()["changed_words_source"] == ["dog"]
    res = P.write_prompts(root, lambda: pytest.fail("no model is needed"), lambda: pytest.fail("none"), TEMPLATE)
    assert res["done"] == ids and not res["written"]


def test_dataset_prompts_win_over_a_prompts_file(sample_track, tmp_path):
    root = tmp_path / "ds"
    (sid,) = _bare_folder(sample_track, root, n=1)
    P.write_prompts(root, StubCaptioner, StubRewriter, TEMPLATE)
    meta = json.loads((root / sid / "meta.json").read_text())
    (root / sid / "meta.json").write_text(json.dumps({**meta, "source_prompt": "a red ball", "target_prompt": "a blue ball"}))
    sample = FolderDataset(root).load(sid)
    assert P.prompts_for(sample, OmegaConf.create({"fallback": None})) == P.Prompts(
        "a red ball", "a blue ball", ("red",), ("blue",), "dataset")
    res = P.write_prompts(root, lambda: pytest.fail("no model is needed"), lambda: pytest.fail("none"), TEMPLATE, force=True)
    assert res["own"] == [sid]


def test_unusable_prompts_file_and_fallback_values(sample_track, compose, tmp_path):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    root = tmp_path / "ds"
    (sid,) = _bare_folder(sample_track, root, n=1)
    (root / sid / "prompts.json").write_text('{"version": 1, "source_prompt": "a dog"}')
    sample = FolderDataset(root).load(sid)
    with pytest.raises(SampleError, match=r"target_prompt must be a non-empty string; rewrite it with `python -m "
                                          r"baselines.prompts .* --force`"):
        P.prompts_for(sample, OmegaConf.create({"fallback": None}))
    with pytest.raises(ValueError, match="prompts.fallback must be one of"):
        P.prompts_for(sample, OmegaConf.create({"fallback": "captioner"}))
    with pytest.raises(InstantiationException, match="prompts.fallback must be one of"):  # a method refuses it when built
        instantiate(compose("method=tokenflow", "models=tiny", "device=cpu", "prompts.fallback=caption").method)
    res = P.write_prompts(root, StubCaptioner, StubRewriter, TEMPLATE)  # a damaged file is written again
    assert res["written"] == [sid]


def test_fallback_captions_the_edited_frame(sample_track):
    from baselines.prompt_models import captioner

    sample = sample_track.load(sample_track.ids()[0])
    cfg = OmegaConf.create({"fallback": "caption_edited", "captioner": TINY_BLIP})
    assert P.prompts_for(sample, cfg).origin == "dataset"
    bare = dataclasses.replace(sample, source_prompt=None, target_prompt=None, meta={})
    got = P.prompts_for(bare, cfg)
    cap = captioner(cfg.captioner, "cpu")
    assert (got.source, got.target) == (cap([sample.source[0]])[0], cap([sample.edited_frame])[0])
    assert got.origin == "caption_edited" and got.made_by == "captioner tiny random BLIP (seed 0)"
    with pytest.raises(SampleError, match=r"no prompts: run `python -m baselines.prompts DATASET_DIR`"):
        P.prompts_for(bare, OmegaConf.create({"fallback": None}))


def test_a_method_without_prompts_fails_the_sample_naming_the_command(sample_track, compose, tmp_path):
    root = tmp_path / "ds"
    (sid,) = _bare_folder(sample_track, root, n=1)
    cfg = compose("method=tokenflow", "models=tiny", "dataset=folder", f"dataset.root={root}", "device=cpu")
    run.main(cfg)
    (row,) = RunDir(tmp_path / "results" / "folder" / "tiny" / "tokenflow").rows()
    assert row.status == "failed"
    assert f"{root / sid / 'prompts.json'}: no prompts: run `python -m baselines.prompts {root}`" in row.error


def test_methods_record_the_prompts_they_used(sample_track, tmp_path):
    """AnyV2V and TokenFlow read a prompts file through `prompts_for` and record it in their info."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tests.conftest import REPO

    root = tmp_path / "ds"
    (sid,) = _bare_folder(sample_track, root, n=1)
    P.write_prompts(root, StubCaptioner, StubRewriter, TEMPLATE)
    full = FolderDataset(root).load(sid)
    sample = dataclasses.replace(full, source=full.source[:2])
    for method in ("anyv2v", "tokenflow"):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"method={method}", "models=tiny", "device=cpu",
                                                          *(["method.group_size=2"] if method == "tokenflow" else [])])
        info = instantiate(cfg.method).edit(sample, 0).info
        assert {k: info[k] for k in ("source_prompt", "target_prompt", "prompt_origin", "changed_words_source",
                                     "changed_words_target", "prompts_made_by")} == {
            "source_prompt": "a dog running on grass", "target_prompt": "a cat running on grass",
            "prompt_origin": "protocol", "changed_words_source": ["dog"], "changed_words_target": ["cat"],
            "prompts_made_by": "captioner stub-blip, rewriter stub-lm"}, method


def test_tiny_lm_saved_and_loaded_back_through_the_real_loader(sample_track, tmp_path):
    """A tiny GPT-2 saved with save_pretrained is the rewriter (`--rewriter DIR`, AutoModelForCausalLM), and its
    raw output is what the prompts file records."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_lm(seed=3, folder=tmp_path / "tiny-lm")
    root = tmp_path / "ds"
    (sid,) = _bare_folder(sample_track, root, n=1)
    assert P.main([str(root), "models=tiny", "device=cpu", "--rewriter", str(folder)]) == 0
    rec = json.loads((root / sid / "prompts.json").read_text())
    lm = rec["rewriter"]
    assert (lm["model"], lm["revision"], lm["loaded_from"], lm["tiny"]) == ("tiny-lm", None, str(folder), False)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    ids = tok(lm["input"], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=lm["max_new_tokens"], do_sample=False, pad_token_id=tok.pad_token_id)
    assert lm["raw_output"] == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert lm["input"] == tok.apply_chat_template([{"role": "user", "content": lm["prompt"]}], tokenize=False,
                                                  add_generation_prompt=True)
    assert rec["target_prompt"] == P.parse_rewrite(lm["raw_output"])
    cfg = OmegaConf.create({"repo": "x/tiny-lm", "revision": None, "root": str(folder / "missing"), "tiny": False,
                            "max_new_tokens": 4})
    from harness.weights import MissingWeights

    with pytest.raises(MissingWeights):  # never random weights in place of missing ones
        Rewriter(cfg, "cpu")


def test_unsafe_or_escaping_sample_folders_are_refused(sample_track, tmp_path, capsys):
    root, outside = tmp_path / "ds", tmp_path / "outside"
    (sid,) = _bare_folder(sample_track, outside, n=1)
    root.mkdir()
    shutil.copytree(outside / sid, root / "bad name ")  # trailing white space: not a safe folder name
    (root / "escape").symlink_to(outside / sid, target_is_directory=True)
    res = P.write_prompts(root, StubCaptioner, StubRewriter, TEMPLATE)
    assert set(res["failed"]) == {"bad name ", "escape"} and not res["written"]
    assert "outside the dataset folder" in res["failed"]["escape"]
    assert not (outside / sid / "prompts.json").exists() and not (root / "bad name " / "prompts.json").exists()
    assert P.main([str(root), "models=tiny", "device=cpu"]) == 1
    assert "failed 'bad name '" in capsys.readouterr().out


def test_prompts_file_path_follows_the_sample_folder(tmp_path):
    sample = EditSample("s1", np.zeros((2, 4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8),
                        meta={SAMPLE_DIR_KEY: str(tmp_path / "s1")})
    assert P.prompts_file(sample) == tmp_path / "s1" / "prompts.json"
    assert P.parse_rewrite('  \n"New caption: a cat on a mat."\nmore') == "a cat on a mat"
