"""Text side of the engine: item/user/request texts, the sentence encoder and its cache."""

from serendip.text.cache import EmbeddingCache, text_key
from serendip.text.encoder import DEFAULT_MODEL, Encoder, EncoderConfig
from serendip.text.templates import MAX_REQUEST_CHARS, item_texts, request_text, user_text

__all__ = [
    "DEFAULT_MODEL",
    "MAX_REQUEST_CHARS",
    "EmbeddingCache",
    "Encoder",
    "EncoderConfig",
    "item_texts",
    "request_text",
    "text_key",
    "user_text",
]
