#!/usr/bin/env bash
# The prebuilt OHIF viewer (npm package @ohif/app, its dist/ folder) into a git-ignored folder,
# served by `pacs serve` on the same origin as the API (viewer_api/ohif.py). Nothing is built:
# `npm pack` fetches the published tarball, whose SHA-512 must equal the one pinned here (the
# registry's dist.integrity for this version), and its dist/ is unpacked as it is.
# Runs again only when the pinned version or checksum changes.
#
# Usage: scripts/fetch-ohif.sh DESTINATION   (the Makefile uses build/ohif)
set -euo pipefail

OHIF_VERSION=3.13.2
OHIF_INTEGRITY=sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==

destination="${1:?usage: $0 DESTINATION}"
stamp="$destination/.fetched"
wanted="@ohif/app@$OHIF_VERSION $OHIF_INTEGRITY"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && [ -f "$destination/index.html" ]; then
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tarball="$work/ohif-app-$OHIF_VERSION.tgz"
if command -v npm >/dev/null 2>&1; then  # npm's registry settings (a mirror, a proxy) apply
    (cd "$work" && npm pack --silent --loglevel=error "@ohif/app@$OHIF_VERSION" >/dev/null)
else  # before `make system-deps` installed npm: the same tarball from the public registry
    python3 -c 'import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)' "https://registry.npmjs.org/@ohif/app/-/app-$OHIF_VERSION.tgz" "$tarball"
fi
actual="sha512-$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")"
if [ "$actual" != "$OHIF_INTEGRITY" ]; then
    echo "@ohif/app@$OHIF_VERSION: checksum $actual, expected $OHIF_INTEGRITY; refusing it" >&2
    exit 1
fi
tar -xzf "$tarball" -C "$work" package/dist
rm -rf "$destination"
mkdir -p "$(dirname "$destination")"
mv "$work/package/dist" "$destination"
echo "$wanted" >"$stamp"
echo "OHIF $OHIF_VERSION in $destination"
