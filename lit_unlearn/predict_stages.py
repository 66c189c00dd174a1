"""Per-row stages run as Lightning ``predict`` (each a method whose ``predict_step`` is the work, and a prediction
writer): the influence stage and TNPO's token selection. They sit above ``methods`` and ``influence`` (they are
methods built on the influence functions), so they are not in the method registry or its contract tests.

The influence stage (RapidIn stage A + RapidUn stage B):

    python train.py predict --config configs/rapidun/base.yaml --config configs/rapidun/influence.yaml

``Influence`` (a method whose ``predict_step`` is the work) computes each forget and retain row's per-sample
gradient of its answer CE with respect to the adapter's linear weights (:mod:`~lit_unlearn.influence.gradients`)
and compresses it with RapidGrad; ``InfluenceWriter`` (a prediction writer) streams them to disk in chunks, one
file per batch and rank (rows are sharded across DDP ranks by the predict loaders), and when every rank is done,
rank 0 reads them back chunk by chunk and computes the four views (FF, FR, RR, RF: train rows of the first set,
test rows of the second), the top-``top_k`` influences per test row, the view scores and the weights
(:mod:`~lit_unlearn.influence.weights`). It writes, in ``out_dir``:

- ``forget_weights.jsonl`` and ``retain_weights.jsonl``: ``{"id", "index", "weight"}`` per row, keyed on the rows'
  stable ids (``--data.init_args.weights`` of the unlearning run reads them);
- ``influence.json``: the stage's configuration (K, seed, top_k, top_n, the taus and bounds), the rows per set, and
  per view the summary of its scores; ``grads/``: the compressed gradients (delete at will).

The gradients are taken at the model the unlearning starts from, through a fresh LoRA (B = 0): the gradient of A is
then zero and that of B carries the signal (a fixed-size, model-independent set of directions).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_unlearn.core.errors import ConfigError, MethodError
from lit_unlearn.influence.gradients import per_sample_gradients
from lit_unlearn.influence.rapidgrad import RapidGrad
from lit_unlearn.influence.tracin import top_influences
from lit_unlearn.influence.weights import influence_weights, view_scores
from lit_unlearn.methods.base import UnlearningMethod

VIEWS = {"FF": ("forget", "forget"), "FR": ("forget", "retain"), "RR": ("retain", "retain"),
         "RF": ("retain", "forget")}


class Influence(UnlearningMethod):
    """``predict``: compressed per-sample gradients of every forget and retain row (module docstring)."""

    def __init__(self, *args, k: int = 65536, shuffles: int = 20, pad_multiple: int = 2**24, **kwargs):
        """
        Args:
            k: K, the RapidGrad length.
            shuffles: lambda, RapidGrad's shuffle rounds (2 * lambda permutations).
            pad_multiple: RapidGrad pads gradients to a multiple of this (RapidIn: 2^24).
        """
        super().__init__(*args, **kwargs)
        if self.adapter is None:
            raise MethodError("Influence takes gradients of an adapter's weights: give --model.adapter (a LoRA)")
        self.k, self.shuffles, self.pad_multiple = k, shuffles, pad_multiple
        self._rapidgrad: RapidGrad | None = None

    def forget_loss(self, batch, stats):
        raise MethodError("Influence is a predict stage (train.py predict), not an unlearning method")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        with torch.enable_grad():
            grads = per_sample_gradients(self.lm, lambda: self(batch).mean_nll)
        bad = ~torch.isfinite(grads).all(1)
        if bool(bad.any()):
            raise ConfigError(f"{batch['split']}: the gradient of row {batch['id'][int(bad.nonzero()[0])]!r} is not "
                              "finite (NaN/inf influence); check the model and the row")
        if self._rapidgrad is None:
            self._rapidgrad = RapidGrad(grads.size(1), self.k, self.shuffles, self.seed, self.pad_multiple)
        return {"split": batch["split"], "id": list(batch["id"]), "index": batch["index"].tolist(),
                "grads": self._rapidgrad(grads).half().cpu()}


class InfluenceWriter(BasePredictionWriter):
    """Streams the compressed gradients to ``out_dir/grads`` and turns them into weights at the end (module
    docstring)."""

    def __init__(self, out_dir: str, top_k: int = 1000, top_n: int = 40, tau_forget: float = 0.7,
                 tau_retain: float = 1.2, w_min: float = 0.2, w_max: float = 3.0, alpha: float = 1.0,
                 beta: float = 1.0, gamma: float = 1.0, delta: float = 1.0):
        """
        Args:
            out_dir: where the gradients, weights and influence.json go.
            top_k: influences kept per test row (RapidIn: 1000).
            top_n: of those, the ones that enter a view's score (RapidUn: 40).
            tau_forget: tau of the forget weights (0.7).
            tau_retain: tau of the retain weights (1.2).
            w_min: lower bound of a weight before the mean-1 rescaling (0.2).
            w_max: upper bound (3.0).
            alpha: S_f = alpha * FF - beta * FR.
            beta: see alpha.
            gamma: S_r = gamma * RR - delta * RF.
            delta: see gamma.
        """
        super().__init__(write_interval="batch")
        self.out = Path(out_dir)
        self.top_k, self.top_n = top_k, top_n
        self.settings = {"top_k": top_k, "top_n": top_n, "tau_forget": tau_forget, "tau_retain": tau_retain,
                         "w_min": w_min, "w_max": w_max, "alpha": alpha, "beta": beta, "gamma": gamma,
                         "delta": delta}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        folder = self.out / "grads" / prediction["split"]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rank{trainer.global_rank}-{dataloader_idx}-{batch_idx:06d}.pt"
        torch.save(prediction, str(path) + ".tmp")
        Path(str(path) + ".tmp").replace(path)

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0 and (self.out / "grads").exists():
            import shutil

            shutil.rmtree(self.out / "grads")  # a fresh stage: no chunk of an earlier run may mix in
        trainer.strategy.barrier()

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()
        if trainer.global_rank == 0:
            self.finish(pl_module)
        trainer.strategy.barrier()

    def chunks(self, split: str):
        """(global row positions, grads) per chunk file of ``split``, in a fixed order, with the rows' ids."""
        files = sorted((self.out / "grads" / split).glob("*.pt"))
        if not files:
            raise ConfigError(f"the influence stage wrote no gradients of split {split!r} (is it in --data?)")
        start = 0
        for f in files:
            part = torch.load(f)
            n = len(part["id"])
            yield torch.arange(start, start + n), part
            start += n

    def finish(self, pl_module) -> None:
        rows = {s: [] for s in ("forget", "retain")}
        for split in rows:
            for _, part in self.chunks(split):
                rows[split] += [{"id": i, "index": x} for i, x in zip(part["id"], part["index"])]
        scores, summary = {}, {}
        for view, (train, test) in VIEWS.items():
            test_grads = torch.cat([p["grads"] for _, p in self.chunks(test)])
            top = top_influences(((pos, p["grads"]) for pos, p in self.chunks(train)), test_grads, self.top_k)
            scores[view] = view_scores(top, len(rows[train]), self.top_n, view)
            summary[view] = {"mean": float(scores[view].mean()), "min": float(scores[view].min()),
                             "max": float(scores[view].max())}
        s = self.settings
        weights = {
            "forget": influence_weights(scores["FF"], scores["FR"], s["tau_forget"], s["w_min"], s["w_max"],
                                        s["alpha"], s["beta"]),
            "retain": influence_weights(scores["RR"], scores["RF"], s["tau_retain"], s["w_min"], s["w_max"],
                                        s["gamma"], s["delta"]),
        }
        for split, w in weights.items():
            text = "".join(json.dumps({**r, "weight": float(x)}) + "\n" for r, x in zip(rows[split], w.tolist()))
            tmp = self.out / f"{split}_weights.jsonl.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / f"{split}_weights.jsonl")
        info = {"settings": {**s, "k": pl_module.k, "shuffles": pl_module.shuffles, "seed": pl_module.seed,
                             "pad_multiple": pl_module.pad_multiple, "model": pl_module.model_name},
                "rows": {k: len(v) for k, v in rows.items()}, "views": summary}
        (self.out / "influence.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"[lit_unlearn] influence weights: {self.out / 'forget_weights.jsonl'}, "
              f"{self.out / 'retain_weights.jsonl'}")


