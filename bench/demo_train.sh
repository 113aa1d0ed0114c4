#!/bin/bash
# Train the demo model on the GPU machine (issue 6) and bring back what to commit.
#   bash bench/demo_train.sh start     # data, init model, background job; follows it for up to 9 min
#   bash bench/demo_train.sh follow    # keeps following; when done, packs model + scores + run into $OUT
# MLflow there: a file store (the machine has no MLflow server stack); the run comes back as mlruns.tgz.
set -u
export PYTHONPATH=/tmp/site:$PWD WORKBENCH_HOME=/tmp/wbh HF_HUB_OFFLINE=1 MLFLOW_TRACKING_URI=file:///tmp/mlruns MLFLOW_ALLOW_FILE_STORE=true
if [ "$1" = start ]; then
  rm -rf /tmp/wbh/jobs /tmp/demo /tmp/mlruns  # a fresh run: an earlier one's status must not end the follow loop
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  nohup python3 -m workbench.demo train --out /tmp/demo --workers 14 --train "${TRAIN:-30000}" ${INIT:+--init "$INIT"} \
    --set max_steps="${STEPS:-6000}" dtype=${DTYPE:-bf16-mixed} ${LR:+learning_rate=$LR} > /tmp/demo.log 2>&1 &
fi
end=$((SECONDS + ${FOLLOW_S:-540}))
while [ $SECONDS -lt $end ]; do
  if grep -q -E '"state": "(finished|failed|killed)"' /tmp/wbh/jobs/*/status.json 2>/dev/null; then break; fi
  sleep 20
  p=$(ls /tmp/wbh/jobs/*/progress.json 2>/dev/null | head -1)
  [ -n "$p" ] && python3 -c "import json;d=json.load(open('$p'));h=d.get('history') or [{}];print(d.get('step'),d.get('max_steps'),'eta',d.get('eta_s'),'loss',h[-1].get('loss'))"
done
tail -5 /tmp/demo.log
# The device tool ends a call's processes, the waiting `demo train` with them; the job itself runs in
# its own session and carries on, so the evaluation is done here once it has finished.
if grep -q '"state": "finished"' /tmp/wbh/jobs/*/status.json 2>/dev/null && [ ! -f /tmp/demo/scores.json ]; then
  python3 -m workbench.demo eval /tmp/demo/run/final --data /tmp/demo/data 2>/dev/null > /tmp/demo/scores.json
fi
if [ -s /tmp/demo/scores.json ]; then
  cat /tmp/demo/scores.json
  python3 - <<'PY'
import torch, shutil
from transformers import AutoModelForImageTextToText, AutoProcessor
src = "/tmp/demo/run/final"
m = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32).to(torch.bfloat16)
m.save_pretrained("/tmp/demo-model")
AutoProcessor.from_pretrained(src).save_pretrained("/tmp/demo-model")
PY
  tar -C /tmp -czf $OUT/demo-model.tgz demo-model
  cp /tmp/demo/scores.json $OUT/
  tar -C /tmp --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='*.pth' -czf $OUT/mlruns.tgz mlruns
  cp /tmp/wbh/jobs/*/train.log $OUT/train.log
  cp /tmp/demo/run/final/model.safetensors $OUT/final-fp32.safetensors  # to continue training from
fi
