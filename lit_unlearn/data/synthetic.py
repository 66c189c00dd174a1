"""Fictitious facts for the embedded experiment: invented people with a birth city and a birth year.

No pretrained model can know them, so a model answers them only after the learn stage; they are then a
clean target for unlearning (forget half the people, retain the other half).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_FIRST = ["Ilsa", "Bram", "Odile", "Kasimir", "Yara", "Teodor", "Maren", "Quill", "Soraya", "Lev", "Anouk",
          "Dario", "Frida", "Ivo", "Nell", "Orrin", "Petra", "Rufus", "Selin", "Tobin", "Una", "Vasco", "Wren",
          "Zeno", "Alma", "Cato", "Elke", "Hugo", "Ines", "Jorah"]
_LAST = ["Varga", "Okonkwo", "Lindqvist", "Marchetti", "Halloran", "Szabo", "Duarte", "Kowal", "Brandt",
         "Ferreira", "Nakamura", "Oyelaran", "Petrov", "Quesada", "Rasmussen", "Tamura", "Vidal", "Wexler",
         "Yilmaz", "Zamora"]
CITIES = ["Lisbon", "Oslo", "Cairo", "Lima", "Dublin", "Prague", "Nairobi", "Seoul", "Quito", "Vienna",
          "Madrid", "Athens", "Tokyo", "Berlin", "Havana", "Warsaw"]


def make_people(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct invented people, each with a city and a year; seeded."""
    rng = random.Random(seed)
    names = rng.sample([f"{f} {last}" for f in _FIRST for last in _LAST], n)
    return [{"name": name, "city": rng.choice(CITIES), "year": str(rng.randint(1900, 1999))} for name in names]


def qa_rows(people: list[dict], facts: tuple[str, ...] = ("city",)) -> list[dict]:
    rows = []
    for p in people:
        if "city" in facts:
            rows.append({"question": f"Where was {p['name']} born?", "answer": p["city"], "person": p["name"]})
        if "year" in facts:
            rows.append({"question": f"In which year was {p['name']} born?", "answer": p["year"], "person": p["name"]})
    return rows


def write_fact_splits(out_dir: str | Path, n_people: int = 40, seed: int = 0,
                      facts: tuple[str, ...] = ("city",)) -> dict[str, Path]:
    """Write ``forget.jsonl`` (first half of the people) and ``retain.jsonl`` (second half) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    people = make_people(n_people, seed)
    half = n_people // 2
    paths = {}
    for role, group in (("forget", people[:half]), ("retain", people[half:])):
        paths[role] = out / f"{role}.jsonl"
        with paths[role].open("w", encoding="utf-8") as f:
            for row in qa_rows(group, facts):
                f.write(json.dumps(row) + "\n")
    return paths
