#!/usr/bin/env bash
# Everything CI checks, from a bare Debian 12 (as root): installs and starts the three
# engines, sets up .venv, then lint, types, unit tests and integration tests on Docker,
# Incus and libvirt. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/setup-engines.sh docker incus libvirt
scripts/setup-python.sh
export PATH="$root/.venv/bin:$PATH"
ruff check sandboxer backends profiles tests integration bench
# The VM guest's scripts, which busybox sh runs (ruff sees its .py ones under backends/).
shellcheck --shell=sh backends/libvirt/guest-scripts/*.sh
mypy
# Two runs: the unit tests register an in-memory fake backend for their whole session.
python -m pytest tests "$@"
# Host-side file handling on Debian's own Python 3.11.2 (older tarfile), with the venv's packages.
/usr/bin/python3 -c 'import site, sys; site.addsitedir(sys.argv[1]); import pytest; sys.exit(pytest.main(sys.argv[2:]))' .venv/lib/python3.11/site-packages tests/test_host_boundary.py tests/test_spec_fuzz.py tests/test_fake_contract.py "$@"
# Each engine's tests in a worker of their own (integration/conftest.py groups them), so
# the engines run side by side; the slowest tests are listed for the next tuning.
python -m pytest integration -n 3 --dist loadgroup --durations=25 "$@"
# Numbers only, never timing assertions: sandboxer against the raw SDKs.
python bench/run.py --quick
# Last and alone: these restart the engine daemons everything above relies on.
SANDBOXER_DISRUPTIVE=1 python -m pytest integration/test_daemon_restart.py -m disruptive "$@"
