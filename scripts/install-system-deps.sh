#!/usr/bin/env bash
# Debian packages the tests and benchmarks use: dcmtk (real DICOM peers), PostgreSQL (the
# scale-out index, tested for real), Orthanc and its DICOMweb plugin (the interoperability and
# benchmark peer), iproute2 (network namespaces for Orthanc, which cannot bind to loopback
# alone), dicom3tools (dciodvfy validates the SR and SEG we write), Node.js and npm (two FHIR
# validators, pinned in tests/fhir_node/package-lock.json, installed there with `npm ci`; npm
# also fetches the OHIF viewer, see scripts/fetch-ohif.sh), Chromium (the browser test drives it
# through Playwright; Playwright's own browser download is not used), Prometheus (scrapes
# /metrics in tests/viewer_api/test_metrics.py), wrk (the HTTP load generator of bench/load.py).
# Installs only what is missing.
set -euo pipefail

need=()
command -v storescu >/dev/null 2>&1 && [ -x /usr/bin/storescu ] || need+=(dcmtk)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v wrk >/dev/null 2>&1 || need+=(wrk)

if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# The FHIR validators: exact versions from the committed lock file, into the git-ignored
# node_modules; again only when the lock file changed since the last install.
validators="$(dirname "$0")/../tests/fhir_node"
if ! cmp -s "$validators/package-lock.json" "$validators/node_modules/.installed-lock.json"; then
    (cd "$validators" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$validators/package-lock.json" "$validators/node_modules/.installed-lock.json"
fi
