#!/usr/bin/env bash
# The CUDA paths, end to end, and the GPU figures, on one GPU in a few minutes:
#
#     bash benchmarks/gpu_check.sh OUT_DIR
#     DEVICE=cpu bash benchmarks/gpu_check.sh OUT_DIR     # the same commands on CPU (slow step 4)
#
# 1. `xdc demo --quick` (device auto -> CUDA): pretraining with bf16 autocast, channels_last_3d,
#    pinned memory and non-blocking copies, then the linear probes, clusters, filters, report.
# 2. `torchrun --nproc_per_node 1 -m xdc.pretrain` on CUDA: the NCCL process group; then a short
#    one with `model.sync_bn=true` (SyncBatchNorm runs on CUDA only) and `optim.lr_scaling=linear`.
# 3. `xdc finetune --mode full` on CUDA from that run's checkpoint.
# 4. benchmarks/train_step.py at the paper's network size (width 64, 8x112x112) and
#    benchmarks/kmeans.py.
# Each step's log and figures land in OUT_DIR; the script stops at the first failure.
set -euo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
device=${DEVICE:-cuda}

step() { echo; echo "=== $1 ($SECONDS s)"; }

step "environment"
"$python" - <<'EOF'
import faiss, torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda,
      "faiss", faiss.__version__, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))
from xdc.clustering.kmeans import use_gpu_default
print("faiss sees", faiss.get_num_gpus(), "GPU(s); k-means on the GPU:", use_gpu_default(),
      "(pip install 'xdc[gpu]': docs/SCALE.md)")
EOF

step "xdc demo --quick on $device"
"$python" -m xdc.cli demo --quick --out "$out/demo" pretrain.device=$device \
    finetune.device=$device > "$out/demo.log" 2>&1 || { tail -40 "$out/demo.log"; exit 1; }
tail -15 "$out/demo.log"

step "torchrun, 1 process (NCCL on cuda, gloo on cpu)"
"$python" -m torch.distributed.run --standalone --nproc_per_node 1 -m xdc.pretrain --config tiny_cpu \
    --data "$out/demo/data/manifest.csv" --out "$out/ddp" device=$device cluster.k_video=4 \
    cluster.k_audio=4 cluster.k_joint=4 > "$out/ddp.log" 2>&1 || { tail -40 "$out/ddp.log"; exit 1; }
tail -8 "$out/ddp.log"
cp "$out/ddp/checkpoints/iteration_01.pt" "$out/cuda_checkpoint.pt"  # CPU loading is checked here

step "torchrun, 1 process, model.sync_bn=true (SyncBatchNorm + NCCL on cuda), lr_scaling=linear"
"$python" -m torch.distributed.run --standalone --nproc_per_node 1 -m xdc.pretrain --config tiny_cpu \
    --data "$out/demo/data/manifest.csv" --out "$out/syncbn" device=$device model.sync_bn=true \
    optim.lr_scaling=linear optim.reference_batch=8 iterations=1 optim.total_epochs=1 \
    cluster.k_video=4 cluster.k_audio=4 cluster.k_joint=4 > "$out/syncbn.log" 2>&1 \
    || { tail -40 "$out/syncbn.log"; exit 1; }
grep "global batch" "$out/syncbn.log"
tail -4 "$out/syncbn.log"
test -f "$out/syncbn/checkpoints/iteration_00.pt"

step "xdc finetune --mode full on $device"
labeled="$out/demo/data/labeled.csv"
"$python" -m xdc.cli finetune --checkpoint "$out/ddp/checkpoints/iteration_01.pt" --modality video \
    --mode full --config tiny --train "$labeled" --val "$labeled" \
    --test "$labeled" --out "$out/finetune" device=$device > "$out/finetune.log" 2>&1 \
    || { tail -40 "$out/finetune.log"; exit 1; }
tail -5 "$out/finetune.log"

step "benchmarks/train_step.py, R(2+1)D-18 at width 64, 8x112x112"
"$python" benchmarks/train_step.py --device $device --width 64 --frames 8 --crop 112 --size 128 \
    --batch-size 32 --steps 30 --num-workers 8 --json "$out/train_step.json"

step "benchmarks/kmeans.py"
"$python" benchmarks/kmeans.py --skip-sklearn --json "$out/kmeans.json"

step "done"
