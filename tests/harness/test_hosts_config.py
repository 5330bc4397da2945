"""Host providers without hosts: the TOML hosts file, `vagrant ssh-config`, the Vagrantfile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.hosts import ssh, vagrant
from harness.hosts.base import HostSpec

REPO = Path(__file__).resolve().parents[2]

SSH_CONFIG_SAMPLE = """\
Host n1
  HostName 127.0.0.1
  User vagrant
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/ann/my vms/.vagrant/machines/n1/virtualbox/private_key"
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host n2
  HostName 127.0.0.1
  User vagrant
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/ann/vms/.vagrant/machines/n2/virtualbox/private_key
  IdentitiesOnly yes
  LogLevel FATAL

Host n10
  HostName 192.168.121.40
  User vagrant
  Port 22
  IdentityFile /k10
"""


def test_vagrant_ssh_config_becomes_host_specs() -> None:
    """Each Host block gives the forwarded SSH endpoint and the VM's private cluster address."""
    specs = vagrant.parse_ssh_config(SSH_CONFIG_SAMPLE)
    assert [s.name for s in specs] == ["n1", "n2", "n10"]
    n1, n2, n10 = specs
    assert (n1.address, n1.port, n1.user) == ("127.0.0.1", 2222, "vagrant")
    assert n1.key_path == "/home/ann/my vms/.vagrant/machines/n1/virtualbox/private_key"
    assert n1.cluster_address == "192.168.56.11" and n1.peer_address == "192.168.56.11"
    assert n1.accept_unknown_host_key is True and n1.sudo is True
    assert (n2.port, n2.cluster_address) == (2200, "192.168.56.12")
    assert n10.accept_unknown_host_key is False  # no StrictHostKeyChecking no: keep checking
    with pytest.raises(vagrant.VagrantError):
        vagrant.parse_ssh_config("# nothing\n")


