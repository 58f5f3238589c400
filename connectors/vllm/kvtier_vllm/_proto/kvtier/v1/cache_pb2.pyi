from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_NONE: _ClassVar[Tier]
    TIER_GPU: _ClassVar[Tier]
    TIER_HOST: _ClassVar[Tier]
    TIER_DISK: _ClassVar[Tier]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_STORED: _ClassVar[EventKind]
    EVENT_KIND_MOVED: _ClassVar[EventKind]
    EVENT_KIND_REMOVED: _ClassVar[EventKind]
    EVENT_KIND_SYNCED: _ClassVar[EventKind]

class CallEnding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALL_ENDING_UNSPECIFIED: _ClassVar[CallEnding]
    CALL_ENDING_TOOL_CALL: _ClassVar[CallEnding]
    CALL_ENDING_END_OF_TURN: _ClassVar[CallEnding]
TIER_NONE: Tier
TIER_GPU: Tier
TIER_HOST: Tier
TIER_DISK: Tier
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_STORED: EventKind
EVENT_KIND_MOVED: EventKind
EVENT_KIND_REMOVED: EventKind
EVENT_KIND_SYNCED: EventKind
CALL_ENDING_UNSPECIFIED: CallEnding
CALL_ENDING_TOOL_CALL: CallEnding
CALL_ENDING_END_OF_TURN: CallEnding

