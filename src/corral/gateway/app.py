"""The HTTP routes: OpenAI's Files and Batches endpoints as the official SDK calls them, and the
dashboard at ``/``.

Errors have OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``) so every client
library reports them as it would OpenAI's. With an API key set, every route but the dashboard's
static page needs ``Authorization: Bearer <key>`` (the page itself holds no data; it asks for the
key and sends it with its polls). The key is compared in constant time and never logged: the
access log is off.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from .batches import BatchRequestError
from .dashboard import PAGE
from .files import FileRecord, label, new_file_id
from .service import Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHUNK = 1 << 16
MULTIPART_SLACK = 4096  # bytes of multipart framing allowed over the cap in Content-Length
PUBLIC = frozenset({"/", "/favicon.ico"})


def error(status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> web.Response:
    return json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                         status=status)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def make_app(gateway: Gateway) -> web.Application:
    key = gateway.options.api_key

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if key and request.path not in PUBLIC:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return error(401, "Incorrect or missing API key: send Authorization: Bearer <key>",
                             code="invalid_api_key")
        try:
            return await handler(request)
        except BatchRequestError as exc:
            return error(exc.status, str(exc), param=exc.param,
                         code="not_found" if exc.status == 404 else None)

    app = web.Application(middlewares=[guard])
    routes = Routes(gateway)
    app.router.add_get("/", routes.dashboard)
    app.router.add_get("/dashboard/state", routes.dashboard_state)
    app.router.add_post("/v1/files", routes.upload)
    app.router.add_get("/v1/files", routes.list_files)
    app.router.add_get("/v1/files/{file_id}", routes.get_file)
    app.router.add_get("/v1/files/{file_id}/content", routes.file_content)
    app.router.add_delete("/v1/files/{file_id}", routes.delete_file)
    app.router.add_post("/v1/batches", routes.create_batch)
    app.router.add_get("/v1/batches", routes.list_batches)
    app.router.add_get("/v1/batches/{batch_id}", routes.get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", routes.cancel_batch)
    return app


def _limit(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit")
    try:
        value = int(raw) if raw is not None else default
    except ValueError:
        raise BatchRequestError(f"limit must be a whole number, not {raw!r}", param="limit") from None
    if not 1 <= value <= most:
        raise BatchRequestError(f"limit must be from 1 to {most}", param="limit")
    return value


def _page(items: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": more}


class Routes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    # -- files ------------------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        """Multipart ``purpose`` + ``file``, streamed to disk; over the cap is a 413, nothing kept."""
        cap = self.gw.options.max_upload_bytes
        too_large = error(413, f"The file is larger than this gateway's upload limit of {cap:,} bytes "
                               "(corral gateway --max-upload-mb)", code="file_too_large")
        if request.content_length is not None and request.content_length > cap + MULTIPART_SLACK:
            return too_large
        if not request.content_type.startswith("multipart/"):
            return error(400, "upload a file as multipart/form-data with fields purpose and file")
        reader = await request.multipart()
        purpose: str | None = None
        stored: tuple[str, str] | None = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: not part of the Files API
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file" and stored is None:
                file_id = new_file_id()
                output = self.gw.files.writer(file_id)
                size = 0
                with output.open("wb") as handle:
                    while chunk := await part.read_chunk(CHUNK):
                        size += len(chunk)
                        if size > cap:
                            break
                        handle.write(chunk)
                if size > cap:
                    output.abort()
                    return too_large
                output.commit()
                stored = (file_id, label(part.filename))
            else:
                await part.release()
        if stored is None:
            return error(400, "no file in the upload: send the field `file`", param="file")
        file_id, filename = stored
        if purpose != "batch":
            self.gw.files.path(file_id).unlink(missing_ok=True)
            return error(400, f"purpose must be 'batch' (this gateway runs batches), not {purpose!r}",
                         param="purpose")
        return json_response(self.gw.files.added(file_id, filename, "batch").api())

    async def list_files(self, request: web.Request) -> web.Response:
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise BatchRequestError("order must be asc or desc", param="order")
        records, more = self.gw.files.page(limit=_limit(request, 10000, 10000),
                                           after=request.query.get("after"),
                                           purpose=request.query.get("purpose"),
                                           newest_first=order == "desc")
        return json_response(_page([r.api() for r in records], more))

    def _file(self, request: web.Request) -> FileRecord:
        file_id = request.match_info["file_id"]
        record = self.gw.files.get(file_id)
        if record is None:
            raise BatchRequestError(f"No such File object: {file_id}", param="id", status=404)
        return record

    async def get_file(self, request: web.Request) -> web.Response:
        return json_response(self._file(request).api())

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        record = self._file(request)
        return web.FileResponse(self.gw.files.path(record.id),
                                headers={"Content-Type": "application/octet-stream"})

    async def delete_file(self, request: web.Request) -> web.Response:
        record = self._file(request)
        reader = self.gw.batches.reading(record.id)
        if reader is not None:
            raise BatchRequestError(f"file {record.id} is the input of batch {reader}, which has not "
                                    "finished; cancel it first", status=409)
        self.gw.files.delete(record.id)
        return json_response({"id": record.id, "object": "file", "deleted": True})

    # -- batches ----------------------------------------------------------------------------------
    async def create_batch(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise BatchRequestError("the body must be JSON") from None
        if not isinstance(body, dict):
            raise BatchRequestError("the body must be a JSON object")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                raise BatchRequestError(f"Missing required parameter: '{name}'", param=name)
        batch = self.gw.create(body["input_file_id"], body["endpoint"], body["completion_window"],
                               body.get("metadata"))
        return json_response(batch.api())

    async def list_batches(self, request: web.Request) -> web.Response:
        batches, more = self.gw.batches.page(_limit(request, 20, 100), request.query.get("after"))
        return json_response(_page([(self.gw.current(b.id) or b).api() for b in batches], more))

    async def get_batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        batch = self.gw.current(batch_id)
        if batch is None:
            raise BatchRequestError(f"No such batch: {batch_id}", status=404)
        return json_response(batch.api())

    async def cancel_batch(self, request: web.Request) -> web.Response:
        return json_response(self.gw.cancel(request.match_info["batch_id"]).api())

    # -- dashboard --------------------------------------------------------------------------------
    async def dashboard(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html",
                            headers={"Content-Security-Policy": "default-src 'self'; "
                                     "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    async def dashboard_state(self, request: web.Request) -> web.Response:
        return json_response(self.gw.dashboard_state())
