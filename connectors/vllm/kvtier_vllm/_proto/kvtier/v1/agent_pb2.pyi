from kvtier_vllm._proto.kvtier.v1 import cache_pb2 as _cache_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_EVENT_KIND_UNSPECIFIED: _ClassVar[WorkerEventKind]
    WORKER_EVENT_KIND_STORED: _ClassVar[WorkerEventKind]
    WORKER_EVENT_KIND_REMOVED: _ClassVar[WorkerEventKind]
    WORKER_EVENT_KIND_CLEARED: _ClassVar[WorkerEventKind]
    WORKER_EVENT_KIND_SNAPSHOT: _ClassVar[WorkerEventKind]
WORKER_EVENT_KIND_UNSPECIFIED: WorkerEventKind
WORKER_EVENT_KIND_STORED: WorkerEventKind
WORKER_EVENT_KIND_REMOVED: WorkerEventKind
WORKER_EVENT_KIND_CLEARED: WorkerEventKind
WORKER_EVENT_KIND_SNAPSHOT: WorkerEventKind

class PoolLayout(_message.Message):
    __slots__ = ("num_blocks", "block_bytes", "block_stride_bytes", "num_layers", "dtype")
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_STRIDE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    num_blocks: int
    block_bytes: int
    block_stride_bytes: int
    num_layers: int
    dtype: str
    def __init__(self, num_blocks: _Optional[int] = ..., block_bytes: _Optional[int] = ..., block_stride_bytes: _Optional[int] = ..., num_layers: _Optional[int] = ..., dtype: _Optional[str] = ...) -> None: ...

class SharedMemoryPool(_message.Message):
    __slots__ = ("path", "offset")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class CudaIpcPool(_message.Message):
    __slots__ = ("ipc_handle", "device", "offset")
    IPC_HANDLE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ipc_handle: bytes
    device: int
    offset: int
    def __init__(self, ipc_handle: _Optional[bytes] = ..., device: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class AttachPoolRequest(_message.Message):
    __slots__ = ("namespace", "hashing", "layout", "shared_memory", "cuda_ipc", "engine_name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    HASHING_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    CUDA_IPC_FIELD_NUMBER: _ClassVar[int]
    ENGINE_NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    hashing: _cache_pb2.HashingConfig
    layout: PoolLayout
    shared_memory: SharedMemoryPool
    cuda_ipc: CudaIpcPool
    engine_name: str
    def __init__(self, namespace: _Optional[str] = ..., hashing: _Optional[_Union[_cache_pb2.HashingConfig, _Mapping]] = ..., layout: _Optional[_Union[PoolLayout, _Mapping]] = ..., shared_memory: _Optional[_Union[SharedMemoryPool, _Mapping]] = ..., cuda_ipc: _Optional[_Union[CudaIpcPool, _Mapping]] = ..., engine_name: _Optional[str] = ...) -> None: ...

class AttachPoolResponse(_message.Message):
    __slots__ = ("pool_id", "worker_id", "effective_seed", "staging_buffers")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_SEED_FIELD_NUMBER: _ClassVar[int]
    STAGING_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    pool_id: int
    worker_id: str
    effective_seed: int
    staging_buffers: int
    def __init__(self, pool_id: _Optional[int] = ..., worker_id: _Optional[str] = ..., effective_seed: _Optional[int] = ..., staging_buffers: _Optional[int] = ...) -> None: ...

class PoolBlock(_message.Message):
    __slots__ = ("block_id", "hash", "parent_hash")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_HASH_FIELD_NUMBER: _ClassVar[int]
    block_id: int
    hash: int
    parent_hash: int
    def __init__(self, block_id: _Optional[int] = ..., hash: _Optional[int] = ..., parent_hash: _Optional[int] = ...) -> None: ...

class OffloadRequest(_message.Message):
    __slots__ = ("pool_id", "blocks")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    pool_id: int
    blocks: _containers.RepeatedCompositeFieldContainer[PoolBlock]
    def __init__(self, pool_id: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[PoolBlock, _Mapping]]] = ...) -> None: ...

class OffloadResponse(_message.Message):
    __slots__ = ("stored", "skipped", "bytes_copied")
    STORED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    BYTES_COPIED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    skipped: int
    bytes_copied: int
    def __init__(self, stored: _Optional[int] = ..., skipped: _Optional[int] = ..., bytes_copied: _Optional[int] = ...) -> None: ...

class OnboardRequest(_message.Message):
    __slots__ = ("pool_id", "hashes", "block_ids", "agent_id")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    pool_id: int
    hashes: _containers.RepeatedScalarFieldContainer[int]
    block_ids: _containers.RepeatedScalarFieldContainer[int]
    agent_id: str
    def __init__(self, pool_id: _Optional[int] = ..., hashes: _Optional[_Iterable[int]] = ..., block_ids: _Optional[_Iterable[int]] = ..., agent_id: _Optional[str] = ...) -> None: ...

