"""Prompt/answer tokenization shared by the data modules and by methods that rewrite answers (IDK, random label).

The answer tokens are those from the first position where ``tokenize(prompt)`` and ``tokenize(prompt + answer)``
differ (METHODS.md section 7): BPE merges across the prompt/answer boundary (``"Answer: "`` + ``"Paris"`` gives
``':' ' Paris'`` but ``"Answer: "`` alone gives ``':' ' '``), so "the first len(prompt) tokens are the prompt"
would drop the first answer token. Losses and metrics cover answer tokens only (labels = -100 elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE = -100


class DataError(ValueError):
    """Bad input data; the message names the file, row, field or flag to fix."""


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
    """Right-pad a list of encoded rows into a batch.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (B, T) tensors, ``index`` (B,) and, when the rows carry
    them, ``weight`` (B,), the raw ``prompt``/``answer`` strings and the split name.
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
    if all("prompt" in r for r in rows):
        batch["prompt"] = [r["prompt"] for r in rows]
        batch["answer"] = [r["answer"] for r in rows]
    if split is not None:
        batch["split"] = split
    return batch


def encode_batch(tokenizer, prompts: Sequence[str], answers: Sequence[str], max_length: int,
                 index: torch.Tensor | None = None) -> dict:
    """Encode and collate (prompt, answer) pairs, truncating from the left of the prompt if over ``max_length``."""
    rows = []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        r = encode(tokenizer, p, a)
        if len(r["input_ids"]) > max_length:
            cut = len(r["input_ids"]) - max_length
            r["input_ids"], r["labels"] = r["input_ids"][cut:], r["labels"][cut:]
        r.update(prompt=p, answer=a, index=int(index[i]) if index is not None else i)
        rows.append(r)
    return collate(rows, tokenizer.pad_token_id)
