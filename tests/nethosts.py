"""Test hosts built from Linux namespaces, as root: each one a separate machine as far as llmsup can tell.

A bridge in the root namespace carries the server's address; each host is a network namespace joined to the
bridge by a veth pair, with an address of its own on a private /24 that only these namespaces use. Processes on
a host run in their own UTS namespace (their own hostname) and their own PID namespace (pid 1 is the command;
the server can neither see nor signal them by pid, as with a real second machine). ``cut`` takes a host's outer
veth down: its connections then time out, as a partitioned host's do; ``restore`` brings it back.

Everything made here is removed by the fixture's finalizer, also when a test fails: each host's processes are
killed through its PID namespace's init (the kernel then kills everything in that namespace), then the
namespaces, links and the bridge are deleted. Where namespaces cannot be made (not root, no ``ip``), the tests
that need them are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest


@dataclass(frozen=True)
class TestHost:
    """One namespace host: its hostname, network namespace, outer veth end and address."""

    __test__ = False  # not a test class
    name: str
    netns: str
    outer: str
    address: str


@dataclass
class HostProcess:
    """A command running as pid 1 of a host's own PID namespace."""

    host: TestHost
    popen: subprocess.Popen[bytes]
    init_pid: int  # the namespace's pid 1, as the root namespace numbers it
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self, timeout: float = 20) -> int | None:
        """SIGTERM to the namespace's init, SIGKILL if it is not gone in ``timeout`` s; its exit status."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init_pid, signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the namespace's init: the kernel kills every process of that PID namespace with it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init_pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=20)


def free_subnet() -> str:
    """A 10.231.X.0/24 that no interface of this machine uses (the first three octets)."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    for _ in range(100):
        prefix = f"10.231.{random.randint(1, 254)}"
        if f" {prefix}." not in used:
            return prefix
    raise RuntimeError("no free 10.231.X.0/24 subnet")


@dataclass
class HostNet:
    """The bridge, the server's address on it, and the hosts made so far."""

    tag: str
    prefix: str  # first three octets of the /24
    workdir: Path
    bridge: str = ""
    hosts: list[TestHost] = field(default_factory=list)
    processes: list[HostProcess] = field(default_factory=list)

    @property
    def server_address(self) -> str:
        return f"{self.prefix}.1"

    def make_bridge(self) -> None:
        self.bridge = f"llb{self.tag}"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.server_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> TestHost:
        index = len(self.hosts) + 1
        host = TestHost(name, f"llmsup-{self.tag}-{index}", f"llv{self.tag}{index}", f"{self.prefix}.{10 + index}")
        inner = f"lli{self.tag}{index}"
        _ip("netns", "add", host.netns)
        self.hosts.append(host)  # from here on the finalizer removes it
        _ip("link", "add", host.outer, "type", "veth", "peer", "name", inner, "netns", host.netns)
        _ip("link", "set", host.outer, "master", self.bridge)
        _ip("link", "set", host.outer, "up")
        _ip("addr", "add", f"{host.address}/24", "dev", inner, netns=host.netns)
        _ip("link", "set", inner, "up", netns=host.netns)
        _ip("link", "set", "lo", "up", netns=host.netns)
        return host

    def cut(self, host: TestHost) -> None:
        """Take the host off the network: its connections time out (no reset), as a partitioned host's do."""
        _ip("link", "set", host.outer, "down")

    def restore(self, host: TestHost) -> None:
        _ip("link", "set", host.outer, "up")

    def spawn(self, host: TestHost, argv: Sequence[str], env: dict[str, str] | None = None,
              log_name: str = "") -> HostProcess:
        """Run ``argv`` on the host as pid 1 of a fresh PID namespace, with the host's own hostname."""
        log = self.workdir / f"{log_name or host.name}-{len(self.processes)}.log"
        script = f"hostname {shlex.quote(host.name)} && exec {shlex.join(argv)}"
        cmd = ["ip", "netns", "exec", host.netns, "unshare", "--uts", "--pid", "--mount", "--fork", "--mount-proc",
               "sh", "-c", script]
        with open(log, "wb") as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        proc = HostProcess(host, popen, _namespace_init(popen), log)
        self.processes.append(proc)
        return proc

    @classmethod
    def create(cls, workdir: Path) -> HostNet:
        """A bridge with the server's address on a free /24 (call :meth:`cleanup` when done, also on failure)."""
        net = cls(f"{os.getpid() % 0x10000:04x}{random.randint(0, 0xff):02x}", free_subnet(), workdir)
        try:
            net.make_bridge()
        except BaseException:
            net.cleanup()
            raise
        return net

    def cleanup(self) -> None:
        for proc in self.processes:
            proc.kill()
        for host in self.hosts:
            _ip("link", "del", host.outer, check=False)
            _ip("netns", "del", host.netns, check=False)
        if self.bridge:
            _ip("link", "del", self.bridge, check=False)


