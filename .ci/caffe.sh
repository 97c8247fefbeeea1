#!/usr/bin/env bash
# CI step: make the real Caffe runtime available (brocolli-caffe 9.0.2, CPU, pycaffe).
#
# Installs missing Debian packages (apt-get, only when some are missing), then builds Caffe
# into the cache folder ($TRACECAP_CAFFE_HOME, default ~/.cache/tracecap/caffe), or reuses the
# build already there (a few seconds).  Exits non-zero when anything fails.
#
# The interpreter must be the one the tests run with (pycaffe is compiled against its numpy):
# set PYTHON, else the active virtualenv's python, else python3.  Run from anywhere.
# After this, run the tests with TRACECAP_REQUIRE_CAFFE=1 so that Caffe cases fail, not skip.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    py="$VIRTUAL_ENV/bin/python"
else
    py="$(command -v python3)"
fi

echo "caffe.sh: building/reusing Caffe with $py"
start=$SECONDS
# Run the builder by path: it needs only the standard library and numpy, not tracecap's imports.
"$py" tracecap/runtimes/build_caffe.py --jobs "$(nproc 2>/dev/null || echo 2)"
where="$("$py" tracecap/runtimes/build_caffe.py --where)"
echo "caffe.sh: Caffe ready at $where ($((SECONDS - start)) s)"
