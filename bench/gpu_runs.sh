#!/usr/bin/env bash
# The GPU figures of docs/PERFORMANCE.md, as run on a lent Linux CUDA machine.
#
#   bash bench/gpu_runs.sh STEP...     STEP: install, models, models05, probe, serve05, serve7b, profile, profile05, burst, serve7b_c8, single05, single7b, probe05, probe7b, burst7b, scaling, burstspy, pin05, smt05, wakeup05, machine, spyinproc05, pairs05, ab05, timeline05, sides05, compiled05, jemalloc05, allocator05, likeforlike05, ttft_allocator05, loop05, apart05, agg7b_jemalloc, ttft05_both, table05_jemalloc, firststep05, abttft05, prefix05, batch05, pack
#
# The machine has no registry: `install` takes the offline bundle of
# ../shared/gpu/stage.sh (first half parked in /tmp by .gpu/a/keep.sh, second
# half in .gpu/b) and, if present, py-spy's wheel in .whl/. Each step writes
# its JSON and logs into /tmp/gpu-results, and carries on if another step
# failed; `pack` puts them all into one file in $OUT (the device tool brings
# back only a few files).
set -uo pipefail
RESULTS=/tmp/gpu-results
MODELS=/tmp/bm
# jemalloc for the allocator steps: Debian's libjemalloc2, carried in .ab/jem (the machine has none installed).
JEMALLOC=${JEMALLOC:-$PWD/.ab/jem/libjemalloc.so.2}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site:$PWD SERVE_BENCH_LOGS=$RESULTS

step() { echo "=== $* ($(date +%T))"; }

install() {
    step install
    [ -f /tmp/site/mlx/core.cpython-312-x86_64-linux-gnu.so ] || bash .gpu/b/install.sh /tmp/site >/dev/null
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    fi
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import mlx.core as mx; print(mx.__version__, mx.default_device())"
}

models() {
    step models
    for name in qwen2.5-0.5b-bf16 qwen2.5-7b-4bit; do
        /usr/bin/time -f "$name built in %e s" python3 -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; \
from bench_models import build; build('$name', Path('$MODELS/$name'), cache_dir=Path('$MODELS'))"
    done
}

models05() {
    # The 0.5B shape alone, for runs that need nothing else (the 7B build takes minutes).
    step models05
    python3 -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; \
from bench_models import build; build('qwen2.5-0.5b-bf16', Path('$MODELS/qwen2.5-0.5b-bf16'), cache_dir=Path('$MODELS'))"
}

probe() {
    step probe
    python3 bench/decode_probe.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --repeats 5 --json "$RESULTS/probe-qwen05.json" | tail -25
    python3 bench/decode_probe.py --model qwen2.5-7b-4bit --models-dir $MODELS --repeats 3 --json "$RESULTS/probe-qwen7b.json" | tail -25
}

serve05() {
    step serve05
    python3 bench/serve_bench.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --max-tokens 128 --rounds 4 \
        --concurrency 1 8 32 --json "$RESULTS/serve-qwen05.json"
}

serve7b() {
    step serve7b
    python3 bench/serve_bench.py --model qwen2.5-7b-4bit --models-dir $MODELS --max-tokens 64 --rounds 4 \
        --concurrency 1 8 32 --json "$RESULTS/serve-qwen7b.json"
}

profile() {
    step profile
    python3 bench/profile_worker.py --model qwen2.5-7b-4bit --models-dir $MODELS --seconds 4 --tokens 800 \
        --out /tmp/profile7b | head -60 && cp /tmp/profile7b/profile.json "$RESULTS/profile-qwen7b.json"
}

profile05() {
    # py-spy on the worker serving one stream of the 0.5B shape, where decode is bound by the CPU thread.
    step profile05
    python3 bench/profile_worker.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --seconds 5 --tokens 512 \
        --out /tmp/profile05 | head -70 && cp /tmp/profile05/profile.json "$RESULTS/profile-qwen05.json" \
        && cp /tmp/profile05/worker-stacks.txt "$RESULTS/profile-qwen05-stacks.txt"
}

