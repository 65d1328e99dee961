"""The FastAPI application: the page, and the JSON API over the one worker that owns the models.

Endpoints (documented with ``curl`` examples in the README):

* ``GET /`` (and ``/app.js``, ``/style.css``): the page, three files read once at start-up;
* ``GET /api/info``: which tasks and options this server has, its limits, defaults and example prompts;
* ``GET /api/status``: the queue (waiting, running) and its counters;
* ``POST /api/text2image`` (JSON), ``/api/image2text``, ``/api/post-selection``, ``/api/super-resolution``
  (multipart forms with image files).

Every task endpoint answers with one JSON object when the work is done, or, with ``?stream=true``, with
one JSON event per line while it runs (``queued``, ``started``, ``progress``, ``image``, then ``done`` or
``error``); images are base64 PNGs. A client that disconnects cancels its job. Every refusal is a 4xx
with ``{"error": "one sentence"}``; a full queue is 429.
"""

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import InputError
from web.backend import Backend, Sampling
from web.jobs import Job, JobQueue, QueueFullError
from web.uploads import Limits, UploadError, decode_upload

STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
EXAMPLE_PROMPTS = (
    "蓝色背景上的一只红色的猫",
    "a red cat on a blue background",
    "黄色背景上的一只紫色的马",
    "a white bird on a black background",
    "一只可爱的猫",
    "一个漂亮的女孩",
)
FINAL_EVENTS = ("done", "error")
DISCONNECT_POLL_S = 0.25  # how often a waiting (non-streaming) request checks that its client is there
MAX_CAPTIONS = 8
MAX_GUIDANCE_SCALE = 20.0  # far beyond the useful range (a few units); bounds the request's schema


