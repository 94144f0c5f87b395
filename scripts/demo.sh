#!/usr/bin/env bash
# Start inference_server (SmolLM2-135M-Instruct) and the proxy on :8600; Ctrl-C stops both.
set -euo pipefail
PY=${PY:-.venv/bin/python}
UPSTREAM_PORT=${UPSTREAM_PORT:-8000}
PROXY_PORT=${PROXY_PORT:-8600}

"$PY" -m inference_server --model "$DEMO_MODEL" --host 127.0.0.1 --port "$UPSTREAM_PORT" \
    --served-model-name SmolLM2-135M-Instruct &
UPSTREAM=$!
trap 'kill $UPSTREAM 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$UPSTREAM_PORT/v1/models" >/dev/null && break
  kill -0 $UPSTREAM 2>/dev/null || { echo "inference_server failed to start" >&2; exit 1; }
  sleep 0.5
done

cat <<MSG

  Stained Glass Transform Proxy on http://127.0.0.1:$PROXY_PORT  (docs: http://127.0.0.1:$PROXY_PORT/docs)
  Try, in another terminal:

  curl http://127.0.0.1:$PROXY_PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "mistral-7b-instruct", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 60, "temperature": 0.7, "seed": 123456}'

MSG
# the demo serves /v1/stainedglass (a debugging aid that reveals the transform; off by default)
SGP_SGT_PATH="$DEMO_SGT" SGP_INFERENCE_SERVICE_HOST="http://127.0.0.1:$UPSTREAM_PORT" \
  SGP_ENABLE_STAINEDGLASS="${SGP_ENABLE_STAINEDGLASS:-True}" \
  "$PY" -m gunicorn -c gunicorn.conf.py -b "0.0.0.0:$PROXY_PORT" wsgi:app
