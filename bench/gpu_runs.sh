#!/usr/bin/env bash
# The GPU figures of docs/PERFORMANCE.md ("Current figures: H100"), as run on a lent Linux CUDA machine.
#
#   bash bench/gpu_runs.sh STEP...     STEP: install, models, models05, machine, table05, serve7b, single7b, prefix05, pack
#
# Run from the repository's root. The machine has no registry: `install` takes
# the offline bundle of ../shared/gpu/stage.sh (first half parked in /tmp by
# .gpu/a/keep.sh, second half in .gpu/b). The worker runs with jemalloc, which
# these machines lack: Debian's libjemalloc2 unpacked into .ab/jem
# (`apt-get download libjemalloc2 && dpkg -x libjemalloc2_*.deb x && cp
# x/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 .ab/jem/`), or JEMALLOC=PATH.
# Each step writes its JSON and logs into /tmp/gpu-results and carries on if
# another step failed; `pack` puts them all into one file in $OUT.
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
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import mlx.core as mx; print(mx.__version__, mx.default_device())"
}

models() {
    step models
    for name in qwen2.5-0.5b-bf16 qwen2.5-7b-4bit; do
        /usr/bin/time -f "$name built in %e s" python3 -m bench.bench_models $name $MODELS/$name
    done
}

models05() {
    # The 0.5B shape alone, for steps that need nothing else (the 7B build takes minutes).
    step models05
    python3 -m bench.bench_models qwen2.5-0.5b-bf16 $MODELS/qwen2.5-0.5b-bf16
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
        --json "$RESULTS/table-qwen05-jemalloc-repeat2.json" 2>&1 | grep -E "^\||run by run"
}

serve7b() {
    # The 7B 4-bit shape at 8 and 32 streams against mlx_lm.server.
    step serve7b
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 -m bench.serve_bench --model qwen2.5-7b-4bit --models-dir $MODELS \
        --max-tokens 64 --rounds 4 --concurrency 8 32 --servers mlx_lm.server mlxtrio \
        --json "$RESULTS/serve-qwen7b-jemalloc.json" 2>&1 | grep -E '"(aggregate_tps|ttft_p50_s)"' -A2
}

single7b() {
    # The 7B 4-bit shape, one stream: in-process mlx-lm and mlxtrio taking turns, three times.
    step single7b
    python3 -m bench.serve_bench --model qwen2.5-7b-4bit --models-dir $MODELS --max-tokens 64 --rounds 4 \
        --concurrency 1 --repeat 3 --servers in-process mlxtrio --json "$RESULTS/single-qwen7b-repeat3.json" \
        | grep -E "run by run|single_stream_tps"
}

prefix05() {
    # Time to first token behind a shared prefix of about 2,000 tokens, cached and not, both servers by turns.
    step prefix05
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 -m bench.prefix_cache_bench --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
        --prefix-tokens 2000 --requests 8 --repeat ${REPEAT:-3} --json "$RESULTS/prefix-cache-qwen05.json" 2>&1 | grep -v transformers
}

pack() {
    tar czf "${OUT:-/tmp}/gpu-results-$(date +%H%M%S).tgz" -C "$RESULTS" .
}

for name in "$@"; do "$name"; done
echo "=== done ($(date +%T))"
