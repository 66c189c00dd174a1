"""Prompt/answer tokenization shared by the data modules, methods that rewrite answers (IDK, random label) and
evaluators that score other answers (paraphrased, perturbed, choices).

The answer tokens are those from the first position where ``tokenize(prompt)`` and ``tokenize(prompt + answer)``
differ: BPE merges across the prompt/answer boundary (``"Answer: "`` + ``"Paris"`` gives ``':' ' Paris'`` but
``"Answer: "`` alone gives ``':' ' '``), so "the first len(prompt) tokens are the prompt" would drop the first
answer token (docs/methods.md, "Which tokens are the answer"). Losses and metrics cover answer tokens only
(labels = -100 elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: label value of positions that are not scored (prompt, padding); the ignore index of ``F.cross_entropy``
IGNORE = -100

#: record fields that become tensors in a batch; every other field of a record travels as a list
TOKEN_FIELDS = ("input_ids", "labels")


def encode(tokenizer, prompt: str, answer: str) -> dict:
    """Token ids of ``prompt + answer`` and labels that are -100 on the prompt tokens."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full = tokenizer(prompt + answer, add_special_tokens=True)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    labels = [IGNORE] * start + full[start:]
    return {"input_ids": full, "labels": labels, "n_answer": len(full) - start}


def collate(rows: Sequence[dict], pad_id: int, split: str | None = None) -> dict:
    """Right-pad encoded records into a batch.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (B, T) tensors, ``index`` (B,) long and, when the rows
    carry them, ``weight`` (B,) float and ``token_mask`` (B, T) long; every other field of the records (``id``, ``prompt``, ``answer`` and whatever
    a benchmark adds: paraphrases, choices, ...) as a list with one entry per row; and ``split``, the split name
    (one string: a batch holds one split).
    """
    width = max(len(r["input_ids"]) for r in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        input_ids[i, :k] = torch.tensor(r["input_ids"])
        labels[i, :k] = torch.tensor(r["labels"])
        mask[i, :k] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
             "index": torch.tensor([r.get("index", i) for i, r in enumerate(rows)], dtype=torch.long)}
    if any("weight" in r for r in rows):
        batch["weight"] = torch.tensor([float(r.get("weight", 1.0)) for r in rows])
    if any("token_mask" in r for r in rows):  # per-token selection (TNPO), aligned with input_ids; 0 = padding
        token_mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            m = r.get("token_mask") or []
            token_mask[i, :len(m)] = torch.tensor(m, dtype=torch.long)
        batch["token_mask"] = token_mask
    skip = {*TOKEN_FIELDS, "n_answer", "index", "weight", "split", "token_mask"}
    for key in dict.fromkeys(k for r in rows for k in r):  # every other field, in first-seen order
        if key not in skip:
            batch[key] = [r.get(key) for r in rows]
    split = split if split is not None else rows[0].get("split")
    if split is not None:
        batch["split"] = split
    return batch


def dataset_batches(dataset: Sequence[dict], pad_id: int, split: str, size: int, device=None):
    """Batches of ``size`` consecutive records of ``dataset``, in order, collated (:func:`collate`) and their tensors
    moved to ``device``: a whole split read outside a DataLoader (a stage's per-split statistics)."""
    for start in range(0, len(dataset), size):
        batch = collate([dataset[i] for i in range(start, min(start + size, len(dataset)))], pad_id, split)
        yield {k: (v.to(device) if isinstance(v, torch.Tensor) and device is not None else v)
               for k, v in batch.items()}


def encode_batch(tokenizer, prompts: Sequence[str], answers: Sequence[str], max_length: int) -> dict:
    """Encode and collate (prompt, answer) pairs, truncating from the left of the prompt if over ``max_length``.

    Returns the token tensors and the ``prompt``/``answer`` lists only; a method that rewrites a batch's answers
    merges them into the batch (``{**batch, **encode_batch(...)}``) so its other fields (ids, weights) stay.
    """
    rows = []
    for p, a in zip(prompts, answers):
        r = encode(tokenizer, p, a)
        if len(r["input_ids"]) > max_length:
            cut = len(r["input_ids"]) - max_length
            r["input_ids"], r["labels"] = r["input_ids"][cut:], r["labels"][cut:]
        rows.append({**r, "prompt": p, "answer": a})
    batch = collate(rows, tokenizer.pad_token_id)
    del batch["index"]
    return batch


def row_ids(batch: dict) -> list[str]:
    """The stable id of each row of ``batch``: its ``id`` field, or its source ``index`` as a string."""
    return list(batch["id"]) if "id" in batch else [str(i) for i in batch["index"].tolist()]
