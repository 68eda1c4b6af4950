"""Regenerate the text corpora in this folder, deterministically (fixed seeds):

    python corpora/make_corpora.py [OUTDIR]        (OUTDIR defaults to this folder)

markov.txt   text from an order-2 Markov chain with an exact, known entropy rate: the lowest loss
             any model can reach on it, so a model's loss can be compared with the floor.
grammar.txt  pseudo-English from the small random grammar below, so that a model trained for a
             minute produces recognisably word-like output.

Every word of grammar.txt comes from the lists in this file; no third-party text is used.
"""

import math
import random
import sys
import textwrap
from pathlib import Path

from charrnn.synthetic import MarkovSource

HERE = Path(__file__).resolve().parent

MARKOV = dict(alphabet="abcdef \n", order=2, concentration=0.5, seed=7)
MARKOV_CHARS = 100_000
MARKOV_SAMPLE_SEED = 1

GRAMMAR_CHARS = 200_000  # at least; generation stops at the end of a paragraph
GRAMMAR_SEED = 2015

NOUNS = ["river", "lantern", "garden", "keeper", "stone", "window", "merchant", "sparrow",
         "harbour", "letter", "mountain", "candle", "soldier", "orchard", "bridge", "clock",
         "tower", "child", "shepherd", "ship", "forest", "king", "road", "bell", "fox", "miller",
         "island", "storm", "door", "horse", "wolf", "field", "village", "boat", "coat", "key",
         "map", "basket", "lamp", "well"]
IRREGULAR_PLURALS = {"child": "children", "wolf": "wolves"}
ADJECTIVES = ["old", "quiet", "silver", "narrow", "bright", "cold", "gentle", "broken", "distant",
              "green", "hollow", "tired", "small", "golden", "grey", "wild", "heavy", "patient",
              "empty", "crooked", "warm", "strange", "little", "careful", "pale", "ancient"]
ADVERBS = ["slowly", "softly", "again", "quickly", "carefully", "alone", "at last", "in silence",
           "without a word", "once more", "for a long time", "before dawn", "every morning"]
PREPOSITIONS = ["under", "near", "beyond", "across", "behind", "beside", "over", "through",
                "toward", "along", "against", "inside"]
# base form -> past tense
TRANSITIVE = {"watch": "watched", "carry": "carried", "find": "found", "keep": "kept",
              "follow": "followed", "remember": "remembered", "build": "built", "break": "broke",
              "hold": "held", "call": "called", "leave": "left", "mend": "mended",
              "open": "opened", "guard": "guarded", "see": "saw", "lose": "lost",
              "paint": "painted", "sell": "sold", "bring": "brought", "forget": "forgot"}
INTRANSITIVE = {"sleep": "slept", "wander": "wandered", "sing": "sang", "fall": "fell",
                "wait": "waited", "rise": "rose", "listen": "listened", "laugh": "laughed",
                "walk": "walked", "run": "ran", "stay": "stayed", "turn": "turned"}
NAMES = ["Mara", "Tobin", "Elsa", "Corvin", "Anselm", "Ivy", "Bram", "Lotte", "Oren", "Wenna"]
SAID = ["said", "whispered", "called", "answered", "replied", "cried"]
WHEN = ["in the morning", "at night", "long ago", "that winter", "after the storm",
        "when the bell rang", "by evening", "in the spring", "before the rain"]
CONJUNCTIONS = ["and", "but", "so", "while", "because", "until"]
SINGULAR_DETERMINERS = ["the", "the", "the", "a", "a", "every", "my", "his", "her", "that"]
PLURAL_DETERMINERS = ["the", "the", "some", "many", "two", "three", "those", "her", "their"]


