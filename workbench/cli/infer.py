"""``workbench infer``: chat in the terminal, interactively or one question at a time.

Interactive (no ``--query``): a ``<<<`` prompt; for every ``<image>`` tag in what you type you are
asked for an image path or URL; ``clear`` forgets the conversation; ``exit`` quits. One-shot:
``--query "<image>Describe it." --images a.png`` prints the answer (``--stream`` token by token).
``--draw-boxes out.png`` saves the image with any boxes from the answer drawn on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("infer", help="chat with a model (interactive, or one-shot with --query)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="catalog name, hub id or local directory (default: the tiny demo model)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--max-memory", nargs="+", default=None, metavar="SIZE", help="per-GPU budgets, e.g. 15GB 15GB")
    p.add_argument("--device-map", default=None, help="'auto', a JSON object, or a JSON file of module → device")
    p.add_argument("--attn-impl", default=None, help="sdpa, eager, flash_attention_2, …")
    p.add_argument("--quantization", default=None, choices=["int8", "4bit"])
    p.add_argument("--adapter", default=None, help="a PEFT adapter directory to attach")
    p.add_argument("--compile", action="store_true",
                   help="one GPU: compile the decode step (faster tokens; the first answer waits about a minute)")
    p.add_argument("--ckpt", default=None, metavar="DIR",
                   help="a fine-tune checkpoint (checkpoint-N, final or *-merged): reuses the run's model and settings")
    p.add_argument("--query", default=None, help="ask one question and exit")
    p.add_argument("--images", default=None, help="comma-separated image paths or URLs, in <image> order")
    p.add_argument("--videos", default=None, help="comma-separated video paths")
    p.add_argument("--system", default=None, help="system prompt (default: the family's own)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tiles", type=int, default=None, help="448-px tiles per image (default: the family's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--draw-boxes", default=None, metavar="PNG", help="save the image with the answer's boxes drawn")
    p.add_argument("--no-trace", action="store_true",
                   help="do not record the turns as MLflow traces (default: as workbench.tracing says; on unless disabled)")
    p.set_defaults(run=run)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def run(args) -> int:
    from ..chat import GenerationSettings
    from ..session import load

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed)
    settings.check()
    if args.ckpt:
        _from_checkpoint(args)
    session = load(args.model, dtype=args.dtype, max_memory=args.max_memory, device_map=args.device_map,
                   attn_implementation=args.attn_impl, quantization=args.quantization, adapter=args.adapter,
                   compile=args.compile)
    conv = session.chat(system=args.system, settings=settings, max_tiles=args.max_tiles,
                        trace=False if args.no_trace else None)
    try:
        if args.query is not None:
            _answer(conv, args.query, _split(args.images), _split(args.videos), args.stream, args.draw_boxes)
            return 0
        return _interactive(conv, args)
    finally:
        _flush_traces()


def _flush_traces() -> None:
    """Traces are written in the background; a process about to exit waits for them (the first
    time, that includes starting the local MLflow server)."""
    from .. import tracing

    if tracing.pending():
        print("(recording the turns as MLflow traces; --no-trace skips this)", file=sys.stderr)
        if not tracing.flush(120) or tracing.last_error:
            print(f"[trace] not recorded: {tracing.last_error or 'timed out'}", file=sys.stderr)


def _answer(conv, query: str, images: list[str], videos: list[str], stream: bool, draw: str | None) -> None:
    if stream:
        for delta in conv.stream(query, images, videos):
            print(delta, end="", flush=True)
        print()
    else:
        print(conv.ask(query, images, videos))
    turn = conv.turns[-1]
    for problem in turn.grounding.problems:
        print(f"[boxes] {problem}", file=sys.stderr)
    if draw:
        from ..grounding import draw as draw_boxes

        image = conv.image_for(turn)
        if image is None:
            print("[boxes] no image in this conversation to draw on", file=sys.stderr)
        elif not turn.grounding.boxes:
            print("[boxes] the answer has no boxes; nothing drawn", file=sys.stderr)
        else:
            draw_boxes(image, turn.grounding.refs).save(draw)
            print(f"[boxes] {len(turn.grounding.boxes)} box(es) drawn to {draw}", file=sys.stderr)


def _interactive(conv, args) -> int:
    from ..errors import UserInputError

    print(f"Chatting with {conv.session.source}. Type 'clear' to forget, 'exit' to quit; "
          "each <image> in your text asks for an image path or URL.")
    turn_no = 0
    while True:
        try:
            query = input("<<< ")
        except EOFError:
            print()
            return 0
        command = query.strip().lower()
        if command in ("exit", "quit"):
            return 0
        if command == "clear":
            conv.clear()
            print("(conversation cleared)")
            continue
        if not command:
            continue
        images = []
        for i in range(query.count("<image>")):
            try:
                images.append(input(f"Input an image path or URL for <image> {i + 1}: ").strip())
            except EOFError:
                return 0
        turn_no += 1
        draw = None
        if args.draw_boxes:
            out = Path(args.draw_boxes)
            draw = str(out.with_name(f"{out.stem}-{turn_no}{out.suffix or '.png'}"))
        try:
            _answer(conv, query, images, [], True, draw)
        except UserInputError as exc:  # a bad image or tag count: say so and keep the chat going
            print(f"error: {exc}", file=sys.stderr)


def _from_checkpoint(args) -> None:
    """Fill model/adapter/max_tiles from the settings the fine-tune saved beside its checkpoints."""
    from ..errors import UserInputError
    from ..export import training_settings

    ckpt = Path(args.ckpt)
    if not ckpt.is_dir():
        raise UserInputError(f"--ckpt {args.ckpt}: not a folder. Give a checkpoint-N, final or *-merged folder.")
    if (ckpt / "adapter_config.json").exists():
        settings = training_settings(ckpt)
        if not settings and not args.model:
            raise UserInputError(f"{ckpt} has no workbench_sft.json beside it: pass --model (the base) with --adapter.")
        args.model = args.model or settings["model"]
        args.adapter = str(ckpt)
        args.max_tiles = args.max_tiles or settings.get("max_tiles")
    elif (ckpt / "config.json").exists():
        args.model = str(ckpt)
    else:
        raise UserInputError(f"{ckpt} holds neither an adapter (adapter_config.json) nor a model (config.json).")
