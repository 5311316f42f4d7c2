"""The ``scratchgpt`` command line.

Each subcommand only wires arguments to a package function; errors about the user's input
(``ValueError``, ``OSError``) become one line on stderr and exit status 1.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel, PreTrainedModel

from .modeling import ScratchGPTForCausalLM
from .modeling.convert import from_gpt2, to_gpt2


__all__ = ["main"]


def _require_model_folder(src: str, model_type: str) -> None:
    """Fail early, in one line, unless ``src`` is a local model folder of the given ``model_type``."""
    config_file = Path(src) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{src}: not a model folder (no config.json)")
    found = AutoConfig.from_pretrained(src, trust_remote_code=False).model_type
    if found != model_type:
        raise ValueError(f"{src}: holds a {found!r} model, expected {model_type!r}")


def _has_tokenizer(src: str) -> bool:
    return any((Path(src) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def _refuse_existing(dst: str) -> None:
    target = Path(dst)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{dst}: already exists and is not empty")


def save_model_folder(model: PreTrainedModel, dst: str, tokenizer_src: str | None = None) -> None:
    """Write ``model`` (and the tokenizer found in ``tokenizer_src``, if any) to ``dst`` atomically.

    Everything is written to a temporary folder beside ``dst`` and moved into place at the end, so an
    interrupted run leaves no half-written model folder. An existing non-empty ``dst`` is refused.
    """
    _refuse_existing(dst)
    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        if tokenizer_src is not None and _has_tokenizer(tokenizer_src):
            AutoTokenizer.from_pretrained(tokenizer_src).save_pretrained(staging)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _convert(args: argparse.Namespace) -> None:
    _refuse_existing(args.dst)  # before the (possibly long) load
    if args.direction == "to-gpt2":
        _require_model_folder(args.src, "scratchgpt")
        converted = to_gpt2(ScratchGPTForCausalLM.from_pretrained(args.src))
    else:
        _require_model_folder(args.src, "gpt2")
        converted = from_gpt2(GPT2LMHeadModel.from_pretrained(args.src))
    save_model_folder(converted, args.dst, tokenizer_src=args.src)
    print(f"saved {converted.__class__.__name__} ({converted.num_parameters():,} parameters) to {args.dst}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scratchgpt", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a model folder between ScratchGPT and GPT-2")
    convert.add_argument("direction", choices=["to-gpt2", "from-gpt2"],
                         help="to-gpt2: ScratchGPT folder -> stock GPT2LMHeadModel folder; from-gpt2: the reverse")
    convert.add_argument("src", help="source model folder (its tokenizer files are carried along)")
    convert.add_argument("dst", help="destination folder (must not exist or be empty)")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, OSError) as error:
        print(f"scratchgpt {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
