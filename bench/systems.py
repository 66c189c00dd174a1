"""The systems compared, each run once per call on a freshly built model: (a) a plain PyTorch loop, (b) a
``transformers.Trainer`` with separate forget / retain forwards (the open-unlearning architecture), and lit /
lit-logits (lit_unlearn's method modules on ``lightning.Trainer.fit``); the order they run in."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .measure import Run, measured, total_steps
from .workload import IGNORE, batches, make_lit_datamodule, qa_datamodule, tokens_per_step

METHODS = ("GradAscent", "GradDiff", "NPO:adapter_off", "NPO:cached")
SYSTEMS = ("a", "b", "lit", "lit-logits")  # table order; lit-logits = lit with lean_head=False
HF_METHOD = {"GradAscent": "GradAscent", "GradDiff": "GradDiff", "NPO:adapter_off": "NPO", "NPO:cached": "NPO"}


def plan(args) -> list[tuple[str, str]]:
    """The (system, method) runs of one round."""
    # (a) first and last, between them lit and (b) of each method side by side; odd rounds run it reversed
    runs: list[tuple[str, str]] = []
    if "a" in args.systems:
        runs.append(("a", "CE"))
    for m in args.methods:
        for lit in ("lit", "lit-logits"):
            if lit in args.systems:
                runs.append((lit, m))
        if "b" in args.systems and ("b", HF_METHOD[m]) not in runs:
            runs.append(("b", HF_METHOD[m]))
    if "a" in args.systems and len(runs) > 1:
        runs.append(("a", "CE"))
    return runs


def run_system(args, system: str, method: str, model_dir: Path, rows_f: dict, rows_r: dict, qa_files=None) -> Run:
    if system == "a":
        return run_plain(args, model_dir, rows_f, rows_r)
    if system == "b":
        return run_hf(args, model_dir, rows_f, rows_r, method)
    return run_lit(args, model_dir, rows_f, rows_r, method, qa_files, system)


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def quiet() -> None:
    import lightning  # noqa: F401  (it sets its loggers' levels on import)
    import transformers

    warnings.filterwarnings("ignore")
    transformers.utils.logging.disable_progress_bar()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()


# ---------------------------------------------------------------------------------------------------------------
# the reference model of (a) and (b): loaded as lit_unlearn loads it (same dtype / quantization / attention / LoRA)
# ---------------------------------------------------------------------------------------------------------------
def load_peft_model(args, model_dir: Path):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, args.dtype)
    kw = dict(dtype=dtype, attn_implementation=args.attn_impl)
    if args.quantize == "nf4":
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    elif args.quantize == "int8":
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kw)
    if args.quantize:
        for m in model.modules():  # bitsandbytes' CPU-inference repacking has no backward (see lit_unlearn.models)
            if getattr(m, "support_avx512bf16_for_cpu", False):
                m.support_avx512bf16_for_cpu = False
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = model.to(args.device)
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    return model


def seq_nll(logits, labels):
    """(B,) summed answer-token NLL per row (open-unlearning's compute_batch_nll)."""
    import torch.nn.functional as F

    logits, labels = logits[:, :-1], labels[:, 1:]
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return nll.sum(-1)


def forward(model, b):
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"], use_cache=False)


# ---------------------------------------------------------------------------------------------------------------
# (a): the plain loop
# ---------------------------------------------------------------------------------------------------------------
def run_plain(args, model_dir, rows_f, rows_r) -> Run:
    """(a): forward + backward + AdamW step on forget+retain rows concatenated, CE loss."""
    bf, br = batches(rows_f, args.batch), batches(rows_r, args.batch)
    data = [{k: torch.cat([f[k], r[k]]).to(args.device) for k in ("input_ids", "attention_mask", "labels")}
            for f, r in zip(bf, br)]
    run = Run("a", "CE", int(data[0]["attention_mask"].sum()))
    t0 = time.perf_counter()
    with measured(args, run) as timer:
        seed_all(args.seed)
        model = load_peft_model(args, model_dir)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
        run.setup_s = time.perf_counter() - t0
        for step in range(total_steps(args)):
            b = data[step % len(data)]
            timer.start()
            out = forward(model, b)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            timer.stop()
            if step == 0:
                run.first_loss = float(out.loss)
        del model, opt, out
    return run


# ---------------------------------------------------------------------------------------------------------------
# (b): transformers.Trainer with separate forget / retain forwards (the open-unlearning architecture)
# ---------------------------------------------------------------------------------------------------------------
def run_hf(args, model_dir, rows_f, rows_r, method: str) -> Run:
    import torch.nn.functional as F
    from torch.utils.data import Dataset, SequentialSampler
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    keys = ("input_ids", "attention_mask", "labels")

    class PairedRows(Dataset):
        """Item i = forget row i and retain row i, as open-unlearning's ForgetRetainDataset pairs them."""

        def __len__(self):
            return rows_f["input_ids"].size(0)

        def __getitem__(self, i):
            return {"forget": {k: rows_f[k][i] for k in keys}, "retain": {k: rows_r[k][i] for k in keys}}

    def collator(items):
        return {role: {k: torch.stack([it[role][k] for it in items]) for k in keys} for role in ("forget", "retain")}

    class UnlearnTrainer(Trainer):
        first_loss = None

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            f, r = inputs["forget"], inputs["retain"]
            f_out = forward(model, f)
            if method == "GradAscent":
                loss = -f_out.loss
            elif method == "GradDiff":
                loss = -f_out.loss + forward(model, r).loss
            else:  # NPO: reference logits recomputed every step with the adapter disabled
                with torch.no_grad(), model.disable_adapter():
                    ref_nll = seq_nll(forward(model, f).logits, f["labels"])
                log_ratio = seq_nll(f_out.logits, f["labels"]) - ref_nll
                forget_loss = -F.logsigmoid(args.beta * log_ratio).mean() * 2 / args.beta
                loss = forget_loss + forward(model, r).loss
            if self.first_loss is None:
                UnlearnTrainer.first_loss = float(loss)
            return (loss, f_out) if return_outputs else loss

    class StepTimer(TrainerCallback):
        def __init__(self, timer):
            self.timer = timer

        def on_step_begin(self, a, state, control, **kw):
            self.timer.start()

        def on_step_end(self, a, state, control, **kw):
            self.timer.stop()

    run = Run("b", method, tokens_per_step(rows_f, rows_r, args.batch, method))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir, measured(args, run) as timer:
        seed_all(args.seed)
        model = load_peft_model(args, model_dir)
        targs = TrainingArguments(
            output_dir=out_dir, max_steps=total_steps(args), per_device_train_batch_size=args.batch,
            learning_rate=args.lr, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
            optim=args.hf_optim, max_grad_norm=0.0, eval_strategy="no", save_strategy="no", report_to=[],
            disable_tqdm=True, use_cpu=args.device == "cpu", remove_unused_columns=False, seed=args.seed,
            dataloader_num_workers=0, dataloader_pin_memory=args.device == "cuda", logging_strategy="no",
        )
        trainer = UnlearnTrainer(model=model, args=targs, train_dataset=PairedRows(), data_collator=collator,
                                 callbacks=[StepTimer(timer)])
        trainer.remove_callback(PrinterCallback)  # the end-of-train metrics print
        UnlearnTrainer.first_loss = None
        run.setup_s = time.perf_counter() - t0
        trainer.train()
        run.first_loss = UnlearnTrainer.first_loss
        del trainer, model
    return run


# ---------------------------------------------------------------------------------------------------------------
# lit_unlearn: lightning.Trainer.fit on the method module
# ---------------------------------------------------------------------------------------------------------------
def run_lit(args, model_dir, rows_f, rows_r, method: str, qa_files=None, system: str = "lit") -> Run:
    import lightning as L

    from lit_unlearn.adapters import LoRA
    from lit_unlearn.methods import NPO, GradAscent, GradDiff

    class StepTimer(L.Callback):
        first_loss = None

        def __init__(self, timer):
            self.timer = timer

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.timer.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.timer.stop()
            if self.first_loss is None:
                self.first_loss = float(outputs["loss"])

    run = Run(system, method, tokens_per_step(rows_f, rows_r, args.batch, method))
    lora = LoRA(r=args.lora_r, alpha=args.lora_alpha, target_modules="all-linear")
    common = dict(model=str(model_dir), adapter=lora, dtype=args.dtype, quantize=args.quantize,
                  attn_backend=args.attn_impl, lr=args.lr, max_length=args.seq_len, seed=args.seed,
                  lean_head=system == "lit")
    t0 = time.perf_counter()
    with measured(args, run) as timer:
        L.seed_everything(args.seed, verbose=False)
        if method == "GradAscent":
            module = GradAscent(**common)
        elif method == "GradDiff":
            module = GradDiff(**common)
        else:
            module = NPO(**common, beta=args.beta, retain="nll", reference=method.split(":")[1])
        if qa_files is None:
            dm = make_lit_datamodule(rows_f, rows_r, args.batch)
        else:
            dm = qa_datamodule(args, model_dir, qa_files)
        cb = StepTimer(timer)
        log_kw = dict(logger=False)
        if args.lit_cli_logging:
            from lightning.pytorch.loggers import TensorBoardLogger

            tb = TensorBoardLogger(tempfile.mkdtemp(prefix="lit_unlearn_bench_tb_"))
            log_kw = dict(logger=tb, log_every_n_steps=1)
        trainer = L.Trainer(
            max_steps=total_steps(args), **log_kw, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, callbacks=[cb],
        )
        run.setup_s = time.perf_counter() - t0  # model loading happens inside fit (configure_model)
        trainer.fit(module, datamodule=dm)
        run.first_loss = cb.first_loss
        del trainer, module, dm
    return run
