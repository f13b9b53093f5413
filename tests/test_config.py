"""monitor.toml + .env -> Settings: exact error messages, merging, keys, hashing and `config check`.

Every test runs in its own empty directory (so ./monitor.toml and ./.env are the test's own) and
passes `environ` explicitly unless the process environment is what it tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from monitor import config
from monitor.config.targets import effective_config
from monitor.domain import Provider, Settings
from monitor.errors import ConfigError
from monitor.render import check as render_check
from monitor.secrets import Secret

KEY = "sk-" "test-7c1e9a4b2d8f6e0a3c5b7d9f1e2a4cyz"  # fake; the leak tests hunt for it
AZURE_KEY = "az-test-5d3f1b9e7c2a4e6f8a0c1e3b5d7f9a2b"
ENV = {"OPENAI_API_KEY": KEY, "AZURE_OPENAI_API_KEY": AZURE_KEY, "ANTHROPIC_API_KEY": KEY}

MINIMAL = """
[[targets]]
name = "a"
model = "m"
"""

AZURE = """
[[targets]]
name = "az"
provider = "azure"
base_url = "https://myres.openai.azure.com/"
deployment = "gpt4o-prod"
api_version = "2024-10-21"
"""


@pytest.fixture(autouse=True)
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write(text: str, path: str = "monitor.toml") -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(textwrap.dedent(text))
    return path


def load(text: str, environ: dict[str, str] | None = None) -> Settings:
    return config.load(write(text), environ=ENV if environ is None else environ)


def target_toml(**keys: str) -> str:
    """A [[targets]] entry named "a" with model "m"; keyword arguments add or replace keys, each
    value written as raw TOML."""
    entry = {"name": '"a"', "model": '"m"', **keys}
    return "[[targets]]\n" + "".join(f"{key} = {value}\n" for key, value in entry.items())


TARGET_KEYS = (
    "api_key_env, api_version, base_url, checks, daily_request_budget, daily_token_budget, deployment, detect, interval, max_response_bytes, messages, "
    "model, name, params, provider, stream, timeout"
)
DEFAULT_KEYS = TARGET_KEYS.replace(" name,", "")
VAR_MISSING = "expected environment variable {} to be set (in the environment or .env), got nothing"


# --- errors: every key at every level, exact messages ---------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The top level.
        pytest.param(
            "alert = 1\n",
            "alert: expected a known key (alerts, check_sets, database, defaults, otel, retention, routes, targets, web), got an unknown key"
            ' (did you mean "alerts"?)',
            id="top-unknown-section",
        ),
        pytest.param(
            '[target]\nname = "a"\n',
            "target: expected a known key (alerts, check_sets, database, defaults, otel, retention, routes, targets, web), "
            'got an unknown key (did you mean "targets"?)',
            id="top-typo",
        ),
        # [database]
        pytest.param(
            'database = "sqlite:///x.db"\n',
            "database: expected a table, got 'sqlite:///x.db'",
            id="database-not-table",
        ),
        pytest.param(
            '[database]\nuri = "sqlite:///x.db"\n',
            'database.uri: expected a known key (url), got an unknown key (did you mean "url"?)',
            id="database-typo",
        ),
        pytest.param(
            '[database]\nurl = "postgres://monitor:hunter2@db/monitor"\n',
            'database.url: expected a SQLAlchemy URL like "sqlite:///monitor.db" or '
            "\"postgresql+psycopg://user@host/monitor\", got 'postgres://monitor:***@db/monitor'",
            id="database-url-scheme-password-hidden",
        ),
        pytest.param(
            "[database]\nurl = 5\n",
            'database.url: expected a SQLAlchemy URL like "sqlite:///monitor.db" or '
            '"postgresql+psycopg://user@host/monitor", got 5',
            id="database-url-type",
        ),
        # [defaults]
        pytest.param(
            '[defaults]\nname = "x"\n',
            f"defaults.name: expected a known key ({DEFAULT_KEYS}), got an unknown key",
            id="defaults-name",
        ),
        pytest.param(
            "[defaults]\ntimeout = 30\n",
            'defaults.timeout: expected a duration like "30s", got 30',
            id="defaults-timeout-bare-number",
        ),
        pytest.param(
            "[defaults]\nparams = { temperature = 3 }\n",
            "defaults.params.temperature: expected a number from 0 to 2, got 3",
            id="defaults-params-temperature",
        ),
        pytest.param(
            '[defaults]\nmessages = [{ role = "robot", content = "hi" }]\n',
            'defaults.messages[0].role: expected one of "system", "user", "assistant", '
            '"developer", "tool", got \'robot\'',
            id="defaults-messages-role",
        ),
        # [[targets]] as a whole
        pytest.param(
            '[targets]\nname = "a"\n',
            "targets: expected an array of tables ([[targets]]), got a table",
            id="targets-not-array",
        ),
        pytest.param(
            "targets = [1]\n",
            "targets[0]: expected a table, got 1",
            id="targets-item-not-table",
        ),
        pytest.param(
            target_toml(timout='"30s"'),
            f'targets[0].timout: expected a known key ({TARGET_KEYS}), got an unknown key (did you mean "timeout"?)',
            id="target-typo",
        ),
        # name
        pytest.param(
            '[[targets]]\nmodel = "m"\n',
            'targets[0].name: expected a name like "gpt-4o" (letters, digits, ".", "_", "-"; '
            "used on the command line), got nothing",
            id="name-missing",
        ),
        pytest.param(
            '[[targets]]\nname = "my model"\nmodel = "m"\n',
            'targets[0].name: expected a name like "gpt-4o" (letters, digits, ".", "_", "-"; '
            "used on the command line), got 'my model'",
            id="name-not-slug",
        ),
        pytest.param(
            MINIMAL + MINIMAL.replace('"m"', '"m2"'),
            "targets[1].name: expected a unique name (targets[0] already uses it), got 'a'",
            id="name-duplicate",
        ),
        # provider
        pytest.param(
            target_toml(provider='"gemini"'),
            'targets[0].provider: expected one of "openai", "azure", "openai-compatible", '
            "\"anthropic\", got 'gemini'",
            id="provider-unknown",
        ),
        pytest.param(
            target_toml(provider='"anthropic"', params="{ seed = 7 }"),
            'targets[0].params.seed: expected no seed for provider "anthropic" (the Messages '
            "API refuses it), got 7",
            id="anthropic-seed",
        ),
        pytest.param(
            target_toml(provider='"anthropic"', messages='[{ role = "user", content = "x" }, '
                        '{ role = "system", content = "y" }]'),
            "targets[0].messages[1].role: expected user and assistant messages, after any "
            'system ones (provider "anthropic" sends those as `system`), got \'system\'',
            id="anthropic-late-system",
        ),
        pytest.param(
            target_toml(provider='"anthropic"', messages='[{ role = "system", content = "y" }, '
                        '{ role = "user", content = "x" }]', params='{ system = "z" }'),
            "targets[0].params.system: expected a system message or params.system, not both, "
            "got both",
            id="anthropic-two-systems",
        ),
        # base_url
        pytest.param(
            target_toml(base_url='"api.openai.com/v1"'),
            'targets[0].base_url: expected an http(s) URL like "https://api.openai.com/v1", '
            "got 'api.openai.com/v1'",
            id="base-url-no-scheme",
        ),
        pytest.param(
            target_toml(base_url='"https://h/v1?x=1"'),
            "targets[0].base_url: expected an http(s) URL without a query or fragment, "
            "got 'https://h/v1?x=****'",
            id="base-url-query",
        ),
        pytest.param(
            AZURE.replace('base_url = "https://myres.openai.azure.com/"\n', ""),
            'targets[0].base_url: expected an http(s) URL like "https://myres.openai.azure.com" '
            '(required for provider "azure"), got nothing',
            id="base-url-required-azure",
        ),
        pytest.param(
            target_toml(provider='"openai-compatible"'),
            'targets[0].base_url: expected an http(s) URL like "http://localhost:8000/v1" '
            '(required for provider "openai-compatible"), got nothing',
            id="base-url-required-compatible",
        ),
        # model, deployment, api_version
        pytest.param(
            '[[targets]]\nname = "a"\n',
            'targets[0].model: expected a model name (required for provider "openai"), got nothing',
            id="model-missing",
        ),
        pytest.param(
            '[[targets]]\nname = "a"\nmodel = " "\n',
            "targets[0].model: expected a non-empty string, got ' '",
            id="model-blank",
        ),
        pytest.param(
            AZURE.replace('deployment = "gpt4o-prod"\n', ""),
            'targets[0].deployment: expected the deployment name (required for provider "azure"), '
            "got nothing",
            id="deployment-required-azure",
        ),
        pytest.param(
            AZURE.replace('api_version = "2024-10-21"\n', ""),
            'targets[0].api_version: expected an API version like "2024-10-21" '
            '(required for provider "azure"), got nothing',
            id="api-version-required-azure",
        ),
        pytest.param(
            target_toml(deployment='"d"'),
            'targets[0].deployment: expected no deployment for provider "openai" '
            "(only \"azure\" uses it), got 'd'",
            id="deployment-refused-openai",
        ),
        pytest.param(
            '[defaults]\napi_version = "2024-10-21"\n'
            + target_toml(provider='"openai-compatible"', base_url='"http://h"'),
            'targets[0].api_version: expected no api_version for provider "openai-compatible" '
            "(only \"azure\" uses it), got '2024-10-21'",
            id="api-version-from-defaults-refused",
        ),
        # api_key_env
        pytest.param(
            target_toml(api_key_env='"sk-' 'proj-abcdefghijklmnop"'),
            "targets[0].api_key_env: expected the name of an environment variable like "
            "\"OPENAI_API_KEY\", not the key itself, got 'sk-…op'",
            id="api-key-env-pasted-key-masked",
        ),
        pytest.param(
            target_toml(api_key_env='"MY_KEY"'),
            "targets[0].api_key_env: " + VAR_MISSING.format("MY_KEY"),
            id="api-key-env-unset",
        ),
        # messages
        pytest.param(
            target_toml(messages="[]"),
            "targets[0].messages: expected a non-empty array of tables like "
            '{ role = "user", content = "..." }, got []',
            id="messages-empty",
        ),
        pytest.param(
            target_toml(messages='["hi"]'),
            "targets[0].messages[0]: expected a table, got 'hi'",
            id="messages-item-not-table",
        ),
        pytest.param(
            target_toml(
                messages='[{ role = "user", content = "a" }, { role = "bot", content = "b" }]'
            ),
            'targets[0].messages[1].role: expected one of "system", "user", "assistant", '
            '"developer", "tool", got \'bot\'',
            id="messages-role",
        ),
        pytest.param(
            target_toml(messages='[{ role = "user" }]'),
            "targets[0].messages[0].content: expected a string, got nothing",
            id="messages-content-missing",
        ),
        pytest.param(
            target_toml(messages='[{ role = "user", content = 1 }]'),
            "targets[0].messages[0].content: expected a string, got 1",
            id="messages-content-type",
        ),
        pytest.param(
            target_toml(messages='[{ role = "user", text = "hi" }]'),
            "targets[0].messages[0].text: expected a known key (content, role), got an unknown key",
            id="messages-unknown-key",
        ),
        # params
        pytest.param(
            target_toml(params="1"),
            "targets[0].params: expected a table, got 1",
            id="params-not-table",
        ),
        pytest.param(
            target_toml(params="{ temperature = true }"),
            "targets[0].params.temperature: expected a number from 0 to 2, got true",
            id="params-temperature-bool",
        ),
        pytest.param(
            target_toml(params="{ temperature = nan }"),
            "targets[0].params.temperature: expected a number from 0 to 2, got nan",
            id="params-temperature-nan",
        ),
        pytest.param(
            target_toml(params="{ top_p = 1.5 }"),
            "targets[0].params.top_p: expected a number from 0 to 1, got 1.5",
            id="params-top-p",
        ),
        pytest.param(
            target_toml(params="{ seed = 1.5 }"),
            "targets[0].params.seed: expected an integer, got 1.5",
            id="params-seed",
        ),
        pytest.param(
            target_toml(params="{ n = 0 }"),
            "targets[0].params.n: expected an integer of at least 1, got 0",
            id="params-n",
        ),
        pytest.param(
            target_toml(params="{ max_completion_tokens = 0 }"),
            "targets[0].params.max_completion_tokens: expected an integer of at least 1, got 0",
            id="params-max-completion-tokens",
        ),
        pytest.param(
            target_toml(params="{ max_tokens = true }"),
            "targets[0].params.max_tokens: expected an integer of at least 1, got true",
            id="params-max-tokens-bool",
        ),
        pytest.param(
            target_toml(params="{ max_tokens = 16, max_completion_tokens = 16 }"),
            "targets[0].params: expected max_completion_tokens or max_tokens, not both, got both",
            id="params-both-caps",
        ),
        pytest.param(
            target_toml(params='{ stop = ["a", "b", "c", "d", "e"] }'),
            "targets[0].params.stop: expected a string or an array of up to 4 strings, "
            "got ['a', 'b', 'c', 'd', 'e']",
            id="params-stop",
        ),
        pytest.param(
            target_toml(params="{ presence_penalty = -3 }"),
            "targets[0].params.presence_penalty: expected a number from -2 to 2, got -3",
            id="params-presence-penalty",
        ),
        pytest.param(
            target_toml(params="{ frequency_penalty = 2.5 }"),
            "targets[0].params.frequency_penalty: expected a number from -2 to 2, got 2.5",
            id="params-frequency-penalty",
        ),
        pytest.param(
            target_toml(params='{ reasoning_effort = "max" }'),
            'targets[0].params.reasoning_effort: expected one of "minimal", "low", "medium", '
            '"high", "none", got \'max\'',
            id="params-reasoning-effort",
        ),
        pytest.param(
            target_toml(params='{ model = "gpt-4o" }'),
            "targets[0].params.model: expected no model in params (use the model key), "
            "got 'gpt-4o'",
            id="params-model-refused",
        ),
        pytest.param(
            target_toml(params="{ messages = [] }"),
            "targets[0].params.messages: expected no messages in params (use the messages key), "
            "got []",
            id="params-messages-refused",
        ),
        pytest.param(
            target_toml(params="{ stream = true }"),
            "targets[0].params.stream: expected no stream in params (use the stream key), got true",
            id="params-stream-refused",
        ),
        pytest.param(
            target_toml(params="{ stream_options = { include_usage = true } }"),
            "targets[0].params.stream_options: expected no stream_options in params "
            "(use the stream key; monitor sets them), got a table",
            id="params-stream-options-refused",
        ),
        pytest.param(
            target_toml(params="{ metadata = 1979-05-27 }"),
            "targets[0].params.metadata: expected a JSON value (string, number, boolean, array "
            "or table), got datetime.date(1979, 5, 27)",
            id="params-pass-through-not-json",
        ),
        # stream, durations, size
        pytest.param(
            target_toml(stream='"yes"'),
            "targets[0].stream: expected true or false, got 'yes'",
            id="stream-type",
        ),
        pytest.param(
            target_toml(interval="300"),
            'targets[0].interval: expected a duration like "30s", got 300',
            id="interval-bare-number",
        ),
        pytest.param(
            target_toml(interval='"5 minutes"'),
            "targets[0].interval: expected a duration like \"30s\", got '5 minutes'",
            id="interval-words",
        ),
        pytest.param(
            target_toml(interval='"500ms"'),
            "targets[0].interval: expected a duration from \"1s\" to \"1d\", got '500ms'",
            id="interval-too-short",
        ),
        pytest.param(
            target_toml(timeout='"0s"'),
            "targets[0].timeout: expected a duration from \"100ms\" to \"10m\", got '0s'",
            id="timeout-zero",
        ),
        pytest.param(
            target_toml(interval='"10s"'),
            "targets[0].timeout: expected a timeout no longer than the interval (10s), got '30s'",
            id="timeout-over-interval",
        ),
        pytest.param(
            target_toml(max_response_bytes="100"),
            "targets[0].max_response_bytes: expected an integer of at least 1024, got 100",
            id="max-response-bytes-small",
        ),
        pytest.param(
            target_toml(max_response_bytes="true"),
            "targets[0].max_response_bytes: expected an integer of at least 1024, got true",
            id="max-response-bytes-bool",
        ),
        # The target's index in the file, past a valid one.
        pytest.param(
            MINIMAL + MINIMAL.replace('"a"', '"b"') + target_toml(stream="1").replace('"a"', '"c"'),
            "targets[2].stream: expected true or false, got 1",
            id="third-target",
        ),
    ],
)
def test_invalid_config_names_file_key_expected_and_got(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert str(caught.value) == f"monitor.toml: {message}"


def test_config_error_carries_its_parts() -> None:
    with pytest.raises(ConfigError) as caught:
        load(target_toml(timeout="30"))
    error = caught.value
    assert (error.path, error.key, error.expected, error.got) == (
        "monitor.toml",
        "targets[0].timeout",
        'a duration like "30s"',
        30,
    )


def test_missing_file_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load("nowhere/monitor.toml", environ={})
    assert str(caught.value) == (
        "nowhere/monitor.toml: expected a readable TOML file, got no such file or directory"
    )


def test_invalid_toml_gives_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        load('[[targets]]\nname = "a"\nmodel = \n')
    assert str(caught.value) == (
        "monitor.toml: expected valid TOML, got Invalid value (at line 3, column 9)"
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({}, VAR_MISSING.format("OPENAI_API_KEY"), id="missing"),
        pytest.param(
            {"OPENAI_API_KEY": ""},
            "expected environment variable OPENAI_API_KEY to be set (in the environment or .env), "
            "got an empty value",
            id="empty",
        ),
    ],
)
def test_openai_target_needs_its_key_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(MINIMAL, environ)
    assert str(caught.value) == f"monitor.toml: targets[0].api_key_env: {message}"


def test_bad_database_url_from_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load("", {"MONITOR_DATABASE_URL": "mysql://db/monitor"})
    assert str(caught.value) == (
        "monitor.toml: database.url (MONITOR_DATABASE_URL): expected a SQLAlchemy URL like "
        '"sqlite:///monitor.db" or "postgresql+psycopg://user@host/monitor", '
        "got 'mysql://db/monitor'"
    )


# --- defaults and merging --------------------------------------------------------------------


def test_a_bare_target_gets_every_built_in_default() -> None:
    (target,) = load(MINIMAL).targets
    assert target.provider is Provider.OPENAI
    assert target.base_url == "https://api.openai.com/v1"
    assert target.model == "m"
    assert target.messages == ({"role": "user", "content": "Reply with the single word: pong"},)
    assert target.params == {"temperature": 0, "seed": 7, "max_completion_tokens": 16}
    assert (target.interval_ms, target.timeout_ms) == (300_000, 30_000)
    assert target.stream is False
    assert target.max_response_bytes == 1024 * 1024
    assert (target.api_key_env, target.api_key) == ("OPENAI_API_KEY", Secret(KEY))
    assert (target.deployment, target.api_version) == (None, None)


def test_defaults_merge_under_targets_and_params_merge_key_by_key() -> None:
    settings = load(
        """
        [defaults]
        interval = "1m"
        timeout = "10s"
        stream = true
        params = { seed = 42, top_p = 0.5, logit_bias = { "50256" = -100 } }

        [[targets]]
        name = "a"
        model = "m"
        interval = "2m"
        params = { temperature = 0.7 }

        [[targets]]
        name = "b"
        model = "m"
        stream = false
        """
    )
    a, b = settings.targets
    assert (a.interval_ms, a.timeout_ms, a.stream) == (120_000, 10_000, True)
    assert a.params == {
        "temperature": 0.7,
        "seed": 42,
        "top_p": 0.5,
        "logit_bias": {"50256": -100},
        "max_completion_tokens": 16,
    }
    assert (b.interval_ms, b.stream) == (60_000, False)
    assert b.params["temperature"] == 0
    # Merged values are copies: one target's params cannot leak into another's.
    a.params["logit_bias"]["1"] = 1
    assert b.params["logit_bias"] == {"50256": -100}


@pytest.mark.parametrize(
    ("text", "cap"),
    [
        pytest.param(MINIMAL, {"max_completion_tokens": 16}, id="openai"),
        pytest.param(AZURE, {"max_completion_tokens": 16}, id="azure"),
        pytest.param(
            target_toml(provider='"openai-compatible"', base_url='"http://127.0.0.1:8080/v1"'),
            {"max_tokens": 16},
            id="openai-compatible",
        ),
        pytest.param(
            target_toml(params="{ max_tokens = 32 }"), {"max_tokens": 32}, id="user-max-tokens"
        ),
        pytest.param(
            "[defaults]\nparams = { max_completion_tokens = 64 }\n" + MINIMAL,
            {"max_completion_tokens": 64},
            id="cap-from-defaults",
        ),
        pytest.param(
            "[defaults]\nparams = { max_completion_tokens = 64 }\n"
            + target_toml(params="{ max_tokens = 8 }"),
            {"max_tokens": 8},
            id="target-cap-replaces-defaults-cap",
        ),
    ],
)
def test_token_cap_key_depends_on_provider_unless_the_user_sets_one(
    text: str, cap: dict[str, int]
) -> None:
    (target,) = load(text).targets
    caps = {k: v for k, v in target.params.items() if k in ("max_tokens", "max_completion_tokens")}
    assert caps == cap


def test_azure_target_resolves_without_model_and_strips_trailing_slash() -> None:
    (target,) = load(AZURE).targets
    assert target.provider is Provider.AZURE
    assert target.base_url == "https://myres.openai.azure.com"
    assert (target.model, target.deployment, target.api_version) == (
        None,
        "gpt4o-prod",
        "2024-10-21",
    )
    assert (target.api_key_env, target.api_key) == ("AZURE_OPENAI_API_KEY", Secret(AZURE_KEY))


def test_openai_compatible_key_is_optional_until_named() -> None:
    local = target_toml(provider='"openai-compatible"', base_url='"http://127.0.0.1:8080/v1/"')
    (target,) = load(local, environ={}).targets
    assert (target.base_url, target.api_key_env, target.api_key) == (
        "http://127.0.0.1:8080/v1",
        None,
        None,
    )
    named = local + 'api_key_env = "VLLM_KEY"\n'
    (target,) = load(named, environ={"VLLM_KEY": "local-secret-1234"}).targets
    assert target.api_key == Secret("local-secret-1234")


def test_zero_targets_is_allowed() -> None:
    settings = load('[defaults]\ninterval = "1m"\n', environ={})
    assert settings.targets == ()
    assert settings.database_url == "sqlite:///monitor.db"


# --- where the file, the variables and the database come from --------------------------------


def test_dotenv_beside_the_config_supplies_the_key() -> None:
    path = write(MINIMAL, "conf/monitor.toml")
    write(f"OPENAI_API_KEY={KEY}\n", "conf/.env")
    (target,) = config.load(path, environ={}).targets
    assert target.api_key == Secret(KEY)
    assert "OPENAI_API_KEY" not in os.environ  # read, never exported


def test_environment_wins_over_dotenv_and_config_dir_dotenv_over_cwd_dotenv() -> None:
    path = write(MINIMAL, "conf/monitor.toml")
    write("OPENAI_API_KEY=from-config-dir-env\nVLLM_KEY=from-config-dir-env\n", "conf/.env")
    write("VLLM_KEY=from-cwd-env\nAZURE_OPENAI_API_KEY=from-cwd-env\n", ".env")
    settings = config.load(path, environ={"OPENAI_API_KEY": KEY})
    assert settings.targets[0].api_key == Secret(KEY)

    local = target_toml(
        provider='"openai-compatible"', base_url='"http://h"', api_key_env='"VLLM_KEY"'
    )
    write(local, "conf/monitor.toml")
    assert config.load(path, environ={}).targets[0].api_key == Secret("from-config-dir-env")
    write(AZURE, "conf/monitor.toml")
    assert config.load(path, environ={}).targets[0].api_key == Secret("from-cwd-env")


def test_default_environ_is_os_environ_merged_with_dotenv(monkeypatch: pytest.MonkeyPatch) -> None:
    write(MINIMAL + AZURE)
    write("OPENAI_API_KEY=from-dotenv-0123456789\nAZURE_OPENAI_API_KEY=from-dotenv\n", ".env")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    a, az = config.load().targets
    assert (a.api_key, az.api_key) == (Secret(KEY), Secret("from-dotenv"))
    assert "AZURE_OPENAI_API_KEY" not in os.environ


@pytest.mark.parametrize(
    ("argument", "variable", "chosen"),
    [
        pytest.param("explicit.toml", "fromenv.toml", "explicit.toml", id="argument-first"),
        pytest.param(None, "fromenv.toml", "fromenv.toml", id="then-MONITOR_CONFIG"),
        pytest.param(None, None, "monitor.toml", id="then-cwd-monitor-toml"),
    ],
)
def test_config_path_precedence(
    monkeypatch: pytest.MonkeyPatch, argument: str | None, variable: str | None, chosen: str
) -> None:
    for name in ("explicit.toml", "fromenv.toml", "monitor.toml"):
        write(f'[database]\nurl = "sqlite:///{name}.db"\n', name)
    if variable:
        monkeypatch.setenv("MONITOR_CONFIG", variable)
    settings = config.load(argument)
    assert (settings.config_path, settings.database_url) == (chosen, f"sqlite:///{chosen}.db")


def test_monitor_config_may_come_from_cwd_dotenv() -> None:
    write('[database]\nurl = "sqlite:///elsewhere.db"\n', "elsewhere.toml")
    write("MONITOR_CONFIG=elsewhere.toml\n", ".env")
    assert config.load(environ={}).database_url == "sqlite:///elsewhere.db"


@pytest.mark.parametrize(
    ("text", "environ", "url"),
    [
        pytest.param("", {}, "sqlite:///monitor.db", id="default"),
        pytest.param(
            '[database]\nurl = "sqlite:////var/lib/monitor.db"\n',
            {},
            "sqlite:////var/lib/monitor.db",
            id="file",
        ),
        pytest.param(
            '[database]\nurl = "sqlite:///file.db"\n',
            {"MONITOR_DATABASE_URL": "postgresql+psycopg://monitor@db/monitor"},
            "postgresql+psycopg://monitor@db/monitor",
            id="variable-wins",
        ),
        pytest.param(
            '[database]\nurl = "postgresql://monitor@db/monitor"\n',
            {"MONITOR_DATABASE_URL": ""},
            "postgresql://monitor@db/monitor",
            id="empty-variable-ignored",
        ),
    ],
)
def test_database_url_precedence(text: str, environ: dict[str, str], url: str) -> None:
    assert load(text, environ).database_url == url


def test_database_url_from_dotenv() -> None:
    write("MONITOR_DATABASE_URL=postgresql://monitor@db/monitor\n", ".env")
    assert load("", environ={}).database_url == "postgresql://monitor@db/monitor"


# --- config_hash -----------------------------------------------------------------------------


def test_config_hash_is_sha256_of_canonical_effective_config() -> None:
    (target,) = load(MINIMAL).targets
    canonical = (
        '{"api_key_env":"OPENAI_API_KEY","api_version":null,"base_url":"https://api.openai.com/v1",'
        '"deployment":null,"max_response_bytes":1048576,"messages":[{"content":"Reply with the '
        'single word: pong","role":"user"}],"model":"m","params":{"max_completion_tokens":16,'
        '"seed":7,"temperature":0},"provider":"openai","stream":false,"timeout_ms":30000}'
    )
    assert target.config_hash == hashlib.sha256(canonical.encode()).hexdigest()
    assert json.loads(canonical) == effective_config(target)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("model", '"m2"', id="model"),
        pytest.param("base_url", '"https://proxy.example/v1"', id="base-url"),
        pytest.param("params", "{ temperature = 0.1 }", id="params"),
        pytest.param("messages", '[{ role = "user", content = "ping" }]', id="messages"),
        pytest.param("stream", "true", id="stream"),
        pytest.param("timeout", '"10s"', id="timeout"),
        pytest.param("max_response_bytes", "2048", id="max-response-bytes"),
        pytest.param("api_key_env", '"OTHER_KEY"', id="api-key-env"),
    ],
)
def test_config_hash_changes_with_what_is_sent(key: str, value: str) -> None:
    environ = {**ENV, "OTHER_KEY": KEY}
    (before,) = load(target_toml(), environ).targets
    (after,) = load(target_toml(**{key: value}), environ).targets
    assert after.config_hash != before.config_hash


def test_config_hash_ignores_interval_key_value_and_key_order() -> None:
    (before,) = load(MINIMAL).targets
    reordered = '[[targets]]\nmodel = "m"\ninterval = "1h"\nname = "a"\n'
    (after,) = load(reordered, {"OPENAI_API_KEY": "sk-" "rotated-key-0000000000"}).targets
    assert after.config_hash == before.config_hash


# --- describe() and render_check() -----------------------------------------------------------


COSTED = """
[[targets]]
name = "costed"
model = "gpt-4o-mini"
interval = "10m"
messages = [
  { role = "system", content = "0123456789" },
  { role = "user", content = "abc" },
]
params = { max_completion_tokens = 20, n = 2 }
"""
# Prompt: ceil(10/4)+4 + ceil(3/4)+4 + 3 = 7 + 5 + 3 = 15; output cap 20 x n 2 = 40; 55 a probe.
# Every 10m is 144 probes a day: 55 x 144 = 7,920 tokens.


def test_describe_resolves_masks_and_estimates_tokens_per_day() -> None:
    (row,) = render_check.describe(load(COSTED))
    assert row == {
        "name": "costed",
        "provider": "openai",
        "url": "https://api.openai.com/v1/chat/completions",
        "model": "gpt-4o-mini",
        "deployment": None,
        "api_version": None,
        "stream": False,
        "interval": "10m",
        "timeout": "30s",
        "max_response_bytes": 1048576,
        "api_key_env": "OPENAI_API_KEY",
        "api_key": "sk-…yz",
        "messages": [
            {"role": "system", "content": "0123456789"},
            {"role": "user", "content": "abc"},
        ],
        "params": {"temperature": 0, "seed": 7, "max_completion_tokens": 20, "n": 2},
        "config_hash": row["config_hash"],
        "probes_per_day": 144.0,
        "estimated_tokens_per_probe": 55,
        "expected_tokens_per_day": 7920,
        "daily_token_budget": None,
        "daily_request_budget": None,
        "checks": [],
    }
    assert json.loads(json.dumps(row)) == row


def test_describe_azure_url_and_keyless_target() -> None:
    local = target_toml(
        provider='"openai-compatible"', base_url='"http://127.0.0.1:8080/v1"'
    ).replace('"a"', '"local"')
    az, loc = render_check.describe(load(AZURE + local))
    assert az["url"] == (
        "https://myres.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        "?api-version=2024-10-21"
    )
    assert (loc["url"], loc["api_key_env"], loc["api_key"]) == (
        "http://127.0.0.1:8080/v1/chat/completions",
        None,
        None,
    )


def test_render_check_shows_each_target_and_a_total() -> None:
    local = target_toml(
        provider='"openai-compatible"', base_url='"http://127.0.0.1:8080/v1"', interval='"7m"'
    ).replace('"a"', '"local"')
    text = render_check.render_check(load(COSTED + AZURE + local))
    assert text == textwrap.dedent(
        """\
        costed
          provider    openai
          url         https://api.openai.com/v1/chat/completions
          model       gpt-4o-mini
          stream      false
          interval    10m
          timeout     30s
          api key     OPENAI_API_KEY = sk-…yz
          params      {"max_completion_tokens": 20, "n": 2, "seed": 7, "temperature": 0}
          per day     144 probes, ~7,920 tokens (estimated)

        az
          provider    azure
          url         https://myres.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21
          deployment  gpt4o-prod
          stream      false
          interval    5m
          timeout     30s
          api key     AZURE_OPENAI_API_KEY = az-…2b
          params      {"max_completion_tokens": 16, "seed": 7, "temperature": 0}
          per day     288 probes, ~8,928 tokens (estimated)

        local
          provider    openai-compatible
          url         http://127.0.0.1:8080/v1/chat/completions
          model       m
          stream      false
          interval    7m
          timeout     30s
          api key     none
          params      {"max_tokens": 16, "seed": 7, "temperature": 0}
          per day     205.71 probes, ~6,377 tokens (estimated)

        total: 3 targets, 637.71 probes/day, ~23,225 tokens/day (estimated)"""
    )


def test_render_check_without_targets_is_just_the_total() -> None:
    assert render_check.render_check(load("", environ={})) == (
        "total: 0 targets, 0 probes/day, ~0 tokens/day (estimated)"
    )


# --- the key never leaks ----------------------------------------------------------------------


def test_key_value_appears_in_no_error_description_or_repr() -> None:
    settings = load(MINIMAL + AZURE)
    assert KEY not in repr(settings)
    assert KEY not in json.dumps(render_check.describe(settings), ensure_ascii=False)
    assert KEY not in render_check.render_check(settings)
    assert KEY not in json.dumps([effective_config(t) for t in settings.targets])

    failures = [
        target_toml(interval='"1s"'),  # an error in a target whose key was found
        target_toml(api_key_env=json.dumps(KEY)),  # the key pasted where its variable belongs
        target_toml(api_key=json.dumps(KEY)),  # the key itself in the file
    ]
    for text in failures:
        with pytest.raises(ConfigError) as caught:
            load(text)
        assert KEY not in str(caught.value)


def test_budgets_are_positive_integers_and_do_not_change_the_config_hash(tmp_path: Path) -> None:
    def load_with(extra: str) -> Any:
        path = tmp_path / "monitor.toml"
        path.write_text(
            '[[targets]]\nname = "a"\nprovider = "openai-compatible"\n'
            f'base_url = "http://127.0.0.1:1/v1"\nmodel = "m"\n{extra}'
        )
        return config.load(str(path), environ={})

    with pytest.raises(ConfigError) as caught:
        load_with("daily_token_budget = 0\n")
    assert "targets[0].daily_token_budget: expected" in str(caught.value)
    budgeted = load_with("daily_token_budget = 5000\ndaily_request_budget = 100\n").targets[0]
    assert budgeted.daily_token_budget == 5000 and budgeted.daily_request_budget == 100
    assert budgeted.config_hash == load_with("").targets[0].config_hash


def test_detect_thresholds_merge_defaults_under_targets_key_by_key() -> None:
    settings = load(
        '[defaults.detect]\nlatency_ratio = 2\nfingerprint_accept_after = "1h"\n'
        + MINIMAL
        + target_toml(detect='{ latency_ratio = 3, latency_max_total = "2s" }').replace(
            '"a"', '"b"')
    )
    plain, tuned = settings.targets
    assert plain.detection.latency_ratio == 2
    assert plain.detection.fingerprint_accept_after_ms == 3_600_000
    assert plain.detection.latency_max_total_ms is None
    assert tuned.detection.latency_ratio == 3
    assert tuned.detection.fingerprint_accept_after_ms == 3_600_000  # from [defaults]
    assert tuned.detection.latency_max_total_ms == 2000
    assert tuned.config_hash == plain.config_hash  # thresholds do not change what is sent


def test_targets_with_equal_detect_settings_share_one_thresholds_instance() -> None:
    # Ten thousand targets would otherwise hold ten thousand copies (~1.6 KB each).
    settings = load(
        '[defaults.detect]\nlatency_ratio = 2\n'
        + MINIMAL
        + target_toml(detect="{ latency_ratio = 2 }").replace('"a"', '"b"')
        + target_toml(detect="{ latency_ratio = 3 }").replace('"a"', '"c"')
    )
    first, same, other = settings.targets
    assert same.detection is first.detection
    assert other.detection is not first.detection
    assert other.detection.latency_ratio == 3 and first.detection.latency_ratio == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (target_toml(detect="{ latency_ratio = 0 }"),
         "targets[0].detect.latency_ratio: expected a number greater than 0, got 0"),
        (target_toml(detect="{ latency_p_value = 2 }"),
         "targets[0].detect.latency_p_value: expected a number between 0 and 1, got 2"),
        (target_toml(detect='{ fingerprint_accept_after = "soon" }'),
         ("targets[0].detect.fingerprint_accept_after: expected a duration like \"30s\", "
         "got 'soon'")),
        ('[defaults.detect]\nwarmup = 3\n',
         "defaults.detect.warmup: expected a known key"),
        ('[alerts]\nwebhooks = ["ftp://hooks.example/secret-token"]\n',
         ("alerts.webhooks[0]: expected an http(s) URL or \"env:VARIABLE\", got a string that "
         "is not one")),
        ('[alerts]\nslack_webhooks = ["env:SLACK_URL"]\n',
         ("alerts.slack_webhooks[0]: expected environment variable SLACK_URL to be set to a "
         "webhook URL, got nothing")),
        ('[alerts]\nresolve_after = 0\n',
         "alerts.resolve_after: expected an integer of at least 1, got 0"),
        ('[alerts]\ncooldown = 5\n', "alerts.cooldown: expected a duration like \"30s\", got 5"),
        ('[[alerts.maintenance]]\nstart = "02:00"\nduration = "1h"\ntimezone = "Mars/Base"\n',
         "alerts.maintenance[0].timezone: expected an IANA time zone"),
    ],
)
def test_detect_and_alerts_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(text if text.startswith("[[targets]]") else MINIMAL + text)
    assert f"monitor.toml: {message}" in str(caught.value)


def test_alerts_section_with_webhooks_from_the_environment_keeps_urls_out_of_repr() -> None:
    secret = "https://hooks.example.com/services/T000/B000/token-value"
    settings = load(
        MINIMAL + '[alerts]\nwebhooks = ["https://hooks.example.com/monitor"]\n'
        'slack_webhooks = ["env:SLACK_URL"]\nopen_after = 2\ncooldown = "5m"\n'
        'remind_every = "4h"\ngroup_wait = "10s"\n'
        '[[alerts.maintenance]]\nstart = 2026-12-01T02:00:00Z\nend = 2026-12-01T04:00:00Z\n',
        environ={**ENV, "SLACK_URL": secret},
    )
    alerts = settings.alerts
    assert [c.url.value for c in alerts.webhooks] == ["https://hooks.example.com/monitor"]
    assert [(c.url.value, c.origin) for c in alerts.slack_webhooks] == [
        (secret, "alerts.slack_webhooks[0] (SLACK_URL)")]
    assert (alerts.open_after, alerts.resolve_after) == (2, 3)
    assert (alerts.cooldown_ms, alerts.remind_every_ms, alerts.group_wait_ms) == (
        300_000, 14_400_000, 10_000)
    assert len(alerts.maintenance) == 1
    assert "token-value" not in repr(settings)


def test_retention_of_raw_bodies_defaults_to_30_days_and_can_be_set() -> None:
    assert load(MINIMAL).raw_retention_ms == 30 * 86_400_000
    assert load(MINIMAL + '[retention]\nraw = "7d"\n').raw_retention_ms == 7 * 86_400_000
    with pytest.raises(ConfigError) as caught:
        load(MINIMAL + '[retention]\nraw = "0s"\n')
    assert "retention.raw: expected a duration longer than" in str(caught.value)


# --- refusals that keep keys out of messages, and ranges (issue 11) -------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(
            KEY + "\n",
            "expected OPENAI_API_KEY to hold a key without control characters, got one "
            "containing a newline (a stray newline from .env?)",
            id="newline",
        ),
        pytest.param(
            KEY + "\r",
            "expected OPENAI_API_KEY to hold a key without control characters, got one "
            "containing a carriage return (a stray newline from .env?)",
            id="carriage-return",
        ),
        pytest.param(
            "sk-\ttest",
            "expected OPENAI_API_KEY to hold a key without control characters, got one "
            "containing a tab",
            id="tab",
        ),
        pytest.param(
            KEY + "\x07",
            "expected OPENAI_API_KEY to hold a key without control characters, got one "
            "containing a control character (U+0007)",
            id="bell",
        ),
    ],
)
def test_a_key_with_a_control_character_is_refused_without_showing_it(
    value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(MINIMAL, {"OPENAI_API_KEY": value})
    assert str(caught.value) == f"monitor.toml: targets[0].api_key_env: {message}"
    assert value.strip() not in str(caught.value) and "sk-" not in str(caught.value)


def test_a_key_with_a_stray_newline_from_dotenv_is_refused() -> None:
    write(f'OPENAI_API_KEY="{KEY}\\n"\n', ".env")
    with pytest.raises(ConfigError) as caught:
        load(MINIMAL, {})
    assert "a stray newline from .env?" in str(caught.value)
    assert KEY not in str(caught.value)


NO_CREDENTIALS = (
    "targets[0].base_url: expected an http(s) URL without credentials in it (the key belongs "
    "in the environment variable api_key_env names), got "
)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(f"https://user:{KEY}@api.example.com/v1",
                     NO_CREDENTIALS + "'https://****@api.example.com/v1'", id="userinfo"),
        pytest.param(f"https://{KEY}@api.example.com/v1",
                     NO_CREDENTIALS + "'https://****@api.example.com/v1'", id="user-only"),
        pytest.param(f"https://api.example.com/v1?api-key={KEY}",
                     NO_CREDENTIALS + "'https://api.example.com/v1?api-key=****'", id="api-key"),
        pytest.param(f"https://api.example.com/v1?x=1&Access_Token={KEY}",
                     NO_CREDENTIALS + "'https://api.example.com/v1?x=****&Access_Token=****'",
                     id="token"),
        pytest.param(f"https://api.example.com/v1?key={KEY}#frag",
                     NO_CREDENTIALS + "'https://api.example.com/v1?key=****#****'", id="key"),
        pytest.param(f"api.example.com/v1?sig={KEY}",
                     "targets[0].base_url: expected an http(s) URL like "
                     "\"https://api.openai.com/v1\", got 'api.example.com/v1?sig=****'",
                     id="not-a-url-still-masked"),
        pytest.param("https://api.example.com:99999/v1",
                     "targets[0].base_url: expected an http(s) URL with a port from 1 to 65535, "
                     "got 'https://api.example.com:99999/v1'", id="port-too-big"),
        pytest.param("https://api.example.com:0/v1",
                     "targets[0].base_url: expected an http(s) URL with a port from 1 to 65535, "
                     "got 'https://api.example.com:0/v1'", id="port-zero"),
        pytest.param("https://api.example.com:abc/v1",
                     "targets[0].base_url: expected an http(s) URL with a port from 1 to 65535, "
                     "got 'https://api.example.com:abc/v1'", id="port-words"),
    ],
)
def test_base_url_refuses_credentials_and_bad_ports_and_never_echoes_a_key(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(target_toml(base_url=json.dumps(url)))
    assert str(caught.value) == f"monitor.toml: {message}"
    assert KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        pytest.param({"interval": '"2d"'},
                     "targets[0].interval: expected a duration from \"1s\" to \"1d\", got '2d'",
                     id="interval-too-long"),
        pytest.param({"interval": '"99999999999d"'},
                     "targets[0].interval: expected a duration of at most \"3650d\", "
                     "got '99999999999d'", id="interval-huge"),
        pytest.param({"interval": json.dumps("9" * 400 + "s")},
                     "targets[0].interval: expected a duration like \"30s\", got '"
                     + "9" * 400 + "s'", id="interval-infinite"),
        pytest.param({"timeout": '"11m"', "interval": '"1h"'},
                     "targets[0].timeout: expected a duration from \"100ms\" to \"10m\", got '11m'",
                     id="timeout-too-long"),
        pytest.param({"timeout": '"50ms"'},
                     "targets[0].timeout: expected a duration from \"100ms\" to \"10m\", "
                     "got '50ms'", id="timeout-too-short"),
        pytest.param({"max_response_bytes": str(2**31)},
                     "targets[0].max_response_bytes: expected an integer of at most 1073741824 "
                     "(1 GiB), got 2147483648", id="max-response-bytes-huge"),
        pytest.param({"daily_token_budget": str(2**63)},
                     "targets[0].daily_token_budget: expected an integer of at most "
                     "9223372036854775807, got 9223372036854775808", id="budget-beyond-bigint"),
    ],
)
def test_values_that_would_crash_later_are_refused_with_their_range(
    keys: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(target_toml(**keys))
    assert str(caught.value) == f"monitor.toml: {message}"


def test_the_bounds_themselves_are_accepted() -> None:
    (target,) = load(target_toml(interval='"1d"', timeout='"10m"',
                                 max_response_bytes=str(2**30))).targets
    assert (target.interval_ms, target.timeout_ms, target.max_response_bytes) == (
        86_400_000, 600_000, 2**30)
    (target,) = load(target_toml(interval='"1s"', timeout='"100ms"')).targets
    assert (target.interval_ms, target.timeout_ms) == (1000, 100)


def test_retention_beyond_ten_years_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load(MINIMAL + '[retention]\nraw = "999999999d"\n')
    assert str(caught.value) == (
        "monitor.toml: retention.raw: expected a duration of at most \"3650d\", got '999999999d'")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("postgresql+nodriver://monitor@db/monitor",
                     'expected a PostgreSQL URL with the psycopg driver ("postgresql://" or '
                     "\"postgresql+psycopg://\"), got 'postgresql+nodriver://monitor@db/monitor'",
                     id="unknown-driver"),
        pytest.param("postgresql://monitor:secret@db:99999/monitor",
                     "expected a PostgreSQL URL with a port from 1 to 65535, "
                     "got 'postgresql://monitor:***@db:99999/monitor'", id="port-too-big"),
        pytest.param("postgresql://monitor@db:abc/monitor",
                     "expected a PostgreSQL URL with a port from 1 to 65535, "
                     "got 'postgresql://monitor@db:abc/monitor'", id="port-words"),
    ],
)
def test_database_url_from_environment_with_bad_driver_or_port(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load("", {"MONITOR_DATABASE_URL": url})
    assert str(caught.value) == f"monitor.toml: database.url (MONITOR_DATABASE_URL): {message}"


def test_web_allowed_hosts_are_read_and_checked() -> None:
    text = MINIMAL + '[web]\nallowed_hosts = ["Monitor.Example.com", "dash.internal."]\n'
    assert load(text).allowed_hosts == ("monitor.example.com", "dash.internal")
    with pytest.raises(ConfigError) as caught:
        load(MINIMAL + '[web]\nallowed_hosts = ["http://x/"]\n')
    assert str(caught.value) == (
        "monitor.toml: web.allowed_hosts[0]: expected a host name like \"monitor.example.com\", "
        "got 'http://x/'")
