#!/usr/bin/env bash
# Every GPU-only check in one call, in about 9 minutes on an H100/H200 (results and logs under $OUT):
#
#   1. pytest -m gpu: bf16 parity with GPT2LMHeadModel, the flash kernel through sdpa, the chunked loss on CUDA,
#      a compiled bf16 training step against eager;
#   2. bench/gpu.py at T=512: gpt2_small, bf16 + torch.compile, ours vs GPT2LMHeadModel at the same batch, MFU
#      against the dense peak and against the matmul rate measured in the same run;
#   3. train.py configs/gpt2_small.yaml through the real Trainer (bf16 + compile) on chitchat, then the same command
#      with more steps, which must resume from the last checkpoint; tokens/s from the timestamps of the logged steps
#      after the first (compilation excluded);
#   4. bench/loss.py on the GPU: the chunked loss's chunk size at the training batch (64 x 512 tokens, V = 32,000);
#   5. bench/gpu.py at T=1024, if time is left.
#
# Each step is cut off at its own limit and at the overall budget ($BUDGET_S, default 540 s), so the script always
# ends in time and what it finished is kept.
#
#   bench/gpu_check.sh --prepare     # here, once: wheels the GPU machine lacks (.whl/) and gpu_carry/ (tokenizer, data)
#   bench/gpu_check.sh --smoke       # the same control flow on a CPU, tiny sizes, into ./gpu_check_smoke/
#   bench/gpu_check.sh               # on the GPU machine
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-gpu}
PY=${PYTHON:-python3}
CARRY=gpu_carry

if [[ $MODE == --prepare ]]; then
    set -e
    mkdir -p .whl "$CARRY"
    # pure-Python wheels: the GPU image has transformers 5.17 and no datasets/evaluate
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl transformers==5.24.0 datasets==5.2.0 evaluate==0.4.6 \
        dill==0.4.1 multiprocess==0.70.19
    $PY - "$CARRY" <<'EOF'
import gzip, json, sys
from scratchgpt.data.sources import chitchat_conversations, iter_texts
from scratchgpt.tokenization import train_bpe_tokenizer
carry = sys.argv[1]
conversations = list(chitchat_conversations())
with gzip.open(f"{carry}/chitchat.jsonl.gz", "wt", encoding="utf-8") as f:
    f.writelines(json.dumps({"messages": c}) + "\n" for c in conversations)
train_bpe_tokenizer(iter_texts(conversations), vocab_size=32000, show_progress=False).save_pretrained(f"{carry}/tokenizer")
EOF
    du -sh .whl "$CARRY"
    exit 0
fi

SMOKE=0
[[ $MODE == --smoke ]] && SMOKE=1
OUT=${OUT:-$PWD/gpu_check_smoke}
mkdir -p "$OUT"
LOG=$OUT/log.txt
: > "$LOG"
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-540} ))
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ -d .whl ]] && (( ! SMOKE )); then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >> "$LOG" 2>&1 || echo "wheel install failed" >> "$LOG"
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi

# step NAME LIMIT_S COMMAND...: run it with its output in the log, cut off at LIMIT_S or the deadline
step() {
    local name=$1 limit=$2 left
    shift 2
    left=$(( DEADLINE - $(date +%s) ))
    (( left < limit )) && limit=$left
    if (( limit < 20 )); then
        echo "== $name: skipped (out of time)" | tee -a "$LOG"
        return 1
    fi
    echo "== $name (limit ${limit}s): $*" >> "$LOG"
    local start=$(date +%s)
    timeout --signal=TERM --kill-after=15 "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $(( $(date +%s) - start ))s" | tee -a "$LOG"
    return $rc
}

# timestamp each line (the Trainer's logged steps become a rate)
stamp() { $PY -u -c 'import sys, time
for line in sys.stdin: sys.stdout.write(f"{time.time():.3f} {line}")'; }
export -f stamp
export PY

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
    $PY -c 'import torch, transformers, tokenizers, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "tokenizers", tokenizers.__version__)
import datasets, evaluate, pyarrow; print("datasets", datasets.__version__, "evaluate", evaluate.__version__,
      "pyarrow", pyarrow.__version__)' 2>&1
} >> "$LOG"

# 1. the gpu-marked tests (they skip, with their reason, where there is no CUDA device)
step tests 150 $PY -m pytest -m gpu tests/test_convert.py tests/test_modeling.py -q -rs -p no:cacheprovider

# 2. throughput at T=512
if (( SMOKE )); then
    step bench_512 200 $PY bench/gpu.py --smoke --steps 1 --lengths 32 --output "$OUT/gpu_512.json"
else
    step bench_512 200 $PY bench/gpu.py --lengths 512 --output "$OUT/gpu_512.json"
fi

