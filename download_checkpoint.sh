#!/usr/bin/env bash
# Download official SAM2.1 checkpoints into checkpoints/ and check that each one loads.
#   ./download_checkpoint.sh [tiny|small|base_plus|large|all] ...   (default: tiny)
#
# Each file goes to <name>.part (resumed if present), is checked against the server's
# Content-Length and loaded with torch (a dict with a "model" state_dict holding
# "image_encoder.*" weights), and only then renamed to <name>. A file already present is
# left alone (`sam2-service doctor` checks it).
#
# Env: SAM2_CHECKPOINT_BASE_URL  where the files are (default: Meta's 092824 release; a mirror,
#                                or a test server)
#      SAM2_CHECKPOINT_DIR       destination folder (default: checkpoints/ beside this script)
#      SAM2_DOWNLOAD_HINT        text appended to the "unreachable" line
#      SAM2_DOWNLOADER           curl or wget (default: curl if installed, else wget)
#      SAM2_DOWNLOAD_RETRIES     retries of a failed transfer within one run (default 3)
#      SAM2_PYTHON               Python with torch for the load check (default: .venv/bin/python
#                                beside this script, else python3); without torch the check is
#                                skipped with a message, not failed
# Exit codes: 0 done (every file present; load check passed or skipped)
#             1 download failed midway (<name>.part kept: run again to resume), or the server
#               answered with an HTTP error
#             2 usage: unknown model, bad SAM2_DOWNLOADER, or neither curl nor wget installed
#             3 host unreachable (no network?)
#             4 the downloaded file is not a SAM2 checkpoint (moved to <name>.invalid)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")" && pwd)"
BASE_URL="${SAM2_CHECKPOINT_BASE_URL:-https://dl.fbaipublicfiles.com/segment_anything_2/092824}"
DEST="${SAM2_CHECKPOINT_DIR:-$ROOT/checkpoints}"
RETRIES="${SAM2_DOWNLOAD_RETRIES:-3}"

file_for() {
  case "$1" in
    tiny) echo sam2.1_hiera_tiny.pt ;;
    small) echo sam2.1_hiera_small.pt ;;
    base_plus) echo sam2.1_hiera_base_plus.pt ;;
    large) echo sam2.1_hiera_large.pt ;;
    *) echo "unknown model '$1': choose tiny, small, base_plus, large or all" >&2; return 2 ;;
  esac
}

pick_downloader() {  # prints curl or wget; exit 2 if the choice is impossible
  local want="${SAM2_DOWNLOADER:-}"
  case "$want" in
    "") command -v curl >/dev/null 2>&1 && { echo curl; return; }
        command -v wget >/dev/null 2>&1 && { echo wget; return; }
        echo "neither curl nor wget is installed: install one of them" >&2; exit 2 ;;
    curl|wget) command -v "$want" >/dev/null 2>&1 && { echo "$want"; return; }
        echo "SAM2_DOWNLOADER=$want, but $want is not installed" >&2; exit 2 ;;
    *) echo "SAM2_DOWNLOADER must be curl or wget, not '$want'" >&2; exit 2 ;;
  esac
}

size_of() { if [ -f "$1" ]; then wc -c <"$1" | tr -d ' '; else echo 0; fi; }

# probe URL: HEAD request. Sets EXPECTED (Content-Length of the last response, or empty)
# and PROBE_ERR (the tool's error line). Returns 0 ok, 1 HTTP error, 3 unreachable.
probe() {
  local out rc=0 http_error
  if [ "$DL" = curl ]; then
    out=$(curl -sSfIL --connect-timeout 10 --max-time 60 "$1" 2>&1) || rc=$?
    http_error=22
  else
    out=$(wget --spider -S --timeout=10 --tries=1 "$1" 2>&1) || rc=$?
    http_error=8
  fi
  EXPECTED=$(printf '%s\n' "$out" | tr -d '\r' | awk '{ sub(/^ +/, "") }
    /^HTTP\// { n = "" } tolower($1) == "content-length:" { n = $2 } END { print n }')
  case "$EXPECTED" in *[!0-9]*) EXPECTED="" ;; esac
  PROBE_ERR=$(printf '%s\n' "$out" | tr -d '\r' | sed 's/^ *//' \
    | grep -E '^curl: |^HTTP/[0-9.]+ [45][0-9][0-9]|failed|unable to' | tail -n 1 || true)
  [ "$rc" = 0 ] && return 0
  [ "$rc" = "$http_error" ] && return 1
  return 3
}

