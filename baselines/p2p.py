"""Prompt-to-prompt (Hertz et al. 2022) as FateZero uses it: token alignment of two prompts and the blend mask.

Written after FateZero's `video_diffusion/prompt_attention/` (`seq_aligner.py`, `ptp_utils.py`,
`spatial_blend.py`, themselves from google/prompt-to-prompt); the same rules, own code:

- `word_tokens`: which CLIP tokens each space-separated word of a prompt covers (`get_word_inds`: decoded token
  lengths summed until they reach the word's length; token 0 is the start token).
- `replacement_mapper` (word swap, `AttentionReplace`): a 77×77 matrix M with target map = source map @ M. Unchanged
  words map one to one; a swapped word's source tokens spread equally over its target tokens.
- `refinement_mapper` (`AttentionRefine`): a global alignment (Needleman–Wunsch, match 1, mismatch −1, gap 0) of the
  two token sequences; each target token takes the attention of its aligned source token, and inserted target
  tokens (alpha 0) keep their own.
- `cross_replace_steps`/`self_replace_steps`: the step counts the public code derives from the fractions.
- `blend_map`/`blend_mask`: the mask that decides where the edit keeps its own self-attention (`SpatialBlender`).
"""
from __future__ import annotations

import string

import numpy as np
import torch
import torch.nn.functional as F

MAX_TOKENS = 77  # CLIP's context length: every mapper is over all 77 positions
BLEND_POOL = 3  # the max-pool window `SpatialBlender.get_mask` applies to the averaged map (k = 1)


def word_tokens(prompt: str, tokenizer) -> list[list[int]]:
    """Token positions (1-based: 0 is the start token) of each `prompt.split(" ")` word, as `get_word_inds` finds
    them: decoded tokens are consumed until their lengths reach the word's length."""
    words = prompt.split(" ")
    decoded = [tokenizer.decode([t]).strip("#") for t in tokenizer.encode(prompt)][1:-1]
    out: list[list[int]] = [[] for _ in words]
    length, w = 0, 0
    for i, tok in enumerate(decoded):
        if w >= len(words) or i + 1 >= MAX_TOKENS:  # words past the text encoder's 77 tokens are cut off
            break
        out[w].append(i + 1)
        length += len(tok)
        if length >= len(words[w]):
            w, length = w + 1, 0
    return out


def _plain(word: str) -> str:
    return word.strip(string.punctuation).lower()


def word_indices(prompt: str, word: str, tokenizer) -> list[int]:
    """Token positions of every occurrence of `word` in `prompt`. Adapted: the public code needs the exact
    space-separated word ("dog," is not "dog"); here punctuation around it and case are ignored, so the changed
    words of the prompt protocol (word tokens without punctuation) are found."""
    return [i for w, toks in zip(prompt.split(" "), word_tokens(prompt, tokenizer)) if _plain(w) == _plain(word)
            for i in toks]


def replacement_mapper(source: str, target: str, tokenizer, aligned: bool = False) -> torch.Tensor:
    """The 77×77 word-swap mapper of two prompts with the same number of words (`get_replacement_mapper_`).

    Positions before and at the swapped words align one to one (a source word of k tokens replaced by one of m
    tokens spreads 1/m over the m target tokens, or maps one to one when k == m). After the last swapped word the
    public code maps position j to j (`mapper[j, j] = 1`), which is one to one only when the swaps kept the token
    count; `aligned=True` maps the running source position instead (`mapper[i, j] = 1`).
    """
    ws, wt = source.split(" "), target.split(" ")
    if len(ws) != len(wt):
        raise ValueError(f"a word swap needs prompts with the same number of words: {source!r} has {len(ws)}, "
                         f"{target!r} has {len(wt)}")
    tok_s, tok_t = word_tokens(source, tokenizer), word_tokens(target, tokenizer)
    swaps = [(tok_s[k], tok_t[k]) for k in range(len(wt)) if ws[k] != wt[k] and tok_s[k] and tok_t[k]]
    mapper = torch.zeros(MAX_TOKENS, MAX_TOKENS)
    i = j = n = 0
    while i < MAX_TOKENS and j < MAX_TOKENS:
        if n < len(swaps) and swaps[n][0][0] == i:
            src, tgt = swaps[n]
            if len(src) == len(tgt):
                mapper[src, tgt] = 1.0
            else:
                for t in tgt:
                    mapper[src, t] = 1.0 / len(tgt)
            n, i, j = n + 1, i + len(src), j + len(tgt)
        else:
            mapper[i if (aligned or n < len(swaps)) else j, j] = 1.0
            i, j = i + 1, j + 1
    return mapper


