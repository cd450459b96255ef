"""A JSONL task kept out of every tuning decision (the acceptance's jsonl step): order look-ups hidden in the
docstrings of standard-library modules. Deterministic; writes ``count`` lines of about ``chars`` characters.

    python benchmarks/acceptance/make_orders_jsonl.py OUT.jsonl [count] [chars]
"""

import inspect
import json
import random
import sys
import importlib

MODULES = ("json", "csv", "email.message", "http.client", "argparse", "logging", "pathlib", "subprocess",
           "textwrap", "urllib.parse", "zipfile", "tarfile", "sqlite3", "datetime", "decimal", "fractions")
PEOPLE = ("Amara", "Bjorn", "Carmen", "Deniz", "Emeka", "Freya", "Goran", "Hana")
CITIES = ("Valencia", "Tallinn", "Accra", "Montevideo", "Kyoto", "Bilbao", "Gdansk", "Tromso")


def sentences() -> list[str]:
    out = []
    for name in MODULES:
        module = importlib.import_module(name)
        for _, member in inspect.getmembers(module):
            doc = inspect.getdoc(member) or ""
            for paragraph in doc.split("\n\n"):
                text = " ".join(paragraph.split())
                if len(text) > 60 and not paragraph.startswith(" ") and ">>>" not in text:
                    out.append(text + " ")
    return sorted(set(out))


def main(path: str, count: int = 40, chars: int = 7000) -> None:
    rng, pool = random.Random(1234), sentences()
    with open(path, "w") as f:
        for _ in range(count):
            start, parts, size = rng.randrange(len(pool)), [], 0
            while size < chars:
                parts.append(pool[(start + len(parts)) % len(pool)])
                size += len(parts[-1])
            orders = rng.sample(range(1000, 9999), 4)
            cities, people = rng.sample(CITIES, 4), rng.sample(PEOPLE, 4)
            for order, city, person in zip(orders, cities, people):
                parts.insert(rng.randint(0, len(parts)), f"Order {order} was shipped to {city} by {person}. ")
            asked = rng.randrange(4)
            f.write(json.dumps({"context": "".join(parts),
                                "question": f"Where was order {orders[asked]} shipped? Order {orders[asked]} was shipped to",
                                "answers": [cities[asked]]}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
