#!/bin/sh
# Sample `pacs serve` (one receiver, no inference workers) with py-spy at 200 Hz while dcmtk's
# storescu sends FOLDER over one association; writes collapsed stacks to OUT and prints where
# the time goes (bench/profile_summary.py).
# Usage: bench/profile_ingest.sh FOLDER OUT
set -eu
folder=$1
out=$2
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
port=${PACS_PROFILE_PORT:-11199}
PACS_HOME=$home PACS_DICOM_PORT=$port PACS_HTTP_PORT=$((port + 1)) PACS_RECEIVERS=1 \
    PACS_WORKERS=0 py-spy record -r 200 -f raw -o "$out" --nonblocking -- \
    python -m pacs.cli serve 2>"$home/serve.log" &
spy=$!
until /usr/bin/echoscu -aec PACS 127.0.0.1 "$port" 2>/dev/null; do
    sleep 0.2
done
TCP_NODELAY=1 /usr/bin/storescu -aec PACS +sd +r 127.0.0.1 "$port" "$folder"
kill -INT "$(pgrep -P $spy)"
wait $spy || true
python bench/profile_summary.py "$out" "$(find "$folder" -type f | wc -l)"