class SamplingFields(BaseModel):
    """The sampling fields every generating endpoint takes; None means the server's default."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, gt=0, le=100)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


class Text2ImageRequest(SamplingFields):
    """``POST /api/text2image``: a prompt, how many images to draw for it, and the quality levers.

    ``post_select`` K draws K candidates per image and keeps the one the server's scorers rank best;
    ``guidance_scale`` S is classifier-free guidance against the prompt without its caption. 1 = off.
    Left out, each is the server's own (its ``--post-select`` / ``--guidance-scale``, e.g. the bundled demo
    model's manifest defaults), as the command line would use.
    """

    prompt: str
    num_images: int = Field(default=1, ge=1)
    post_select: int | None = Field(default=None, ge=1)  # bounded by Limits.max_candidates with num_images
    guidance_scale: float | None = Field(default=None, ge=0, le=MAX_GUIDANCE_SCALE)


class Image2TextFields(SamplingFields):
    """The text fields of ``POST /api/image2text`` besides the ``image`` file."""

    num_captions: int = Field(default=1, ge=1, le=MAX_CAPTIONS)


class SuperResolutionFields(SamplingFields):
    """The text fields of ``POST /api/super-resolution`` besides the ``image`` file."""

    prompt: str


class PostSelectionFields(BaseModel):
    """The text field of ``POST /api/post-selection`` besides the ``images`` files."""

    model_config = ConfigDict(extra="forbid")

    caption: str


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one shape of every refusal: ``{"error": "one sentence"}``."""
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def validation_sentence(errors: list[dict[str, Any]]) -> str:
    """Pydantic's list of errors → one sentence naming the first field at fault."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return "the request body is not valid JSON"
    where = ".".join(str(part) for part in first["loc"] if part != "body")
    if not where:
        return "the request needs a JSON object body"
    message = f"{where}: {first['msg']}"
    return message + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else "")


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, by Content-Length or while reading the body."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than the limit of {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await error_response(413, message)(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return event

        async def tracked_send(event: Message) -> None:
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await error_response(413, message)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def create_app(
    backend: Backend,
    jobs: JobQueue,
    limits: Limits = Limits(),  # noqa: B008 (a frozen dataclass: one shared default is safe)
    examples: tuple[str, ...] = EXAMPLE_PROMPTS,
) -> FastAPI:
    """The application serving ``backend`` through ``jobs`` within ``limits``."""
    # no /docs page: FastAPI's interactive docs load their scripts from a CDN; the schema stays available
    app = FastAPI(title="CogView web demo", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    pages = {route: ((STATIC / name).read_bytes(), kind) for route, (name, kind) in PAGE_FILES.items()}

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_sentence(list(error.errors())))

    for route, (content, kind) in pages.items():
        page = lambda content=content, kind=kind: Response(content, media_type=kind)  # noqa: E731
        app.add_api_route(route, page, include_in_schema=False)

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "tasks": backend.tasks,
            "options": backend.options,
            "image_size": backend.image_size,
            "defaults": {
                "temperature": backend.args.temperature,
                "top_k": backend.args.top_k,
                "num_images": 1,
                **lever_defaults(),
            },
            "limits": {
                "max_prompt_chars": limits.max_prompt_chars,
                "max_images": limits.max_images,
                "max_candidates": limits.max_candidates,
                "max_guidance_scale": MAX_GUIDANCE_SCALE,
                "max_captions": MAX_CAPTIONS,
                "max_upload_bytes": limits.max_upload_bytes,
                "max_image_pixels": limits.max_image_pixels,
                "queue_size": jobs.size,
            },
            "examples": list(examples),
        }

    @app.get("/api/status")
    def status() -> dict[str, Any]:
        return jobs.status()

    def sampling(fields: SamplingFields) -> Sampling:
        """The request's sampling settings (the quality levers off: only text2image has them)."""
        return Sampling(
            temperature=backend.args.temperature if fields.temperature is None else fields.temperature,
            top_k=backend.args.top_k if fields.top_k is None else fields.top_k,
            seed=fields.seed,
        )

    def lever_defaults() -> dict[str, Any]:
        """The server's post-select K (1 without a model to score with) and guidance scale."""
        post_select = getattr(backend.args, "post_select", 1) if backend.options["post_select"] else 1
        return {"post_select": post_select, "guidance_scale": getattr(backend.args, "guidance_scale", 1.0)}

    def with_lever_defaults(body: Text2ImageRequest) -> Text2ImageRequest:
        """The request with the levers it left out set to the server's defaults."""
        unset = {name: value for name, value in lever_defaults().items() if getattr(body, name) is None}
        return body.model_copy(update=unset)

    def levers(body: Text2ImageRequest) -> None:
        """Refuse a quality lever this backend lacks (rather than ignore it) and too many candidates."""
        if body.post_select > 1 and not backend.options["post_select"]:
            raise HTTPException(
                400,
                "post_select needs a model to score with, and this server has none loaded "
                "(--load-caption or --post-select-load)",
            )
        candidates = body.num_images * body.post_select
        if candidates > limits.max_candidates:
            raise HTTPException(
                400,
                f"num_images × post_select is {body.num_images} × {body.post_select} = {candidates} "
                f"candidate images; the limit is {limits.max_candidates}",
            )

    def require(task: str) -> None:
        if not backend.tasks[task]:
            raise HTTPException(503, f"{task} is not available: this server has no model for it loaded")

    def text(value: str, name: str) -> str:
        value = value.strip()
        if not value:
            raise HTTPException(400, f"{name} is empty")
        if len(value) > limits.max_prompt_chars:
            raise HTTPException(
                400, f"{name} has {len(value)} characters; the limit is {limits.max_prompt_chars}"
            )
        return value

    def checked(check: Callable[[str], list[int]], value: str) -> list[int]:
        try:
            return check(value)
        except InputError as error:
            raise HTTPException(400, str(error)) from None

    async def form_of(
        request: Request, model: type[BaseModel], files: tuple[str, ...]
    ) -> tuple[Any, FormData]:
        """The request's multipart form: its text fields validated by ``model``, and the form itself."""
        form = await request.form(max_files=limits.max_images, max_fields=16)
        values = {key: value for key, value in form.multi_items() if key not in files}
        for key, value in values.items():
            if not isinstance(value, str):
                raise HTTPException(400, f"form field {key} must be text, not a file")
        try:
            return model.model_validate(values), form
        except ValidationError as error:
            raise HTTPException(422, validation_sentence(error.errors())) from None

    async def image_of(upload: Any, label: str) -> Any:
        """An uploaded file field → the normalised image tensor (size, type and pixel limits checked)."""
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, f"{label} is missing: send it as a multipart file field")
        data = await upload.read(limits.max_upload_bytes + 1)
        try:
            return await asyncio.to_thread(decode_upload, data, label, backend.image_size, limits)
        except UploadError as error:
            raise HTTPException(error.status, str(error)) from None

    @app.post("/api/text2image")
    async def text2image(body: Text2ImageRequest, request: Request, stream: bool = False) -> Response:
        require("text2image")
        if body.num_images > limits.max_images:
            raise HTTPException(400, f"num_images is {body.num_images}; the limit is {limits.max_images}")
        body = with_lever_defaults(body)
        levers(body)
        prompt = text(body.prompt, "prompt")
        ids = checked(backend.text2image_ids, prompt)
        caption_ids = None
        if body.post_select > 1:
            caption_ids = checked(backend.check_scored_prompt, prompt)
        settings = dataclasses.replace(
            sampling(body), post_select=body.post_select, guidance_scale=body.guidance_scale
        )

        def work(job: Job) -> dict[str, Any]:
            kept = backend.text2image(ids, body.num_images, settings, job, caption_ids)
            return {"post_selection": kept} if kept else {}

        return await run(request, Job("text2image", work, asyncio.get_running_loop()), stream)

    @app.post("/api/image2text")
    async def image2text(request: Request, stream: bool = False) -> Response:
        require("image2text")
        fields, form = await form_of(request, Image2TextFields, ("image",))
        image = await image_of(form.get("image"), "image")
        settings = sampling(fields)

        def work(job: Job) -> dict[str, Any]:
            return {"captions": backend.image2text(image, fields.num_captions, settings, job)}

        return await run(request, Job("image2text", work, asyncio.get_running_loop()), stream)

    @app.post("/api/post-selection")
    async def post_selection(request: Request, stream: bool = False) -> Response:
        require("post-selection")
        fields, form = await form_of(request, PostSelectionFields, ("images",))
        caption_ids = checked(backend.check_caption, text(fields.caption, "caption"))
        uploads = form.getlist("images")
        if not uploads:
            raise HTTPException(400, "images is missing: send one or more multipart file fields named images")
        images = [await image_of(upload, f"image {n}") for n, upload in enumerate(uploads, 1)]

        def work(job: Job) -> dict[str, Any]:
            scores = backend.post_selection(caption_ids, images, job)
            ranking = sorted(range(len(scores)), key=lambda i: -scores[i])
            return {"scores": scores, "ranking": ranking}

        return await run(request, Job("post-selection", work, asyncio.get_running_loop()), stream)

    @app.post("/api/super-resolution")
    async def super_resolution(request: Request, stream: bool = False) -> Response:
        require("super-resolution")
        fields, form = await form_of(request, SuperResolutionFields, ("image",))
        prompt_ids = checked(backend.check_super_resolution_prompt, text(fields.prompt, "prompt"))
        image = await image_of(form.get("image"), "image")
        settings = sampling(fields)

        def work(job: Job) -> dict[str, Any]:
            backend.super_resolution(prompt_ids, image, settings, job)
            return {}

        return await run(request, Job("super-resolution", work, asyncio.get_running_loop()), stream)

    async def run(request: Request, job: Job, stream: bool) -> Response:
        """Queue ``job`` (429 when full) and answer with its events, streamed or collected."""
        try:
            jobs.submit(job)
        except QueueFullError as error:
            return error_response(429, str(error), {"Retry-After": "1"})
        if stream:
            return StreamingResponse(streamed(job), media_type="application/x-ndjson")
        return await collected(request, job)

    return app


