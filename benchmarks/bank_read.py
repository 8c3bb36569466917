"""What checking costs when a bank is read: sha256 of every shard object against decoding.

    .venv/bin/python benchmarks/bank_read.py BANK [--repeat 3]

Prints the bank's size, the time of a checked read of every array (``Bank.read_rows``: each
shard read once, hashed, compared with its manifest and the sealed contents, decoded), the time
of hashing the same objects alone, and the share of the read that hashing takes.
"""

from __future__ import annotations

import argparse
import hashlib
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bank")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from prompt_bank.integrity import get_object, shard_key
    from prompt_bank.store import Bank

    bank = Bank.open(args.bank)
    arrays = [p for p in bank.layout.arrays() if p != "visual/images"]
    keys = [
        shard_key(bank.group[p], s) for p in arrays for s in range(len(bank.layout.shard_ranges()))
    ]
    raws = [get_object(bank.group.store, k) or b"" for k in keys]
    size = sum(len(r) for r in raws)
    read, hashing = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        bank.read_rows(paths=arrays)
        read.append(time.perf_counter() - start)
        start = time.perf_counter()
        for raw in raws:
            hashlib.sha256(raw).digest()
        hashing.append(time.perf_counter() - start)
    r, h = min(read), min(hashing)
    print(
        f"bank {args.bank}: {len(bank.classes)} classes x {len(bank.templates)} templates, "
        f"{len(keys)} shard objects, {size / 1e6:.1f} MB"
    )
    print(f"checked read of every array: {r:.3f} s ({size / 1e6 / r:.0f} MB/s)")
    print(
        f"sha256 of the same objects:  {h:.3f} s ({size / 1e6 / h:.0f} MB/s), "
        f"{100 * h / r:.1f}% of the read"
    )


if __name__ == "__main__":
    main()
