"""marlrec: language-model representations and cooperating RL agents for recommendation."""

__version__ = "0.1.0"
