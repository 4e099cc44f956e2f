#!/usr/bin/env bash
# Run HERE (not on the GPU machine): writes .bundle/ (a trimmed, sha256-verified upstream tree) and
# .whl/ (wheels the GPU machine lacks), both ignored by git, for `carry` to the device machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=llama_cpp_python-0.3.36
sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
tarball="${COCKTAIL_GGUF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cocktail-gguf}/$name.tar.gz"
[ -f "$tarball" ] || python3 -m pip download --no-deps --no-binary llama-cpp-python -d "$(dirname "$tarball")" "llama-cpp-python==0.3.36"
echo "$sha  $tarball" | sha256sum -c -
rm -rf .bundle && mkdir -p .bundle
# the build needs the CMake tree, ggml, src, include and the Python code; not tests/docs/tools/models
tar -xzf "$tarball" -C .bundle \
  --exclude="$name/vendor/llama.cpp/models" --exclude="$name/vendor/llama.cpp/docs" \
  --exclude="$name/vendor/llama.cpp/tools" --exclude="$name/vendor/llama.cpp/examples" \
  --exclude="$name/vendor/llama.cpp/tests" --exclude="$name/vendor/llama.cpp/media" \
  --exclude="$name/vendor/llama.cpp/app" --exclude="$name/vendor/llama.cpp/benches" \
  --exclude="$name/vendor/llama.cpp/gguf-py" --exclude="$name/vendor/llama.cpp/.git*" \
  --exclude="$name/vendor/llama.cpp/ggml/src/ggml-vulkan" --exclude="$name/vendor/llama.cpp/ggml/src/ggml-sycl" \
  --exclude="$name/vendor/llama.cpp/ggml/src/ggml-metal" --exclude="$name/vendor/llama.cpp/ggml/src/ggml-opencl" \
  --exclude="$name/vendor/llama.cpp/ggml/src/ggml-cann" --exclude="$name/vendor/llama.cpp/ggml/src/ggml-webgpu" \
  --exclude="$name/vendor/llama.cpp/ggml/src/ggml-hexagon" --exclude="$name/vendor/llama.cpp/ggml/src/ggml-musa" \
  --exclude="$name/vendor/llama.cpp/ggml/src/ggml-zdnn" --exclude="$name/vendor/llama.cpp/ggml/src/ggml-openvino" \
  --exclude="$name/docs" --exclude="$name/tests" --exclude="$name/examples" --exclude="$name/docker" \
  "$name/vendor/llama.cpp" "$name/llama_cpp" "$name/LICENSE.md"
# tools/ holds CMake subdirectories referenced only when LLAMA_BUILD_TOOLS is on; keep an empty dir
mkdir -p ".bundle/$name/vendor/llama.cpp/tools"
du -sh .bundle
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl cffi pycparser diskcache gguf
du -sh .whl
