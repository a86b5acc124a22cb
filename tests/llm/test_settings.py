"""``generator_config``: options, their environment variables, and bad combinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from serendip.errors import ConfigError
from serendip.llm import GeneratorConfig, generator_config


def test_nothing_given_is_no_generator() -> None:
    assert generator_config(environ={}) is None


def test_an_openai_server_from_options() -> None:
    got = generator_config("http://127.0.0.1:8000/v1/", "qwen", environ={})
    assert got == GeneratorConfig(kind="openai", model="qwen",
                                  base_url="http://127.0.0.1:8000/v1")


def test_options_fall_back_to_the_environment_and_win_over_it() -> None:
    env = {"SERENDIP_LLM_URL": "https://llm.example/v1", "SERENDIP_LLM_MODEL": "from-env",
           "SERENDIP_LLM_API_KEY_ENV": "MY_KEY", "MY_KEY": "secret",
           "SERENDIP_LLM_TIMEOUT": "7.5"}
    got = generator_config(environ=env)
    assert got is not None and got.base_url == "https://llm.example/v1"
    assert got.model == "from-env" and got.api_key_env == "MY_KEY" and got.timeout == 7.5
    assert "secret" not in got.model_dump_json()  # the key itself is never configuration
    assert generator_config(model="from-flag", environ=env).model == "from-flag"  # type: ignore[union-attr]


def test_a_local_model_directory(tmp_path: Path) -> None:
    got = generator_config(model_dir=str(tmp_path), environ={})
    assert got == GeneratorConfig(kind="local", model_dir=str(tmp_path))


@pytest.mark.parametrize(("kwargs", "env", "named"), [
    ({"model": "qwen"}, {}, "--llm-model 'qwen' needs --llm-url"),
    ({"api_key_env": "K"}, {}, "--llm-api-key-env 'K' needs --llm-url"),
    ({"url": "http://h/v1"}, {}, "--llm-url 'http://h/v1' needs --llm-model"),
    ({"url": "ftp://h", "model": "m"}, {}, "'ftp://h'"),
    ({"url": "h:8000", "model": "m"}, {}, "'h:8000'"),
    ({"model": "m"}, {"SERENDIP_LLM_URL": "nonsense"}, "SERENDIP_LLM_URL must be an http"),
    ({"url": "http://h/v1", "model_dir": "."}, {}, "not both"),
    ({"model_dir": "/no/such/dir"}, {}, "'/no/such/dir' is not a directory"),
    ({"model_dir": ".", "api_key_env": "K"}, {}, "--llm-api-key-env 'K' is for --llm-url"),
    ({"url": "http://h/v1", "model": "m", "api_key_env": "sk-123abc!"}, {}, "'sk-123abc!'"),
    ({"url": "http://h/v1", "model": "m", "api_key_env": "UNSET_KEY"}, {}, "'UNSET_KEY'"),
    ({"url": "http://h/v1", "model": "m", "timeout": "0"}, {}, "--llm-timeout"),
    ({"url": "http://h/v1", "model": "m"}, {"SERENDIP_LLM_TIMEOUT": "soon"}, "'soon'"),
])
def test_bad_combinations_name_the_value(kwargs, env, named) -> None:
    with pytest.raises(ConfigError) as err:
        generator_config(**kwargs, environ=env)
    assert named in str(err.value) and "\n" not in str(err.value)
