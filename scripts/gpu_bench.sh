#!/usr/bin/env bash
# The GPU measurement of BENCHMARKS.md in one go, for a machine with a real GPU and PyTorch
# (CUDA) but no Rust toolchain. Two stages:
#
#   scripts/gpu_bench.sh prepare   on a machine with cargo (the development machine): builds the
#                                  release binary, the integration-test binary and the criterion
#                                  kernel bench, strips them into .gpubench/ (git-ignored),
#                                  and downloads the Vulkan/GL loader packages into .gl/ when
#                                  apt can reach its mirrors.
#   scripts/gpu_bench.sh [run]     on the GPU machine, from the repository root, with .gpubench/
#                                  (and .gl/ where the machine has no Vulkan loader) copied along.
#
# The run stage writes everything to $OUT (default ./gpu-bench-out):
#   env.txt       nvidia-smi, the adapters wgpu sees, PyTorch's version and device
#   tests.log     GPU-vs-CPU agreement: every test whose name contains "gpu", UNROLL_REQUIRE_GPU=1
#   bench.md      `unroll bench --device gpu --baseline pytorch --profile` over the GPU
#                 anchors' sweep (docs/ARCHITECTURE.md, Tuning numbers): unroll's tokens/s,
#                 PyTorch's, the ratio, per-call phases and each phase's device time (timestamp
#                 queries)
#   bench.json    the same as JSON
#   words.md      a word-level model (V = 10,000, --embed 512) against PyTorch with nn.Embedding
#   recurrence.md the recurrence kernels (rows, wide, steps) on the same shapes, one after another
#   tune.md       `unroll tune --device gpu` over the sweep's shapes: each kernel variant's median
#                 forward + backward (recurrence kernel, GEMM tiles, per-step product threads,
#                 gated units per workgroup) and the winner, written as each shape finishes
#   tune.json     the same as JSON; tune-cache.json the cache it wrote (UNROLL_TUNE_CACHE)
#   bench.log     the sweep's notes and errors
#   matmul.md     the WGSL matmul's TFLOP/s at 4096^3 and 8192x512x512
#   kernels.log   criterion: the step's kernels on the GPU (FLOP / element throughput)
# and exits non-zero if the agreement tests fail (the benchmarks still run first). The stages'
# timeouts add up to 540 s, so the whole run fits one 600 s call of a lent device: tests 100,
# bench 170, words 60, recurrence 6 x 10, tune 90, matmul 30, kernels 30 (the tuner's 90 s
# were taken from the bench's 200, the recurrence runs' 15 each, the matmul's and the
# kernels' 45).
# For a dry run on a small or software adapter, GPU_BENCH_ARGS adds options to the sweep
# (e.g. "--hidden 16 --batch 4 --seq-len 8"), GPU_MATMUL_ARGS to the matmul (e.g.
# "--matmul-shape 64x64x64"), GPU_WORDS_ARGS replaces the word-level run's shape, GPU_RECURRENCE_ARGS the recurrence
# comparison's, GPU_TUNE_ARGS adds options to the tuner's sweep (GPU_BENCH_ARGS when unset), GPU_KERNELS_FILTER replaces the criterion filter ("gpu"), and
# GPU_BENCH_ALLOW_SOFTWARE=1 lets it run on a software adapter (otherwise it stops, exit 3).
set -uo pipefail
cd "$(dirname "$0")/.."

STAGE="${1:-run}"
KIT=.gpubench

