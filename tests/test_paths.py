from pathlib import Path

from workbench.paths import ENV_VAR, home, subdir


def test_home_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "wb"))
    assert home() == tmp_path / "wb"
    assert subdir("models", "x") == tmp_path / "wb" / "models" / "x"
    assert (tmp_path / "wb" / "models" / "x").is_dir()


def test_default_home_is_per_user(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert home() == tmp_path / "internvl-workbench"


def test_importing_the_package_has_no_side_effects(tmp_path):
    import subprocess
    import sys

    code = "import sys, workbench; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print(workbench.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"WORKBENCH_HOME": str(tmp_path / "h"), "PATH": ""}, check=True)
    assert "load" in out.stdout
    assert not Path(tmp_path / "h").exists()  # nothing created just by importing
