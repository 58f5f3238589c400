"""vLLM's real scheduler driving KvtierConnector, with a stand-in forward pass.

The pattern of vLLM's own connector unit tests (``create_vllm_config`` /
``create_scheduler`` / ``create_model_runner_output``), on the CPU device and a
local model directory. The scheduler side is the connector vLLM's scheduler
builds itself (by module path); the worker side is a second instance with real
KV tensors in the CPU backend's layout. The stand-in forward pass writes each
full block's KV as a function of its kvtier hash, so a loaded block can be
checked byte for byte.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm import SamplingParams
from vllm.config import (
    CacheConfig,
    DeviceConfig,
    KVTransferConfig,
    ModelConfig,
    SchedulerConfig,
    VllmConfig,
)
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from kvtier_vllm.connector import KvtierConnector
from kvtier_vllm.hashing import BlockHasher, effective_seed

HEADS = 2
HEAD_SIZE = 64
LAYERS = ("model.decoder.layers.0.self_attn.attn", "model.decoder.layers.1.self_attn.attn")


def block_value(h: int) -> float:
    """The KV value the stand-in forward writes for the block with hash ``h``."""
    return float(h % 65521) + 1.0


@dataclass
class Engine:
    model: pathlib.Path
    agent: str
    namespace: str = "sched-test"
    block_size: int = 32
    num_blocks: int = 64
    max_batched_tokens: int = 512
    extra: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    head_size: int = HEAD_SIZE

    def __post_init__(self) -> None:
        model_config = ModelConfig(
            model=str(self.model),
            dtype="float32",
            seed=0,
            skip_tokenizer_init=True,
            max_model_len=4096,
        )
        scheduler_config = SchedulerConfig(
            max_num_seqs=16,
            max_num_batched_tokens=self.max_batched_tokens,
            max_model_len=4096,
            enable_chunked_prefill=True,
            is_encoder_decoder=False,
        )
        cache_config = CacheConfig(
            block_size=self.block_size, gpu_memory_utilization=0.9, enable_prefix_caching=True
        )
        kv_transfer_config = KVTransferConfig(
            kv_connector="KvtierConnector",
            kv_connector_module_path="kvtier_vllm",
            kv_role="kv_both",
            kv_connector_extra_config={
                "agent": self.agent,
                "namespace": self.namespace,
                "staging_bytes": 4 << 20,
                **self.extra,
            },
        )
        self.vllm_config = VllmConfig(
            scheduler_config=scheduler_config,
            model_config=model_config,
            cache_config=cache_config,
            kv_transfer_config=kv_transfer_config,
            device_config=DeviceConfig("cpu"),
        )
        self.kv_cache_config = KVCacheConfig(
            num_blocks=self.num_blocks,
            kv_cache_tensors=[],
            kv_cache_groups=[
                KVCacheGroupSpec(
                    list(LAYERS),
                    FullAttentionSpec(
                        block_size=self.block_size,
                        num_kv_heads=HEADS,
                        head_size=self.head_size,
                        dtype=self.dtype,
                    ),
                )
            ],
        )
        self.vllm_config.cache_config.num_gpu_blocks = self.num_blocks
        self.scheduler = Scheduler(
            vllm_config=self.vllm_config,
            kv_cache_config=self.kv_cache_config,
            structured_output_manager=StructuredOutputManager(self.vllm_config),
            block_size=self.block_size,
            log_stats=True,
        )
        assert isinstance(self.scheduler.connector, KvtierConnector)
        self.sched_connector: KvtierConnector = self.scheduler.connector
        self.worker = KvtierConnector(
            self.vllm_config, KVConnectorRole.WORKER, self.kv_cache_config
        )
        # The CPU backend's layout: [num_blocks, kv_heads, block_size, 2 * head_size].
        self.kv = {
            name: torch.zeros(
                self.num_blocks, HEADS, self.block_size, 2 * self.head_size, dtype=self.dtype
            )
            for name in LAYERS
        }
        self.worker.register_kv_caches(self.kv)
        init_none_hash(sha256)
        self.hasher = BlockHasher(self.block_size, effective_seed(1337, ""))
        self.preempted: set[str] = set()
        self.finished: dict[str, Request] = {}
        self.requests: dict[str, Request] = {}
        self.last_errors: set[int] = set()

    # -- requests -------------------------------------------------------

    def add(self, req_id: str, prompt: list[int], max_tokens: int = 2) -> Request:
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        req = Request(
            request_id=req_id,
            prompt_token_ids=prompt,
            sampling_params=params,
            pooling_params=None,
            block_hasher=get_request_block_hasher(self.block_size, sha256),
        )
        self.scheduler.add_request(req)
        self.requests[req_id] = req
        return req

    # -- one engine step ----------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        return self.scheduler.schedule()

    def execute(self, out: SchedulerOutput) -> None:
        """The worker's part of a step, then the scheduler's update."""
        self.worker.bind_connector_metadata(out.kv_connector_metadata)
        self.worker.start_load_kv(None)  # type: ignore[arg-type]
        self._forward(out)
        self.worker.wait_for_save()
        errors = self.worker.get_block_ids_with_load_errors()
        self.last_errors |= errors
        self.worker.clear_connector_metadata()
        if out.preempted_req_ids:
            self.preempted |= set(out.preempted_req_ids)
        req_ids = list(out.num_scheduled_tokens)
        sampled: list[list[int]] = []
        for rid in req_ids:
            req = self.requests[rid]
            done = self._computed(out, rid) + out.num_scheduled_tokens[rid]
            sampled.append([7 + len(req.all_token_ids) % 1000] if done >= req.num_tokens else [])
        mro = ModelRunnerOutput(
            req_ids=req_ids,
            req_id_to_index={r: i for i, r in enumerate(req_ids)},
            sampled_token_ids=sampled,
            kv_connector_output=KVConnectorOutput(invalid_block_ids=errors),
        )
        self.scheduler.update_from_output(out, mro)
        for rid, req in list(self.requests.items()):
            if req.is_finished():
                self.finished[rid] = req

    def step(self) -> SchedulerOutput:
        out = self.schedule()
        self.execute(out)
        return out

    def run(self, max_steps: int = 200) -> None:
        for _ in range(max_steps):
            if not self.scheduler.has_requests():
                break
            self.step()
        assert not self.scheduler.has_requests(), "requests left after max_steps"
        assert self.worker.wait_for_saves(10.0), "background saves did not finish"

    @staticmethod
    def _computed(out: SchedulerOutput, rid: str) -> int:
        for new in out.scheduled_new_reqs:
            if new.req_id == rid:
                return new.num_computed_tokens
        cached = out.scheduled_cached_reqs
        return cached.num_computed_tokens[cached.req_ids.index(rid)]

    def _forward(self, out: SchedulerOutput) -> None:
        for rid, n in out.num_scheduled_tokens.items():
            req = self.requests[rid]
            start = self._computed(out, rid)
            end = start + n
            tokens = list(req.all_token_ids)
            hashes = self.hasher.sequence_hashes(tokens[: end // self.block_size * self.block_size])
            block_ids = self.scheduler.kv_cache_manager.get_block_ids(rid)[0]
            for b in range(
                start // self.block_size, (end + self.block_size - 1) // self.block_size
            ):
                value = block_value(hashes[b]) if b < len(hashes) else -1.0
                for t in self.kv.values():
                    t[block_ids[b]].fill_(value)

    # -- checks -------------------------------------------------------------

    def prompt_blocks_ok(self, rid: str, blocks: int) -> bool:
        """The first ``blocks`` prompt blocks of a running request hold the right KV."""
        req = self.requests[rid]
        hashes = self.hasher.sequence_hashes(list(req.prompt_token_ids or []))
        block_ids = self.scheduler.kv_cache_manager.get_block_ids(rid)[0]
        return all(
            bool((t[block_ids[b]] == block_value(hashes[b])).all())
            for b in range(blocks)
            for t in self.kv.values()
        )

    def close(self) -> None:
        self.worker.shutdown()
        self.sched_connector.shutdown()
