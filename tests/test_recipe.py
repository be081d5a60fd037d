"""Recipe options (issue 14): optim=muon's parameter split and exact resume, optim=adamw equal to the
legacy builder, the wsd schedule, model.qk_norm / mlp=relu2 / logit_softcap by their formulas, and
refusals that name the keys. The contract test runs the model options over attention x pos pairs."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ConfigError
from lmlab.model.transformer import MLP, build_model
from lmlab.optim import Combined, build_optimizer, lr_factor

NANO = ["model=nano", "model.d_model=32", "model.n_head=4", "model.n_layer=2", "model.seq_len=32"]


def _split_names(model, opt):
    """{part name: set of parameter names} of a Combined optimizer."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {part: {names[id(p)] for g in o.param_groups for p in g["params"]} for part, o in opt.parts.items()}


def _hidden(n_layer):
    per = ["attn.q_proj.weight", "attn.kv_proj.weight", "attn.o_proj.weight", "mlp.up.weight", "mlp.down.weight"]
    return {f"blocks.{i}.{s}" for i in range(n_layer) for s in per}


def _gains(n_layer):
    return {f"blocks.{i}.norm{j}.weight" for i in range(n_layer) for j in (1, 2)} | {"norm_f.weight"}


@pytest.mark.parametrize("extra,other", [
    ([], {"tok_emb.weight"}),  # tied head: appears once, as the embedding
    (["model.tie_embeddings=false"], {"tok_emb.weight", "lm_head.weight"}),
    (["pos=learned"], {"tok_emb.weight", "pos.table.weight"}),
    (["attention.bias=true"], {"tok_emb.weight"}),
])
def test_muon_split_by_name(compose, extra, other):
    run = compose(NANO + ["optim=muon"] + extra)
    model = build_model(run, vocab_size=61)
    opt = build_optimizer(model, run)["optimizer"]
    assert isinstance(opt, Combined) and isinstance(opt.parts["muon"], torch.optim.Muon)
    split = _split_names(model, opt)
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert bool(biases) == ("attention.bias=true" in extra)
    assert split["muon"] == _hidden(2)
    assert split["adamw"] == other | _gains(2) | biases
    # the same split from named parameters (as a LightningModule passes them, prefixed)
    prefixed = [(f"model.{n}", p) for n, p in model.named_parameters()]
    opt2 = build_optimizer(prefixed, run)["optimizer"]
    assert [p for g in opt2.parts["muon"].param_groups for p in g["params"]] == \
        [p for g in opt.parts["muon"].param_groups for p in g["params"]]


def test_muon_split_keeps_vq_local_bias_on_adamw(compose):
    run = compose(NANO + ["optim=muon", "attention=vq", "pos=none"])
    model = build_model(run, vocab_size=61)
    split = _split_names(model, build_optimizer(model, run)["optimizer"])
    assert {"blocks.0.attn.local_bias", "blocks.1.attn.local_bias"} <= split["adamw"]
    assert split["muon"] == _hidden(2)


def test_muon_lrs_and_hyperparameters(compose):
    run = compose(NANO + ["optim=muon", "optim.muon_lr=0.05", "optim.lr=0.004", "optim.warmup_steps=0",
                          "optim.muon_momentum=0.9", "optim.muon_weight_decay=0.01"])
    opt = build_optimizer(build_model(run, 61), run)["optimizer"]
    (mg,) = opt.parts["muon"].param_groups
    assert (mg["lr"], mg["momentum"], mg["weight_decay"]) == (0.05, 0.9, 0.01)
    assert [g["lr"] for g in opt.parts["adamw"].param_groups] == [0.004, 0.004]
    assert [g["weight_decay"] for g in opt.parts["adamw"].param_groups] == [0.1, 0.0]
    assert opt.param_groups[0] is mg  # the first group (logged as "lr") is Muon's


def test_adamw_is_exactly_the_legacy_builder(compose):
    run = compose(NANO + ["optim=adamw", "model.tie_embeddings=false", "trainer.max_steps=40", "optim.warmup_steps=7"])
    torch.manual_seed(0)
    m1 = build_model(run, 61)
    m2 = copy.deepcopy(m1)
    new, old = build_optimizer(m1, run), adamw_with_schedule(m2.parameters(), run)
    o1, o2 = new["optimizer"], old["optimizer"]
    assert type(o1) is type(o2) is torch.optim.AdamW
    assert new["lr_scheduler"]["interval"] == old["lr_scheduler"]["interval"] == "step"
    names1 = {id(p): n for n, p in m1.named_parameters()}
    names2 = {id(p): n for n, p in m2.named_parameters()}
    for g1, g2 in zip(o1.param_groups, o2.param_groups, strict=True):
        assert [names1[id(p)] for p in g1["params"]] == [names2[id(p)] for p in g2["params"]]
        assert {k: v for k, v in g1.items() if k != "params"} == {k: v for k, v in g2.items() if k != "params"}
    s1, s2 = new["lr_scheduler"]["scheduler"], old["lr_scheduler"]["scheduler"]
    x = torch.randint(0, 61, (2, 16))
    for _ in range(run.trainer.max_steps):
        assert o1.param_groups[0]["lr"] == o2.param_groups[0]["lr"]
        for m, o, s in ((m1, o1, s1), (m2, o2, s2)):
            o.zero_grad()
            F.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
            o.step()
            s.step()
    for (n, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b), n