# 3. the real Trainer, then a resume of the same run
if (( SMOKE )); then
    SIZE=(--preset tiny --n_layer 1 --n_embd 32 --n_head 2 --n_inner 64 --n_positions 32 --bf16 false
          --torch_compile false --use_cpu true --per_device_train_batch_size 4 --per_device_eval_batch_size 4
          --dataloader_num_workers 0 --dataloader_pin_memory false --num_proc 1 --vocab_size 300)
    STEPS=(4 6) EVERY=2
    mkdir -p "$OUT/carry"
    $PY -c 'import json, sys
print(*(json.dumps({"messages": [{"role": "user", "content": f"hello number {i}"},
      {"role": "assistant", "content": "hi there, " * (i % 9 + 1)}]}) for i in range(400)), sep="\n")' \
        > "$OUT/carry/chitchat.jsonl"
    DATA=(--inputs "$OUT/carry/chitchat.jsonl" --tokenizer_type char)
else
    # a short warm-up, so that 200 steps show learning (the config's 2,000 would leave the rate near zero)
    SIZE=(--max_eval_samples 256 --sample_max_new_tokens 20 --warmup_steps 20)
    STEPS=(200 300) EVERY=100
    gunzip -kf "$CARRY/chitchat.jsonl.gz"
    DATA=(--inputs "$CARRY/chitchat.jsonl" --tokenizer_path "$CARRY/tokenizer")
fi
RUN=/tmp/gpu_check_run
rm -rf "$RUN"
for max_steps in "${STEPS[@]}"; do
    step "train_to_$max_steps" 200 bash -c 'set -o pipefail; "$@" 2>&1 | stamp' _ $PY train.py configs/gpt2_small.yaml "${DATA[@]}" \
        "${SIZE[@]}" --output_dir "$RUN" --max_steps "$max_steps" --save_steps "$EVERY" --eval_steps "$EVERY" \
        --logging_steps $(( EVERY / 4 > 0 ? EVERY / 4 : 1 )) --report_to none --disable_tqdm true
done
$PY - "$LOG" "$RUN" "$OUT/train.json" $(( EVERY / 4 > 0 ? EVERY / 4 : 1 )) <<'EOF' >> "$LOG" 2>&1
"""Training tokens/s of each train.py run between its first and its last logged step, from the log's timestamps
(so the first steps, with compilation, are left out)."""
import ast, json, os, re, sys
log, run, out, logging_steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
metrics = json.load(open(f"{run}/metrics.json")) if os.path.exists(f"{run}/metrics.json") else {}
tokens_per_step = metrics.get("training", {}).get("tokens_per_step")
runs, current = [], None
for line in open(log, encoding="utf-8"):
    if line.startswith("== train_to_") and "(limit" in line:
        current = {"max_steps": int(re.search(r"train_to_(\d+)", line).group(1)), "resumed_from": None, "logged": []}
        runs.append(current)
    elif line.startswith("== "):
        current = None
    elif current is not None:
        stamp, _, rest = line.partition(" ")
        if "resuming from" in rest:
            current["resumed_from"] = rest.split("resuming from", 1)[1].strip()
        if rest.startswith("{") and "'loss'" in rest:
            current["logged"].append((float(stamp), ast.literal_eval(rest.strip())))
for r in runs:
    logged = r.pop("logged")
    r["losses"] = [float(entry["loss"]) for _, entry in logged]
    if len(logged) >= 2 and tokens_per_step:
        seconds = logged[-1][0] - logged[0][0]
        r["tokens_per_s"] = (len(logged) - 1) * logging_steps * tokens_per_step / seconds
summary = {"runs": runs, "final_global_step": metrics.get("global_step"), "tokens_per_step": tokens_per_step,
           "eval_loss": metrics.get("eval_loss"), "hardware": metrics.get("training", {}).get("hardware")}
json.dump(summary, open(out, "w"), indent=2)
print("train:", json.dumps(summary))
EOF

# 4. the chunked loss's chunk size on this device, at the training batch
if (( SMOKE )); then
    step loss 100 $PY bench/loss.py --tokens 64 --shapes 32x64 --chunks 8 16 --repeats 2 --json "$OUT/loss.json"
else
    step loss 100 $PY bench/loss.py --device cuda --bf16 --tokens 32768 --shapes 768x32000 \
        --chunks 2048 4096 8192 16384 32768 --repeats 5 --json "$OUT/loss.json"
fi

# 5. throughput at T=1024, with what time is left
if (( SMOKE )); then
    step bench_1024 200 $PY bench/gpu.py --smoke --steps 1 --lengths 64 --output "$OUT/gpu_1024.json"
else
    step bench_1024 300 $PY bench/gpu.py --lengths 1024 --output "$OUT/gpu_1024.json"
fi

echo "== summary"
grep -E "^== |passed|failed|skipped|T=[0-9]+:|TFLOP/s measured|D=[0-9]+ V=|^train:" "$LOG" | grep -v "(limit" || true
