#!/usr/bin/env bash
# Times every form of each workload in benches/forms/ side by side with `lossc bench` (loss + gradient,
# JIT, every core) and prints, per workload, each form's median and its ratio to the fastest form.
# Usage: tools/bench_forms.sh [lossc binary]   (default: target/release/lossc; build it with
# `cargo build --release` first). Run on a quiet machine: the ratios are what matters.
set -euo pipefail
cd "$(dirname "$0")/.."
lossc=${1:-target/release/lossc}
declare -A shapes=(
  [cross_entropy]="N=8192,C=1000"
  [z_loss]="N=8192,C=1000"
  [kl_dro]="N=8192,C=1000"
  [nt_xent]="B=1024,D=128"
  [anyloss_f1]="N=1000000"
  [ldr_kl]="N=8192,C=1000"
  [multi_similarity]="B=512,D=128"
)
for file in benches/forms/*.lx; do
  workload=$(basename "$file" .lx)
  shape=${shapes[$workload]:?no shape for $workload}
  echo "## $workload ($shape)"
  results=()
  for loss in $(grep -oE '^loss [a-z_0-9]+' "$file" | cut -d' ' -f2); do
    median=$("$lossc" bench "$file" --loss "$loss" --shape "$shape" | awk '/median/ {print $2}')
    results+=("$loss $median")
  done
  best=$(printf '%s\n' "${results[@]}" | awk 'NR == 1 || $2 < b {b = $2} END {print b}')
  printf '%s\n' "${results[@]}" | awk -v b="$best" '{printf "| %-20s | %9.3f ms | %5.2fx |\n", $1, $2, $2 / b}'
done