class Grammar:
    """Random sentences from templates; each method returns a phrase without final punctuation."""

    def __init__(self, seed: int):
        # random.Random: its choice() and random() sequences are stable across Python versions
        self.rng = random.Random(seed)

    def pick(self, words):
        return self.rng.choice(words)

    def maybe(self, p: float) -> bool:
        return self.rng.random() < p

    def noun_phrase(self) -> tuple[str, bool]:
        """(phrase, is_plural): a determiner, maybe an adjective, a noun, maybe 'of' another."""
        noun = self.pick(NOUNS)
        plural = self.maybe(0.3)
        if plural:
            noun = IRREGULAR_PLURALS.get(noun) or noun + ("es" if noun.endswith("x") else "s")
        words = [self.pick(PLURAL_DETERMINERS if plural else SINGULAR_DETERMINERS)]
        if self.maybe(0.4):
            words.append(self.pick(ADJECTIVES))
        words.append(noun)
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        if self.maybe(0.1):
            words += ["of", "the", self.pick(NOUNS)]
        return " ".join(words), plural

    def subject(self) -> str:
        return self.pick(NAMES) if self.maybe(0.3) else self.noun_phrase()[0]

    def place(self) -> str:
        return f"{self.pick(PREPOSITIONS)} {self.noun_phrase()[0]}"

    def clause(self) -> str:
        """A past-tense clause: past tense needs no agreement between subject and verb."""
        if self.maybe(0.6):
            words = [self.subject(), self.pick(list(TRANSITIVE.values())), self.noun_phrase()[0]]
        else:
            words = [self.subject(), self.pick(list(INTRANSITIVE.values()))]
        if self.maybe(0.4):
            words.append(self.place())
        if self.maybe(0.25):
            words.append(self.pick(ADVERBS))
        return " ".join(words)

    def narration(self) -> str:
        kind = self.rng.random()
        if kind < 0.15:
            thing, plural = self.noun_phrase()
            text = f"there {'were' if plural else 'was'} {thing} {self.place()}"
        elif kind < 0.4:
            text = f"{self.clause()}, {self.pick(CONJUNCTIONS)} {self.clause()}"
        else:
            text = self.clause()
        if self.maybe(0.2):
            text = f"{self.pick(WHEN)}, {text}"
        return capitalize(text) + "."

    def speech(self) -> str:
        """A line of dialogue in the present tense, then who said it."""
        thing, plural = self.noun_phrase()
        be = "are" if plural else "is"
        kind = self.rng.random()
        if kind < 0.3:
            line = f"{thing} {be} {self.pick(ADJECTIVES)},"
        elif kind < 0.55:
            line = f"where {be} {thing}?"
        elif kind < 0.8:
            line = f"we must {self.pick(list(TRANSITIVE))} {thing},"
        else:
            line = f"I {self.pick(list(TRANSITIVE.values()))} {thing} {self.place()},"
        verb = "asked" if line.endswith("?") else self.pick(SAID)
        return f'"{capitalize(line)}" {verb} {self.pick(NAMES)}.'

    def paragraph(self) -> str:
        sentences = [self.speech() if self.maybe(0.25) else self.narration()
                     for _ in range(self.rng.randint(2, 6))]
        return textwrap.fill(" ".join(sentences), width=72)


def capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def grammar_text(n_chars: int = GRAMMAR_CHARS, seed: int = GRAMMAR_SEED) -> str:
    """Paragraphs separated by blank lines, lines wrapped at 72 columns; at least n_chars."""
    grammar = Grammar(seed)
    paragraphs, length = [], 0
    while length < n_chars:
        paragraphs.append(grammar.paragraph())
        length += len(paragraphs[-1]) + 2
    return "\n\n".join(paragraphs) + "\n"


def markov_source() -> MarkovSource:
    return MarkovSource(**MARKOV)


def markov_text() -> str:
    return markov_source().sample_text(MARKOV_CHARS, seed=MARKOV_SAMPLE_SEED)


def main(argv: list[str]) -> None:
    outdir = Path(argv[0]) if argv else HERE
    outdir.mkdir(parents=True, exist_ok=True)
    # bytes, not write_text: the files must come out identical on every platform
    (outdir / "markov.txt").write_bytes(markov_text().encode("utf-8"))
    (outdir / "grammar.txt").write_bytes(grammar_text().encode("utf-8"))
    h = markov_source().entropy_rate()
    print(f"markov.txt: {MARKOV_CHARS:,} chars, entropy rate {h:.4f} nats/char "
          f"({h / math.log(2):.4f} bits/char)")
    print(f"grammar.txt: written to {outdir}")


if __name__ == "__main__":
    main(sys.argv[1:])
