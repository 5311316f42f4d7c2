"""The ``scratchgpt`` command line.

Each subcommand only wires arguments to package functions. Errors about the user's input (``ValueError``,
``OSError``) become one line on stderr and exit status 1; outputs are written to a staging folder and moved into
place only when complete, so a failed or interrupted run leaves nothing that looks finished.
"""

import argparse
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoTokenizer,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    set_seed,
)

from .data.cleaning import CLEAN_MODES
from .data.prepare import prepare_dataset, read_metadata
from .data.sources import DEFAULT_SEPARATOR, TEXT_DOCUMENTS, TOKENIZER_TRAIN_BYTES, TextSample, iter_documents, \
    resolve_inputs
from .evaluation import check_windows, evaluate_documents
from .errors import one_line, user_error
from .generation import chat_reply, check_sampling, generate_text
from .loading import check_model_folder, check_tokenizer_fits, load_model_and_tokenizer, load_tokenizer, \
    resolve_model
from .modeling import ScratchGPTForCausalLM
from .modeling.convert import convert_legacy_checkpoint, from_gpt2, to_gguf, to_gpt2
from .modeling.onnx_export import ONNX_FILE, to_onnx
from .staging import refuse_existing, staged_output
from .tokenization import bytes_per_token, hold_out, save_tokenizer, train_tokenizer


__all__ = ["main", "save_model_folder"]


def save_model_folder(model: PreTrainedModel, dst: str, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Write ``model`` (and ``tokenizer``, if given) to ``dst`` atomically (see ``staged_output``)."""
    with staged_output(dst) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            save_tokenizer(tokenizer, staging)


def _require_model_folder(src: str, model_type: str | None = None) -> None:
    """Fail early, in one line, unless ``src`` is a local model folder (of ``model_type``, when given)."""
    check_model_folder(src)
    found = AutoConfig.from_pretrained(src, trust_remote_code=False).model_type if model_type else None
    if found != model_type:
        raise ValueError(f"{src}: holds a {found!r} model, expected {model_type!r}")


def _tokenizer_beside(src: str) -> PreTrainedTokenizerBase | None:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    return AutoTokenizer.from_pretrained(src) if any((Path(src) / n).is_file() for n in names) else None


def _convert(args: argparse.Namespace) -> None:
    refuse_existing(args.dst)  # before the (possibly long) load
    if args.direction == "to-onnx" and not all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript")):
        raise ValueError('ONNX export needs the onnx and onnxscript packages: pip install -e ".[onnx]"')
    if args.direction in ("to-gguf", "to-onnx"):
        _require_model_folder(args.src, "scratchgpt")
        tokenizer = _tokenizer_beside(args.src)
        if tokenizer is None:
            kind = "GGUF files" if args.direction == "to-gguf" else "transformers.js folders"
            raise FileNotFoundError(f"{args.src}: no tokenizer beside the model; {kind} carry their tokenizer")
        model = ScratchGPTForCausalLM.from_pretrained(args.src)
        check_tokenizer_fits(model.config, tokenizer, args.src)
    if args.direction == "to-onnx":
        with staged_output(args.dst) as staging:
            to_onnx(model, tokenizer, staging)
        size = (Path(args.dst) / ONNX_FILE).stat().st_size
        print(f"saved {args.dst} for transformers.js / ONNX Runtime ({ONNX_FILE}: float32, {size:,} bytes)")
        return
    if args.direction == "to-gguf":
        try:
            path = to_gguf(model, tokenizer, args.dst, args.dtype, name=args.name or Path(args.src).resolve().name)
        except ImportError as error:
            raise ValueError(str(error)) from None
        if model.config.activation_function == "gelu":
            print("note: llama.cpp computes GELU with tanh (gelu_new); this model was trained with the exact gelu, "
                  "so its logits there differ by about 1e-3 (train with activation_function: gelu_new to match)")
        print(f"saved {path} ({args.dtype}, {path.stat().st_size:,} bytes)")
        return
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


def _byte_count(text: str) -> int:
    """A number of bytes as written on the command line: 1000000, 500M, 2G (powers of 1,000), 0."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a number of bytes such as 500M or 2G, got {text!r}")
    return int(float(match[1]) * 1000 ** " kmgt".index(match[2].lower() or " "))


