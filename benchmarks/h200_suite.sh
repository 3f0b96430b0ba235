#!/usr/bin/env bash
# The GPU suite: part 0 runs the CUDA test set (`pytest -m cuda`, tests/test_cuda.py); parts 1-7 are the issue-5
# GPU measurements, part 8 the modern families of issue 12, part 9 issue 14's data path at 1, 2 and 16 workers, part
# 10 issue 21's default data path (turbo: cropped JPEG decode on the CPU) against the torchvision reference, train and
# val, per CPU-second and wall (one H200, bf16, channels_last, 224 px), each writing
# its own dated results under benchmarks/results/. Run all parts, or some: `bash benchmarks/h200_suite.sh 0 2 3`. A failing part 0 does not
# stop the measurements; the script then exits with status 1 at the end. Each part is sized to
# stay under 10 minutes on an H200 (an estimate: compilation included, not yet timed), so each can be one call of a
# time-limited job. Real-data parts use 16384 generated JPEGs (64 steps per pass at batch 256), so the pause at
# each pass boundary (workers refilling the prefetch queue) stays around 1% of a window.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
B="$PY -m benchmarks.train_throughput --amp bf16 --channels-last -b 256"
J=$(( $(nproc) < 16 ? $(nproc) : 16 ))
G="--gen-images 16384"

part() {
  case "$1" in
    0) $PY -m pytest -q -rs -m cuda tests/ || TESTS_FAILED=1 ;;                  # the CUDA test set
    1) $B --pd-impl border full ;;                                                # eager, model only, 4 archs
    2) $B --archs resnet50 pdresnet50 --pd-impl border full --compile ;;          # compiled, model only
    3) $B --archs resnet50 pdresnet50 --compile --data real -j "$J" --data-backend pil $G ;;   # whole step, PIL
    4) $B --archs resnet50 pdresnet50 --compile --data real -j "$J" --data-backend gpu $G ;;   # whole step, nvJPEG
    5) $B --data loader-only --data-backend pil -j 8 "$J" --malloc default glibc pillow $G ;;  # data path alone
    6) $B --archs pdresnet50 --find-max-batch --windows 1 --steps 5 --warmup 3 ;;  # largest batch + eager rate
    7) $B --archs vgg16_bn pdvgg16_bn --compile ;;                                # compiled VGG
    8) $B --archs convnext_tiny pdconvnext_tiny efficientnet_b0 pdefficientnet_b0 \
          regnet_y_400mf pdregnet_y_400mf mobilenet_v3_large pdmobilenet_v3_large ;; # modern families, eager
    9) $B --data loader-only --data-backend pil_fast -j 1 2 "$J" -b 64 --steps 16 --windows 5 $G ;;  # issue 14:
       # pil_fast vs the torchvision reference at 1, 2 and 16 workers, with CPU ms per image per process
    10) $B --data loader-only -j 1 2 "$J" -b 64 --split train val --steps 16 --windows 5 $G ;;  # issue 21: the
       # default path (auto -> turbo; libturbojpeg decodes on the CPU only, so there is no GPU variant of it)
    *) echo "unknown part $1 (0-10)" >&2; exit 2 ;;
  esac
}

TESTS_FAILED=0
for p in "${@:-0 1 2 3 4 5 6 7 8 9 10}"; do
  for q in $p; do
    echo "== part $q"
    part "$q"
  done
done
if [ "$TESTS_FAILED" != 0 ]; then
  echo "h200_suite: the CUDA test set (part 0) failed" >&2
  exit 1
fi
