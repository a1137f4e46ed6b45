#!/usr/bin/env bash
# Draws docs/stats.png, the picture `!llmstats` attaches, from the bundled sample: imports it
# into a fresh database, fine-tunes the embedded base twice (45 s, then 90 s) and plots.
# Usage: docs/stats.sh [path/to/mynah]   (default: a release build, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/mynah}
[ -x "$bin" ] || cargo build --release
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export DATABASE_URL="sqlite://$dir/mynah.db" MYNAH_MODELS_DIR="$dir/models" MYNAH_API_ADDR=off
"$bin" corpus import data/sample/fcc-small-excerpt.jsonl --guild playground
"$bin" train --guild playground --max-minutes 0.75
"$bin" train --guild playground --max-minutes 1.5
"$bin" stats --guild playground --plot docs/stats.png
