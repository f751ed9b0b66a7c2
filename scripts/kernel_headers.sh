#!/usr/bin/env bash
# The header tree bcc compiles natlens's eBPF program against, merged from Debian's
# linux-headers packages into DEST (default /var/lib/natlens/kernel-headers, where the
# agent looks). The program uses UAPI headers only, so Debian's current header packages
# serve any kernel; bcc wants the common and the architecture's trees merged into one.
# Used by scripts/install.sh and by the Dockerfile's build stage (which copies only the
# include folders into the agent image: no compiler comes along).
set -euo pipefail
DEST=${1:-/var/lib/natlens/kernel-headers}
ARCH=$(dpkg --print-architecture)
[ -f "$DEST/include/linux/kconfig.h" ] && exit 0
common=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-common' | sort -V | tail -1)
if [ -z "$common" ] || [ ! -d "${common%-common}-$ARCH" ]; then
  echo "kernel headers: no Debian linux-headers-$ARCH installed; the eBPF source will fall back" >&2
  exit 0
fi
rm -rf "$DEST.tmp" && mkdir -p "$(dirname "$DEST")"
cp -a "$common" "$DEST.tmp" && cp -a "${common%-common}-$ARCH/." "$DEST.tmp"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "kernel headers: for bcc in $DEST (from $common)"
