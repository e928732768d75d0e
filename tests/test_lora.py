"""Skills as adapters: zero at birth, isolated in training, exact merges, batched composition."""

import pytest
import torch
from library_builders import add_trained_looking_skill, observations, tiny_policy
from torch import nn

from library.errors import DataError, ShapeError, SpecError, StoreError
from library.lora import (
    LoraLinear,
    add_skill,
    lora_layers,
    merge,
    merged_skills,
    remove_skill,
    safe_merge,
    skill_names,
    trainable_only,
    unmerge,
    use_skills,
)

torch.set_num_threads(1)


def net_inputs(batch: int = 6, seed: int = 2):
    policy = tiny_policy()
    g = torch.Generator().manual_seed(seed)
    a_t = torch.randn(batch, policy.config.act_dim, generator=g)
    s = policy.normalizer(observations(batch, seed))
    t = torch.randint(1, policy.config.T + 1, (batch,), generator=g)
    return a_t, s, t


@pytest.mark.parametrize("kind", ["lora", "full"])
@torch.no_grad()  # as a policy acts (with autograd, Mish takes its training path)
def test_fresh_adapter_changes_no_output(kind):
    policy = tiny_policy()
    a_t, s, t = net_inputs()
    before = policy.net(a_t, s, t)
    add_skill(policy, "walk", kind=kind, generator=torch.Generator().manual_seed(0))
    assert torch.equal(policy.net(a_t, s, t), before)
    with use_skills(policy, ["walk"]):
        assert torch.equal(policy.net(a_t, s, t), before)


def test_every_linear_is_wrapped_once():
    policy = tiny_policy()
    n_linear = sum(isinstance(m, nn.Linear) for m in policy.modules())
    add_skill(policy, "a")
    add_skill(policy, "b")
    layers = lora_layers(policy)
    assert len(layers) == n_linear
    assert all(isinstance(layer.base_layer, nn.Linear) for layer in layers.values())
    assert all(not isinstance(layer.base_layer, LoraLinear) for layer in layers.values())
    assert skill_names(policy) == ["a", "b"]
    assert "net.blocks.0.fc1.lora_A.a.weight" in policy.state_dict()


def test_merge_then_unmerge_restores_base_bit_for_bit():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "a", seed=1)
    add_trained_looking_skill(policy, "b", seed=2, kind="full")
    original = {k: v.clone() for k, v in policy.state_dict().items()}
    a_t, s, t = net_inputs()
    with use_skills(policy, ["a"]):
        composed = policy.net(a_t, s, t)
    merge(policy, "a")
    merge(policy, "b")
    assert merged_skills(policy) == ["a", "b"]
    unmerge(policy, "a")  # out of order: "b" stays merged
    with torch.no_grad():
        expected_b = {p: layer.base_layer.weight.clone() for p, layer in lora_layers(policy).items()}
    unmerge(policy, "b")
    merge(policy, "b")
    assert all(torch.equal(layer.base_layer.weight, expected_b[p]) for p, layer in lora_layers(policy).items())
    unmerge(policy, "b")
    for key, value in policy.state_dict().items():
        assert torch.equal(value, original[key]), key
    merge(policy, "a")
    torch.testing.assert_close(policy.net(a_t, s, t), composed, rtol=1e-5, atol=1e-5)
    with pytest.raises(StoreError, match="merged"):
        with use_skills(policy, ["a"]):
            pass


