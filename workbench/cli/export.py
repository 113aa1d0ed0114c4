"""``workbench export --ckpt DIR --merge-lora``: a merged full model in the native format."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="merge a LoRA checkpoint into a full model")
    p.add_argument("--ckpt", required=True, help="checkpoint-N or final folder of a LoRA fine-tune")
    p.add_argument("--merge-lora", action="store_true", help="merge the adapter into the base weights")
    p.add_argument("--base", default=None, help="base model (default: the one the fine-tune recorded)")
    p.add_argument("--out", default=None, help="output folder (default: <ckpt>-merged)")
    p.add_argument("--no-track", action="store_true",
                   help="do not log the merged model to the fine-tune's MLflow run (logged by default when known)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..errors import UserInputError
    from ..export import merge, training_settings

    if not args.merge_lora:
        raise UserInputError("Nothing to do: add --merge-lora (the only export so far).")
    run_id = None if args.no_track else training_settings(args.ckpt).get("run_id")
    out = merge(args.ckpt, args.out, base=args.base, run_id=run_id)
    print(out)
    if run_id:
        print(f"logged and registered in MLflow run {run_id}")
    return 0