class TokenScores(UnlearningMethod):
    """``predict``: token scores of every forget row (:mod:`lit_unlearn.influence.tokens`) and its selected tokens.

    At the start of predict, d = mean forget gradient - mean retain gradient over all rows of the data module's
    forget and retain sets (every rank computes it whole); each forget batch is then scored by two forwards. The
    selection (top ``top`` tokens per row, widened by ``window``) goes to ``TokenMaskWriter``."""

    def __init__(self, *args, top: int = 5, window: int = 3, **kwargs):
        """
        Args:
            top: tokens selected per row by score.
            window: each selected token is widened by this many tokens either side (within the answer).
        """
        super().__init__(*args, **kwargs)
        if self.adapter is None:
            raise MethodError("TokenScores takes gradients of an adapter's weights: give --model.adapter (a LoRA)")
        self.top, self.window = top, window
        self.direction: torch.Tensor | None = None

    def forget_loss(self, batch, stats):
        raise MethodError("TokenScores is a predict stage (train.py predict), not an unlearning method")

    def on_predict_start(self) -> None:
        from lit_unlearn.core.tokens import dataset_batches
        from lit_unlearn.influence.tokens import mean_gradient

        dm = self.trainer.datamodule
        means = {}
        for split in ("forget", "retain"):
            ds = dm.datasets.get(split)
            if ds is None:
                raise MethodError(f"TokenScores needs a {split} set (--data.{split})")
            batches = list(dataset_batches(ds, self.tokenizer.pad_token_id, split, 8, self.device))
            with torch.enable_grad():
                means[split] = mean_gradient(self.lm, batches, lambda b: self(b).mean_nll)
        self.direction = means["forget"] - means["retain"]

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0):
        from lit_unlearn.influence.tokens import select_tokens, token_scores

        if batch["split"] != "forget":
            return None
        scores = token_scores(self.lm, lambda b: self(b).token_nll, batch, self.direction)
        if not torch.isfinite(scores).all():
            raise ConfigError(f"forget: the token scores of a batch are not finite (rows {batch['id'][:3]}...)")
        mask = select_tokens(scores, batch["labels"], self.top, self.window)
        return {"id": list(batch["id"]), "mask": mask.cpu(), "scores": scores.float().cpu(),
                "labels": batch["labels"].cpu()}


