#!/bin/bash
# One GPU call (under 10 min) of demo-model training (issue 6). Carry `.whl` (MLflow skinny and
# what it needs that the GPU machine lacks, see bench/README.md).
#   GROW=8,6 HARD=0.5 STEPS=4000 LR=0.0005 TRAIN=100000 bash bench/demo_stage.sh
# Continues from INIT (default bench/demo-start) on freshly generated data (seed 2026), optionally
# grown first (GROW=text,vision layers: added layers start as the identity, workbench.demo.grow),
# evaluates on the held-out split and packs into $OUT what to commit. If the deadline comes first,
# the job is cancelled and its last checkpoint evaluated.
set -u
deadline=$((SECONDS + ${BUDGET_S:-530}))
rm -rf /tmp/demo /tmp/wbh /tmp/mlruns /tmp/grown /tmp/demo-model  # a warm machine keeps /tmp from the last call
export PYTHONPATH=/tmp/site:$PWD WORKBENCH_HOME=/tmp/wbh HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
  MLFLOW_TRACKING_URI=file:///tmp/mlruns MLFLOW_ALLOW_FILE_STORE=true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > /tmp/pip.log 2>&1 || { tail -20 /tmp/pip.log; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
init=${INIT:-bench/demo-start}
if [ -n "${GROW:-}" ]; then
  python3 -m workbench.demo grow "$init" /tmp/grown --text-layers "${GROW%,*}" --vision-layers "${GROW#*,}" 2>&1 | tail -1
  init=/tmp/grown
fi
python3 -m workbench.demo train --out /tmp/demo --workers 14 --train "${TRAIN:-100000}" --init "$init" --hard "${HARD:-0}" \
  --set max_steps="${STEPS:-3000}" learning_rate="${LR:-0.0004}" dtype="${DTYPE:-bf16-mixed}" save_steps=500 \
  > /tmp/demo.log 2>&1 &
while [ $SECONDS -lt $deadline ] && [ ! -s /tmp/demo/scores.json ]; do
  sleep 20
  p=$(ls /tmp/wbh/jobs/*/progress.json 2>/dev/null | head -1)
  [ -n "$p" ] && python3 -c "import json;d=json.load(open('$p'));h=d.get('history') or [{}];print($SECONDS,d.get('step'),d.get('max_steps'),'eta',d.get('eta_s'),'loss',h[-1].get('loss'))"
done
final=/tmp/demo/run/final
if [ ! -s /tmp/demo/scores.json ]; then  # out of time: stop the job, evaluate its last checkpoint
  python3 -c "from workbench import jobs; [j.cancel() for j in jobs.list() if j.state in ('starting', 'running')]"
  final=$(ls -d /tmp/demo/run/checkpoint-* | sort -t- -k2 -n | tail -1)
  for f in "$init"/*.json "$init"/*.jinja; do [ -e "$final/$(basename $f)" ] || cp "$f" "$final/"; done
  python3 -m workbench.demo eval "$final" --data /tmp/demo/data 2>/dev/null > /tmp/demo/scores.json
  echo "cancelled at the deadline; evaluated $final"
fi
cat /tmp/demo/scores.json | head -60
tail -3 /tmp/demo.log
python3 -m workbench.demo bf16 "$final" /tmp/demo-model --processor-from "$init"
tar -C /tmp -czf $OUT/demo-model.tgz demo-model
cp /tmp/demo/scores.json $OUT/
cp /tmp/wbh/jobs/*/train.log /tmp/
tar -C /tmp --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='*.pth' -czf $OUT/logs.tgz mlruns demo.log train.log
