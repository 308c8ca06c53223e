#!/usr/bin/env bash
# Create .venv with sandboxer (editable, every engine's SDK, the test tools), idempotently:
# it reinstalls only when pyproject.toml changed since the last run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.sandboxer-installed"
log() { printf '[setup] %s\n' "$*" >&2; }

export DEBIAN_FRONTEND=noninteractive
# What building libvirt-python and creating a venv need on a bare Debian 12.
need=()
# libc6-dev: the security suite builds a static probe binary.
for pkg in python3-venv python3-dev gcc libc6-dev pkg-config libvirt-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
usable() {  # what those packages provide, however this machine got it (pyenv, ...)
    python3 -m venv --help && command -v gcc && pkg-config --exists libvirt \
        && [ "$(gcc -print-file-name=libc.a)" != libc.a ]
}
if [ ${#need[@]} -gt 0 ] && ! usable >/dev/null 2>&1; then
    log "apt-get install ${need[*]}"
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# scripts/test.sh lints the VM guest's shell scripts with it.
# The linter of the VM guest's scripts, fish for the fish completion's test, and tmux for
# the terminal sessions' test (integration/test_cli_terminal.py).
for tool in shellcheck fish tmux; do
    command -v "$tool" >/dev/null || { log "apt-get install $tool"; apt-get update -qq && apt-get install -y -qq --no-install-recommends "$tool" >/dev/null; }
done

want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
log "installing sandboxer and its SDKs into $venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip >&2
"$venv/bin/pip" install -q -e "${root}[all,test]" >&2
echo "$want" >"$stamp"