def _tokenizer_train(args: argparse.Namespace) -> None:
    resolve_inputs(args.input)  # missing or unsupported inputs fail before any work
    refuse_existing(args.output)
    sample = TextSample(args.input, args.text_documents, args.document_separator, max_bytes=args.train_bytes or None)
    texts, held_out = hold_out(iter(sample))
    tokenizer = train_tokenizer(texts, args.type, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    with staged_output(args.output) as staging:
        save_tokenizer(tokenizer, staging)
        sample.save_report(staging)
    compression = f"{bytes_per_token(tokenizer, held_out):.2f} bytes/token" if held_out else "n/a (input too small)"
    print(f"trained on {sample.describe()}")
    print(f"vocabulary size: {len(tokenizer):,} ({args.type})")
    print(f"compression on held-out text ({len(held_out):,} texts): {compression}")
    print(f"saved to {args.output}")


def _prepare(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.tokenizer)
    prepare_dataset(tokenizer, args.input, args.output, block_size=args.block_size, val_fraction=args.val_fraction,
                    clean=args.clean, num_proc=args.num_proc, seed=args.seed, text_documents=args.text_documents,
                    document_separator=args.document_separator, validation_inputs=args.validation_input,
                    rebuild=args.rebuild, assistant_only_loss=args.assistant_only_loss)
    metadata = read_metadata(args.output)
    print(f"\nprepared data in {args.output} (token ids as {metadata['dtype']}, block size "
          f"{metadata['settings']['block_size']}, vocabulary {metadata['tokenizer']['vocab_size']:,})")
    masked = metadata["settings"].get("assistant_only_loss")
    print(f"{'split':<12}{'documents':>12}{'tokens':>15}{'blocks':>12}{'dropped':>10}"
          + (f"{'trained':>12}{'masked':>12}" if masked else ""))
    for name, counts in metadata["splits"].items():
        in_blocks = counts["blocks"] * metadata["settings"]["block_size"]
        print(f"{name:<12}{counts['documents']:>12,}{counts['tokens']:>15,}{counts['blocks']:>12,}"
              f"{counts['tokens_dropped']:>10,}"
              + (f"{counts['trained_tokens']:>12,}{in_blocks - counts['trained_tokens']:>12,}" if masked else ""))
    if masked:
        print("trained: assistant tokens in the blocks (content and <|end|>); masked: the rest (label -100)")
    print(SPLIT_METHODS[metadata["split_method"]])
    cleaning = metadata["cleaning"]
    if cleaning["mode"] != "off":
        print(f"cleaning ({cleaning['mode']}): {cleaning['documents_in']:,} documents in, "
              f"{cleaning['documents_out']:,} out; {cleaning['too_short_removed']:,} too short, "
              f"{cleaning['duplicates_removed']:,} duplicates; {cleaning['documents_normalised']:,} normalised; "
              f"{cleaning['control_chars_removed']:,} control and {cleaning['whitespace_chars_removed']:,} "
              f"whitespace characters removed")


SPLIT_METHODS = {
    "validation_inputs": "validation: the --validation-input files",
    "dataset_split": "validation: the Hub dataset's own validation split",
    "none": "no validation split (--val-fraction 0)",
    "document": "validation: a random fraction of the documents",
    "tail": "validation: the tail of the token stream, in whole blocks (fewer than 10 documents to split by)",
}


def _sampling_args(args: argparse.Namespace) -> dict:
    sampling = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
                "top_p": args.top_p, "repetition_penalty": args.repetition_penalty}
    check_sampling(**sampling)
    return sampling


def _seed(args: argparse.Namespace) -> None:
    if args.seed is not None:
        set_seed(args.seed)


def _generate(args: argparse.Namespace) -> None:
    sampling = _sampling_args(args)  # bad settings fail before the (possibly long) load
    model, tokenizer = load_model_and_tokenizer(args.model)
    _seed(args)
    stream = not args.no_stream
    text = generate_text(model, tokenizer, args.prompt, stream=stream, **sampling)
    if not stream:
        print(args.prompt + text)


def _chat(args: argparse.Namespace) -> None:
    sampling = _sampling_args(args)
    model, tokenizer = load_model_and_tokenizer(args.model)
    _seed(args)
    if not tokenizer.chat_template:
        raise ValueError(f"{args.model}: the tokenizer has no chat template; use `scratchgpt generate`")
    source = open(args.input, encoding="utf-8") if args.input else sys.stdin
    interactive = args.input is None and sys.stdin.isatty()
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if interactive:
        print("chatting with", args.model, "- an empty line or Ctrl-D ends the conversation")
    try:
        while True:
            if interactive:
                print("you> ", end="", flush=True)
            line = source.readline()
            if not line.strip():
                break
            messages.append({"role": "user", "content": line.strip()})
            if not interactive:  # the transcript shows what was said, as a terminal would
                print(f"you> {line.strip()}")
            print("assistant> ", end="", flush=True)
            reply = chat_reply(model, tokenizer, messages, stream=interactive, **sampling)
            if not interactive:
                print(reply)
            messages.append({"role": "assistant", "content": reply})
    finally:
        if source is not sys.stdin:
            source.close()


