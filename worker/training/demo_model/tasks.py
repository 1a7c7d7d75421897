"""Seeded generators of the demo model's tasks, as (prompt, completion) text pairs.

Each task's prompt starts with its name, so a plain generation job asks for it by text:
`sudoku: 53..7....` -> the 81-digit solution; `reverse: canvas` -> `savnac`; `sort: 5 3 9` -> `3 5 9`;
`add: 123+989` -> `1112`; `fill: the ___ says moo.` -> `cow`; and `say: the c` -> the rest of a sentence (the
sentences also teach what infill jobs ask for: text whose missing part depends on what follows).
Held-out splits are drawn from seeds the training data never uses; the training stream skips them too.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from shared.sudoku import make_puzzle, render

Pair = tuple[str, str]

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SUDOKU_LEVELS = {"easy": (40, 50), "medium": (30, 39), "hard": (25, 29)}

# Sentences whose blank is fixed by the words after it.
FACTS = [
    ("the {} says moo.", "cow"),
    ("the {} says woof.", "dog"),
    ("the {} says meow.", "cat"),
    ("the {} says quack.", "duck"),
    ("the {} says oink.", "pig"),
    ("the {} says baa.", "sheep"),
    ("the {} says neigh.", "horse"),
    ("the {} says hoot.", "owl"),
    ("a {} is yellow and curved.", "banana"),
    ("a {} is red and round.", "apple"),
    ("a {} is orange and long.", "carrot"),
    ("a {} is green and sour.", "lime"),
    ("we sleep in a {} at night.", "bed"),
    ("we read a {} full of pages.", "book"),
    ("we drink {} when thirsty.", "water"),
    ("the {} shines in the day.", "sun"),
    ("the {} shines at night.", "moon"),
    ("snow is cold and {}.", "white"),
    ("the sky is {} on clear days.", "blue"),
    ("grass is {} in spring.", "green"),
]
SUBJECTS = ["today", "again", "at noon", "in the morning", "as always", "once more", "quietly", "loudly"]
HELD_OUT_SUBJECTS = ["at dawn", "twice", "for sure"]  # only in held-out fill sentences


def sentence(rng: random.Random, subjects: list[str] = SUBJECTS) -> tuple[str, str]:
    """A fact sentence with an optional trailing remark, and the word its blank stands for."""
    template, word = rng.choice(FACTS)
    if rng.random() < 0.5 or subjects is HELD_OUT_SUBJECTS:
        template = template[:-1] + " " + rng.choice(subjects) + "."
    return template, word


def reverse(rng: random.Random) -> Pair:
    word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8)))
    return f"reverse: {word}\n", word[::-1]


def sort(rng: random.Random) -> Pair:
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]
    return f"sort: {' '.join(map(str, numbers))}\n", " ".join(map(str, sorted(numbers)))


def add(rng: random.Random) -> Pair:
    a, b = rng.randint(0, 10 ** rng.randint(1, 3) - 1), rng.randint(0, 10 ** rng.randint(1, 3) - 1)
    return f"add: {a}+{b}\n", str(a + b)


def fill(rng: random.Random, subjects: list[str] = SUBJECTS) -> Pair:
    template, word = sentence(rng, subjects)
    return f"fill: {template.format('___')}\n", word


def say(rng: random.Random) -> Pair:
    template, word = sentence(rng)
    text = template.format(word)
    cut = rng.randint(0, text.index(word))  # the prompt ends at or before the word
    return f"say: {text[:cut]}", text[cut:]


def sudoku(rng: random.Random, level: str | None = None) -> Pair:
    low, high = SUDOKU_LEVELS[level or rng.choice(["easy", "easy", "medium", "medium", "hard"])]
    puzzle = make_puzzle(rng, low, high)
    return sudoku_prompt(render(puzzle.puzzle)), render(puzzle.solution)


def sudoku_prompt(grid: str) -> str:
    return f"sudoku: {grid}\n"


TEXT_TASKS: dict[str, Callable[[random.Random], Pair]] = {
    "reverse": reverse,
    "sort": sort,
    "add": add,
    "fill": fill,
    "say": say,
}


TRAINING_SEED = 0
HELD_OUT_TEXT = 1000  # held-out pairs per text task that training never emits (`stream.DemoStream`)


def held_out(task: str, count: int, seed: int = 10_000, level: str | None = None) -> list[Pair]:
    """The first `count` distinct pairs of a seed stream training never uses. For text tasks training
    skips the first HELD_OUT_TEXT of them; held-out fill sentences also use subjects training never sees."""
    rng = random.Random(f"held-out:{task}:{level}:{seed}")
    if task == "sudoku":
        return [sudoku(rng, level) for _ in range(count)]
    draw = (lambda: fill(rng, HELD_OUT_SUBJECTS)) if task == "fill" else (lambda: TEXT_TASKS[task](rng))
    pairs: dict[Pair, None] = {}
    for _ in range(100 * count):
        if len(pairs) == count:
            break
        pairs.setdefault(draw(), None)
    return list(pairs)
