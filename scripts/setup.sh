#!/usr/bin/env bash
# Installs psec into ./.venv on a fresh machine (CPU only). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
"$py" -m pip install -q --upgrade pip
# The CPU build first: a bare or unpinned torch pulls several GB of CUDA packages.
"$py" -m pip install -q torch==2.13.0
# The rest through uv, which downloads and byte-compiles in parallel: 43 s against pip's
# 88 s for the same versions on a 2-core box with cold caches (session 17). uv does not
# read pip's config, so it never sees the local torch file; torch is installed above.
# pip does it all if uv cannot.
if "$py" -m pip install -q uv==0.13.9; then
  .venv/bin/uv pip install -q --python "$py" --compile-bytecode -e ".[dev,safety,minari]" \
    || "$py" -m pip install -q -e ".[dev,safety,minari]"
else
  "$py" -m pip install -q -e ".[dev,safety,minari]"
fi
# bullet-safety-gym declares gymnasium 0.28 but works with 1.x: its deps come from [safety].
"$py" -m pip install -q --no-deps bullet-safety-gym==1.4.0
# These machines set PYTHONDONTWRITEBYTECODE=1, so Python never caches the bytecode of the
# project's own modules (pip compiles only what it installs, and this project is installed
# editable): every process, each Ray worker included, would compile them again (0.2–0.3 s
# for the 80 modules here). Compiling them once here writes the caches imports then read;
# a module edited later is compiled again in memory, as without them.
"$py" -m compileall -q library tasks pipeline tune benchmarks
