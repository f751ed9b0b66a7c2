#!/usr/bin/env bash
# Compile the hook source's BPF program once, at install or image build time:
#   scripts/build_bpf.sh [OUT]   (default: agent/sources/hook.bpf.o)
# The object carries CO-RE relocations; libbpf fits it to the running kernel's BTF when
# the agent loads it, so the agent needs neither a compiler nor kernel headers.
set -euo pipefail
cd "$(dirname "$0")/.."
src=agent/sources/hook.bpf.c
out=${1:-agent/sources/hook.bpf.o}
multiarch=$(gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")
clang -O2 -g -target bpf -Wall -Werror -D__TARGET_ARCH_x86 -I agent/sources \
  -I "/usr/include/$multiarch" -c "$src" -o "$out.tmp"
# Keep BTF (CO-RE needs it) but drop the DWARF line info: a smaller object.
llvm-strip -g "$out.tmp"
mv "$out.tmp" "$out"
