"""The one bridge from dpseg's synchronous code to zarr's asynchronous store methods (``get``,
``set``, ``set_if_not_exists``, ``list_dir``...), which the bank's integrity, seal and lock work
needs object by object.

zarr 3 has no public synchronous store API yet (zarr-developers/zarr-python#3859; a public
``zarr.run`` is proposed in #3997). Until it has one, :func:`run_sync` calls zarr's internal
``zarr.core.sync.sync``, which runs the coroutine on zarr's own IO loop (a store opened by zarr
is bound to that loop: ``asyncio.run`` on another loop breaks remote sessions). This is the only
place dpseg touches it, so a zarr upgrade changes one function.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def default_buffer_prototype():
    """zarr's default buffer prototype (public ``zarr.buffer``), imported when first needed:
    zarr is not loaded by commands that only answer --help."""
    from zarr.buffer import default_buffer_prototype as prototype

    return prototype()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a zarr store coroutine, run on zarr's IO loop (``zarr.run`` where this zarr
    has it)."""
    import zarr

    public = getattr(zarr, "run", None)
    if public is not None:
        return public(coroutine)
    from zarr.core.sync import sync

    return sync(coroutine)


def get_object(store, key: str) -> bytes | None:
    """One object's bytes (None when there is none); a transient failure of a remote store is
    asked again (``common.retry``)."""
    from common.retry import with_retries

    prototype = default_buffer_prototype()
    buffer = with_retries(lambda: run_sync(store.get(key, prototype=prototype)))
    return None if buffer is None else buffer.to_bytes()


def get_objects(store, keys: list[str]) -> list[bytes | None]:
    """The bytes of each of ``keys`` (None where there is none), asked for at once: a remote
    shard's objects cost one round trip, not one each (a probe: `bank subset URL` read 70
    objects one by one); a transient failure asks for them all again (``common.retry``)."""
    import asyncio

    from common.retry import with_retries

    prototype = default_buffer_prototype()

    async def every():
        return await asyncio.gather(*(store.get(key, prototype=prototype) for key in keys))

    buffers = with_retries(lambda: run_sync(every()))
    return [None if buffer is None else buffer.to_bytes() for buffer in buffers]


def put_object(store, key: str, raw: bytes | None) -> None:
    """Write (or, for ``None``, delete) one object."""
    if raw is None:
        run_sync(store.delete(key))
    else:
        run_sync(store.set(key, default_buffer_prototype().buffer.from_bytes(raw)))