burst() {
    step burst
    for name in qwen2.5-0.5b-bf16 qwen2.5-7b-4bit; do
        python3 bench/burst_probe.py --model $name --models-dir $MODELS --repeats 3 --json "$RESULTS/burst-$name.json" | tail -6
    done
}

serve7b_c8() {
    # TTFT at 8 streams, both servers, 64 requests each, twice.
    step serve7b_c8
    for run in 1 2; do
        python3 bench/serve_bench.py --model qwen2.5-7b-4bit --models-dir $MODELS --max-tokens 64 --rounds 8 \
            --concurrency 8 --servers mlx_lm.server mlxtrio --json "$RESULTS/serve-qwen7b-c8-r$run.json" | grep -A2 ttft_p
    done
}

single05() {
    # Single stream, in-process and mlxtrio taking turns, 8 requests each, three times.
    step single05
    python3 bench/serve_bench.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --max-tokens 128 --rounds 8 \
        --concurrency 1 --repeat 3 --servers in-process mlxtrio --json "$RESULTS/single-qwen05-repeat3.json" \
        | grep -E "run by run|single_stream_tps"
}

single7b() {
    # Single stream on the 7B 4-bit shape, in-process and mlxtrio taking turns, three times.
    step single7b
    python3 bench/serve_bench.py --model qwen2.5-7b-4bit --models-dir $MODELS --max-tokens 64 --rounds 4 \
        --concurrency 1 --repeat 3 --servers in-process mlxtrio --json "$RESULTS/single-qwen7b-repeat3.json" \
        | grep -E "run by run|single_stream_tps"
}

probe05() {
    step probe05
    python3 bench/decode_probe.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --repeats ${REPEATS:-5} --json "$RESULTS/probe-qwen05.json" \
        | grep -A9 tok_per_s_median
}

probe7b() {
    step probe7b
    python3 bench/decode_probe.py --model qwen2.5-7b-4bit --models-dir $MODELS --repeats 3 --json "$RESULTS/probe-qwen7b.json" \
        | grep -A9 tok_per_s_median
}

burst7b() {
    step burst7b
    python3 bench/burst_probe.py --model qwen2.5-7b-4bit --models-dir $MODELS --repeats 3 --json "$RESULTS/burst-qwen2.5-7b-4bit.json" | tail -6
}

scaling() {
    step scaling
    for name in qwen2.5-7b-4bit qwen2.5-0.5b-bf16; do
        timeout 240 python3 bench/batch_scaling_probe.py --model $name --models-dir $MODELS --json "$RESULTS/scaling-$name.json"
    done
}

burstspy() {
    # Where a cached burst's first steps go on the 7B shape: py-spy with native frames over burst_probe.
    step burstspy
    timeout 200 py-spy record --native -r 200 -f raw -o "$RESULTS/burst7b-stacks.txt" -- \
        python3 bench/burst_probe.py --model qwen2.5-7b-4bit --models-dir $MODELS --repeats 2 | tail -6
}

pin05() {
    # Worker pinning on a GPU: one core against none, alternating, single stream and 8.
    step pin05
    for run in 1 2; do
        for cpus in none 15; do
            MLX_WORKER_CPUS=$cpus python3 bench/serve_bench.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
                --max-tokens 128 --rounds 8 --concurrency 1 8 --servers mlxtrio --json "$RESULTS/pin-$cpus-r$run.json" \
                | grep -E '"single_stream_tps"|"8":'
        done
    done
}

