#!/usr/bin/env bash
# The GPU figures of docs/PERFORMANCE.md ("Current figures: H100"), as run on a lent Linux CUDA machine.
#
#   bash bench/gpu_runs.sh STEP...     STEP: install, models, models05, models7b, machine, table05, serve7b, single7b,
#                                      prefix05, long05, long7b, loadttft05, loadttft7b, surfaces05, embed, vision2b, pack
#
# Run from the repository's root. The machine has no registry: `install` takes
# the offline bundle of ../shared/gpu/stage.sh (first half parked in /tmp by
# .gpu/a/keep.sh, second half in .gpu/b), staged with what mlxtrio needs beyond the
# script's list: `stage.sh .gpu prometheus-client python-json-logger llguidance==1.9.1`,
# then msgspec 0.22.0's wheel in .gpu/a instead of 0.23's (pyproject.toml's bound); vision2b needs mlx-vlm==0.7.10's
# wheel there too (installed without its requirements, as all are: it needs only transformers, Pillow and requests,
# which the machine has). The worker runs with jemalloc, which
# these machines lack: Debian's libjemalloc2 unpacked into .ab/jem
# (`apt-get download libjemalloc2 && dpkg -x libjemalloc2_*.deb x && cp
# x/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 .ab/jem/`), or JEMALLOC=PATH.
# Each step writes its JSON and logs into /tmp/gpu-results and carries on if
# another step failed; `pack` puts them all into one file in $OUT. LIMIT=SECONDS
# stops each step (its servers too) after that long, so that one slow step
# leaves the call's time to the next.
set -uo pipefail
RESULTS=/tmp/gpu-results
MODELS=/tmp/bm
JEMALLOC=${JEMALLOC:-$PWD/.ab/jem/libjemalloc.so.2}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site:$PWD SERVE_BENCH_LOGS=$RESULTS

step() { echo "=== $* ($(date +%T))"; }

install() {
    step install
    [ -f /tmp/site/mlx/core.cpython-312-x86_64-linux-gnu.so ] || bash .gpu/b/install.sh /tmp/site >/dev/null
    # mlxtrio runs from the checkout, not installed, but `mlxtrio serve` reads its version from the package's metadata.
    local meta=/tmp/site/mlxtrio-0.0.0.dist-info
    mkdir -p $meta && printf 'Metadata-Version: 2.1\nName: mlxtrio\nVersion: 0.0.0+checkout\n' >$meta/METADATA
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import mlx.core as mx; print(mx.__version__, mx.default_device())"
}

models() {
    step models
    models05
    models7b
}

models05() {
    # The 0.5B shape alone, for steps that need nothing else (the 7B build takes minutes).
    step models05
    python3 -m bench.bench_models qwen2.5-0.5b-bf16 $MODELS/qwen2.5-0.5b-bf16
}

models7b() {
    # Timed by the shell: /usr/bin/time is not on every machine.
    step models7b
    local start=$SECONDS
    python3 -m bench.bench_models qwen2.5-7b-4bit $MODELS/qwen2.5-7b-4bit && echo "built in $((SECONDS - start)) s"
}

machine() {
    # What tells machines apart: CPUs, NUMA nodes, the GPU's CPU affinity, clocks, load.
    step machine
    { lscpu; nvidia-smi topo -m; nvidia-smi -q -d CLOCK,PERFORMANCE; uptime; cat /proc/loadavg; } >"$RESULTS/machine.txt" 2>&1
    grep -E "^(Model name|CPU\(s\)|NUMA|Thread|Core|Socket|CPU MHz)" "$RESULTS/machine.txt"
}

table05() {
    # The 0.5B shape: in-process mlx-lm, mlx_lm.server and mlxtrio at 1, 8 and 32 streams, twice by turns.
    step table05
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 -m bench.serve_bench --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
        --max-tokens 128 --rounds 4 --concurrency 1 8 32 --repeat 2 \
        --json "$RESULTS/table-qwen05-jemalloc-repeat2.json" 2>&1 | grep --line-buffered -E "^\||run by run"
}

serve7b() {
    # The 7B 4-bit shape at 8 and 32 streams against mlx_lm.server.
    step serve7b
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 -m bench.serve_bench --model qwen2.5-7b-4bit --models-dir $MODELS \
        --max-tokens 64 --rounds 4 --concurrency 8 32 --servers mlx_lm.server mlxtrio \
        --json "$RESULTS/serve-qwen7b-jemalloc.json" 2>&1 | grep --line-buffered -E '"(aggregate_tps|ttft_p50_s)"' -A2
}

single7b() {
    # The 7B 4-bit shape, one stream: in-process mlx-lm and mlxtrio taking turns, three times.
    step single7b
    python3 -m bench.serve_bench --model qwen2.5-7b-4bit --models-dir $MODELS --max-tokens 64 --rounds 4 \
        --concurrency 1 --repeat 3 --servers in-process mlxtrio --json "$RESULTS/single-qwen7b-repeat3.json" \
        | grep --line-buffered -E "run by run|single_stream_tps"
}

