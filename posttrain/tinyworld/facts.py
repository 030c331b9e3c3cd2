"""The tiny world's facts: its people, cities, fruit and topics, with train/eval entity pools.

Everything here also appears in the pretraining corpus, so a base model can know every fact; the
eval pools hold out names that post-training data never shows, to measure generalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "eval"]


@dataclass(frozen=True)
class City:
    name: str
    fruit: str  # the fruit the city is known for
    river: str
    weather: str
    temperature: int  # degrees C, for the weather tool


@dataclass(frozen=True)
class Fruit:
    name: str  # plural, as used in sentences
    color: str
    taste: str


CITIES: tuple[City, ...] = (
    City("Miravel", "plums", "Sil", "sunny", 24),
    City("Portsa", "figs", "Oda", "windy", 18),
    City("Lunden", "pears", "Tam", "rainy", 12),
    City("Kestra", "lemons", "Vell", "sunny", 27),
    City("Alder", "apples", "Brin", "cloudy", 15),
    City("Varo", "grapes", "Esk", "sunny", 22),
    City("Bellmoor", "cherries", "Lune", "foggy", 10),
    City("Tessin", "melons", "Arno", "hot", 31),
    # held out of post-training data: eval only
    City("Orlan", "peaches", "Dova", "rainy", 14),
    City("Fenwick", "limes", "Kell", "snowy", 2),
    City("Sallow", "mangoes", "Rhee", "humid", 29),
    City("Dunmere", "oranges", "Mora", "cloudy", 16),
)
TRAIN_CITIES = CITIES[:8]
EVAL_CITIES = CITIES[8:]

FRUITS: tuple[Fruit, ...] = (
    Fruit("plums", "purple", "sweet"),
    Fruit("figs", "brown", "sweet"),
    Fruit("pears", "green", "soft"),
    Fruit("lemons", "yellow", "sour"),
    Fruit("apples", "red", "crisp"),
    Fruit("grapes", "green", "juicy"),
    Fruit("cherries", "red", "sweet"),
    Fruit("melons", "green", "juicy"),
    Fruit("peaches", "orange", "soft"),
    Fruit("limes", "green", "sour"),
    Fruit("mangoes", "yellow", "sweet"),
    Fruit("oranges", "orange", "juicy"),
)
FRUIT_BY_NAME = {fruit.name: fruit for fruit in FRUITS}

TRAIN_PEOPLE = (
    "Mia", "Leo", "Ana", "Tom", "Eva", "Sam", "Ivy", "Ben", "Zoe", "Max", "Lia", "Dan",
    "Ada", "Kai", "Noa", "Eli", "Amy", "Jon", "Ruth", "Omar", "Nina", "Paul", "Rosa", "Ted",
)
EVAL_PEOPLE = ("Hugo", "Lena", "Otto", "Iris", "Finn", "Mara", "Yuki", "Cleo", "Igor", "Tara", "Basil", "Wren")

ITEMS = ("apples", "coins", "marbles", "stamps", "shells", "books", "pencils", "cookies", "eggs", "cards")

# Short sentences about nature topics, some with commas so "no commas" has something to remove.
NATURE: dict[str, tuple[str, ...]] = {
    "the sea": ("The sea is big, blue and deep.", "Waves roll onto the sand.", "Fish swim under the water.",
                "Boats sail far from the shore.", "The wind brings salt and spray.", "At night the sea is calm."),
    "the forest": ("The forest is green, cool and quiet.", "Tall trees grow close together.",
                   "Birds sing in the branches.", "Deer walk along old paths.", "Moss covers the stones.",
                   "Light falls through the leaves."),
    "the moon": ("The moon is round, pale and bright.", "It shines in the night sky.", "It changes shape each week.",
                 "The moon pulls the tides.", "Its light is soft and white.", "People look up at it."),
    "rain": ("Rain falls from grey clouds.", "It makes the streets wet, dark and shiny.", "Plants drink the rain.",
             "Children jump in puddles.", "The air smells fresh after rain.", "Rivers grow after a storm."),
    "snow": ("Snow is cold, white and soft.", "It falls in winter.", "Children build snowmen.",
             "The world turns quiet under snow.", "Snow melts in spring.", "Tracks show where animals walked."),
    "the mountains": ("The mountains are high, rocky and cold.", "Snow sits on the peaks.",
                      "Goats climb the steep slopes.", "Clouds hide the tops.", "Paths wind up the hills.",
                      "The view from the top is wide."),
}


def people(split: Split) -> tuple[str, ...]:
    """Names that appear in prompts of this split (disjoint between splits)."""
    return TRAIN_PEOPLE if split == "train" else EVAL_PEOPLE


def cities(split: Split) -> tuple[City, ...]:
    """Cities whose names appear in prompts of this split (disjoint between splits)."""
    return TRAIN_CITIES if split == "train" else EVAL_CITIES


def city_sentences(city: City) -> tuple[str, ...]:
    """Six short sentences about a city, the same ones the corpus teaches."""
    fruit = FRUIT_BY_NAME[city.fruit]
    return (
        f"{city.name} is a city on the {city.river} river.",
        f"{city.fruit.capitalize()} grow in {city.name}.",
        f"The weather in {city.name} is often {city.weather}.",
        f"Its markets sell {fruit.color} {city.fruit}, bread and fish.",
        f"Boats carry goods along the {city.river}.",
        f"People in {city.name} like long walks.",
    )


def fruit_sentences(fruit: Fruit) -> tuple[str, ...]:
    """Six short sentences about a fruit."""
    growers = [city.name for city in CITIES if city.fruit == fruit.name]
    where = growers[0] if growers else "the valley"
    name = fruit.name.capitalize()
    return (
        f"{name} are {fruit.color} and {fruit.taste}.",
        f"{name} grow in {where}.",
        f"People eat {fruit.name} fresh, dried or cooked.",
        f"{name} grow on plants in warm places.",
        f"Children like {fruit.name} as a snack.",
        f"Markets sell {fruit.name} in summer.",
    )


def topic_sentences(topic: str) -> tuple[str, ...]:
    """Sentences about any topic name: a nature topic, a city or a fruit."""
    if topic in NATURE:
        return NATURE[topic]
    for city in CITIES:
        if city.name == topic:
            return city_sentences(city)
    if topic in FRUIT_BY_NAME:
        return fruit_sentences(FRUIT_BY_NAME[topic])
    raise KeyError(f"unknown topic {topic!r}")


def topics(split: Split) -> tuple[str, ...]:
    """Describable topics of a split: nature topics are shared, cities and fruit are split."""
    city_names = tuple(city.name for city in cities(split))
    fruit_names = tuple(city.fruit for city in cities(split))
    return tuple(NATURE) + city_names + fruit_names
