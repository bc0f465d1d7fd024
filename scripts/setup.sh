#!/usr/bin/env bash
# Create .venv with a Python 3.12 interpreter and install miso-bench with its dev extras.
# Idempotent: reinstalls only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MISO_BENCH_VENV:-.venv}"
STAMP="$VENV/.miso-bench-installed"

is_312() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
  local cand
  # 1. an interpreter named python3.12 on PATH (a pyenv shim may exist but not work: test it)
  for cand in python3.12 python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && is_312 "$(command -v "$cand")"; then
      command -v "$cand"; return 0
    fi
  done
  # 2. pyenv-managed 3.12 versions, newest first
  if command -v pyenv >/dev/null 2>&1; then
    local root v
    root="$(pyenv root)"
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -t. -k3,3nr); do
      cand="$root/versions/$v/bin/python3.12"
      if [ -x "$cand" ] && is_312 "$cand"; then echo "$cand"; return 0; fi
    done
  fi
  # 3. common install locations
  for cand in /usr/bin/python3.12 /usr/local/bin/python3.12 /opt/homebrew/bin/python3.12; do
    if [ -x "$cand" ] && is_312 "$cand"; then echo "$cand"; return 0; fi
  done
  return 1
}

if [ -x "$VENV/bin/python" ] && ! is_312 "$VENV/bin/python"; then
  echo "setup: $VENV is not a Python 3.12 environment; recreating it" >&2
  rm -rf "$VENV"
fi

if [ ! -x "$VENV/bin/python" ]; then
  if ! PY="$(find_python)"; then
    cat >&2 <<'MSG'
setup: no Python 3.12 interpreter found.
miso-bench needs Python 3.12 (torchgeo >= 0.9 requires it). Install one, for example:
  pyenv install 3.12      (then rerun this command), or
  sudo apt-get install python3.12 python3.12-venv, or
  conda create -n miso python=3.12 && conda activate miso
MSG
    exit 1
  fi
  echo "setup: creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "setup: installing miso-bench and its dependencies into $VENV (a few minutes the first time)"
log="$VENV/install.log"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e ".[dev]" >"$log" 2>&1; then
  grep -v "is neither a file nor a directory" "$log" | tail -n 30 >&2
  echo "setup: pip install failed; full log in $log" >&2
  exit 1
fi
echo "$want" >"$STAMP"
echo "setup: done"