def _evaluate(args: argparse.Namespace) -> None:
    check_windows(args.block_size, args.stride)  # before the (possibly long) load
    model, tokenizer = load_model_and_tokenizer(args.model)
    documents = iter_documents(args.input, args.text_documents, args.document_separator)
    result = evaluate_documents(model, tokenizer, documents, block_size=args.block_size, stride=args.stride,
                                show_progress=not args.json)
    if args.json:
        print(json.dumps({"model": args.model, "inputs": args.input, **result}, indent=2))
        return
    print(f"{'model':<18}{args.model}")
    for name in ("perplexity", "bits_per_byte", "mean_nll", "tokens", "bytes", "block_size", "stride"):
        value = result[name]
        print(f"{name:<18}{value:,.4f}" if isinstance(value, float) else f"{name:<18}{value:,}")


def _demo(args: argparse.Namespace) -> None:
    try:
        from .demo import launch
    except ImportError:
        raise ValueError('the web demo needs gradio: pip install -e ".[demo]"') from None
    for name in args.model:
        resolve_model(name)  # a missing folder or unknown id fails here, before the server starts
    if args.max_queue is not None and args.max_queue < 1:
        raise ValueError(f"--max-queue must be at least 1, got {args.max_queue}")
    queue = {"max_queue": args.max_queue} if args.max_queue is not None else {}
    launch(args.model, host=args.host, port=args.port, share=args.share, **queue)


def _add_text_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--text-documents", choices=TEXT_DOCUMENTS, default="file",
                         help=".txt documents: 'file' (each file verbatim, the default), 'separator' (split at "
                              "--document-separator) or 'paragraph' (split at blank lines)")
    command.add_argument("--document-separator", default=DEFAULT_SEPARATOR, metavar="TEXT",
                         help=f"the literal string between documents in separator mode, not kept (default "
                              f"{DEFAULT_SEPARATOR}); one line break on either side of it goes with it")


OWN_TEXT_RECIPE = Path(__file__).parent / "training" / "own_text.yaml"


def own_text_vocab_size(files: list[str]) -> int:
    """A BPE vocabulary the corpus can fill: about 4 * sqrt(bytes), in multiples of 256, from 512 to 8,192
    (100 KB: 1,280; 1 MB: 4,096; from about 4.2 MB: 8,192), so that a small text is not split into rare merges."""
    import math

    from .data.sources import CHITCHAT

    size = sum(13_000_000 if file == CHITCHAT else Path(file).stat().st_size for file in resolve_inputs(files))
    return min(8192, max(512, 256 * round(4 * math.sqrt(size) / 256)))


def _train(args: argparse.Namespace) -> None:
    from .training.report import run_summary
    from .training.run import main as run_training

    files = [token for token in args.files_and_keys[:next(
        (i for i, token in enumerate(args.files_and_keys) if token.startswith("--")), len(args.files_and_keys))]]
    keys = args.files_and_keys[len(files):]
    if not files:
        raise ValueError("give the text to train on: scratchgpt train FILE... (.txt, .jsonl, .json, .csv or .parquet "
                         "files, or folders of them)")
    given = {token[2:].split("=")[0] for token in keys if token.startswith("--")}
    argv = [str(OWN_TEXT_RECIPE), "--inputs", *files]
    if "output_dir" not in given:
        argv += ["--output_dir", str(Path("runs") / (Path(files[0].rstrip("/\\")).stem or "own-text"))]
    if "vocab_size" not in given:
        argv += ["--vocab_size", str(own_text_vocab_size(files)), "--vocab_size_at_most", "true"]
    metrics = run_training(argv + keys)
    if not (metrics.get("already_complete") or "stopped" in metrics):
        print(run_summary(metrics))


def _plan(args: argparse.Namespace) -> None:
    from .training.run import main as run_training

    if not args.config_and_keys:
        raise ValueError("give the run to plan: scratchgpt plan CONFIG.yaml [--key value ...], as for train.py")
    planned = run_training(args.config_and_keys, plan=True)
    if planned["reality_check"] is None:
        raise ValueError("the run has no step to time")
    print(planned["text"])
    print(f"the tokenizer and data are kept for the run: python train.py {' '.join(args.config_and_keys)}")


