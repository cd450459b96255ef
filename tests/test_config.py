import json

import pytest

from evolkv.config import Budget, KVConfig, LayerSpec, ModelSpec, ScorerSpec, uniform_config
from evolkv.errors import BudgetError, ConfigError

SPEC = ModelSpec("toy", "llama", 4, 8, 2, 16, ["full_attention"] * 4)


@pytest.mark.parametrize("text,kind,value", [("10%", "fraction", 0.1), ("1.5%", "fraction", 0.015),
                                             ("100%", "fraction", 1.0), ("128", "tokens", 128)])
def test_budget_parses(text, kind, value):
    budget = Budget.parse(text)
    assert (budget.kind, budget.value) == (kind, pytest.approx(value))
    assert Budget.parse(str(budget)) == budget


@pytest.mark.parametrize("text", ["0", "0%", "150%", "abc", "-5", "", "1.5", "10 %%"])
def test_bad_budgets_raise(text):
    with pytest.raises(BudgetError):
        Budget.parse(text)


def test_json_round_trip_and_hash():
    cfg = uniform_config(SPEC, Budget.parse("10%")).with_provenance(run_id="r1")
    again = KVConfig.from_json(cfg.to_json())
    assert again == cfg and again.hash() == cfg.hash()
    assert again.provenance == {"run_id": "r1"}
    assert json.loads(cfg.to_json())["schema"] == "evolkv.kvconfig/1"
    assert cfg.with_provenance(label="x").hash() == cfg.hash()  # provenance is not content


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(schema="other/1"), "schema"),
    (lambda d: d.pop("layers"), "layers"),
    (lambda d: d["layers"].pop(), "layers"),
    (lambda d: d["layers"][0].update(k_bits=3), "k_bits"),
    (lambda d: d["layers"][0].update(heads=[0.9, 0.9]), "sum to 1"),
    (lambda d: d["layers"][0].update(budget=-1), "budget"),
    (lambda d: d.update(budget="150%"), "100%"),
    (lambda d: d["model"].update(model_type="mistral"), "fingerprint"),
    (lambda d: d["model"].update(num_layers=5), "layer types"),
    (lambda d: d["scorer"].update(name="nope"), "scorer"),
    (lambda d: d["layers"][0].update(head_bits=[[4, 4], [2, 2], [4, 4]]), "precisions to 3 heads"),
    (lambda d: d["layers"][0].update(head_bits=[[4, 4], [3, 4]]), r"\[3, 4\]"),
    (lambda d: d["layers"][0].update(head_bits=[4, 4]), "head_bits"),
])
def test_malformed_configs_raise_config_error(mutate, message):
    data = uniform_config(SPEC, Budget.parse("10%")).to_dict()
    mutate(data)
    with pytest.raises(ConfigError, match=message):
        KVConfig.from_dict(data)


def test_not_json_is_one_clear_error():
    with pytest.raises(ConfigError, match="not valid JSON"):
        KVConfig.from_json("{nope")


def test_check_fits_names_the_difference():
    cfg = uniform_config(SPEC, Budget.parse("10%"))
    other = ModelSpec("big", "llama", 32, 32, 8, 128, ["full_attention"] * 32)
    with pytest.raises(ConfigError, match="num_layers"):
        cfg.check_fits(other)
    cfg.check_fits(ModelSpec("renamed", "llama", 4, 8, 2, 16, ["full_attention"] * 4))


def test_layer_spec_validation():
    with pytest.raises(ConfigError):
        LayerSpec(budget=0.1, group_size=48)
    with pytest.raises(ConfigError):
        ScorerSpec(kernel=4)


def test_a_layers_own_scorer_round_trips_and_older_configs_hash_the_same():
    import dataclasses

    from evolkv.config import Budget, KVConfig, ModelSpec, ScorerSpec, uniform_config

    spec = ModelSpec("toy", "llama", 3, 4, 2, 8, ["full_attention"] * 3)
    plain = uniform_config(spec, Budget.parse("10%"))
    assert "scorer" not in plain.to_dict()["layers"][0]  # absent unless set: older files hash the same
    layers = list(plain.layers)
    layers[1] = dataclasses.replace(layers[1], scorer=ScorerSpec("tova", window=4))
    mixed = dataclasses.replace(plain, layers=tuple(layers))
    again = KVConfig.from_json(mixed.to_json())
    assert again == mixed and again.hash() == mixed.hash() != plain.hash()
    assert [s.key for s in again.scorers()] == ["snapkv:8:5", "tova:4:5"] and again.scorer_of(1).name == "tova"
    data = json.loads(mixed.to_json())
    data["layers"][1]["scorer"] = {"name": "nope"}
    with pytest.raises(ConfigError, match="unknown scorer 'nope'"):
        KVConfig.from_dict(data)
    data["layers"][1]["scorer"] = "tova"
    with pytest.raises(ConfigError, match="layer 1 field 'scorer' must be an object"):
        KVConfig.from_dict(data)


def test_an_allocation_round_trips_and_an_unknown_one_is_one_error():
    import dataclasses

    from evolkv.config import Budget, KVConfig, ModelSpec, uniform_config

    spec = ModelSpec("toy", "llama", 3, 4, 2, 8, ["full_attention"] * 3)
    plain = uniform_config(spec, Budget.parse("10%"))
    cake = dataclasses.replace(plain, allocation="cake")
    again = KVConfig.from_json(cake.to_json())
    assert again.allocation == "cake" and again.hash() != plain.hash() and "allocation" not in plain.to_dict()
    data = json.loads(cake.to_json())
    data["allocation"] = "oracle"
    with pytest.raises(ConfigError, match="unknown allocation 'oracle'; known: globaltopk, prefixkv, cake, dynamickv"):
        KVConfig.from_dict(data)


def test_per_head_precisions_round_trip_and_name_each_head():
    import dataclasses

    from evolkv.config import LayerSpec

    layer = LayerSpec(budget=1.0, head_bits=((4, 4), (2, 2), (16, 16)), residual=4)
    assert layer.quantized and (layer.k_bits, layer.v_bits) == (16, 16)  # the widest of its heads
    assert layer.precision == "K4V4/K2V2/K16V16+r4"
    assert [heads for heads, _ in layer.packed_groups(3)] == [(0,), (1,)]  # the 16-bit head is packed nowhere
    assert layer.head_spec(1).k_bits == 2 and layer.head_spec(1).head_bits is None
    same = LayerSpec(budget=1.0, head_bits=((4, 2), (4, 2)))
    assert same.head_bits is None and (same.k_bits, same.v_bits) == (4, 2)  # one pair: the layer's own
    base = uniform_config(SPEC, Budget.parse("10%"))
    cfg = dataclasses.replace(base, layers=(dataclasses.replace(base.layers[0], head_bits=((4, 4), (2, 4))),
                                            *base.layers[1:]))
    data = cfg.to_dict()
    assert data["layers"][0]["head_bits"] == [[4, 4], [2, 4]] and "head_bits" not in data["layers"][1]
    again = KVConfig.from_json(cfg.to_json())
    assert again == cfg and again.hash() == cfg.hash() != base.hash()
