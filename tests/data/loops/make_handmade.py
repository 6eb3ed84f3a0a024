"""Regenerate ``handmade.json``: labelled loop / no-loop token streams made by hand.

Run ``python tests/data/loops/make_handmade.py`` from the repository root. Texts are
tokenized two ways: ``word`` (a GPT-2-style pre-tokenizer: a word with its leading
space, a number, a punctuation run, whitespace) and ``char`` (one token per
character). Each distinct piece gets an integer id, in order of first use, so the
ids are stable across runs. Expected ``period``/``start``/``repeats`` come from how a
case is built, never from the detector.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

OUT = Path(__file__).with_name("handmade.json")
_WORD = re.compile(r"""'(?:s|t|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")

vocab: dict[str, int] = {}


def tokenize(text: str, how: str) -> list[str]:
    """Split text into pieces, word-level or char-level."""
    pieces = _WORD.findall(text) if how == "word" else list(text)
    assert "".join(pieces) == text
    return pieces


def periodic_start(ids: list[int], period: int) -> int:
    """Earliest index from which ids is periodic with this period (the definition)."""
    s = len(ids) - period
    while s > 0 and ids[s - 1] == ids[s - 1 + period]:
        s -= 1
    return s


cases: list[dict] = []


def add(name: str, label: str, how: str, description: str, text: str,
        prefix: str = "", unit: str = "", stuck: str = "", why: str = "", form: str = "") -> None:
    """Add one case; for a loop, ``text`` is prefix + unit * k (+ part of unit).

    ``stuck`` is what a reader calls the text ("verbatim", "template" or "none"; by
    default "verbatim" for a loop and "none" otherwise), ``why`` the reader's reason,
    ``form`` what kind of regular text it is ("list", "table", "tests", "code"), if any.
    """
    pieces = tokenize(text, how)
    ids = [vocab.setdefault(p, len(vocab)) for p in pieces]
    case: dict = {"name": f"{name}-{how}", "label": label, "tokenizer": how,
                  "description": description,
                  "stuck": stuck or ("verbatim" if label == "loop" else "none")}
    if why:
        case["stuck_reason"] = why
    if form:
        case["form"] = form
    if label == "loop":
        assert text.startswith(prefix + unit)
        # Count the cycle between the second and third copies: a piece can merge across
        # the prefix boundary or at the very end (whitespace), never in the middle.
        period = len(tokenize(prefix + unit * 3, how)) - len(tokenize(prefix + unit * 2, how))
        n_pre = len(tokenize(prefix, how)) + period
        start = periodic_start(ids, period)
        assert start <= n_pre, (name, how, start, n_pre)
        case |= {"period": period, "start": start, "repeats": (len(ids) - start) // period}
    else:
        case |= {"period": None, "start": None}
    case |= {"tokens": ids, "pieces": pieces}
    cases.append(case)


# ---- hard negatives: legitimate repetition -------------------------------------

REFRAIN = ("Oh, carry me home on the evening tide,\nwhere the lanterns burn on the harbour side,\n"
           "and the gulls cry out and the bells ring slow,\n"
           "carry me home where the cold winds blow.\n")
VERSES = [
    "I left the town when I was young,\nwith a borrowed coat and a silver tongue,\n"
    "I sailed the north and I sailed the south,\nwith salt in my hair and a song in my mouth.\n",
    "The captain swore by the morning star\nthat we would not wander half so far,\n"
    "but the years went by like the turning wheel\nand the sea kept all that it could steal.\n",
    "Now my hands are old and my eyes are grey,\nand I count the ships as they sail away,\n"
    "so if you pass where the waters meet,\nsing this song for an old man's feet.\n",
]
song3 = "".join(v + "\n" + REFRAIN + "\n" for v in VERSES)
song2 = VERSES[0] + "\n" + REFRAIN + "\n" + VERSES[1] + "\n" + REFRAIN
for how in ("word", "char"):
    add("song-refrain-thrice", "none", how, "a song whose refrain comes back three times, "
        "with verses between; ends right after the last refrain", song3.rstrip("\n") + "\n")
    add("song-refrain-twice", "none", how, "a song whose refrain comes back twice", song2)
    add("song-refrain-doubled-at-end", "none", how, "the last refrain sung twice back to back "
        "(two copies are not a loop)", song2 + "\n" + REFRAIN)

EMPTY = ". . . . . . . .\n"
board = ("r n b q k b n r\np p p p p p p p\n" + EMPTY * 4 + "P P P P P P P P\nR N B Q K B N R\n")
add("chess-board", "none", "word", "a chess board printout, four identical empty ranks", board)
add("chess-board-cut-after-empty-ranks", "none", "word", "a chess board printout cut right "
    "after its four identical empty ranks (36 tokens, too short for a loop)",
    board[: board.rindex(EMPTY) + len(EMPTY)])
labelled = "".join(f"{8 - r} {row}" for r, row in enumerate(board.splitlines(keepends=True)))
labelled += "  a b c d e f g h\n"
add("chess-board-labelled", "none", "char", "a chess board with rank numbers, char-level",
    labelled)
add("chess-board-labelled-cut", "none", "char", "the same board cut after the empty ranks",
    labelled[: labelled.index("2 P")])

zeros = "The buffer starts out as [" + ", ".join(["0"] * 12) + "]"
for how in ("word", "char"):
    add("twelve-zeros", "none", how, "a list of twelve zeros, ending at the list", zeros)
    add("twelve-zeros-sentence", "none", how, "a list of twelve zeros inside a sentence",
        zeros + ", and it fills up as samples arrive.\n")

cols = [f"c{i}" for i in range(20)]
wide = ("| " + " | ".join(cols) + " |\n" + "|" + " --- |" * 20 + "\n"
        + "| " + " | ".join(str(i * 3) for i in range(20)) + " |\n")
add("wide-table-separator", "none", "word", "a 20-column markdown table", wide, form="table")
add("wide-table-separator-cut", "none", "word", "a 20-column table cut after its separator line",
    wide[: wide.index("\n", wide.index("---")) + 1], form="table")
compact = "|" + "|".join(cols[:12]) + "|\n|" + "---|" * 12 + "\n"
add("compact-table-separator-cut", "none", "char", "a 12-column |---|---| separator, char-level, "
    "ending at it", compact, form="table")

tests_py = "".join(f"def test_parse_size_{n}():\n"
                   f"    assert parse_size(\"{n}k\") == {n * 1024}\n\n\n" for n in range(1, 13))
dict_py = "DEFAULTS = {\n" + "".join(f"    \"option_{n:02d}\": None,\n" for n in range(40)) + "}\n"
numbered = "Tasks:\n" + "".join(f"{n}. TODO\n" for n in range(1, 31))
table_md = "| id | name | status |\n| --- | --- | --- |\n" + "".join(
    f"| {n} | worker-{n} | idle |\n" for n in range(1, 25))
switch_c = ("switch (op) {\n"
            + "".join(f"case {n}:\n    return handle_{n}(ctx);\n" for n in range(24)) + "}\n")
for how in ("word", "char"):
    add("similar-test-functions", "none", how, "a test file of twelve near-identical functions",
        tests_py, why="twelve tests of parse_size, each with its own input and correct result: "
        "repetitive, but a sound test file", form="tests")
    add("dict-literal-40", "none", how, "a 40-entry dict literal, every value None", dict_py,
        stuck="template", why="forty keys named option_00 to option_39, every value None: "
        "numbered placeholders that say nothing", form="code")
    add("numbered-list", "none", how, "a numbered list of thirty identical items (a near-loop)",
        numbered, stuck="template", why="thirty items that all read TODO: a list with no content", form="list")
    add("markdown-table", "none", how, "a markdown table of similar rows", table_md,
        why="a status table: each row names its own worker and says it is idle", form="table")
    add("switch-statement", "none", how, "a switch statement of similar cases", switch_c,
        why="dispatch code: each case calls its own handler", form="code")

# ---- loops -----------------------------------------------------------------------

PROSE = ("The KV cache stores the keys and values of every token the model has already seen, "
         "so that each new token only needs to attend to them instead of recomputing the whole "
         "prefix. Quantizing it to eight or four bits saves memory, and the question this tool "
         "asks is what that costs in quality: whether the answers drift, whether the model "
         "forgets details from the start of a long prompt, and whether it falls into the kind of "
         "degenerate repetition that a healthy model avoids. Comparing two cache types side by "
         "side, on the same prompt with the same seed, makes the differences easy to see. A loop "
         "detector then marks the side that got stuck, so that nobody has to scroll through ten "
         "screens of the very same paragraph to find out what went wrong.\n\n")


def loop(name: str, how: str, description: str, prefix: str, unit: str, copies: int,
         tail: str = "") -> None:
    """Add a loop case: prefix, then unit repeated, then an optional cut-off copy."""
    add(name, "loop", how, description, prefix + unit * copies + tail, prefix, unit)


loop("period-1", "word", "' the' repeated 80 times", "I think that the", " the", 80)
loop("period-1", "char", "'!' repeated 100 times", "This is amazing", "!", 100)
loop("period-2", "word", "' no,' repeated 40 times", "He said no,", " no,", 40)
loop("period-2", "char", "'ha' repeated 40 times", "That is so funny: ", "ha", 40)
loop("period-3", "word", "' I am.' repeated 30 times", "Who am I? I am.", " I am.", 30)
loop("period-3", "char", "'ha ' repeated 30 times", "Funny. ", "ha ", 30)
loop("period-4", "word", "' and then I said' repeated 20 times", "So I went home",
     " and then I said", 20)
loop("period-4", "char", "'lol ' repeated 25 times", "ok ", "lol ", 25)
sentence33 = (" The model repeats this sentence because the quantized cache lost the thread of "
              "the conversation and it cannot find its way out again, so it says the words "
              "over and over.")
loop("period-33", "word", "a 33-token sentence repeated four times", "Answer:", sentence33, 4)
loop("period-33-cut", "word", "a 33-token sentence three times, then half a copy", "Answer:",
     sentence33, 3, sentence33[:60])
para = PROSE.split("\n")[0] + "\n"
loop("period-150", "word", "a paragraph of ~150 tokens repeated three times", "Summary:\n", para, 3)
loop("period-150", "char", "a 150-character passage repeated four times", "Note: ",
     para[:150], 4)
loop("after-200-tokens", "word", "a 20-token line looped after 200 tokens of prose",
     PROSE + PROSE[:420], "\nI will now repeat the answer so that it is clear to you.", 6)
loop("code-line", "word", "a line of code repeated ten times, cut mid-line", "def value(self):\n",
     "    return self._value\n", 10, "    return self")
loop("code-line", "char", "a line of code repeated five times", "def value(self):\n",
     "    return self._value\n", 5)
loop("cut-midway", "char", "a sentence three times, the fourth copy cut off midway", "",
     "It is what it is, and that is all there is to it. ", 3, "It is what it i")
loop("list-runaway", "word", "a list that degenerates into the same item forever",
     "Ingredients: flour, sugar, eggs,", " butter, milk, butter, milk, salt,", 8)

# ---- template repetition and legitimate regular text (the quiet PATTERN signal) ------------
# Labelled by what a reader calls them: "template" where the text is stuck in a pattern that
# changes only a number or a word, "none" for legitimate lists, tables and test suites whose
# items each say something of their own (and for a table that was asked for).

table10 = ("| Language | Year | Creator | Typing |\n| --- | --- | --- | --- |\n"
           "| Python | 1991 | Guido van Rossum | dynamic |\n| C | 1972 | Dennis Ritchie | static |\n"
           "| Haskell | 1990 | a committee | static, inferred |\n| Lisp | 1958 | John McCarthy | dynamic |\n"
           "| Rust | 2015 | Graydon Hoare | static |\n| JavaScript | 1995 | Brendan Eich | dynamic, weak |\n"
           "| Go | 2009 | Griesemer, Pike and Thompson | static |\n| Ruby | 1995 | Yukihiro Matsumoto | dynamic |\n"
           "| Fortran | 1957 | John Backus | static |\n| Erlang | 1986 | Joe Armstrong | dynamic, strong |\n")
add("table-10-languages", "none", "word", "a markdown table of ten programming languages", table10,
    why="ten rows, each a different language with its own year, author and typing", form="table")
steps12 = ("How to bake bread:\n1. Mix 500 g of flour with 10 g of salt.\n2. Dissolve 7 g of yeast in 350 ml "
           "of warm water.\n3. Pour the water into the flour and stir until no dry flour is left.\n"
           "4. Knead the dough on a floured table for ten minutes.\n5. Put it in an oiled bowl and cover it.\n"
           "6. Let it rise for an hour, until it has doubled.\n7. Knock the air out and shape a loaf.\n"
           "8. Place the loaf in a tin and let it rise again for 45 minutes.\n9. Heat the oven to 220 C.\n"
           "10. Slash the top with a sharp knife.\n11. Bake for 30 minutes, until the crust is brown.\n"
           "12. Cool it on a rack before slicing.\n")
add("steps-12-bread", "none", "word", "a numbered list of twelve different steps", steps12,
    why="twelve steps, each a different action", form="list")
pytest10 = ("import pytest\n\nfrom shop.cart import Cart, Item\n\n\n"
            "def test_empty_total():\n    assert Cart().total == 0\n\n\n"
            "def test_one_item():\n    assert Cart([Item(\"pen\", 3)]).total == 3\n\n\n"
            "def test_two_items():\n    assert Cart([Item(\"pen\", 3), Item(\"ink\", 5)]).total == 8\n\n\n"
            "def test_quantity():\n    assert Cart([Item(\"pen\", 3, qty=4)]).total == 12\n\n\n"
            "def test_discount():\n    assert Cart([Item(\"pen\", 10)], discount=0.1).total == 9\n\n\n"
            "def test_remove():\n    cart = Cart([Item(\"pen\", 3)])\n    cart.remove(\"pen\")\n"
            "    assert cart.items == []\n\n\n"
            "def test_remove_missing_raises():\n    with pytest.raises(KeyError):\n"
            "        Cart().remove(\"pen\")\n\n\n"
            "def test_len():\n    assert len(Cart([Item(\"a\", 1), Item(\"b\", 2)])) == 2\n\n\n"
            "def test_contains():\n    assert \"pen\" in Cart([Item(\"pen\", 3)])\n\n\n"
            "def test_str():\n    assert str(Cart()) == \"Cart(0 items, total 0)\"\n")
add("pytest-10-asserts", "none", "word", "a pytest file of ten different tests", pytest10,
    why="ten tests, each checking a different behaviour", form="tests")
people = [("Alice", "Paris", 34, 88.5), ("Bruno", "Lyon", 27, 71.0), ("Chen", "Beijing", 45, 93.2),
          ("Dara", "Dublin", 31, 64.8), ("Emeka", "Lagos", 29, 77.1), ("Farah", "Cairo", 38, 81.9),
          ("Goran", "Zagreb", 52, 58.4), ("Hana", "Kyoto", 23, 90.0), ("Ivan", "Kazan", 41, 69.3),
          ("Jana", "Brno", 36, 85.6), ("Kofi", "Accra", 33, 74.2), ("Lena", "Bergen", 26, 96.1),
          ("Mateo", "Quito", 48, 62.7), ("Nadia", "Tunis", 30, 79.5), ("Omar", "Amman", 39, 88.0),
          ("Priya", "Pune", 28, 91.4), ("Quinn", "Cork", 44, 67.9), ("Rosa", "Sevilla", 35, 73.3),
          ("Sven", "Malmo", 50, 84.7), ("Tariq", "Lahore", 32, 70.6)]
csv20 = "id,name,city,age,score\n" + "".join(f"{i},{n},{c},{a},{s}\n" for i, (n, c, a, s) in enumerate(people, 1))
add("csv-20-people", "none", "word", "a CSV of twenty rows, different values in four columns", csv20,
    why="twenty people, each with their own name, city, age and score", form="table")
times_asked = ("User: Write out the multiplication table of 7, from 1 to 12.\nAssistant: Here it is:\n"
               + "".join(f"7 x {n} = {7 * n}\n" for n in range(1, 13)))
add("times-table-asked", "none", "word", "the multiplication table of 7 that the prompt asked for",
    times_asked, why="asked for, correct, and it stops at 12 (PATTERN is expected here: the detector "
    "cannot know what was asked; the signal is quiet and never stops a run)", form="table")
shopping = "Shopping list:\n" + "".join(f"- {w}\n" for w in (
    "apples bread milk eggs butter cheese rice onions tomatoes coffee lemons yoghurt").split())
add("shopping-list-12", "none", "word", "a shopping list of twelve one-word items", shopping,
    why="twelve different things to buy", form="list")
ranking = "Top ten cities by visitors:\n" + "".join(f"{n}. {c}\n" for n, c in enumerate(
    "Bangkok Paris London Dubai Singapore Istanbul Tokyo Seoul Rome Barcelona".split(), 1))
add("ranking-10-cities", "none", "word", "a numbered list of ten one-word items", ranking,
    why="ten different cities", form="list")
json_rows = "[\n" + ",\n".join(f'  {{"id": {i}, "name": "{n.lower()}", "age": {a}}}'
                                for i, (n, _, a, _) in enumerate(people[:12], 1)) + "\n]\n"
add("json-12-objects", "none", "word", "a JSON list of twelve objects with different values", json_rows,
    why="twelve records, each with its own name and age", form="code")

animals = "cat dog bird fish horse cow sheep goat duck hen pig fox".split()
add("one-slot-sentences", "none", "word", "'The X is happy.' twelve times with a different animal",
    "I have many pets. " + " ".join(f"The {a} is happy." for a in animals) + "\n", stuck="template",
    why="the same sentence twelve times with only the animal changing: it says nothing new")
add("alternating-sentences", "none", "word", "'Add water and stir, step N.' and 'Add flour and stir, "
    "step N.' alternating on one line, 34 sentences", "To make the dough: " + " ".join(
        f"Add {'water' if n % 2 else 'flour'} and stir, step {n}." for n in range(1, 35)) + "\n",
    stuck="template", why="two sentences alternating seventeen times each with a step number: the "
    "recipe never moves on")
add("diary-counter", "none", "word", "'Day N: nothing happened.' for N = 1..14",
    "My diary:\n" + "".join(f"Day {n}: nothing happened.\n" for n in range(1, 15)), stuck="template",
    why="fourteen entries that differ only in the day number", form="list")
add("times-table-asked-to-5", "none", "word", "the table of 3 up to 5, as asked",
    "3 x 1 = 3\n3 x 2 = 6\n3 x 3 = 9\n3 x 4 = 12\n3 x 5 = 15\n", why="five rows asked for", form="table")

OUT.write_text('{"format": 1, "source": "handmade", "generator": '
               '"tests/data/loops/make_handmade.py",\n "cases": [\n'
               + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]}\n",
               encoding="utf-8")
print(f"wrote {len(cases)} cases to {OUT}")
