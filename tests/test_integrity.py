"""Integrity per tensor: a sha256 per parameter tensor in every record, and a flag, with the tensor names and
both steps, on any tensor equal to the same tensor at another step (or at the final checkpoint) while the
checkpoints differ as a whole. Constructed cases (one tensor copied, nothing copied), an offline hub sweep
through a fake HF cache, and the real micro suite's 22 checkpoints (no false alarm)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ckptstudy import results
from ckptstudy.model import checkpoints
from ckptstudy.model.checkpoints import hash_weights, is_constant, tensor_sha256
from ckptstudy.record import Identity, Provenance, Record
from conftest import run_cli, tiny_neox
from test_hub_loading import REPO_ID, make_fake_hub_cache

COPIED = "gpt_neox.layers.1.mlp.dense_4h_to_h.weight"


def test_tensor_hash_covers_bytes_dtype_and_shape():
    a = torch.arange(12, dtype=torch.float32)
    assert tensor_sha256(a) == tensor_sha256(a.clone())
    changed = a.clone()
    changed[7] = 7.5
    assert tensor_sha256(changed) != tensor_sha256(a)
    assert tensor_sha256(a.reshape(3, 4)) != tensor_sha256(a)  # same bytes, other shape
    assert tensor_sha256(a.view(torch.int32)) != tensor_sha256(a)  # same bytes, other dtype
    assert tensor_sha256(a.reshape(3, 4).t()) == tensor_sha256(a.reshape(3, 4).t().contiguous())


def test_constant_tensors_are_the_untrained_initial_values():
    assert is_constant(torch.ones(8)) and is_constant(torch.zeros(3, 3)) and is_constant(torch.tensor([2.0]))
    almost = torch.ones(8)
    almost[3] = 1.0001
    assert not is_constant(almost) and not is_constant(torch.randn(4, 4))
    model = tiny_neox(seed=0)
    hashes = hash_weights(model)
    params = dict(model.named_parameters())
    assert set(hashes.tensors) == set(params)  # parameters only, each one
    assert all(len(h) == 64 for h in hashes.tensors.values())
    # at initialisation the LayerNorms are 1 / 0 and the linear biases 0: exactly those are constant
    expected = {n for n, p in params.items() if n.endswith("bias") or "layernorm" in n or "layer_norm" in n}
    assert set(hashes.constant) == expected and COPIED not in hashes.constant


def test_weights_hash_is_over_every_tensor():
    a, b = tiny_neox(seed=0), tiny_neox(seed=0)
    assert hash_weights(a).weights_sha256 == hash_weights(b).weights_sha256
    with torch.no_grad():
        b.gpt_neox.final_layer_norm.bias[0] += 1e-3  # one value of one (constant) tensor
    assert hash_weights(a).weights_sha256 != hash_weights(b).weights_sha256
    assert checkpoints.weights_sha256(a) == hash_weights(a).weights_sha256


def _record(step: int, tensors: dict[str, str], constant=(), model: str = "m") -> Record:
    whole = "|".join(f"{k}={v}" for k, v in sorted(tensors.items()))
    found = Provenance(
        weights_sha256=whole, weights_hash_version=2, tensor_hashes=tensors, constant_tensors=list(constant)
    )
    return Record(Identity(model, step), provenance=found)


def test_one_copied_tensor_is_flagged_with_both_steps_and_only_it():
    a = _record(1000, {"x": "a1", "y": "a2", "ln": "one"}, constant=["ln"])
    b = _record(2000, {"x": "b1", "y": "a2", "ln": "one"}, constant=["ln"])  # y copied from step 1000
    c = _record(3000, {"x": "c1", "y": "c2", "ln": "one"}, constant=["ln"])
    found = results.tensor_equalities([a, b, c], {"m": 3000})
    assert found[("m", 2000)] == [{"step": 1000, "final": False, "tensors": ["y"], "of": 2}]
    assert found[("m", 1000)] == [{"step": 2000, "final": False, "tensors": ["y"], "of": 2}]
    assert ("m", 3000) not in found  # the shared constant LayerNorm is no alarm
    text = results.describe_equality(found[("m", 2000)][0])
    assert text == "1 of 2 tensors equal to step 1000: y"


def test_nothing_copied_gives_no_flag_and_a_tensor_of_the_final_step_is_marked():
    control = [_record(s, {"x": f"{s}x", "y": f"{s}y"}) for s in (1000, 2000, 143000)]
    assert results.tensor_equalities(control, {"m": 143000}) == {}
    swapped = control[:2] + [_record(143000, {"x": "1000x", "y": "143000y"})]  # a shard of step 1000 served
    found = results.tensor_equalities(swapped, {"m": 143000})
    assert found[("m", 1000)] == [{"step": 143000, "final": True, "tensors": ["x"], "of": 2}]
    # other models never compare; an identical whole checkpoint is `identical_weights_as`, not repeated here
    other = _record(1000, {"x": "1000x", "y": "zz"}, model="n")
    twin = _record(2000, {"x": "1000x", "y": "1000y"})
    found = results.tensor_equalities([control[0], twin, other], {})
    assert found == {}
    assert results.identical_weight_groups([control[0], twin]) == {("m", 1000): [2000], ("m", 2000): [1000]}


def test_old_and_new_weight_hashes_never_compare():
    old = Record(Identity("m", 1), provenance=Provenance(weights_sha256="ab"))  # version 1: no weights_hash_version
    new = Record(Identity("m", 2), provenance=Provenance(weights_sha256="ab", weights_hash_version=2))
    assert results.identical_weight_groups([old, new]) == {}
    assert results.weights_key(old) == (1, "ab") and results.weights_key(new) == (2, "ab")


@pytest.fixture
def swapped_hub(tmp_path, tiny_tokenizer):
    """Steps 1000..4000 and the final 143000, each its own weights, except: step 2000 serves step 1000's
    COPIED tensor, step 3000 serves the final checkpoint's output embedding; step 4000 is the control."""
    cache = tmp_path / "hub"
    make_fake_hub_cache(cache, tiny_tokenizer, {f"step{s}": s for s in (1000, 2000, 3000, 4000, 143000)})
    folder = cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots"

    def rewrite(step: int, name: str, source: int) -> None:
        target = tiny_neox(vocab_size=len(tiny_tokenizer), seed=step)
        donor = dict(tiny_neox(vocab_size=len(tiny_tokenizer), seed=source).named_parameters())
        with torch.no_grad():
            dict(target.named_parameters())[name].copy_(donor[name])
        target.save_pretrained(folder / f"{step:040x}")

    rewrite(2000, COPIED, 1000)
    rewrite(3000, "lm_head.weight", 143000)
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def test_offline_sweep_flags_exactly_the_copied_tensors(tmp_path, swapped_hub):
    root = tmp_path / "out"
    steps = [143000, 1000, 2000, 3000, 4000]  # the final first: later records compare with it at once
    proc = run_cli(
        ["-m", "model=pythia-14m", f"model.repo={REPO_ID}", "step=" + ",".join(map(str, steps)), "logger=none"]
        + ["experiment=smoke", "metrics=[repetition]", "study=default"],
        root,
        env=swapped_hub,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = {s: results.read_record(root / "default/records/pythia-14m" / f"step{s}.json") for s in steps}
    n_params = len(records[1000].provenance.tensor_hashes)
    compared = n_params - len(records[1000].provenance.constant_tensors)
    assert records[2000].provenance.integrity == [{"step": 1000, "final": False, "tensors": [COPIED], "of": compared}]
    assert records[3000].provenance.integrity == [
        {"step": 143000, "final": True, "tensors": ["lm_head.weight"], "of": compared}
    ]
    assert records[1000].provenance.integrity == [] and records[4000].provenance.integrity == []  # control: no flag
    assert all(r.provenance.identical_weights_as == [] for r in records.values())
    # the table and the summary see every pair, including the earlier step of each
    table = pd.read_csv(root / "default" / results.TABLE_NAME, dtype={"integrity": str}).set_index("step")
    table["integrity"] = table["integrity"].fillna("")
    assert table.loc[1000, "integrity"] == f"2000: {COPIED}"
    assert table.loc[2000, "integrity"] == f"1000: {COPIED}"
    assert table.loc[3000, "integrity"] == "143000 (final): lm_head.weight"
    assert table.loc[143000, "integrity"] == "3000: lm_head.weight"
    assert table.loc[4000, "integrity"] == ""
    assert f"WARNING pythia-14m step 2000: same tensors as step 1000: {COPIED}" in proc.stdout
    assert "WARNING pythia-14m step 3000: same tensors as step 143000 (final): lm_head.weight" in proc.stdout
    assert "step 4000: same tensors" not in proc.stdout


def test_real_training_checkpoints_raise_no_false_alarm(micro_suite):
    """The micro suite's 22 checkpoints (trained here): no tensor of one equals the same tensor of another.
    At step 0 the LayerNorms and biases are still their constant initial values, and exempt."""
    records = []
    for directory in sorted(micro_suite.glob("step*"), key=lambda p: int(p.name[4:])):
        source = checkpoints.CheckpointSource("micro", int(directory.name[4:]), "local", str(directory))
        hashes = hash_weights(checkpoints.load_model(source))
        records.append(_record(source.step, hashes.tensors, hashes.constant, model="micro"))
    assert len(records) == 22
    assert records[0].provenance.constant_tensors and not records[-1].provenance.constant_tensors
    assert results.tensor_equalities(records, {"micro": 1600}) == {}
    assert results.identical_weight_groups(records) == {}
