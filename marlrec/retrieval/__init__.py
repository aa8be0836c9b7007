"""Candidate retrieval: the item scores from which each slate's candidates are drawn."""
