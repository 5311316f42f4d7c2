"""Data pipeline benchmarks.

1. Throughput, raw text -> tokens on disk, ours against the original project's approach on the same input file and
   tokenizer, side by side in one run (alternating, medians):
   - ours: ``prepare_dataset`` end to end (documents, train/validation split, batched tokenization with
     ``--num-proc`` workers, exact packing into blocks of 512, Arrow on disk);
   - original: one process reads 100 MB chunks, ``Tokenizer.encode(chunk)``, appends int32 ids with numpy.
   Peak memory is the PSS summed over the whole process tree (workers included), sampled every 0.1 s.
   With ``--reference CHECKOUT`` the same ``prepare_dataset`` from another checkout (an earlier commit) runs
   alternately with ours, for each ``--num-proc``: the regression check.
2. With ``--kill-at 0.8``: a full prepare, then one SIGKILLed (its whole process group) once 80% of its shards are
   finished, then the re-run that continues it; the re-run's time as a share of the full prepare's.
3. With ``--hub-mb 200``: ``prepare`` of a dataset streamed from a Hub repository against the same parquet files
   read locally, alternating: the repository is served over HTTP on 127.0.0.1 by the Hub stand-in of
   ``tests/hub_server.py`` (the real ``datasets``/``huggingface_hub`` client code: revision, file tree, ranged
   reads), so what is measured is the streaming client's cost, not a network's. With ``--reference`` the local
   files are also prepared by that checkout.
4. Memory under training-style random block access (batches of 8 random blocks, collated to int64) over a token
   dataset of 100 MB and one 10x larger: RSS split into anonymous memory (what the process allocates) and
   file-backed pages (the memory-mapped Arrow file, reclaimable page cache).

    python bench/data.py [--text-mb 200] [--repeats 3] [--num-proc 1 2] [--reference CHECKOUT] [--kill-at 0.8]
                         [--hub-mb 200] [--access-mb 100 1000] [--json FILE]

The corpus is the chitchat conversations as plain text, repeated to the requested size; the tokenizer is a
byte-level BPE of 32,000 ids trained on chitchat. Everything is written under a temporary folder.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


ORIGINAL = r"""
import sys, numpy as np
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
chunk_bytes = 100 * 2**20
with open(sys.argv[2], encoding="utf-8") as source, open(sys.argv[3], "wb") as sink:
    while chunk := source.read(chunk_bytes):
        np.array(tokenizer.encode(chunk).ids, dtype=np.int32).tofile(sink)
"""

OURS = r"""
import sys
from transformers import AutoTokenizer
from scratchgpt.data import prepare_dataset
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
prepare_dataset(tokenizer, [sys.argv[2]], sys.argv[3], block_size=512, val_fraction=0.1,
                num_proc=int(sys.argv[4]))
"""

ACCESS = r"""
import json, sys, time
import numpy as np
from scratchgpt.data import collate_blocks, load_prepared

def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")}

dataset = load_prepared(sys.argv[1])["train"]
steps, batch = int(sys.argv[2]), 8
rng = np.random.default_rng(0)
collate_blocks([dataset[0]])
before = rss()
start = time.perf_counter()
for _ in range(steps):
    collate_blocks([dataset[int(i)] for i in rng.integers(0, len(dataset), batch)])
seconds = time.perf_counter() - start
after = rss()
print(json.dumps({"blocks": len(dataset), "before": before, "after": after, "batches_per_s": steps / seconds}))
"""


def tree_pss_mb(pid: int) -> dict[str, float]:
    """Proportional resident memory (PSS: pages shared between processes counted once, split among them) of a
    process and all its descendants, in MB: in all, anonymous (allocated by the processes) and file-backed (mapped
    files, e.g. memory-mapped Arrow data: reclaimable page cache). Summing plain RSS would count forked workers'
    shared pages twice."""
    total, stack = {"Pss": 0.0, "Pss_Anon": 0.0, "Pss_File": 0.0}, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as rollup:
                for line in rollup:
                    key = line.split(":")[0]
                    if key in total:
                        total[key] += int(line.split()[1]) / 1024
            with open(f"/proc/{current}/task/{current}/children") as children:
                stack.extend(int(child) for child in children.read().split())
        except (OSError, ValueError):
            continue
    return total


def timed(command: list[str], env: dict | None = None, kill_when=None) -> dict:
    """Run a command; wall time and peak process-tree PSS. ``kill_when()``, polled with the memory, SIGKILLs the
    whole process group once it returns true (a disconnect, as a notebook host does it)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=env, start_new_session=True)
    peak = {"Pss": 0.0, "Pss_Anon": 0.0, "Pss_File": 0.0}
    done = threading.Event()
    killed = []

    def sample():
        while not done.is_set():
            for key, value in tree_pss_mb(process.pid).items():
                peak[key] = max(peak[key], value)
            if kill_when is not None and not killed and kill_when():
                killed.append(time.perf_counter() - start)
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, stderr = process.communicate()
    done.set()
    sampler.join()
    if process.returncode and not killed:
        raise RuntimeError(stderr[-2000:])
    return {"seconds": time.perf_counter() - start, "peak_pss_mb": peak["Pss"], "peak_anon_mb": peak["Pss_Anon"],
            "peak_file_mb": peak["Pss_File"], "killed_after_s": killed[0] if killed else None}


