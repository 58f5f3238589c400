"""A custom router's view of kvtier.v1.RouterService, from Python (grpcio).

    python router_client.py PROTO_DIR GRPC_ADDR MODEL TOKEN_IDS_JSON

Generates the stubs from PROTO_DIR with grpcio-tools into a temp dir, then
calls ListWorkers, FindMatches (by token ids), Route, and an erroneous
FindMatches; prints one JSON object with what came back.
"""

import json
import sys
import tempfile

import grpc
from grpc_tools import protoc

proto_dir, addr, model, tokens = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
out = tempfile.mkdtemp()
for name in ("cache", "router"):
    rc = protoc.main(
        ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", f"kvtier/v1/{name}.proto"]
    )
    if rc != 0:
        sys.exit(f"protoc failed on {name}.proto")
sys.path.insert(0, out)
from kvtier.v1 import router_pb2, router_pb2_grpc  # noqa: E402

stub = router_pb2_grpc.RouterServiceStub(grpc.insecure_channel(addr))
workers = stub.ListWorkers(router_pb2.ListWorkersRequest(model=model)).workers
prefix = router_pb2.PrefixQuery(model=model, token_ids=tokens)
matches = stub.FindMatches(router_pb2.FindMatchesRequest(prefix=prefix))
route = stub.Route(
    router_pb2.RouteRequest(
        prefix=prefix,
        hints=router_pb2.CallHints(agent_id="py-agent", priority=2, latency_sensitivity=0.5),
    )
)
try:
    stub.FindMatches(router_pb2.FindMatchesRequest(prefix=router_pb2.PrefixQuery(model="nope", hashes=[1])))
    error = None
except grpc.RpcError as e:
    error = {"code": e.code().name, "message": e.details()}
print(
    json.dumps(
        {
            "workers": [{"id": w.worker_id, "available": w.available} for w in workers],
            "query_blocks": matches.query_blocks,
            "matches": {m.worker_id: [m.hbm_blocks, m.host_blocks, m.disk_blocks] for m in matches.workers},
            "route": {"worker": route.worker_id, "reason": route.reason, "costs": len(route.costs)},
            "error": error,
        }
    )
)
