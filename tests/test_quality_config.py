"""A target's `checks` and [check_sets]: what they become, and exact error messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from monitor import config
from monitor.domain import Check, CheckKind
from monitor.errors import ConfigError

ENV = {"OPENAI_API_KEY": "sk-test"}


@pytest.fixture(autouse=True)
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def load(text: str) -> config.Settings:
    Path("monitor.toml").write_text(textwrap.dedent(text))
    return config.load("monitor.toml", environ=ENV)


ISSUE_EXAMPLES = """
[[targets]]
name = "gpt-4o-arith"
provider = "openai"
model = "gpt-4o"
messages = [{ role = "user", content = "What is 17*23? Reply with the number only." }]
checks = [
  { content_equals = "391" },                 # after trimming whitespace
  { content_regex = "^[0-9]+$" },
  { finish_reason = "stop" },
  { max_total = "5s" },
]

[[targets]]
name = "gpt-4o-json"
provider = "openai"
model = "gpt-4o"
messages = [{ role = "user", content = "Return {\\"answer\\": 4} as JSON, nothing else." }]
params = { response_format = { type = "json_object" } }
checks = [{ json_schema = { type = "object", required = ["answer"], properties = { answer = { const = 4 } } } }]
"""


def test_the_issue_examples_read_into_checks() -> None:
    arith, json_target = load(ISSUE_EXAMPLES).targets
    assert arith.checks == (
        Check("content_equals", CheckKind.CONTENT_EQUALS, "391"),
        Check("content_regex", CheckKind.CONTENT_REGEX, "^[0-9]+$"),
        Check("finish_reason", CheckKind.FINISH_REASON, "stop"),
        Check("max_total", CheckKind.MAX_TOTAL, 5000),
    )
    assert json_target.checks == (Check("json_schema", CheckKind.JSON_SCHEMA, {
        "type": "object", "required": ["answer"], "properties": {"answer": {"const": 4}}}),)


def test_check_sets_are_shared_and_defaults_apply_until_a_target_sets_its_own() -> None:
    settings = load("""
        [check_sets]
        short = [{ content_regex = "^[0-9]+$" }, { max_completion_tokens = 5 }]

        [defaults]
        model = "gpt-4o"
        checks = ["short", { finish_reason = "stop" }]

        [[targets]]
        name = "a"

        [[targets]]
        name = "b"
        checks = ["short", { name = "exact", content_equals = "391" },
                  { tool_call = { name = "add", arguments = { type = "object" } } }]
    """)
    a, b = settings.targets
    assert [c.name for c in a.checks] == ["content_regex", "max_completion_tokens",
                                          "finish_reason"]
    assert [c.name for c in b.checks] == ["content_regex", "max_completion_tokens", "exact",
                                          "tool_call"]
    assert b.checks[3].expected == {"name": "add", "arguments": {"type": "object"}}


def test_checks_leave_the_config_hash_alone() -> None:
    plain = load('[[targets]]\nname = "a"\nmodel = "m"\n').targets[0]
    checked = load('[[targets]]\nname = "a"\nmodel = "m"\n'
                   'checks = [{ content_equals = "x" }]\n').targets[0]
    assert plain.config_hash == checked.config_hash


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        pytest.param('{ content_equals = "x" }', 'targets[0].checks: expected an array of checks, '
                     'each a check like { content_equals = "391" } or the name of a [check_sets] '
                     "entry, got a table", id="not-an-array"),
        pytest.param("[{ content_equal = \"x\" }]", "targets[0].checks[0].content_equal: "
                     "expected a known key (content_contains, content_equals, content_regex, "
                     "finish_reason, json_schema, max_completion_tokens, max_total, name, "
                     'tool_call), got an unknown key (did you mean "content_equals"?)',
                     id="unknown-kind"),
        pytest.param('[{ name = "x" }]', "targets[0].checks[0]: expected one check kind "
                     "(content_equals, content_contains, content_regex, json_schema, "
                     "finish_reason, max_completion_tokens, max_total, tool_call), got none",
                     id="no-kind"),
        pytest.param('[{ content_equals = "x", content_contains = "y" }]',
                     "targets[0].checks[0]: expected one check kind (content_equals, "
                     "content_contains, content_regex, json_schema, finish_reason, "
                     "max_completion_tokens, max_total, tool_call), got content_equals and "
                     "content_contains", id="two-kinds"),
        pytest.param('[{ content_regex = "(" }]', "targets[0].checks[0].content_regex: "
                     "expected a regular expression (missing ), unterminated subpattern at "
                     "position 0), got '('", id="bad-regex"),
        pytest.param('[{ json_schema = { type = "thing" } }]', "targets[0].checks[0].json_schema:"
                     " expected a JSON schema, got one that is not: 'thing' is not valid under "
                     "any of the given schemas", id="bad-schema"),
        pytest.param("[{ max_total = 5 }]", "targets[0].checks[0].max_total: expected a "
                     'duration like "30s", got 5', id="bad-duration"),
        pytest.param("[{ max_completion_tokens = 0 }]", "targets[0].checks[0]."
                     "max_completion_tokens: expected an integer of at least 1, got 0",
                     id="bad-count"),
        pytest.param("[{ tool_call = { arguments = {} } }]", "targets[0].checks[0].tool_call."
                     'name: expected the tool\'s name, like { name = "get_weather" }, got nothing',
                     id="tool-without-name"),
        pytest.param('["missing"]', "targets[0].checks[0]: expected the name of a [check_sets] "
                     "entry (none are defined), got 'missing'", id="unknown-set"),
        pytest.param('[{ finish_reason = "stop" }, { finish_reason = "length" }]',
                     'targets[0].checks[1]: expected a unique check name ([0] is also '
                     '"finish_reason": tell them apart with name = "..."), got \'finish_reason\'',
                     id="duplicate-name"),
        pytest.param("[3]", 'targets[0].checks[0]: expected a check like { content_equals = '
                     '"391" } or the name of a [check_sets] entry, got 3', id="not-a-check"),
    ],
)
def test_malformed_checks_are_config_errors_naming_file_and_key(checks: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(f'[[targets]]\nname = "a"\nmodel = "m"\nchecks = {checks}\n')
    assert str(caught.value) == f"monitor.toml: {message}"


def test_a_malformed_check_set_is_named_under_check_sets() -> None:
    with pytest.raises(ConfigError) as caught:
        load('[check_sets]\narith = [{ content_regex = "[" }]\n')
    assert str(caught.value).startswith(
        "monitor.toml: check_sets.arith[0].content_regex: expected a regular expression")


def test_the_readme_example_loads() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Quality canaries", 1)[1]
    example = section.split("```toml", 1)[1].split("```", 1)[0]
    arith, json_target = load(example).targets
    assert [c.name for c in arith.checks] == ["content_regex", "finish_reason", "max_total",
                                              "content_equals"]
    assert json_target.checks[0].kind is CheckKind.JSON_SCHEMA


def test_config_check_lists_each_targets_checks() -> None:
    from monitor.render.check import describe, render_check

    settings = load(ISSUE_EXAMPLES)
    assert describe(settings)[1]["checks"] == [{"name": "json_schema", "kind": "json_schema",
                                                "expected": settings.targets[1].checks[0].expected}]
    assert "  checks      content_equals, content_regex, finish_reason, max_total" in (
        render_check(settings))
