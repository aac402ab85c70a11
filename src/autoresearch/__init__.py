"""autoresearch: an AI agent edits training code, a trusted harness runs, measures and keeps or reverts."""

__version__ = "0.1.0"
