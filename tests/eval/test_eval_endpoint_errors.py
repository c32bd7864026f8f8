"""`nemo-eagle eval` against the project's own server: a refused API key and a too-low tile cap say so and say how
to fix it (instead of a confusing "another run" error or a bare HTTP 400)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from nemo_eagle.eval.cli import main as eval_main

pytest.importorskip("fastapi", reason="the serve extra is not installed")


class Server:
    """The project's REST app (in-process backend) on a free 127.0.0.1 port."""

    def __init__(self, ckpt, **settings):
        import uvicorn

        from nemo_eagle.serve.app import create_app
        from nemo_eagle.serve.backends import LocalBackend
        from nemo_eagle.serve.engine import Engine
        from nemo_eagle.serve.settings import ServeSettings

        engine = Engine.from_pretrained(ckpt, device="cpu", dtype="float32")
        app = create_app(ServeSettings(model_path=str(ckpt), backend="local", device="cpu", dtype="float32",
                                       **settings), LocalBackend(engine), engine=engine)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "test server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_missing_api_key_is_named_not_taken_for_another_run(tiny_ckpt, eval_files, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = ["--benchmark", "chartqa", "--data", str(eval_files["chartqa"]), "--limit", "1", "--max-new-tokens", "2",
            "--out", str(tmp_path)]
    with Server(tiny_ckpt, api_key="s3cret") as server:
        # a first run with the key leaves predictions; the keyless rerun used to fail as "another run"
        assert eval_main([*args, "--endpoint", server.url, "--api-key", "s3cret"]) == 0
        capsys.readouterr()
        assert eval_main([*args, "--endpoint", server.url]) == 2
        err = capsys.readouterr().err
        assert "the server refused the API key; set OPENAI_API_KEY or --api-key" in err
        assert "another run" not in err
        monkeypatch.setenv("OPENAI_API_KEY", "wrong")
        fresh = [*args[:-1], str(tmp_path / "fresh"), "--endpoint", server.url, "--served-model", tiny_ckpt.name]
        assert eval_main(fresh) == 2  # no /v1/models call: refused at the first question
        assert "the server refused the API key" in capsys.readouterr().err


def test_tile_limit_above_the_servers_suggests_serve_max_tiles(tiny_ckpt, eval_files, tmp_path, capsys):
    with Server(tiny_ckpt, max_tiles=12) as server:
        rc = eval_main(["--benchmark", "docvqa", "--data", str(eval_files["docvqa"]), "--limit", "1",
                        "--max-new-tokens", "2", "--endpoint", server.url, "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "(18)" in err and "nemo-eagle serve --max-tiles 24" in err and "limit of 12" in err
