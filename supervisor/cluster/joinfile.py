"""``<run-dir>/join.json``: everything another host needs to add engines to this server's cluster.

Written by the server (mode 0600: it holds keys) each time its controller starts; read by ``llmsup join`` on
the other host. It carries IPyParallel's engine connection info (addresses, the controller's CURVE server key)
and llmsup's own channels: the token stream's and control channel's addresses and the CURVE keys that admit a
peer to them (``supervisor/cluster/curve.py``). Whoever holds the file can run engines here; treat it as a secret.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmsup.supervisor.rundir import write_private

VERSION = 1


class JoinFileError(ValueError):
    """A join file that cannot be used (missing, unreadable, another version, fields missing)."""


@dataclass(frozen=True)
class JoinInfo:
    controller: dict[str, Any]  # IPyParallel's engine connection info (ipcontroller-*-engine.json)
    stream_address: str  # the token stream (PULL) engines push to
    control_address: str  # the control channel (ROUTER) batched engines and join agents connect to
    curve: dict[str, str]  # server_public, client_public, client_secret (Z85) of llmsup's channels
    heartbeat_ms: int  # the controller's heartbeat period
    host_loss_s: float  # a host silent this long is taken as lost
    version: int = VERSION

    def write(self, path: Path) -> None:
        """Write the file readable by its owner only (replaced atomically, no link followed)."""
        write_private(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> JoinInfo:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise JoinFileError(f"cannot read join file {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise JoinFileError(f"{path} is not a join file of version {VERSION} (written by `llmsup serve`)")
        try:
            info = cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except KeyError as exc:
            raise JoinFileError(f"{path}: field {exc} missing") from None
        missing = {"server_public", "client_public", "client_secret"} - set(info.curve)
        if missing or not info.controller.get("registration"):
            raise JoinFileError(f"{path}: incomplete (keys {sorted(missing)} missing, or no controller address)")
        return info
