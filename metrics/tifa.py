"""TIFA (Hu et al. 2023; paper Table 2, edit fidelity): question answering on the edited frames about the
target content. For each (frame, question): a free-form VQA answer (BLIP VQA through transformers), mapped
to the nearest of the question's choices by sentence-embedding similarity, is right or wrong; a frame's
score is its accuracy and the video's the mean over frames.

Questions come from a file per dataset: TIFA's JSON format, a list of
`{id, caption, question, choices, answer, element_type, element}` whose `id` is the sample id, or the file
`python -m metrics.tifa_questions` writes (those records under `questions`, with their provenance). A missing
file is an error when the suite loads (the paper's suite has a TIFA column; leave it out with `~metrics.tifa`);
a sample the file has no questions for scores NaN, with a warning naming the sample and the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import string
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.cache import cache_key, cached
from harness.metric import Column, VideoMetric
from harness.types import EditSample
from harness.weights import local_model_dir
from metrics.tensors import batches, model_dtype

log = logging.getLogger(__name__)

FIELDS = ("id", "caption", "question", "choices", "answer", "element_type", "element")


def read_questions(path: str | Path) -> tuple[list[dict], dict]:
    """(TIFA records, the generated file's `settings` or {}): a plain TIFA list, or a generated file's
    `questions`."""
    doc = json.loads(Path(path).read_text())
    if isinstance(doc, dict) and isinstance(doc.get("questions"), list):
        return doc["questions"], doc.get("settings") or {}
    if not isinstance(doc, list):
        raise ValueError(f"{path}: neither a list of TIFA questions nor a generated questions file")
    return doc, {}


def load_questions(path: str | Path) -> dict[str, list[dict]]:
    """TIFA questions grouped by sample id; every entry checked for TIFA's fields and a listed answer."""
    path = Path(path)
    items, _ = read_questions(path)
    out: dict[str, list[dict]] = {}
    for i, q in enumerate(items):
        missing = [k for k in FIELDS if k not in q]
        if missing:
            raise ValueError(f"{path}: question {i} lacks {missing}")
        if q["answer"] not in q["choices"]:
            raise ValueError(f"{path}: question {i} ({q['question']!r}): answer {q['answer']!r} is not among its choices")
        out.setdefault(str(q["id"]), []).append(q)
    return out


def _char_tokenizer(folder: Path, bos: str = "[DEC]"):
    """A character-level WordPiece tokenizer, written offline, for the tiny models."""
    from transformers import BertTokenizer

    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", bos, *chars, *(f"##{c}" for c in chars)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"), bos_token=bos)


#: Random-weight BLIP VQA layouts: "tiny" for smoke tests; "blip-vqa-capfilt-large" is that model's layout
#: (ViT-B/16 at 384 px, BERT-base text encoder and decoder; "capfilt-large" names its CapFilt-L training
#: data, not a ViT-L), for timing the suite without its weights.
VQA_ARCHS = {
    "tiny": dict(image_size=32, vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
                 text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           max_position_embeddings=64), vocab_size=None),
    "blip-vqa-capfilt-large": dict(image_size=384, vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                               num_attention_heads=12),
                  text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            max_position_embeddings=512), vocab_size=30524),
}


def tiny_vqa(seed: int = 0, arch: str = "tiny"):
    """A random-weight BLIP VQA model of layout `arch` (VQA_ARCHS) with its processor (a character tokenizer)."""
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    a = VQA_ARCHS[arch]
    with tempfile.TemporaryDirectory() as d:
        tok = _char_tokenizer(Path(d))
    image = BlipImageProcessor(size={"height": a["image_size"], "width": a["image_size"]})
    processor = BlipProcessor(image_processor=image, tokenizer=tok)
    config = BlipConfig(
        vision_config=dict(a["vision"], image_size=a["image_size"], patch_size=16),
        text_config=dict(a["text"], vocab_size=a["vocab_size"] or len(tok), encoder_hidden_size=a["vision"]["hidden_size"],
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id),
    )
    torch.manual_seed(seed)
    return processor, BlipForQuestionAnswering(config).eval()


def load_vqa(repo: str = "Salesforce/blip-vqa-capfilt-large", revision: str | None = None, root: str | None = None,
             tiny: bool = False, seed: int = 0, arch: str = "tiny", device: str = "cpu"):
    """(processor, BLIP VQA model), once per process: real weights from a local folder or the hub cache, or
    with `tiny` seeded random weights of layout `arch`."""

    def build():
        from transformers import BlipForQuestionAnswering, BlipProcessor

        if tiny:
            processor, model = tiny_vqa(seed, arch)
        else:
            folder = local_model_dir(repo, revision, root)
            processor = BlipProcessor.from_pretrained(folder)
            model = BlipForQuestionAnswering.from_pretrained(folder, dtype=model_dtype(device))
        return processor, model.eval().to(device)

    return cached(cache_key("vqa", repo, revision, root, tiny, seed, arch, device), build)


