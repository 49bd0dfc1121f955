"""Engines' replies read as plain data only.

IPyParallel's client unpickles every result an engine sends (``ipyparallel.serialize.deserialize_object``). An
engine is another process, possibly on another host, registered with nothing more than the join file: a pickle whose
``__reduce__`` names ``os.system`` would run code in this server (its admin token, API keys and store). Everything
llmsup's engines return is plain data (dicts, lists, strings, numbers), so the server's client reads replies with an
unpickler that resolves no global but a few harmless builtins; a reply that names anything else becomes a
:class:`~ipyparallel.error.RemoteError` (``ename`` ``RefusedReply``) of that task, as a raised exception would.

:func:`forget_when_done` drops a reply from the client's caches (``results``, ``metadata``) once it has been read:
an unbatched job's prompt and output would otherwise stay in the server's memory for its whole life.

:func:`install` swaps the ``serialize`` module that ``ipyparallel.client.client`` uses for this one: process-wide,
so it is called by the server only (a notebook's own client, in its own process, is untouched).
"""

from __future__ import annotations

import io
import logging
import pickle
from types import SimpleNamespace
from typing import Any

import ipyparallel.client.client as ipp_client
from ipyparallel import error as ipp_error
from ipyparallel import serialize
from ipyparallel.serialize.canning import istype, sequence_types, uncan, uncan_sequence
from ipyparallel.serialize.serialize import MAX_ITEMS, _restore_buffers

log = logging.getLogger("llmsup.cluster")

REFUSED = "RefusedReply"
HISTORY_MAX = 10_000  # message ids the client keeps in ``history`` (only integer job indices read it)


def forget_when_done(client: Any, result: Any, loop: Any) -> None:
    """Once ``result`` (an AsyncResult of ``client``) is done and its value handed on (the callbacks before this one,
    as :func:`asyncio.wrap_future`'s, ran first), purge it from the client's caches, on ``loop``."""

    def purge() -> None:
        try:
            client.purge_local_results(jobs=[result])
        except (RuntimeError, KeyError, TypeError) as exc:  # still outstanding, or a client closed since
            log.debug("result not purged: %s", exc)
        if len(client.history) > HISTORY_MAX:
            del client.history[: len(client.history) - HISTORY_MAX // 2]

    result.add_done_callback(lambda _: loop.call_soon_threadsafe(purge))

# Globals a plain-data pickle may name: constructors of values, none of which runs code of the sender's choosing.
_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "bytearray"), ("builtins", "complex"), ("builtins", "set"), ("builtins", "frozenset"),
    ("ipyparallel.serialize.canning", "CannedBytes"),  # how IPyParallel wraps a bytes value
})


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a reply may hold plain data only, not {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a reply may hold plain data only, not persistent ids")


def plain_loads(data: bytes | memoryview) -> Any:
    """``pickle.loads`` of plain data; raises :class:`pickle.UnpicklingError` on anything else."""
    return _PlainUnpickler(io.BytesIO(bytes(data))).load()


def deserialize_object(buffers: list[Any], g: dict[str, Any] | None = None) -> tuple[Any, list[Any]]:
    """IPyParallel's ``deserialize_object`` with the plain unpickler; a refused reply becomes a RemoteError."""
    bufs = list(buffers)
    try:
        first = bufs.pop(0)
        canned = plain_loads(first.bytes if hasattr(first, "bytes") else first)
        return _uncan(canned, bufs, g), bufs
    except Exception as exc:  # whatever the bytes make the decoder raise: the reply is refused, never run
        log.warning("engine reply refused: %s", exc)
        return ipp_error.RemoteError(REFUSED, str(exc), "", {}), []


def _uncan(canned: Any, bufs: list[Any], g: dict[str, Any] | None) -> Any:
    """As ``ipyparallel.serialize.deserialize_object`` after its ``pickle.loads``."""
    if istype(canned, sequence_types) and len(canned) < MAX_ITEMS:
        for c in canned:
            _restore_buffers(c, bufs)
        return uncan_sequence(canned, g)
    if istype(canned, dict) and len(canned) < MAX_ITEMS:
        out = {}
        for k in sorted(canned):
            _restore_buffers(canned[k], bufs)
            out[k] = uncan(canned[k], g)
        return out
    _restore_buffers(canned, bufs)
    return uncan(canned, g)


def install() -> None:
    """Make the IPyParallel client in this process read replies as plain data only (idempotent)."""
    if getattr(ipp_client.serialize, "llmsup_plain", False):
        return
    ipp_client.serialize = SimpleNamespace(
        llmsup_plain=True, deserialize_object=deserialize_object, serialize_object=serialize.serialize_object,
        pack_apply_message=serialize.pack_apply_message, unpack_apply_message=serialize.unpack_apply_message,
    )
