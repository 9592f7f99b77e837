#!/usr/bin/env bash
# The course's GPU run on a lent machine that reaches no package index, in the background, so that it outlasts one
# call's time limit and keeps the GPU busy while llama-cpp-python compiles:
#
#   bash benchmarks/gpu_course_run.sh start [options of gpu_course_run.py]   # once .gpu-wheels/c*/ are carried there
#   bash benchmarks/gpu_course_run.sh status                                 # progress; copies the summary to $OUT
#
# start: installs the carried wheels (benchmarks/gpu_setup.sh without the llama.cpp build), then at the same time
# builds llama-cpp-python with CUDA (about 6 minutes on 16 cores) and runs the notebooks that need no llama.cpp
# (01, 03, 06); once the build is there, everything else the options ask for (--resume: nothing that passed runs
# twice, and a second `start` in the same folder adds its rows to the same summary).
# E.g. `start --caps 7.5GiB 15GiB --jobs 6 --benchmarks llama_cpp_offload tensor_parallel_check`.
# The run's folder is $GPU_RUN_DIR (default /tmp/gpu-course-run): run.log, summary.md/json, notebooks/, logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${GPU_RUN_DIR:-/tmp/gpu-course-run}
SETUP=${GPU_SETUP:-benchmarks/gpu_setup.sh}  # a stand-in replaces it when this script itself is tested
export PYTHONPATH="/tmp/labkit-site:$PWD${PYTHONPATH:+:$PYTHONPATH}" JUPYTER_PATH=/tmp/labkit-kernel/share/jupyter
case "${1:-status}" in
  start)
    shift
    mkdir -p "$RUN"
    rm -f "$RUN/finished" "$RUN/llama-built"
    args=$(printf ' %q' "$@")
    setsid nohup bash -c "
      NO_LLAMA_BUILD=1 bash '$SETUP' > '$RUN/setup.log' 2>&1 || { echo 'set-up failed: see setup.log' >> '$RUN/run.log'; exit 1; }
      (bash '$SETUP' > '$RUN/llama-build.log' 2>&1; touch '$RUN/llama-built') &
      python3 benchmarks/gpu_course_run.py --out '$RUN' $args --notebooks 01 03 06 --benchmarks none --resume >> '$RUN/run.log' 2>&1
      while [ ! -e '$RUN/llama-built' ]; do sleep 5; done
      python3 benchmarks/gpu_course_run.py --out '$RUN' $args --resume >> '$RUN/run.log' 2>&1
      touch '$RUN/finished'" > /dev/null 2>&1 < /dev/null &
    echo "started in the background; follow it with: bash benchmarks/gpu_course_run.sh status"
    ;;
  status)
    [ -e "$RUN/llama-built" ] || echo "llama-cpp-python CUDA build: $(tail -n 1 "$RUN/llama-build.log" 2>/dev/null || echo 'not started')"
    tail -n 30 "$RUN/run.log" 2>/dev/null || echo "no run.log yet in $RUN"
    [ -e "$RUN/finished" ] && echo "FINISHED" || echo "still running"
    if [ -n "${OUT:-}" ] && [ -e "$RUN/summary.json" ]; then
      cp "$RUN/summary.json" "$OUT/gpu_course_run.json"
      cp "$RUN/summary.md" "$OUT/gpu_course_run.md"
      for f in "$RUN"/llama_cpp_offload/llama_cpp_offload.* "$RUN"/tensor_parallel_check/tensor_parallel_check.json; do
        [ -e "$f" ] && cp "$f" "$OUT/"
      done
      tar czf "$OUT/gpu_course_run_logs.tgz" -C "$RUN" logs run.log 2>/dev/null || true
    fi
    ;;
  *)
    echo "usage: bash benchmarks/gpu_course_run.sh start [options] | status" >&2
    exit 2
    ;;
esac
