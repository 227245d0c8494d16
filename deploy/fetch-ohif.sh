#!/usr/bin/env bash
# Fetch the prebuilt OHIF viewer (no build step) into vendor/ohif/dist, which the node's web app
# serves at / when [web] enabled = true. The npm tarball's package/dist is the complete viewer;
# its app-config.js is replaced at serve time by one generated for the node's own origin.
#   deploy/fetch-ohif.sh                 OHIF 3.13.2 into vendor/ohif/dist
#   OHIF_VERSION=3.x.y deploy/fetch-ohif.sh
#   OHIF_DEST=/srv/ohif deploy/fetch-ohif.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OHIF_VERSION="${OHIF_VERSION:-3.13.2}"
DEST="${OHIF_DEST:-vendor/ohif/dist}"

if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-ohif: npm is needed (Debian: apt-get install npm)" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetch-ohif: downloading @ohif/app@${OHIF_VERSION}"
tarball="$(cd "$work" && npm pack --silent "@ohif/app@${OHIF_VERSION}" | tail -n 1)"
tar -xzf "$work/$tarball" -C "$work" package/dist
if [ ! -f "$work/package/dist/index.html" ]; then
  echo "fetch-ohif: package/dist/index.html missing from $tarball" >&2
  exit 1
fi

# Swap in the new copy whole, so a failed fetch never leaves a half-written viewer behind.
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.new"
mv "$work/package/dist" "$DEST.new"
echo "$OHIF_VERSION" > "$DEST.new/OHIF_VERSION"
rm -rf "$DEST.old"
if [ -e "$DEST" ]; then mv "$DEST" "$DEST.old"; fi
mv "$DEST.new" "$DEST"
rm -rf "$DEST.old"
echo "fetch-ohif: OHIF ${OHIF_VERSION} in $DEST ($(du -sh "$DEST" | cut -f1))"
