#!/usr/bin/env bash
# `make image`: natlens's two images (natlens-agent:VERSION, natlens-collector:VERSION),
# built with podman on this machine. Layers are cached, so a rebuild after a source
# change only redoes the last steps.
#
# No registry is reachable here, so the base is made from Debian's packages
# (debootstrap --variant=minbase, slimmed as Debian's -slim images are, imported as
# localhost/natlens-base:bookworm-slim) unless
# BASE names another image (debian:12.8-slim where a registry is at hand). podman runs
# with runc (crun refuses hybrid cgroups), host networking and ulimits within the host's
# hard limits. pip in the build trusts $EXTRA_CA (default: $PIP_CERT, the bundle the
# host's pip trusts, for a TLS-intercepting proxy).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
BASE=${BASE:-localhost/natlens-base:bookworm-slim}
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

if ! "${PODMAN[@]}" image exists "$BASE"; then
  if [[ "$BASE" != localhost/natlens-base:* ]]; then
    echo "image: base $BASE is not here and cannot be made by debootstrap" >&2
    exit 1
  fi
  root=$(mktemp -d /var/tmp/natlens-base.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "image: debootstrap bookworm (minbase) for $BASE"
  debootstrap --variant=minbase bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  # as Debian's -slim images: no documentation or translations, now or from later installs
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    > "$root"/etc/dpkg/dpkg.cfg.d/natlens-slim
  tar -C "$root" -c . | "${PODMAN[@]}" import - "$BASE" >/dev/null
fi

ca=()
extra=${EXTRA_CA:-${PIP_CERT:-}}
if [ -n "$extra" ] && [ -f "$extra" ]; then
  ca=(--secret "id=extra-ca,src=$extra")
fi
for target in agent collector; do
  echo "image: natlens-$target:$VERSION"
  "${PODMAN[@]}" build -q --format docker --network host "${LIMITS[@]}" --layers --build-arg "BASE=$BASE" \
    "${ca[@]}" --target "$target" -t "natlens-$target:$VERSION" . >/dev/null
done
# the images these replaced (the build stages' layers stay, as the cache)
"${PODMAN[@]}" image prune -f --filter label=io.natlens.image >/dev/null
"${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "natlens-(agent|collector):$VERSION"