def _steps(model, opt, sched, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 61, (2, 16), generator=g)
        opt.zero_grad()

        def closure(x=x):
            loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
            loss.backward()
            return loss

        opt.step(closure)
        sched.step()


def test_muon_state_round_trip_gives_identical_next_steps(compose):
    run = compose(NANO + ["optim=muon", "optim.schedule=wsd", "trainer.max_steps=12", "optim.warmup_steps=2",
                          "optim.decay_frac=0.5"])
    torch.manual_seed(0)
    model = build_model(run, 61)
    built = build_optimizer(model, run)
    opt, sched = built["optimizer"], built["lr_scheduler"]["scheduler"]
    _steps(model, opt, sched, 5, seed=1)
    buf = io.BytesIO()  # through torch.save/load, as a checkpoint goes
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    assert set(opt.state_dict()) == {"muon", "adamw"}
    assert len(opt.parts["muon"].state) == len(_hidden(2))
    assert all("momentum_buffer" in s for s in opt.parts["muon"].state.values())
    assert all("exp_avg_sq" in s for s in opt.parts["adamw"].state.values())

    twin = copy.deepcopy({"model": model, "opt": opt})  # deep copies keep the parts and their state
    assert twin["opt"].param_groups[0]["params"][0] is twin["model"].blocks[0].attn.q_proj.weight
    assert set(twin["opt"].state_dict()) == {"muon", "adamw"} and len(twin["opt"].state) == len(opt.state)

    _steps(model, opt, sched, 5, seed=2)  # the uninterrupted run

    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    torch.manual_seed(123)  # a different fresh init: everything must come from the saved state
    resumed = build_model(run, 61)
    resumed.load_state_dict(saved["model"])
    built2 = build_optimizer(resumed, run)
    opt2, sched2 = built2["optimizer"], built2["lr_scheduler"]["scheduler"]
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(run.optim.muon_lr * lr_factor(run.optim, 12)(5))
    _steps(resumed, opt2, sched2, 5, seed=2)

    for (n, a), b in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), n
    for part in ("muon", "adamw"):
        sa, sb = opt.state_dict()[part]["state"], opt2.state_dict()[part]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (part, i, k)
    with pytest.raises(ValueError, match="optim.name"):
        opt2.load_state_dict({"adamw": saved["opt"]["adamw"]})


@pytest.mark.slow
def test_muon_crash_and_resume_through_lightning_is_bit_for_bit(compose, tiny_overrides, monkeypatch):
    """The lead switches LMModule to build_optimizer; here a test patch does it, so Lightning saves and
    restores the Combined optimizer through its own checkpoint code."""
    from lmlab.tasks.lm import LMModule
    from lmlab.train.run import train
    from tests.test_train import Crash, CrashAt, losses

    monkeypatch.setattr(LMModule, "configure_optimizers", lambda self: build_optimizer(self.named_parameters(),
                                                                                      self.run))
    extra = ["optim=muon", "optim.schedule=wsd", "optim.warmup_steps=2", "trainer.max_steps=10", "trainer.val_every=4",
             "trainer.deterministic=true"]
    ref = compose(tiny_overrides + extra + ["run_name=ref"])
    train(ref, log=lambda *_: None)
    run = compose(tiny_overrides + extra + ["run_name=crashy"])
    with pytest.raises(Crash):
        train(run, log=lambda *_: None, callbacks=[CrashAt(6)])  # last checkpoint at step 4
    train(compose(tiny_overrides + extra + ["run_name=crashy"]), log=lambda *_: None)
    a, b = losses(f"{ref.out_dir}/ref"), losses(f"{run.out_dir}/crashy")
    assert a == b and max(a) == 9
    wa = torch.load(f"{ref.out_dir}/ref/checkpoints/last.ckpt", weights_only=False)
    wb = torch.load(f"{run.out_dir}/crashy/checkpoints/last.ckpt", weights_only=False)
    for k in wa["state_dict"]:
        assert torch.equal(wa["state_dict"][k], wb["state_dict"][k]), k
    ma, mb = wa["optimizer_states"][0]["muon"]["state"], wb["optimizer_states"][0]["muon"]["state"]
    assert ma and all(torch.equal(ma[i]["momentum_buffer"], mb[i]["momentum_buffer"]) for i in ma)


