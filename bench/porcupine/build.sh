#!/bin/sh
# Builds bench/porcupine/bin/porcupine-check (needs `go`, e.g. Debian's golang-go, and
# porcupine's source in third_party/porcupine: see README.md). No network is used.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -f "$here/third_party/porcupine/checker.go" ]; then
    echo "build.sh: porcupine's source is missing from $here/third_party/porcupine (see README.md)" >&2
    exit 2
fi
cp "$here/machi_export.go.txt" "$here/third_party/porcupine/machi_export.go"
cd "$here"
GOFLAGS=-mod=mod GOPROXY=off GOTOOLCHAIN=local go build -o bin/porcupine-check ./cmd/porcupine-check
echo "$here/bin/porcupine-check"