smt05() {
    # Single stream, defaults against the worker pinned to CPU 12 with everything else (orchestrator,
    # client, in-process) allowed only 0-3 and 12: never on 12's hyperthread sibling (4 or 13), alternating.
    step smt05
    lscpu -e | head -20
    for run in 1 2; do
        python3 bench/serve_bench.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --max-tokens 128 --rounds 8 \
            --concurrency 1 --servers in-process mlxtrio --json "$RESULTS/smt-default-r$run.json" | grep -E "\"single_stream_tps\""
        MLX_WORKER_CPUS=12 taskset -c 0-3,12 python3 bench/serve_bench.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
            --max-tokens 128 --rounds 8 --concurrency 1 --servers in-process mlxtrio --json "$RESULTS/smt-apart-r$run.json" \
            | grep -E "\"single_stream_tps\""
    done
}

wakeup05() {
    # What sending each step's frame to a sleeping (or polling) reader costs the 0.5B decoder on this machine.
    step wakeup05
    python3 bench/wakeup_cost.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --repeats 5 --json "$RESULTS/wakeup-qwen05.json" \
        | tail -12
}

machine() {
    # What might tell machines apart: CPUs, NUMA nodes, the GPU's CPU affinity, clocks, load.
    step machine
    { lscpu; nvidia-smi topo -m; nvidia-smi -q -d CLOCK,PERFORMANCE; uptime; cat /proc/loadavg; } >"$RESULTS/machine.txt" 2>&1
    grep -E "^(Model name|CPU\(s\)|NUMA|Thread|Core|Socket|CPU MHz)" "$RESULTS/machine.txt"; nvidia-smi topo -m
}

spyinproc05() {
    # py-spy over in-process decoding of the 0.5B shape (decode_probe: stream_generate, BatchGenerator, the
    # engine), to set against profile05's serving worker on the same machine.
    step spyinproc05
    timeout 240 py-spy record -r 250 -f raw -o "$RESULTS/inproc05-stacks.txt" -- \
        python3 bench/decode_probe.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --repeats 2 --tokens 512 \
        --json "$RESULTS/probe-qwen05-512.json" | grep -A9 tok_per_s_median
}

pairs05() {
    # Single stream request by request, in-process and mlxtrio loaded side by side, in ABBA pairs, twice.
    step pairs05
    for run in 1 2; do
        python3 bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --pairs 40 \
            --json "$RESULTS/pairs-qwen05-r$run.json" 2>/dev/null
    done
}

ab05() {
    # Single stream in pairs, a commit before a change (in .ab/before) and this tree, alternating, three times
    # each. Before the call: mkdir -p .ab/before && git archive COMMIT mlxtrio bench | tar x -C .ab/before,
    # and carry .ab (ignored: .git/info/exclude).
    step ab05
    for run in 1 2 3; do
        for tree in before after; do
            (cd "$([ $tree = before ] && echo .ab/before || echo .)" && python3 bench/single_stream_pairs.py \
                --model qwen2.5-0.5b-bf16 --models-dir $MODELS --pairs ${PAIRS:-32} --json "$RESULTS/ab-$tree-r$run.json" 2>/dev/null \
                | grep -E '"(mlxtrio|in_process)_(ttft|tps)|ratio_median')
        done
    done
}

timeline05() {
    # The worker's loop on one stream (inside engine.step, and between steps), and a burst of 8, stage by stage.
    step timeline05
    python3 bench/burst_timeline.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --burst 1 --bursts 24 \
        --json "$RESULTS/timeline-qwen05-burst1.json" 2>&1 | tail -4
    python3 bench/burst_timeline.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --burst 8 --bursts 16 \
        --json "$RESULTS/timeline-qwen05-burst8.json" 2>&1 | tail -12
}

sides_summary() {
    python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print('in-process', round(d['in_process_tps_median'], 1)); \
[print(n, round(s['tps_median'], 1), round(s['ratio_median'], 3), s['ratio_interval90'], s['pairs_faster']) for n, s in d['sides'].items()]" "$1"
}

ttft8_summary() {
    # NAME FILE: mlxtrio's aggregate and TTFT p50 at 8 streams in a serve_bench JSON.
    python3 -c "import json, sys; d = json.load(open(sys.argv[2]))['mlxtrio']; \
print(sys.argv[1], round(d['aggregate_tps']['8'], 1), 'tok/s, TTFT p50', round(d['ttft_p50_s']['8'] * 1e3, 1), 'ms')" "$1" "$2"
}