fetch() {  # fetch URL OUT: resumable download with a progress bar
  if [ "$DL" = curl ]; then
    curl -fL --connect-timeout 15 --speed-limit 1024 --speed-time 60 --retry "$RETRIES" \
      --progress-bar -C - -o "$2" "$1"
  else
    wget --continue --timeout=15 --tries=$((RETRIES + 1)) --waitretry=2 \
      -q --show-progress --progress=bar:force:noscroll -O "$2" "$1"
  fi
}

pick_python() {  # the Python for the load check, or nothing
  if [ -n "${SAM2_PYTHON:-}" ]; then echo "$SAM2_PYTHON"
  elif [ -x "$ROOT/.venv/bin/python" ]; then echo "$ROOT/.venv/bin/python"
  else command -v python3 || true
  fi
}

# Exit 0: a SAM2 checkpoint (prints a summary); 3: not one (prints why); 4: no torch.
LOAD_CHECK='
import sys
try:
    import torch
except Exception:
    sys.exit(4)
try:
    ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
except Exception as exc:
    line = (str(exc).strip().splitlines() or [""])[0]
    print("torch.load failed: %s: %s" % (type(exc).__name__, line)); sys.exit(3)
model = ckpt.get("model") if isinstance(ckpt, dict) else None
if not isinstance(model, dict):
    print("no \"model\" state_dict in it"); sys.exit(3)
if not any(str(k).startswith("image_encoder.") for k in model):
    print("its state_dict has no image_encoder.* weights"); sys.exit(3)
print("%d tensors" % len(model))
'

# check FILE FINAL: the load check. Returns 0 passed or skipped, 4 not a SAM2 checkpoint.
check() {
  local py msg rc=0
  py=$(pick_python)
  if [ -z "$py" ]; then echo "Load check skipped: no python3 found (set SAM2_PYTHON)"; return 0; fi
  msg=$("$py" -c "$LOAD_CHECK" "$1" 2>/dev/null) || rc=$?
  case "$rc" in
    0) echo "Load check passed: a SAM2 checkpoint, $msg" ;;
    3) mv -f "$1" "$2.invalid"
       echo "$(basename "$2") is not a SAM2 checkpoint ($msg); moved to $2.invalid" \
            "(is SAM2_CHECKPOINT_BASE_URL right? a proxy page?)" >&2
       return 4 ;;
    4) echo "Load check skipped: $py has no torch (set SAM2_PYTHON, or run make install)" ;;
    *) echo "Load check skipped: $py could not run it (exit $rc)" ;;
  esac
}

download() {  # download MODEL
  local name out part url have rc=0
  name=$(file_for "$1")
  out="$DEST/$name" part="$DEST/$name.part" url="$BASE_URL/$name"
  if [ -s "$out" ]; then echo "$out already present"; return 0; fi
  probe "$url" || rc=$?
  if [ "$rc" = 3 ]; then
    echo "Cannot download $name: $BASE_URL is unreachable" \
         "(no network? ${PROBE_ERR:-$DL failed})${SAM2_DOWNLOAD_HINT:-}" >&2
    exit 3
  elif [ "$rc" != 0 ]; then
    echo "Cannot download $name: the server refused $url (${PROBE_ERR:-HTTP error})" >&2
    exit 1
  fi
  have=$(size_of "$part")
  if [ -n "$EXPECTED" ] && [ "$have" -gt "$EXPECTED" ]; then
    echo "$part is larger than the server's file ($have > $EXPECTED bytes); starting over"
    rm -f "$part"; have=0
  fi
  if [ -z "$EXPECTED" ] || [ "$have" != "$EXPECTED" ]; then
    if [ "$have" -gt 0 ]; then echo "Resuming $name at byte $have of ${EXPECTED:-?} ($DL)"
    else echo "Downloading $name from $BASE_URL (${EXPECTED:-unknown} bytes, $DL)"; fi
    rc=0; fetch "$url" "$part" || rc=$?
    if [ "$rc" != 0 ]; then
      echo "Download of $name failed ($DL exit $rc); $part ($(size_of "$part") bytes) is kept:" \
           "run again to resume" >&2
      exit 1
    fi
  fi
  have=$(size_of "$part")
  if [ -n "$EXPECTED" ] && [ "$have" != "$EXPECTED" ]; then
    echo "Download of $name is incomplete ($have of $EXPECTED bytes); $part is kept:" \
         "run again to resume" >&2
    exit 1
  fi
  check "$part" "$out" || exit 4
  mv -f "$part" "$out"
  echo "Saved $out"
}

models=("${@:-tiny}")
for m in "${models[@]}"; do
  case "$m" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    all) models=(tiny small base_plus large); break ;;
    *) file_for "$m" >/dev/null || exit 2 ;;
  esac
done
DL=$(pick_downloader)
mkdir -p "$DEST"
for m in "${models[@]}"; do download "$m"; done