def test_safe_merge_refuses_non_finite_and_writes_nothing():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "a", seed=1)
    last = list(lora_layers(policy).values())[-1]
    with torch.no_grad():
        last.lora_B["a"].weight[0, 0] = float("inf")
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    with pytest.raises(DataError, match="non-finite"):
        safe_merge(policy, "a")
    assert merged_skills(policy) == []
    for key, value in policy.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_training_one_skill_leaves_base_and_other_skills_untouched():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "old", seed=1)
    add_skill(policy, "new", generator=torch.Generator().manual_seed(2))
    trainable = trainable_only(policy, "new")
    assert {id(p) for p in trainable} == {
        id(p) for n, p in policy.named_parameters() if ".new." in n
    }
    frozen = {n: p.clone() for n, p in policy.named_parameters() if ".new." not in n}
    new_before = {n: p.clone() for n, p in policy.named_parameters() if ".new." in n}
    opt = torch.optim.Adam(trainable, lr=1e-2)
    obs = observations(32)
    actions = torch.rand(32, policy.config.act_dim, generator=torch.Generator().manual_seed(3)) * 2 - 1
    for step in range(3):
        # The old skill is switched on too: it takes part in the forward pass, not in training.
        with use_skills(policy, ["old", "new"]):
            loss = policy.loss(obs, actions, generator=torch.Generator().manual_seed(step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in policy.named_parameters():
        if name in frozen:
            assert p.grad is None, name
            assert torch.equal(p, frozen[name]), name
    assert any(not torch.equal(p, new_before[n]) for n, p in policy.named_parameters() if n in new_before)


def reference_forward(policy, names, weights, a_t, s, t):
    """Per sample: materialise W_b = W0 + Σ_i w_bi ΔW_i in every layer, then run the base."""
    layers = lora_layers(policy)
    originals = {p: layer.base_layer.weight.detach().clone() for p, layer in layers.items()}
    outputs = []
    with torch.no_grad():
        for b in range(a_t.shape[0]):
            for path, layer in layers.items():
                w = originals[path].clone()
                for i, name in enumerate(names):
                    if name == "base":
                        continue
                    spec = layer.adapters[name]
                    if spec.kind == "lora":
                        delta = layer.lora_B[name].weight @ layer.lora_A[name].weight * (spec.alpha / spec.rank)
                    else:
                        delta = layer.full_delta[name].weight
                    w += weights[b, i] * delta
                layer.base_layer.weight.copy_(w)
            outputs.append(policy.net(a_t[b : b + 1], s[b : b + 1], t[b : b + 1]))
        for path, layer in layers.items():
            layer.base_layer.weight.copy_(originals[path])
    return torch.cat(outputs)


def skill_bank():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "a", seed=1, rank=2)
    add_trained_looking_skill(policy, "b", seed=2, rank=8)
    add_trained_looking_skill(policy, "c", seed=3, kind="full")
    add_trained_looking_skill(policy, "d", seed=4, rank=4)
    return policy


def test_batched_per_sample_forward_matches_materialised_reference():
    policy = skill_bank()
    names = ["a", "base", "b", "c", "d"]
    a_t, s, t = net_inputs(batch=7)
    weights = torch.randn(7, len(names), generator=torch.Generator().manual_seed(5))
    weights[3] = 0.0  # one sample on the base alone
    with use_skills(policy, names, weights):
        batched = policy.net(a_t, s, t)
    expected = reference_forward(policy, names, weights, a_t, s, t)
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-5)
    # One weight vector for the whole batch is the same as repeating it per sample.
    with use_skills(policy, names, weights[0]):
        shared = policy.net(a_t, s, t)
    expected_shared = reference_forward(policy, names, weights[:1].expand(7, -1), a_t, s, t)
    torch.testing.assert_close(shared, expected_shared, rtol=1e-5, atol=1e-5)


def test_cached_stacks_follow_in_place_changes():
    policy = skill_bank()
    names = ["a", "b", "c"]
    a_t, s, t = net_inputs()
    weights = torch.rand(6, 3, generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), use_skills(policy, names, weights):
        first = policy.net(a_t, s, t)
        for layer in lora_layers(policy).values():
            layer.lora_B["b"].weight.mul_(-1.0)
            layer.full_delta["c"].weight.add_(0.01)
        second = policy.net(a_t, s, t)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, reference_forward(policy, names, weights, a_t, s, t), rtol=1e-5, atol=1e-5)


def test_cached_stacks_follow_a_change_of_dtype():
    """`.to(dtype)` swaps every parameter's storage without a version bump: the cached
    stacks must be rebuilt, not reused in the old dtype."""
    policy = skill_bank()
    names = ["a", "b", "c"]
    a_t, s, t = net_inputs()
    weights = torch.rand(6, 3, generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), use_skills(policy, names, weights):
        policy.net(a_t, s, t)  # fills the caches in float32
    policy.double()
    a_t, s, weights = a_t.double(), s.double(), weights.double()
    with torch.no_grad(), use_skills(policy, names, weights):
        doubled = policy.net(a_t, s, t)
    assert doubled.dtype == torch.float64
    torch.testing.assert_close(doubled, reference_forward(policy, names, weights, a_t, s, t),
                               rtol=1e-10, atol=1e-10)


def test_per_sample_weights_receive_gradients():
    policy = skill_bank()
    a_t, s, t = net_inputs()
    weights = torch.full((6, 3), 0.5, requires_grad=True)
    with use_skills(policy, ["a", "c", "d"], weights):
        policy.net(a_t, s, t).pow(2).sum().backward()
    assert weights.grad is not None and (weights.grad != 0).all()


