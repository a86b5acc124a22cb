"""The service with and without a text generator: prose on request, conversation parse and
reply, background descriptions of thin new items — against a scripted OpenAI-compatible
server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serendip.conversation import UPDATE_SCHEMA, ConversationState, parse_message, reply
from serendip.enrich import GENERATED_COLUMN
from serendip.llm import GeneratorConfig, prompt_hash
from serendip.pipeline import Recommender
from serendip.service import Engine, EngineConfig, create_app
from serendip.store import open_store
from serendip.store.base import ItemRecord, Store
from tests.llm.conftest import ChatServer, chat_server  # noqa: F401
from tests.service.conftest import SMALL, HashEncoder, Seed

MODEL = "test-model"


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'serendip.db'}")
    yield s
    s.close()


def _engine(store: Store, tmp_path: Path, seed: Seed, fitted: Recommender, encoder: HashEncoder,
            gen: GeneratorConfig | None, deadline: float = 10.0) -> Engine:
    cfg = EngineConfig(data_dir=tmp_path, fit_config=SMALL,
                       seed_interactions=str(seed.interactions), seed_items=str(seed.items),
                       generator=gen, generator_deadline=deadline, refresh_interval=None,
                       catalog_poll=None)
    engine = Engine(store, cfg, recommender=fitted, encoder=encoder)
    engine.start()
    return engine


@pytest.fixture
def plain(sqlite_store: Store, tmp_path: Path, seed_files: Seed, fitted: Recommender,
          encoder: HashEncoder) -> Iterator[Engine]:
    e = _engine(sqlite_store, tmp_path, seed_files, fitted, encoder, None)
    yield e
    e.close()


@pytest.fixture
def with_gen(sqlite_store: Store, tmp_path: Path, seed_files: Seed, fitted: Recommender,
             encoder: HashEncoder, chat_server: ChatServer) -> Iterator[Engine]:  # noqa: F811
    gen = GeneratorConfig(kind="openai", base_url=chat_server.url, model=MODEL, max_retries=0,
                          timeout=5.0)
    e = _engine(sqlite_store, tmp_path, seed_files, fitted, encoder, gen)
    yield e
    e.close()


def _fields(store: Store, item_id: str) -> dict[str, str]:
    rec = store.get_item(item_id)
    assert rec is not None
    return rec.fields


def _update(**kw: object) -> str:
    base: dict[str, object] = {"liked": [], "disliked": [], "genres": [], "not_genres": [],
                               "avoid": [], "era": None, "discovery": None, "text": ""}
    base.update(kw)
    return json.dumps(base)


# ---------------------------------------------------------------- without a generator
def test_without_a_generator_nothing_is_generated(plain: Engine, sqlite_store: Store) -> None:
    assert plain.generator is None and plain.catalog.enricher is None
    plain.upsert_items([ItemRecord("new1", {"title": "The Quiet Sea"})])
    assert _fields(sqlite_store, "new1") == {"title": "The Quiet Sea"}
    turn = plain.converse("I loved funny space cartoon i3, something less dark")
    assert turn["parse_source"] == "rules" and turn["reply_source"] == "template"
    assert turn["state"]["liked"] == ["i3"] and turn["state"]["avoid"] == ["dark"]
    rec = plain.recommend("u1", k=3, prose="generator")  # asked for, none configured
    assert rec["generated_prose"] == [] and rec["items"] == plain.recommend("u1", k=3)["items"]
    ex = plain.explain("u1", rec["items"][0]["item_id"])
    assert ex["prose"] == ex["text"] and ex["prose_source"] == "template"


# ---------------------------------------------------------------- descriptions of new items
def test_a_thin_new_item_is_described_in_the_background(
        with_gen: Engine, sqlite_store: Store, chat_server: ChatServer) -> None:  # noqa: F811
    chat_server.script.append(("ok", "A quiet film about the sea."))
    with_gen.upsert_items([ItemRecord("new1", {"title": "The Quiet Sea", "genres": "Drama"})])
    assert with_gen.enricher is not None and with_gen.enricher.wait(30)
    got = _fields(sqlite_store, "new1")
    assert got == {"title": "The Quiet Sea", "genres": "Drama",
                   GENERATED_COLUMN: "A quiet film about the sea."}
    assert with_gen.enricher.described == 1
    # the prompt held the item's own text and its nearest served items' text
    body = chat_server.seen[-1].body
    user = body["messages"][-1]["content"]
    assert user.startswith("Item: The Quiet Sea. Drama") and "Closest in description:" in user
    # the text is cached in the store under (model, prompt hash)
    key = prompt_hash(body["messages"], body["max_tokens"], 0.0, None)
    row = sqlite_store.get_generation(MODEL, key)
    assert row is not None and row["text"] == "A quiet film about the sea."
    # the next fit encodes it: the store's catalog carries the column
    frame = sqlite_store.items_frame().set_index("item_id")
    assert frame.loc["new1", GENERATED_COLUMN] == "A quiet film about the sea."
    assert not frame.loc["i0", GENERATED_COLUMN]  # the other items have none


def test_invented_descriptions_and_rich_items_are_skipped(
        with_gen: Engine, sqlite_store: Store, chat_server: ChatServer) -> None:  # noqa: F811
    chat_server.script.append(("ok", "A film by Stanley Kubrick."))  # a name not in the facts
    rich = {"title": "Long Story", "plot": "word " * 40}
    with_gen.upsert_items([ItemRecord("new2", {"title": "Bare"}), ItemRecord("new3", rich)])
    assert with_gen.enricher is not None and with_gen.enricher.wait(30)
    assert _fields(sqlite_store, "new2") == {"title": "Bare"}
    assert _fields(sqlite_store, "new3") == rich
    assert with_gen.enricher.failed == 1 and with_gen.enricher.described == 0
    assert len(chat_server.seen) == 1  # the rich item was never sent


# ---------------------------------------------------------------- prose
def test_prose_is_generated_only_when_asked(with_gen: Engine,
                                            chat_server: ChatServer) -> None:  # noqa: F811
    plain_list = with_gen.recommend("u1", k=3)
    assert chat_server.seen == [] and plain_list["generated_prose"] == []
    asked = with_gen.recommend("u1", k=3, prose="generator")
    assert len(chat_server.seen) == 3
    assert [it["prose"] for it in asked["items"]] == ["a fine reply"] * 3
    assert asked["generated_prose"] == [it["item_id"] for it in asked["items"]]
    assert [it["prose"] for it in plain_list["items"]] != ["a fine reply"] * 3
    # the same list again: every text from the store's cache, the server not called
    with_gen.recommend("u1", k=3, prose="generator")
    assert len(chat_server.seen) == 3


def test_prose_that_invents_falls_back_to_the_template(
        with_gen: Engine, chat_server: ChatServer) -> None:  # noqa: F811
    chat_server.script.extend([("ok", "Loved by 9999 people.")] * 2)
    asked = with_gen.recommend("u2", k=2, prose="generator")
    plain_list = with_gen.recommend("u2", k=2)
    assert [it["prose"] for it in asked["items"]] == [it["prose"] for it in plain_list["items"]]
    assert asked["generated_prose"] == []
    chat_server.script.append(("500",))
    ex = with_gen.explain("u2", asked["items"][0]["item_id"])
    assert ex["prose"] == ex["text"] and ex["prose_source"] == "template"


# ---------------------------------------------------------------- conversation
def test_a_valid_structured_parse_sets_the_state(with_gen: Engine, sqlite_store: Store,
                                                 chat_server: ChatServer) -> None:  # noqa: F811
    chat_server.script.extend([
        ("text", _update(liked=["funny space cartoon i3", "A Film Nobody Has"],
                         genres=["Dramas"], avoid=["dark"], discovery=0.8)),
        ("ok", "Here are some surprises for you."),
    ])
    turn = with_gen.converse("I adored that space cartoon number three; surprise me, not dark")
    assert turn["parse_source"] == "generator" and turn["reply_source"] == "generator"
    st = turn["state"]
    # the unknown title is dropped, the genre resolved to the catalog's own
    assert st["liked"] == ["i3"] and st["genres"] == ["drama"] and st["avoid"] == ["dark"]
    assert st["discovery"] == 0.8 and turn["discovery"] == 0.8
    assert turn["reply"] == "Here are some surprises for you."
    sent = chat_server.seen[0].body
    assert sent["response_format"]["type"] == "json_schema"
    # a person's own words are never kept in the generations table (not erased with them)
    key = prompt_hash(sent["messages"], sent["max_tokens"], 0.0, UPDATE_SCHEMA)
    assert sqlite_store.get_generation(MODEL, key) is None
    # the next turn refines the stored state
    chat_server.script.extend([("text", _update(disliked=["funny space cartoon i3"])),
                               ("ok", "Noted.")])
    nxt = with_gen.converse("actually I did not like it", turn["conversation_id"])
    assert nxt["state"]["liked"] == [] and nxt["state"]["disliked"] == ["i3"]
    assert nxt["state"]["genres"] == ["drama"] and nxt["turns"] == 2
    assert "i3" not in [it["item_id"] for it in nxt["items"]]


def test_a_malformed_parse_falls_back_to_the_rules(with_gen: Engine,
                                                   chat_server: ChatServer) -> None:  # noqa: F811
    message = "I loved funny space cartoon i3, something less dark"
    # not JSON, then JSON that breaks the schema (the client asks once more after the first)
    chat_server.script.extend([("text", "liked: i3"), ("text", '{"liked": "i3"}')])
    turn = with_gen.converse(message)
    assert turn["parse_source"] == "rules"
    assert turn["state"]["liked"] == ["i3"] and turn["state"]["avoid"] == ["dark"]
    idx = with_gen.serving._catalog_index(with_gen.state, with_gen.lifecycle.encoder())
    want = parse_message(message, idx)
    assert tuple(with_gen.state.item_pos[x] for x in turn["state"]["liked"]) == want.liked


def test_a_reply_naming_an_item_not_recommended_is_replaced(
        with_gen: Engine, chat_server: ChatServer) -> None:  # noqa: F811
    # an item in the catalog (stored now, so not in the model): it cannot be recommended
    with_gen.upsert_items([ItemRecord("cas", {"title": "Casablanca", "plot": "x" * 100})])
    chat_server.script.extend([("text", _update(liked=["funny space cartoon i3"])),
                               ("ok", "You will love Casablanca.")])
    turn = with_gen.converse("I loved funny space cartoon i3")
    assert turn["parse_source"] == "generator" and turn["reply_source"] == "template"
    s = with_gen.state
    st = ConversationState(liked=(s.item_pos["i3"],), turns=1)
    assert turn["reply"] == reply(st, s.titles, [it["title"] for it in turn["items"]])


def test_a_late_generator_leaves_the_rules_answer(
        sqlite_store: Store, tmp_path: Path, seed_files: Seed, fitted: Recommender,
        encoder: HashEncoder, chat_server: ChatServer) -> None:  # noqa: F811
    gen = GeneratorConfig(kind="openai", base_url=chat_server.url, model=MODEL, max_retries=0,
                          timeout=5.0)
    e = _engine(sqlite_store, tmp_path, seed_files, fitted, encoder, gen, deadline=0.2)
    try:
        chat_server.script.extend([("sleep", 1.0), ("sleep", 1.0)])
        turn = e.converse("I loved funny space cartoon i3")
        assert turn["parse_source"] == "rules" and turn["reply_source"] == "template"
        assert turn["state"]["liked"] == ["i3"]
        assert e.runner is not None and e.runner.late == 2
    finally:
        e.close()


# ---------------------------------------------------------------- HTTP
def test_readyz_names_the_generator_and_the_api_carries_the_new_fields(
        with_gen: Engine, sqlite_store: Store) -> None:
    key = sqlite_store.create_api_key("t-read", "read")
    with TestClient(create_app(with_gen)) as c:
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["generator"] == MODEL
        h = {"X-API-Key": key}
        r = c.get("/v1/users/u1/recommendations?k=2&prose=generator", headers=h)
        assert r.status_code == 200
        assert r.json()["generated_prose"] == [it["item_id"] for it in r.json()["items"]]
        ex = c.get(f"/v1/users/u1/recommendations/{r.json()['items'][0]['item_id']}/explain",
                   headers=h).json()
        assert ex["prose_source"] == "generator" and ex["prose"] == "a fine reply"
        assert c.get("/v1/users/u1/recommendations?prose=yes", headers=h).status_code == 422
        t = c.post("/v1/conversations", json={"message": "funny space cartoon i3"}, headers=h)
        assert t.status_code == 200 and t.json()["parse_source"] in ("rules", "generator")


def test_readyz_without_a_generator(plain: Engine) -> None:
    with TestClient(create_app(plain)) as c:
        assert c.get("/readyz").json()["generator"] is None
