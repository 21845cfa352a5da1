#!/usr/bin/env bash
# Creates loadtests/.venv with locust and matplotlib at the versions pinned in
# loadtests/requirements.txt. Idempotent and fast once done: it reinstalls only when the
# requirements file changed (its hash is kept in .venv/.installed) or the venv is broken.
#
# The main .venv must never get locust: gevent monkey-patches sockets in whatever imports it.
#   PYTHON=python3.12 bash loadtests/setup.sh    # choose the interpreter (default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.installed"
python="${PYTHON:-python3}"

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$venv/bin/python" -c "import locust, matplotlib" 2>/dev/null; then
    exit 0
fi

echo "loadtests/setup.sh: installing locust and matplotlib into $venv" >&2
rm -f "$stamp"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
"$venv/bin/python" -c "import locust, matplotlib" >/dev/null
echo "$want" > "$stamp"
echo "loadtests/setup.sh: ready ($("$venv/bin/locust" --version 2>/dev/null | head -1))" >&2