class OnboardResponse(_message.Message):
    __slots__ = ("loaded", "loaded_prefix", "degraded_reason")
    LOADED_FIELD_NUMBER: _ClassVar[int]
    LOADED_PREFIX_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    loaded: _containers.RepeatedScalarFieldContainer[bool]
    loaded_prefix: int
    degraded_reason: str
    def __init__(self, loaded: _Optional[_Iterable[bool]] = ..., loaded_prefix: _Optional[int] = ..., degraded_reason: _Optional[str] = ...) -> None: ...

class PoolLookupRequest(_message.Message):
    __slots__ = ("pool_id", "hashes")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    pool_id: int
    hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pool_id: _Optional[int] = ..., hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class PoolLookupResponse(_message.Message):
    __slots__ = ("prefix_len", "tiers")
    PREFIX_LEN_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    prefix_len: int
    tiers: _containers.RepeatedScalarFieldContainer[_cache_pb2.Tier]
    def __init__(self, prefix_len: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[_cache_pb2.Tier, str]]] = ...) -> None: ...

class ReportBlocksRequest(_message.Message):
    __slots__ = ("pool_id", "kind", "blocks")
    POOL_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    pool_id: int
    kind: WorkerEventKind
    blocks: _containers.RepeatedCompositeFieldContainer[PoolBlock]
    def __init__(self, pool_id: _Optional[int] = ..., kind: _Optional[_Union[WorkerEventKind, str]] = ..., blocks: _Optional[_Iterable[_Union[PoolBlock, _Mapping]]] = ...) -> None: ...

class ReportBlocksResponse(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    def __init__(self, event_id: _Optional[int] = ...) -> None: ...

class SubscribeWorkerEventsRequest(_message.Message):
    __slots__ = ("from_event_id",)
    FROM_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    from_event_id: int
    def __init__(self, from_event_id: _Optional[int] = ...) -> None: ...

class WorkerEvent(_message.Message):
    __slots__ = ("event_id", "epoch", "worker_id", "kind", "hashes", "parent_hash", "parents", "medium")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    PARENT_HASH_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    MEDIUM_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    epoch: int
    worker_id: str
    kind: WorkerEventKind
    hashes: _containers.RepeatedScalarFieldContainer[int]
    parent_hash: int
    parents: _containers.RepeatedScalarFieldContainer[int]
    medium: str
    def __init__(self, event_id: _Optional[int] = ..., epoch: _Optional[int] = ..., worker_id: _Optional[str] = ..., kind: _Optional[_Union[WorkerEventKind, str]] = ..., hashes: _Optional[_Iterable[int]] = ..., parent_hash: _Optional[int] = ..., parents: _Optional[_Iterable[int]] = ..., medium: _Optional[str] = ...) -> None: ...

class WorkerSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: WorkerEvent
    def __init__(self, snapshot: _Optional[_Union[WorkerEvent, _Mapping]] = ...) -> None: ...

class WorkerStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatsResponse(_message.Message):
    __slots__ = ("offload_blocks", "offload_skipped", "offload_bytes", "onboard_loaded", "onboard_missed", "onboard_degraded", "engine_batches", "engine_events", "engine_seq_gaps", "engine_errors", "staging_buffers", "staging_free", "last_event_id", "epoch")
    class EngineErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    OFFLOAD_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ONBOARD_LOADED_FIELD_NUMBER: _ClassVar[int]
    ONBOARD_MISSED_FIELD_NUMBER: _ClassVar[int]
    ONBOARD_DEGRADED_FIELD_NUMBER: _ClassVar[int]
    ENGINE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    ENGINE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_SEQ_GAPS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    STAGING_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    STAGING_FREE_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    offload_blocks: int
    offload_skipped: int
    offload_bytes: int
    onboard_loaded: int
    onboard_missed: int
    onboard_degraded: int
    engine_batches: int
    engine_events: int
    engine_seq_gaps: int
    engine_errors: _containers.ScalarMap[str, int]
    staging_buffers: int
    staging_free: int
    last_event_id: int
    epoch: int
    def __init__(self, offload_blocks: _Optional[int] = ..., offload_skipped: _Optional[int] = ..., offload_bytes: _Optional[int] = ..., onboard_loaded: _Optional[int] = ..., onboard_missed: _Optional[int] = ..., onboard_degraded: _Optional[int] = ..., engine_batches: _Optional[int] = ..., engine_events: _Optional[int] = ..., engine_seq_gaps: _Optional[int] = ..., engine_errors: _Optional[_Mapping[str, int]] = ..., staging_buffers: _Optional[int] = ..., staging_free: _Optional[int] = ..., last_event_id: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...
