"""The ``scratchgpt`` command line.

Each subcommand only wires arguments to package functions. Errors about the user's input (``ValueError``,
``OSError``) become one line on stderr and exit status 1; outputs are written to a staging folder and moved into
place only when complete, so a failed or interrupted run leaves nothing that looks finished.
"""

import argparse
import logging
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel, PreTrainedModel, PreTrainedTokenizerBase

from .data.cleaning import CLEAN_MODES
from .data.prepare import prepare_dataset, read_metadata
from .data.sources import iter_documents, iter_texts, resolve_inputs
from .modeling import ScratchGPTForCausalLM
from .modeling.convert import convert_legacy_checkpoint, from_gpt2, to_gpt2
from .staging import refuse_existing, staged_output
from .tokenization import bytes_per_token, hold_out, train_bpe_tokenizer, train_char_tokenizer


__all__ = ["main", "save_model_folder"]


def save_model_folder(model: PreTrainedModel, dst: str, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Write ``model`` (and ``tokenizer``, if given) to ``dst`` atomically (see ``staged_output``)."""
    with staged_output(dst) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)


def _require_model_folder(src: str, model_type: str) -> None:
    """Fail early, in one line, unless ``src`` is a local model folder of the given ``model_type``."""
    if not (Path(src) / "config.json").is_file():
        raise FileNotFoundError(f"{src}: not a model folder (no config.json)")
    found = AutoConfig.from_pretrained(src, trust_remote_code=False).model_type
    if found != model_type:
        raise ValueError(f"{src}: holds a {found!r} model, expected {model_type!r}")


def _tokenizer_beside(src: str) -> PreTrainedTokenizerBase | None:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    return AutoTokenizer.from_pretrained(src) if any((Path(src) / n).is_file() for n in names) else None


def _convert(args: argparse.Namespace) -> None:
    refuse_existing(args.dst)  # before the (possibly long) load
    if args.direction == "legacy":
        converted, tokenizer = convert_legacy_checkpoint(args.src)
    elif args.direction == "to-gpt2":
        _require_model_folder(args.src, "scratchgpt")
        converted, tokenizer = to_gpt2(ScratchGPTForCausalLM.from_pretrained(args.src)), _tokenizer_beside(args.src)
    else:
        _require_model_folder(args.src, "gpt2")
        converted, tokenizer = from_gpt2(GPT2LMHeadModel.from_pretrained(args.src)), _tokenizer_beside(args.src)
    save_model_folder(converted, args.dst, tokenizer)
    print(f"saved {converted.__class__.__name__} ({converted.num_parameters():,} parameters) to {args.dst}")


def _tokenizer_train(args: argparse.Namespace) -> None:
    resolve_inputs(args.input)  # missing or unsupported inputs fail before any work
    refuse_existing(args.output)
    texts, held_out = hold_out(iter_texts(iter_documents(args.input)))
    if args.type == "bpe":
        tokenizer = train_bpe_tokenizer(texts, vocab_size=args.vocab_size or 32000,
                                        min_frequency=args.min_frequency or 2)
    else:
        tokenizer = train_char_tokenizer(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency or 1)
    with staged_output(args.output) as staging:
        tokenizer.save_pretrained(staging)
    compression = f"{bytes_per_token(tokenizer, held_out):.2f} bytes/token" if held_out else "n/a (input too small)"
    print(f"vocabulary size: {len(tokenizer):,} ({args.type})")
    print(f"compression on held-out text ({len(held_out):,} texts): {compression}")
    print(f"saved to {args.output}")


def _load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such tokenizer folder")
    return AutoTokenizer.from_pretrained(path)


def _prepare(args: argparse.Namespace) -> None:
    tokenizer = _load_tokenizer(args.tokenizer)
    prepare_dataset(tokenizer, args.input, args.output, block_size=args.block_size, val_fraction=args.val_fraction,
                    clean=args.clean, num_proc=args.num_proc, seed=args.seed, text_documents=args.text_documents,
                    rebuild=args.rebuild)
    metadata = read_metadata(args.output)
    print(f"\nprepared data in {args.output} (token ids as {metadata['dtype']}, block size "
          f"{metadata['settings']['block_size']}, vocabulary {metadata['tokenizer']['vocab_size']:,})")
    print(f"{'split':<12}{'documents':>12}{'tokens':>15}{'blocks':>12}{'dropped':>10}")
    for name, counts in metadata["splits"].items():
        print(f"{name:<12}{counts['documents']:>12,}{counts['tokens']:>15,}{counts['blocks']:>12,}"
              f"{counts['tokens_dropped']:>10,}")
    cleaning = metadata["cleaning"]
    if cleaning["mode"] != "off":
        print(f"cleaning ({cleaning['mode']}): {cleaning['documents_in']:,} documents in, "
              f"{cleaning['documents_out']:,} out; {cleaning['too_short_removed']:,} too short, "
              f"{cleaning['duplicates_removed']:,} duplicates; {cleaning['documents_normalised']:,} normalised; "
              f"{cleaning['control_chars_removed']:,} control and {cleaning['whitespace_chars_removed']:,} "
              f"whitespace characters removed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scratchgpt", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert model folders: ScratchGPT <-> GPT-2, legacy -> ScratchGPT")
    convert.add_argument("direction", choices=["to-gpt2", "from-gpt2", "legacy"],
                         help="to-gpt2: ScratchGPT folder -> stock GPT2LMHeadModel folder; from-gpt2: the reverse; "
                              "legacy: an original-project checkpoint folder (config.json, pytorch_model.bin, "
                              "tokenizer.json) -> ScratchGPT folder")
    convert.add_argument("src", help="source folder (its tokenizer is carried along)")
    convert.add_argument("dst", help="destination folder (must not exist or be empty)")
    convert.set_defaults(handler=_convert)

    tokenizer = commands.add_parser("tokenizer", help="train a tokenizer")
    tokenizer_commands = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    train = tokenizer_commands.add_parser("train", help="train a byte-level BPE or character tokenizer")
    train.add_argument("--input", nargs="+", required=True, metavar="PATH",
                       help=".txt (blank-line separated documents), .jsonl ('text' or 'messages'), a folder of "
                            "those, or 'chitchat' for the built-in corpus")
    train.add_argument("--output", required=True, metavar="DIR", help="folder to save the tokenizer to")
    train.add_argument("--type", choices=["bpe", "char"], default="bpe", help="tokenizer kind (default: bpe)")
    train.add_argument("--vocab-size", type=int, default=None, metavar="N",
                       help="exact size for bpe (default 32000); an upper bound for char (default: all characters)")
    train.add_argument("--min-frequency", type=int, default=None, metavar="N",
                       help="minimum count of a merge (bpe, default 2) or a character (char, default 1)")
    train.set_defaults(handler=_tokenizer_train)

    prepare = commands.add_parser("prepare", help="tokenize and pack a corpus into a memory-mapped Arrow dataset")
    prepare.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (save_pretrained)")
    prepare.add_argument("--input", nargs="+", required=True, metavar="PATH",
                         help=".txt, .jsonl, .parquet, folders or globs of those, or 'chitchat'")
    prepare.add_argument("--block-size", type=int, required=True, metavar="N", help="tokens per training block")
    prepare.add_argument("--output", required=True, metavar="DIR", help="folder for the prepared dataset")
    prepare.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                         help="fraction of documents held out for validation (default 0.1; 0 for none)")
    prepare.add_argument("--clean", choices=["off", *CLEAN_MODES], default="off", help="cleaning mode (default off)")
    prepare.add_argument("--num-proc", type=int, default=None, metavar="N", help="worker processes for tokenizing")
    prepare.add_argument("--text-documents", choices=["paragraph", "file"], default="paragraph",
                         help=".txt documents: separated by blank lines (default) or one per file")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    prepare.add_argument("--rebuild", action="store_true", help="rebuild even if the output is up to date")
    prepare.set_defaults(handler=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.handler(args)
    except (ValueError, OSError) as error:
        print(f"scratchgpt {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