def _global_align(x: list[int], y: list[int]) -> list[int]:
    """For each position of `y`, the aligned position of `x` or −1 (an insertion): Needleman–Wunsch with match 1,
    mismatch −1, gap 0, ties broken left, then up, then diagonal (`seq_aligner.global_align`)."""
    score = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int64)
    back = np.zeros_like(score)
    back[0, 1:], back[1:, 0] = 1, 2
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            left, up = score[i, j - 1], score[i - 1, j]
            diag = score[i - 1, j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            score[i, j] = max(left, up, diag)
            back[i, j] = 1 if score[i, j] == left else 2 if score[i, j] == up else 3
    i, j, pairs = len(x), len(y), []
    while i > 0 or j > 0:
        if back[i, j] == 3:
            i, j = i - 1, j - 1
            pairs.append((j, i))
        elif back[i, j] == 1:
            j -= 1
            pairs.append((j, -1))
        else:
            i -= 1
    return [s for _, s in sorted(pairs)]


def refinement_mapper(source: str, target: str, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper, alphas), each of 77: target position p takes source position mapper[p] where alphas[p] = 1, its own
    attention where alphas[p] = 0 (an inserted token); positions past the target's tokens map to the source's
    padding (`get_mapper`)."""
    x, y = tokenizer.encode(source)[:MAX_TOKENS], tokenizer.encode(target)[:MAX_TOKENS]  # what the encoder sees
    aligned = _global_align(x, y)
    mapper = torch.zeros(MAX_TOKENS, dtype=torch.int64)
    alphas = torch.ones(MAX_TOKENS)
    n = min(len(aligned), MAX_TOKENS)
    mapper[:n] = torch.tensor(aligned[:n])
    alphas[:n] = (mapper[:n] != -1).float()
    mapper[n:] = len(y) + torch.arange(MAX_TOKENS - n)
    return mapper, alphas


def cross_replace_steps(fraction: float, steps: int) -> int:
    """Steps (from the first) whose cross-attention is replaced: `get_time_words_attention_alpha` sets alpha = 1 on
    rows [0, int(fraction·(steps + 1))) of a (steps + 1)-row table indexed by the step."""
    return int(fraction * (steps + 1))


def self_replace_steps(fraction: float, steps: int) -> int:
    """Steps (from the first) whose self-attention is replaced: `int(steps · fraction)`."""
    return int(steps * fraction)


def blend_map(word_maps: torch.Tensor) -> torch.Tensor:
    """F×r×r blend map from the blend words' cross-attention: `word_maps` is the F×r×r map already summed over the
    words and averaged over layers and heads; it is max-pooled 3×3 (stride 1), as `get_mask` does before resizing."""
    return F.max_pool2d(word_maps[None].float(), BLEND_POOL, 1, padding=BLEND_POOL // 2)[0]


def blend_mask(pooled: torch.Tensor, height: int, width: int, threshold: float) -> torch.Tensor:
    """Binary F×height×width mask (1: the edit keeps its own self-attention, 0: the source's): the pooled blend map
    resized (nearest) to the layer's size, divided by each frame's maximum, thresholded (`> threshold`)."""
    m = F.interpolate(pooled[None], size=(height, width), mode="nearest")[0]
    m = m / m.amax(dim=(-2, -1), keepdim=True)
    return m.gt(threshold).float()