prefix05() {
    # Time to first token behind a shared prefix of about 2,000 tokens, cached and not, both servers by turns.
    step prefix05
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 -m bench.prefix_cache_bench --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
        --prefix-tokens 2000 --requests 8 --repeat ${REPEAT:-3} --json "$RESULTS/prefix-cache-qwen05.json" 2>&1 | grep --line-buffered -v transformers
}

# Every server sees 64 streams at once: mlxtrio decodes as many together (its default is 32).
long_prompts() {
    # $1 model, $2 max_tokens, $3 rounds, then the prompt lengths: at 1, 8, 32 and 64 streams (CONCURRENCY), once each
    # (REPEAT), all three (SERVERS).
    local model=$1 tokens=$2 rounds=$3 tag=${TAG:+-$TAG}; shift 3
    for length in "$@"; do
        MLX_DECODE_CONCURRENCY=64 MLX_WORKER_ALLOCATOR=$JEMALLOC python3 -m bench.serve_bench --model $model \
            --models-dir $MODELS --max-tokens $tokens --rounds $rounds --concurrency ${CONCURRENCY:-1 8 32 64} --prompt-tokens $length \
            --servers ${SERVERS:-in-process mlx_lm.server mlxtrio} --repeat ${REPEAT:-1} \
            --json "$RESULTS/long-$model-$length$tag.json" 2>&1 | tee "$RESULTS/long-$model-$length$tag.log" | grep --line-buffered -E "^\||streams:|run by run"
    done
}

long05() {
    step long05
    long_prompts qwen2.5-0.5b-bf16 128 2 ${LENGTHS05:-512 4096}
}

long7b() {
    step long7b
    long_prompts qwen2.5-7b-4bit ${TOKENS7B:-64} 1 ${LENGTHS7B:-512 4096}
}

loadttft() {
    # A 4,096-token prompt arriving while 31 streams decode, mlx_lm.server and mlxtrio by turns.
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 -m bench.load_ttft_bench --model $1 --models-dir $MODELS --streams 31 \
        --prompt-tokens 4096 --arrivals 3 --repeat ${REPEAT:-2} --decode-tokens ${DECODE_TOKENS:-4096} \
        --json "$RESULTS/loadttft-$1.json" 2>&1 | tee "$RESULTS/loadttft-$1.log" | grep --line-buffered -v "^  run"
}

loadttft05() { step loadttft05; loadttft qwen2.5-0.5b-bf16; }
loadttft7b() { step loadttft7b; loadttft qwen2.5-7b-4bit; }

surfaces05() {
    # Chat completions, Messages, Responses and chat with a JSON schema each, by turns on one mlxtrio.
    step surfaces05
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 -m bench.surface_bench --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
        --concurrency 1 32 --max-tokens 128 --rounds 2 --repeat ${REPEAT:-3} --json "$RESULTS/surfaces-qwen05.json" 2>&1 \
        | tee "$RESULTS/surfaces-qwen05.log" | grep --line-buffered -E "^\||^model|failed"
}

embed() {
    # Embeddings/s of the real embedding shapes (bench/embed_shapes.py) at batches of 1, 32 and 256: short inputs, then
    # inputs of about 300 tokens (WORDS).
    step embed
    for words in 5 ${WORDS:-100}; do
        MLX_WORKER_ALLOCATOR=$JEMALLOC python3 -m bench.embed_bench --models bert-base qwen3-embedding-0.6b --models-dir $MODELS \
            --batches 1 32 256 --words $words --rounds ${ROUNDS:-8} --repeat ${REPEAT:-3} --json "$RESULTS/embed-w$words.json" 2>&1 \
            | tee "$RESULTS/embed-w$words.log" | grep --line-buffered -E "^\||^medians|Error"
    done
}

vision2b() {
    # Qwen2-VL-2B's shape: chat completions with an image each against text-only ones, by turns on one mlxtrio.
    step vision2b
    local start=$SECONDS
    python3 -m bench.bench_models qwen2-vl-2b-bf16 $MODELS/qwen2-vl-2b-bf16 && echo "built in $((SECONDS - start)) s"
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 -m bench.surface_bench --model qwen2-vl-2b-bf16 --models-dir $MODELS \
        --surfaces chat chat-image --concurrency 1 32 --max-tokens 128 --rounds 2 --repeat ${REPEAT:-2} \
        --json "$RESULTS/surfaces-qwen2vl2b.json" 2>&1 | tee "$RESULTS/surfaces-qwen2vl2b.log" | grep --line-buffered -E "^\||^model|failed"
}

pack() {
    tar czf "${OUT:-/tmp}/gpu-results-$(date +%H%M%S).tgz" -C "$RESULTS" .
}

for name in "$@"; do
    if [ -z "${LIMIT:-}" ]; then "$name"; continue; fi
    LIMIT= setsid bash "$0" "$name" & group=$!
    ( sleep "$LIMIT"; kill -- -$group 2>/dev/null && echo "=== $name stopped after $LIMIT s" ) & watcher=$!
    wait $group; kill $watcher 2>/dev/null
done
echo "=== done ($(date +%T))"
