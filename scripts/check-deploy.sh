#!/usr/bin/env bash
# Checks the deployment files: alert rules with promtool, the unit with
# systemd-analyze (verify, and the offline security exposure score), the
# dashboard's JSON, and that check-config accepts the example config.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "check-deploy: installing promtool (Debian package prometheus)" >&2
    (apt-get install -y -q prometheus >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null; })
  fi
fi
command -v promtool >/dev/null || { echo "check-deploy: promtool is required (apt-get install prometheus)" >&2; exit 1; }
promtool check rules deploy/prometheus/alerts.yml

python3 -c 'import json,sys; d=json.load(open("deploy/grafana/s3replicad.json")); assert d["panels"], "no panels"' \
  || { echo "check-deploy: dashboard is not valid JSON" >&2; exit 1; }
echo "dashboard: ok"

command -v systemd-analyze >/dev/null || { echo "check-deploy: systemd-analyze is required" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/s3replicad" ./cmd/s3replicad
# verify needs the ExecStart binary to exist at its path: check a copy
# whose paths point at the freshly built binary.
sed "s#/usr/local/bin/s3replicad#$tmp/s3replicad#g" deploy/systemd/s3replicad.service > "$tmp/s3replicad.service"
out=$(systemd-analyze verify "$tmp/s3replicad.service" 2>&1 || true)
if echo "$out" | grep -v -e 'Failed to open' -e 'No such file' -e '^$' | grep -q .; then
  echo "systemd-analyze verify:"; echo "$out"; exit 1
fi
echo "systemd-analyze verify: ok"
score=$(systemd-analyze security --offline=true "$tmp/s3replicad.service" 2>/dev/null | sed -n 's/.*Overall exposure level[^:]*: *\([0-9.]*\).*/\1/p')
echo "systemd-analyze security exposure: ${score:-unknown}"
if [ -n "$score" ] && awk -v s="$score" 'BEGIN{exit !(s > 2.0)}'; then
  echo "check-deploy: exposure $score is above 2.0" >&2; exit 1
fi

# The example config is accepted once its environment values are given.
S3REPLICAD_QUEUE_URL=https://sqs.us-east-1.amazonaws.com/123456789012/s3-events \
DR_ENDPOINT=https://s3.example.net:9000 DR_ACCESS_KEY=AKEXAMPLE DR_SECRET_KEY=example-secret \
SOURCE_BUCKET=source-bucket DR_BUCKET=dr-bucket \
  "$tmp/s3replicad" policy -config deploy/config.example.yaml >/dev/null
echo "example config: ok"
