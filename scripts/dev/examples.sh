#!/usr/bin/env bash
# Installs what the clients in examples/ need to run, and what tests/it/examples.rs runs them
# with: a virtualenv with examples/python/requirements.txt in .dev/examples-venv, and
# examples/typescript's node_modules (npm ci) and build (dist/). Quick and harmless when already
# done: each step runs again only when its input changed.
#
# Prints the virtualenv's python on stdout (what TALLY_EXAMPLES_PYTHON should be), and
# everything else on stderr. `./dev test` calls it; run it yourself before
#   cargo test -p tests --test it -- examples
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.dev/examples-venv"
PY_DIR="$ROOT/examples/python"
TS_DIR="$ROOT/examples/typescript"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo -n "$@" || die "need root to run: $* (sudo failed)"
    else die "need root to run: $*"
    fi
}
apt_install() {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "cannot install $*"
}

# A file newer than another (or the other missing): the step that makes it must run again.
stale() { [ ! -e "$1" ] || [ -n "$(find "${@:2}" -newer "$1" -print -quit 2>/dev/null)" ]; }

ensure_python() {
    command -v python3 >/dev/null || apt_install python3
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV (the Python example's virtualenv)"
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            apt_install python3-venv
            rm -rf "$VENV"
            python3 -m venv "$VENV" || die "cannot create a Python virtualenv in $VENV"
        fi
    fi
    # The stamp holds the requirements it was installed from.
    if ! cmp -s "$PY_DIR/requirements.txt" "$VENV/.requirements.txt"; then
        say "installing examples/python/requirements.txt from PyPI into $VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check -r "$PY_DIR/requirements.txt" \
            || die "cannot install examples/python/requirements.txt"
        cp "$PY_DIR/requirements.txt" "$VENV/.requirements.txt"
    fi
}

ensure_node() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        say "installing Node.js and npm (Debian packages)"
        apt_install nodejs npm
    fi
    local major; major="$(node -p 'process.versions.node.split(".")[0]')"
    [ "$major" -ge 20 ] || die "the TypeScript example needs Node.js 20 or newer (found $(node --version))"
    # npm ci writes node_modules/.package-lock.json; it is older than the lock when that changed.
    if stale "$TS_DIR/node_modules/.package-lock.json" "$TS_DIR/package-lock.json" "$TS_DIR/package.json"; then
        say "npm ci in examples/typescript"
        (cd "$TS_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed in $TS_DIR"
    fi
    if stale "$TS_DIR/dist/example.js" "$TS_DIR/src" "$TS_DIR/tsconfig.json" "$TS_DIR/node_modules/.package-lock.json"; then
        say "building examples/typescript (tsc)"
        (cd "$TS_DIR" && npm run --silent build >&2) || die "tsc failed in $TS_DIR"
        touch "$TS_DIR/dist/example.js"
    fi
}

ensure_python
ensure_node
say "examples ready: $VENV/bin/python $PY_DIR/tally_example.py; node $TS_DIR/dist/example.js"
echo "$VENV/bin/python"