def make_corpus(path: Path, megabytes: int) -> int:
    from scratchgpt.data.sources import chitchat_conversations

    documents = ["\n".join(m["content"] for m in conversation) for conversation in chitchat_conversations()]
    block = "\n\n".join(documents) + "\n\n"
    target = megabytes * 10**6
    with open(path, "w", encoding="utf-8") as handle:
        written = 0
        while written < target:
            handle.write(block)
            written += len(block.encode("utf-8"))
    return written


def make_tokenizer(folder: Path) -> None:
    from scratchgpt.data.sources import iter_documents, iter_texts
    from scratchgpt.tokenization import train_bpe_tokenizer

    train_bpe_tokenizer(iter_texts(iter_documents(["chitchat"])), vocab_size=32000,
                        show_progress=False).save_pretrained(folder)


def make_token_dataset(folder: Path, megabytes: int) -> None:
    """A prepared-format dataset of random uint16 blocks of 512 ids, ``megabytes`` of token storage."""
    import numpy as np
    from datasets import Dataset, DatasetDict, Features, List, Value

    n_blocks = megabytes * 10**6 // (512 * 2)

    def blocks():
        rng = np.random.default_rng(0)
        for _ in range(n_blocks):
            yield {"input_ids": rng.integers(0, 32000, 512, dtype=np.uint16)}

    features = Features({"input_ids": List(Value("uint16"), length=512)})
    dataset = Dataset.from_generator(blocks, features=features, cache_dir=str(folder / "cache"))
    DatasetDict({"train": dataset}).save_to_disk(str(folder / "data"))
    (folder / "data" / "scratchgpt_data.json").write_text(json.dumps({"dtype": "uint16"}))


def summarise(measured: list[dict], text_bytes: int) -> dict:
    seconds = statistics.median(r["seconds"] for r in measured)
    return {"seconds": seconds, "mb_per_s": text_bytes / 1e6 / seconds, "runs": len(measured),
            "peak_pss_mb": max(r["peak_pss_mb"] for r in measured),
            "peak_anon_mb": max(r["peak_anon_mb"] for r in measured),
            "peak_file_mb": max(r["peak_file_mb"] for r in measured)}


def with_path(checkout: str | None) -> dict:
    """The environment that imports scratchgpt from ``checkout`` (None: this one)."""
    root = checkout or str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root}