def test_hosts_toml_with_defaults_and_overrides() -> None:
    """Defaults apply to every host; per-host keys win; cluster_address defaults to address."""
    specs = ssh.parse_hosts_toml(
        """
        [defaults]
        user = "admin"
        key = "~/.ssh/id_ed25519"
        sudo = true
        work_dir = "/var/tmp/mh"
        data_dir = "/var/tmp/mh/data"

        [[hosts]]
        name = "n1"
        address = "203.0.113.11"
        cluster_address = "10.0.0.11"

        [[hosts]]
        name = "n2"
        address = "203.0.113.12"
        port = 2222
        user = "root"
        """
    )
    assert specs[0] == HostSpec(
        name="n1", address="203.0.113.11", user="admin", key_path="~/.ssh/id_ed25519",
        sudo=True, cluster_address="10.0.0.11", work_dir="/var/tmp/mh",
        data_dir="/var/tmp/mh/data",
    )
    assert (specs[1].port, specs[1].user, specs[1].peer_address) == (2222, "root", "203.0.113.12")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[hosts]]\nname = 'n1'\n", "`address`"),
        ("[[hosts]]\nname = 'n1'\naddress = 'a'\nprot = 22\n", "unknown keys"),
        ("[[hosts]]\nname = 'n1'\naddress = 'a'\nport = '22'\n", "`port` must be int"),
        ("[[hosts]]\nname = 'n1'\naddress = 'a'\nsudo = 1\n", "`sudo` must be bool"),
        ("[[hosts]]\nname = 'n1'\naddress = 'a'\n[[hosts]]\nname = 'n1'\naddress = 'b'\n",
         "duplicate"),
        ("[[hosts]]\nname = 'n1'\naddress = 'a'\nwork_dir = 'rel'\n", "absolute"),
        ("[[hosts]]\nname = 'n 1'\naddress = 'a'\n", "bad host name"),
        ("[defaults]\nuser = 'x'\n", "no [[hosts]]"),
        ("hosts = [", "not valid TOML"),
    ],
)
def test_hosts_toml_errors_are_clear(text: str, message: str) -> None:
    """A broken hosts file fails with a message naming the problem."""
    with pytest.raises(ssh.HostsFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ssh.parse_hosts_toml(text)


_RUBY_STUB = r"""
require "json"
class Rec
  attr_reader :calls
  def initialize(log, path) @log, @path = log, path end
  def method_missing(m, *args, **kw, &blk)
    key = (@path + [m.to_s.sub(/=$/, "")]).join(".")
    @log << [key, args.map(&:to_s), kw.transform_keys(&:to_s).transform_values { |v|
      v.is_a?(Array) ? v.map(&:to_s) : v.to_s }]
    child = Rec.new(@log, @path + [m.to_s])
    blk.call(child) if blk
    child
  end
  def respond_to_missing?(*) true end
  def define(name, &blk) @log << ["define", [name], {}]; blk.call(Rec.new(@log, [name])) end
end
module Vagrant
  LOG = []
  def self.configure(v) yield Rec.new(LOG, ["config"]) end
end
load ARGV[0]
puts JSON.generate(Vagrant::LOG)
"""


def _load_vagrantfile(tmp_path: Path, **env: str) -> list[Any]:
    """The calls the Vagrantfile makes on a stub Vagrant, under MACHI_* variables `env` only."""
    stub = tmp_path / "stub.rb"
    stub.write_text(_RUBY_STUB)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MACHI_", "VAGRANT_"))}
    p = subprocess.run(["ruby", str(stub), str(REPO / "Vagrantfile")], capture_output=True,
                       text=True, cwd=REPO, timeout=60, env={**clean, **env})
    assert p.returncode == 0, p.stderr
    log: list[Any] = json.loads(p.stdout)
    return log


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_vagrantfile_defines_the_nodes_the_provider_expects(tmp_path: Path) -> None:
    """Loaded with a stub Vagrant, the Vagrantfile defines n1..n5 on 192.168.56.1x, the
    addresses `vagrant.cluster_address` gives, provisioned by scripts that exist."""
    log = _load_vagrantfile(tmp_path)
    defined = [args[0] for key, args, _ in log if key == "define"]
    assert defined == ["n1", "n2", "n3", "n4", "n5"]
    ips = {key.split(".")[0]: kw["ip"] for key, args, kw in log
           if key.endswith("vm.network") and args == ["private_network"]}
    assert ips == {n: vagrant.cluster_address(n) for n in defined}
    scripts = {kw["path"] for key, _, kw in log if key.endswith("vm.provision") and "path" in kw}
    assert scripts == {"vagrant/provision.sh"}
    assert all((REPO / s).exists() for s in scripts)
    trigger = [args for key, args, _ in log if key.endswith("trigger.before.run")]
    assert trigger and "vagrant/build-wheel" in str(trigger)
    assert "--with-deps" not in str(trigger)  # real VMs may not have the host's platform
    assert ["config.vm.box", ["debian/bookworm64"], {}] in log
    assert vagrant.net_prefix({}) == "192.168.56."


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_vagrantfile_docker_route_matches_the_provider(tmp_path: Path) -> None:
    """With MACHI_VAGRANT_DOCKER=1 the nodes are containers of the local image on 10.78.56.1x
    (or MACHI_VAGRANT_NET_PREFIX), as `vagrant.net_prefix` says, with the dependency wheels;
    a malformed prefix is refused by both."""
    for env in ({"MACHI_VAGRANT_DOCKER": "1", "MACHI_NODES": "3"},
                {"MACHI_VAGRANT_DOCKER": "1", "MACHI_NODES": "3",
                 "MACHI_VAGRANT_NET_PREFIX": "10.78.99."}):
        log = _load_vagrantfile(tmp_path, **env)
        prefix = vagrant.net_prefix(env)
        assert prefix == env.get("MACHI_VAGRANT_NET_PREFIX", "10.78.56.")
        ips = {key.split(".")[0]: kw["ip"] for key, args, kw in log
               if key.endswith("vm.network") and args == ["private_network"]}
        assert ips == {f"n{i}": vagrant.cluster_address(f"n{i}", prefix) for i in (1, 2, 3)}
        calls = {key: args for key, args, _ in log}
        assert calls["config.vm.provider.image"] == ["machi-vagrant-debian:bookworm"]
        assert calls["config.vm.provider.has_ssh"] == ["true"]
        assert "--cap-add=NET_ADMIN" in calls["config.vm.provider.create_args"][0]
        assert "config.vm.box" not in calls  # no box to download
        trigger = [args for key, args, _ in log if key.endswith("trigger.before.run")]
        assert "--with-deps" in str(trigger)
    bad = {"MACHI_VAGRANT_DOCKER": "1", "MACHI_VAGRANT_NET_PREFIX": "10.78.99"}
    with pytest.raises(vagrant.VagrantError, match="must look like"):
        vagrant.net_prefix(bad)
    p = subprocess.run(["ruby", "-e", "module Vagrant; def self.configure(v) end; end; "
                        f"load {json.dumps(str(REPO / 'Vagrantfile'))}"],
                       capture_output=True, text=True, cwd=REPO, timeout=60,
                       env={**os.environ, **bad})
    assert p.returncode != 0 and "must look like" in p.stderr


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_vagrantfile_libvirt_route_matches_the_provider(tmp_path: Path) -> None:
    """With MACHI_VAGRANT_LIBVIRT=1 the nodes are libvirt VMs of the local box on isolated
    networks (no NAT, no DHCP on the private one) at the addresses `vagrant.net_prefix` says,
    with the dependency wheels; combining it with the docker route is refused."""
    env = {"MACHI_VAGRANT_LIBVIRT": "1", "MACHI_NODES": "3", "MACHI_VM_BOOT_TIMEOUT_S": "900"}
    log = _load_vagrantfile(tmp_path, **env)
    prefix = vagrant.net_prefix(env)
    assert prefix == "192.168.56."
    nets = {key.split(".")[0]: kw for key, args, kw in log
            if key.endswith("vm.network") and args == ["private_network"]}
    assert {n: kw["ip"] for n, kw in nets.items()} == {
        f"n{i}": vagrant.cluster_address(f"n{i}", prefix) for i in (1, 2, 3)}
    assert all(kw["libvirt__forward_mode"] == "none" and kw["libvirt__dhcp_enabled"] == "false"
               for kw in nets.values()), nets
    calls = {key: args for key, args, _ in log}
    assert calls["config.vm.box"] == ["machi/bookworm-libvirt"]
    assert calls["config.vm.boot_timeout"] == ["900"]
    assert calls["config.vm.provider.management_network_mode"] == ["none"]
    assert calls["config.vm.provider.cpu_model"] == ["kvm64"]
    assert calls["config.vm.provider.storage_pool_path"] == [
        "/var/lib/machi-vagrant-libvirt/images"]
    assert "config.vm.provider.image" in calls  # the docker block is still declared ...
    trigger = [args for key, args, _ in log if key.endswith("trigger.before.run")]
    assert "--with-deps" in str(trigger)
    # ... but the VirtualBox/libvirt default path sets none of the libvirt-only settings.
    plain = {key for key, _, _ in _load_vagrantfile(tmp_path)}
    assert "config.vm.provider.management_network_mode" not in plain
    both = {**os.environ, "MACHI_VAGRANT_LIBVIRT": "1", "MACHI_VAGRANT_DOCKER": "1"}
    p = subprocess.run(["ruby", "-e", "module Vagrant; def self.configure(v) end; end; "
                        f"load {json.dumps(str(REPO / 'Vagrantfile'))}"],
                       capture_output=True, text=True, cwd=REPO, timeout=60, env=both)
    assert p.returncode != 0 and "exclude each other" in p.stderr


def test_vagrant_scripts_parse_as_bash() -> None:
    """The provisioning and wheel scripts are at least valid bash."""
    for script in ("vagrant/provision.sh", "vagrant/build-wheel", "scripts/install-system-deps",
                   "scripts/vagrant-docker-setup", "scripts/vagrant-libvirt-setup"):
        p = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
        assert p.returncode == 0, f"{script}: {p.stderr}"


def test_sudo_wrapping_depends_on_the_login_user() -> None:
    """Root runs commands as they are; others go through `sudo -n sh -c`; sudo=false refuses."""
    from harness.hosts.base import Host, HostError

    root = Host(HostSpec(name="a", address="x"))
    assert root.wrap_sudo("iptables -S", True) == "iptables -S"
    admin = Host(HostSpec(name="b", address="x", user="admin"))
    assert admin.wrap_sudo("iptables -S | wc -l", True) == "sudo -n -- sh -c 'iptables -S | wc -l'"
    assert admin.wrap_sudo("id", False) == "id"
    no_sudo = Host(HostSpec(name="c", address="x", user="admin", sudo=False))
    with pytest.raises(HostError, match="sudo = false"):
        no_sudo.wrap_sudo("iptables -S", True)


def test_host_spec_and_daemon_names_are_validated() -> None:
    """Bad names, ports and directories fail before anything connects."""
    from harness.hosts.base import Host, _signame

    with pytest.raises(ValueError):
        HostSpec(name="n1", address="x", port=0)
    with pytest.raises(ValueError):
        HostSpec(name="n1", address="x", data_dir="/")
    with pytest.raises(ValueError, match="bad daemon name"):
        Host(HostSpec(name="n1", address="x"))._pid_file("../etc")
    assert (_signame(9), _signame("sigstop"), _signame("CONT")) == ("KILL", "STOP", "CONT")
    with pytest.raises(ValueError):
        _signame("SIGNOPE")
