"""A generator configuration from command-line options and environment variables.

``serve``, ``enrich`` and ``chat`` take the same options; each falls back to an environment
variable, so a deployment can set them once:

=====================  ===========================  ==========================================
option                 variable                     meaning
=====================  ===========================  ==========================================
``--llm-url``          ``SERENDIP_LLM_URL``         an OpenAI-compatible server's API root
``--llm-model``        ``SERENDIP_LLM_MODEL``       the model name sent to it
``--llm-api-key-env``  ``SERENDIP_LLM_API_KEY_ENV`` the variable that holds its key
``--llm-model-dir``    ``SERENDIP_LLM_MODEL_DIR``   a causal LM directory run in this process
``--llm-timeout``      ``SERENDIP_LLM_TIMEOUT``     seconds before one request is abandoned
=====================  ===========================  ==========================================

Nothing set: no generator (None), and everything works from templates and the data.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

from serendip.errors import ConfigError
from serendip.llm.base import GeneratorConfig

__all__ = ["ENV", "generator_config"]

#: Option name -> the environment variable it falls back to.
ENV = {
    "--llm-url": "SERENDIP_LLM_URL",
    "--llm-model": "SERENDIP_LLM_MODEL",
    "--llm-api-key-env": "SERENDIP_LLM_API_KEY_ENV",
    "--llm-model-dir": "SERENDIP_LLM_MODEL_DIR",
    "--llm-timeout": "SERENDIP_LLM_TIMEOUT",
}
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _pick(option: str, given: object, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The value (option first, then its variable) and how to name it in an error."""
    if given is not None and str(given) != "":
        return str(given), option
    var = ENV[option]
    got = environ.get(var, "").strip()
    return (got or None), var


def generator_config(url: str | None = None, model: str | None = None,
                     api_key_env: str | None = None, model_dir: str | None = None,
                     timeout: float | str | None = None,
                     environ: Mapping[str, str] | None = None) -> GeneratorConfig | None:
    """The configuration the options (else their variables) describe, or None when neither a
    URL nor a model directory is given.  A bad combination is a ConfigError naming the value.
    """
    env = os.environ if environ is None else environ
    u, u_name = _pick("--llm-url", url, env)
    m, m_name = _pick("--llm-model", model, env)
    k, k_name = _pick("--llm-api-key-env", api_key_env, env)
    d, d_name = _pick("--llm-model-dir", model_dir, env)
    t, t_name = _pick("--llm-timeout", timeout, env)
    seconds = 60.0
    if t is not None:
        try:
            seconds = float(t)
        except ValueError:
            seconds = -1.0
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ConfigError(f"{t_name} must be a positive number of seconds, got {t!r}")
    if u is None and d is None:
        extra = [(name, v) for name, v in ((m_name, m), (k_name, k)) if v is not None]
        if extra:
            name, v = extra[0]
            raise ConfigError(f"{name} {v!r} needs --llm-url (an OpenAI-compatible server) or "
                              "--llm-model-dir (a local model directory)")
        return None
    if u is not None and d is not None:
        raise ConfigError(f"give either {u_name} ({u!r}) or {d_name} ({d!r}), not both")
    if k is not None and not _VARIABLE.match(k):
        raise ConfigError(f"{k_name} names an environment variable (letters, digits, '_'), "
                          f"got {k!r}; never put the key itself here")
    if d is not None:
        if k is not None:
            raise ConfigError(f"{k_name} {k!r} is for --llm-url servers; a local model "
                              f"directory ({d!r}) needs no key")
        if not os.path.isdir(os.path.expanduser(d)):
            raise ConfigError(f"{d_name} {d!r} is not a directory")
        return GeneratorConfig(kind="local", model=m or "", model_dir=os.path.expanduser(d),
                               timeout=seconds)
    assert u is not None
    if not re.match(r"^https?://[^\s/]+", u):
        raise ConfigError(f"{u_name} must be an http:// or https:// URL, got {u!r}")
    if m is None:
        raise ConfigError(f"{u_name} {u!r} needs --llm-model (or {ENV['--llm-model']}): the "
                          "model name the server serves")
    if k is not None and not env.get(k):
        raise ConfigError(f"{k_name} names the environment variable {k!r}, which is unset or "
                          "empty")
    return GeneratorConfig(kind="openai", model=m, base_url=u.rstrip("/"), api_key_env=k,
                           timeout=seconds)
