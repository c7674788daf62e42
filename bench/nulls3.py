"""A minimal S3-protocol server that accepts multipart uploads and discards the bytes.

It answers just what a multipart upload needs (create, upload part, complete, abort, plus
HEAD/DELETE of the object), so the S3 benchmark can show wingsbak's own cost of streaming into
S3 without the bench machine's S3 server being the bottleneck. Run: python -m bench.nulls3 PORT
"""

from __future__ import annotations

import hashlib
import sys
import uuid

from aiohttp import web

_CREATED = (
    '<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult>'
    "<Bucket>{bucket}</Bucket><Key>{key}</Key><UploadId>{upload}</UploadId>"
    "</InitiateMultipartUploadResult>"
)
_COMPLETED = (
    '<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult>'
    '<Bucket>{bucket}</Bucket><Key>{key}</Key><ETag>"{etag}"</ETag>'
    "</CompleteMultipartUploadResult>"
)


async def handle(request: web.Request) -> web.StreamResponse:
    bucket, _, key = request.match_info["path"].partition("/")
    query = request.query
    if request.method == "POST" and "uploads" in query:
        body = _CREATED.format(bucket=bucket, key=key, upload=uuid.uuid4().hex)
        return web.Response(text=body, content_type="application/xml")
    if request.method == "PUT" and "partNumber" in query:
        size = 0
        async for chunk in request.content.iter_chunked(1 << 20):
            size += len(chunk)  # discarded: this server measures the client, not storage
        etag = hashlib.md5(f"{query['uploadId']}-{query['partNumber']}-{size}".encode())
        return web.Response(headers={"ETag": f'"{etag.hexdigest()}"'})
    if request.method == "POST" and "uploadId" in query:
        await request.read()
        body = _COMPLETED.format(bucket=bucket, key=key, etag=uuid.uuid4().hex)
        return web.Response(text=body, content_type="application/xml")
    if request.method in ("DELETE", "PUT"):
        await request.read()
        return web.Response(status=204 if request.method == "DELETE" else 200)
    return web.Response(status=404)


def main() -> None:
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{path:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
