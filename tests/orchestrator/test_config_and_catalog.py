"""Settings (RAM tiers, precedence), the model catalog's doors to the filesystem, state files."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from mlxtrio import Config, ErrorKind, ServerError
from mlxtrio._config import GB, ram_tier
from mlxtrio._state_files import write_atomically
from mlxtrio.orchestrator import ModelCatalog


@pytest.mark.parametrize(
    ("ram", "expected"),
    [
        (128 * GB, (">=64GB", 600.0, 600.0, 108 * GB)),
        (64 * GB, (">=64GB", 600.0, 600.0, 44 * GB)),
        (32 * GB, ("24-63GB", 300.0, 300.0, 24 * GB)),
        (24 * GB, ("24-63GB", 300.0, 300.0, 16 * GB)),
        (16 * GB, ("<24GB", 180.0, 180.0, 12 * GB)),
    ],
)
def test_ram_tiers(ram, expected):
    tier = ram_tier(ram)
    assert (tier.name, tier.idle_timeout, tier.request_timeout, tier.memory_budget_bytes) == expected


def test_flags_override_environment_which_overrides_the_tier():
    env = {"MLX_PORT": "9000", "MLX_IDLE_TIMEOUT": "42", "MLX_MODEL": "/models/x", "HF_HOME": "/hf"}
    config = Config.from_environment(env, port=9100)
    assert config.port == 9100  # flag
    assert config.idle_timeout == 42.0  # environment
    assert config.request_timeout == ram_tier(config.ram_bytes).request_timeout  # tier
    assert config.model == "/models/x"
    assert config.hf_hub_cache == Path("/hf/hub")
    assert (config.host, config.admin_host) == ("127.0.0.1", "127.0.0.1")  # loopback by default
    described = config.describe()
    assert described["ram_tier"] == config.ram_tier and described["hf_hub_cache"] == "/hf/hub"


def _cache_repo(hub: Path, repo_id: str, *, weights: bool = True) -> Path:
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text("{}")
    if weights:
        (snapshot / "model.safetensors").write_bytes(b"")
    return snapshot


def test_catalog_resolves_only_allowed_models(tmp_path):
    hub = tmp_path / "hub"
    snapshot = _cache_repo(hub, "mlx-community/tiny")
    local = tmp_path / "mymodel"
    local.mkdir()
    catalog = ModelCatalog(Config.from_environment({}, hf_hub_cache=hub, model=str(local)))
    assert catalog.resolve("demo").source == "demo"
    assert catalog.resolve("demo-vision").source == "demo-vision"
    assert catalog.resolve(str(local)).location == str(local.resolve())
    assert catalog.resolve("mlx-community/tiny").location == str(snapshot)
    assert [entry.id for entry in catalog.list()] == ["demo", "demo-vision", "demo-embed", "demo-embed-decoder", str(local), "mlx-community/tiny"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    for hostile in [str(outside), "../outside", "mlx-community/../../outside", "/etc", "a/b/c", "mlx-community/tiny/.."]:
        with pytest.raises(ServerError) as caught:
            catalog.resolve(hostile)
        assert caught.value.kind is ErrorKind.NOT_FOUND


def test_the_vision_demo_is_built_in_and_may_be_the_default_model(tmp_path):
    catalog = ModelCatalog(Config.from_environment({}, hf_hub_cache=tmp_path / "hub", model="demo-vision"))
    catalog.check_configured()
    assert catalog.default_model == "demo-vision"
    entry = catalog.resolve("demo-vision")
    assert (entry.source, entry.location, entry.weights_bytes) == ("demo-vision", "", 0)
    assert "vision" in entry.description
    assert catalog.worker_config(entry).source == "demo-vision"
    assert [entry.id for entry in catalog.list()] == ["demo", "demo-vision", "demo-embed", "demo-embed-decoder"]


def test_catalog_refuses_cache_links_that_lead_out_of_the_cache(tmp_path):
    hub = tmp_path / "hub"
    snapshot = _cache_repo(hub, "evil/model")
    (snapshot / "config.json").unlink()
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "config.json").write_text("{}")
    os.symlink(secret / "config.json", snapshot / "config.json")
    catalog = ModelCatalog(Config.from_environment({}, hf_hub_cache=hub))
    with pytest.raises(ServerError):
        catalog.resolve("evil/model")


def test_downloads_only_when_allowed(tmp_path):
    closed = ModelCatalog(Config.from_environment({}, hf_hub_cache=tmp_path))
    with pytest.raises(ServerError):
        closed.resolve("someone/model")
    opened = ModelCatalog(Config.from_environment({}, hf_hub_cache=tmp_path, allow_downloads=True))
    assert opened.resolve("someone/model").source == "hub"
    with pytest.raises(ServerError):
        opened.resolve("../someone")


def test_state_files_are_atomic_and_owner_only(tmp_path):
    target = tmp_path / "deep" / "status.json"
    old_umask = os.umask(0)
    try:
        write_atomically(target, b"one")
        write_atomically(target, b"two")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [path.name for path in target.parent.iterdir()] == ["status.json"]  # no temporary left


def test_a_directory_name_is_a_short_name_unless_two_models_share_it(tmp_path, caplog):
    from mlxtrio._config import ModelSettings

    for name in ("a/mymodel", "b/mymodel", "c/other", "d/tiny"):
        (tmp_path / name).mkdir(parents=True)
    config = Config.from_environment(
        {},
        hf_hub_cache=tmp_path / "hub",
        model=str(tmp_path / "a" / "mymodel"),
        models=(
            ModelSettings(name="twin", path=str(tmp_path / "b" / "mymodel")),
            ModelSettings(name="other-alias", path=str(tmp_path / "c" / "other")),
            # An explicit alias named as another model's directory: the alias wins.
            ModelSettings(name="other", path=str(tmp_path / "d" / "tiny")),
            ModelSettings(name="hub", path="someone/not-cached"),
        ),
    )
    with caplog.at_level(logging.INFO, "mlxtrio"):
        catalog = ModelCatalog(config)
        catalog.log_configured()
    assert catalog.resolve("tiny").id == "other"
    assert catalog.resolve("other").id == "other"
    with pytest.raises(ServerError):
        catalog.resolve("mymodel")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("'mymodel'" in line and "twin" in line and str(tmp_path / "a" / "mymodel") in line for line in warnings), warnings
    assert any("someone/not-cached" in line and "--allow-downloads" in line for line in warnings), warnings


def test_a_404_lists_what_exists_up_to_a_bound(tmp_path):
    from mlxtrio._config import ModelSettings

    for index in range(14):
        (tmp_path / f"model-{index:02}").mkdir()
    # A cached repository is not listed: reading the cache's tree is not work any request may cause.
    hub = tmp_path / "hub"
    _cache_repo(hub, "org/cached")
    models = tuple(ModelSettings(name=f"alias-{index:02}", path=str(tmp_path / f"model-{index:02}")) for index in range(14))
    catalog = ModelCatalog(Config.from_environment({}, hf_hub_cache=hub, models=models))
    with pytest.raises(ServerError) as caught:
        catalog.resolve("nope")
    message = caught.value.message
    # The operator's models first: the built-in demos come after them, here past the first eight.
    assert "'alias-00'" in message and "'alias-07'" in message and "and 10 more" in message, message
    assert "'alias-08'" not in message and "'demo'" not in message and "org/cached" not in message
