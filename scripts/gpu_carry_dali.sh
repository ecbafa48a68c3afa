#!/usr/bin/env bash
# Bring NVIDIA DALI to a lent GPU machine that has no internet and takes at most 64 MiB per call.
#
#   bash scripts/gpu_carry_dali.sh            # here, once: download the wheels, cut them into pieces
#
# It downloads DALI and the packages it needs that the GPU image lacks (Python 3.12, x86-64; the image
# has numpy, packaging and six) into .dali/wheels/, packs them into one tar and cuts it into 60 MB
# pieces .dali/piece.NN (.dali/ is git-ignored). Then, with the device tool, one call per piece in quick
# succession (a machine stays warm 30 s between calls and keeps ignored files it was given):
#   run(carry=[".dali/piece.00"], command="ls -l .dali")
#   run(carry=[".dali/piece.01"], command="ls -l .dali")   ... up to the last piece, whose call continues:
#   run(carry=[".dali/piece.NN"], command="bash scripts/gpu_carry_dali.sh --install && <your command>")
# and every later call on the same warm machine starts with `export PYTHONPATH=/tmp/dali-site`.
set -euo pipefail
cd "$(dirname "$0")/.."
DALI_VERSION=${DALI_VERSION:-2.4.0}

if [[ "${1:-}" == "--install" ]]; then  # on the GPU machine
  cat .dali/piece.* | tar -x -C /tmp
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/dali-site /tmp/dali-wheels/*.whl
  PYTHONPATH=/tmp/dali-site python3 -c "import nvidia.dali as d; print('DALI', d.__version__, 'installed in /tmp/dali-site')"
  echo "now: export PYTHONPATH=/tmp/dali-site"
  exit 0
fi

rm -rf .dali && mkdir -p .dali/wheels
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .dali/wheels "nvidia-dali-cuda120==${DALI_VERSION}" nvidia-nvimgcodec-cu12 nvidia-libnvcomp-cu12 \
  astunparse gast libcst makefun nvtx optree
mkdir -p .dali/stage && cp -r .dali/wheels .dali/stage/dali-wheels
tar -C .dali/stage -cf .dali/all.tar dali-wheels && rm -rf .dali/stage
split -b 60M -d .dali/all.tar .dali/piece. && rm .dali/all.tar
ls -l .dali/wheels .dali/piece.*
echo "$(ls .dali/piece.* | wc -l) pieces: carry one per call (see the top of this script), the last with --install"
