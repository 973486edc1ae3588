#!/usr/bin/env bash
# The GPU check of the CUDA backend, in two steps.
#
# 1. On the CPU machine (Rust, no GPU): `bash tools/gpu_check.sh --prepare` builds a release lossc and the
#    release test binaries of the CUDA tests into gpu/ (ignored by git: a device call must name `gpu` in
#    its carry; about 25 MB, well under the 64 MiB a call carries).
# 2. On the GPU machine (no Rust, no network; CUDA 13 driver and toolkit, Python with torch, JAX, triton):
#    `bash tools/gpu_check.sh` from the repository root, within 10 minutes:
#    - the CUDA kernels against the interpreter on the GPU: every example, test program and stdlib loss at
#      three sizes, the bundled inputs, launch geometry, bounds checks (tests/cuda_emu.rs with
#      LOSSC_TEST_GPU=1), and every conformance fixture (tests/conformance.rs);
#    - first use (NVRTC into an empty cache) and a later process's compile time (CUBIN from the disk cache);
#    - `lossc bench --backend cuda` on W1–W8 (BENCHMARKS.md's shapes) and the JIT beside it; NT-Xent
#      streamed (`--stream`) at B = 65,536 (whole, its [B, B] tensors would need ~170 GB);
#    - the Python package on CUDA tensors (python/tests/test_cuda.py: lossc.torch with backend="cuda"
#      against torch's losses and the CPU JIT, bf16 logits, torch.compile), from the abi3 wheel that
#      --prepare builds into gpu/wheels (with pytest's wheels: the GPU machine has no network);
#    - tools/bench_peers.py --device cuda: torch eager, torch.compile, JAX and Liger-Kernel (if a wheel was
#      carried in gpu/wheels) on W1–W8 and the LLM-sized bf16 cross-entropy.
#    Everything is printed; gpu/report.txt keeps a copy for BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    set -e
    cargo build --release
    mkdir -p gpu
    cp target/release/lossc gpu/lossc
    for t in cuda_emu conformance; do
        bin=$(cargo test --release --test "$t" --no-run --message-format=json 2>/dev/null |
            python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
        cp "$bin" "gpu/test_$t"
    done
    strip gpu/lossc gpu/test_* 2>/dev/null || true
    # The Python package as an abi3 wheel (the GPU machine's Python is 3.12), and pytest to run its tests.
    venv="${LOSSC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/lossc/venv}"
    rm -rf gpu/wheels && mkdir -p gpu/wheels
    "$venv/bin/maturin" build --release --quiet -m python/Cargo.toml -o gpu/wheels
    "$venv/bin/pip" download --quiet --no-deps --only-binary=:all: -d gpu/wheels pytest iniconfig pluggy packaging
    du -sh gpu
    exit 0
fi

if [ ! -x gpu/lossc ]; then
    echo "gpu/lossc is missing: run 'bash tools/gpu_check.sh --prepare' on the CPU machine first" >&2
    exit 2
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LOSSC_ROOT="$PWD" LOSSC_TEST_GPU=1 LOSSC_CACHE_DIR="$PWD/gpu/cache"
exec > >(tee gpu/report.txt) 2>&1
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
status=0
echo "== CUDA kernels vs the interpreter on the GPU"
timeout 240 gpu/test_cuda_emu --test-threads=1 || status=1
timeout 120 gpu/test_conformance stdlib_matches_references_in_the_cuda_kernels || status=1
echo "== first use: NVRTC into an empty cache, then the CUBIN from the disk cache (lossc compile --timings)"
cold=$(mktemp -d)
for f in examples/cross_entropy.lx examples/ldr_kl.lx benches/nt_xent.lx benches/sort_bce16.lx; do
    for use in first cached; do
        echo "$use: $(LOSSC_CACHE_DIR="$cold" gpu/lossc compile "$f" --emit cuda --timings 2>&1 >/dev/null | grep nvrtc)"
    done
done
echo "== lossc bench (cuda, then jit), W1-W8"
bench() {
    for backend in cuda jit; do
        timeout 60 gpu/lossc bench "$@" --backend "$backend" --iters 50 || status=1
    done
}
bench examples/cross_entropy.lx --shape N=8192,C=1000
bench examples/ldr_kl.lx --shape N=8192,C=1000
bench examples/anyloss_f1.lx --shape N=1000000 --dist p=uniform,y=binary
bench benches/nt_xent.lx --shape B=1024,D=128
bench examples/multi_similarity.lx --shape B=512,D=128 --dist y=labels:64
bench benches/sort_bce16.lx --shape B=1024
bench examples/z_loss.lx --shape N=8192,C=1000
bench examples/kl_dro.lx --shape N=8192,C=1000
timeout 120 gpu/lossc bench examples/cross_entropy.lx --shape N=16384,C=128256 --backend cuda --iters 10 || status=1
echo "== pairwise losses streamed (--stream: rows of pairs in slots, device memory linear in B), B = 65,536"
timeout 120 gpu/lossc bench benches/nt_xent.lx --shape B=65536,D=128 --backend cuda --stream --iters 2 || status=1
timeout 60 gpu/lossc bench benches/nt_xent.lx --shape B=8192,D=128 --backend cuda --stream --iters 5 || status=1
if ls gpu/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install --no-deps --no-index --quiet gpu/wheels/*.whl || true
fi
echo "== the Python package on CUDA tensors"
(cd /tmp && timeout 180 python3 -m pytest -q -p no:cacheprovider "$LOSSC_ROOT/python/tests/test_cuda.py") || status=1
echo "== peers on the GPU"
timeout 240 python3 tools/bench_peers.py --device cuda --iters 50 || status=1
echo "gpu_check: exit $status"
exit $status
