#!/usr/bin/env bash
# Download official SAM2.1 checkpoints into checkpoints/.
#   ./download_checkpoint.sh [tiny|small|base_plus|large|all]   (default: tiny)
# Env: SAM2_CHECKPOINT_BASE_URL overrides the download location (a mirror, or a test server);
#      SAM2_CHECKPOINT_DIR the destination; SAM2_DOWNLOAD_HINT is appended to the no-network line.
# Exit codes: 0 done, 1 download failed midway, 2 unknown model, 3 host unreachable.
# Downloads go to <name>.part (resumed if present) and are renamed only when complete.
set -euo pipefail

BASE_URL="${SAM2_CHECKPOINT_BASE_URL:-https://dl.fbaipublicfiles.com/segment_anything_2/092824}"
DEST="${SAM2_CHECKPOINT_DIR:-$(cd "$(dirname "$0")" && pwd)/checkpoints}"

file_for() {
  case "$1" in
    tiny) echo sam2.1_hiera_tiny.pt ;;
    small) echo sam2.1_hiera_small.pt ;;
    base_plus) echo sam2.1_hiera_base_plus.pt ;;
    large) echo sam2.1_hiera_large.pt ;;
    *) echo "unknown model '$1': choose tiny, small, base_plus, large or all" >&2; return 2 ;;
  esac
}

reachable() {  # reachable URL: a quiet check first, so that no network gives one line, not retries
  if command -v curl >/dev/null 2>&1; then
    curl -sfI --connect-timeout 10 -o /dev/null "$1" 2>/dev/null
  else
    wget -q --spider --timeout=10 --tries=1 "$1" 2>/dev/null
  fi
}

fetch() {  # fetch URL OUT: resumable download with a progress bar
  if command -v curl >/dev/null 2>&1; then
    curl -fL --connect-timeout 15 --retry 3 --progress-bar -C - -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget --timeout=15 --tries=3 --continue --show-progress -q -O "$2" "$1"
  else
    echo "neither curl nor wget is installed" >&2; return 1
  fi
}

models=("${@:-tiny}")
[ "${models[0]}" = all ] && models=(tiny small base_plus large)
mkdir -p "$DEST"
for model in "${models[@]}"; do
  name=$(file_for "$model")
  out="$DEST/$name"
  if [ -s "$out" ]; then echo "$out already present"; continue; fi
  if ! reachable "$BASE_URL/$name"; then
    echo "Cannot download $name: $BASE_URL is unreachable (no network?)${SAM2_DOWNLOAD_HINT:-}" >&2
    exit 3
  fi
  echo "Downloading $name from $BASE_URL"
  if ! fetch "$BASE_URL/$name" "$out.part"; then
    if [ -s "$out.part" ]; then
      echo "Download of $name failed; the partial file $out.part is kept, run again to resume" >&2
    else
      rm -f "$out.part"
      echo "Download of $name failed: $BASE_URL is unreachable (no network?)" >&2
    fi
    exit 1
  fi
  mv "$out.part" "$out"
  echo "Saved $out"
done