def test_use_skills_nests_and_restores():
    policy = skill_bank()
    a_t, s, t = net_inputs()
    base_out = policy.net(a_t, s, t)
    with use_skills(policy, ["a"]):
        a_out = policy.net(a_t, s, t)
        with use_skills(policy, ["b"]):
            assert not torch.equal(policy.net(a_t, s, t), a_out)
        assert torch.equal(policy.net(a_t, s, t), a_out)
    assert torch.equal(policy.net(a_t, s, t), base_out)
    with use_skills(policy, ["base"]):
        assert torch.equal(policy.net(a_t, s, t), base_out)


def test_remove_skill():
    policy = skill_bank()
    a_t, s, t = net_inputs()
    base_out = policy.net(a_t, s, t)
    merge(policy, "b")
    remove_skill(policy, "b")
    assert skill_names(policy) == ["a", "c", "d"]
    assert torch.equal(policy.net(a_t, s, t), base_out)
    assert not any(".b." in key for key in policy.state_dict())


def test_user_errors_are_clear():
    policy = skill_bank()
    with pytest.raises(StoreError, match="already exists"):
        add_skill(policy, "a")
    with pytest.raises(StoreError, match="reserved"):
        add_skill(policy, "lora_A")
    with pytest.raises(StoreError, match="invalid name"):
        add_skill(policy, "has.dot")
    with pytest.raises(SpecError, match="kind"):
        add_skill(policy, "x", kind="dense")
    with pytest.raises(SpecError, match="rank"):
        add_skill(policy, "x", rank=0)
    with pytest.raises(StoreError, match="unknown skill 'nope'"):
        with use_skills(policy, ["a", "nope"]):
            pass
    with pytest.raises(ShapeError, match=r"\[2\] or \[B, 2\]"):
        with use_skills(policy, ["a", "b"], [1.0, 2.0, 3.0]):
            pass
    with pytest.raises(StoreError, match="repeat"):
        with use_skills(policy, ["a", "a"]):
            pass
    with pytest.raises(StoreError, match="unknown skill"):
        trainable_only(policy, "nope")
    with pytest.raises(StoreError, match="not merged"):
        unmerge(policy, "a")


def test_caches_filled_in_inference_mode_do_not_break_training():
    """Stacks and weight plans are reused across calls; inference tensors in them would make
    a later backward pass fail."""
    policy = skill_bank()
    obs = observations(8)
    actions = torch.zeros(8, policy.config.act_dim)
    weights = torch.full((8, 3), 0.3)
    with torch.inference_mode():
        for names, w in ((["a"], None), (["a", "b", "c"], weights)):
            with use_skills(policy, names, w):
                policy.sample(obs)
    alpha = weights.clone().requires_grad_(True)
    with use_skills(policy, ["a", "b", "c"], alpha):
        policy.loss(obs, actions)["loss"].backward()
    assert alpha.grad is not None
    trainable_only(policy, "a")
    with use_skills(policy, ["a"]):
        policy.loss(obs, actions)["loss"].backward()
    assert policy.net.output.lora_B["a"].weight.grad is not None


@pytest.mark.parametrize(("rank", "alpha", "scaling"), [
    (8, None, 16.0),   # the default: the official multiplier, whatever the rank
    (4, None, 16.0),
    (8, 16.0, 2.0),    # peft's usual alpha = 2·rank
    (6, 3.0, 0.5),
    (2, 10.0, 5.0),
])
def test_lora_update_is_scaled_by_alpha_over_rank(rank, alpha, scaling):
    policy = tiny_policy()
    a_t, s, t = net_inputs()
    base_out = policy.net(a_t, s, t)
    add_skill(policy, "walk", rank=rank, alpha=alpha, generator=torch.Generator().manual_seed(0))
    layer = lora_layers(policy)["net.output"]
    assert layer.adapters["walk"].scaling == scaling
    with torch.no_grad():
        layer.lora_B["walk"].weight.normal_(generator=torch.Generator().manual_seed(1))
    # Only the output layer carries a non-zero B: its output moves by exactly scaling·B A h.
    h = policy.net.out_norm(_hidden(policy, a_t, s, t))
    lora = layer.lora_B["walk"].weight @ layer.lora_A["walk"].weight
    with use_skills(policy, ["walk"]):
        got = policy.net(a_t, s, t) - base_out
    torch.testing.assert_close(got, scaling * h @ lora.t(), rtol=1e-4, atol=1e-5)


def _hidden(policy, a_t, s, t):
    """The residual stream just before the output norm, with no skill on."""
    net = policy.net
    phase = t.to(a_t.dtype).unsqueeze(-1) * net.freqs
    emb = net.time_out(net.time_act(net.time_in(torch.cat([phase.sin(), phase.cos()], -1))))
    x = net.input(torch.cat([a_t, s, emb], dim=-1))
    for block in net.blocks:
        x = block(x)
    return x