sides05() {
    # Single stream in rounds: in-process, mlxtrio as it is, and variants that take one suspect out at a time
    # (frames sent in bunches, bench/serve_variant.py; no prompt cache; MLX's CUDA graphs of up to 200 ops), twice.
    step sides05
    for run in 1 2; do
        python3 bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --pairs ${PAIRS:-32} \
            --side mlxtrio ${SIDES:---side held:VARIANT_FRAME_HOLD=32 --side nocache:MLX_PROMPT_CACHE_BYTES=0 --side ops200:MLX_MAX_OPS_PER_BUFFER=200} \
            --json "$RESULTS/sides-qwen05-r$run.json" >/dev/null 2>"$RESULTS/sides-qwen05-r$run.log"
        sides_summary "$RESULTS/sides-qwen05-r$run.json"
    done
}

compiled05() {
    # Whether a compiled decode step over a static KV cache would beat mlx-lm's own loop (bench/decode_probe.py).
    step compiled05
    python3 bench/decode_probe.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --repeats ${REPEATS:-5} \
        --ways stream_generate engine_alone compiled_static_cache --json "$RESULTS/compiled-qwen05.json" \
        | grep -B2 -A12 tok_per_s_median
}

jemalloc05() {
    # Whether jemalloc speeds up MLX's decode on this machine: in-process with and without it, taking
    # turns, then mlxtrio with it (server and worker) against in-process without, twice.
    # Needs the library at $JEMALLOC (Debian's libjemalloc2, carried in .ab/jem).
    step jemalloc05
    for run in 1 2 3; do
        for allocator in glibc jemalloc; do
            preload=""; [ $allocator = jemalloc ] && preload=$JEMALLOC
            LD_PRELOAD=$preload python3 bench/decode_probe.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --repeats 3 \
                --ways stream_generate engine_alone --json "$RESULTS/probe-$allocator-r$run.json" \
                | python3 -c "import json, sys; print('$allocator', {k: round(v, 1) for k, v in json.load(sys.stdin)['tok_per_s_median'].items()})"
        done
    done
    for run in 1 2; do
        python3 bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --pairs ${PAIRS:-24} \
            --side mlxtrio --side jemalloc:LD_PRELOAD=$JEMALLOC \
            --json "$RESULTS/jemalloc-pairs-r$run.json" >/dev/null 2>"$RESULTS/jemalloc-pairs-r$run.log"
        sides_summary "$RESULTS/jemalloc-pairs-r$run.json"
    done
}

allocator05() {
    # mlxtrio's worker with jemalloc (MLX_WORKER_ALLOCATOR, the library carried: the machine has none
    # installed) and with the C library's malloc, against in-process mlx-lm as users run it, twice;
    # then like for like, once: everything under jemalloc, in-process mlx-lm too.
    step allocator05
    for run in 1 2; do
        python3 bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --pairs ${PAIRS:-24} \
            --side mlxtrio:MLX_WORKER_ALLOCATOR=$JEMALLOC --side system:MLX_WORKER_ALLOCATOR=system \
            --json "$RESULTS/allocator-pairs-r$run.json" >/dev/null 2>"$RESULTS/allocator-pairs-r$run.log"
        sides_summary "$RESULTS/allocator-pairs-r$run.json"
    done
    LD_PRELOAD=$JEMALLOC python3 bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
        --pairs ${PAIRS:-24} --json "$RESULTS/allocator-pairs-all-jemalloc.json" >/dev/null 2>"$RESULTS/allocator-pairs-all-jemalloc.log"
    sides_summary "$RESULTS/allocator-pairs-all-jemalloc.json"
}

