import dataclasses

import numpy as np
import pytest
import torch

from lipcore import estimate_w1, load_potential, read_potential_metadata


def test_save_load_round_trip(tmp_path, tiny):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 3)), rng.normal(size=(80, 3)) + 1
    tiny = dataclasses.replace(tiny, envelope_anchors=0)  # the network (envelopes: test_envelope)
    est = estimate_w1(x, y, config=tiny)
    path = tmp_path / "pot.safetensors"
    est.save(path)
    loaded = load_potential(path)
    pts = torch.from_numpy(rng.normal(size=(50, 3)) * 3)
    with torch.no_grad():
        assert torch.equal(loaded(pts), est.potential(pts))
    meta = read_potential_metadata(path)
    assert meta["format"] == "lipwass-potential"
    assert meta["d"] == 3
    assert meta["lipschitz_constant"] == est.lipschitz_constant
    assert meta["lower_bound"] == est.lower_bound
    assert meta["center"] == est.center
    assert meta["config"] == tiny.to_dict()
    assert meta["holdout"]["value"] == est.holdout.value
    assert [s["type"] for s in meta["architecture"]] == [
        "linear", "maxmin", "linear", "maxmin", "linear",
    ]  # fmt: skip


def test_loading_something_else_is_a_value_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a lipwass potential"):
        load_potential(path)
