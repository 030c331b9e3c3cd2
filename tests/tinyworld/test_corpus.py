"""The pretraining corpus: plain text, deterministic, covering the world's facts and formats."""
import re

import pytest

from posttrain.tinyworld import world_corpus
from posttrain.tinyworld.corpus import ECHO_OPENERS
from posttrain.tinyworld.facts import CITIES, FRUITS

PLACES = {city.name for city in CITIES}


def test_corpus_is_deterministic_per_seed():
    assert list(world_corpus(1, 50)) == list(world_corpus(1, 50))
    assert list(world_corpus(1, 50)) != list(world_corpus(2, 50))
    assert len(list(world_corpus(0, 17))) == 17


def test_corpus_covers_facts_formats_code_and_long_documents():
    docs = list(world_corpus(0, 1500))
    text = "\n".join(docs)
    for city in CITIES:  # eval cities too: facts come from pretraining
        assert f"{city.fruit.capitalize()} grow in {city.name}." in text
    for fruit in FRUITS:
        assert fruit.name in text
    assert "def " in text and "return" in text
    assert any(doc.startswith("{") for doc in docs)  # a JSON record
    assert any("\n- " in doc for doc in docs)  # a bulleted list
    assert " = " in text and " km is " in text
    assert max(len(doc.split()) for doc in docs) > 200  # some long documents


def test_corpus_is_not_chat_transcripts():
    for doc in world_corpus(0, 300):
        assert doc.strip()
        assert "assistant:" not in doc.lower() and "<|" not in doc


def test_copy_documents_say_a_span_again_and_weight_zero_leaves_the_corpus_as_it_was():
    plain = list(world_corpus(0, 400))
    assert list(world_corpus(0, 400, copy_share=0.0)) == plain
    mixed = list(world_corpus(0, 400, copy_share=0.5))
    with pytest.raises(ValueError, match="copy_share"):
        next(world_corpus(0, 1, copy_share=1.0))
    echoes = [doc for doc in mixed if doc.split(":")[0] in ECHO_OPENERS]
    ledgers = [doc for doc in mixed if " has " in doc and " in " in doc and doc not in plain]
    assert 60 <= len(echoes) <= 140 and 60 <= len(ledgers) <= 140  # half the weight: about a quarter each
    for doc in echoes:
        span = doc.split(": ", 1)[1].split(". ", 1)[0]
        assert doc.count(span) >= 2  # said again, verbatim
    for doc in ledgers:  # facts made up first ("<name> has <count> <item> in <city>."), then read back
        facts = re.findall(r"(\w+) has (\d+) (\w+) in (\w+)\. ", doc + " ")
        stated = " ".join(f"{n} has {c} {i} in {city}." for n, c, i, city in facts)
        assert doc.startswith(stated) and len(doc) > len(stated) + 10
        read_back = doc[len(stated):]
        assert set(re.findall(r"\d+", read_back)) <= {c for _, c, _, _ in facts}
        assert {w for w in re.findall(r"\w+", read_back) if w in PLACES} <= {city for *_, city in facts}
