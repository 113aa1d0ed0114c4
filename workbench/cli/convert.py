"""``workbench convert SRC DST``: an original-format (remote-code) InternVL checkpoint → native."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert an original-format InternVL checkpoint to the native format")
    p.add_argument("src", help="folder of the original checkpoint (config.json with InternVLChatModel)")
    p.add_argument("dst", help="new folder for the native model (must not exist)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..convert import convert

    print(convert(args.src, args.dst))
    return 0
