#!/usr/bin/env bash
# Installs one fixed Trivy release into DEST (default .tools/trivy) after checking the archive
# against the SHA-256 written here, so a re-tagged or replaced release cannot slip in (tags of
# Trivy's GitHub Actions were hijacked in March 2026; this downloads no action and no script).
# To move to a newer Trivy: change both lines below, taking the checksum from the release's
# trivy_<version>_checksums.txt after verifying its signature (docs/deployment.md).
set -euo pipefail
TRIVY_VERSION=0.69.3
TRIVY_SHA256=1816b632dfe529869c740c0913e36bd1629cb7688bd5634f4a858c1d57c88b75 # Linux-64bit

dest=${1:-.tools/trivy}
if [[ -x $dest/trivy && $("$dest/trivy" --version 2>/dev/null) == *"Version: $TRIVY_VERSION"* ]]; then
  echo "trivy $TRIVY_VERSION already in $dest"
  exit 0
fi
[[ $(uname -sm) == "Linux x86_64" ]] || {
  echo "install-trivy.sh: only the Linux x86_64 archive's checksum is pinned" >&2
  exit 1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
archive="trivy_${TRIVY_VERSION}_Linux-64bit.tar.gz"
curl --fail --silent --show-error --location --retry 3 --output "$tmp/$archive" \
  "https://github.com/aquasecurity/trivy/releases/download/v$TRIVY_VERSION/$archive"
echo "$TRIVY_SHA256  $tmp/$archive" | sha256sum --check --strict
mkdir -p "$dest"
tar -xzf "$tmp/$archive" -C "$dest" trivy
"$dest/trivy" --version
