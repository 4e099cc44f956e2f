"""OpenAI-compatible HTTP server: llama-cpp-python's FastAPI server (llama_cpp.server) on cocktail_gguf.Llama.

    cocktail-gguf serve --model m.gguf --kv_mode cocktail --n_ctx 8192 --port 8000
    python -m cocktail_gguf.server ...            (same options)

Options are llama_cpp.server's (its pydantic settings: --n_ctx, --n_gpu_layers, --host, --port,
--api_key, --config_file, ... and their environment variables) plus the Cocktail ones: --kv_mode,
--chunk_size, --alpha, --beta, --encoder. --model defaults to the embedded gemma-3-270m.

What is ours and why: the model is built as `cocktail_gguf.Llama`; /v1/chat/completions and
/v1/completions are re-declared because upstream's (a) validate the answer against its TypedDicts,
which drops our top-level "cocktail" key (plan summary, KV bytes, timings), and (b) stream through the
unbound `llama_cpp.Llama.create_chat_completion`, which bypasses the subclass. Both accept
"cocktail_query" (the query the context is planned against; default: the last user turn). Every other
route, the locks, the streaming publisher, authentication and the settings are upstream's.
llama_cpp.server keeps the model in a module global: one app per process, as upstream.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any, Dict, List, Literal, Optional, Union  # noqa: UP035  (pydantic/argparse types)

import anyio
import llama_cpp
import llama_cpp.llama_speculative as llama_speculative
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.middleware import Middleware
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from llama_cpp.llama_types import CreateChatCompletionResponse, CreateCompletionResponse
from llama_cpp.server import app as upstream
from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
from llama_cpp.server.errors import ErrorResponse, RouteErrorHandler
from llama_cpp.server.model import LlamaProxy
from llama_cpp.server.settings import ModelSettings, ServerSettings
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import Field, ValidationError, model_validator
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette_context.middleware import RawContextMiddleware
from starlette_context.plugins import RequestIdPlugin

from .llama import Llama

# --- settings -----------------------------------------------------------------------------------
# Optional[...] and typing.List: llama_cpp.server.cli turns these annotations into argparse types and
# knows typing.Union, not `X | None`.


class CocktailModelSettings(ModelSettings):
    """llama_cpp.server's model settings plus the Cocktail KV-cache options of `cocktail_gguf.Llama`."""

    model: Optional[str] = Field(  # noqa: UP045
        default=None, description="GGUF path (default: the embedded gemma-3-270m Q4_K_M)."
    )
    kv_mode: Literal["f16", "cocktail", "q4", "q2"] = Field(
        default="cocktail",
        description="KV cache: f16 (llama.cpp's), cocktail (per-chunk F16/Q4/Q2 by query relevance), "
        "q4 / q2 (uniform).",
    )
    chunk_size: int = Field(default=32, ge=1, le=256, description="Context tokens per chunk.")
    alpha: float = Field(default=0.6, ge=0.0, le=1.0, description="Larger -> more Q2 chunks.")
    beta: float = Field(default=0.1, ge=0.0, le=1.0, description="Larger -> more F16 chunks.")
    encoder: Optional[str] = Field(  # noqa: UP045
        default=None, description="Chunk/query encoder: minilm (default) | minilm-gguf | bm25 | path."
    )

    @model_validator(mode="after")
    def _default_model_and_cache(self) -> CocktailModelSettings:
        if not self.model:
            from .models import default_model_path

            self.model = str(default_model_path())
        if self.cache and self.kv_mode != "f16":
            # llama-cpp-python's prompt cache saves the llama.cpp state, which lacks our regions
            raise ValueError(f"cache=True needs kv_mode='f16' (kv_mode={self.kv_mode!r})")
        return self


class CocktailSettings(ServerSettings, CocktailModelSettings):
    """Server and model settings in one (command line, environment)."""


class CocktailConfigFileSettings(ServerSettings):
    """--config_file format: llama_cpp.server's, with Cocktail model entries."""

    models: List[CocktailModelSettings] = Field(default=[], description="Model configs")  # noqa: UP006


# --- the model ------------------------------------------------------------------------------------
_NOT_SUPPORTED = ("clip_model_path", "hf_model_repo_id", "hf_pretrained_model_name_or_path", "rpc_servers")
"""ModelSettings that cocktail-gguf serve refuses: multimodal projectors, downloads from a hub, RPC."""
_CONVERTED = ("model", "kv_overrides", "draft_model", "hf_tokenizer_config_path", "chat_template_kwargs")


