#!/usr/bin/env bash
# Installs llama-cpp-python (built from source, CPU only), gguf, numpy and safetensors into a venv
# outside the repository. Idempotent: re-running only installs what is missing.
#
#   scripts/llamacpp/install.sh            # venv at $HOME/.cache/moe-serve-llamacpp-venv
#   LLAMACPP_VENV=/some/dir scripts/llamacpp/install.sh
#
# Also keeps the llama-cpp-python sdist (it vendors llama.cpp, including convert_hf_to_gguf.py, the
# reference for our converter) unpacked at $LLAMACPP_VENV/src.
set -euo pipefail

VENV="${LLAMACPP_VENV:-$HOME/.cache/moe-serve-llamacpp-venv}"
PY="${PYTHON:-python3}"
# One compile job at a time: the machines have 2 cores and are shared.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-1}"
# CPU only, tuned for this CPU; no BLAS, no GPU back ends.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install --quiet --upgrade pip

"$VPY" -m pip install --quiet "numpy" "safetensors" "gguf" "scikit-build-core[pyproject]" "cmake>=3.21" "ninja"

if ! "$VPY" -c 'import llama_cpp' 2>/dev/null; then
    mkdir -p "$VENV/sdist"
    if ! ls "$VENV"/sdist/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
        "$VPY" -m pip download --no-deps --no-build-isolation --no-binary llama-cpp-python \
            -d "$VENV/sdist" llama-cpp-python
    fi
    SDIST="$(ls "$VENV"/sdist/llama_cpp_python-*.tar.gz | sort -V | tail -1)"
    echo "building $SDIST (CMAKE_ARGS=$CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=$CMAKE_BUILD_PARALLEL_LEVEL)"
    # --no-build-isolation: use the cmake/ninja/scikit-build-core installed above.
    "$VPY" -m pip install --no-build-isolation --verbose "$SDIST"
fi

# Unpacked sdist for reference (vendor/llama.cpp/convert_hf_to_gguf.py, gguf-py).
if [ ! -d "$VENV/src" ]; then
    SDIST="$(ls "$VENV"/sdist/llama_cpp_python-*.tar.gz 2>/dev/null | sort -V | tail -1 || true)"
    if [ -n "$SDIST" ]; then
        mkdir -p "$VENV/src" && tar -xzf "$SDIST" -C "$VENV/src" --strip-components=1
    fi
fi

"$VPY" -c 'import llama_cpp, gguf, numpy, safetensors; print("llama_cpp", llama_cpp.__version__, "gguf OK")'
echo "venv: $VENV"
