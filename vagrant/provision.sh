#!/usr/bin/env bash
# Provision one harness VM (run as root by Vagrant): Python >= 3.11, iptables, the store.
#   provision.sh NAME NODES NET_PREFIX
# Installs the wheel uploaded to /tmp/machi-wheel into /opt/machi/venv (its dependencies
# come from PyPI), names the other VMs in /etc/hosts, and creates the harness directories.
# Idempotent: running it again upgrades the store to the newly uploaded wheel.
set -euo pipefail
name=${1:?name}
nodes=${2:?nodes}
prefix=${3:?net prefix}

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in python3 python3-venv iptables iproute2 procps coreutils; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "provision: $name needs Python >= 3.11 (use a Debian 12+ / Ubuntu 24.04+ box)" >&2
  exit 1
}

# The file provisioner nests the directory on a second upload: look one level down too.
wheel=$(ls -t /tmp/machi-wheel/machi_py-*.whl /tmp/machi-wheel/*/machi_py-*.whl 2>/dev/null \
  | head -n1 || true)
[ -n "$wheel" ] || { echo "provision: no wheel in /tmp/machi-wheel" >&2; exit 1; }
if [ ! -x /opt/machi/venv/bin/python ]; then
  python3 -m venv /opt/machi/venv
fi
/opt/machi/venv/bin/pip install --quiet --upgrade --force-reinstall --no-deps "$wheel"
# Its dependencies: from the wheels uploaded next to it when `build-wheel --with-deps` made
# them and they fit this guest, else from the package index.
wheel_dir=$(dirname "$wheel")
if ls "$wheel_dir"/*.whl | grep -qv '/machi_py-' \
   && /opt/machi/venv/bin/pip install --quiet --no-index --find-links "$wheel_dir" "$wheel"; then
  echo "provision: $name installed the dependencies from the uploaded wheels"
else
  /opt/machi/venv/bin/pip install --quiet "$wheel"
fi
ln -sf /opt/machi/venv/bin/machi /usr/local/bin/machi
rm -rf /tmp/machi-wheel

for i in $(seq 1 "$nodes"); do
  line="${prefix}$((10 + i)) n$i"
  grep -qxF "$line" /etc/hosts || echo "$line" >> /etc/hosts
done
install -d -o vagrant -g vagrant /var/tmp/machi-harness /var/tmp/machi-harness/data
echo "provision: $name ready ($(/opt/machi/venv/bin/python --version), $(iptables --version))"
