#!/usr/bin/env bash
# Installs the local servers the tests, the demo and the benchmark run
# against: versitygw and MinIO (S3) and local-aws-sqs (SQS). Idempotent and
# quick once installed. Everything lands in .testenv/ inside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSITYGW_VERSION=v1.8.0
# MinIO's module has no tagged versions: this pseudo-version is the
# commit tested (see README, "Store compatibility").
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
LOCAL_SQS_VERSION=2.0.2
mkdir -p .testenv/bin

if [ ! -x .testenv/bin/versitygw ] || [ "$(cat .testenv/bin/versitygw.version 2>/dev/null)" != "$VERSITYGW_VERSION" ]; then
  echo "testenv: installing versitygw $VERSITYGW_VERSION (first build takes a few minutes)" >&2
  GOBIN="$PWD/.testenv/bin" go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
  echo "$VERSITYGW_VERSION" > .testenv/bin/versitygw.version
fi

if [ ! -x .testenv/bin/minio ] || [ "$(cat .testenv/bin/minio.version 2>/dev/null)" != "$MINIO_VERSION" ]; then
  echo "testenv: installing MinIO $MINIO_VERSION (first build takes about 6 minutes on 2 cores)" >&2
  GOBIN="$PWD/.testenv/bin" go install "github.com/minio/minio@$MINIO_VERSION"
  echo "$MINIO_VERSION" > .testenv/bin/minio.version
fi

if [ ! -f .testenv/sqs/node_modules/local-aws-sqs/package.json ] || \
   ! grep -q "\"version\": \"$LOCAL_SQS_VERSION\"" .testenv/sqs/node_modules/local-aws-sqs/package.json; then
  command -v npm >/dev/null || { echo "testenv: npm is required (install Node.js 18 or later)" >&2; exit 1; }
  echo "testenv: installing local-aws-sqs $LOCAL_SQS_VERSION" >&2
  npm install --silent --no-audit --no-fund --prefix .testenv/sqs "local-aws-sqs@$LOCAL_SQS_VERSION" >&2
fi
cp scripts/sqs-server.mjs .testenv/sqs/sqs-server.mjs

# DynamoDB for the cluster mode's tests: dynalite, in memory.
DYNALITE_VERSION=4.0.0
if [ ! -f .testenv/dynalite/node_modules/dynalite/package.json ] || \
   ! grep -q "\"version\": \"$DYNALITE_VERSION\"" .testenv/dynalite/node_modules/dynalite/package.json; then
  command -v npm >/dev/null || { echo "testenv: npm is required (install Node.js 18 or later)" >&2; exit 1; }
  echo "testenv: installing dynalite $DYNALITE_VERSION" >&2
  npm install --silent --no-audit --no-fund --prefix .testenv/dynalite "dynalite@$DYNALITE_VERSION" >&2
fi