def test_wsd_schedule_values(compose):
    run = compose(NANO + ["optim.schedule=wsd", "optim.warmup_steps=10", "optim.decay_frac=0.2",
                          "optim.min_lr_ratio=0.1", "trainer.max_steps=100"])
    f = lr_factor(run.optim, 100)
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5) and f(9) == 1.0  # warmup
    assert all(f(s) == 1.0 for s in range(10, 81))  # stable, and the decay starts from 1 at step 80
    assert f(85) == pytest.approx(0.1 + 0.9 * 0.75) and f(90) == pytest.approx(0.55)  # linear
    assert f(100) == pytest.approx(0.1) and f(150) == pytest.approx(0.1)  # floor, held past the end
    run.optim.decay_shape = "sqrt"
    g = lr_factor(run.optim, 100)
    assert g(50) == 1.0 and g(90) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)))
    assert g(85) == pytest.approx(0.1 + 0.9 * 0.5) and g(100) == pytest.approx(0.1)
    # the scheduler applies the factor to each part's own base lr
    run = compose(NANO + ["optim=muon", "optim.schedule=wsd", "optim.warmup_steps=10", "trainer.max_steps=100"])
    built = build_optimizer(build_model(run, 61), run)
    opt, sched = built["optimizer"], built["lr_scheduler"]["scheduler"]
    for _ in range(90):
        opt.step()
        sched.step()
    factor = lr_factor(run.optim, 100)(90)
    assert factor < 1.0
    assert opt.parts["muon"].param_groups[0]["lr"] == pytest.approx(run.optim.muon_lr * factor)
    assert opt.parts["adamw"].param_groups[0]["lr"] == pytest.approx(run.optim.lr * factor)


def test_cosine_unchanged_by_default(compose):
    run = compose(NANO + ["trainer.max_steps=50"])
    assert run.optim.schedule == "cosine"
    f, g = lr_factor(run.optim, 50), lr_lambda(run.optim, 50)
    assert [f(s) for s in range(60)] == [g(s) for s in range(60)]


# The builder lmlab used before lmlab.optim (kept here as the reference the default must still equal)
def lr_lambda(optim_cfg, max_steps: int):
    """Linear warmup over ``optim.warmup_steps``, then cosine to ``lr * min_lr_ratio`` at max_steps."""

    def f(step: int) -> float:
        if step < optim_cfg.warmup_steps:
            return (step + 1) / optim_cfg.warmup_steps
        span = max(1, max_steps - optim_cfg.warmup_steps)
        progress = min(1.0, (step - optim_cfg.warmup_steps) / span)
        cos = 0.5 * (1 + math.cos(math.pi * progress))
        return optim_cfg.min_lr_ratio + (1 - optim_cfg.min_lr_ratio) * cos

    return f


