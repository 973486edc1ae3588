#!/usr/bin/env bash
# Runs every test (README: "Run the tests"; CI runs exactly this). The CUDA backend's tests need no GPU:
# the emulation compiles the generated kernels with g++, and NVRTC (the `nvidia-cuda-nvrtc` wheel, ~60 MB,
# installed into a cache folder the first time) compiles them for sm_90.
set -euo pipefail
cd "$(dirname "$0")/.."
NVRTC_DIR="${LOSSC_NVRTC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lossc/nvrtc}"
LIB="$NVRTC_DIR/nvidia/cu13/lib"
if [ ! -e "$LIB/libnvrtc.so.13" ]; then
    echo "installing NVRTC into $NVRTC_DIR" >&2
    python3 -m pip install --quiet --disable-pip-version-check --target "$NVRTC_DIR" "nvidia-cuda-nvrtc==13.0.88"
fi
export LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo test "$@"
