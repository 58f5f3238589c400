"""kvtier's vLLM KV connector.

Load it in an unmodified vLLM by module path::

    --kv-transfer-config '{"kv_connector":"KvtierConnector",
                           "kv_connector_module_path":"kvtier_vllm",
                           "kv_role":"kv_both",
                           "kv_connector_extra_config":{"agent":"unix:///run/kvtier/agent.sock"}}'

``kvtier_vllm.hashing`` and ``kvtier_vllm.agent`` do not import vLLM.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KvtierConnector", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The connector imports vLLM (and checks its version) only when asked for.
    if name == "KvtierConnector":
        from kvtier_vllm.connector import KvtierConnector

        return KvtierConnector
    raise AttributeError(f"module 'kvtier_vllm' has no attribute {name!r}")