def adamw_with_schedule(parameters, run) -> dict:
    """AdamW (no weight decay on gains and biases) with warmup + cosine, stepped per step."""
    o = run.optim
    params = [p for p in parameters if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=o.lr, betas=tuple(o.betas),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, run.trainer.max_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ------------------------------------------------------------------------------ model options
def _rotate_inputs(model):
    """Record what each layer hands to pos.rotate (q then k per layer)."""
    seen = []
    rotate = model.pos.rotate

    def spy(t, positions):
        seen.append(t.detach().clone())
        return rotate(t, positions)

    model.pos.rotate = spy
    return seen


@pytest.mark.parametrize("attention", ["mha", "gqa", "mqa"])
def test_qk_norm_gives_unit_rms_heads_before_rotation(compose, attention):
    for on in (True, False):
        run = compose(NANO + [f"attention={attention}", "pos=rope", f"model.qk_norm={str(on).lower()}"])
        torch.manual_seed(0)
        model = build_model(run, 61)
        for name, p in model.named_parameters():  # non-trivial weights, so a missing norm shows
            if name.endswith("proj.weight"):
                p.data.mul_(7.0)
        seen = _rotate_inputs(model)
        model(torch.randint(0, 61, (2, 16)))
        assert len(seen) == 2 * 2  # q and k in each of the 2 layers
        per_head = torch.cat([t.pow(2).mean(-1).sqrt().flatten() for t in seen])  # RMS of each (b, h, t)
        if on:  # gains start at 1: every head vector of q and k has RMS 1 (up to eps)
            torch.testing.assert_close(per_head, torch.ones_like(per_head), rtol=0, atol=1e-3)
        else:
            assert (per_head - 1).abs().max() > 0.5
        names = {n for n, _ in model.named_parameters()}
        assert ({"blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"} <= names) == on


def test_defaults_build_the_same_parameters_as_before(compose):
    """Options off: no new parameters, so existing checkpoints and seeds give the same model."""
    run = compose(NANO)
    assert (run.model.qk_norm, run.model.mlp, run.model.logit_softcap) == (False, "swiglu", None)
    names = [n for n, _ in build_model(run, 61).named_parameters()]
    assert not any("q_norm" in n or "k_norm" in n for n in names)


@pytest.mark.parametrize("attention,pos", [("mla", "rope"), ("vq", "none")])
def test_qk_norm_refused_naming_the_keys(compose, attention, pos):
    compose(NANO + [f"attention={attention}", f"pos={pos}"])  # valid without the option
    with pytest.raises(ConfigError) as e:
        compose(NANO + [f"attention={attention}", f"pos={pos}", "model.qk_norm=true"])
    msg = str(e.value)
    assert msg.count("\n  - ") == 1 and "model.qk_norm" in msg and f"attention.name={attention}" in msg


@pytest.mark.parametrize("override,key", [
    ("model.logit_softcap=0", "model.logit_softcap"),
    ("model.logit_softcap=-3", "model.logit_softcap"),
    ("optim.decay_frac=0", "optim.decay_frac"),
    ("optim.muon_lr=-1", "optim.muon_lr"),  # with optim=muon below (adamw.yaml has no muon keys)
])
def test_invalid_option_values_name_the_key(compose, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose(NANO + ["optim=muon", override])


def test_wsd_warmup_overlapping_decay_is_refused(compose):
    compose(NANO + ["optim.schedule=wsd", "trainer.max_steps=100", "optim.warmup_steps=80"])  # just fits
    with pytest.raises(ConfigError, match=r"optim\.warmup_steps=81 .*optim\.decay_frac"):
        compose(NANO + ["optim.schedule=wsd", "trainer.max_steps=100", "optim.warmup_steps=81"])


def test_relu2_is_squared_relu_at_gelu_width(compose):
    run = compose(NANO + ["model.mlp=relu2"])
    torch.manual_seed(0)
    mlp = MLP(run.model)
    assert mlp.up.weight.shape == (int(run.model.mlp_ratio * 32), 32)
    x = torch.randn(3, 5, 32)
    h = x @ mlp.up.weight.T
    expected = (h.clamp_min(0) * h.clamp_min(0)) @ mlp.down.weight.T
    torch.testing.assert_close(mlp(x), expected, rtol=0, atol=1e-6)
    assert (h < 0).any()  # the negative half is really cut


def test_logit_softcap_formula(compose):
    c = 2.5
    base = compose(NANO)
    capped = compose(NANO + [f"model.logit_softcap={c}"])
    torch.manual_seed(0)
    m0 = build_model(base, 61)
    m1 = build_model(capped, 61)
    m1.load_state_dict(m0.state_dict())  # the cap adds no parameters
    with torch.no_grad():
        m0.lm_head.weight.mul_(50.0)  # tied: logits well beyond the cap
        m1.lm_head.weight.mul_(50.0)
    x = torch.randint(0, 61, (2, 16))
    raw, out = m0(x), m1(x)
    assert raw.abs().max() > 3 * c
    torch.testing.assert_close(out, c * torch.tanh(raw / c), rtol=0, atol=1e-6)
    assert out.abs().max() <= c  # (tanh saturates to exactly 1 in float32)


@pytest.mark.parametrize("attention,pos,on", [("mha", "rope", True), ("gqa", "rope", True), ("mqa", "alibi", True),
                                              ("mla", "rope", False), ("vq", "none", False)])
def test_qk_norm_auto_resolves_per_variant_and_the_saved_config_says_which(compose, attention, pos, on):
    """The default recipe's qk_norm=auto: on where the variant has per-head keys, off (not refused) for
    mla and vq; the validated config holds the boolean the model was built with, never 'auto'."""
    run = compose([f"attention={attention}", f"pos={pos}", "model.d_model=32", "model.n_layer=1",
                   "model.seq_len=16"])
    assert run.model.qk_norm is on
    names = {n for n, _ in build_model(run, 61).named_parameters()}
    assert ("blocks.0.attn.q_norm.weight" in names) == on
    assert compose(["model=micro", "model.qk_norm=false"]).model.qk_norm is False
    from lmlab.config import to_dict
    assert to_dict(run)["model"]["qk_norm"] is on