def throughput(args, tmp: Path, text_bytes: int) -> dict:
    """Ours (and the reference checkout, and the original approach) on the same corpus, alternating."""
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for num_proc in args.num_proc:
            kinds = {"ours": None, **({"reference": args.reference} if args.reference else {})}
            for kind, checkout in kinds.items():
                runs.setdefault(f"{kind} num_proc={num_proc}", []).append(timed(
                    [sys.executable, "-c", OURS, str(tmp / "tokenizer"), str(tmp / "corpus.txt"), str(tmp / kind),
                     str(num_proc)], env=with_path(checkout)))
                shutil.rmtree(tmp / kind)
        if not args.no_original:
            runs.setdefault("original", []).append(timed([sys.executable, "-c", ORIGINAL,
                                                          str(tmp / "tokenizer" / "tokenizer.json"),
                                                          str(tmp / "corpus.txt"), str(tmp / "original.bin")]))
    summary = {kind: summarise(measured, text_bytes) for kind, measured in runs.items()}
    summary["text_mb"] = text_bytes / 1e6
    for kind, figures in summary.items():
        if kind != "text_mb":
            print(f"text -> tokens, {text_bytes / 1e6:.0f} MB, {kind}: {figures['mb_per_s']:.2f} MB/s "
                  f"({figures['seconds']:.0f} s; peak {figures['peak_pss_mb']:.0f} MB: anonymous "
                  f"{figures['peak_anon_mb']:.0f}, file-backed {figures['peak_file_mb']:.0f})")
    for num_proc in args.num_proc:
        if args.reference:
            ours, reference = (summary[f"{kind} num_proc={num_proc}"]["mb_per_s"] for kind in ("ours", "reference"))
            ratio = ours / reference
            summary[f"throughput_ratio_ours_over_reference num_proc={num_proc}"] = ratio
            print(f"num_proc={num_proc}: ours / reference throughput {ratio:.3f}")
        if "original" in summary:
            ratio = summary[f"ours num_proc={num_proc}"]["mb_per_s"] / summary["original"]["mb_per_s"]
            summary[f"throughput_ratio_ours_over_original num_proc={num_proc}"] = ratio
            print(f"num_proc={num_proc}: ours / original throughput {ratio:.2f}")
    return summary


