"""Request and response bodies of the HTTP API, with bounded fields.

Every string is length-bounded and refuses NUL characters and lone surrogates (neither can be
stored in PostgreSQL text, nor encoded as UTF-8); every number is finite and range-checked;
every list has a maximum length.  Requests refuse unknown fields (``extra="forbid"``), so a
misspelt field is an error naming it rather than a silently ignored value.  Numbers are strict:
``"k": true``, ``"k": "10"`` and ``"k": 10.0`` are refused rather than coerced.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from serendip.store.base import EVENT_TYPES, ROLES

__all__ = [
    "MAX_BATCH", "PRESET_NAMES", "ItemIn", "ItemsIn", "UserIn", "UsersIn", "EventIn", "EventsIn",
    "SessionIn", "SearchIn", "KeyIn", "ID_PATTERN", "KeyInfo", "KeyList", "Revoked",
]

#: Most records accepted in one PUT/POST batch.
MAX_BATCH = 1000
#: Longest id (item, user, idempotency key, key name) accepted.
MAX_ID = 256
#: What an external id may contain: anything but '/' and control characters (the same rule for
#: ids in bodies and in paths).
ID_PATTERN = r"^[^/\x00-\x1f\x7f]+$"
#: Longest text field value accepted.
MAX_FIELD = 10_000
PRESET_NAMES = ("accurate", "balanced", "discovery")

#: A shipped preset or one given to ``serve --preset``; the engine says which exist.
PresetName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                                  examples=list(PRESET_NAMES))]
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
RoleName = Literal[ROLES]  # type: ignore[valid-type]


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Id = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN,
          description="an external id: 1-256 characters, no '/', no control characters"),
    AfterValidator(_storable),
]
FieldName = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
          description="a field (column) name: letters, digits and '_'"),
]
FieldValue = Annotated[str, Field(max_length=MAX_FIELD), AfterValidator(_storable)]
Fields = Annotated[dict[FieldName, FieldValue], Field(max_length=64)]
Discovery = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False, strict=True)]
ListLength = Annotated[int, Field(ge=1, le=100, strict=True, description="list length")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------- requests
class ItemIn(_In):
    item_id: Id
    fields: Fields = Field(default_factory=dict, description="text fields: title, genres, ...")


class ItemsIn(_In):
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_BATCH)


class UserIn(_In):
    user_id: Id
    fields: Fields = Field(default_factory=dict)


class UsersIn(_In):
    users: list[UserIn] = Field(min_length=1, max_length=MAX_BATCH)


class EventIn(_In):
    user_id: Id
    item_id: Id
    type: EventType = Field("interaction", description="skip and dislike are negative feedback")
    timestamp: float | None = Field(
        None, ge=0, le=1e11, allow_inf_nan=False, strict=True,
        description="seconds since the epoch; the server's clock when omitted",
    )
    value: float | None = Field(
        None, ge=-1e6, le=1e6, allow_inf_nan=False, strict=True, description="the rating for type 'rating'"
    )
    idempotency_key: Id | None = Field(
        None, description="a repeated key stores nothing new and acknowledges the first event"
    )


class EventsIn(_In):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH)


class SessionIn(_In):
    item_ids: list[Id] = Field(default_factory=list, max_length=200,
                               description="the session's items, oldest first")
    k: ListLength = 10
    preset: PresetName | None = None
    discovery: Discovery | None = None


class SearchIn(_In):
    query: Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_storable)]
    user_id: Id | None = None
    k: ListLength = 10
    discovery: Discovery | None = None


class ConversationIn(_In):
    message: Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_storable)]
    user_id: Id | None = Field(None, description="whose taste to blend in (optional)")
    k: ListLength = 10


class MessageIn(_In):
    message: Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_storable)]
    k: ListLength = 10


class KeyIn(_In):
    name: Id
    role: RoleName


# ------------------------------------------------------------------------------ responses
class Status(_Out):
    status: str


class Ready(_Out):
    status: str = Field(description="'ready', or 'degraded' when search is unavailable")
    model_age_seconds: float
    detail: str | None = None
    generator: str | None = Field(
        None, description="the text generator's model name when one is configured (never its "
                          "key), else null")
    model_version: int | None = Field(
        None, description="the published model version served (with a shared model directory "
                          "only, else null)")


class Upserted(_Out):
    upserted: int


class Deleted(_Out):
    deleted: int


class ItemOut(_Out):
    item_id: str
    fields: dict[str, str]


class UserList(_Out):
    users: list[str]


class HistoryEntry(_Out):
    item_id: str
    title: str
    type: str
    timestamp: float
    value: float | None


class History(_Out):
    user_id: str
    items: list[HistoryEntry]


class Ack(_Out):
    event_id: int
    duplicate: bool


class Acks(_Out):
    acks: list[Ack]


class RecItem(_Out):
    item_id: str
    title: str
    score: float
    reasons: list[str]
    badges: list[Literal["tail", "novel", "serendipitous", "explore"]]
    propensity: float = Field(
        1.0, ge=0, le=1,
        description="probability that this item was shown in this slot (1 without exploration)",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="the item's own catalog fields other than its id and title (genres, year, "
                    "an image URL, ...)",
    )
    prose: str | None = Field(
        None, description="the reasons as one or two sentences, naming nothing the reasons do "
                          "not (serendip.prose)")


class Recommendations(_Out):
    user_id: str | None
    preset: str
    discovery: float
    explore: float = Field(0.0, description="exploration rate epsilon used for this list")
    impression_id: str = Field(
        description="id of this list in the impression log (32 hex characters, time-ordered); "
                    "the log row is written asynchronously, in batches"
    )
    items: list[RecItem]
    generated_prose: list[str] = Field(
        default_factory=list,
        description="ids of the items whose 'prose' the configured text generator wrote (asked "
                    "for with prose=generator; each answer fact-checked); the others' prose is "
                    "the template's")


class SearchResults(Recommendations):
    query: str
    session_items: list[str]
    match: Literal["good", "weak", "none"] = Field(
        "good", description="how well the best items match the request: 'none' when no word of "
                            "it is known to the catalog or the encoder (the list is empty)")
    note: str | None = Field(None, description="a sentence for the person when the match is "
                                               "weak or none")
    understood: dict[str, Any] = Field(
        default_factory=dict,
        description="what was read from the request: titles named, genres, not_genres, era "
                    "(older/newer), avoid (words after 'not'), text (the rest)")


class ConversationTurn(SearchResults):
    conversation_id: str
    reply: str = Field(description="a short answer naming only what the conversation holds")
    state: dict[str, Any] = Field(
        description="what the conversation has established: liked and disliked item ids, "
                    "genres, not_genres, avoid, era, discovery, text, turns")
    turns: int
    parse_source: Literal["rules", "generator"] = Field(
        "rules", description="who read this message: the rules, or the configured generator "
                             "(structured output, validated and resolved against the catalog)")
    reply_source: Literal["template", "generator"] = Field(
        "template", description="who wrote 'reply': the template, or the configured generator "
                                "(fact-checked against the state and the items)")


class SimilarItem(_Out):
    item_id: str
    title: str
    score: float
    reasons: list[str]
    fields: dict[str, str] = Field(default_factory=dict,
                                   description="the item's own catalog fields")


class Similar(_Out):
    item_id: str
    items: list[SimilarItem]


class Because(_Out):
    item_id: str
    title: str
    similarity: float


class Popularity(_Out):
    users: int = Field(description="people in the training data who chose the item")
    of_people: int = Field(0, description="people in the training data")
    percentile: float = Field(description="share (%) of items at most as popular")
    more_popular_than_share: float = Field(0.0, description="share (%) of items less popular")


class Explanation(_Out):
    user_id: str
    item_id: str
    title: str
    because: list[Because]
    popularity: Popularity
    novelty_bits: float
    unexpectedness: float | None
    text: str
    prose: str | None = Field(
        None, description="the explanation in plain sentences: 'text' itself, or the "
                          "configured generator's rewording of it when it passes the fact check")
    prose_source: Literal["template", "generator"] | None = None


class PresetOut(_Out):
    name: str
    description: str
    discovery: float
    learned: dict[str, float] | None = Field(
        None, description="a bandit preset's current feature weights (what it has learned)")


class Presets(_Out):
    presets: list[PresetOut]


class EstimateOut(_Out):
    value: float
    stderr: float | None = Field(description="None when unbounded (a single round)")
    ci_low: float | None
    ci_high: float | None
    n: int
    n_clusters: int | None = Field(
        None, description="independent groups (people) the standard error is clustered over")


class TargetEstimate(_Out):
    ips: EstimateOut
    snips: EstimateOut | None = Field(description="None when no logged slot fits the target")
    overlap: float = Field(description="share of logged slots the target could also have shown")


class OffPolicy(_Out):
    logged: EstimateOut = Field(description="the logged lists' own reward per slot")
    rounds: int = Field(description="logged slots used")
    impressions: int
    seconds: float
    targets: dict[str, TargetEstimate]
    unknown_items: int = Field(
        0, description="logged slots whose item the current model does not know (counted as "
                       "zero terms, not dropped)")
    users: int | None = Field(None, description="people in the logged lists")


class Job(_Out):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    kind: str = "retrain"  # "refresh": started by the engine when the catalog or events grew
    reason: str | None = None
    started_at: float
    finished_at: float | None = None
    seconds: float | None = None
    error: str | None = None
    n_users: int | None = None
    n_items: int | None = None
    n_interactions: int | None = None


class KeyOut(_Out):
    name: str
    role: str
    key: str


class KeyInfo(_Out):
    """An API key as listed: never the key, never its hash."""

    name: str
    role: str
    created_at: float
    revoked: bool
    revoked_at: float | None = None


class KeyList(_Out):
    keys: list[KeyInfo]


class Revoked(_Out):
    name: str
    revoked: bool


class Error(_Out):
    """Every error response: a sentence for people, a code for programs."""

    error: str
    detail: str
    errors: list[dict[str, object]] | None = None
