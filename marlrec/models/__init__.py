"""Models shared by plugins of several kinds (a baseline and a retriever fitting the same one)."""
