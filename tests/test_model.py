import json
import os
import stat

import pytest
import torch

from mrm.model import MRM, CheckpointError, infer_config, load_mrm, save_mrm


def published_state_dict(in_dim=16, sizes=(2,), bias=False, seed=0):
    torch.manual_seed(seed)
    return MRM(in_dim, sizes, bias).state_dict()


def test_reward_mixes_scaled_linear_bases():
    model = MRM(4, [2])
    x = torch.randn(3, 4)
    bases = (x * 0.01) @ model.layers[0].weight.T
    expected = (bases * torch.softmax(model.shared_weight, 0)).sum(-1)
    assert torch.allclose(model(x), expected, atol=1e-7)


def test_mrm_state_dict_keeps_published_names():
    assert set(MRM(8, [4, 2], use_bias=True).state_dict()) == {
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "shared_weight"}


def test_load_plain_published_state_dict(tmp_path):
    state = published_state_dict()
    torch.save(state, tmp_path / "ckpt.pt")
    model = load_mrm(tmp_path / "ckpt.pt")
    assert torch.equal(model.layers[0].weight, state["layers.0.weight"])


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_load_wrapped_state_dict(tmp_path, wrapper):
    state = published_state_dict(sizes=(3, 2), bias=True)
    torch.save({wrapper: state, "epoch": 3}, tmp_path / "ckpt.pt")
    assert load_mrm(tmp_path / "ckpt.pt").config() == {"in_dim": 16, "hidden_layers": [3, 2], "use_bias": True}


def test_infer_config_reads_shapes():
    assert infer_config(published_state_dict(in_dim=4096)) == {"in_dim": 4096, "hidden_layers": [2], "use_bias": False}


def test_load_rejects_misshaped_key_by_name(tmp_path):
    state = published_state_dict()
    state["shared_weight"] = torch.zeros(5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: shared_weight: checkpoint \(5,\) vs model \(2,\)"):
        load_mrm(tmp_path / "bad.pt")


def test_load_names_missing_and_unexpected_keys(tmp_path):
    state = published_state_dict()
    del state["shared_weight"]
    state["extra_head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as error:
        load_mrm(tmp_path / "bad.pt")
    assert "missing keys: shared_weight" in str(error.value)
    assert "unexpected keys: extra_head.weight" in str(error.value)


def test_load_refuses_non_weight_pickle(tmp_path):
    torch.save({"layers.0.weight": torch.zeros(2, 4), "shared_weight": torch.zeros(2), "hook": print}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_mrm(tmp_path / "evil.pt")


def test_safetensors_round_trip(tmp_path):
    model = MRM(16, [3, 2], use_bias=True)
    save_mrm(model, tmp_path / "ckpt", extra_config={"encoder_id": "demo"})
    loaded = load_mrm(tmp_path / "ckpt")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_save_writes_config_with_extra_keys(tmp_path):
    save_mrm(MRM(16, [2]), tmp_path / "ckpt", extra_config={"encoder_id": "demo"})
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["encoder_id"] == "demo"
    assert config["in_dim"] == 16


def test_save_leaves_no_temporary_files(tmp_path):
    save_mrm(MRM(16, [2]), tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_save_gives_umask_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        save_mrm(MRM(16, [2]), tmp_path / "ckpt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "ckpt" / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "ckpt" / "config.json").stat().st_mode) == 0o644


def test_config_contradicting_weights_is_rejected(tmp_path):
    save_mrm(MRM(16, [2]), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"in_dim": 32, "hidden_layers": [2], "use_bias": False}))
    with pytest.raises(CheckpointError, match="in_dim=32"):
        load_mrm(tmp_path / "ckpt")


def test_from_pretrained_local_folder(tmp_path):
    model = MRM(16, [2])
    save_mrm(model, tmp_path / "ckpt")
    loaded = MRM.from_pretrained(str(tmp_path / "ckpt"))
    assert torch.equal(loaded.shared_weight, model.shared_weight)


def test_folder_with_two_checkpoints_is_ambiguous(tmp_path):
    torch.save(published_state_dict(), tmp_path / "a.pt")
    torch.save(published_state_dict(), tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="several checkpoint files"):
        load_mrm(tmp_path)
