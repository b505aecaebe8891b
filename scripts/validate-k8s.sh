#!/usr/bin/env bash
# Validate the Kubernetes manifests offline.
#
#   bash scripts/validate-k8s.sh               validate deploy/kubernetes/
#   bash scripts/validate-k8s.sh DIR           validate the manifests in DIR instead
#   bash scripts/validate-k8s.sh --self-test   validate deploy/kubernetes/, then break
#                                              scratch copies one way at a time and
#                                              require every one to be rejected (CI)
#
# The checks live in scripts/validate_k8s.py (its docstring describes them:
# a strict schema layer, kubernetes-validate against the oldest supported and
# the newest known Kubernetes, and a cross-file consistency layer). This
# wrapper does the set-up only, then runs that module with .venv's Python,
# passing the arguments on unchanged.
#
# Runs from any directory. Needs python3 (3.10+); installs the pinned
# validator into .venv when it is missing or another version (the only step
# that may use the network: PyPI). The consistency layer reads the settings
# table of the installed server package, so .venv must also hold the server:
# in CI this runs after `make install`, which puts both there.
#
# Exit status: 0 valid, 1 a manifest is invalid (or --self-test found a
# break that passed), 2 usage or set-up error.
set -euo pipefail

VALIDATOR_PIN="kubernetes-validate==1.37.0"

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$repo/.venv

if [ ! -x "$venv/bin/python" ]; then
    echo "validate-k8s: creating .venv"
    python3 -m venv "$venv" || { echo "validate-k8s: python3 -m venv failed" >&2; exit 2; }
    # As the Makefile does, so a later `make install` finds the .venv it expects.
    "$venv/bin/python" -m pip install --quiet 'pip>=23'
fi
PY=$venv/bin/python
want_version=${VALIDATOR_PIN#*==}
have_version=$("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' \
    2>/dev/null || true)
if [ "$have_version" != "$want_version" ]; then
    echo "validate-k8s: installing $VALIDATOR_PIN into .venv"
    "$PY" -m pip install --quiet --disable-pip-version-check "$VALIDATOR_PIN" ||
        { echo "validate-k8s: could not install $VALIDATOR_PIN" >&2; exit 2; }
fi

# Not cd'ing first: a relative DIR argument is relative to the caller's
# directory; the module resolves it, then moves to the repository root.
exec "$PY" "$repo/scripts/validate_k8s.py" "$@"
