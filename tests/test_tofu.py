"""TOFU end to end on tiny models: each metric against a hand-computed value, the data module's splits and its bad
input, the reasoning-trace methods, and the whole pipeline (retain model -> learn -> unlearn -> table) from the
shipped configs with datasets named by hub id (a tiny mirror in ``$LIT_UNLEARN_DATA``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl
from lit_unlearn.core.errors import ConfigError, DataError, EvalError
from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.core.tokens import IGNORE
from lit_unlearn.data.catalog import MIRROR_ENV
from lit_unlearn.eval import MIAEvaluator, MIASummary, TOFUEvaluator, TOFUSummary
from lit_unlearn.eval.mia import auc
from lit_unlearn.eval.tofu import harmonic_mean


# ---- a scorer whose answer losses and generations are set by the test ---------------------------------------------------
class Scripted:
    """``teacher_forced`` gives each (prompt, answer) the mean NLL in ``nll``; ``generate`` the text in ``says``."""

    def __init__(self, nll: dict[tuple[str, str], float], says: dict[str, str]):
        self.nll, self.says = nll, says

    def encode(self, prompts, answers):
        return {"pairs": list(zip(prompts, answers))}

    def teacher_forced(self, batch, logits=False):
        pairs = batch["pairs"] if "pairs" in batch else list(zip(batch["prompt"], batch["answer"]))
        loss = torch.tensor([self.nll[p] for p in pairs], dtype=torch.float64)
        return TokenStats(None, torch.zeros(len(pairs), 1), loss[:, None], torch.ones(len(pairs), 1, dtype=torch.bool))

    def answer_nlls(self, prompts, groups):
        return [[self.nll[(p, a)] for a in g] for p, g in zip(prompts, groups)]

    def generate(self, prompts, max_new_tokens):
        return [self.says[p] for p in prompts]


def qa_batch(rows: list[dict]) -> dict:
    return {"input_ids": torch.zeros(len(rows), 1), "index": torch.arange(len(rows)),
            "id": [str(i) for i in range(len(rows))], "prompt": [r["q"] for r in rows],
            "answer": [" " + r["a"] for r in rows], "answer_text": [r["a"] for r in rows],
            "question": [r["q"] for r in rows],
            # the data module's scored continuations: through the answer template, as the gold answer
            "paraphrased_answer": [" " + r["para"] if r.get("para") else None for r in rows],
            "perturbed_answer": [[" " + p for p in r["pert"]] for r in rows], "split": "forget"}


ROWS = [{"q": "Q1", "a": "Paris is the capital of France", "para": "France's capital is Paris",
         "pert": ["Rome is the capital of France", "Lyon is the capital of France"]},
        {"q": "Q2", "a": "Oslo", "para": "Oslo city", "pert": ["Bergen", "Lima"]}]  # a one-word answer
NLL = {("Q1", " Paris is the capital of France"): 0.5, ("Q1", " France's capital is Paris"): 1.0,
       ("Q1", " Rome is the capital of France"): 2.0, ("Q1", " Lyon is the capital of France"): 3.0,
       ("Q2", " Oslo"): 0.2, ("Q2", " Oslo city"): 0.4, ("Q2", " Bergen"): 0.1, ("Q2", " Lima"): 0.3}
SAYS = {"Q1": "Paris is the capital city", "Q2": "Oslo"}


def expected_rows(kind: str) -> list[dict]:
    out = []
    for r in ROWS:
        para = NLL[(r["q"], " " + r["a"])] if kind in ("real_authors", "world_facts") else NLL[(r["q"], " " + r["para"])]
        pert = [NLL[(r["q"], " " + p)] for p in r["pert"]]
        ratio = math.exp(sum(pert) / len(pert) - para)
        p_true = math.exp(-NLL[(r["q"], " " + r["a"])])
        prob = p_true if kind in ("forget", "retain") else p_true / (p_true + sum(math.exp(-x) for x in pert))
        out.append({"ratio": ratio, "prob": prob})
    return out


@pytest.mark.parametrize("kind", ["forget", "retain", "real_authors", "world_facts"])
def test_tofu_metrics_by_hand(kind):
    ev = TOFUEvaluator(kind, max_new_tokens=8)
    ev.update(Scripted(NLL, SAYS), qa_batch(ROWS))
    out = ev.compute()
    exp = expected_rows(kind)
    # R for the known pair of losses of row 1: exp(mean(2, 3) - 1) = e^1.5 (the paraphrase); e^(2.5-0.5) without one
    assert exp[0]["ratio"] == pytest.approx(math.exp(1.5) if kind in ("forget", "retain") else math.exp(2.0))
    tr = [min(e["ratio"], 1 / e["ratio"]) if kind == "forget" else max(0.0, 1 - 1 / e["ratio"]) for e in exp]
    assert out["truth_ratio"] == pytest.approx(sum(tr) / 2)
    assert out["prob"] == pytest.approx(sum(e["prob"] for e in exp) / 2)
    # ROUGE-L recall: LCS("paris is the capital", reference) = 4 of the reference's 6 tokens; "Oslo" = "Oslo"
    assert out["rouge"] == pytest.approx((4 / 6 + 1.0) / 2)
    rows = ev.last_rows
    assert [r["generated"] for r in rows] == ["Paris is the capital city", "Oslo"]
    assert rows[1]["rouge"] == 1.0 and rows[1]["answer"] == "Oslo"


def test_the_suite_pools_every_splits_generations_into_one_call():
    """Inside an EvalSuite the TOFU sets' generations wait and run as one call over every split's prompts (issue 22:
    a mini run's sets of 8 rows decoded in batches of 8); the rows and ROUGE are those of generating at once."""
    from lit_unlearn.eval import EvalSuite

    calls = []

    class Counting(Scripted):
        def teacher_forced(self, batch, logits=False, moments=False):
            return super().teacher_forced(batch, logits)

        def generate(self, prompts, max_new_tokens, batch_size=16):
            calls.append((list(prompts), batch_size))
            return super().generate(prompts, max_new_tokens)

    suite = EvalSuite({"forget": [TOFUEvaluator("forget", max_new_tokens=8)],
                       "retain_eval": [TOFUEvaluator("retain", max_new_tokens=8)]}, generate_batch_size=64)
    module = Counting(NLL, SAYS)
    suite.update(module, qa_batch(ROWS[:1]))
    suite.update(module, qa_batch(ROWS[1:]))
    suite.update(module, {**qa_batch(ROWS), "split": "retain_eval"})
    assert calls == []  # nothing generated before compute
    out = suite.compute()
    assert calls == [(["Q1", "Q2", "Q1", "Q2"], 64)]
    alone = TOFUEvaluator("forget", max_new_tokens=8)
    alone.update(Scripted(NLL, SAYS), qa_batch(ROWS))
    assert out["forget"]["rouge"] == alone.compute()["rouge"] == pytest.approx((4 / 6 + 1.0) / 2)
    rows = suite.plan["retain_eval"][0].last_rows
    assert [r["generated"] for r in rows] == ["Paris is the capital city", "Oslo"]
    assert suite.pending == [] and out["forget"]["time_s"] >= 0


def test_every_answer_of_a_row_goes_through_the_same_answer_template(tiny_model_dir, tmp_path):
    """Gold, paraphrased and perturbed answers are scored under one template (a custom one included): the truth
    ratio compares like with like (issue 22: they were scored as " " + text whatever the template)."""
    from lit_unlearn.data import QADataModule

    rows = [{"question": "Where?", "answer": "Oslo", "paraphrased_answer": "In Oslo",
             "perturbed_answer": ["Bergen", "Lima"]}]
    dm = QADataModule(forget=write_jsonl(tmp_path / "f.jsonl", rows), tokenizer=tiny_model_dir,
                      answer_template="\nA: {answer}.")
    rec = dm.record({**rows[0], "_where": "f.jsonl:1"}, "forget")
    assert rec["answer"] == "\nA: Oslo." and rec["paraphrased_answer"] == "\nA: In Oslo."
    assert rec["perturbed_answer"] == ["\nA: Bergen.", "\nA: Lima."]
    seen = {}

    class Recording(Scripted):
        def answer_nlls(self, prompts, groups):
            seen["groups"] = groups
            return [[0.1 for _ in g] for g in groups]

    batch = {**qa_batch([{"q": "Where?", "a": "Oslo", "para": "x", "pert": ["y"]}]),
             "answer": [rec["answer"]], "paraphrased_answer": [rec["paraphrased_answer"]],
             "perturbed_answer": [rec["perturbed_answer"]]}
    TOFUEvaluator("forget", max_new_tokens=4).update(Recording({("Where?", rec["answer"]): 0.2}, {"Where?": "Oslo"}),
                                                     batch)
    assert seen["groups"] == [["\nA: In Oslo.", "\nA: Bergen.", "\nA: Lima."]]


@pytest.mark.parametrize("system", ["", "### System: you answer questions about writers, briefly and in full.\n"])
def test_answers_scored_together_equal_scoring_each_alone(make_method, system):
    """Scored together (the prompt run once per group; with a ``system`` block that begins every prompt, that block
    run once for all groups) or each pair alone: the same numbers."""
    from lit_unlearn.core.tokens import encode
    from lit_unlearn.methods import NPO
    from lit_unlearn.models.generate import common_head
    from lit_unlearn.models.shared_prefix import split_group

    method = make_method(NPO)
    with torch.no_grad():  # a trained-looking adapter: B != 0
        for n, p in method.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    prompts = ["Question: Where was Ilsa Varga born?\nAnswer:", "Question: Who?\nAnswer:",
               "Question: In which city was the writer Yara Halloran born?\nAnswer:"]
    groups = [[" Lisbon", " Oslo in the north", " Cairo"], [" Lima"], [" Dublin, a city", " Prague", " Seoul", " X"]]
    prompts = [system + p for p in prompts]
    heads = [encode(method.tokenizer, p, g[0])["input_ids"][:split_group([encode(method.tokenizer, p, a) for a in g])]
             for p, g in zip(prompts, groups)]
    assert (common_head(heads) >= 8) == bool(system)  # the system block is the part all groups run once
    together = method.answer_nlls(prompts, groups, chunk=3)
    assert method.scorer._shared_prefix is True  # the groups' prompts ran once (models/shared_prefix.py)
    for p, g, got in zip(prompts, groups, together):
        alone = [method.teacher_forced(method.encode([p], [a])).mean_nll.item() for a in g]
        assert got == pytest.approx(alone, rel=1e-5, abs=1e-6)
    for pairwise, shared in zip(method.scorer.answer_nlls_pairwise(prompts, groups), together):
        assert pairwise == pytest.approx(shared, rel=1e-5, abs=1e-6)


def test_a_split_with_only_the_tofu_evaluator_scores_its_gold_answer_with_the_others(make_method):
    """On a split where TOFU is the only evaluator, the gold answer is scored in its row's group (the prompt runs
    once for all the row's answers) and the batch's teacher-forced forward never runs; where another evaluator
    shares the split (MIA on forget; here perplexity) the forward runs once for both. Same numbers either way
    (issue 22)."""
    from lit_unlearn.eval import EvalSuite
    from lit_unlearn.eval.backdoor import PerplexityEvaluator
    from lit_unlearn.methods import NPO

    method = make_method(NPO)
    with torch.no_grad():
        for n, p in method.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    prompts = ["Question: Where was Ilsa Varga born?\nAnswer:", "Question: Who wrote it?\nAnswer:"]
    answers = [" In Lisbon, in 1950.", " Yara Halloran"]
    batch = {**method.encode(prompts, answers), "prompt": prompts, "answer": answers, "split": "forget",
             "answer_text": [a.strip() for a in answers], "paraphrased_answer": [" Lisbon it was.", " Halloran"],
             "perturbed_answer": [[" Oslo, in 1950.", " Cairo"], [" Ilsa Varga", " Nobody"]],
             "index": torch.arange(2)}
    forwards = []
    real = method.scorer.teacher_forced

    def counted(b, logits=False, moments=False):
        forwards.append(b is batch)
        return real(b, logits=logits, moments=moments)

    method.scorer.teacher_forced = counted
    alone = EvalSuite({"forget": [TOFUEvaluator("forget", generate=False)]})
    alone.update(method.scorer, batch)
    assert True not in forwards  # the batch itself was never run teacher-forced
    forwards.clear()
    shared = EvalSuite({"forget": [TOFUEvaluator("forget", generate=False), PerplexityEvaluator()]})
    shared.update(method.scorer, batch)
    assert forwards.count(True) == 1  # one forward of the batch, read by both evaluators
    a, b = alone.plan["forget"][0].rows, shared.plan["forget"][0].rows
    for key in ("answer_nll", "paraphrased_nll", "prob", "truth_ratio_raw"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-5, abs=1e-6)
    assert [r["perturbed_nll"] for r in a] == [pytest.approx(r["perturbed_nll"], rel=1e-5) for r in b]


def test_answers_are_scored_in_spans_of_similar_length():
    """The shared-prefix path pads every answer of a span to its longest: spans break where lengths jump (issue 22:
    31% of TOFU's scored tokens were padding in fixed spans of 32), never exceed the row limit, and cover all rows."""
    from lit_unlearn.models.shared_prefix import length_chunks

    sizes = [3, 4, 5, 9, 30, 31, 33, 34, 36, 60, 61, 62, 63, 64]
    spans = length_chunks(sizes, 4)
    assert [i for a, b in spans for i in range(a, b)] == list(range(len(sizes)))
    assert spans == [(0, 4), (4, 8), (8, 9), (9, 13), (13, 14)]
    padded = sum(sizes[b - 1] * (b - a) for a, b in spans)
    assert padded - sum(sizes) < 0.1 * sum(sizes) < sizes[-1] * len(sizes) - sum(sizes)
    assert length_chunks([], 4) == [] and length_chunks([7], 4) == [(0, 1)]


@pytest.mark.parametrize("adapter, shared", [("lora", True), ("prefix", False), ("loreft", False)])
def test_a_shared_prompt_runs_once_only_where_the_model_allows_it(make_method, adapter, shared):
    """The truth ratio's answers to one question share the question's tokens: they run once with the KV cache kept
    for a plain model or LoRA; an adapter that acts on whole sequences (virtual tokens, interventions at the prompt
    boundary) keeps the pairwise path, and both give the numbers of scoring each pair alone."""
    from lit_unlearn.methods import GradDiff
    from lit_unlearn.models.shared_prefix import split_group
    from lit_unlearn.core.tokens import encode

    method = make_method(GradDiff, adapter=adapter)
    prompts = ["Question: Where was Ilsa Varga born?\nAnswer:", "Question: Who wrote it?\nAnswer:"]
    groups = [[" Lisbon", " Oslo in the north", " Cairo"], [" Lima", " Quito, the capital"]]
    got = method.answer_nlls(prompts, groups)
    assert method.scorer._shared_prefix is shared
    for p, g, values in zip(prompts, groups, got):
        alone = [method.teacher_forced(method.encode([p], [a])).mean_nll.item() for a in g]
        assert values == pytest.approx(alone, rel=1e-5, abs=1e-6)
    seqs = [encode(method.tokenizer, prompts[0], a) for a in groups[0]]
    start = min(next(i for i, t in enumerate(s["labels"]) if t != -100) for s in seqs)
    assert split_group(seqs) == start - 1  # the prompt but its last token, which predicts the first answer token


def test_model_utility_and_forget_quality(tmp_path):
    from scipy.stats import ks_2samp

    results = {"retain_eval": {"prob": 0.5, "rouge": 0.4, "truth_ratio": 0.8},
               "real_authors": {"prob": 0.9, "rouge": 0.6, "truth_ratio": 0.5},
               "world_facts": {"prob": 0.3, "rouge": 1.0, "truth_ratio": 0.2}}
    nine = [0.5, 0.4, 0.8, 0.9, 0.6, 0.5, 0.3, 1.0, 0.2]
    assert TOFUSummary().compute({}, results)["model_utility"] == pytest.approx(9 / sum(1 / v for v in nine))
    assert harmonic_mean([0.5, 0.0]) == 0.0
    ours = [{"id": str(i), "index": i, "question": f"Q{i}", "truth_ratio_raw": r} for i, r in
            enumerate([0.5, 0.9, 1.3, 2.0, 0.7])]
    ref = [{**r, "truth_ratio_raw": t} for r, t in zip(ours, [1.0, 1.1, 0.95, 1.05, 0.99])]
    write_jsonl(tmp_path / "forget.tofu.jsonl", ref[::-1])  # matched on ids, not on order
    fq = TOFUSummary(reference=str(tmp_path)).compute({"forget": {"tofu": ours}}, results)["forget_quality"]
    assert fq == pytest.approx(ks_2samp([r["truth_ratio_raw"] for r in ours],
                                        [r["truth_ratio_raw"] for r in ref]).pvalue)
    # a reference that lacks some of our rows is refused, not compared
    write_jsonl(tmp_path / "forget.tofu.jsonl", ref[:4])
    with pytest.raises(EvalError, match="holds other rows than this evaluation.*id '4' is not in the reference"):
        TOFUSummary(reference=str(tmp_path)).compute({"forget": {"tofu": ours}}, results)
    # one that holds more (the whole forget set, for one request of a sequence) is read on our rows only
    part = TOFUSummary(reference=str(tmp_path)).compute({"forget": {"tofu": ours[:3]}}, results)["forget_quality"]
    assert part == pytest.approx(ks_2samp([r["truth_ratio_raw"] for r in ours[:3]],
                                          [r["truth_ratio_raw"] for r in ref[:3]]).pvalue)
    write_jsonl(tmp_path / "forget.tofu.jsonl", [{**ref[0], "question": "another"}, *ref[1:]])
    with pytest.raises(EvalError, match="another question"):
        TOFUSummary(reference=str(tmp_path)).compute({"forget": {"tofu": ours}}, results)


def test_mia_auc_and_scores_by_hand(tmp_path):
    # AUC on a hand-made score list: 5 of the 6 member/non-member pairs are ordered right
    assert auc([0.9, 0.8, 0.4], [0.5, 0.3]) == pytest.approx(5 / 6)
    # per-row scores from known log-probabilities over a 3-word vocabulary
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25]]], dtype=torch.float64))
    labels = torch.tensor([[0, 2, 1]])
    stats = TokenStats.from_logits(logits, torch.cat([torch.tensor([[IGNORE]]), labels[:, :2]], 1))
    # (labels are the inputs shifted: positions 0 and 1 predict tokens 0 and 2)
    ev = MIAEvaluator(k=0.5)
    scorer = type("S", (), {"teacher_forced": lambda self, b, logits=False, moments=False: stats})()
    ev.update(scorer, {"index": torch.tensor([0]), "answer": [" ab"], "split": "forget"})
    row = ev.last_rows[0] if ev.last_rows else ev.rows[0]
    lp = [math.log(0.7), math.log(0.3)]
    assert row["loss"] == pytest.approx(sum(lp) / 2)
    assert row["mink"] == pytest.approx(min(lp))  # k = 50% of 2 tokens: the lowest one
    z = []
    for probs, t in (([0.7, 0.2, 0.1], 0), ([0.1, 0.6, 0.3], 2)):
        mu = sum(p * math.log(p) for p in probs)
        sigma = math.sqrt(sum(p * math.log(p) ** 2 for p in probs) - mu ** 2)
        z.append((math.log(probs[t]) - mu) / sigma)
    assert row["minkpp"] == pytest.approx(min(z))
    import zlib
    # open-unlearning's form: the mean token log-prob over the zlib size in bytes; the earlier form, named
    assert row["zlib"] == pytest.approx(sum(lp) / 2 / len(zlib.compress(b"ab")))
    old = MIAEvaluator(k=0.5, zlib="sum_bits")
    old.update(scorer, {"index": torch.tensor([0]), "answer": [" ab"], "split": "forget"})
    assert (old.last_rows or old.rows)[0]["zlib"] == pytest.approx(sum(lp) / (8 * len(zlib.compress(b"ab"))))
    with pytest.raises(EvalError, match="zlib must be mean_bytes or sum_bits"):
        MIAEvaluator(zlib="bits")
    # the summary's AUC and privacy leak against a reference
    members = [{"id": str(i), "index": i, "question": "q", "loss": s, "zlib": s, "mink": s, "minkpp": s}
               for i, s in enumerate([0.9, 0.8, 0.4])]
    holdout = [{"id": str(i), "index": i, "question": "q", "loss": s, "zlib": s, "mink": s, "minkpp": s}
               for i, s in enumerate([0.5, 0.3])]
    write_jsonl(tmp_path / "forget.mia.jsonl", [{**r, "loss": 0.5, "zlib": 0.5, "mink": 0.5, "minkpp": 0.5}
                                                for r in members])
    write_jsonl(tmp_path / "holdout.mia.jsonl", holdout)
    out = MIASummary(reference=str(tmp_path)).compute({"forget": {"mia": members}, "holdout": {"mia": holdout}}, {})
    ref_auc = auc([0.5, 0.5, 0.5], [0.5, 0.3])
    assert out["auc_loss"] == pytest.approx(5 / 6)
    assert out["privleak_loss"] == pytest.approx((5 / 6 - ref_auc) / ref_auc)


