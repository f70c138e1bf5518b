#!/usr/bin/env bash
# Set up avs-agent in ./.venv (or the active virtual environment).
#   bash install.sh lite   the lite profile: CPU models, no torch (default)
#   bash install.sh full   lite + full profile + LLM backends + tool server (torch from constraints.txt)
#   bash install.sh dev    everything the tests need, including Debian's chromium for the browser tests
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
# on), it is the mirror; elsewhere the files come from their public origins (README "Models").
mirror=()
if [ -d ../shared/models ]; then
  mirror=(--mirror "$(cd ../shared/models && pwd)")
  echo "install.sh: lite models from the mirror ${mirror[1]} (files it lacks from their origins)" >&2
fi
"$py" -m agent.apps.cli models download --profile lite "${mirror[@]}"
if [ "$target" = dev ] && [ ! -x /usr/bin/chromium ]; then
  # the web page's tests drive Debian's chromium through Playwright (never 'playwright install': it downloads a browser)
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || echo "install.sh: could not install chromium (apt-get); the browser tests need /usr/bin/chromium" >&2
fi
echo "avs-agent installed ($target) in $("$py" -c 'import sys; print(sys.prefix)')" >&2
