#!/usr/bin/env bash
# Confirms that a TensorFlow Serving image (or a running server) serves a tfrec_lm export:
# waits until a version of the model is AVAILABLE, then sends ONE REST predict request to
# serving_default and checks the answer's shape and types.
#
#   serving/check_image.sh IMAGE EXPORT_BASE [options]
#       starts IMAGE with EXPORT_BASE/<model> mounted at /models/<model> (REST published on
#       a free 127.0.0.1 port), checks it, removes the container. Works with the stock
#       tensorflow/serving image (MODEL_NAME is set) and with the images built from
#       serving/Dockerfile and serving/scann/Dockerfile (models.config).
#   serving/check_image.sh --url http://127.0.0.1:8501 [options]
#       checks a server that is already running (TF Serving or python -m tfrec_lm.serve).
#
# options:
#   --model NAME      model name (default tfrec_lm)
#   --history IDS     comma-separated item ids, oldest first (default: one unknown id, which
#                     the export answers with the most popular items)
#   --wait SECONDS    how long to wait for the model to be AVAILABLE (default 120)
#
# Exit status 0 and a line starting with "OK" when the export answers correctly.
set -euo pipefail

MODEL=tfrec_lm
HISTORY="__check_image_unknown_item__"
WAIT=120
URL=""
IMAGE=""
EXPORT_BASE=""

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
die() { echo "FAIL: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --url) URL="${2:?}"; shift 2 ;;
    --model) MODEL="${2:?}"; shift 2 ;;
    --history) HISTORY="${2:?}"; shift 2 ;;
    --wait) WAIT="${2:?}"; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) if [ -z "$IMAGE" ]; then IMAGE="$1"; elif [ -z "$EXPORT_BASE" ]; then EXPORT_BASE="$1"; else usage; fi
       shift ;;
  esac
done

command -v curl >/dev/null || die "curl is needed"
command -v python3 >/dev/null || die "python3 is needed (to check the JSON)"

CONTAINER=""
cleanup() {
  if [ -n "$CONTAINER" ]; then
    if [ "${STATUS:-1}" != 0 ]; then docker logs --tail 40 "$CONTAINER" >&2 || true; fi
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if [ -z "$URL" ]; then
  [ -n "$IMAGE" ] && [ -n "$EXPORT_BASE" ] || usage
  command -v docker >/dev/null || die "docker is needed to start $IMAGE (or pass --url of a running server)"
  MODEL_DIR="$(cd "$EXPORT_BASE" && pwd)/$MODEL"
  [ -d "$MODEL_DIR" ] || die "no $MODEL_DIR (EXPORT_BASE must hold $MODEL/<version>/)"
  ls "$MODEL_DIR" | grep -Eq '^[0-9]+$' || die "no integer version directory in $MODEL_DIR"
  CONTAINER="$(docker run -d -p 127.0.0.1::8501 -v "$MODEL_DIR:/models/$MODEL:ro" \
               -e MODEL_NAME="$MODEL" "$IMAGE")" || die "docker run $IMAGE failed"
  PORT="$(docker port "$CONTAINER" 8501/tcp | head -n 1 | sed 's/.*://')"
  [ -n "$PORT" ] || die "the container publishes no REST port"
  URL="http://127.0.0.1:$PORT"
  echo "started $IMAGE as ${CONTAINER:0:12}, REST at $URL"
fi
URL="${URL%/}"

# 1. Wait for an AVAILABLE version.
deadline=$(( $(date +%s) + WAIT ))
state=""
while :; do
  if status="$(curl -sS --max-time 10 "$URL/v1/models/$MODEL" 2>/dev/null)"; then
    state="$(printf '%s' "$status" | python3 -c '
import json, sys
try:
    answer = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
available = [s["version"] for s in answer.get("model_version_status", []) if s.get("state") == "AVAILABLE"]
print("AVAILABLE " + ",".join(available) if available else answer.get("error", "not available yet"))
' || true)"
    case "$state" in AVAILABLE*) break ;; esac
  fi
  if [ -n "$CONTAINER" ] && [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER" 2>/dev/null)" != true ]; then
    die "the container exited"
  fi
  [ "$(date +%s)" -lt "$deadline" ] || die "model $MODEL not AVAILABLE at $URL after ${WAIT}s (${state:-no answer})"
  sleep 1
done
echo "model $MODEL: version(s) ${state#AVAILABLE } AVAILABLE"

# 2. One predict request. Rows start with one "" / 0 column (see README.md, "Batching").
BODY="$(HISTORY="$HISTORY" python3 -c '
import json, os
ids = [""] + [v.strip() for v in os.environ["HISTORY"].split(",") if v.strip()]
print(json.dumps({"signature_name": "serving_default",
                  "inputs": {"history_item_ids": [ids], "history_timestamps": [[0] * len(ids)]}}))
')"
ANSWER="$(mktemp)"
code="$(curl -sS --max-time 60 -o "$ANSWER" -w '%{http_code}' -H 'Content-Type: application/json' \
        -X POST --data "$BODY" "$URL/v1/models/$MODEL:predict")" || die "POST $URL/v1/models/$MODEL:predict failed"
result="$(python3 - "$ANSWER" "$code" <<'PY'
import json
import sys

path, code = sys.argv[1], sys.argv[2]


def fail(message):
    print(message)
    sys.exit(1)


text = open(path).read()
try:
    answer = json.loads(text)
except ValueError:
    fail(f"HTTP {code}, not JSON: {text[:300]!r}")
if code != "200":
    fail(f"HTTP {code}: {answer.get('error', text[:300])}")
outputs = answer.get("outputs")
if not isinstance(outputs, dict) or not {"item_ids", "scores"} <= set(outputs):
    fail(f"expected outputs item_ids and scores, got {text[:300]!r}")
ids, scores = outputs["item_ids"], outputs["scores"]
if len(ids) != 1 or len(scores) != 1 or len(ids[0]) != len(scores[0]) or not ids[0]:
    fail(f"expected [1, K] item_ids and scores, got {text[:300]!r}")
if not all(isinstance(v, str) and v for v in ids[0]):
    fail(f"item_ids must be non-empty strings: {ids[0]!r}")
if not all(isinstance(v, (int, float)) for v in scores[0]):
    fail(f"scores must be numbers: {scores[0]!r}")
print(f"K={len(ids[0])} item_ids={ids[0][:5]} scores={[round(s, 4) for s in scores[0][:5]]}")
PY
)" || { rm -f "$ANSWER"; die "predict: $result"; }
rm -f "$ANSWER"
STATUS=0
echo "OK $URL model $MODEL serves serving_default: $result"