def tiny_text_embedder(seed: int = 0, arch: str = "tiny"):
    """A random-weight sentence encoder: "tiny" (a 2-layer BERT) or "all-mpnet-base-v2" (that model's layout)."""
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

    with tempfile.TemporaryDirectory() as d:
        tok = _char_tokenizer(Path(d))
    torch.manual_seed(seed)
    if arch == "all-mpnet-base-v2":
        return tok, MPNetModel(MPNetConfig(vocab_size=30527)).eval()
    if arch != "tiny":
        raise ValueError(f"text_embed arch must be tiny or all-mpnet-base-v2; got {arch!r}")
    config = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=64)
    return tok, BertModel(config).eval()


class TextEmbedder:
    """Sentence embeddings as sentence-transformers computes them for its mean-pooling models
    (mean of the last hidden states over real tokens, unit length), through transformers."""

    def __init__(self, repo: str = "sentence-transformers/all-mpnet-base-v2", revision: str | None = None,
                 root: str | None = None, tiny: bool = False, seed: int = 0, arch: str = "tiny", device: str = "cpu"):
        def build():
            from transformers import AutoModel, AutoTokenizer

            if tiny:
                tok, model = tiny_text_embedder(seed, arch)
            else:
                folder = local_model_dir(repo, revision, root)
                tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
            return tok, model.eval().to(device)

        self.tokenizer, self.model = cached(cache_key("text_embed", repo, revision, root, tiny, seed, arch, device), build)
        self.device = device

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        hidden = self.model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


def map_answer(answer: str, choices: list[str], embed) -> str:
    """The choice a free-form answer means: an exact (case-insensitive) match, else the most similar choice."""
    norm = answer.strip().lower()
    for c in choices:
        if c.strip().lower() == norm:
            return c
    e = embed([answer, *choices])
    return choices[int(torch.argmax(e[1:] @ e[0]))]


def tifa_score(answers: list[list[str]], questions: list[dict], embed) -> float:
    """answers[t][q]: the VQA answer on frame t to question q. Mean over frames of per-frame accuracy."""
    per_frame = [np.mean([map_answer(a, q["choices"], embed) == q["answer"] for a, q in zip(frame, questions)])
                 for frame in answers]
    return float(np.mean(per_frame))


class TIFA(VideoMetric):
    columns = {"tifa": Column(percent=True, higher_is_better=True, group="edit fidelity")}

    def __init__(self, questions: str, vqa: dict, text_embed: dict, batch_size: int = 32, max_new_tokens: int = 10,
                 device: str = "cpu"):
        vqa, text_embed = dict(vqa), dict(text_embed)
        self.tiny = bool(vqa.get("tiny", False) or text_embed.get("tiny", False))
        if not Path(questions).is_file():
            raise FileNotFoundError(
                f"TIFA: no questions file at {questions}. Generate one (python -m metrics.tifa_questions "
                "DATASET_DIR OUT.json) and set dataset.tifa_questions=OUT.json or put it there, "
                "or leave TIFA out of the suite with ~metrics.tifa")
        self.questions_path = str(questions)
        self.questions = load_questions(questions)
        settings = read_questions(questions)[1]
        made_by = (f"lm {settings['lm']['model']}@{settings['lm']['revision']}, qa {settings['qa']['model']}@"
                   f"{settings['qa']['revision']}" if settings else "not recorded (a plain TIFA list)")
        digest = hashlib.sha256(Path(questions).read_bytes()).hexdigest()[:16]
        self._info = {"tifa_questions": f"{Path(questions).name} sha256:{digest}; made by {made_by}"}
        self.processor, self.model = load_vqa(**vqa, device=device)
        self.embed = TextEmbedder(**text_embed, device=device)
        self.batch_size, self.max_new_tokens, self.device = batch_size, max_new_tokens, device

    @property
    def info(self) -> dict[str, str]:
        """What the run's summary records about the scores: which questions file (digest) and who made it."""
        return self._info

    @torch.no_grad()
    def answer(self, frames: np.ndarray, questions: list[str]) -> list[list[str]]:
        """Free-form answers for every (frame, question), batched over both."""
        pairs = [(t, q) for t in range(len(frames)) for q in questions]
        out: list[str] = []
        for s in batches(len(pairs), self.batch_size):
            chunk = pairs[s]
            enc = self.processor(images=[frames[t] for t, _ in chunk], text=[q for _, q in chunk], return_tensors="pt",
                                 padding=True).to(self.device)
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
            ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens)
            out += self.processor.batch_decode(ids, skip_special_tokens=True)
        n = len(questions)
        return [out[i:i + n] for i in range(0, len(out), n)]

    def score(self, sample: EditSample, edited: np.ndarray) -> dict[str, float]:
        qs = self.questions.get(sample.id)
        if not qs:
            log.warning("TIFA: %s has no questions for sample %s; tifa does not apply to it", self.questions_path, sample.id)
            return {}
        return {"tifa": tifa_score(self.answer(edited, [q["question"] for q in qs]), qs, self.embed)}
