"""No way around the front: Triton's own gRPC and HTTP ports refuse callers without the front's per-process secret
(checked with tritonclient, and with the secret as the positive control), the API key comes from a file or the
environment (never the command line), ``/openapi.json`` needs it, and no client-visible answer names a path on the
server or an internal address."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import ServeProcess, free_port

from nemo_eagle.serve.settings import ServeSettings

KEY = "s3cret-key-from-file"


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bypass")
    (tmp / "key").write_text(KEY + "\n")
    grpc, http = free_port(), free_port()
    proc = ServeProcess(tiny_ckpt, tmp / "serve.log", "--max-model-len", "4096", "--api-key-file", str(tmp / "key"),
                        "--triton-grpc-port", str(grpc), "--triton-http-port", str(http))
    proc.grpc, proc.http = grpc, http
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.logs()[-3000:]


def triton_secret(server: ServeProcess) -> tuple[str, str]:
    """(header, value) the tritonserver was started with, read from its command line (the positive control)."""
    pid = int(re.findall(r"tritonserver pid (\d+)", server.logs())[-1])
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    spec = next(a for a in args if a.startswith("--grpc-restricted-protocol=")).split("=", 1)[1]
    protocols, _, header = spec.partition(":")
    assert {"inference", "health", "metadata", "model-repository"} <= set(protocols.split(","))
    return tuple(header.split("=", 1))


def infer_request():
    import tritonclient.grpc as grpcclient

    req = grpcclient.InferInput("REQUEST", [1, 1], "BYTES")
    req.set_data_from_numpy(np.array([[b'{"task": "embed", "input": ["hi"]}']], dtype=np.object_))
    return req


def test_direct_triton_calls_without_the_secret_are_refused(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    name, value = triton_secret(server)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    with pytest.raises(InferenceServerException, match="restricted"):
        grpc.infer("eagle", [infer_request()])
    with pytest.raises(InferenceServerException, match="restricted"):
        grpc.is_server_live()
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}")
    with pytest.raises(InferenceServerException):
        http.infer("eagle", [httpclient.InferInput("REQUEST", [1, 1], "BYTES")])
    assert not http.is_model_ready("eagle")
    assert httpx.get(f"http://127.0.0.1:{server.http}/v2/models/eagle/ready").status_code != 200
    # the positive control: the same calls with the front's header get through
    assert grpc.is_model_ready("eagle", headers={f"triton-grpc-protocol-{name}": value})
    assert http.is_model_ready("eagle", headers={name: value})


def test_api_key_from_file_guards_v1_and_openapi_and_stays_out_of_ps(server):
    for path in ("/v1/models", "/openapi.json"):
        assert httpx.get(server.base + path).status_code == 401
        r = httpx.get(server.base + path, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200, r.text
    assert "/v1/chat/completions" in r.json()["paths"]
    assert httpx.get(server.base + "/v1/health/ready").status_code == 200  # health stays open
    front = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode()
    triton_pid = int(re.findall(r"tritonserver pid (\d+)", server.logs())[-1])
    assert KEY not in front and KEY not in Path(f"/proc/{triton_pid}/cmdline").read_bytes().decode()
    assert KEY.encode() not in Path(f"/proc/{triton_pid}/environ").read_bytes()


def test_no_server_paths_or_internal_addresses_in_answers(server, tiny_ckpt):
    auth = {"Authorization": f"Bearer {KEY}"}
    models = httpx.get(server.base + "/v1/models", headers=auth).json()
    meta = httpx.get(server.base + "/v1/metadata", headers=auth).json()
    assert models["data"][0]["root"] == "tiny-eagle2"
    assert meta["modelInfo"][0]["modelUrl"] == "tiny-eagle2"
    for text in (str(models), str(meta)):
        assert str(tiny_ckpt) not in text and str(tiny_ckpt.resolve()) not in text
        assert "127.0.0.1" not in text and str(server.grpc) not in text and "grpc_url" not in text


def test_api_key_from_environment_or_file(tmp_path, monkeypatch):
    monkeypatch.setenv("NIM_API_KEY", "from-env")
    assert ServeSettings().api_key.get_secret_value() == "from-env"
    (tmp_path / "key").write_text("  from-file\n")
    with pytest.raises(ValueError, match="not both"):
        ServeSettings(api_key_file=tmp_path / "key")
    monkeypatch.delenv("NIM_API_KEY")
    assert ServeSettings(api_key_file=tmp_path / "key").api_key.get_secret_value() == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        ServeSettings(api_key_file=tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot read"):
        ServeSettings(api_key_file=tmp_path / "missing")


@pytest.mark.anyio
async def test_backend_errors_name_the_model_not_its_path(tiny_ckpt):
    from nemo_eagle.serve.app import create_app
    from nemo_eagle.serve.backends import BackendError, FakeBackend

    class Failing(FakeBackend):
        async def call(self, task):
            raise BackendError(f"cannot open {tiny_ckpt.resolve()}/model.safetensors via ipv4:10.1.2.3:8001")

    settings = ServeSettings(model_path=str(tiny_ckpt))
    app = create_app(settings, Failing())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        r = await client.post("/v1/embeddings", json={"model": "tiny-eagle2", "input": ["x"]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    message = r.json()["error"]["message"]
    assert str(tiny_ckpt) not in message and "10.1.2.3" not in message, message
    assert "tiny-eagle2/model.safetensors" in message


def test_second_server_on_the_same_triton_ports_refuses_to_start(server, tiny_ckpt, tmp_path):
    """The issue's case: a second server whose Triton ports are the first one's exits at once naming the flag,
    instead of serving through the other server's tritonserver."""
    second = ServeProcess(tiny_ckpt, tmp_path / "second.log", "--triton-grpc-port", str(server.grpc))
    code = second.proc.wait(60)
    second.stop()
    assert code == 2, second.logs()
    assert f"port {server.grpc} on 127.0.0.1 (--triton-grpc-port) is not free" in second.logs()
    assert "starting tritonserver" not in second.logs()
    assert httpx.get(server.base + "/v1/health/ready").status_code == 200  # the first one is unharmed
