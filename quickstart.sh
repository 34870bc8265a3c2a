#!/usr/bin/env bash
# README command 1: set up and run the main job end to end on a generated dataset, offline.
#   install -> synthesise interaction logs -> Beam preprocessing -> Keras training (SASRec, uniform negatives)
#   -> full-ranking evaluation -> SavedModel export -> query the exported model.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[test]"

mkdir -p data/quickstart runs
python -m pipeline.synthetic --output data/quickstart.tsv --users 2000 --items 500 --events 30000 --seed 7
python -m pipeline.run --input data/quickstart.tsv --input_format interactions --split loo \
  --output data/quickstart --overwrite
rm -rf runs/quickstart
python -m mdcns_tf.train --config configs/quickstart.yaml "$@"
python -m mdcns_tf.recommend --model runs/quickstart/export/mdcns --data data/quickstart --history 1,2,3
echo "metrics: runs/quickstart/metrics.json; TensorBoard: tensorboard --logdir runs/quickstart/tensorboard"