def _llama_init_parameters() -> frozenset[str]:
    return frozenset(inspect.signature(llama_cpp.Llama.__init__).parameters)


def _kv_overrides(items: list[str] | None) -> dict[str, bool | int | float | str] | None:
    """``key=type:value`` strings (type bool | int | float | str), as llama_cpp.server reads them."""
    if items is None:
        return None
    casts: dict[str, Callable[[str], bool | int | float | str]] = {
        "bool": lambda v: v.lower() in ("true", "1"),
        "int": int,
        "float": float,
        "str": str,
    }
    out: dict[str, bool | int | float | str] = {}
    for item in items:
        key, sep, typed = item.partition("=")
        value_type, sep2, value = typed.partition(":")
        if not sep or not sep2 or value_type not in casts:
            raise ValueError(f"kv_overrides item {item!r} is not key=type:value with type in {sorted(casts)}")
        out[key] = casts[value_type](value)
    return out


def load_llama(settings: CocktailModelSettings) -> Llama:
    """`cocktail_gguf.Llama` for one model entry of the settings."""
    for name in _NOT_SUPPORTED:
        if getattr(settings, name):
            raise ValueError(f"{name}={getattr(settings, name)!r} is not supported by cocktail-gguf serve")
    init = _llama_init_parameters()
    kwargs: dict[str, Any] = {
        name: getattr(settings, name)
        for name in type(settings).model_fields
        if name in init and name not in _CONVERTED
    }
    kwargs["kv_overrides"] = _kv_overrides(settings.kv_overrides)
    if settings.draft_model is not None:
        kwargs["draft_model"] = llama_speculative.LlamaPromptLookupDecoding(
            num_pred_tokens=settings.draft_model_num_pred_tokens
        )
    if settings.chat_format == "hf-tokenizer-config":
        if settings.hf_tokenizer_config_path is None:
            raise ValueError("chat_format='hf-tokenizer-config' needs hf_tokenizer_config_path")
        with open(settings.hf_tokenizer_config_path, encoding="utf-8") as f:
            kwargs["chat_handler"] = (
                llama_cpp.llama_chat_format.hf_tokenizer_config_to_chat_completion_handler(json.load(f))
            )
    llm = Llama(
        str(settings.model),
        kv_mode=settings.kv_mode,
        chunk_size=settings.chunk_size,
        alpha=settings.alpha,
        beta=settings.beta,
        encoder=settings.encoder,
        **kwargs,
    )
    if settings.chat_template_kwargs:
        base_handler = (
            llm.chat_handler
            or llm._chat_handlers.get(llm.chat_format)
            or llama_cpp.llama_chat_format.get_chat_completion_handler(llm.chat_format)
        )
        llm.chat_handler = partial(_with_template_kwargs, base_handler, dict(settings.chat_template_kwargs))
    if settings.cache:
        cache_cls = llama_cpp.LlamaDiskCache if settings.cache_type == "disk" else llama_cpp.LlamaRAMCache
        llm.set_cache(cache_cls(capacity_bytes=settings.cache_size))
    return llm


def _with_template_kwargs(handler: Callable[..., Any], template_kwargs: dict[str, Any], **kwargs: Any) -> Any:
    return handler(**{**template_kwargs, **kwargs})


class CocktailLlamaProxy(LlamaProxy):
    """llama_cpp.server's model switcher, loading `cocktail_gguf.Llama`."""

    @staticmethod
    def load_llama_from_model_settings(settings: ModelSettings) -> Llama:
        if not isinstance(settings, CocktailModelSettings):  # an entry added as upstream's ModelSettings
            settings = CocktailModelSettings.model_validate(settings.model_dump())
        return load_llama(settings)


# --- the two routes that are ours -------------------------------------------------------------
class CocktailChatCompletionRequest(CreateChatCompletionRequest):
    cocktail_query: Optional[str] = Field(  # noqa: UP045
        default=None,
        description="cocktail-gguf: the query the context's chunks are ranked against (kv_mode != f16); "
        "default: the last user message, the messages before it being the context.",
    )


class CocktailCompletionRequest(CreateCompletionRequest):
    cocktail_query: Optional[str] = Field(  # noqa: UP045
        default=None,
        description="cocktail-gguf: the query the prompt's chunks are ranked against (kv_mode != f16).",
    )


