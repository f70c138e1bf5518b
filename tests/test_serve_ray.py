"""The tools as Ray Serve deployments (tools.server.ray_serve) on a local CPU Ray, reached by the same remote
backend. `bash install.sh dev` installs the optional `ray` extra; without it (a plain `.[dev]`) these
tests are skipped, except under CI (CI=true), where a missing extra is a failure, never a silent skip."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.conftest import SHARED, dev_clip_paths
from tests.test_serve import TOKEN, batches_over_one, free_port, metric_samples
from typer.testing import CliRunner

from avs_agent.agent.settings import load_settings
from avs_agent.apps.cli import app as cli_app
from avs_agent.tools.errors import ConfigError
from avs_agent.tools.server import wire
from avs_agent.tools.server.remote import RemoteClient, ToolServerError
from avs_agent.tools.types import AudioSegment

runner = CliRunner()


@pytest.fixture(scope="module")
def ray_server():
    """Ray Serve on a local Ray (4 logical CPUs, half a CPU per tool replica), batches up to 8. (Ray is
    imported here, not at collection: the default run leaves these slow tests out.)"""
    try:
        import ray
        from ray import serve
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("the optional 'ray' extra is not installed")

    from avs_agent.tools.server.ray_serve import build_ray_app, start_ray

    settings = load_settings(
        overrides=[
            f"models_dir={SHARED / 'models'}",
            "serve.max_batch_size=8",
            "serve.batch_wait_s=0.02",
            "serve.ray_cpus_per_replica=0.5",
        ]
    )
    port = free_port()
    application = build_ray_app(settings.tool_config(), token=TOKEN)
    start_ray(settings.tool_config(), "127.0.0.1", port, num_cpus=4)
    try:
        serve.run(application, name="avs-agent", route_prefix="/", blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_deployment_options():
    from avs_agent.tools.server.ray_serve import tool_options

    settings = load_settings(
        overrides=[
            "serve.ray_replicas=2",
            "serve.ray_gpus_per_replica=0.5",
            "serve.max_batch_size=32",
            "serve.ray_tool_options={grounder: {gpus: 1, replicas: 3}}",
        ]
    )
    g, t = tool_options(settings.tool_config(), "grounder"), tool_options(settings.tool_config(), "tagger")
    assert g["num_replicas"] == 3 and g["ray_actor_options"]["num_gpus"] == 1.0
    assert (
        t["num_replicas"] == 2
        and t["ray_actor_options"]["num_gpus"] == 0.5
        and t["max_ongoing_requests"] == 64
    )
    bad = load_settings(overrides=["serve.ray_tool_options={grounder: {gpu: 1}}"])
    with pytest.raises(ConfigError, match="unknown option"):
        tool_options(bad.tool_config(), "grounder")


@pytest.mark.slow  # a local Ray cluster: half a minute to start
def test_ray_serve_answers_ask_with_the_same_masks(ray_server, dev_set, tmp_path, monkeypatch):
    frames, wav, _ = dev_clip_paths("davis_car_shadow_horn_01")
    base = ["ask", str(frames), "--audio", str(wav), "--json"]
    local = runner.invoke(cli_app, [*base, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    monkeypatch.setenv("AVS_AGENT_TOKEN", TOKEN)
    remote = runner.invoke(
        cli_app, [*base, "--out", str(tmp_path / "ray"), "--set", f"tools.backend={ray_server}"]
    )
    assert remote.exit_code == 0, remote.output
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert a["labels"] == b["labels"] and a["answer"] == b["answer"] and a["visible"]
    for fa, fb in zip(a["frames"], b["frames"], strict=True):
        ma = np.asarray(Image.open(tmp_path / "local" / fa["mask_file"]))
        assert np.array_equal(ma, np.asarray(Image.open(tmp_path / "ray" / fb["mask_file"])))

    info = httpx.get(f"{ray_server}/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert info["backend"] == "ray" and info["tools"]["grounder"] == "lite-yolox-deeplab"
    assert httpx.get(f"{ray_server}/readyz").status_code == 401
    with pytest.raises(ToolServerError, match="401"):
        RemoteClient(ray_server, token="wrong", retries=0).info()


@pytest.fixture(scope="module")
def ray_batches(ray_server):
    """A second application on the same Ray cluster (its own route): the tagger alone, batches of four
    and a window far longer than the test, so that a batch runs when it is full, never by the clock."""
    from ray import serve

    from avs_agent.tools.server.ray_serve import build_ray_app

    settings = load_settings(
        overrides=[
            f"models_dir={SHARED / 'models'}",
            "serve.max_batch_size=4",
            "serve.batch_wait_s=60",
            "serve.ray_cpus_per_replica=0.5",
        ]
    )
    application = build_ray_app(settings.tool_config(), tools="tagger", token=TOKEN)
    serve.run(application, name="avs-agent-batches", route_prefix="/batches", blocking=False)
    yield f"{ray_server}/batches"
    serve.delete("avs-agent-batches")


@pytest.mark.slow
def test_ray_serve_batches_twenty_concurrent_requests(ray_batches):
    client = RemoteClient(ray_batches, token=TOKEN)
    method = wire.METHODS["tagger.tag"]

    def work(i):
        audio = [
            AudioSegment(0.0, 1.0, np.random.default_rng(i).uniform(-0.3, 0.3, 16000).astype(np.float32))
        ]
        resp = client._request("POST", method.path, wire.pack(*method.encode_args(audio)))
        return int(resp.headers["x-batch-size"]), method.decode_result(*wire.unpack(resp.content))

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(work, range(20)))
    assert all(len(tags) == 1 for _, tags in results)
    assert [size for size, _ in results] == [4] * 20
    text = httpx.get(f"{ray_batches}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert metric_samples(text, "avs_serve_requests_total")[(("code", "200"), ("method", "tagger.tag"))] == 20
    assert batches_over_one(text, "tagger.tag", "avs_serve_request_batch_size") == 20
    client.close()
