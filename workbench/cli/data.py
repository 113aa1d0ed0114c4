"""``workbench data check FILE...``: every problem of every line, then a summary."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="inspect fine-tuning datasets")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("check", help="validate dataset files and summarise them")
    c.add_argument("files", nargs="+", help=".json / .jsonl files")
    c.add_argument("--model", default="demo", help="whose tokenizer, template and tiling to count with")
    c.add_argument("--max-length", type=int, default=4096)
    c.add_argument("--max-tiles", type=int, default=None)
    c.set_defaults(run=run)


def run(args) -> int:
    from transformers import AutoProcessor

    from ..data import check
    from ..session import _download, resolve

    where, spec = resolve(args.model)
    path = where if not isinstance(where, str) else _download(where)
    processor = AutoProcessor.from_pretrained(path)
    report = check(args.files, processor, max_length=args.max_length,
                   max_tiles=args.max_tiles or (spec.max_tiles if spec else 6),
                   default_system=spec.system_prompt if spec else None,
                   multi_turn_images=spec.multi_turn_images if spec else True)
    print(report)
    return 1 if report.problems else 0
