"""The condition language and templates every analysis kind shares (imm/plugins/analysis_base.py)."""

from __future__ import annotations

import pytest

from imm.errors import ConfigError
from imm.plugins.analysis_base import AnalysisTarget, Condition, MeasureError, Template, number


@pytest.mark.parametrize(("text", "values", "expect"), [
    ("result < 0.05", {"result": 0.01}, True),
    ("result < 0.05", {"result": 0.05}, False),
    ("canary <= stable * 1.1 + 0.01", {"canary": 0.12, "stable": 0.1}, True),
    ("canary <= stable * 1.1 + 0.01", {"canary": 0.13, "stable": 0.1}, False),
    ("not (canary > 2 or stable > 2)", {"canary": 1, "stable": 3}, False),
    ("abs(canary - stable) < max(0.01, stable / 10)", {"canary": 1.05, "stable": 1.0}, True),
    ("-result < -1", {"result": 2}, True),
])
def test_conditions_evaluate(text: str, values: dict[str, float], expect: bool) -> None:
    assert Condition("c", text, tuple(values))(values) is expect


@pytest.mark.parametrize(("text", "why"), [
    ("result.__class__", "Attribute is not allowed"),
    ("[x for x in ()]", "is not allowed"),
    ("open('/etc/passwd')", "only abs, min, max may be called"),
    ("result if result else 1", "IfExp is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("'a' < 'b'", "constant 'a' is not a number"),
    ("result ** 99999", "Pow is not allowed"),
    ("x > 1", "unknown name 'x'; use result"),
])
def test_conditions_refuse_anything_but_arithmetic_and_comparisons(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match="c " + repr(text).replace("(", r"\(").replace(
            ")", r"\)").replace("[", r"\[").replace("*", r"\*").replace(".", r"\.")):
        Condition("c", text, ("result",))
    with pytest.raises(ConfigError) as e:
        Condition("c", text, ("result",))
    assert why in e.value.message


def test_a_condition_failing_at_run_time_is_a_measure_error() -> None:
    with pytest.raises(MeasureError, match="division by zero|ZeroDivision"):
        Condition("c", "result / 0 > 1", ("result",))({"result": 1.0})


def test_templates_name_their_variables() -> None:
    t = Template("q", 'rate(x{imm_digest="${digest}",role="${role}",s="$service"}[5s]) $$')
    target = AnalysisTarget("web", "web-1", "canary", "sha256:ab", "sha256:cd")
    assert t.render(target) == 'rate(x{imm_digest="sha256:ab",role="canary",s="web"}[5s]) $'
    assert t.render(target.as_role("stable")).startswith('rate(x{imm_digest="sha256:cd",role="stable"')
    with pytest.raises(ConfigError, match=r"q 'x \$' : |a '\$' must start"):
        Template("q", "x $")


def test_numbers() -> None:
    assert number("0.5") == 0.5
    assert number("NaN") is None and number(None) is None
    with pytest.raises(MeasureError, match="'abc' is not a number"):
        number("abc")