# Upstream's response TypedDicts plus an optional "cocktail" key, so that FastAPI's validation keeps it.
# A TypedDict's annotations, inherited ones too, resolve in the namespace of its __module__: upstream's
# forward references ("ChatCompletionResponseChoice", ...) only resolve in llama_cpp.llama_types.
# (mypy sees llama_cpp as Any, hence the ignores.)
class CocktailChatCompletion(CreateChatCompletionResponse, total=False):  # type: ignore[call-arg]
    __module__ = CreateChatCompletionResponse.__module__
    cocktail: Dict[str, Any]  # noqa: UP006  (plan summary, kv_bytes, timings)


class CocktailCompletion(CreateCompletionResponse, total=False):  # type: ignore[call-arg]
    __module__ = CreateCompletionResponse.__module__
    cocktail: Dict[str, Any]  # noqa: UP006


class CocktailRouteErrorHandler(RouteErrorHandler):
    """Upstream's OpenAI-style errors; a ValueError (a bad request value named by `Llama`) is a 400."""

    def error_message_wrapper(self, error: Exception, body: Any = None) -> tuple[int, Any]:
        if isinstance(error, ValueError) and not any(
            p.search(str(error)) for p in self.pattern_and_formatters
        ):
            return 400, ErrorResponse(message=str(error), type="invalid_request_error", param=None, code=None)
        result: tuple[int, Any] = super().error_message_wrapper(error, body)
        return result


router = APIRouter(route_class=CocktailRouteErrorHandler)
_EXCLUDED_FIELDS = {"n", "best_of", "logit_bias_type", "user", "min_tokens"}  # as upstream
_CHAT_PATH = "/v1/chat/completions"
_COMPLETION_PATHS = ("/v1/completions", "/v1/engines/copilot-codex/completions")


def _call_chat(llama: Llama, **kwargs: Any) -> Any:
    return llama.create_chat_completion(**kwargs)  # bound: the subclass's method


def _call_completion(llama: Llama, **kwargs: Any) -> Any:
    return llama.create_completion(**kwargs)


def _request_kwargs(body: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = body.model_dump(exclude=_EXCLUDED_FIELDS)
    if kwargs.get("cocktail_query") is None:
        kwargs.pop("cocktail_query", None)  # llama_cpp.Llama's own methods do not take it
    return kwargs


async def _respond(
    request: Request, body: Any, body_model: str | None, call: Callable[..., Any], kwargs: dict[str, Any]
) -> Any:
    if kwargs.get("stream", False):
        send_chan, recv_chan = anyio.create_memory_object_stream(10)  # type: ignore[var-annotated]
        return EventSourceResponse(
            recv_chan,
            data_sender_callable=partial(
                upstream.get_event_publisher,
                request=request,
                inner_send_chan=send_chan,
                body=body,
                body_model=body_model,
                llama_call=call,
                kwargs=kwargs,
            ),
            sep="\n",
            ping_message_factory=upstream._ping_message_factory,
        )
    async with contextlib.asynccontextmanager(upstream.get_llama_proxy)() as llama_proxy:
        llama = upstream.prepare_request_resources(body, llama_proxy, body_model, kwargs)
        if await request.is_disconnected():
            raise HTTPException(status_code=status.HTTP_400_BAD_REQUEST, detail="Client closed request")
        return await run_in_threadpool(call, llama, **kwargs)


@router.post(
    _CHAT_PATH,
    summary="Chat",
    dependencies=[Depends(upstream.authenticate)],
    response_model=Union[CocktailChatCompletion, str],  # noqa: UP007
    tags=[upstream.openai_v1_tag],
)
async def create_chat_completion(request: Request, body: CocktailChatCompletionRequest) -> Any:
    """OpenAI chat completion; with kv_mode != f16 the answer carries "cocktail" (in the last chunk when
    streaming): the plan summary, KV bytes and timings of the request."""
    return await _respond(request, body, body.model, _call_chat, _request_kwargs(body))


@router.post(
    _COMPLETION_PATHS[0],
    summary="Completion",
    dependencies=[Depends(upstream.authenticate)],
    response_model=Union[CocktailCompletion, str],  # noqa: UP007
    tags=[upstream.openai_v1_tag],
)
@router.post(_COMPLETION_PATHS[1], include_in_schema=False, dependencies=[Depends(upstream.authenticate)])
async def create_completion(request: Request, body: CocktailCompletionRequest) -> Any:
    """OpenAI text completion (one prompt)."""
    if isinstance(body.prompt, list):
        if len(body.prompt) > 1:
            raise HTTPException(status_code=400, detail="one prompt per request")
        body.prompt = body.prompt[0] if body.prompt else ""
    body_model = "copilot-codex" if request.url.path == _COMPLETION_PATHS[1] else body.model
    return await _respond(request, body, body_model, _call_completion, _request_kwargs(body))


def _upstream_routes() -> APIRouter:
    """llama_cpp.server's routes except the ones re-declared here."""
    ours = {_CHAT_PATH, *_COMPLETION_PATHS}
    kept = APIRouter()
    kept.routes.extend(r for r in upstream.router.routes if not (isinstance(r, APIRoute) and r.path in ours))
    return kept


# --- the app ------------------------------------------------------------------------------------
def create_app(
    server_settings: ServerSettings | None = None,
    model_settings: Sequence[CocktailModelSettings] | None = None,
) -> FastAPI:
    """The FastAPI app; loads the first model. Without arguments the settings come from the environment
    (``MODEL``, ``KV_MODE``, ...; for ``uvicorn cocktail_gguf.server:create_app --factory``)."""
    if server_settings is None and model_settings is None:
        settings = CocktailSettings()
        server_settings = _part(ServerSettings, settings)
        model_settings = [_part(CocktailModelSettings, settings)]
    if server_settings is None or not model_settings:
        raise ValueError("create_app needs server_settings and at least one model setting, or neither")
    upstream.set_server_settings(server_settings)
    # upstream's routes (and get_llama_proxy's locks) read the proxy from this module global
    proxy = CocktailLlamaProxy(models=list(model_settings))
    upstream._llama_proxy = proxy
    if server_settings.disable_ping_events:
        upstream.set_ping_message_factory(lambda: b"")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        proxy.free()  # the model's memory goes with the server, not at interpreter exit

    app = FastAPI(
        middleware=[Middleware(RawContextMiddleware, plugins=(RequestIdPlugin(),))],
        title="cocktail-gguf (llama.cpp Python API)",
        version=llama_cpp.__version__,
        root_path=server_settings.root_path,
        lifespan=lifespan,
    )
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
    )
    app.include_router(router)
    app.include_router(_upstream_routes())
    return app


