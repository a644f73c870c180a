"""Run the MCP server: stdio (default) or streamable HTTP on 127.0.0.1 (`ropelime-mcp`, `ropelime serve`)."""

from __future__ import annotations

import argparse
import hmac
import logging
import sys
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options (shared by `ropelime-mcp` and `ropelime serve`)."""
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1; any other host needs "
                                                            "--token)")
    parser.add_argument("--token", help="bearer token every HTTP request must carry (Authorization: Bearer "
                                        "<token>; default: $ROPELIME_MCP_TOKEN)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a further Host header name accepted over HTTP (repeatable; DNS-rebinding protection)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; the path is /mcp)")
    parser.add_argument("--surrogate", help="surrogate: a catalogued name (ropelime models), 'auto' (the largest "
                                            "installed one that scores a HotpotQA-size call within 40 s here), a "
                                            "model directory, a .gguf file or a hub id (default: $ROPELIME_SURROGATE, "
                                            "else auto)")
    parser.add_argument("--device", help="cpu, cuda, … (default: $ROPELIME_DEVICE, else cuda when available)")
    parser.add_argument("--api-base", help="base URL of an OpenAI-compatible closed model (default: $ROPELIME_API_BASE)")
    parser.add_argument("--model", help="closed model asked when a call gives neither response nor model "
                                        "(default: $ROPELIME_MODEL)")


def serve(args: argparse.Namespace) -> int:
    """Build the server from parsed arguments and run it until the client goes away.

    The server answers at once; the surrogate loads in the background (tool calls wait for it).
    """
    from ropelime import settings
    from ropelime.errors import InputError
    from ropelime_server.app import build_server
    from ropelime_server.engine import EngineOptions

    token = args.token or settings.mcp_token()
    if args.http and args.host not in LOOPBACK and not token:
        print(f"error: refusing to serve on {args.host} without a token: set ROPELIME_MCP_TOKEN (or --token) so that "
              "requests must carry it, or serve on 127.0.0.1.", file=sys.stderr)
        return 2
    try:
        options = EngineOptions.from_env(surrogate=args.surrogate, device=args.device, api_base=args.api_base,
                                         default_model=args.model)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    server = build_server(options)
    if not args.http:
        server.run("stdio")
        return 0
    import anyio
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    hosts = [*LOOPBACK, args.host, *args.allow_host]
    security = TransportSecuritySettings(  # DNS-rebinding protection on every host, not only loopback
        allowed_hosts=[f"[{h}]:*" if ":" in h else f"{h}:*" for h in hosts],
        allowed_origins=[f"http://[{h}]:*" if ":" in h else f"http://{h}:*" for h in hosts])
    app = server.streamable_http_app(host=args.host, transport_security=security)
    if token:
        app = BearerToken(app, token)
    level = "info" if getattr(args, "verbose", False) else "warning"
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=level)
    http = uvicorn.Server(config)

    async def serve_and_announce() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(http.serve)
            while not http.started and not http.should_exit:
                await anyio.sleep(0.05)
            if http.started:
                host = f"[{args.host}]" if ":" in args.host else args.host
                print(f"listening on http://{host}:{args.port}/mcp", file=sys.stderr, flush=True)

    anyio.run(serve_and_announce)
    return 1 if not http.started else 0


class BearerToken:
    """ASGI middleware: HTTP requests without `Authorization: Bearer <token>` get 401."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error": "unauthorized: send Authorization: Bearer <token>"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `ropelime-mcp` and `python -m ropelime_server`. Logs go to stderr, never stdout."""
    parser = argparse.ArgumentParser(prog="ropelime-mcp", description="RoPE-LIME MCP server (stdio by default).")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
