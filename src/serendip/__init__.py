"""serendip: a recommender engine that uses language-model semantics to find what people did not know they wanted."""

__version__ = "0.1.0"

