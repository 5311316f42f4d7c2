"""Publish a trained model folder (train.py's output_dir, or one of its checkpoints) to the Hugging Face Hub.

    python push_to_hub.py runs/demo your-name/scratchgpt-demo [--private] [--revision BRANCH]
        [--commit-message MSG] [--dry-run] [--token TOKEN] [--include PATTERN ...] [--space your-name/demo-space]
    python push_to_hub.py demo-web your-name/scratchgpt-demo-web --static-space your-name/demo-in-the-browser
    python push_to_hub.py runs/chat-lora/adapter your-name/chat-lora --base-model your-name/scratchgpt-demo

The token comes from --token, HF_TOKEN or the saved login (`hf auth login`) and is never printed or written.
"""

import argparse
import sys
from pathlib import Path

from scratchgpt.errors import one_line, user_error
from scratchgpt.hub import push_folder, push_space


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="trained model folder")
    parser.add_argument("repo_id", help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if needed)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the files and the model card; upload nothing")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--include", nargs="*", default=[], metavar="PATTERN",
                        help="extra files to upload (e.g. 'optimizer.pt'); by default only the model files go. "
                             "Files that look like secrets (.env, *token*, id_rsa*, .git*, *.pem) stay home unless "
                             "--include-sensitive is given too")
    parser.add_argument("--include-sensitive", action="store_true",
                        help="let --include patterns match files that look like secrets (off by default)")
    parser.add_argument("--base-model", default=None, metavar="NAMESPACE/NAME",
                        help="for a LoRA adapter folder (<output_dir>/adapter): the Hub id of its base model")
    spaces = parser.add_mutually_exclusive_group()
    spaces.add_argument("--space", default=None, metavar="NAMESPACE/SPACE",
                        help="also create or update a Gradio Space serving the model with scratchgpt's web demo")
    spaces.add_argument("--static-space", default=None, metavar="NAMESPACE/SPACE",
                        help="also create or update a static Space whose page runs the model in the visitor's "
                             "browser with transformers.js (the folder must be a `scratchgpt convert to-onnx` export)")
    args = parser.parse_args()
    space_id = args.space or args.static_space
    try:
        if args.static_space and not (Path(args.folder) / "onnx" / "model.onnx").is_file():
            raise FileNotFoundError(f"{args.folder}: no onnx/model.onnx; a static Space runs an ONNX export: "
                                    f"scratchgpt convert to-onnx {args.folder} {args.folder.rstrip('/')}-web")
        result = push_folder(args.folder, args.repo_id, token=args.token, private=args.private,
                             revision=args.revision, commit_message=args.commit_message, include=args.include,
                             dry_run=args.dry_run, base_model=args.base_model,
                             include_sensitive=args.include_sensitive)
        space = push_space(space_id, [args.repo_id], token=args.token, private=args.private, dry_run=args.dry_run,
                           static=bool(args.static_space)) if space_id else None
    except Exception as error:
        if (cause := user_error(error)) is None:
            raise  # a bug: keep the traceback
        print(f"push_to_hub.py: error: {one_line(cause)}", file=sys.stderr)
        return 1
    width = max(len(name) for name, _ in result["files"])
    for name, size in result["files"]:
        print(f"{name:<{width}}  {size:>14,} bytes")
    if args.dry_run:
        print("\n" + result["card"])
    else:
        print(f"\npushed {len(result['files'])} files to {args.repo_id}: {result['commit_url']}")
    if space is not None:
        code = sum(1 for name, _ in space["files"] if "/" in name)
        print(f"\nSpace {space_id}: "
              + ", ".join(name for name, _ in space["files"] if "/" not in name)
              + (f" and scratchgpt's code ({code} files)" if code else ""))
        print("\n" + space["app"] if args.dry_run else f"pushed: {space['commit_url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
