#!/usr/bin/env bash
# One source of truth for what natlens needs on a Debian machine: used by `make install`,
# by CI (.ci/run → make test → make install) and by the Dockerfile.
# Idempotent: apt-get runs only when a package is missing, pip only when the lock changed.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=$(dpkg --print-architecture)
APT_PACKAGES=(iptables nftables conntrack hping3 tcpdump iproute2 util-linux procps
              python3 python3-venv python3-dev python3-bpfcc bpfcc-tools chromium
              "linux-headers-$ARCH" podman runc debootstrap uidmap postgresql
              prometheus clang llvm libbpf-dev libbpf1 bpftool iperf3)
VENV=${VENV:-.venv}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install: need root to apt-get install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc compiles the eBPF program against a kernel header tree (scripts/kernel_headers.sh).
if [ "$(id -u)" = 0 ]; then
  bash scripts/kernel_headers.sh /var/lib/natlens/kernel-headers
fi

# The hook source's BPF object, compiled once here (CO-RE: no kernel headers needed).
src=agent/sources/hook.bpf.c obj=agent/sources/hook.bpf.o
if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ agent/sources/ctnetlink_walk.h -nt "$obj" ] \
   || [ scripts/build_bpf.sh -nt "$obj" ]; then
  bash scripts/build_bpf.sh "$obj"
fi

# bcc (Debian's python3-bpfcc) lives in the system Python's dist-packages, so the venv
# is built from /usr/bin/python3 and sees system site-packages.
stamp="$VENV/.natlens-installed"
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
echo "$want" > "$stamp"
echo "install: ready ($VENV)"
