#!/usr/bin/env bash
# Times every form of each workload in benches/forms/ side by side with `lossc bench` (loss + gradient,
# JIT, two threads) and prints, per workload, each form's fastest call and median call over ROUNDS rounds
# (the forms alternate within a round), and the ratio of its fastest call to the fastest form's.
# Usage: tools/bench_forms.sh [lossc binary] [rounds]   (default: target/release/lossc, 3 rounds; build it
# with `cargo build --release` first). On a shared machine the medians of one program move by 1.5x from
# minute to minute; the fastest calls, alternated, are what the ratios compare.
set -euo pipefail
cd "$(dirname "$0")/.."
lossc=${1:-target/release/lossc}
rounds=${2:-3}
declare -A shapes=(
  [cross_entropy]="N=8192,C=1000"
  [z_loss]="N=8192,C=1000"
  [kl_dro]="N=8192,C=1000"
  [nt_xent]="B=1024,D=128"
  [anyloss_f1]="N=1000000"
  [ldr_kl]="N=8192,C=1000"
  [multi_similarity]="B=512,D=128"
  [focal]="N=8192,C=1000"
  [gce]="N=8192,C=1000"
  [label_smoothing]="N=8192,C=1000"
  [distill]="N=8192,C=1000"
  [multi_margin]="N=8192,C=1000"
  [triplet_margin]="N=8192,D=128"
)
for file in benches/forms/*.lx; do
  workload=$(basename "$file" .lx)
  shape=${shapes[$workload]:?no shape for $workload}
  echo "## $workload ($shape)"
  losses=$(grep -oE '^loss [a-z_0-9]+' "$file" | cut -d' ' -f2)
  results=()
  for round in $(seq "$rounds"); do
    for loss in $losses; do
      times=$("$lossc" bench "$file" --loss "$loss" --shape "$shape" --threads 2 --json |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print("%.3f %.2f" % (d["min_ms"], d["median_ms"]))')
      results+=("$loss $times")
    done
  done
  printf '%s\n' "${results[@]}" | awk '
    { if (!($1 in lo) || $2 < lo[$1]) lo[$1] = $2; med[$1] = med[$1] " " $3; if (!($1 in seen)) { order[n++] = $1; seen[$1] = 1 } }
    END {
      best = -1; for (i = 0; i < n; i++) if (best < 0 || lo[order[i]] < best) best = lo[order[i]]
      for (i = 0; i < n; i++) { f = order[i]; printf "| %-20s | fastest %8.3f ms | medians%s ms | %5.2fx |\n", f, lo[f], med[f], lo[f] / best }
    }'
done
