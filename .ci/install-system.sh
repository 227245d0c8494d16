#!/usr/bin/env bash
# Installs the system packages the node's tests and benchmarks need on Debian/Ubuntu:
# the real DICOM peers (dcmtk, Orthanc with its DICOMweb and GDCM plug-ins), the dicom3tools
# conformance checkers, PostgreSQL, and Python's venv module. Used by .ci/run and by the README's set-up.
set -euo pipefail

PACKAGES=(
  dcmtk            # storescu, storescp, echoscu, dcmdump, dsrdump, dcmcjpls, ...
  dicom3tools      # dciodvfy, dcentvfy
  pixelmed-apps    # /usr/share/java/pixelmed.jar: DicomInstanceValidator, DicomSRValidator (AIR)
  default-jre-headless # java, to run the PixelMed validators
  orthanc          # /usr/sbin/Orthanc, the PACS in the integration tests
  orthanc-dicomweb # QIDO-RS / WADO-RS / STOW-RS plug-in
  orthanc-gdcm     # JPEG 2000 (and other) decoding plug-in
  postgresql       # PostgreSQL 15 server binaries: the tests start their own in a temp folder
  chromium         # headless browser for the OHIF and dashboard tests (driven by Playwright)
  python3-venv     # python3 -m venv (not part of Debian's python3)
  python3-pip
  ca-certificates
)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-system.sh: run as root or install sudo" >&2
    exit 1
  fi
  SUDO=(sudo)
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system.sh: apt-get not found; install these packages by hand: ${PACKAGES[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
# npm fetches the prebuilt OHIF viewer (deploy/fetch-ohif.sh); use the machine's own if present.
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)
"${SUDO[@]}" apt-get install -y --no-install-recommends "${PACKAGES[@]}"