likeforlike05() {
    # Single stream like for like: everything under jemalloc, in-process mlx-lm too, twice; then the
    # aggregate at 8 and 32 streams against mlx_lm.server (as users run it) with jemalloc in mlxtrio's worker.
    step likeforlike05
    for run in 1 2; do
        LD_PRELOAD=$JEMALLOC python3 bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
            --pairs ${PAIRS:-24} --json "$RESULTS/likeforlike-pairs-r$run.json" >/dev/null 2>"$RESULTS/likeforlike-pairs-r$run.log"
        sides_summary "$RESULTS/likeforlike-pairs-r$run.json"
    done
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 bench/serve_bench.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
        --max-tokens 128 --rounds 2 --concurrency 8 32 --servers mlx_lm.server mlxtrio \
        --json "$RESULTS/serve-qwen05-jemalloc.json" | grep -A12 "^| measure"
}

ttft_allocator05() {
    # TTFT and aggregate at 8 streams, mlxtrio alone, its worker with the C library's malloc and with
    # jemalloc by turns, twice each.
    step ttft_allocator05
    for run in 1 2; do
        for allocator in system $JEMALLOC; do
            name=$([ $allocator = system ] && echo system || echo jemalloc)
            MLX_WORKER_ALLOCATOR=$allocator python3 bench/serve_bench.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
                --max-tokens 128 --rounds ${ROUNDS:-6} --concurrency 8 --servers mlxtrio \
                --json "$RESULTS/ttft-c8-$name-r$run.json" >/dev/null 2>&1
            ttft8_summary "$name" "$RESULTS/ttft-c8-$name-r$run.json"
        done
    done
}

loop05() {
    # Single stream in rounds: the worker's loop timed part by part (bench/serve_variant.py
    # VARIANT_LOOP_TIMES), frames sent one by one and in bunches of 32, twice.
    step loop05
    for run in 1 2; do
        python3 bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --pairs ${PAIRS:-24} \
            --side timed:VARIANT_LOOP_TIMES=$RESULTS/loop-qwen05-r$run.jsonl \
            --side held:VARIANT_FRAME_HOLD=32,VARIANT_LOOP_TIMES=$RESULTS/loop-qwen05-r$run.jsonl \
            --json "$RESULTS/loop-qwen05-r$run.json" >/dev/null 2>"$RESULTS/loop-qwen05-r$run.log"
        sides_summary "$RESULTS/loop-qwen05-r$run.json"
        python3 bench/serve_variant.py --loop-summary "$RESULTS/loop-qwen05-r$run.jsonl"
    done
}

apart05() {
    # The same rounds with everything but the worker kept off CPUs 14-15: the client and in-process
    # mlx-lm by taskset, the orchestrator of side "apart" by bench/serve_variant.py, whose worker has
    # 14-15 to itself; mlxtrio as it is, and with MLX's CUDA graphs of up to 200 ops, beside it. Twice.
    step apart05
    for run in 1 2; do
        taskset -c 0-13 python3 bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
            --pairs ${PAIRS:-48} --side mlxtrio --side apart:VARIANT_WORKER_CPUS=14-15 --side ops200:MLX_MAX_OPS_PER_BUFFER=200 \
            --json "$RESULTS/apart-qwen05-r$run.json" >/dev/null 2>"$RESULTS/apart-qwen05-r$run.log"
        sides_summary "$RESULTS/apart-qwen05-r$run.json"
    done
}

agg7b_jemalloc() {
    # Aggregate and TTFT at 8 and 32 streams on the 7B 4-bit shape against mlx_lm.server, the worker with jemalloc.
    step agg7b_jemalloc
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 bench/serve_bench.py --model qwen2.5-7b-4bit \
        --models-dir $MODELS --max-tokens 64 --rounds 4 --concurrency 8 32 --servers mlx_lm.server mlxtrio \
        --json "$RESULTS/serve-qwen7b-jemalloc.json" 2>&1 | grep -E "aggregate tok/s|TTFT p50"
}