def _namespace_init(popen: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """The root-namespace pid of ``unshare --fork``'s child: the new PID namespace's pid 1."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            children = psutil.Process(popen.pid).children()
        except psutil.NoSuchProcess:
            break
        if children:
            return children[0].pid
        if popen.poll() is not None:
            break
        time.sleep(0.01)  # unshare forks at once; this only waits for the fork to show in /proc
    popen.kill()
    raise RuntimeError(f"no namespace init under pid {popen.pid} (exit status {popen.poll()})")


# an sshd on a test host (the ssh launcher's tests) --------------------------------------------------------------
SSHD_ROOT = Path(os.environ.get("LLMSUP_SSHD_ROOT") or Path(__file__).resolve().parent.parent / "build" / "sshd")


def sshd_unavailable() -> str | None:
    """Why no sshd can run on a test host, or None. Looks for Debian's openssh-server unpacked under SSHD_ROOT
    (``make sshd``: apt-get download + dpkg -x, nothing installed on the machine), else /usr/sbin/sshd."""
    if not (SSHD_ROOT / "usr/sbin/sshd").exists() and not Path("/usr/sbin/sshd").exists():
        return f"no sshd: `make sshd` unpacks Debian's openssh-server into {SSHD_ROOT}"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "no ssh client (openssh-client)"
    return None


@dataclass(frozen=True)
class SshAccess:
    """How to reach a test host's sshd: ``ssh -i key`` as root, host keys not checked (they are made per test)."""

    address: str
    key: Path

    @property
    def options(self) -> list[str]:
        return ["-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]


def start_sshd(net: HostNet, host: TestHost) -> SshAccess:
    """An sshd listening on the host's address, root's login by a key made here. It runs in the host's own mount
    namespace, with a tmpfs on /run (its privilege separation directory) and a passwd that names its ``sshd``
    user bind-mounted over /etc/passwd there: nothing is written outside the test's directory."""
    unpacked = SSHD_ROOT / "usr/sbin/sshd"
    sshd = unpacked if unpacked.exists() else Path("/usr/sbin/sshd")
    libs = SSHD_ROOT / "usr/lib/x86_64-linux-gnu"
    sftp = next((p for p in (SSHD_ROOT / "usr/lib/openssh/sftp-server", Path("/usr/lib/openssh/sftp-server"))
                 if p.exists()), Path("/usr/lib/openssh/sftp-server"))
    d = net.workdir / f"sshd-{host.name}"
    d.mkdir(mode=0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True, timeout=30)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    passwd = Path("/etc/passwd").read_text()
    (d / "passwd").write_text(passwd + ("" if "\nsshd:" in passwd else "sshd:x:105:65534::/run/sshd:/usr/sbin/nologin\n"))
    (d / "sshd_config").write_text(
        f"ListenAddress {host.address}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
        f"PidFile {d}/sshd.pid\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        f"Subsystem sftp {sftp}\n")
    script = (f"mount -t tmpfs tmpfs /run && mkdir -p /run/sshd && mount --bind {d}/passwd /etc/passwd && "
              f"exec env LD_LIBRARY_PATH={libs} {sshd} -D -e -f {d}/sshd_config")
    net.spawn(host, ["sh", "-c", script], log_name=f"sshd-{host.name}")
    access = SshAccess(host.address, d / "client_key")
    end = time.monotonic() + 20
    while time.monotonic() < end:  # until it answers a command
        done = subprocess.run(["ssh", *access.options, f"root@{host.address}", "true"], capture_output=True,
                              timeout=20)
        if done.returncode == 0:
            return access
        time.sleep(0.2)
    raise RuntimeError(f"sshd on {host.name} does not answer: {done.stderr.decode(errors='replace')[-500:]}")


def namespaces_unavailable() -> str | None:
    """Why namespace hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"llmsup-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=20)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return None


@pytest.fixture
def hostnet(tmp_path: Path) -> Iterator[HostNet]:
    """A bridge with the server's address; add hosts with ``hostnet.add_host(name)``. Removed afterwards."""
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"namespace test hosts unavailable: {reason}")
    net = HostNet.create(tmp_path)
    try:
        yield net
    finally:
        net.cleanup()