async def streamed(job: Job) -> AsyncIterator[str]:
    """The job's events as JSON lines; when the client goes away the server stops the generator: cancel."""
    started = time.perf_counter()
    try:
        while True:
            event = await job.next_event()
            if event["event"] == "done":
                event["seconds"] = round(time.perf_counter() - started, 3)
            yield json.dumps(event, ensure_ascii=False) + "\n"
            if event["event"] in FINAL_EVENTS:
                return
    finally:
        job.cancel()


async def collected(request: Request, job: Job) -> Response:
    """Wait for the job, checking that the client is still there; one JSON answer with its images."""
    started = time.perf_counter()
    images: dict[int, str] = {}
    next_check = started + DISCONNECT_POLL_S
    try:
        while True:
            try:
                event = await asyncio.wait_for(job.next_event(), DISCONNECT_POLL_S)
            except TimeoutError:
                event = None
            if time.perf_counter() >= next_check:  # also while events keep coming
                next_check = time.perf_counter() + DISCONNECT_POLL_S
                if await request.is_disconnected():
                    job.cancel()
                    return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
            if event is None:
                continue
            if event["event"] == "image":
                images[event["index"]] = event["png"]
            elif event["event"] == "error":
                return error_response(event["status"], event["error"])
            elif event["event"] == "done":
                body = {key: value for key, value in event.items() if key != "event"}
                if images:
                    body["images"] = [images[index] for index in sorted(images)]
                body["seconds"] = round(time.perf_counter() - started, 3)
                return JSONResponse(body)
    finally:
        job.cancel()
