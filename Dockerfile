# natlens images, one per process: `--target agent` (deploy/daemonset.yaml) and
# `--target collector` (deploy/collector.yaml). `make image` builds both with podman
# (scripts/image.sh); with Docker:
#   docker build --target agent -t natlens-agent:0.1.0 .
#   docker build --target collector -t natlens-collector:0.1.0 .
# Neither carries a compiler, a browser or test tools: the agent needs Python, the hook
# source's BPF object (compiled in the bpf stage) and libbpf to load it, bcc (which
# brings its own LLVM) and a UAPI header tree for the fallback ebpf source, the rule
# tools and the packages the agent imports; the collector Python and every natlens
# dependency.
#
# pip may reach PyPI through a TLS-intercepting proxy whose CA is not in Debian's
# bundle: give the bundle to trust as the build secret `extra-ca` (podman/docker build
# --secret id=extra-ca,src=FILE; scripts/image.sh passes $PIP_CERT's). A secret, not a
# build argument: a bundle is larger than one argument may be, and no layer keeps it.
ARG BASE=debian:12.8-slim

# ---------------------------------------------------------------- build stages
FROM ${BASE} AS python
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions follow the base's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY scripts/requirements.py scripts/kernel_headers.sh scripts/

FROM python AS headers
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends "linux-headers-$(dpkg --print-architecture)" \
 && rm -rf /var/lib/apt/lists/*
# Only the include folders: bcc needs nothing else of the tree.
RUN bash scripts/kernel_headers.sh /tmp/headers \
 && arch=$(uname -m | sed 's/x86_64/x86/; s/aarch64/arm64/') \
 && mkdir -p "/opt/kernel-headers/arch/$arch" \
 && cp -a /tmp/headers/include /opt/kernel-headers/ \
 && cp -a "/tmp/headers/arch/$arch/include" "/opt/kernel-headers/arch/$arch/"

# The hook source's BPF object: compiled here once, with CO-RE relocations, so the agent
# image carries no compiler and needs no kernel headers for it (libbpf fits it to the
# node's kernel from /sys/kernel/btf/vmlinux when the agent loads it).
FROM python AS bpf
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libbpf-dev linux-libc-dev \
 && rm -rf /var/lib/apt/lists/*
COPY agent/sources/hook.bpf.c agent/sources/ctnetlink_walk.h agent/sources/
COPY scripts/build_bpf.sh scripts/
RUN bash scripts/build_bpf.sh /opt/hook.bpf.o

# A venv per image, each at the path it runs from (a venv cannot move): the packages
# first (a layer that survives source changes), then natlens, then pip goes.
FROM python AS agent-venv
RUN --mount=type=secret,id=extra-ca,required=false \
    if [ -f /run/secrets/extra-ca ]; then export PIP_CERT=/run/secrets/extra-ca; fi \
 && python3 -m venv --system-site-packages /opt/natlens/venv \
 && python3 scripts/requirements.py agent > /tmp/requirements.txt \
 && /opt/natlens/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      -c requirements.lock -r /tmp/requirements.txt
COPY natlens natlens
COPY agent agent
COPY collector collector
COPY proto proto
COPY lab lab
COPY --from=bpf /opt/hook.bpf.o agent/sources/hook.bpf.o
RUN --mount=type=secret,id=extra-ca,required=false \
    if [ -f /run/secrets/extra-ca ]; then export PIP_CERT=/run/secrets/extra-ca; fi \
 && /opt/natlens/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps . \
 && /opt/natlens/venv/bin/pip uninstall -q -y pip setuptools

FROM python AS collector-venv
RUN --mount=type=secret,id=extra-ca,required=false \
    if [ -f /run/secrets/extra-ca ]; then export PIP_CERT=/run/secrets/extra-ca; fi \
 && python3 -m venv /opt/natlens/venv \
 && python3 scripts/requirements.py all > /tmp/requirements.txt \
 && /opt/natlens/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      -c requirements.lock -r /tmp/requirements.txt
COPY natlens natlens
COPY agent agent
COPY collector collector
COPY proto proto
COPY lab lab
RUN --mount=type=secret,id=extra-ca,required=false \
    if [ -f /run/secrets/extra-ca ]; then export PIP_CERT=/run/secrets/extra-ca; fi \
 && /opt/natlens/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps . \
 && /opt/natlens/venv/bin/pip uninstall -q -y pip setuptools

# ---------------------------------------------------------------- agent
FROM ${BASE} AS agent
ENV DEBIAN_FRONTEND=noninteractive
# bcc's Python module is Debian's (python3-bpfcc): the agent's venv sees the system's
# packages for it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-bpfcc libbpf1 iptables \
      nftables ipvsadm iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=headers /opt/kernel-headers /var/lib/natlens/kernel-headers
COPY --from=agent-venv /opt/natlens/venv /opt/natlens/venv
ENV PATH=/opt/natlens/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
LABEL io.natlens.image=agent
# The DaemonSet runs it as uid 0 with NET_ADMIN, BPF, PERFMON and SYS_ADMIN only
# (Kubernetes gives added capabilities to root only).
HEALTHCHECK --interval=30s --timeout=5s CMD ["natlens", "--version"]
ENTRYPOINT ["natlens"]
CMD ["agent", "--help"]

# ---------------------------------------------------------------- collector
FROM ${BASE} AS collector
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 natlens \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/natlens --create-home natlens
COPY --from=collector-venv /opt/natlens/venv /opt/natlens/venv
ENV PATH=/opt/natlens/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
LABEL io.natlens.image=collector
USER 10001
WORKDIR /var/lib/natlens
HEALTHCHECK --interval=30s --timeout=5s CMD ["natlens", "--version"]
ENTRYPOINT ["natlens"]
CMD ["collector", "--help"]