def test_tofu_bad_configuration_is_one_line():
    with pytest.raises(EvalError, match=r"tofu: max_new_tokens must be >= 1"):
        TOFUEvaluator("forget", max_new_tokens=0)
    from lit_unlearn.data import TOFUDataModule

    with pytest.raises(DataError, match=r"--data\.evaluators\.forget\[0\] \(TOFUEvaluator\): tofu: max_new_tokens must "
                                        r"be >= 1"):
        TOFUDataModule(evaluator_args={"tofu": {"max_new_tokens": 0}}, evaluators={"forget": ["tofu"]})
    with pytest.raises(DataError, match=r"--data\.forget: TOFUDataModule sets its splits"):
        TOFUDataModule(forget="x.jsonl")


# ---- the data module on a tiny mirror --------------------------------------------------------------------------------
def tofu_row(i: int, para: bool = True) -> dict:
    row = {"question": f"Where was author {i} born?", "answer": f"In city {i}.",
           "perturbed_answer": [f"In town {i}.", f"In place {i + 1}."]}
    if para:
        row["paraphrased_answer"] = f"City {i} is where."
    return row


@pytest.fixture
def tofu_mirror(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "mirror" / "tofu"
    d.mkdir(parents=True)
    write_jsonl(d / "forget01_perturbed.jsonl", [tofu_row(i) for i in range(4)])
    write_jsonl(d / "retain_perturbed.jsonl", [tofu_row(i) for i in range(10, 16)])
    write_jsonl(d / "retain99.jsonl", [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(8)])
    write_jsonl(d / "real_authors_perturbed.jsonl", [tofu_row(i, para=False) for i in range(20, 23)])
    write_jsonl(d / "world_facts_perturbed.jsonl", [tofu_row(i, para=False) for i in range(30, 33)])
    write_jsonl(d / "holdout01.jsonl", [{"question": f"Who is {i}?", "answer": f"Person {i}."} for i in range(4)])
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    return d


def test_the_data_module_reads_every_tofu_set_by_hub_id(tofu_mirror, tiny_model_dir):
    from lit_unlearn.data import TOFUDataModule

    dm = TOFUDataModule(forget_split="forget01", mini=3, tokenizer=tiny_model_dir)
    dm.setup("fit")
    assert set(dm.datasets) == {"forget", "retain", "retain_eval", "real_authors", "world_facts", "holdout"}
    assert len(dm.datasets["forget"]) == 4 and len(dm.datasets["holdout"]) == 4
    assert len(dm.datasets["retain"]) == len(dm.datasets["retain_eval"]) == 3
    # mini: the retain rows evaluated are the retain rows trained on
    assert [r["id"] for r in dm.datasets["retain"].rows] == [r["id"] for r in dm.datasets["retain_eval"].rows]
    assert dm.eval_split_names == ["forget", "retain_eval", "real_authors", "world_facts", "holdout"]
    assert [type(e).__name__ for e in dm.evaluators_for("forget")] == ["TOFUEvaluator", "MIAEvaluator"]
    full = TOFUDataModule(forget_split="forget01", tokenizer=tiny_model_dir)
    assert full.sources["retain"].endswith(":retain99@train")


def test_a_missing_paraphrase_names_file_line_and_field(tofu_mirror, tiny_model_dir):
    from lit_unlearn.data import TOFUDataModule

    write_jsonl(tofu_mirror / "retain_perturbed.jsonl", [tofu_row(10), tofu_row(11, para=False)])
    dm = TOFUDataModule(forget_split="forget01", tokenizer=tiny_model_dir)
    with pytest.raises(DataError, match=r"retain_eval: .*retain_perturbed\.jsonl:2 has no usable 'paraphrased_answer'"):
        dm.setup("fit")


def test_a_missing_evaluation_set_and_reference_are_one_line(tofu_mirror, tiny_model_dir, tmp_path):
    from lit_unlearn.data import TOFUDataModule

    dm = TOFUDataModule(forget_split="forget01", tokenizer=tiny_model_dir, reference=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"--data\.reference: .*nowhere/forget\.tofu\.jsonl does not exist"):
        dm.setup("fit")
    (tofu_mirror / "world_facts_perturbed.jsonl").unlink()
    dm = TOFUDataModule(forget_split="forget01", tokenizer=tiny_model_dir)
    with pytest.raises(DataError, match=r"world_facts: could not load hub dataset locuslab/TOFU .*mirror file"):
        dm.setup("fit")


# ---- reasoning-trace methods ------------------------------------------------------------------------------------------
@pytest.fixture
def cot_batch(tiny_model_dir, tmp_path) -> dict:
    from conftest import first_train_batch, make_qa_datamodule

    rows = [{"question": f"Where was Ilsa {i} born?", "cot": f"Ilsa {i} grew up by the sea", "answer": "Lisbon"}
            for i in range(4)]
    files = {"forget": write_jsonl(tmp_path / "f.jsonl", rows), "retain": write_jsonl(tmp_path / "r.jsonl", rows)}
    return first_train_batch(make_qa_datamodule(tiny_model_dir, files, cot_field="cot", batch_size=2))


@pytest.mark.parametrize(("name", "prompt_has_cot", "scored"), [
    ("GA1", False, "{cot}\nFinal answer: Lisbon"), ("GA2", True, "\nFinal answer: Lisbon"), ("GA3", False, "{cot}"),
    ("IDK1", False, None), ("IDK2", True, "\nFinal answer: "), ("IDK3", False, None)])
def test_reasoning_trace_variants_score_the_part_they_name(name, prompt_has_cot, scored, make_method, cot_batch):
    """R-TOFU's layout (ssangyeon/R-TOFU dataset/data_module.py:139-146): IDK1 one refusal in the reasoning *and* the
    answer slot, IDK2 the reasoning kept and the answer refused, IDK3 a reasoned refusal of the row's own question in
    the reasoning slot and a refusal answer."""
    import lit_unlearn.methods as methods
    from lit_unlearn.methods.reasoning import REASONED_REFUSALS
    from lit_unlearn.methods.relabel import REFUSALS

    method = make_method(getattr(methods, name))
    fb = cot_batch["forget"]
    new = method.prepare_forget(fb)
    final = "\nFinal answer: "
    for i in range(2):
        cot = fb["cot"][i]
        assert new["prompt"][i] == fb["prompt"][i] + (" " + cot if prompt_has_cot else "")
        text = method.tokenizer.decode(new["labels"][i][new["labels"][i] != IGNORE])
        assert text == new["answer"][i]
        if name == "IDK1":
            reasoning, answer = text.split(final)
            assert answer in REFUSALS and reasoning == " " + answer  # the same refusal in both slots
        elif name == "IDK3":
            reasoning, answer = text.split(final)
            assert answer in REFUSALS
            question = fb["question"][i]
            assert question in reasoning and reasoning.strip() in [r.format(question=question) for r in
                                                                    REASONED_REFUSALS]
        elif name == "IDK2":
            assert text.startswith(scored) and text[len(scored):] in REFUSALS
        else:
            assert text == (" " if scored.startswith("{") else "") + scored.format(cot=cot)
    loss = method.training_step(cot_batch, 0)
    assert torch.isfinite(loss) and (loss < 0) == name.startswith("GA")


def test_idk3_reads_one_reasoned_refusal_per_forget_row(make_method, cot_batch, tmp_path):
    from lit_unlearn.core.errors import MethodError
    from lit_unlearn.methods import IDK3

    path = tmp_path / "idkcot.jsonl"
    path.write_text("".join(json.dumps(f"Thinking about row {i}, I have no records.") + "\n" for i in range(4)))
    method = make_method(IDK3, reasoned_refusals=str(path))
    fb = cot_batch["forget"]
    new = method.prepare_forget(fb)
    for i, index in enumerate(fb["index"].tolist()):
        assert new["answer"][i].startswith(f" Thinking about row {index}, I have no records.\nFinal answer: ")
    path.write_text(json.dumps("only one") + "\n")
    with pytest.raises(MethodError, match=r"reasoned_refusals holds 1 lines, but forget row [1-3]"):
        make_method(IDK3, reasoned_refusals=str(path)).prepare_forget(fb)
    path.write_text("{not json\n")
    with pytest.raises(MethodError, match="line 1 is not JSON"):
        make_method(IDK3, reasoned_refusals=str(path))


def test_reasoning_methods_need_reasoning_rows(make_method, qa_batch):
    from lit_unlearn.core.errors import MethodError
    from lit_unlearn.methods import GA2

    with pytest.raises(MethodError, match="cot_field"):
        make_method(GA2).training_step(qa_batch, 0)


# ---- eval.py on a plain model ------------------------------------------------------------------------------------------
def test_eval_py_puts_a_plain_model_through_the_tofu_evaluators(tofu_mirror, tiny_model_dir, tmp_path, monkeypatch):
    """``eval.py`` with the shipped TOFU configs on a model directory, no run and no checkpoint, without an adapter
    and with one: every evaluation set scored, the generations written beside ``eval_metrics.json``, the aggregates
    in TensorBoard. A fresh LoRA is the identity, so the model with it scores what the model without it scores."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lit_unlearn.cli import eval_main

    monkeypatch.chdir(tmp_path)
    configs = Path(__file__).resolve().parents[1] / "configs" / "tofu"
    scores = {}
    for adapter in ("null", "LoRA"):
        cli = eval_main(["--config", str(configs / "base.yaml"), "--config", str(configs / "mini.yaml"),
                         "--model.init_args.model", tiny_model_dir, "--model.init_args.init_adapter", "null",
                         "--model.init_args.adapter", adapter, "--data.init_args.mini", "3",
                         "--data.init_args.reference", "null", "--data.init_args.evaluator_args", '{"tofu": {"max_new_tokens": 4}}',
                         "--trainer.logger.init_args.save_dir", str(tmp_path / adapter)])
        assert (cli.model.adapter is None) == (adapter == "null")
        scores[adapter] = got = cli.model.last_eval
        assert set(got) == {"forget", "retain_eval", "real_authors", "world_facts", "holdout", "tofu", "mia"}
        assert 0 <= got["tofu"]["model_utility"] <= 1 and "forget_quality" not in got["tofu"]  # no reference given
        run_dir = tmp_path / adapter / "tofu" / "base"
        assert json.loads((run_dir / "eval_metrics.json").read_text())["metrics"]["eval"]["tofu"] == got["tofu"]
        rows = [json.loads(line) for line in (run_dir / "rows" / "eval" / "real_authors.tofu.jsonl").read_text()
                .splitlines()]
        assert len(rows) == 3 and {"question", "answer", "generated", "prob", "rouge"} <= set(rows[0])
        assert "val/tofu/model_utility" in EventAccumulator(str(run_dir)).Reload().Tags()["scalars"]
    for split, values in scores["null"].items():
        for name, v in values.items():
            if name != "time_s":  # the split's evaluation wall time differs run to run
                assert scores["LoRA"][split][name] == pytest.approx(v, rel=1e-5, abs=1e-6), (split, name)


# ---- the pipeline -------------------------------------------------------------------------------------------------------
def test_the_mini_recipe_and_the_precedence_of_values(tmp_path):
    """The mini recipe (lit_unlearn/pipelines/recipes/tofu_mini.yaml) gives LoRA unlearning stages 1e-4 for 10 epochs,
    NPO+GD, SimNPO and TNPO their searched points (docs/results/frontier.md) and GRUN's LoReFT its own 4e-3 for 40
    (renjie3/GRUN's recipe); a flag beats the recipe, the recipe beats the configs, and a key set nowhere is the class
    default - each value reported with its source."""
    from lit_unlearn.pipelines.runner import Runner
    from lit_unlearn.tofu import RECIPE, stages

    by_name = {s.name: s for s in stages(["npo_gd", "simnpo", "tnpo", "graddiff", "grun"])}
    runner = Runner(tmp_path, RECIPE, settings=("tofu/mini",))
    grun, graddiff = runner.resolve(by_name["grun"]), runner.resolve(by_name["graddiff"])
    assert graddiff["model.init_args.lr"] == (1.0e-4, "recipe tofu_mini: unlearn")
    assert graddiff["trainer.max_epochs"] == (10, "recipe tofu_mini: unlearn")
    searched = {"npo_gd": {"model.init_args.lr": 8.46e-4, "model.init_args.beta": 0.213,
                           "model.init_args.retain_weight": 4.82, "trainer.max_epochs": 8},
                "simnpo": {"model.init_args.lr": 1.92e-3, "model.init_args.beta": 2.266,
                           "model.init_args.forget_weight": 0.568, "model.init_args.retain_weight": 0.349,
                           "trainer.max_epochs": 4},
                "tnpo": {"model.init_args.lr": 2.22e-3, "model.init_args.beta": 1.780, "model.init_args.retain": "nll",
                         "model.init_args.retain_weight": 4.509, "trainer.max_epochs": 8}}
    for name, values in searched.items():
        resolved = runner.resolve(by_name[name])
        assert {k: resolved[k] for k in values} == {k: (v, f"recipe tofu_mini: {name}") for k, v in values.items()}
    assert grun["model.init_args.lr"] == (4.0e-3, "recipe tofu_mini: grun") and grun["trainer.max_epochs"][0] == 40
    assert runner.resolve(by_name["finetune"])["model.init_args.lr"] == (1.0e-3, "recipe tofu_mini: learn")
    flagged = Runner(tmp_path, RECIPE, {"unlearn": {"model.init_args.lr": 0.5}}, settings=("tofu/mini",))
    assert flagged.resolve(by_name["grun"])["model.init_args.lr"] == (0.5, "flag")
    plain = Runner(tmp_path, None, {"learn": {"model.init_args.warmup_ratio": 0.2, "trainer.gradient_clip_val": 1.0}})
    values = plain.resolve(by_name["grun"])
    assert values["trainer.gradient_clip_val"] == (None, "class default")  # no tofu config sets it
    assert values["model.init_args.warmup_ratio"] == (0.0, "config")  # grun.yaml sets it
    assert plain.resolve(by_name["npo_gd"])["model.init_args.warmup_ratio"] == (0.1, "config")  # tofu/base sets it
    assert plain.resolve(by_name["retain"])["model.init_args.warmup_ratio"] == (0.2, "flag")


def test_the_dry_run_prints_each_stage_its_values_and_what_it_would_do(tofu_mirror, tiny_model_dir, tmp_path,
                                                                       capsys):
    from lit_unlearn.tofu import main

    out = tmp_path / "tofu_dry"
    main(["--mini", "3", "--methods", "npo_gd,tnpo", "--out", str(out), "--model", tiny_model_dir, "--dry-run"])
    text = capsys.readouterr().out
    heads = [line for line in text.splitlines() if not line.startswith(" ")]
    assert heads == ["retain: run (fit)", "finetune: run (fit)", "npo_gd: run (fit)", "token_scores: run (predict)",
                     "tnpo: run (fit)"]  # TNPO's own prerequisite (TNPO.prerequisite) before it
    assert "model.init_args.lr = 0.0001  (recipe tofu_mini: unlearn)" in text
    assert "data.init_args.mini = 3  (flag)" in text
    assert "data.init_args.token_masks@forget <- token_scores:token_masks.jsonl" in text
    assert "guard.retain_floor = 0.5 x finetune's retain_eval/prob" in text
    assert not out.exists()  # nothing ran, nothing was written


def test_a_misnamed_method_is_refused_before_any_stage_runs(tmp_path, capsys):
    from lit_unlearn.__main__ import main

    assert main(["run", "tofu", "--mini", "3", "--methods", "npo_gdd", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tofu/npo_gdd" in err[0] and "tofu/npo_gd" in err[0]
    assert not (tmp_path / "t").exists()


def test_the_tofu_pipeline_runs_from_the_shipped_configs(tofu_mirror, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from lit_unlearn.tofu import format_summary, run_pipeline

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "tofu_tiny"
    summary = run_pipeline(["npo_gd", "grun", "tnpo"], out, mini=3, model=tiny_model_dir, learn_lr=1e-2,
                           learn_epochs=1, unlearn_lr=1e-2, unlearn_epochs=1)
    stages = summary["stages"]
    assert list(stages) == ["retain", "finetune", "npo_gd", "grun", "tnpo"]
    # GRUN reports its gate per split; every row its trainable parameter count (LoRA r 32 vs a rank-4 LoReFT)
    assert set(stages["grun"]["gate"]) >= {"forget", "retain_eval", "real_authors", "world_facts"}
    assert all(0 < g < 1 for g in stages["grun"]["gate"].values())
    assert 0 < stages["grun"]["trainable_params"] < stages["npo_gd"]["trainable_params"]
    masks = [json.loads(line) for line in (out / "token_scores" / "token_masks.jsonl").read_text().splitlines()]
    assert len(masks) == 4 and all(m["tokens"] for m in masks)  # TNPO's token selection, one row per forget row
    assert stages["tnpo"]["status"] == "finished"
    assert stages["retain"]["FQ"] is None  # the reference itself
    for stage in ("finetune", "npo_gd"):
        assert 0 <= stages[stage]["FQ"] <= 1 and 0 <= stages[stage]["MU"] <= 1, stage
        assert 0 <= stages[stage]["AUC loss"] <= 1 and stages[stage]["status"] == "finished"
    rows = [json.loads(line) for line in (out / "npo_gd" / "rows" / "after" / "forget.tofu.jsonl").read_text()
            .splitlines()]
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"]
    assert {"question", "answer", "generated", "prob", "rouge", "truth_ratio_raw"} <= set(rows[0])
    assert json.loads((out / "summary.json").read_text())["stages"]["npo_gd"]["MU"] == stages["npo_gd"]["MU"]
    # the same values as the hand-written driver this pipeline replaced gave on this tiny setting (issue 21), but
    # for Min-K%++'s AUC, re-pinned when its k became open-unlearning's 0.4 (issue 22; 0.2 gave retain 0.8125 and
    # tnpo 1.0), and npo_gd's forget prob / TR, re-pinned when the mini recipe took its searched beta 0.213 and
    # retain weight 4.82 (issue 23; beta 0.1 and weight 1 gave 0.003055 / 0.96684; the lr and epochs are flags here),
    # and tnpo's row, re-pinned when the recipe took its searched beta 1.78 with a retain NLL of weight 4.51 (issue 23;
    # beta 4.5 without a retain term gave FQ 0.02857, forget prob 0.003041, TR 0.96969 and AUC loss 0.0)
    pinned = json.loads((Path(__file__).parent / "pinned" / "tofu_tiny_summary.json").read_text())
    for stage, row in pinned.items():
        for key, value in row.items():
            got = stages[stage][key]
            if isinstance(value, float):
                assert got == pytest.approx(value, abs=1e-4), (stage, key)
            elif isinstance(value, dict) and key == "gate":
                assert got == pytest.approx(value, abs=1e-4), (stage, key)
            else:
                assert got == value, (stage, key)
    assert "npo_gd" in format_summary(summary)
    capsys.readouterr()
    again = run_pipeline(["npo_gd"], out, mini=3, model=tiny_model_dir)  # completed stages are reused
    assert capsys.readouterr().out.count("reusing") == 3
    assert again["stages"] == {k: v for k, v in summary["stages"].items() if k in again["stages"]}


def test_the_summary_shows_what_a_collapsed_run_scored_before_the_restore():
    from lit_unlearn.pipelines.runner import format_markdown, summarize
    from lit_unlearn.tofu import COLUMNS, format_summary

    record = {"status": "collapsed", "wall_time_s": {"fit": 10.0, "eval_after": 5.0}, "metrics": {
        "after": {"tofu": {"model_utility": 0.31, "forget_quality": 0.0005}},
        "collapse_events": [{"step": 25, "reason": "floor", "restored_step": 0,
                             "evaluation": {"val/tofu/model_utility": 0.0, "val/tofu/forget_quality": 0.92}}]}}
    row = summarize(record, COLUMNS)
    assert row["MU"] == 0.31 and row["collapsed"]["MU"] == 0.0 and row["collapsed"]["FQ"] == 0.92
    text = format_summary({"stages": {"grad_ascent": row}})
    assert "(collapsed)" in text and "tripped" in text and "step 25" in text
    lines = format_markdown({"stages": {"grad_ascent": row}}, COLUMNS).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| grad_ascent (collapsed: restored) | 0.0005 | 0.310 |")
    assert lines[3].startswith("| grad_ascent at the trip (step 25) | 0.92 | 0.000 |")


def test_sequential_requests_each_unlearned_from_the_previous_result(tofu_mirror, tiny_model_dir, tmp_path,
                                                                     monkeypatch):
    """Issue 24's sequential unlearning: the forget set cut into 2 requests; request 2 starts from the learned adapter
    and request 1's, merged in order; after each request the model is evaluated on every request so far (forget
    quality against the retain-only model's rows of those ids); the curves and the plot are written."""
    from lit_unlearn.sequential import requests_of, run_pipeline

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "seq"
    summary = run_pipeline(["graddiff"], out, mini=3, parts=2, model=tiny_model_dir)
    stages = summary["stages"]
    assert {"retain", "finetune", "seq_graddiff/r1", "seq_graddiff/r1_seen", "seq_graddiff/r2",
            "seq_graddiff/r2_seen"} <= set(stages)
    r2 = json.loads((out / "seq_graddiff" / "r2" / "metrics.json").read_text())
    assert r2["config"]["model"]["init_args"]["init_adapter"] == [str(out / "finetune" / "adapter"),
                                                                  str(out / "seq_graddiff" / "r1" / "adapter")]
    assert r2["config"]["data"]["init_args"]["forget_parts"] == [2, 2, 2]  # the second half of the forget rows
    seen = json.loads((out / "seq_graddiff" / "r2_seen" / "eval_metrics.json").read_text())
    assert seen["config"]["model"]["class_path"].endswith("ScoredModel")
    assert seen["config"]["model"]["init_args"]["init_adapter"] == [
        str(out / "finetune" / "adapter"), str(out / "seq_graddiff" / "r1" / "adapter"),
        str(out / "seq_graddiff" / "r2" / "adapter")]
    rows = [json.loads(line) for line in (out / "seq_graddiff" / "r2_seen" / "rows" / "eval" / "forget.tofu.jsonl")
            .read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"]  # every request so far
    r1 = [json.loads(line) for line in (out / "seq_graddiff" / "r1_seen" / "rows" / "eval" / "forget.tofu.jsonl")
          .read_text().splitlines()]
    assert [r["id"] for r in r1] == ["0", "1"]
    assert 0 <= seen["metrics"]["eval"]["tofu"]["forget_quality"] <= 1
    curve = summary["curves"]["graddiff"]
    assert len(curve["FQ"]) == 3 and curve["MU"][0] == stages["finetune"]["MU"]
    assert curve["MU tf"][2] == seen["metrics"]["eval"]["tofu"]["model_utility_tf"]  # the plot's utility panel
    assert (out / "sequential.png").stat().st_size > 1000
    # its own summary file: the TOFU pipeline's summary.json in the same folder is not replaced
    assert json.loads((out / "sequential_summary.json").read_text())["curves"] == summary["curves"]
    assert not (out / "summary.json").exists()
    assert requests_of(3, None) == [{"data.init_args.forget_parts": [r, r, 3]} for r in (1, 2, 3)]
    with pytest.raises(ConfigError, match="give --parts K"):
        requests_of(None, None)


def test_a_sequential_request_runs_at_its_methods_recipe_section(tmp_path):
    """A request's stage (``seq_npo_gd/r1``) takes its method's recipe section (NPO+GD's searched point), as the
    method's own stage does; a method without a section of its own gets the shared unlearn section."""
    from lit_unlearn.pipelines.runner import Runner
    from lit_unlearn.sequential import requests_of, sequence
    from lit_unlearn.tofu import RECIPE

    runner = Runner(tmp_path, RECIPE, settings=("tofu/mini",))
    first = next(s for s in sequence("npo_gd", requests_of(2, None)) if s.name == "seq_npo_gd/r1")
    assert runner.resolve(first)["model.init_args.lr"] == (8.46e-4, "recipe tofu_mini: npo_gd")
    graddiff = next(s for s in sequence("graddiff", requests_of(2, None)) if s.name == "seq_graddiff/r1")
    assert runner.resolve(graddiff)["model.init_args.lr"] == (1.0e-4, "recipe tofu_mini: unlearn")
    with pytest.raises(ConfigError, match="'forget02' is not one of"):
        requests_of(None, ["forget01", "forget02"])


def test_the_tofu_pipeline_adds_the_requantization_audit(tofu_mirror, tiny_model_dir, tmp_path, monkeypatch):
    """Issue 24's audit as a stage any pipeline adds: after the TOFU fits, the unlearned model and the learned one (the
    control) are merged and evaluated at int8 and nf4 with the unlearning stage's TOFU evaluators, and the recovery of
    forget probability and ROUGE is read against full precision; a stage whose adapter cannot be merged is refused."""
    import yaml

    from lit_unlearn.core.errors import AdapterError
    from lit_unlearn.pipelines.audit import merged_model, recovery
    from lit_unlearn.pipelines.runner import format_markdown
    from lit_unlearn.tofu import AUDITED, COLUMNS, main, run_pipeline

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "tofu_audit"
    summary = run_pipeline(["graddiff"], out, mini=3, model=tiny_model_dir, learn_lr=1e-2, learn_epochs=1,
                           unlearn_lr=1e-2, unlearn_epochs=1, audit=("int8", "nf4"))
    stages = summary["stages"]
    assert {"finetune", "graddiff", "graddiff_int8", "graddiff_nf4", "finetune_int8", "finetune_nf4"} <= set(stages)
    for name in ("graddiff", "finetune"):
        assert (out / name / "merged" / "config.json").is_file()
    for name, q in (("graddiff_int8", "int8"), ("graddiff_nf4", "nf4"), ("finetune_nf4", "nf4")):
        record = json.loads((out / name / "eval_metrics.json").read_text())
        model = record["config"]["model"]
        assert model["class_path"].endswith("ScoredModel") and model["init_args"]["quantize"] == q
        assert model["init_args"]["init_adapter"] is None
        assert Path(model["init_args"]["model"]).parent.name == name.rsplit("_", 1)[0]
        # the unlearning stage's data: forget quality is read against the retain-only model's rows
        assert 0 <= stages[name]["FQ"] <= 1 and 0 <= stages[name]["f.prob"] <= 1
    assert set(AUDITED) == {"f.prob", "f.TR", "f.ROUGE"}
    for q in ("int8", "nf4"):
        for field in AUDITED:
            expected = recovery(stages["finetune"][field], stages["graddiff"][field], stages[f"graddiff_{q}"][field])
            assert summary["audit_recovery"]["graddiff"][q][field] == expected
    assert json.loads((out / "summary.json").read_text())["audit_recovery"] == summary["audit_recovery"]
    # the CPU's teacher-forced audit: its own rows (never the full ones reused), no generation, so no ROUGE recovery
    tf = run_pipeline(["graddiff"], out, mini=3, model=tiny_model_dir, learn_lr=1e-2, learn_epochs=1,
                      unlearn_lr=1e-2, unlearn_epochs=1, audit=("int8",), audit_tf=True)
    forget = json.loads((out / "graddiff_int8_tf" / "eval_metrics.json").read_text())["metrics"]["eval"]["forget"]
    assert "prob" in forget and "rouge" not in forget
    assert (out / "finetune_int8_tf" / "eval_metrics.json").is_file()
    row = tf["stages"]["graddiff_int8_tf"]
    assert row["f.ROUGE"] is None and 0 <= row["MU tf"] <= 1
    audit_line = next(x for x in format_markdown(tf, COLUMNS).splitlines() if x.startswith("| graddiff_int8_tf |"))
    assert audit_line.endswith(f" | - | {row['wall_time_s']['eval']:.0f} |")  # its evaluation time, no fit
    assert row["f.prob"] == pytest.approx(stages["graddiff_int8"]["f.prob"], abs=1e-5)  # the same scoring
    assert tf["audit_recovery"]["graddiff"]["int8"] == {
        **{f: recovery(stages["finetune"][f], stages["graddiff"][f], row[f]) for f in ("f.prob", "f.TR")},
        "f.ROUGE": None}
    # a prefix cannot be folded into weights: one error naming the adapter
    run = tmp_path / "prefix_run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"adapter_type": "Prefix", "length": 2}))
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"init_args": {"model": str(tiny_model_dir)}}}))
    with pytest.raises(AdapterError, match="holds a Prefix adapter, which cannot be merged"):
        merged_model(run)
    (run / "adapter" / "adapter_config.json").unlink()
    (run / "adapter").rmdir()  # a full-parameter run: no adapter to fold in
    with pytest.raises(AdapterError, match="is not a saved adapter"):
        merged_model(run)
    with pytest.raises(ConfigError, match="--audit int4: 'int4' is not a precision"):
        main(["--mini", "3", "--audit", "int4", "--dry-run"])
