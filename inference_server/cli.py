"""Command line: parse flags, load the engine, serve with a threaded WSGI server.

Why werkzeug's threaded server: one process, one model copy, concurrent HTTP
handling (the model itself is serialised by a lock), and streaming that notices
a client that went away.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

log = logging.getLogger("inference_server")


def build_parser() -> argparse.ArgumentParser:
    """The flags, named like vLLM's where vLLM has them."""
    p = argparse.ArgumentParser(prog="python -m inference_server", description=__doc__)
    p.add_argument("--model", help="plain Hugging Face model directory (config, safetensors, tokenizer)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed in the ready line)")
    p.add_argument("--served-model-name", help="model id to serve (default: the model directory's name)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--max-model-len", type=int, help="default: config.max_position_embeddings")
    p.add_argument("--null-tokens", type=int, help="null mode: no model, answer N fixed tokens (benchmarks)")
    p.add_argument("--token-delay", type=float, default=0.0, help="null mode: seconds per token")
    p.add_argument("--hidden-size", type=int, help="hidden size for null mode (checked against the model otherwise)")
    p.add_argument(
        "--output-protection",
        action="store_true",
        help="encrypt output to a requester's x-client-public-key (protocols v2 and v1, docs/output-protection.md)",
    )
    p.add_argument(
        "--script",
        nargs="?",
        const="",
        metavar="FILE",
        help="scripted output: answer the texts queued by POST /script, then those of FILE "
        "(a JSON list, in turn), whatever the prompt (tests, tool-calling demos)",
    )
    p.add_argument("--log-level", default="INFO")
    return p


def _load_engine(args: argparse.Namespace, parser: argparse.ArgumentParser):
    if args.null_tokens is not None:
        if args.null_tokens < 0 or not args.hidden_size or args.hidden_size < 1:
            parser.error("--null-tokens N (N >= 0) needs --hidden-size H (H >= 1)")
        from inference_server.generation import NullEngine

        return NullEngine(
            args.hidden_size, args.null_tokens, args.max_model_len or 8192, args.dtype, token_delay=args.token_delay
        ), "null"
    if not args.model:
        parser.error("--model DIR is required (or --null-tokens N --hidden-size H)")
    from inference_server.generation import load_model_engine

    try:
        engine = load_model_engine(args.model, args.dtype, args.max_model_len)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot load model {args.model}: {exc}")
    if args.hidden_size is not None and args.hidden_size != engine.hidden_size:
        parser.error(f"--hidden-size {args.hidden_size} does not match the model's {engine.hidden_size}")
    return engine, Path(args.model.rstrip("/")).name


def main(argv: list[str] | None = None) -> int:
    """Start the server; returns when SIGTERM/SIGINT arrives."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request access lines

    engine, default_name = _load_engine(args, parser)
    script = None
    if args.script is not None:
        from inference_server.script import Script, ScriptedEngine

        try:
            script = Script.from_file(args.script)
        except (OSError, ValueError) as exc:
            parser.error(f"--script {args.script}: {exc}")
        engine = ScriptedEngine(engine, script)
    from werkzeug.serving import make_server  # late: flag errors above stay fast

    from inference_server.app import ServerSettings, create_app

    settings = ServerSettings(
        served_model_name=args.served_model_name or default_name,
        api_key=args.api_key,
        output_protection=args.output_protection,
        script=script,
    )
    server = make_server(args.host, args.port, create_app(engine, settings), threaded=True)

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"inference_server ready on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
