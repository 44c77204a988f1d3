"""Training-time pruning and clustering (torch extra): schedules, masks and patterns, trainable
centroids, strip, and QAT that keeps a pruned and clustered model's zeros and clusters into the
int8 file, whose eval mode still equals ONNX Runtime's int8 model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_qat import CONFIG, _prepared, _train
from test_torch_qat import PlainNet, _small_net

import edgeopt
from edgeopt.errors import EdgeoptError
from edgeopt.quantization.structure import distinct_per_row
from edgeopt.runtimes.onnxruntime import make_session


def test_polynomial_decay_follows_its_formula_and_update_steps():
    schedule = edgeopt.PolynomialDecay(initial_sparsity=0.1, begin_step=10, end_step=110, frequency=25, power=3)
    assert schedule.sparsity(5, 0.8) == 0.0
    assert schedule.sparsity(10, 0.8) == pytest.approx(0.1)
    assert schedule.sparsity(60, 0.8) == pytest.approx(0.8 + (0.1 - 0.8) * 0.5 ** 3)
    assert schedule.sparsity(500, 0.8) == pytest.approx(0.8)
    assert [step for step in range(200) if schedule.updates_at(step)] == [10, 35, 60, 85, 110]
    constant = edgeopt.ConstantSparsity(begin_step=3, frequency=2)
    assert constant.sparsity(2, 0.5) == 0.0 and constant.sparsity(3, 0.5) == 0.5
    assert edgeopt.PruneConfig.from_dict(edgeopt.PruneConfig(schedule=schedule).to_dict()).schedule == schedule


@pytest.mark.parametrize("fields", [{"begin_step": 5, "end_step": 5}, {"begin_step": 5, "end_step": 2},
                                    {"frequency": 0}, {"begin_step": -1}, {"initial_sparsity": 1.0}])
def test_a_schedule_ending_before_it_begins_and_other_bad_values_are_errors(fields):
    with pytest.raises(EdgeoptError):
        edgeopt.PolynomialDecay(**fields)


def _steps(model, count: int, seed: int = 0, lr: float = 0.01):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(count):
        x = torch.randn(8, 1, 28, 28, generator=generator)
        loss = (model(x) - torch.randn(8, 10, generator=generator)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_pruning_reaches_its_schedule_and_strip_leaves_plain_zeros():
    import edgeopt.torch as et
    from edgeopt.torch.pruning import state_of

    model = PlainNet()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    config = edgeopt.PruneConfig(sparsity=0.75, schedule=edgeopt.PolynomialDecay(end_step=8, frequency=2),
                                 layer_sparsity={"fc2": 0.5})
    pruned = et.prepare_pruning(model, config)
    _steps(pruned, 4)
    halfway = state_of(pruned).report()["sparsity"]
    _steps(pruned, 6)
    report = state_of(pruned).report()
    assert 0 < halfway < report["sparsity"]
    assert report["layers"]["conv2"] == pytest.approx(0.75, abs=1e-3)
    assert report["layers"]["fc2"] == pytest.approx(0.5, abs=1e-3)
    plain = et.strip(pruned)
    assert type(plain.conv2.weight) is torch.nn.Parameter and not hasattr(plain, "edgeopt_pruning")
    assert float((plain.conv2.weight == 0).float().mean()) == pytest.approx(0.75, abs=1e-3)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())  # untouched


def test_two_of_four_and_global_ranking():
    import edgeopt.torch as et

    pruned = et.prepare_pruning(PlainNet(), edgeopt.PruneConfig(pattern="2:4"))
    _steps(pruned, 2)
    plain = et.strip(pruned)
    groups = plain.conv2.weight.detach().permute(0, 2, 3, 1).reshape(-1, 4)  # 4 consecutive input channels
    assert torch.all((groups != 0).sum(dim=1) <= 2)
    with pytest.raises(AttributeError):  # conv1 reads one channel: no group of 4 fits, it stays plain
        plain.conv1.parametrizations  # noqa: B018
    model = PlainNet()
    globally = et.strip(_steps(et.prepare_pruning(model, edgeopt.PruneConfig(sparsity=0.6, ranking="global")), 1))
    weights = [m.weight for m in (globally.conv1, globally.conv2, globally.fc1, globally.fc2)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.6, abs=1e-3)
    assert len({round(float((w == 0).float().mean()), 2) for w in weights}) > 1


def test_a_model_pruned_by_one_data_aware_ranking_keeps_each_layers_share():
    """The one-shot config (``ranking="global"``, ``method="data-aware"``) fine-tunes the model it
    made: each layer keeps the zeros it came with (its own share), none lost, none added."""
    import edgeopt.torch as et

    torch.manual_seed(0)
    model = PlainNet()
    with torch.no_grad():
        for layer, share in ((model.conv2, 0.2), (model.fc1, 0.7), (model.fc2, 0.05)):
            layer.weight.view(-1)[: round(share * layer.weight.numel())] = 0.0
    zeros = {name: model.get_submodule(name).weight == 0 for name in ("conv1", "conv2", "fc1", "fc2")}
    config = edgeopt.PruneConfig(sparsity=0.5, ranking="global", method="data-aware")
    plain = et.strip(_steps(et.prepare_pruning(model, config), 3))
    for name, before in zeros.items():
        after = plain.get_submodule(name).weight == 0
        assert torch.equal(after, before), name
    with pytest.raises(EdgeoptError, match="no zero weights"):
        et.prepare_pruning(PlainNet(), config)


def test_training_pruning_bad_inputs():
    import edgeopt.torch as et

    with pytest.raises(EdgeoptError, match="one-shot"):
        et.prepare_pruning(PlainNet(), edgeopt.PruneConfig(method="data-aware"))
    with pytest.raises(EdgeoptError, match="matches no Conv2d or Linear"):
        et.prepare_pruning(PlainNet(), edgeopt.PruneConfig(layers=("head*",)))
    with pytest.raises(EdgeoptError, match="layer_sparsity"):
        et.prepare_pruning(PlainNet(), edgeopt.PruneConfig(layer_sparsity={"head": 0.5}))
    with pytest.raises(EdgeoptError, match="nothing to prune"):
        et.prepare_pruning(torch.nn.Sequential(torch.nn.ReLU()), edgeopt.PruneConfig())
    pruned = et.prepare_pruning(PlainNet(), edgeopt.PruneConfig())
    with pytest.raises(EdgeoptError, match="already has parametrized weights"):
        et.prepare_pruning(pruned, edgeopt.PruneConfig())
    with pytest.raises(EdgeoptError, match="nothing to strip"):
        et.strip(PlainNet())
    with pytest.raises(EdgeoptError, match="one-shot pruning expects schedule=None"):
        edgeopt.prune(models_conv(), edgeopt.PruneConfig(schedule=edgeopt.ConstantSparsity()))


def models_conv():
    import models

    return models.conv_net()


@pytest.mark.parametrize("codebook", ["scaled", "channel", "layer"])
def test_clustering_trains_the_centroids_and_keeps_zeros(codebook):
    import edgeopt.torch as et

    pruned = et.strip(_steps(et.prepare_pruning(PlainNet(), edgeopt.PruneConfig(sparsity=0.5)), 1))
    zeros = (pruned.fc1.weight == 0).clone()
    clustered = et.prepare_clustering(pruned, edgeopt.ClusterConfig(clusters=8, codebook=codebook))
    start = clustered.fc1.parametrizations.weight[0].codebook.detach().clone()
    _steps(clustered, 3)
    assert not torch.equal(start, clustered.fc1.parametrizations.weight[0].codebook.detach())  # trained
    plain = et.strip(clustered)
    weight = plain.fc1.weight.detach().numpy()
    assert distinct_per_row(weight).max() <= 8
    assert np.all(weight[zeros.numpy()] == 0)
    if codebook == "layer":
        assert len(np.unique(weight)) <= 8


def test_a_weight_clustered_in_one_shot_keeps_its_values():
    """prepare_clustering adopts a weight already on a scaled codebook (an edgeopt.cluster result,
    whatever rate its layer got) instead of clustering it again: the same values before training.
    float32 weights: 1e-6 relative."""
    import edgeopt.torch as et
    from edgeopt.compression import kmeans

    model = PlainNet()
    rows = model.fc1.weight.detach().double().numpy()
    values = kmeans.cluster_scaled(rows, 16, bits=3.0)[0].values().astype(np.float32)
    with torch.no_grad():
        model.fc1.weight.copy_(torch.from_numpy(values))
    # asked for fewer bits than the layer holds: clustering again would move its weights
    clustered = et.prepare_clustering(model, edgeopt.ClusterConfig(clusters=16, bits=1.0))
    np.testing.assert_allclose(clustered.fc1.weight.detach().numpy(), values, rtol=1e-6, atol=1e-8)


def test_prepare_clustering_takes_the_global_config_of_an_already_clustered_model():
    """The config a one-shot global search ran with fine-tunes its result: every selected layer
    is adopted as it is (same values, 1e-6 relative); a layer not on a scaled codebook is refused
    by name."""
    import edgeopt.torch as et
    from edgeopt.compression import kmeans

    model = PlainNet()
    config = edgeopt.ClusterConfig(clusters=16, bits=2.0, allocation="global", layers=("fc1",))
    values = kmeans.cluster_scaled(model.fc1.weight.detach().double().numpy(), 16, bits=3.0)[0].values()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.from_numpy(values.astype(np.float32)))
    clustered = et.prepare_clustering(model, config)
    np.testing.assert_allclose(clustered.fc1.weight.detach().numpy(), values, rtol=1e-6, atol=1e-8)
    with pytest.raises(EdgeoptError, match="layer 'fc2' is not clustered that way"):
        et.prepare_clustering(model, edgeopt.ClusterConfig(clusters=16, bits=2.0, allocation="global",
                                                           layers=("fc1", "fc2")))


def test_clustering_bad_inputs():
    import edgeopt.torch as et

    with pytest.raises(EdgeoptError, match="more than layer 'conv1' has weights"):
        et.prepare_clustering(PlainNet(), edgeopt.ClusterConfig(clusters=100))  # conv1: 8 x 1 x 3 x 3
    with pytest.raises(EdgeoptError, match="one-shot"):
        et.prepare_clustering(PlainNet(), edgeopt.ClusterConfig(method="data-aware"))
    with pytest.raises(EdgeoptError, match="matches no module"):
        et.prepare_clustering(PlainNet(), edgeopt.ClusterConfig(exclude=("nothing",)))
    with pytest.raises(EdgeoptError, match="allocation 'global' is one-shot"):
        et.prepare_clustering(PlainNet(), edgeopt.ClusterConfig(bits=2.0, allocation="global"))


def _pruned_clustered(build, clusters: int = 16):
    """``build()`` pruned to 50% and clustered on a scaled codebook, each after a few steps."""
    import edgeopt.torch as et

    torch.manual_seed(0)
    pruned = et.strip(_steps(et.prepare_pruning(build(), edgeopt.PruneConfig(sparsity=0.5)), 2, lr=1e-3))
    clustered = et.strip(_steps(et.prepare_clustering(pruned, edgeopt.ClusterConfig(clusters=clusters)), 2, lr=1e-3))
    return clustered.eval()


@pytest.mark.parametrize("build", [PlainNet, _small_net], ids=["plain", "batch-norm"])
def test_collaborative_qat_keeps_zeros_and_clusters_in_the_int8_file(tmp_path, build):
    """Sparsity- and cluster-preserving QAT: after training steps (which move every weight), the
    int8 file holds every pruned weight at 0, at most 16 integers per output channel and, the
    codebook being scaled, the same integers in every channel; the eval-mode model still equals
    the int8 model on every logit."""
    import edgeopt.torch as et

    model = _pruned_clustered(build)
    zeros = {name: (m.weight == 0).detach().numpy() for name, m in model.named_modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    qat = _train(_prepared(model, CONFIG), steps=4)
    result = et.convert(qat, tmp_path / "m.onnx")
    weights = {key[0]: np.asarray(c.values) for key, c in edgeopt.read_plan(result.model).weights.items()}
    assert len(weights) == len(zeros)
    kept = [np.mean(values[zero] == 0) for values, zero in zip(weights.values(), zeros.values())  # graph order
            if zero.any()]  # depthwise convolutions stay dense
    assert len(kept) >= 3 and all(share == 1.0 for share in kept), kept
    for name, values in weights.items():
        assert distinct_per_row(values).max() <= 16, name
        if values.size // values.shape[0] > 32:  # rows long enough to be clustered (conv1: 9 weights)
            assert len(np.unique(values)) <= 16, name
    held_out = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ours = qat.eval()(held_out).numpy()
    np.testing.assert_array_equal(ours, make_session(result.model).run(None, {"x": held_out.numpy()})[0])


def test_without_preserve_training_loses_the_structure(tmp_path):
    """The check above can fail: with ``preserve=()`` the same training moves pruned weights off 0."""
    from dataclasses import replace

    import edgeopt.torch as et

    model = _pruned_clustered(PlainNet)
    zeros = (model.fc1.weight == 0).detach().numpy()
    qat = _train(_prepared(model, replace(CONFIG, preserve=())), steps=4)
    result = et.convert(qat, tmp_path / "m.onnx")
    fc1 = next(np.asarray(c.values) for c in edgeopt.read_plan(result.model).weights.values()
               if np.shape(c.values) == zeros.shape)
    assert np.mean(fc1[zeros] == 0) < 0.99


def test_schedule_start_strip_and_wrapping_details():
    """PolynomialDecay starts at its own initial sparsity (not a fraction of the target); a
    stripped clustered model trains again; a child called ``module`` is not taken for a
    DistributedDataParallel wrapper."""
    import edgeopt.torch as et
    from edgeopt.torch.pruning import state_of

    config = edgeopt.PruneConfig(sparsity=0.8, schedule=edgeopt.PolynomialDecay(initial_sparsity=0.5, end_step=100))
    pruned = et.prepare_pruning(PlainNet(), config)
    _steps(pruned, 1)
    assert state_of(pruned).report()["layers"]["conv2"] == pytest.approx(0.5, abs=1e-3)
    plain = et.strip(et.prepare_clustering(PlainNet(), edgeopt.ClusterConfig(clusters=8)))
    assert all(p.requires_grad for p in plain.parameters())

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.module(x))

    stripped = et.strip(et.prepare_clustering(Holder(), edgeopt.ClusterConfig(clusters=2)))
    assert isinstance(stripped, Holder) and not hasattr(stripped.head, "parametrizations")


def test_distill_cosine_schedule_takes_smaller_steps_than_constant():
    """``distill(cosine=True)`` lets the rate fall to 0 along a half cosine: Adam's steps are about
    the learning rate each, so over one pass the weights travel about 2/pi of the constant
    rate's way (asserted below 0.8, and above 0.4 so that training still happens)."""
    from edgeopt.torch.demo import distill

    rng = np.random.default_rng(0)
    images = rng.random((256, 1, 4, 4), dtype=np.float32)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    travelled = {}
    for cosine in (False, True):
        torch.manual_seed(1)
        student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
        start = student[1].weight.detach().clone()
        distill(student, teacher, images, batch=8, learning_rate=1e-3, cosine=cosine, description="test")
        travelled[cosine] = float((student[1].weight.detach() - start).abs().sum())
    assert 0.4 < travelled[True] / travelled[False] < 0.8, travelled
