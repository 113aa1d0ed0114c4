import hashlib

from workbench import tiny


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_build_is_deterministic(tmp_path):
    a, b = tiny.build(tmp_path / "a"), tiny.build(tmp_path / "b")
    assert _digest(a) == _digest(b)
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "processor_config.json"} <= set(_digest(a))
    assert (a / "model.safetensors").stat().st_size < 2_000_000, "small enough for fast CPU tests"


def test_special_tokens_are_single_ids(tiny):
    tok = tiny.tokenizer
    ids = tok("<ref>a</ref><box>[[1, 20, 300, 1000]]</box>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<ref>")
    assert tok.decode(ids) == "<ref>a</ref><box>[[1, 20, 300, 1000]]</box>"
    digits = tok("1000", add_special_tokens=False)["input_ids"]
    assert len(digits) == 4, "digits are tokenised one by one"


def test_ensure_built_reuses_the_folder(workbench_home):
    first = tiny.ensure_built()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure_built() == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert first.parent == workbench_home / "models"
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".tiny")], "no temp folders left"
