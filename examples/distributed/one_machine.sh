#!/usr/bin/env bash
# A distributed search on one machine: a chief and two workers sharing a run folder.
#
#   examples/distributed/one_machine.sh [DATA_DIR] [RUN_DIR] [PORT]
#
# DATA_DIR defaults to "digits" (scikit-learn's bundled handwritten digits: no
# download). Each worker runs its own trials; the chief hands them out, prints
# the search's progress and exports the best model to RUN_DIR/best at the end.
# On a machine with N GPUs, give each worker one: CUDA_VISIBLE_DEVICES=i.
set -euo pipefail
DATA=${1:-digits}
RUN=${2:-runs/distributed}
PORT=${3:-8470}
ARGS=(search "$DATA" --out "$RUN" --space quick --tuner random --max-trials 6 --epochs 4
      --image-size 32)

mkdir -p "$RUN"
resnet-tuner "${ARGS[@]}" --chief "127.0.0.1:$PORT" > "$RUN/chief.log" 2>&1 &
CHIEF=$!
for id in w1 w2; do
  resnet-tuner "${ARGS[@]}" --worker "127.0.0.1:$PORT" --worker-id "$id" > "$RUN/$id.log" 2>&1 &
done
wait "$CHIEF"
wait
tail -n 3 "$RUN/chief.log" "$RUN/w1.log" "$RUN/w2.log"