def _settings_from_config_file(path: str) -> tuple[ServerSettings, list[CocktailModelSettings]]:
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} is not a file")
    with open(path, "rb") as f:
        if path.endswith((".yaml", ".yml")):
            import yaml

            config = CocktailConfigFileSettings.model_validate_json(json.dumps(yaml.safe_load(f)))
        else:
            config = CocktailConfigFileSettings.model_validate_json(f.read())
    return _part(ServerSettings, config), list(config.models)


def _part(cls: Any, settings: Any) -> Any:
    """The ``cls`` fields of a settings object (settings classes forbid unknown fields)."""
    return cls.model_validate({k: v for k, v in settings.model_dump().items() if k in cls.model_fields})


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="OpenAI-compatible server (llama_cpp.server) on cocktail_gguf.Llama; each answer "
        'carries a "cocktail" key with the plan summary, KV bytes and timings (kv_mode != f16).',
    )
    add_args_from_model(parser, CocktailSettings)
    parser.add_argument("--config_file", type=str, help="JSON or YAML config file (llama_cpp.server format)")
    return parser


def _validation_message(exc: ValidationError) -> str:
    """One line per bad setting: ``name=value: why`` (settings-wide checks: ``why``)."""
    parts = []
    for e in exc.errors():
        name = ".".join(str(x) for x in e["loc"])
        parts.append(
            f"{name}={e.get('input')!r}: {e['msg']}" if name else e["msg"].removeprefix("Value error, ")
        )
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parses the options, loads the model and serves until interrupted."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config_file = os.environ.get("CONFIG_FILE", args.config_file)
        if config_file:
            server_settings, model_settings = _settings_from_config_file(config_file)
        else:
            server_settings = parse_model_from_args(ServerSettings, args)
            model_settings = [parse_model_from_args(CocktailModelSettings, args)]
    except ValidationError as exc:  # the usage is long: the error line only, exit status 2 as argparse's
        parser.exit(2, f"{parser.prog}: error: {_validation_message(exc)}\n")
    except (ValueError, OSError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    try:
        app = create_app(server_settings=server_settings, model_settings=model_settings)
    except (ValueError, RuntimeError) as exc:  # a model llama.cpp cannot load, or the segmented cache refuses
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=os.getenv("HOST", server_settings.host),
        port=int(os.getenv("PORT", server_settings.port)),
        ssl_keyfile=server_settings.ssl_keyfile,
        ssl_certfile=server_settings.ssl_certfile,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m cocktail_gguf.server"))
