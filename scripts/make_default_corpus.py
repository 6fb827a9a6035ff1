#!/usr/bin/env python3
"""Writes data/default_corpus.txt: the built-in corpus of `unroll train` when no --corpus is given.

A collection of short generated plays (speakers, stage directions, dialogue from a small grammar),
deterministic from the seed below. Structure a character model can learn in a minute: speaker
names in capitals followed by a colon, a few hundred words, punctuation, recurring phrases.
"""

import random
import sys

rng = random.Random(20261126)

SPEAKERS = ["MARGERY", "TOBIAS", "THE KING", "THE QUEEN", "OLD HOB", "CLEMENT", "ROSALIND",
            "A SOLDIER", "THE FOOL", "AGNES", "BARNABY", "LADY WREN"]
PLACES = ["the castle", "the mill", "the harbour", "the market", "the old bridge", "the forest",
          "the tower", "the chapel", "the inn", "the garden", "the river", "the hill"]
THINGS = ["the letter", "the crown", "a lantern", "the key", "my sword", "the bread", "a ring",
          "the map", "your cloak", "the wine", "a candle", "the book", "the boat", "an apple"]
PEOPLE = ["the king", "the queen", "my brother", "your sister", "the miller", "the captain",
          "my lord", "the fool", "the baker", "the watchman", "my mother", "the stranger"]
ADJ = ["cold", "bright", "quiet", "strange", "golden", "broken", "gentle", "heavy", "wild",
       "sweet", "dark", "honest", "weary", "merry", "bitter"]
NOUNS = ["night", "morning", "wind", "heart", "road", "storm", "song", "fire", "rain", "winter",
         "summer", "sea", "moon", "dream", "promise"]
VERBS_PAST = ["found", "lost", "carried", "hid", "sold", "broke", "mended", "stole", "buried",
              "burned", "kept", "forgot"]
VERBS = ["find", "carry", "hide", "bring", "keep", "mend", "show", "give", "take", "burn"]
ANSWERS = ["Aye.", "No, not I.", "Perhaps.", "I cannot say.", "Never!", "So it seems.",
           "Hush now.", "Indeed, indeed.", "What of it?", "Alas."]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def c(xs):
    return rng.choice(xs)


def cap(s):
    return s[0].upper() + s[1:]


def sentence():
    forms = [
        lambda: f"I {c(VERBS_PAST)} {c(THINGS)} by {c(PLACES)}.",
        lambda: f"Where is {c(THINGS)}? {cap(c(PEOPLE))} had it last.",
        lambda: f"The {c(NOUNS)} is {c(ADJ)} tonight, and {c(PEOPLE)} will not sleep.",
        lambda: f"Go to {c(PLACES)} and {c(VERBS)} {c(THINGS)}.",
        lambda: f"Did you see {c(PEOPLE)} at {c(PLACES)}?",
        lambda: f"O {c(ADJ)} {c(NOUNS)}, why do you {c(VERBS)} my {c(NOUNS)}?",
        lambda: f"{cap(c(PEOPLE))} {c(VERBS_PAST)} {c(THINGS)}, and I {c(VERBS_PAST)} {c(THINGS)}.",
        lambda: f"We must {c(VERBS)} {c(THINGS)} before the {c(NOUNS)} comes.",
        lambda: f"{c(ANSWERS)}",
        lambda: f"Upon my word, {c(PEOPLE)} is a {c(ADJ)} soul.",
        lambda: (lambda a, b: f"{cap(a)} and {b} make {NUMBERS[NUMBERS.index(a) + NUMBERS.index(b) + 1]}.")(
            *sorted(rng.sample(NUMBERS[:4], 2), key=NUMBERS.index)),
        lambda: f"I will {c(VERBS)} {c(THINGS)} to {c(PLACES)} in the {c(NOUNS)}.",
    ]
    return c(forms)()


def scene(act, num):
    out = [f"SCENE {num}. {cap(c(PLACES))}.", ""]
    cast = rng.sample(SPEAKERS, rng.randint(2, 4))
    out.append(f"Enter {', '.join(cast[:-1])} and {cast[-1]}." if len(cast) > 1 else f"Enter {cast[0]}.")
    out.append("")
    for _ in range(rng.randint(6, 14)):
        who = c(cast)
        lines = " ".join(sentence() for _ in range(rng.randint(1, 3)))
        out.append(f"{who}:")
        out.append(lines)
        out.append("")
    out.append("Exeunt.")
    out.append("")
    return out


def main(path, target_bytes=300_000):
    text = []
    size = 0
    act = 0
    while size < target_bytes:
        act += 1
        text.append(f"ACT {act}")
        text.append("")
        for num in range(1, rng.randint(2, 4) + 1):
            lines = scene(act, num)
            text.extend(lines)
            size += sum(len(l) + 1 for l in lines)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(text) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/default_corpus.txt")
