#!/usr/bin/env bash
# Create .venv-ttnn in the repo root: a Python 3.12 (or 3.10) venv holding the real ttnn==0.81.1 wheel, used as
# ground truth for tunelab.numerics.quantize (scripts/ttnn_golden.py, tests/test_quantize_vs_ttnn.py).
#
# Best effort: if no suitable Python is found or the install fails, print one warning line and exit 0 (the live
# ttnn test then skips). Idempotent: a no-op when .venv-ttnn already imports ttnn.
#
# Usage: scripts/setup_ttnn_venv.sh            (env TUNELAB_TTNN_VENV overrides the target directory)
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TUNELAB_TTNN_VENV:-$ROOT/.venv-ttnn}"
TTNN_VERSION="0.81.1"
MOCK_DESC="$ROOT/scripts/ttnn_mock/wormhole_n150.yaml"

warn() {
    echo "WARNING: setup_ttnn_venv: $* (ttnn live tests will be skipped)" >&2
    exit 0
}

ttnn_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    TT_METAL_MOCK_CLUSTER_DESC_PATH="${TT_METAL_MOCK_CLUSTER_DESC_PATH:-$MOCK_DESC}" TT_LOGGER_LEVEL=error \
        "$VENV/bin/python" -c "import ttnn" >/dev/null 2>&1
}

if ttnn_ok; then
    echo "setup_ttnn_venv: $VENV already imports ttnn; nothing to do"
    exit 0
fi

# ttnn 0.81.1 wheels exist for cp310 and cp312 only.
is_suitable() {
    [ -x "$1" ] || return 1
    "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] in ((3, 12), (3, 10)) else 1)' >/dev/null 2>&1
}

find_python() {
    local cand root v
    root=""
    if command -v pyenv >/dev/null 2>&1; then
        root="$(pyenv root 2>/dev/null)"
    fi
    [ -n "$root" ] || root="${PYENV_ROOT:-$HOME/.pyenv}"
    if [ -d "$root/versions" ]; then
        for v in 3.12 3.10; do
            # newest patch release first
            for cand in $(ls -d "$root/versions/$v".* 2>/dev/null | sort -rV); do
                if is_suitable "$cand/bin/python"; then
                    echo "$cand/bin/python"
                    return 0
                fi
            done
        done
    fi
    for v in python3.12 python3.10; do
        cand="$(command -v "$v" 2>/dev/null)" || continue
        if is_suitable "$cand"; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

PY="$(find_python)" || warn "no Python 3.12 or 3.10 found (pyenv or PATH); ttnn==$TTNN_VERSION needs cp310/cp312"
echo "setup_ttnn_venv: using $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])')) -> $VENV"

if [ -e "$VENV" ] && ! [ -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
fi
if ! [ -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || warn "could not create venv at $VENV"
fi

"$VENV/bin/python" -m pip install --quiet "ttnn==$TTNN_VERSION" "numpy<2" \
    || warn "pip install ttnn==$TTNN_VERSION 'numpy<2' failed"

ttnn_ok || warn "ttnn installed into $VENV but 'import ttnn' fails"
echo "setup_ttnn_venv: ok, $VENV imports ttnn $TTNN_VERSION"