def resume(args, tmp: Path, text_bytes: int) -> dict:
    """A full prepare; then one SIGKILLed when ``--kill-at`` of its shards are done, and the re-run that continues
    it: what the disconnect costs, as a share of the full prepare."""
    from scratchgpt.data.shards import MANIFEST, SHARD_BYTES

    num_proc = str(args.num_proc[0])
    command = [sys.executable, "-c", OURS, str(tmp / "tokenizer"), str(tmp / "corpus.txt"), str(tmp / "ours"),
               num_proc]
    full = timed(command, env=with_path(None))
    shutil.rmtree(tmp / "ours")
    expected = -(-text_bytes // SHARD_BYTES)
    manifest = tmp / ".ours.partial" / MANIFEST

    def far_enough() -> bool:
        try:
            shards = json.loads(manifest.read_text())["splits"]["train"]["shards"]
        except (OSError, ValueError, KeyError):
            return False
        return len(shards) >= args.kill_at * expected

    killed = timed(command, env=with_path(None), kill_when=far_enough)
    kept = len(json.loads(manifest.read_text())["splits"]["train"]["shards"])
    resumed = timed(command, env=with_path(None))
    result = {"full_seconds": full["seconds"], "killed_after_s": killed["killed_after_s"], "shards_kept": kept,
              "shards_in_all": expected, "resume_seconds": resumed["seconds"],
              "resume_share_of_full": resumed["seconds"] / full["seconds"],
              "resume_peak_pss_mb": resumed["peak_pss_mb"]}
    print(f"killed after {result['killed_after_s']:.0f} s with {kept} of {expected} shards done; the re-run took "
          f"{result['resume_seconds']:.0f} s, {result['resume_share_of_full']:.1%} of a full prepare "
          f"({result['full_seconds']:.0f} s)")
    return result


def make_parquet_corpus(folder: Path, megabytes: int, file_mb: int = 50) -> int:
    """The chitchat conversations as rows of a ``text`` column, repeated to ``megabytes`` of text, in parquet files
    of about ``file_mb`` each, laid out as a Hub dataset repository (``data/train-*.parquet``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scratchgpt.data.sources import chitchat_conversations

    documents = ["\n".join(m["content"] for m in conversation) for conversation in chitchat_conversations()]
    per_copy = sum(len(d.encode("utf-8")) for d in documents)
    copies = -(-megabytes * 10**6 // per_copy)
    per_file = max(1, file_mb * 10**6 // per_copy)
    n_files = -(-copies // per_file)
    (folder / "data").mkdir(parents=True)
    for index in range(n_files):
        rows = documents * min(per_file, copies - index * per_file)
        pq.write_table(pa.table({"text": rows}), folder / "data" / f"train-{index:05d}-of-{n_files:05d}.parquet")
    return copies * per_copy


def hub_streaming(args, tmp: Path) -> dict:
    """``prepare`` of the same parquet rows from local files and streamed from the Hub stand-in, alternating."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.hub_server import HubServer
    from tests.testing_utils import hub_client_env

    repo = tmp / "hubrepo"
    text_bytes = make_parquet_corpus(repo, args.hub_mb)
    hub = HubServer().start()
    hub.add_dataset("bench/corpus", {str(f.relative_to(repo)): f.read_bytes() for f in repo.rglob("*.parquet")})
    inputs = {"local": (str(repo / "data" / "*.parquet"), with_path(None)),
              "hub": ("hf://datasets/bench/corpus", hub_client_env(hub, tmp))}
    if args.reference:
        inputs["local, reference"] = (inputs["local"][0], with_path(args.reference))
    runs: dict[str, list[dict]] = {}
    try:
        for _ in range(args.repeats):
            for kind, (entry, env) in inputs.items():
                runs.setdefault(kind, []).append(timed(
                    [sys.executable, "-c", OURS, str(tmp / "tokenizer"), entry, str(tmp / kind),
                     str(args.num_proc[0])], env=env))
                shutil.rmtree(tmp / kind)
    finally:
        hub.stop()
    summary = {kind: summarise(measured, text_bytes) for kind, measured in runs.items()}
    summary["text_mb"] = text_bytes / 1e6
    summary["hub_over_local_throughput"] = summary["hub"]["mb_per_s"] / summary["local"]["mb_per_s"]
    for kind in inputs:
        figures = summary[kind]
        print(f"parquet rows -> tokens, {text_bytes / 1e6:.0f} MB, {kind}: {figures['mb_per_s']:.2f} MB/s "
              f"({figures['seconds']:.0f} s; peak {figures['peak_pss_mb']:.0f} MB)")
    print(f"Hub streaming / local files throughput: {summary['hub_over_local_throughput']:.3f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-mb", type=int, default=200, help="size of the text corpus for the throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each throughput measurement; 0: none (e.g. "
                        "for --kill-at alone, which times a full prepare of its own)")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[2], help="tokenizer workers; each is measured")
    parser.add_argument("--reference", metavar="CHECKOUT", default=None,
                        help="also run prepare_dataset from this checkout of scratchgpt (e.g. a git worktree of an "
                             "earlier commit), alternating with ours on the same input: the regression check")
    parser.add_argument("--kill-at", type=float, default=None,
                        help="also SIGKILL one prepare (the first --num-proc) when this fraction of its shards is "
                             "done, e.g. 0.8, and time the re-run that continues it against a full prepare")
    parser.add_argument("--no-original", action="store_true",
                        help="measure ours only (the original approach needs ~7 GB and ~20 min per GB of text)")
    parser.add_argument("--hub-mb", type=int, default=0,
                        help="also prepare this many MB of parquet rows streamed from a Hub repository (the local "
                             "stand-in) against the same files read locally")
    parser.add_argument("--access-mb", type=int, nargs="*", default=[100, 1000],
                        help="token dataset sizes for the random-access memory run")
    parser.add_argument("--access-steps", type=int, default=20000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        make_tokenizer(tmp / "tokenizer")
        if args.text_mb:
            text_bytes = make_corpus(tmp / "corpus.txt", args.text_mb)
            if args.repeats:
                results["throughput"] = throughput(args, tmp, text_bytes)
            if args.kill_at:
                results["resume"] = resume(args, tmp, text_bytes)
            (tmp / "corpus.txt").unlink()
        if args.hub_mb:
            results["hub_streaming"] = hub_streaming(args, tmp)

        access = {}
        for megabytes in args.access_mb:
            make_token_dataset(tmp / f"tokens{megabytes}", megabytes)
            output = subprocess.run([sys.executable, "-c", ACCESS, str(tmp / f"tokens{megabytes}" / "data"),
                                     str(args.access_steps)], check=True, capture_output=True, text=True).stdout
            access[megabytes] = json.loads(output.strip().splitlines()[-1])
            a = access[megabytes]
            print(f"random access, {megabytes} MB of tokens ({a['blocks']:,} blocks): RssAnon "
                  f"{a['before']['RssAnon']:.0f} -> {a['after']['RssAnon']:.0f} MB, RssFile "
                  f"{a['before']['RssFile']:.0f} -> {a['after']['RssFile']:.0f} MB, {a['batches_per_s']:.0f} batches/s")
        if len(access) >= 2:
            small, large = access[min(access)], access[max(access)]
            ratio = large["after"]["RssAnon"] / small["after"]["RssAnon"]
            print(f"anonymous RSS, {max(access)} MB vs {min(access)} MB dataset: {100 * (ratio - 1):+.1f}%")
        results["random_access"] = access
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
