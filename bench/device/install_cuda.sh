#!/usr/bin/env bash
# pip-installs this tree's CUDA build into /tmp/site (build dir /tmp/cocktail-build: a full build the first time, an
# incremental one after), ON the GPU machine, carrying .bundle (bench/device/make_bundle.sh). Used by
# build_cuda.sh and the probes that rebuild an edited copy of the kernels.
# Usage: bash bench/device/install_cuda.sh LOG    (CUDA_ARCHS=90 by default; exits non-zero with LOG's tail)
set -uo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
log="${1:?usage: install_cuda.sh LOG}"
# Our sources as new as the build's objects: a tree sent again after ab_kernels.sh copied another commit's kernels
# in keeps its older times, and the incremental build would keep the other commit's objects (seen once: a rebuild
# that compiled nothing).
touch "$repo"/native/*
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-90} -DCOCKTAIL_UPSTREAM_SRC=$repo/.bundle/llama_cpp_python-0.3.36" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" python3 -m pip install -q --no-build-isolation --no-deps --no-index --upgrade \
  --target /tmp/site --config-settings=build-dir=/tmp/cocktail-build "$repo" > "$log" 2>&1 ||
  { tail -50 "$log"; exit 1; }
