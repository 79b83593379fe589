"""Generated job names in Azure ML's style: two words and a random suffix."""

import secrets

ADJECTIVES = (
    "amber", "brave", "calm", "clever", "coral", "crisp", "dreamy", "eager", "frosty", "gentle",
    "golden", "happy", "icy", "jolly", "keen", "lively", "lucid", "mellow", "misty", "nimble",
    "olive", "plucky", "quiet", "quirky", "rapid", "serene", "shiny", "sleepy", "sunny", "swift",
    "tidy", "upbeat", "vivid", "witty", "zesty", "bold",
)
NOUNS = (
    "apple", "badger", "basil", "cabbage", "candle", "carrot", "comet", "cup", "feather", "fern",
    "garden", "heron", "island", "kettle", "kite", "lamp", "lemon", "lizard", "lobster", "mango",
    "moon", "nest", "otter", "owl", "pear", "pepper", "pillow", "plum", "river", "rocket", "salt",
    "seal", "spoon", "tomato", "tree", "whale",
)
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def generate() -> str:
    suffix = "".join(secrets.choice(ALPHABET) for _ in range(10))
    return f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NOUNS)}_{suffix}"
