"""backprobe.app.spec: estimator spec strings."""

import pytest

from backprobe import Exact, Probe
from backprobe.app.spec import SPECS, SpecFamily, grammar, parse_estimator, parse_list, register


@pytest.mark.parametrize("spec, expected", [
    ("exact", {}),
    ("EXACT", {}),
    ("probe:4", dict(num_probes=4, distribution="rademacher", mode="channel", per_sample=True,
                     orthogonal=False)),
    ("probe:16:gaussian", dict(num_probes=16, distribution="gaussian")),
    ("probe:8:joint", dict(num_probes=8, mode="joint")),
    ("probe:8:joint:uniform:shared:orthogonal",
     dict(num_probes=8, mode="joint", distribution="uniform", per_sample=False, orthogonal=True)),
    ("probe:2:orthogonal:shared:channel:rademacher",
     dict(num_probes=2, mode="channel", distribution="rademacher", per_sample=False,
          orthogonal=True)),
    (" probe:3 : Gaussian ", dict(num_probes=3, distribution="gaussian")),
])
def test_parse_good_specs(spec, expected):
    est = parse_estimator(spec)
    assert isinstance(est, Exact if not expected else Probe)
    for key, value in expected.items():
        assert getattr(est, key) == value


@pytest.mark.parametrize("spec", [
    "", "probe", "probe:0", "probe:-3", "probe:x", "probe:4:foo", "probe:4:gaussian:uniform",
    "probe:4:joint:channel", "probe:4:shared:shared", "exact:4", "nope", "probe:1.5",
])
def test_parse_bad_specs_list_the_grammar(spec):
    with pytest.raises(ValueError) as info:
        parse_estimator(spec)
    assert "probe:R[:OPTION...]" in str(info.value) and "exact" in str(info.value)


def test_spec_table_is_extensible():
    register(SpecFamily("twice", "twice:R", lambda args: Probe(2 * int(args[0]))))
    try:
        assert parse_estimator("twice:3").num_probes == 6
        assert "twice:R" in grammar()
    finally:
        SPECS.pop("twice")


def test_parse_list():
    assert parse_list("exact, probe:4,probe:16") == ["exact", "probe:4", "probe:16"]
    with pytest.raises(ValueError):
        parse_list("exact,probe:0")
    with pytest.raises(ValueError):
        parse_list(" , ")
