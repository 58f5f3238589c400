"""A small, typed client of kvtier-agent's WorkerService (control messages only).

Bytes never cross this channel: the agent maps the engine's staging memory and
copies blocks itself. Every call has a deadline; transport failures become
:class:`AgentUnavailable` (the caller degrades to "no external tokens"),
refusals (layout or hashing mismatch, bad arguments) become
:class:`AgentRefused` with the agent's message. No vLLM import: an SGLang
HiCache backend can reuse this module.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from kvtier_vllm._proto.kvtier.v1 import agent_pb2, agent_pb2_grpc, cache_pb2

_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.ABORTED,
}


class AgentError(Exception):
    """A call to the agent did not succeed."""


class AgentUnavailable(AgentError):
    """The agent (or the cache tier behind it) is down, slow or overloaded."""


class AgentRefused(AgentError):
    """The agent refused the call: a configuration mismatch or a bad request."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


def _wrap(err: grpc.RpcError, what: str) -> AgentError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code in _UNAVAILABLE:
        return AgentUnavailable(f"{what}: {code.name}: {details}")
    return AgentRefused(code, f"{what}: {details}")


def grpc_target(address: str) -> str:
    """gRPC target for ``unix:///path``, ``unix:/path``, ``http://h:p`` or ``h:p``."""
    if address.startswith("unix:"):
        return address
    for scheme in ("http://", "grpc://"):
        if address.startswith(scheme):
            return address[len(scheme) :]
    if address.startswith("https://"):
        raise ValueError("TLS to the agent is not supported: use its Unix socket")
    return address


@dataclass(frozen=True)
class Hashing:
    """The namespace's hashing configuration, as the agent and server check it."""

    block_tokens: int
    seed: int
    salt: str
    block_bytes: int
    kv_layout: str
    model: str

    def to_proto(self) -> cache_pb2.HashingConfig:
        return cache_pb2.HashingConfig(
            block_tokens=self.block_tokens,
            seed=self.seed,
            salt=self.salt,
            block_bytes=self.block_bytes,
            kv_layout=self.kv_layout,
            model=self.model,
        )


@dataclass(frozen=True)
class OffloadBlock:
    """One staging slot to copy into the tier under ``hash``."""

    slot: int
    hash: int
    parent: int | None


class AgentClient:
    """WorkerService client over a Unix socket or loopback TCP."""

    def __init__(self, address: str, max_message_bytes: int = 64 << 20) -> None:
        self.address = address
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Reconnect quickly after the agent restarts.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # Over a Unix socket gRPC would send the socket path as :authority,
            # which the agent's HTTP/2 server refuses as malformed.
            ("grpc.default_authority", "localhost"),
        ]
        self._channel = grpc.insecure_channel(grpc_target(address), options=options)
        self._stub = agent_pb2_grpc.WorkerServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def attach_shared_memory(
        self,
        namespace: str,
        hashing: Hashing,
        num_blocks: int,
        num_layers: int,
        dtype: str,
        path: str,
        engine_name: str,
        timeout_s: float,
    ) -> agent_pb2.AttachPoolResponse:
        """Attaches a shared-memory pool of ``num_blocks`` blocks of ``hashing.block_bytes``."""
        req = agent_pb2.AttachPoolRequest(
            namespace=namespace,
            hashing=hashing.to_proto(),
            layout=agent_pb2.PoolLayout(
                num_blocks=num_blocks,
                block_bytes=hashing.block_bytes,
                num_layers=num_layers,
                dtype=dtype,
            ),
            shared_memory=agent_pb2.SharedMemoryPool(path=path, offset=0),
            engine_name=engine_name,
        )
        try:
            return self._stub.AttachPool(req, timeout=timeout_s)
        except grpc.RpcError as err:
            raise _wrap(err, "AttachPool") from None

    def lookup(self, hashes: Sequence[int], timeout_s: float, pool_id: int = 0) -> int:
        """Length of the leading run of ``hashes`` the tier holds."""
        if not hashes:
            return 0
        try:
            resp = self._stub.PoolLookup(
                agent_pb2.PoolLookupRequest(pool_id=pool_id, hashes=list(hashes)),
                timeout=timeout_s,
            )
        except grpc.RpcError as err:
            raise _wrap(err, "PoolLookup") from None
        return int(resp.prefix_len)

    def onboard(
        self, pool_id: int, hashes: Sequence[int], slots: Sequence[int], timeout_s: float
    ) -> tuple[int, str]:
        """Loads ``hashes`` into staging ``slots``; returns (leading blocks loaded, reason)."""
        try:
            resp = self._stub.Onboard(
                agent_pb2.OnboardRequest(
                    pool_id=pool_id, hashes=list(hashes), block_ids=list(slots)
                ),
                timeout=timeout_s,
            )
        except grpc.RpcError as err:
            raise _wrap(err, "Onboard") from None
        return int(resp.loaded_prefix), resp.degraded_reason

    def offload(
        self, pool_id: int, blocks: Sequence[OffloadBlock], timeout_s: float
    ) -> tuple[int, int]:
        """Copies staging slots into the tier; returns (stored, skipped as present)."""
        pb = [
            agent_pb2.PoolBlock(block_id=b.slot, hash=b.hash, parent_hash=b.parent)
            if b.parent is not None
            else agent_pb2.PoolBlock(block_id=b.slot, hash=b.hash)
            for b in blocks
        ]
        try:
            resp = self._stub.Offload(
                agent_pb2.OffloadRequest(pool_id=pool_id, blocks=pb), timeout=timeout_s
            )
        except grpc.RpcError as err:
            raise _wrap(err, "Offload") from None
        return int(resp.stored), int(resp.skipped)

    def stats(self, timeout_s: float = 2.0) -> agent_pb2.WorkerStatsResponse:
        """The agent's counters."""
        try:
            return self._stub.WorkerStats(agent_pb2.WorkerStatsRequest(), timeout=timeout_s)
        except grpc.RpcError as err:
            raise _wrap(err, "WorkerStats") from None


class Backoff:
    """After a failed call, the agent is not asked again for ``interval_s``."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._until = 0.0

    def down(self) -> bool:
        return time.monotonic() < self._until

    def failed(self) -> None:
        self._until = time.monotonic() + self.interval_s

    def ok(self) -> None:
        self._until = 0.0