class TokenMaskWriter(BasePredictionWriter):
    """Writes ``token_masks.jsonl`` (``{"id", "tokens": [positions], "scores": [...]}`` per forget row; the file
    ``--data.init_args.token_masks.forget`` reads) into ``out_dir``, one part per rank, joined by rank 0."""

    def __init__(self, out_dir: str):
        """
        Args:
            out_dir: where ``token_masks.jsonl`` goes.
        """
        super().__init__(write_interval="batch")
        self.out = Path(out_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        if prediction is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / f"token_masks.rank{trainer.global_rank}.jsonl").open("a") as f:
            for i, rid in enumerate(prediction["id"]):
                answer = prediction["labels"][i] != -100
                f.write(json.dumps({"id": rid, "tokens": prediction["mask"][i].nonzero().flatten().tolist(),
                                    "scores": [round(x, 6) for x in prediction["scores"][i][answer].tolist()]})
                        + "\n")

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            for old in self.out.glob("token_masks*.jsonl"):
                old.unlink()
        trainer.strategy.barrier()

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()
        if trainer.global_rank == 0:
            parts = sorted(self.out.glob("token_masks.rank*.jsonl"))
            text = "".join(p.read_text() for p in parts)
            tmp = self.out / "token_masks.jsonl.tmp"
            tmp.write_text(text)
            tmp.replace(self.out / "token_masks.jsonl")
            for p in parts:
                p.unlink()
            print(f"[lit_unlearn] token masks: {self.out / 'token_masks.jsonl'}")
        trainer.strategy.barrier()
