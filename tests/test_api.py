"""lmlab.api on a tiny run: each function gives what the command it wraps gives."""

import io
import json

import pytest

from lmlab import api


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    from conftest import TINY

    out = tmp_path_factory.mktemp("api")
    run = api.compose(*TINY, "seed=3", f"out_dir={out}", f"cache_dir={cache_dir}")
    summary = api.train(run, log=lambda *_: None)
    return run, summary, out


def test_compose_names_the_run_as_train_py_and_reports_mistakes():
    from lmlab.config import ConfigError

    run = api.compose("model=nano", "attention=mla", "optim.lr=0.003", "trainer.num_threads=1", "out_dir=/x")
    assert run.attention.name == "mla" and run.optim.lr == 0.003 and run.model.n_layer > 0
    # group choices first, then the other overrides; keys that cannot change results left out
    assert run.run_name == "attention=mla,model=nano,optim.lr=0.003"
    assert api.compose("model=nano", "run_name=mine").run_name == "mine"
    assert api.compose(["model=nano"]).run_name == "model=nano"
    with pytest.raises(ConfigError, match="did you mean `trainer.max_steps`"):
        api.compose("trainer.max_step=10")


def test_train_load_generate(trained):
    from lmlab.cli import generate as cmd

    run, summary, out = trained
    assert summary["step"] == 6 and summary["run_dir"] == str(out / run.run_name)
    parts = run.run_name.split(",")  # named from the overrides, as train.py names it
    assert parts[:2] == ["data=pystdlib", "model=nano"]  # group choices first (a long name is cut)
    assert not any(p.startswith(("out_dir", "cache_dir", "trainer.log_every", "trainer.progress_bar")) for p in parts)
    assert json.loads((out / run.run_name / "summary.json").read_text())["val_bpb"] == summary["val_bpb"]
    m = api.load(summary["run_dir"])
    assert m.step == 6 and m.run.attention.name == run.attention.name and m.tokenizer is not None
    text = api.generate(m, "import o", max_new_tokens=12, top_k=1, stop=False)
    buf = io.StringIO()  # the command's own output for the same arguments
    cmd.main([f"ckpt={summary['run_dir']}", "prompt=import o", "max_new_tokens=12", "top_k=1", "stop=false"],
             out=buf, err=io.StringIO())
    assert text == buf.getvalue()[:-1] and len(text) > 0
    assert api.generate(summary["run_dir"], "import o", max_new_tokens=12, top_k=1, stop=False) == text
    a = api.generate(m, "def ", max_new_tokens=20, temperature=1.0, seed=5)
    assert a == api.generate(m, "def ", max_new_tokens=20, temperature=1.0, seed=5)


def test_probe_and_report(trained, tmp_path):
    run, summary, out = trained
    res = api.probe(summary["run_dir"], n_prompts=4, context_tokens=16, max_target_bytes=8, heal=False,
                    out=tmp_path / "p.json", log=lambda *_: None)
    assert "plain" in res and "heal_k1" not in res
    assert json.loads((tmp_path / "p.json").read_text())["n_pairs"] == res["n_pairs"]
    (path,) = api.report([out], out=tmp_path / "rep", x="tokens", log=lambda *_: None)
    md = path.read_text()
    assert run.run_name in md and f"{summary['val_bpb']:.4f}" in md
    assert (tmp_path / "rep" / "curves.png").stat().st_size > 5000