def test_lora_a_is_lecun_normal():
    """A ~ truncated N(0, 1/fan_in) (the official init), not kaiming-uniform's 1/(3·fan_in)."""
    policy = tiny_policy(hidden=256)
    add_skill(policy, "walk", rank=64, generator=torch.Generator().manual_seed(0))
    a = lora_layers(policy)["net.blocks.0.fc1"].lora_A["walk"].weight  # [64, 256]
    var = a.var().item() * a.shape[1]
    assert 0.9 < var < 1.1
    assert a.abs().max().item() <= 2.0 / (0.87962566103423978 * a.shape[1] ** 0.5) + 1e-6


@pytest.mark.parametrize("where", ["net.blocks.0.fc1", "net.input"])
@pytest.mark.parametrize("names", [["b"], ["a", "b", "d"]])
def test_adapter_gradients_equal_those_of_the_written_out_formula(names, where):
    """Training builds B stackᵀ as a row-major copy (faster backward); the output and the
    gradients of every A, B and of the input must still be those of
    y = W0 x + b + Σ_i w_i s_i B_i A_i x, skill by skill, in a layer whose input is padded
    for the down-projection (net.input) and in one that is not."""
    policy = skill_bank()
    layer = lora_layers(policy)[where]
    for name in names:
        layer.lora_A[name].weight.requires_grad_(True)
        layer.lora_B[name].weight.requires_grad_(True)
    x = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(7),
                    requires_grad=True)
    w = torch.tensor([0.5, -1.0, 2.0])[: len(names)]
    upstream = torch.randn(5, layer.out_features, generator=torch.Generator().manual_seed(8))
    with use_skills(policy, names, w):
        out = layer(x)
        (out * upstream).sum().backward()
    got = {n: (layer.lora_A[n].weight.grad.clone(), layer.lora_B[n].weight.grad.clone())
           for n in names}
    got_x, x.grad = x.grad.clone(), None
    for name in names:
        layer.lora_A[name].weight.grad = layer.lora_B[name].weight.grad = None
    y = nn.functional.linear(x, layer.base_layer.weight, layer.base_layer.bias)
    for wi, name in zip(w, names):
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        y = y + wi * layer.adapters[name].scaling * (x @ a.t() @ b.t())
    (y * upstream).sum().backward()
    torch.testing.assert_close(out, y)
    torch.testing.assert_close(got_x, x.grad)
    assert layer.base_layer.weight.grad is None
    for name in names:
        torch.testing.assert_close(got[name][0], layer.lora_A[name].weight.grad)
        torch.testing.assert_close(got[name][1], layer.lora_B[name].weight.grad)
        assert got[name][0].abs().sum() > 0 and got[name][1].abs().sum() > 0


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_skills_by_block_equal_one_hot_per_sample_weights(kind):
    """blocks=True: row block j runs with skill j alone, as per-sample one-hot weights do
    (outputs and every adapter's gradient), computed block by block."""
    policy = tiny_policy()
    names = ["p", "q", "r"]
    for seed, name in enumerate(names):
        add_trained_looking_skill(policy, name, seed=10 + seed, kind=kind, rank=3)
    a_t, s, t = net_inputs(batch=3 * 4)
    one_hot = torch.eye(3).repeat_interleave(4, dim=0)  # rows 0-3: p, 4-7: q, 8-11: r
    results = []
    for options in ({"weights": one_hot}, {"blocks": True}):
        policy.zero_grad(set_to_none=True)
        with use_skills(policy, names, **options):
            out = policy.net(a_t, s, t)
        out.pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters()
                 if p.requires_grad and any(f".{k}." in n for k in names)}
        results.append((out.detach(), grads))
    (one_hot_out, one_hot_grads), (block_out, block_grads) = results
    torch.testing.assert_close(block_out, one_hot_out, rtol=1e-5, atol=1e-6)
    assert set(block_grads) == set(one_hot_grads) and block_grads
    # Gradients sum over rows in another order per path (and per CPU's GEMM kernels: an
    # element near zero differed by 3e-6 on an AVX-512 Xeon), so the absolute tolerance is
    # float32's over these sums, well below any wrong routing of rows to skills.
    for name, grad in block_grads.items():
        torch.testing.assert_close(grad, one_hot_grads[name], rtol=1e-4, atol=1e-5)


def test_skills_by_block_must_share_one_shape():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "p", seed=1, rank=3)
    add_trained_looking_skill(policy, "q", seed=2, rank=4)
    for names, options in ((["p", "q"], {}), (["base", "p"], {}),
                           (["p"], {"weights": torch.ones(1)})):
        with pytest.raises(StoreError), use_skills(policy, names, blocks=True, **options):
            pass
