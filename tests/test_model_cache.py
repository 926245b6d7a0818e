"""Commands run from another folder find the default base model prepared in this checkout."""

from pathlib import Path

from tasks.home import model_cache

CHECKOUT_CACHE = Path(__file__).resolve().parents[1] / ".loraflow" / "models"


def _prepare(folder: Path) -> Path:
    (folder / "SomeModel").mkdir(parents=True)
    (folder / "SomeModel" / "config.json").write_text("{}")
    return folder


def test_an_empty_home_falls_back_to_the_checkout_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("LORAFLOW_MODEL_CACHE", raising=False)
    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "elsewhere" / ".loraflow"))
    prepared = any(CHECKOUT_CACHE.glob("*/config.json"))
    expected = CHECKOUT_CACHE if prepared else tmp_path / "elsewhere" / ".loraflow" / "models"
    assert model_cache() == expected.resolve()


def test_a_home_with_its_own_models_and_the_env_variable_win(tmp_path, monkeypatch):
    monkeypatch.delenv("LORAFLOW_MODEL_CACHE", raising=False)
    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "home"))
    own = _prepare(tmp_path / "home" / "models")
    assert model_cache() == own.resolve()
    monkeypatch.setenv("LORAFLOW_MODEL_CACHE", str(tmp_path / "explicit"))
    assert model_cache() == (tmp_path / "explicit").resolve()
