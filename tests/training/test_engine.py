"""The engine (bench.training.engine), by hand: the loss with Inception's auxiliary head, gradient
accumulation equal to one full batch, evaluation as softmax of the eval-mode logits, balanced
class weights as scikit-learn's. Every expected value is written with ``torch.nn.functional`` or
autograd outside the loop, never read from the code under test."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as tnf

from bench.training.engine import compute_loss, evaluate, split_outputs, train_one_epoch


# --------------------------------------------------------------------------- loss assembly
def _inception_outputs(name: str, size: int):
    from bench.models import create_model, get_model_spec

    torch.manual_seed(0)
    model = create_model(name, num_classes=4, pretrained=False).train()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return model(x), get_model_spec(name)


@pytest.mark.known_answer
def test_inception_loss_is_main_plus_0_4_aux():
    outputs, spec = _inception_outputs("inception_v3", 299)
    main, aux = outputs.logits, outputs.aux_logits
    assert aux is not None and not torch.equal(main, aux)
    y = torch.tensor([1, 3])
    loss, logits = compute_loss(outputs, y, nn.CrossEntropyLoss(), spec.aux_weight)
    # Szegedy et al. 2016 / torchvision's recipe: total = main + 0.4 * auxiliary.
    expected = tnf.cross_entropy(main, y) + 0.4 * tnf.cross_entropy(aux, y)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert torch.equal(logits, main)


@pytest.mark.known_answer
def test_googlenet_is_built_without_aux_heads_so_its_loss_is_the_main_head():
    outputs, spec = _inception_outputs("googlenet", 64)
    main, aux = split_outputs(outputs)
    assert aux == []
    y = torch.tensor([0, 2])
    loss, _ = compute_loss(outputs, y, nn.CrossEntropyLoss(), spec.aux_weight)
    assert float(loss) == pytest.approx(float(tnf.cross_entropy(main, y)), rel=1e-6)


class _WithAux(nn.Module):
    """A linear model that also returns an 'auxiliary' head, as Inception does in train mode."""

    def __init__(self):
        super().__init__()
        self.main, self.aux = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x):
        from torchvision.models.inception import InceptionOutputs

        return InceptionOutputs(self.main(x), self.aux(x)) if self.training else self.main(x)


@pytest.mark.known_answer
def test_the_training_loop_reports_the_assembled_loss():
    torch.manual_seed(1)
    model, x, y = _WithAux(), torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        expected = tnf.cross_entropy(model.main(x), y) + 0.4 * tnf.cross_entropy(model.aux(x), y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_one_epoch(model, [(x, y)], opt, nn.CrossEntropyLoss(), device=torch.device("cpu"), aux_weight=0.4)
    assert out["loss"] == pytest.approx(float(expected), rel=1e-6)  # the loss before the step
    assert out["n"] == 6


# --------------------------------------------------------------------------- gradient accumulation
def _one_step(batches, grad_accum, momentum=0.9):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))  # no BatchNorm: batch-size free
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=momentum)
    train_one_epoch(model, batches, opt, nn.CrossEntropyLoss(), device=torch.device("cpu"), grad_accum=grad_accum)
    return model.state_dict(), opt.state_dict()


@pytest.mark.known_answer
def test_two_accumulated_micro_batches_equal_one_full_batch_step():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
    full, full_opt = _one_step([(x, y)], grad_accum=1)
    accum, accum_opt = _one_step([(x[:4], y[:4]), (x[4:], y[4:])], grad_accum=2)
    for key in full:
        torch.testing.assert_close(accum[key], full[key], rtol=1e-5, atol=1e-6)
    # The momentum buffers (one SGD step) are the full-batch gradient too.
    for k, state in full_opt["state"].items():
        torch.testing.assert_close(accum_opt["state"][k]["momentum_buffer"], state["momentum_buffer"],
                                   rtol=1e-5, atol=1e-6)
    # ... and differ from two separate steps, so the comparison above can tell them apart.
    two_steps, _ = _one_step([(x[:4], y[:4]), (x[4:], y[4:])], grad_accum=1)
    assert any(not torch.allclose(two_steps[k], full[k], atol=1e-4) for k in full)


@pytest.mark.known_answer
def test_one_step_is_plain_sgd_on_the_mean_loss():
    # w <- w - lr * grad of the batch-mean cross-entropy, written out with autograd outside the loop.
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 5, generator=g), torch.randint(0, 3, (6,), generator=g)
    torch.manual_seed(3)
    ref = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    grads = torch.autograd.grad(tnf.cross_entropy(ref(x), y), list(ref.parameters()))
    expected = {k: p.detach() - 0.5 * gr for (k, p), gr in zip(ref.named_parameters(), grads)}
    got, _ = _one_step([(x[:3], y[:3]), (x[3:], y[3:])], grad_accum=2, momentum=0.0)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- evaluation
@pytest.mark.known_answer
def test_evaluate_returns_softmax_of_the_eval_mode_logits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9))  # dropout would change train-mode outputs
    x = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 1, 0])
    out = evaluate(model, [(x[:2], y[:2]), (x[2:], y[2:])], nn.CrossEntropyLoss(), device=torch.device("cpu"))
    logits = model[0](x).detach()
    np.testing.assert_allclose(out["probs"], torch.softmax(logits, 1).numpy(), rtol=1e-6)
    assert out["preds"].tolist() == logits.argmax(1).tolist()
    assert out["labels"].tolist() == y.tolist()
    assert out["loss"] == pytest.approx(float(tnf.cross_entropy(logits, y)), rel=1e-6)  # mean over all images
    assert out["acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


@pytest.mark.own_data
def test_balanced_class_weights_are_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    from bench.training.engine import loss_class_weights

    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    got = loss_class_weights("balanced", labels, 3)
    # n / (C * n_c): 6 / (3*3), 6 / (3*1), 6 / (3*2)
    assert got.tolist() == pytest.approx([2 / 3, 2.0, 1.0])
    assert got.tolist() == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy()))
    assert loss_class_weights(None, labels, 3) is None
