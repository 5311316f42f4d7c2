"""Generated text whose number of distinct words grows with its length as real text's does (Heaps' law): words are
drawn by Zipf rank (exponent 1.3) and spelt from the rank, so rarer and rarer new words keep appearing. 20 MB hold
8.0 million words, 304,000 of them distinct. For measuring what grows with the vocabulary (the BPE trainer's
memory) at sizes no corpus on this machine has.

    python bench/corpus.py SIZE_BYTES OUT.txt [ZIPF_EXPONENT]      # e.g. 2e9 /tmp/corpus-2g.txt
"""

import sys
import time

import numpy as np


def word(rank: int, letters: str = "etaoinshrdlucmfwypvbgkjqxz") -> str:
    """The rank-th word (1 = "e"), in a bijective base 26 over letters by frequency."""
    out = []
    while rank:
        rank, digit = divmod(rank - 1, 26)
        out.append(letters[digit])
    return "".join(out)


def main() -> None:
    size, path = int(float(sys.argv[1])), sys.argv[2]
    exponent = float(sys.argv[3]) if len(sys.argv) > 3 else 1.3
    rng = np.random.default_rng(0)
    start = time.time()
    spelt = 3_000_000  # the ranks spelt once in advance; rarer ones are spelt as they come
    vocabulary = np.array([word(rank) for rank in range(1, spelt + 1)], dtype=object)
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size:
            ranks = rng.zipf(exponent, 1_000_000)
            common = ranks <= spelt
            words = np.empty(len(ranks), dtype=object)
            words[common] = vocabulary[ranks[common] - 1]
            words[~common] = [word(int(rank)) for rank in ranks[~common]]
            words[11::12] = [w + ".\n" for w in words[11::12]]  # sentences of 12 words, one per line
            chunk = " ".join(words.tolist()).replace("\n ", "\n")
            out.write(chunk)
            written += len(chunk)
    print(f"{written:,} bytes in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
