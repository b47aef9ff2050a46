"""`slimtune serve`: check what can be checked before listening, then run uvicorn.

Refused before anything listens (exit 2, one line): a non-loopback host without
SLIMTUNE_API_TOKEN, a storage URL SQLAlchemy cannot parse, and a missing 'serve' extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimtune.storage import StorageError, safe_url

from slimtune.search.web.security import TOKEN_ENV, Refused, check_can_listen, token_from_env

EXIT_BAD_INPUT = 2


def serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from slimtune.search.web.service import Settings, create_app
    except ImportError as error:
        print(f"slimtune: error: serve needs the 'serve' extra (pip install 'slimtune[serve]'): {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    token = token_from_env()
    try:
        check_can_listen(args.host, token)
        _check_url(args.storage)
    except (Refused, StorageError) as error:
        print(f"slimtune: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    settings = Settings(
        storage_url=args.storage, token=token, export_root=Path(args.export_root),
        data_dir=Path(args.data_dir) if args.data_dir else None,
    )
    print(f"slimtune serve: http://{args.host}:{args.port}/  storage {safe_url(args.storage)}  "
          f"changes {'need the bearer token' if token else f'refused (no {TOKEN_ENV})'}", flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


def _check_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError as error:
        raise StorageError(f"--storage {url!r}: not a SQLAlchemy URL ({error})") from None
