"""Pure parts: settings, layout description, staging round trip, version gate."""

from __future__ import annotations

import pytest
import torch

from kvtier_vllm.agent import grpc_target
from kvtier_vllm.config import ConfigError, ConnectorConfig
from kvtier_vllm.layout import LayoutError, describe
from kvtier_vllm.staging import StagingPool


def test_config_defaults_env_and_errors() -> None:
    cfg = ConnectorConfig.from_extra({}, env={})
    assert cfg.agent == "unix:///dev/shm/kvtier/agent.sock" and cfg.lookup_timeout_ms == 200
    cfg = ConnectorConfig.from_extra(
        {"agent": "unix:///run/a.sock"}, env={"KVTIER_NAMESPACE": "ns", "KVTIER_SEED": "7"}
    )
    assert (cfg.agent, cfg.namespace, cfg.seed) == ("unix:///run/a.sock", "ns", 7)
    with pytest.raises(ConfigError, match="unknown kvtier connector setting"):
        ConnectorConfig.from_extra({"agnet": "x"}, env={})
    with pytest.raises(ConfigError, match="integer"):
        ConnectorConfig.from_extra({"seed": "abc"}, env={})
    with pytest.raises(ConfigError, match="load_failure_policy"):
        ConnectorConfig.from_extra({"load_failure_policy": "ignore"}, env={})


def test_grpc_targets() -> None:
    assert grpc_target("unix:///run/kvtier/agent.sock") == "unix:///run/kvtier/agent.sock"
    assert grpc_target("http://127.0.0.1:50061") == "127.0.0.1:50061"
    with pytest.raises(ValueError, match="TLS"):
        grpc_target("https://agent:50061")


def test_layout_block_major_and_kv_split() -> None:
    cpu = {f"l{i}": torch.zeros(10, 2, 32, 128) for i in range(3)}
    lay = describe(cpu, num_blocks=10, block_tokens=32, kv_heads=2, head_size=64)
    assert lay.block_bytes == 3 * 2 * 32 * 128 * 4
    assert "layers=3" in lay.descriptor and "kv_split=1" in lay.descriptor
    flash = {f"l{i}": torch.zeros(2, 10, 32, 2, 64, dtype=torch.bfloat16) for i in range(2)}
    lay2 = describe(flash, num_blocks=10, block_tokens=32, kv_heads=2, head_size=64)
    assert len(lay2.views) == 4 and "kv_split=2" in lay2.descriptor
    assert lay.descriptor != lay2.descriptor
    with pytest.raises(LayoutError, match="no block dimension"):
        describe({"l": torch.zeros(3, 4)}, num_blocks=10, block_tokens=32, kv_heads=1, head_size=1)
    with pytest.raises(LayoutError, match="different dtypes"):
        describe(
            {"a": torch.zeros(10, 4), "b": torch.zeros(10, 4, dtype=torch.float16)},
            num_blocks=10,
            block_tokens=32,
            kv_heads=1,
            head_size=1,
        )


def test_staging_gather_scatter_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = {f"l{i}": torch.randn(6, 2, 4, 8) for i in range(2)}
    lay = describe(src, num_blocks=6, block_tokens=4, kv_heads=2, head_size=4)
    pool = StagingPool(lay, 3, str(tmp_path))
    try:
        slots = pool.acquire(3)
        assert len(slots) == 3 and pool.free == 0
        assert pool.acquire(1, timeout_s=0.05) == []  # full: never blocks for long
        pool.gather([5, 0, 3], slots)
        # The staging file holds the blocks end to end, layer by layer.
        raw = (tmp_path / pool.path.rsplit("/", 1)[1]).read_bytes()
        first = slots[0] * lay.block_bytes
        assert raw[first : first + src["l0"][5].numel() * 4] == src["l0"][5].numpy().tobytes()
        dst = {k: torch.zeros_like(v) for k, v in src.items()}
        lay_dst = describe(dst, num_blocks=6, block_tokens=4, kv_heads=2, head_size=4)
        pool.layout = lay_dst
        pool._views = [pool._typed(v) for v in lay_dst.views]
        pool.scatter(slots, [1, 2, 4])
        for k in src:
            assert torch.equal(dst[k][1], src[k][5]) and torch.equal(dst[k][4], src[k][3])
        pool.release(slots)
        assert pool.free == 3
    finally:
        pool.close()
    assert list(tmp_path.iterdir()) == [], "the staging file outlived its pool"


def test_untested_vllm_is_refused(monkeypatch: pytest.MonkeyPatch, vllm_installed: None) -> None:
    from kvtier_vllm.connector import check_vllm_version

    monkeypatch.delenv("KVTIER_VLLM_UNTESTED", raising=False)
    check_vllm_version("0.32.0")
    with pytest.raises(RuntimeError, match=r"supports vLLM 0\.32\.x"):
        check_vllm_version("0.35.1")
    monkeypatch.setenv("KVTIER_VLLM_UNTESTED", "1")
    check_vllm_version("0.35.1")


def test_prometheus_counters_per_engine(vllm_installed: None) -> None:
    import prometheus_client

    from kvtier_vllm.connector import KvtierConnector
    from kvtier_vllm.stats import KvtierConnectorStats

    registry = prometheus_client.CollectorRegistry()

    class Counter(prometheus_client.Counter):
        def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
            super().__init__(*a, registry=registry, **kw)

    types = {
        prometheus_client.Gauge: prometheus_client.Gauge,
        prometheus_client.Counter: Counter,
        prometheus_client.Histogram: prometheus_client.Histogram,
    }

    class _Config:
        kv_transfer_config = None

    prom = KvtierConnector.build_prom_metrics(
        _Config(),  # type: ignore[arg-type]
        types,  # type: ignore[arg-type]
        ["model_name", "engine"],
        {0: ["m", "0"], 1: ["m", "1"]},
    )
    a = KvtierConnectorStats()
    a.data["loaded_tokens"] = 64
    a.data["load_error_blocks"] = 1
    b = KvtierConnector.build_kv_connector_stats(dict(a.data))
    assert b is not None
    merged = a.aggregate(b)
    assert merged.reduce()["loaded_tokens"] == 128
    prom.observe(merged.data, engine_idx=1)
    text = prometheus_client.generate_latest(registry).decode()
    assert 'vllm:kvtier_loaded_tokens_total{engine="1",model_name="m"} 128.0' in text
    assert 'vllm:kvtier_load_error_blocks_total{engine="1",model_name="m"} 2.0' in text
    assert 'vllm:kvtier_loaded_tokens_total{engine="0",model_name="m"} 0.0' in text
