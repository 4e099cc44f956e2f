"""The OpenAI-compatible server (cocktail_gguf.server) on loopback with the tiny model.

The app runs in a uvicorn thread on a free port (port 0), one app at a time (llama_cpp.server keeps the
model in a module global); one test starts `python -m cocktail_gguf.server` and stops it with SIGINT.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.routing import APIRoute
from llama_cpp.server.settings import ServerSettings
from pydantic import TypeAdapter

from cocktail_gguf import Llama
from cocktail_gguf.cli import main
from cocktail_gguf.server import CocktailModelSettings, create_app, load_llama, router

# Llama.create_chat_completion with the Cocktail flow (the last user turn is the query) is being added
CONTRACT_PENDING = "create_chat_completion" not in Llama.__dict__
CONTEXT = " ".join(
    "the river runs past old stone walls and quiet fields where the miller keeps his secret number".split()
    * 12
)
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "x"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


@contextmanager
def running_server(**model_options: Any) -> Iterator[str]:
    """Base URL of the app serving the tiny model in a uvicorn thread; stopped (and joined) on exit."""
    settings = CocktailModelSettings(
        n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False, **model_options
    )
    app = create_app(ServerSettings(host="127.0.0.1", port=0), [settings])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(600):  # up to a minute; a crashed startup ends the thread
            if server.started or not thread.is_alive():
                break
            time.sleep(0.1)
        assert server.started, "the server did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        assert not thread.is_alive(), "the server did not stop"


LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def get_json(url: str) -> Any:
    with LOOPBACK.open(url, timeout=60) as response:
        return json.loads(response.read())


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return LOOPBACK.open(request, timeout=120)


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    with post(url, body) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def post_stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a server-sent-events answer, checking that it ends with [DONE]."""
    with post(url, dict(body, stream=True)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line[len(b"data: ") :].strip() for line in response if line.startswith(b"data: ")]
    assert data and data[-1] == b"[DONE]"
    return [json.loads(d) for d in data[:-1]]


def chat_body(**extra: Any) -> dict[str, Any]:
    messages = [
        {"role": "system", "content": CONTEXT},
        {"role": "user", "content": "What is the secret number?"},
    ]
    return {"messages": messages, "max_tokens": 6, "temperature": 0.0, **extra}


@pytest.fixture(scope="module")
def f16_server(tiny_models: dict[str, Path]) -> Iterator[str]:
    with running_server(model=str(tiny_models["tiny-gqa"]), kv_mode="f16") as url:
        yield url


@pytest.fixture(scope="module")
def cocktail_server(tiny_models: dict[str, Path]) -> Iterator[str]:
    options = {"kv_mode": "cocktail", "encoder": "bm25", "chunk_size": 8}
    with running_server(model=str(tiny_models["tiny-gqa"]), **options) as url:
        yield url


