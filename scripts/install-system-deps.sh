#!/usr/bin/env bash
# Debian packages the tests and benchmarks use: dcmtk (real DICOM peers), PostgreSQL (the
# scale-out index, tested for real), Orthanc and its DICOMweb plugin (the interoperability and
# benchmark peer), iproute2 (network namespaces for Orthanc, which cannot bind to loopback
# alone), dicom3tools (dciodvfy validates the SR and SEG we write). Installs only what is missing.
set -euo pipefail

need=()
command -v storescu >/dev/null 2>&1 && [ -x /usr/bin/storescu ] || need+=(dcmtk)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
[ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
