"""How long reading a free-text order takes against catalogues of 100, 1,000 and 10,000 items:
10 lines, each an item's name with its last letter missing (a typo), medians of 5 runs.

    python bench/order_parsing.py
"""

from __future__ import annotations

import random
import statistics
import string
import time
from decimal import Decimal

from ordering.catalogue import Catalogue, Item
from ordering.parsing import read_order


def word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9)))


def main() -> None:
    rng = random.Random(1)
    for size in (100, 1_000, 10_000):
        items = tuple(
            Item(
                f"S{i}",
                f"{word(rng)} {word(rng)}",
                "box",
                Decimal(1),
                Decimal(0),
                (word(rng),),
                ("box", "boxes"),
            )
            for i in range(size)
        )
        catalogue = Catalogue(items)
        text = "\n".join(f"{items[i].name[:-1]} {i + 1}" for i in range(0, 70, 7))
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            lines = read_order(text, catalogue)
            runs.append(time.perf_counter() - started)
        assert [line.sku for line in lines] == [items[i].sku for i in range(0, 70, 7)]
        print(
            f"{size:>6,} items: {statistics.median(runs) * 1000:7.1f} ms for 10 lines (median of 5)"
        )


if __name__ == "__main__":
    main()