class TestF16:
    @pytest.fixture
    def url(self, f16_server: str) -> str:  # one server per module (class-scoped method fixtures: deprecated)
        return f16_server

    def test_chat_and_stream(self, url: str, tiny_models: dict[str, Path]) -> None:
        answer = post_json(f"{url}/v1/chat/completions", chat_body())
        assert answer["object"] == "chat.completion"
        content = answer["choices"][0]["message"]["content"]
        assert content and answer["usage"]["completion_tokens"] > 0
        assert "cocktail" not in answer  # f16: llama-cpp-python's answer, unchanged
        # the same request to a Llama of our own: the server passes the request through unchanged
        llm = Llama(str(tiny_models["tiny-gqa"]), n_ctx=1024, kv_mode="f16", verbose=False)
        try:
            direct = llm.create_chat_completion(**chat_body())
        finally:
            llm.close()
        assert direct["choices"][0]["message"]["content"] == content

        chunks = post_stream(f"{url}/v1/chat/completions", chat_body())
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks]
        assert sum(1 for p in pieces if p) > 1  # token by token
        assert "".join(pieces) == content
        assert chunks[-1]["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]

    def test_completion(self, url: str) -> None:
        body = {"prompt": "The river runs", "max_tokens": 4, "temperature": 0.0}
        answer = post_json(f"{url}/v1/completions", body)
        assert answer["object"] == "text_completion" and answer["choices"][0]["text"]
        chunks = post_stream(f"{url}/v1/completions", body)
        assert "".join(c["choices"][0]["text"] for c in chunks) == answer["choices"][0]["text"]

    def test_upstream_routes_are_served(self, url: str, tiny_models: dict[str, Path]) -> None:
        models = get_json(f"{url}/v1/models")
        assert [m["id"] for m in models["data"]] == [str(tiny_models["tiny-gqa"])]
        assert post_json(f"{url}/extras/tokenize/count", {"input": "river"})["count"] > 0

    def test_too_long_is_a_400(self, url: str) -> None:
        body = {"messages": [{"role": "user", "content": "river " * 2000}], "max_tokens": 4}
        with pytest.raises(urllib.error.HTTPError) as exc:
            post(f"{url}/v1/chat/completions", body)
        assert exc.value.code == 400
        assert json.loads(exc.value.read())["error"]["code"] == "context_length_exceeded"


@pytest.mark.xfail(CONTRACT_PENDING, reason="contract pending", strict=False)
class TestCocktail:
    @pytest.fixture
    def url(self, cocktail_server: str) -> str:
        return cocktail_server

    @staticmethod
    def check_cocktail(info: dict[str, Any]) -> None:
        assert set(info) >= {"plan", "kv_bytes", "timings"}
        plan = info["plan"]
        assert plan["chunk_size"] == 8 and plan["n_context_tokens"] >= 8
        assert sum(plan["counts"].values()) == plan["n_context_tokens"] // 8
        assert info["kv_bytes"]["regions"] > 0

    def test_chat_carries_the_plan(self, url: str) -> None:
        answer = post_json(f"{url}/v1/chat/completions", chat_body())
        assert answer["choices"][0]["message"]["content"]
        self.check_cocktail(answer["cocktail"])

    def test_stream_carries_the_plan_in_the_last_chunk(self, url: str) -> None:
        chunks = post_stream(f"{url}/v1/chat/completions", chat_body())
        assert "cocktail" in chunks[-1]
        assert all("cocktail" not in c for c in chunks[:-1])
        self.check_cocktail(chunks[-1]["cocktail"])

    def test_cocktail_query(self, url: str) -> None:
        answer = post_json(f"{url}/v1/chat/completions", chat_body(cocktail_query="stone walls"))
        self.check_cocktail(answer["cocktail"])


def test_response_models_keep_the_cocktail_key() -> None:
    """llama_cpp.server's own response model drops unknown keys; ours keep "cocktail"."""
    import llama_cpp

    routes = {r.path: r for r in router.routes if isinstance(r, APIRoute)}
    cocktail = {"plan": {"chunk_size": 8}, "kv_bytes": {"regions": 1}, "timings": {"decode_s": 0.1}}
    chat = TypeAdapter(routes["/v1/chat/completions"].response_model)
    assert chat.dump_python(chat.validate_python(dict(ANSWER, cocktail=cocktail)))["cocktail"] == cocktail
    assert "cocktail" not in chat.dump_python(chat.validate_python(ANSWER))  # optional
    upstream = TypeAdapter(llama_cpp.ChatCompletion)
    assert "cocktail" not in upstream.dump_python(upstream.validate_python(dict(ANSWER, cocktail=cocktail)))
    completion = dict(
        ANSWER,
        object="text_completion",
        choices=[{"text": "x", "index": 0, "logprobs": None, "finish_reason": "stop"}],
    )
    done = TypeAdapter(routes["/v1/completions"].response_model)
    assert done.dump_python(done.validate_python(dict(completion, cocktail=cocktail)))["cocktail"] == cocktail


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_python_m_server_starts_and_stops(
    tiny_models: dict[str, Path], tmp_path: Path, child_env: dict[str, str]
) -> None:
    port = _free_port()
    argv = [sys.executable, "-m", "cocktail_gguf.server", "--model", str(tiny_models["tiny-mha"])]
    argv += ["--kv_mode", "f16", "--n_ctx", "256", "--verbose", "false", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*argv, "--port", str(port)],
        cwd=tmp_path,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        models = None
        for _ in range(300):  # up to a minute
            if proc.poll() is not None:
                break
            try:
                models = get_json(f"http://127.0.0.1:{port}/v1/models")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert models is not None, f"no answer (exit status {proc.poll()})"
        assert models["data"][0]["id"] == str(tiny_models["tiny-mha"])
        answer = post_json(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        )
        assert answer["choices"][0]["message"]["content"] is not None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--kv_mode", "q3"], "'q3'"),
        (["--chunk_size", "0"], "chunk_size=0"),
        (["--alpha", "1.5"], "alpha=1.5"),
        (["--n_ctx", "many"], "'many'"),
        (["--cache", "true", "--kv_mode", "q4"], "cache=True"),
    ],
)
def test_serve_bad_option_exits_2(
    options: list[str], named: str, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", str(tiny_models["tiny-mha"]), *options])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_serve_missing_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.gguf"
    assert main(["serve", "--model", str(missing), "--kv_mode", "f16"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_serve_help_lists_the_cocktail_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cocktail-gguf serve")
    for option in ("--kv_mode", "--chunk_size", "--alpha", "--beta", "--encoder", "--n_ctx", "--port"):
        assert option in out


def test_unknown_option_of_other_commands_still_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["info", "--bogus"])
    assert exc.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_load_llama_converts_and_refuses(tiny_models: dict[str, Path]) -> None:
    model = str(tiny_models["tiny-mha"])
    settings = CocktailModelSettings(
        model=model,
        kv_mode="f16",
        n_ctx=128,
        verbose=False,
        cache=True,
        kv_overrides=["tokenizer.ggml.add_bos_token=bool:false"],
    )
    llm = load_llama(settings)
    try:
        assert isinstance(llm, Llama) and llm.kv_mode == "f16" and llm.cache is not None
        assert not llm._model.add_bos_token()  # the file says true
    finally:
        llm.close()
    with pytest.raises(ValueError, match="'general.name=tiny'"):
        load_llama(CocktailModelSettings(model=model, kv_mode="f16", kv_overrides=["general.name=tiny"]))
    with pytest.raises(ValueError, match="clip_model_path='proj.gguf'"):
        load_llama(CocktailModelSettings(model=model, kv_mode="f16", clip_model_path="proj.gguf"))
