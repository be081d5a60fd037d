"""The contract every attention x position pair in conf/ must meet (new yamls are picked up by
themselves): it composes (or is refused with a config error naming keys), runs forward and
backward, is causal, and its cached incremental decoding equals the full forward pass -- plain and
with each model option of ``OPTIONS`` (refused only with a message naming the option's key)."""

from pathlib import Path

import pytest
import torch

from lmlab.config import CONF_DIR, ConfigError
from lmlab.model.transformer import build_model


def _names(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


PAIRS = [(a, p) for a in _names("attention") for p in _names("pos")]
# model options (issue 14) that must compose with every pair they can, or be refused naming their key
OPTIONS = {"plain": [], "qk_norm": ["model.qk_norm=true"], "relu2_softcap": ["model.mlp=relu2",
                                                                          "model.logit_softcap=5.0"]}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("attention,pos", PAIRS)
def test_pair(compose, attention, pos, option):
    overrides = [f"attention={attention}", f"pos={pos}", "model=nano", "model.d_model=32",
                 "model.n_head=4", "model.n_layer=2", "model.seq_len=32"]
    try:
        run = compose(overrides)
    except ConfigError as e:  # a declared incompatibility must name both choices and say why
        assert f"pos.name={pos}" in str(e) and "attention" in str(e), str(e)
        return
    try:
        run = compose(overrides + OPTIONS[option]) if OPTIONS[option] else run
    except ConfigError as e:  # the pair composes: an option refused must name its key and the attention
        assert any(o.split("=")[0] in str(e) for o in OPTIONS[option]) and f"attention.name={attention}" in str(e)
        return
    torch.manual_seed(0)
    model = build_model(run, vocab_size=61).double()
    x = torch.randint(0, 61, (2, 24))
    model.train()
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten())
    aux = model.aux_loss()
    (loss + (aux if aux is not None else 0)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None for g in grads) > 0.9 * len(grads)

    model.eval()
    y = x.clone()
    y[:, 15] = (y[:, 15] + 1) % 61
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :15], b[:, :15])  # causal

    caches = model.new_caches()
    parts = [model(x[:, :9], caches=caches)] + [model(x[:, t : t + 1], caches=caches) for t in range(9, 24)]
    torch.testing.assert_close(torch.cat(parts, 1), a, rtol=1e-7, atol=1e-7)
