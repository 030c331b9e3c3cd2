"""The pretraining corpus: plain text, deterministic, covering the world's facts and formats."""
from posttrain.tinyworld import world_corpus
from posttrain.tinyworld.facts import CITIES, FRUITS


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
