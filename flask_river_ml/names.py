"""Readable model names, ``adjective-noun`` like ``milky-despacito``."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from .errors import InvalidInput

_ADJECTIVES = """
adorable ancient angry bashful blue bold brave breezy bright bubbly buttery calm chewy cloudy
cozy crispy curious dapper dazzling eager fancy fluffy frosty fuzzy gentle giddy glossy golden
grumpy happy hasty hazy hungry icy jolly lazy lively lucky milky misty moody muddy nimble noisy
nutty peppy plucky quiet quirky rusty salty sleepy snappy sneaky spicy sticky stormy sunny swift
tangy tiny toasty wobbly zesty
""".split()

_NOUNS = """
avocado bagel banana biscuit blizzard buffalo butter cactus carrot cheetah chipmunk cookie
cupcake despacito dinosaur dumpling eagle earthworm egg falcon fig frog gecko gnocchi hippo
iguana jellyfish kiwi koala lemon lobster mango muffin noodle octopus otter pancake panda peach
penguin pickle platypus poodle potato pudding puffin raccoon ravioli salmon snail squid taco
toaster truffle tulip turnip walrus waffle yak
""".split()

#: What a model name may look like: it travels in URL paths and storage keys.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(name: str) -> str:
    """``name`` if it is a valid model name, else :class:`InvalidInput` saying why."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"Invalid model name {name!r}: use 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return name


def generate_name(taken: Callable[[str], bool]) -> str:
    """A fresh ``adjective-noun`` name for which ``taken`` is False.

    After a few collisions a number is added (``milky-despacito-4821``), so the search ends
    however many models exist.
    """
    for attempt in range(100):
        name = f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"
        if attempt >= 5:
            name += f"-{secrets.randbelow(10_000):04d}"
        if not taken(name):
            return name
    raise RuntimeError("Could not find a free model name.")
