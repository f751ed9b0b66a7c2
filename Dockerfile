# natlens agent and collector image. There is no container engine on the build
# machines, so this file is linted (hadolint) but not built there; it runs the same
# install script as `make install` and CI.
FROM debian:12.8-slim

ENV DEBIAN_FRONTEND=noninteractive VENV=/opt/natlens/.venv
WORKDIR /opt/natlens
COPY . /opt/natlens
RUN apt-get update \
 && apt-get install -y --no-install-recommends make=4.3-4.1 \
 && bash scripts/install.sh \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/natlens/.venv/bin:$PATH
# The collector runs as this user; the agent's DaemonSet sets uid 0 with only the
# capabilities it needs (Kubernetes gives added capabilities to root only).
RUN useradd --system --uid 10001 --home-dir /var/lib/natlens --create-home natlens
USER 10001

HEALTHCHECK --interval=30s --timeout=5s CMD ["natlens", "--version"]
ENTRYPOINT ["natlens"]
CMD ["agent", "--help"]