ttft05_both() {
    # TTFT at 8 streams on the 0.5B shape, both servers by turns, three runs, the worker with jemalloc.
    step ttft05_both
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 bench/serve_bench.py --model qwen2.5-0.5b-bf16 \
        --models-dir $MODELS --max-tokens 128 --rounds 6 --concurrency 8 --repeat 3 --servers mlx_lm.server mlxtrio \
        --json "$RESULTS/ttft-c8-qwen05-repeat3.json" 2>&1 | grep -E "aggregate tok/s|TTFT p50 run by run"
}

table05_jemalloc() {
    # The 0.5B shape's table (in-process mlx-lm, mlx_lm.server, mlxtrio at 1, 8 and 32 streams), twice by turns,
    # the worker with jemalloc.
    step table05_jemalloc
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 bench/serve_bench.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
        --max-tokens 128 --rounds 4 --concurrency 1 8 32 --repeat 2 \
        --json "$RESULTS/table-qwen05-jemalloc-repeat2.json" 2>&1 | grep -E "^\|"
}

firststep05() {
    # bench/first_step_probe.py on the 0.5B shape, this tree and the one in .ab/base by turns, twice.
    step firststep05
    for run in 1 2; do
        for side in new base; do
            dir=$PWD; [ $side = base ] && dir=$PWD/.ab/base
            (cd "$dir" && PYTHONPATH=/tmp/site:$dir python3 bench/first_step_probe.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
                --repeats ${REPEATS:-30} --json "$RESULTS/first-step-qwen05-$side-$run.json" | tail -12)
        done
    done
}

abttft05() {
    # TTFT and aggregate at 8 streams on the 0.5B shape, mlxtrio alone (worker with jemalloc), this tree and
    # the one in .ab/base by turns, three times.
    step abttft05
    for run in 1 2 3; do
        for side in new base; do
            dir=$PWD; [ $side = base ] && dir=$PWD/.ab/base
            (cd "$dir" && PYTHONPATH=/tmp/site:$dir MLX_WORKER_ALLOCATOR=$JEMALLOC python3 bench/serve_bench.py \
                --model qwen2.5-0.5b-bf16 --models-dir $MODELS --max-tokens 128 --rounds ${ROUNDS:-6} --concurrency 8 \
                --servers mlxtrio --json "$RESULTS/ttft-c8-$side-r$run.json" >/dev/null 2>&1)
            ttft8_summary "$side" "$RESULTS/ttft-c8-$side-r$run.json"
        done
    done
}

prefix05() {
    # Time to first token with a shared prefix of about 2,000 tokens, cached and not, mlx_lm.server and mlxtrio
    # (worker with jemalloc) by turns, twice.
    step prefix05
    MLX_WORKER_ALLOCATOR=$JEMALLOC python3 bench/prefix_cache_bench.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS \
        --prefix-tokens 2000 --requests 8 --repeat ${REPEAT:-2} --json "$RESULTS/prefix-cache-qwen05.json" 2>&1 | grep -v transformers
}

batch05() {
    # Single stream in pairs against in-process mlx-lm (both with the C library's malloc): mlxtrio as it is
    # (a GPU worker is not pinned) and its worker pinned to the last CPU, where a worker on one core runs
    # under SCHED_BATCH; twice.
    step batch05
    last=$(($(nproc) - 1))
    for run in 1 2; do
        python3 bench/single_stream_pairs.py --model qwen2.5-0.5b-bf16 --models-dir $MODELS --pairs ${PAIRS:-24} \
            --side mlxtrio --side pinbatch:MLX_WORKER_CPUS=$last --json "$RESULTS/batch-pairs-r$run.json" \
            >/dev/null 2>"$RESULTS/batch-pairs-r$run.log"
        sides_summary "$RESULTS/batch-pairs-r$run.json"
    done
}

pack() {
    tar czf "${OUT:-/tmp}/gpu-results-$(date +%H%M%S).tgz" -C "$RESULTS" .
}

for name in "$@"; do "$name"; done
echo "=== done ($(date +%T))"
