"""Synthetic training documents: the file the agent edits in the `synthetic` program.

sampler.py (protected) mixes these documents into training: each row of each batch is synthetic
with probability RATIO, real text of the train split otherwise. It calls `generate(rng)` whenever
it needs another document, inside the training command and inside each timed step, so generating
is training time: with a seconds budget, slow generation costs steps, and the harness bounds the
whole run's wall time (a constraint in autoresearch.toml) so that work done up front does not
escape the budget. `rng` is a numpy Generator seeded from the run's seed: the same seed gives the
same documents.

Documents are plain text; the sampler tokenizes them with the prepared tokenizer and separates
them as real documents are. The model is scored on real validation text only, which this file can
neither read nor reproduce (held-out data is refused to the training process).
"""

# ----------------------------------------------------------------------------
# How much synthetic data

RATIO = 0.0             # share of the training rows that are synthetic (0: none, the baseline)

# ----------------------------------------------------------------------------
# The generator: a starting point, templated sentences from small word lists

NAMES = ["Hamlet", "Juliet", "Romeo", "Portia", "Lear", "Viola", "Brutus", "Rosalind"]
VERBS = ["loves", "fears", "serves", "mocks", "follows", "forgives", "betrays", "remembers"]
THINGS = ["the king", "my lord", "the crown", "her father", "this night", "the sea", "thy heart", "our cause"]
MIN_LINES = 4           # lines per document, at least ...
MAX_LINES = 12          # ... and at most


def line(rng):
    who, verb, what = rng.choice(NAMES), rng.choice(VERBS), rng.choice(THINGS)
    return f"{who.upper()}. {rng.choice(NAMES)} {verb} {what}.\n"


def generate(rng):
    """One synthetic document."""
    return "".join(line(rng) for _ in range(int(rng.integers(MIN_LINES, MAX_LINES + 1))))
