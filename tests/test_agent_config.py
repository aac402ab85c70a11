"""`[agent]` and `[limits]` in autoresearch.toml, and the `run` flags that override them."""

import pytest

from autoresearch.costs import Usage, price_of, priced
from toy import CONFIG, TAG


def test_agent_settings_are_validated_with_the_file_and_key_named(make_toy, cli):
    toy = make_toy(config=CONFIG + "\n[agent]\nmax_turns = 0\ncolour = 'blue'\n")
    result = cli("run", "-C", toy.root, "--experiments", "0")
    assert result.code == 2
    assert "autoresearch.toml: agent.max_turns: Input should be greater than 0 (got 0)" in result.err
    assert "autoresearch.toml: agent.colour: unknown key" in result.err


def test_the_agent_named_in_the_config_is_the_default(make_toy, cli, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    toy = make_toy(config=CONFIG + '\n[agent]\nname = "claude"\n')
    result = cli("run", "-C", toy.root, "--experiments", "0")
    assert result.code == 2 and "agent claude: ANTHROPIC_API_KEY is not set" in result.err
    assert cli("run", "-C", toy.root, "--agent", "search", "--experiments", "0").code == 0


def test_a_bad_agent_option_is_a_usage_error(toy, cli):
    result = cli("run", "-C", toy.root, "--agent", "search", "--agent-option", "max_turns=many")
    assert result.code == 2 and "agent settings from the command line: max_turns:" in result.err


@pytest.mark.parametrize("flag", ["--max-cost", "--max-tokens", "--max-hours"])
def test_caps_must_be_positive(toy, cli, flag):
    result = cli("run", "-C", toy.root, flag, "0")
    assert result.code == 2 and f"{flag} must be more than 0" in result.err


def test_the_hours_cap_from_the_config_stops_the_session_cleanly(make_toy, cli):
    toy = make_toy(config=CONFIG + "\n[limits]\nmax_hours = 1e-9\n")
    result = cli("run", "-C", toy.root, "--tag", TAG, "--agent", "search")
    assert result.code == 0, result.text
    assert "session ended: stopped: --max-hours 1e-09 reached" in result.out
    assert len(toy.experiments()) == 1  # the baseline only


def test_max_experiments_is_the_same_as_experiments(toy, cli):
    assert cli("run", "-C", toy.root, "--tag", TAG, "--agent", "search", "--max-experiments", "1").code == 0
    assert len(toy.experiments()) == 2


def test_prices_know_dated_snapshots_and_nothing_else():
    assert price_of("claude-haiku-4-5-20251001") == price_of("claude-haiku-4-5")
    assert price_of("claude-opus-5-5") is not None
    assert price_of("claude-opus-5-5-turbo") is None and price_of("gpt-local") is None


def test_usage_adds_up_and_an_unknown_price_makes_the_total_unknown():
    known = priced("claude-sonnet-5-5", input_tokens=1_000_000, output_tokens=100_000)
    assert known.cost_usd == pytest.approx(2.0 + 1.0)
    total = known + priced("mystery", input_tokens=10)
    assert (total.input_tokens, total.requests, total.cost_usd) == (1_000_010, 2, None)
    assert (Usage() + known).cost_usd == pytest.approx(3.0)
