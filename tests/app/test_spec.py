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
    ("probe:16", dict(shaping=None, deflate=0)),
    ("probe:16:dct", dict(num_probes=16, shaping="dct", deflate=0)),
    ("probe:16:dct:deflate4", dict(num_probes=16, shaping="dct", deflate=4)),
    ("probe:16:DEFLATE4:joint:DCT", dict(num_probes=16, shaping="dct", deflate=4, mode="joint")),
    ("probe:8:dct:deflate0", dict(num_probes=8, shaping="dct", deflate=0)),
    ("probe:8:deflate0", dict(num_probes=8, shaping=None, deflate=0)),
    ("probe:8:plain", dict(num_probes=8, shaping=None, deflate=0)),
    ("probe:8:plain:deflate0", dict(num_probes=8, shaping=None, deflate=0)),
    ("probe:2:dct:deflate1:orthogonal", dict(num_probes=2, shaping="dct", deflate=1,
                                             orthogonal=True)),
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


@pytest.mark.parametrize("spec, reason", [
    ("probe:16:deflate4", "deflate needs shaping='dct'"),
    ("probe:16:plain:deflate4", "deflate needs shaping='dct'"),
    ("probe:16:plain:dct", "'shaping' given twice"),
    ("probe:16:dct:deflate16", "below the number of probes R=16"),
    ("probe:1:dct:deflate1", "below the number of probes R=1"),
    ("probe:16:dct:deflate", "integer K >= 0"),
    ("probe:16:dct:deflatex", "integer K >= 0"),
    ("probe:16:dct:deflate-1", "integer K >= 0"),
    ("probe:16:dct:deflate2.5", "integer K >= 0"),
    ("probe:16:dct:dct", "'shaping' given twice"),
    ("probe:16:dct:deflate2:deflate3", "'deflate' given twice"),
    ("probe:16:fft", "unknown probe option 'fft'"),
])
def test_parse_bad_shaping_says_why(spec, reason):
    with pytest.raises(ValueError, match="probe:R") as info:
        parse_estimator(spec)
    assert reason in str(info.value).splitlines()[0]


def test_grammar_lists_the_shaping_options():
    assert all(word in grammar() for word in ("dct", "plain", "deflateK"))


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
