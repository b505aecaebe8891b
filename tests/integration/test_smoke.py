"""End to end through a real server: the demo seed answers every RPC."""

from controlplane_resolver.dev import demo
from controlplane_resolver_client import pb


def test_demo_seed_answers(server, cp, ro):
    ids = demo.seed(cp, ro)
    client = server.client
    env = client.resolve_env(ids.production_environment_id)
    assert env is not None and env.type == pb.ENVIRONMENT_TYPE_PRODUCTION
    assert env.concurrency_limit_burst_factor == "2.00"
    read = client.read_run(ids.new_run_friendly_id, include_environment=True)
    assert read.source == pb.RUN_SOURCE_RUN_OPS and read.residency == pb.RESIDENCY_NEW
    assert read.environment.id == ids.production_environment_id
    read = client.read_run(ids.legacy_run_id)
    assert read.source == pb.RUN_SOURCE_LEGACY
    assert client.resolve_env("c" + "x" * 24) is None