def _add_sampling_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("model", help="model folder (ScratchGPT, a GPT-2 export, a converted legacy checkpoint)")
    command.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                         help="at most this many new tokens (default and most: half the model's context)")
    command.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 for greedy decoding")
    command.add_argument("--top-k", type=int, default=50, metavar="K")
    command.add_argument("--top-p", type=float, default=None, metavar="P")
    command.add_argument("--repetition-penalty", type=float, default=None, metavar="R")
    command.add_argument("--seed", type=int, default=None, metavar="S", help="seed for reproducible sampling")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scratchgpt", description="Train tokenizers, prepare data, convert, "
                                     "generate with, chat with and evaluate ScratchGPT models.")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert model folders: ScratchGPT <-> GPT-2, legacy -> ScratchGPT, "
                                  "ScratchGPT -> GGUF or ONNX")
    convert.add_argument("direction", choices=["to-gpt2", "from-gpt2", "legacy", "to-gguf", "to-onnx"],
                         help="to-gpt2: ScratchGPT folder -> stock GPT2LMHeadModel folder; from-gpt2: the reverse; "
                              "legacy: an original-project checkpoint folder (config.json, pytorch_model.bin, "
                              "tokenizer.json) -> ScratchGPT folder; to-gguf: ScratchGPT folder -> one .gguf file "
                              "for llama.cpp / Ollama; to-onnx: ScratchGPT folder -> a folder for transformers.js "
                              "(browser, node) and ONNX Runtime")
    convert.add_argument("src", help="source folder (its tokenizer is carried along)")
    convert.add_argument("dst", help="destination folder (must not exist or be empty), or the .gguf file")
    convert.add_argument("--dtype", choices=["f32", "f16", "bf16", "q8_0"], default="f32",
                         help="to-gguf: the matrices' type (default f32; norms and biases stay f32)")
    convert.add_argument("--name", default=None,
                         help="to-gguf: the model's name in the file (general.name; default: the source folder's name)")
    convert.set_defaults(handler=_convert)

    train = commands.add_parser(
        "train", help="train a model on your own text from scratch: scratchgpt train FILE... [--key value ...]",
        description="Train a model of your own text from scratch, as scratchgpt/training/own_text.yaml says (the tiny "
                    "preset, 3 passes over the text, the best validation weights kept), with a vocabulary that fits "
                    "the corpus, into runs/<the first file's name>. Keys of train.py after the files override the "
                    "recipe (e.g. --num_train_epochs 5 --output_dir runs/mine); running it again resumes.")
    train.add_argument("files_and_keys", nargs=argparse.REMAINDER, metavar="FILE... [--key value ...]")
    train.set_defaults(handler=_train)

    plan = commands.add_parser(
        "plan", help="what a train.py run will cost here: tokens, steps, time per epoch and in all, peak memory",
        description="Do what train.py CONFIG [--key value ...] does before training (train the tokenizer and "
                    "prepare the data if they are missing; both are kept for the run), then time a few optimizer "
                    "steps of a fresh model (reality_check_steps, default 5, after one untimed) and print the run's "
                    "tokens, tokens per step, steps per epoch and in all, the time they will take here, and the peak "
                    "memory. Nothing else is written; checkpoints in output_dir are left as they are.")
    plan.add_argument("config_and_keys", nargs=argparse.REMAINDER, metavar="CONFIG.yaml [--key value ...]")
    plan.set_defaults(handler=_plan)

    tokenizer = commands.add_parser("tokenizer", help="train a tokenizer")
    tokenizer_commands = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    train = tokenizer_commands.add_parser("train", help="train a byte-level BPE or character tokenizer")
    train.add_argument("--input", nargs="+", required=True, metavar="PATH",
                       help=".txt, .jsonl/.json ('text' or 'messages'), .csv ('text'), .parquet, compressed "
                            "(.gz, .bz2, .xz, .zst), a folder of those, 'chitchat' for the built-in corpus, or a Hub "
                            "dataset, hf://datasets/ORG/NAME")
    train.add_argument("--output", required=True, metavar="DIR", help="folder to save the tokenizer to")
    train.add_argument("--type", choices=["bpe", "char"], default="bpe", help="tokenizer kind (default: bpe)")
    train.add_argument("--train-bytes", type=_byte_count, default=TOKENIZER_TRAIN_BYTES, metavar="N",
                       help=f"train on at most N bytes of text (e.g. 500M, 2G), sampled evenly over every input; "
                            f"0: all of it (default {TOKENIZER_TRAIN_BYTES / 1e9:g}G)")
    train.add_argument("--vocab-size", type=int, default=None, metavar="N",
                       help="exact size for bpe (default 32000); an upper bound for char (default: all characters)")
    train.add_argument("--min-frequency", type=int, default=None, metavar="N",
                       help="minimum count of a merge (bpe, default 2) or a character (char, default 1)")
    _add_text_options(train)
    train.set_defaults(handler=_tokenizer_train)

    prepare = commands.add_parser("prepare", help="tokenize and pack a corpus into a memory-mapped Arrow dataset")
    prepare.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (save_pretrained)")
    prepare.add_argument("--input", nargs="+", required=True, metavar="PATH",
                         help=".txt, .jsonl, .json, .csv, .parquet (compressed too: .gz, .bz2, .xz, .zst), folders "
                              "or globs of those, 'chitchat', or a Hub dataset, hf://datasets/ORG/NAME[@REVISION][?split=...]")
    prepare.add_argument("--block-size", type=int, required=True, metavar="N", help="tokens per training block")
    prepare.add_argument("--output", required=True, metavar="DIR", help="folder for the prepared dataset")
    prepare.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                         help="fraction held out for validation (default 0.1; 0 for none): of the documents, or of "
                              "the token stream's tail when there are fewer than 10 documents")
    prepare.add_argument("--validation-input", nargs="+", default=None, metavar="PATH",
                         help="validation data in any input format; then nothing is split off --input")
    prepare.add_argument("--clean", choices=["off", *CLEAN_MODES], default="off", help="cleaning mode (default off)")
    prepare.add_argument("--num-proc", type=int, default=None, metavar="N", help="worker processes for tokenizing")
    _add_text_options(prepare)
    prepare.add_argument("--seed", type=int, default=0, help="seed of the train/validation split (default 0)")
    prepare.add_argument("--rebuild", action="store_true", help="rebuild even if the output is up to date")
    prepare.add_argument("--assistant-only-loss", action="store_true",
                         help="conversations only: store which tokens are the assistant's, the only ones trained")
    prepare.set_defaults(handler=_prepare)

    generate = commands.add_parser("generate", help="continue a prompt, streaming tokens as they come")
    _add_sampling_options(generate)
    generate.add_argument("--prompt", required=True, help="text to continue")
    generate.add_argument("--no-stream", action="store_true", help="print the whole text at the end instead")
    generate.set_defaults(handler=_generate)

    chat = commands.add_parser("chat", help="multi-turn chat through the tokenizer's chat template")
    _add_sampling_options(chat)
    chat.add_argument("--system", default=None, help="a system message to start the conversation with")
    chat.add_argument("--input", default=None, metavar="FILE",
                      help="read the user's messages from FILE, one per line (default: stdin; interactive on a tty)")
    chat.set_defaults(handler=_chat)

    demo = commands.add_parser("demo", help="a web page to chat with your models (Gradio; pip install -e \".[demo]\")")
    demo.add_argument("model", nargs="+", help="model folders or Hub ids; the first is shown first")
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    demo.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860, or the next free one)")
    demo.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    demo.add_argument("--max-queue", type=int, default=None, metavar="N",
                      help="requests that may wait for the model (default 32); past that, 'Queue is full' at once")
    demo.set_defaults(handler=_demo)

    evaluate = commands.add_parser("evaluate", help="sliding-window perplexity and bits per byte on held-out text")
    evaluate.add_argument("model", help="model folder")
    evaluate.add_argument("--input", nargs="+", required=True, metavar="PATH", help="text inputs (as for prepare)")
    evaluate.add_argument("--block-size", type=int, default=None, metavar="N", help="window length (default: context)")
    evaluate.add_argument("--stride", type=int, default=None, metavar="N",
                          help="new tokens scored per window (default: block size, i.e. disjoint windows)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_text_options(evaluate)
    evaluate.set_defaults(handler=_evaluate)
    return parser


def _quiet_libraries() -> None:
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plan"] and argv[1:2] not in (["-h"], ["--help"]):
        # train.py's own arguments, which argparse's REMAINDER refuses when they start with a --key
        args = build_parser().parse_args(["plan"])
        args.config_and_keys = argv[1:]
    else:
        args = build_parser().parse_args(argv)
    # our own stage lines; the libraries' info lines (HTTP requests, file formats) and per-file bars stay off
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("scratchgpt").setLevel(logging.INFO)
    if args.command not in ("train", "plan", "prepare", "tokenizer"):  # short ones: no "Loading weights" or "Writing shards"
        _quiet_libraries()
    try:
        args.handler(args)
    except KeyboardInterrupt:
        print(f"scratchgpt {args.command}: interrupted; nothing incomplete was left in place", file=sys.stderr)
        return 130
    except Exception as error:
        if (cause := user_error(error)) is None:
            raise  # a bug: keep the traceback
        print(f"scratchgpt {args.command}: error: {one_line(cause)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