if [ "$STAGE" = prepare ]; then
  set -e
  cargo build --release
  cargo test --release --no-run
  cargo bench --bench kernels --no-run
  mkdir -p "$KIT"
  # The newest test and bench executables cargo built.
  newest() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -n1; }
  strip -o "$KIT/unroll" target/release/unroll
  strip -o "$KIT/tests" "$(newest all)"
  strip -o "$KIT/kernels" "$(newest kernels)"
  # The test binary runs the unroll binary from the absolute path it was built with.
  realpath target/release/unroll >"$KIT/unroll_path"
  git rev-parse HEAD >"$KIT/commit"
  if [ ! -d .gl ]; then
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    if apt-get $o update >/dev/null; then
      (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    else
      echo "apt cannot reach its mirrors: no .gl/ (the GPU machine needs its own Vulkan loader)"
      rmdir .gl
    fi
  fi
  du -sh "$KIT" .gl 2>/dev/null
  echo "ready: on the GPU machine run 'bash scripts/gpu_bench.sh' with $KIT and .gl carried along"
  exit 0
fi

if [ "$STAGE" != run ]; then
  echo "usage: scripts/gpu_bench.sh [prepare|run]" >&2
  exit 2
fi

OUT="${OUT:-$PWD/gpu-bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ ! -x "$KIT/unroll" ]; then
  echo "$KIT/unroll is missing: run 'scripts/gpu_bench.sh prepare' on the build machine" >&2
  exit 2
fi

# Vulkan loader: the packages of .gl when the machine has none.
if ! ldconfig -p | grep -q libvulkan.so.1 && [ -d .gl ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
# A hardware adapter, or stop: numbers from a software rasteriser are no GPU figures. Where the
# loader finds no NVIDIA driver on its own, point it at the driver's manifest.
hardware() {
  "$KIT/unroll" devices 2>/dev/null | grep '^--device auto takes:' | grep -qv 'the CPU engine'
}
if ! hardware && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
if ! hardware && [ "${GPU_BENCH_ALLOW_SOFTWARE:-}" != 1 ]; then
  "$KIT/unroll" devices 2>&1 | tee "$OUT/env.txt"
  echo "no hardware GPU adapter: nothing measured" | tee -a "$OUT/env.txt"
  exit 3
fi

# The test binary looks for the unroll binary where it was built.
UNROLL_AT="$(cat "$KIT/unroll_path" 2>/dev/null || true)"
if [ -n "$UNROLL_AT" ] && [ ! -x "$UNROLL_AT" ]; then
  mkdir -p "$(dirname "$UNROLL_AT")" && cp "$KIT/unroll" "$UNROLL_AT"
fi

{
  echo "commit: $(cat "$KIT/commit" 2>/dev/null)"
  date -u
  nvidia-smi 2>&1 | head -20
  "$KIT/unroll" devices 2>&1
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")' 2>&1
  nproc
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== GPU-vs-CPU agreement tests"
UNROLL_REQUIRE_GPU=1 timeout 100 "$KIT/tests" gpu --test-threads 1 >"$OUT/tests.log" 2>&1
TESTS=$?
tail -n 5 "$OUT/tests.log"

echo "== unroll bench --device gpu --baseline pytorch (the GPU anchors' sweep)"
# shellcheck disable=SC2086
timeout 170 "$KIT/unroll" bench --device gpu --baseline pytorch --profile ${GPU_BENCH_ARGS:-} \
  --json-out "$OUT/bench.json" >"$OUT/bench.md" 2>"$OUT/bench.log"
echo "exit $?"
cat "$OUT/bench.md"
grep -v -e '^measuring' -e 'UserWarning' -e '_conversion_method' "$OUT/bench.log" | head -n 20

echo "== word-level models: V = 10,000 with an embedding, against nn.Embedding + PyTorch"
WORDS="--cell rnn,lstm --hidden 512 --embed 512 --vocab-size 10000 --batch 64 --seq-len 35"
# shellcheck disable=SC2086
timeout 60 "$KIT/unroll" bench --device gpu --baseline pytorch --repeats 10 \
  ${GPU_WORDS_ARGS:-$WORDS} >"$OUT/words.md" 2>>"$OUT/bench.log"
echo "exit $?"
cat "$OUT/words.md"

echo "== recurrence kernels side by side (rows / wide / steps) at H = 128 and 512"
for h in 128 512; do
  for r in rows wide steps; do
    # shellcheck disable=SC2086
    timeout 10 "$KIT/unroll" bench --device gpu --recurrence "$r" --repeats 10 --hidden "$h" \
      ${GPU_RECURRENCE_ARGS:---cell rnn,gru,lstm --batch 64 --seq-len 128} \
      2>>"$OUT/bench.log" | grep '^| gpu' >>"$OUT/recurrence.md"
  done
done
cat "$OUT/recurrence.md"

echo "== the tuner: each kernel variant on every shape of the sweep"
# shellcheck disable=SC2086
UNROLL_TUNE_CACHE="$OUT/tune-cache.json" timeout 90 "$KIT/unroll" tune --device gpu \
  ${GPU_TUNE_ARGS:-${GPU_BENCH_ARGS:-}} --json-out "$OUT/tune.json" >"$OUT/tune.md" 2>>"$OUT/bench.log"
echo "exit $?"
cat "$OUT/tune.md"

echo "== WGSL matmul TFLOP/s"
# shellcheck disable=SC2086
timeout 30 "$KIT/unroll" bench --matmul ${GPU_MATMUL_ARGS:-} >"$OUT/matmul.md" 2>&1
echo "exit $?"
cat "$OUT/matmul.md"

echo "== criterion: the step's kernels on the GPU"
timeout 30 "$KIT/kernels" --bench "${GPU_KERNELS_FILTER:-gpu}" >"$OUT/kernels.log" 2>&1
echo "exit $?"
grep -E '^gpu/|thrpt' "$OUT/kernels.log" | head -n 60

echo "== agreement tests: exit $TESTS"
exit "$TESTS"
