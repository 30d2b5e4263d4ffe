"""Separate hosts on one machine for the cluster tests: each host is a network namespace with its own
address on a private bridge, and every command run on it has its own hostname (which resolves to its
address, as a VM's does) and, through a mount namespace, its own ``/tmp``, ``/dev/shm`` and home
(``/home/ray``); the project's checkout (venv included) is read-only. The machine's other folders
(its Python among them) stay visible, as a machine image's would, so what a test must keep apart goes
under those private folders. The bridge has no uplink and the machine does not forward: the hosts
reach each other and the bridge's own address (the machine, where a test runs its S3), nothing else.

:func:`hosts` makes them and always removes them: every process left in a host is killed, the
namespaces, the bridge and the host folders are deleted, even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.231.{net}"  # a private /24 per harness: 10.231.<net>.0/24; .1 is the bridge (this machine)
BIN = Path(sys.executable).parent
EXTENSIONS = Path(sys.prefix) / "torch_extensions"  # compiled ops (DeepSpeed's): each host keeps its own, writable
HOSTS_BASE = Path("/var/tmp")  # the hosts' folders: outside /tmp, which each host replaces with its own
HOME = "/home/ray"  # each host's home, its own folder (the machine's /root holds its Python)


def available() -> str | None:
    """Why hosts cannot be made here (not root, no ``ip``/``unshare``), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "mount"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            return f"{tool} is not installed"
    return None


def _sh(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(cmd)}: {done.stderr.strip()}")


@dataclass
class Host:
    """One host: its network namespace, its address and the folder behind its private mounts."""

    name: str
    netns: str
    address: str
    folder: Path

    @property
    def home(self) -> Path:
        """This host's home folder (``/home/ray`` on the host) as seen from outside the host."""
        return self.folder / "home" / "ray"

    def command(self, argv: list[str], cwd: str = HOME) -> list[str]:
        """``argv`` wrapped to run on this host, in ``cwd``: in its network namespace, with its hostname,
        in a mount namespace of its own where ``/tmp``, ``/dev/shm``, ``/home`` and ``/etc/hosts`` are this
        host's and the checkout is read-only but for the venv's compiled ops (a node's own, as its venv is)."""
        checkout = self.folder / "checkout"
        mounts = " && ".join([
            f"hostname {self.name}",
            f"mount --bind {self.folder / 'hosts'} /etc/hosts",
            f"mount --bind {self.folder / 'shm'} /dev/shm",
            f"mount --bind {self.folder / 'home'} /home",
            # The checkout, read-only, aside first: it may live under /tmp, which the host's own replaces.
            f"mount --bind {ROOT} {checkout}",
            f"mount -o remount,bind,ro {checkout}",
            *([f"mount --bind {self.folder / 'torch_extensions'} {checkout / EXTENSIONS.relative_to(ROOT)}"]
              if EXTENSIONS.is_dir() and EXTENSIONS.is_relative_to(ROOT) else []),
            f"mount --bind {self.folder / 'tmp'} /tmp",
            f"mkdir -p {ROOT}",  # a no-op unless the checkout lived under /tmp
            f"mount --rbind {checkout} {ROOT}",
        ])
        return ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--propagation", "private",
                "bash", "-c", f'{mounts} && cd {shlex.quote(cwd)} && exec "$@"', self.name, *argv]

    def env(self, **extra: str) -> dict[str, str]:
        """A login-like environment for this host (its own HOME, the project's venv first on PATH)."""
        return {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": HOME, "LANG": "C.UTF-8", **extra}

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120,
            cwd: str = HOME) -> subprocess.CompletedProcess:
        """Run ``argv`` on this host in ``cwd`` and wait for it (output captured as text)."""
        return subprocess.run(self.command(argv, cwd), env=env or self.env(), capture_output=True, text=True, timeout=timeout)

    def bash(self, script: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a bash ``script`` on this host and wait for it."""
        return self.run(["bash", "-c", script], env, timeout)

    def pids(self) -> list[int]:
        """Every process running on this host (in its network namespace)."""
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def lose(self, timeout_s: float = 10) -> None:
        """Kill every process on this host at once, as when its VM is lost."""
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        if self.pids():
            raise RuntimeError(f"host {self.name}: processes {self.pids()} survived SIGKILL")


@dataclass
class Network:
    """The bridge and the hosts on it; ``gateway`` is the bridge's own address (this machine)."""

    bridge: str
    gateway: str
    hosts: dict[str, Host]

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]


def _add_host(tag: str, index: int, name: str, net: int, bridge: str, base: Path) -> Host:
    netns, outside = f"sj{tag}-{name}", f"sj{tag}{index}"
    address = f"{SUBNET.format(net=net)}.{10 + index}"
    _sh("ip", "netns", "add", netns)
    _sh("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", netns)
    _sh("ip", "link", "set", outside, "master", bridge, "up")
    for cmd in (["ip", "addr", "add", f"{address}/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"],
                ["ip", "link", "set", "lo", "up"],
                # A default route on the bridge with no router behind it: software that finds its own address
                # from a route (Ray does) finds this one, and a packet for anywhere else goes nowhere.
                ["ip", "route", "add", "default", "dev", "eth0"]):
        _sh("ip", "netns", "exec", netns, *cmd)
    folder = base / name
    for sub in ("tmp", "shm", "home/ray", "checkout"):
        (folder / sub).mkdir(parents=True)
    (folder / "tmp").chmod(0o1777)
    if EXTENSIONS.is_dir():
        shutil.copytree(EXTENSIONS, folder / "torch_extensions")
    _sh("mount", "-t", "tmpfs", "-o", "size=2g", f"shm-{netns}", str(folder / "shm"))
    return Host(name, netns, address, folder)


def _remove(network: Network, base: Path) -> None:
    for host in network.hosts.values():
        with contextlib.suppress(Exception):
            host.lose()
        subprocess.run(["umount", "-l", str(host.folder / "shm")], capture_output=True)
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
    subprocess.run(["ip", "link", "del", network.bridge], capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(base)], capture_output=True)


@contextlib.contextmanager
def hosts(*names: str) -> Iterator[Network]:
    """Make a private bridge and one host per name on it; yields the :class:`Network`; removes every
    host, its processes and folders, and the bridge afterwards, whatever happened."""
    tag = uuid.uuid4().hex[:4]
    net = 1 + int(tag, 16) % 250
    bridge, gateway = f"sjbr{tag}", f"{SUBNET.format(net=net)}.1"
    base = HOSTS_BASE / f"sjhosts-{tag}"
    network = Network(bridge, gateway, {})
    try:
        _sh("ip", "link", "add", bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{gateway}/24", "dev", bridge)
        _sh("ip", "link", "set", bridge, "up")
        for index, name in enumerate(names):
            network.hosts[name] = _add_host(tag, index, name, net, bridge, base)
        names_file = "127.0.0.1 localhost\n" + "".join(f"{h.address} {h.name}\n" for h in network.hosts.values())
        for host in network.hosts.values():  # the private network's DNS: every host knows the others by name
            (host.folder / "hosts").write_text(names_file)
        yield network
    finally:
        _remove(network, base)