class HashingConfig(_message.Message):
    __slots__ = ("block_tokens", "seed", "salt", "block_bytes", "kv_layout", "model")
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    block_tokens: int
    seed: int
    salt: str
    block_bytes: int
    kv_layout: str
    model: str
    def __init__(self, block_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., salt: _Optional[str] = ..., block_bytes: _Optional[int] = ..., kv_layout: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class HandshakeRequest(_message.Message):
    __slots__ = ("namespace", "config", "client_name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    config: HashingConfig
    client_name: str
    def __init__(self, namespace: _Optional[str] = ..., config: _Optional[_Union[HashingConfig, _Mapping]] = ..., client_name: _Optional[str] = ...) -> None: ...

class HandshakeResponse(_message.Message):
    __slots__ = ("session_id", "config", "effective_seed", "created", "max_message_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_SEED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    config: HashingConfig
    effective_seed: int
    created: bool
    max_message_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., config: _Optional[_Union[HashingConfig, _Mapping]] = ..., effective_seed: _Optional[int] = ..., created: _Optional[bool] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class BlockData(_message.Message):
    __slots__ = ("hash", "parent_hash", "payload")
    HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_HASH_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    hash: int
    parent_hash: int
    payload: bytes
    def __init__(self, hash: _Optional[int] = ..., parent_hash: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("session_id", "block")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    block: BlockData
    def __init__(self, session_id: _Optional[str] = ..., block: _Optional[_Union[BlockData, _Mapping]] = ...) -> None: ...

class BlockPlacement(_message.Message):
    __slots__ = ("hash", "tier", "already_present")
    HASH_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    hash: int
    tier: Tier
    already_present: bool
    def __init__(self, hash: _Optional[int] = ..., tier: _Optional[_Union[Tier, str]] = ..., already_present: _Optional[bool] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("stored", "already_present", "placements")
    STORED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    stored: int
    already_present: int
    placements: _containers.RepeatedCompositeFieldContainer[BlockPlacement]
    def __init__(self, stored: _Optional[int] = ..., already_present: _Optional[int] = ..., placements: _Optional[_Iterable[_Union[BlockPlacement, _Mapping]]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("session_id", "hashes", "stop_at_first_miss", "agent_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_FIRST_MISS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    hashes: _containers.RepeatedScalarFieldContainer[int]
    stop_at_first_miss: bool
    agent_id: str
    def __init__(self, session_id: _Optional[str] = ..., hashes: _Optional[_Iterable[int]] = ..., stop_at_first_miss: _Optional[bool] = ..., agent_id: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("hash", "found", "tier", "payload", "parent_hash")
    HASH_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PARENT_HASH_FIELD_NUMBER: _ClassVar[int]
    hash: int
    found: bool
    tier: Tier
    payload: bytes
    parent_hash: int
    def __init__(self, hash: _Optional[int] = ..., found: _Optional[bool] = ..., tier: _Optional[_Union[Tier, str]] = ..., payload: _Optional[bytes] = ..., parent_hash: _Optional[int] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("session_id", "hashes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("prefix_len", "tiers")
    PREFIX_LEN_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    prefix_len: int
    tiers: _containers.RepeatedScalarFieldContainer[Tier]
    def __init__(self, prefix_len: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[Tier, str]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("tier", "capacity_bytes", "used_bytes", "blocks")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    capacity_bytes: int
    used_bytes: int
    blocks: int
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., blocks: _Optional[int] = ...) -> None: ...

class NamespaceStats(_message.Message):
    __slots__ = ("name", "config", "blocks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    config: HashingConfig
    blocks: int
    def __init__(self, name: _Optional[str] = ..., config: _Optional[_Union[HashingConfig, _Mapping]] = ..., blocks: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("tiers", "namespaces", "checksum_failures", "version")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FAILURES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStats]
    checksum_failures: int
    version: str
    def __init__(self, tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., namespaces: _Optional[_Iterable[_Union[NamespaceStats, _Mapping]]] = ..., checksum_failures: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("namespace", "snapshot")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    snapshot: bool
    def __init__(self, namespace: _Optional[str] = ..., snapshot: _Optional[bool] = ...) -> None: ...

class CacheEvent(_message.Message):
    __slots__ = ("event_id", "epoch", "kind", "namespace", "hash", "tier", "parent_hash")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PARENT_HASH_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    epoch: int
    kind: EventKind
    namespace: str
    hash: int
    tier: Tier
    parent_hash: int
    def __init__(self, event_id: _Optional[int] = ..., epoch: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., namespace: _Optional[str] = ..., hash: _Optional[int] = ..., tier: _Optional[_Union[Tier, str]] = ..., parent_hash: _Optional[int] = ...) -> None: ...

class RegisterAgentRequest(_message.Message):
    __slots__ = ("session_id", "agent_id", "parent_agent_id", "priority", "latency_sensitivity", "lease_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    agent_id: str
    parent_agent_id: str
    priority: int
    latency_sensitivity: float
    lease_ms: int
    def __init__(self, session_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., parent_agent_id: _Optional[str] = ..., priority: _Optional[int] = ..., latency_sensitivity: _Optional[float] = ..., lease_ms: _Optional[int] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("created", "lease_ms")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    created: bool
    lease_ms: int
    def __init__(self, created: _Optional[bool] = ..., lease_ms: _Optional[int] = ...) -> None: ...

class HintRequest(_message.Message):
    __slots__ = ("session_id", "agent_id", "blocks", "ending", "keep_warm_ms", "pin")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ENDING_FIELD_NUMBER: _ClassVar[int]
    KEEP_WARM_MS_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    agent_id: str
    blocks: _containers.RepeatedScalarFieldContainer[int]
    ending: CallEnding
    keep_warm_ms: int
    pin: bool
    def __init__(self, session_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., blocks: _Optional[_Iterable[int]] = ..., ending: _Optional[_Union[CallEnding, str]] = ..., keep_warm_ms: _Optional[int] = ..., pin: _Optional[bool] = ...) -> None: ...

class HintResponse(_message.Message):
    __slots__ = ("resident_blocks",)
    RESIDENT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    resident_blocks: int
    def __init__(self, resident_blocks: _Optional[int] = ...) -> None: ...

class EndAgentRequest(_message.Message):
    __slots__ = ("session_id", "agent_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    agent_id: str
    def __init__(self, session_id: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class EndAgentResponse(_message.Message):
    __slots__ = ("ended",)
    ENDED_FIELD_NUMBER: _ClassVar[int]
    ended: int
    def __init__(self, ended: _Optional[int] = ...) -> None: ...
