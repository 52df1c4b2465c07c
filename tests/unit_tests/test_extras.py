"""The core install works without any extra, and each extra's feature names its extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pastalib import MissingExtraError, PastaError
from pastalib._extras import EXTRAS, require

ROOT = Path(__file__).resolve().parents[2]


def test_require_returns_the_module_or_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert require("json") is json
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    with pytest.raises(MissingExtraError) as caught:
        require("matplotlib.pyplot")
    error = caught.value
    assert isinstance(error, PastaError) and isinstance(error, ImportError)
    assert error.extra == "plots" and error.module == "matplotlib.pyplot"
    assert 'pip install "langchain-pasta[plots]"' in str(error)
    with pytest.raises(KeyError, match="No extra is registered"):
        require("surely_not_a_module_here")
    with pytest.raises(MissingExtraError, match=r"langchain-pasta\[grammar\]"):
        require("surely_not_a_module_here", "grammar")


def test_every_extra_is_declared() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    core = " ".join(project["dependencies"])
    for module, extra in EXTRAS.items():
        assert any(req.startswith(module) for req in extras[extra]), (module, extra)
        assert module not in core
    assert extras["all"] == [f"langchain-pasta[{','.join(sorted(set(EXTRAS.values())))}]"]


# Runs with every optional module blocked, as after `pip install langchain-pasta` alone.
WITHOUT_EXTRAS = """
import contextlib, io, json, sys
BLOCKED = {blocked}
for name in BLOCKED:
    sys.modules[name] = None

import importlib, pkgutil
import torch
import langchain_pasta
import pastalib

# Every core module imports without the harness (the shims are the old harness paths).
SHIMS = {{"pastalib.cli", "pastalib.evaluation", "pastalib.plots", "pastalib.profiling"}}
core = [
    info.name
    for info in pkgutil.iter_modules(pastalib.__path__, "pastalib.")  # lists, imports nothing
    if info.name not in {{"pastalib.harness", "pastalib.tasks"}} | SHIMS
]
for name in core:
    importlib.import_module(name)
core_loads_harness = sorted(name for name in sys.modules if name.startswith("pastalib.harness"))

import pastalib.harness, pastalib.harness.evaluation, pastalib.harness.profiling
from pastalib import PASTA, MissingExtraError
from tests.tiny import tiny_model, tiny_tokenizer

report = {{"core": core, "core_loads_harness": core_loads_harness}}
model, tokenizer = tiny_model("llama", "sdpa", torch.float32), tiny_tokenizer()
pasta = PASTA(model, tokenizer, {{1: [0, 2]}}, alpha=0.01)
text = "Mary is a doctor. Answer the occupation of Mary as json format."
spans = [[(text.index("Answer"), len(text))]]
inputs, offsets = pasta.inputs_from_batch([text])
with torch.no_grad():
    plain = model(**inputs).logits
    with pasta.steer_spans(inputs, offsets, spans):
        steered = model(**inputs).logits
report["steering_changes_logits"] = not torch.allclose(plain, steered)
report["generated"] = len(pasta.generate([text], spans, max_new_tokens=3)) == 1


def failure(call):
    try:
        call()
    except MissingExtraError as error:
        return [error.extra, str(error)]
    except Exception as error:
        return ["other", repr(error)]
    return ["no error", ""]


def run_console_script():
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            pastalib.harness.main()
        except SystemExit as exit:
            return [exit.code, stderr.getvalue()]
    return [None, stderr.getvalue()]


from pastalib.harness.plots import AttentionShare, plot_attention_share
zeros = torch.zeros(2, 2)
report["cli"] = failure(lambda: __import__("pastalib.cli"))
report["harness_cli"] = failure(lambda: __import__("pastalib.harness.cli"))
report["console_script"] = run_console_script()
report["plots"] = failure(
    lambda: plot_attention_share(AttentionShare(zeros, zeros, zeros.bool()), "x.png")
)
report["results_table"] = failure(
    lambda: pastalib.harness.evaluation.results_table({{"settings": {{"conditions": []}}}})
)
from pastalib._extras import require
report["gguf"] = failure(lambda: require("gguf"))
report["grammar"] = failure(lambda: require("llguidance"))
import importlib.util
if importlib.util.find_spec("pastalib.harness.gguf") is not None:
    # The GGUF path itself, once the converter lives in pastalib.harness.gguf.
    from pathlib import Path
    fake = Path(sys.argv[1]) / "model.gguf"
    fake.write_bytes(b"GGUF")
    def load():
        try:
            pastalib.models.load_model(fake)
        except pastalib.PastaError as error:
            raise MissingExtraError("gguf", "gguf") if "langchain-pasta[gguf]" in str(error) else error
    import pastalib.models
    report["gguf_load"] = failure(load)
print("REPORT" + json.dumps(report))
"""


def test_core_works_without_any_extra(tmp_path: Path) -> None:
    script = WITHOUT_EXTRAS.format(blocked=sorted(EXTRAS))
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PASTA_CACHE_DIR": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1",
        },
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.split("REPORT", 1)[1])
    assert {"pastalib.pasta", "pastalib.chat", "pastalib.heads"} <= set(report["core"])
    assert report["core_loads_harness"] == []
    assert report["steering_changes_logits"] and report["generated"]
    for key, extra in (
        ("cli", "cli"),
        ("harness_cli", "cli"),
        ("plots", "plots"),
        ("results_table", "cli"),
        ("gguf", "gguf"),
        ("grammar", "grammar"),
    ):
        assert report[key][0] == extra, (key, report[key])
        assert f'pip install "langchain-pasta[{extra}]"' in report[key][1], (key, report[key])
    if "gguf_load" in report:
        assert report["gguf_load"][0] == "gguf", report["gguf_load"]
    code, stderr = report["console_script"]
    assert code == 2, report["console_script"]
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert 'pip install "langchain-pasta[cli]"' in stderr
