#!/usr/bin/env bash
# Set up marlrec in ./.venv (once; again when pyproject.toml changes), then run a command:
#   bash quickstart.sh train [overrides...]   train on the embedded synthetic data, print metrics
#   bash quickstart.sh test  [pytest args...] lint, check layers and types, run the test suite
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
stamp="$venv/.marlrec-installed"
# CPU torch goes in first: a bare "torch" requirement would pull a multi-GB CUDA build.
torch_spec=${MARLREC_TORCH:-torch==2.13.0}

setup() {
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) $torch_spec"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "quickstart: installing marlrec and its dependencies into $venv (a few minutes, once)"
        "$venv/bin/python" -m pip install -q --upgrade pip
        "$venv/bin/python" -m pip install -q "$torch_spec"
        "$venv/bin/python" -m pip install -q -e ".[dev]"
        echo "$want" > "$stamp"
    fi
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    train)
        setup
        exec "$venv/bin/marlrec" train "$@"
        ;;
    test)
        setup
        "$venv/bin/ruff" check marlrec hydra_plugins tests plugins benchmarks
        "$venv/bin/ruff" format --check marlrec hydra_plugins tests plugins benchmarks
        "$venv/bin/lint-imports"
        "$venv/bin/mypy" marlrec hydra_plugins
        exec "$venv/bin/python" -m pytest -q "$@"
        ;;
    *)
        echo "usage: bash quickstart.sh train [overrides...] | test [pytest args...]" >&2
        exit 2
        ;;
esac
