"""What `pip install .` gets: a wheel with the configs, the license and the commands, that runs from any folder;
and exports whose warmup records need no ``tensorflow-serving-api`` (an optional extra)."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from test_export import MAX_LEN, TOP_K, make_encoder

import mdcns_tf  # noqa: F401
from mdcns_tf import shipped_configs
from mdcns_tf.savedmodel import publish, signatures, warmup

# What the wheel is built from: the package folders and the files pyproject.toml names.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "mdcns_tf", "pipeline", "serving", "benchmarks")
# Top-level packages a user gets; benchmarks and the analysis of other projects' logs stay in the checkout.
INSTALLED_PACKAGES = {"mdcns_tf", "pipeline", "serving"}
SCRIPTS = (
    "mdcns-preprocess",
    "mdcns-train",
    "mdcns-evaluate",
    "mdcns-recommend",
    "mdcns-export",
    "mdcns-serving-client",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The project's wheel, built from a copy of the sources (a build in the checkout would write build/ and
    egg-info under the feet of whoever else works there)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.egg-info")
    for name in SOURCES:
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    os.symlink(os.path.join("mdcns_tf", "configs"), source / "configs")
    command = ["nice", "-n", "19", sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*command, "--quiet", "-w", str(root / "dist"), str(source)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = os.listdir(root / "dist")
    return str(root / "dist" / built)


def test_the_wheel_ships_configs_license_metadata_and_commands(wheel: str):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        metadata = email.message_from_bytes(archive.read(f"{dist_info}/METADATA"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        licenses = [n for n in names if n.startswith(dist_info) and os.path.basename(n) == "LICENSE"]
        assert licenses, sorted(n for n in names if n.startswith(dist_info))
        with open(os.path.join(REPO, "LICENSE"), "rb") as f:
            license_text = f.read()
        assert archive.read(licenses[0]) == license_text and b"Apache License" in license_text
    shipped = {f"mdcns_tf/configs/{name}.yaml" for name in shipped_configs.names()}
    assert len(shipped) >= 20 and shipped <= names, sorted(shipped - names)
    assert metadata["Requires-Python"].replace(" ", "") in (">=3.11,<3.13", "<3.13,>=3.11")
    assert metadata["License-Expression"] == "Apache-2.0"
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == INSTALLED_PACKAGES, top_level
    for script in SCRIPTS:
        assert f"{script} = " in entry_points, script


def test_the_installed_package_runs_from_any_folder(wheel: str, tmp_path):
    """Installed (not editable) into a folder of its own: the commands start, and configs resolve by name and by the
    documented configs/... path from a folder that has no configs/."""
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), wheel],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # PYTHONPATH comes before the checkout's editable install on sys.path: the installed copy is the one imported.
    env = {**os.environ, "PYTHONPATH": str(target)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    help_text = subprocess.run(
        [str(target / "bin" / "mdcns-train"), "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    assert help_text.stdout.startswith("usage: mdcns-train ")
    code = (
        "from mdcns_tf import shipped_configs, train\n"
        "print(shipped_configs.CONFIG_DIR)\n"
        "print(shipped_configs.resolve('configs/quickstart.yaml'))\n"
        "print(train.resolve_config('quickstart', []).output_dir)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    config_dir, quickstart, output_dir = done.stdout.split()
    assert config_dir == str(target / "mdcns_tf" / "configs")
    assert quickstart == os.path.join(config_dir, "quickstart.yaml")
    assert output_dir == "runs/quickstart"


# --- warmup records without tensorflow-serving-api --------------------------------------------------------------


def test_warmup_records_match_tensorflow_serving_byte_for_byte():
    pytest.importorskip("tensorflow_serving.apis", reason="the reference message classes are an extra")
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    inputs = {"item_ids": tf.make_tensor_proto(np.arange(24, dtype=np.int32).reshape(2, 12))}
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="mdcns", signature_name="serve_keys"))
    request.inputs["item_ids"].CopyFrom(inputs["item_ids"])
    reference = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    ours = warmup.encode_prediction_log("mdcns", "serve_keys", {k: v.SerializeToString() for k, v in inputs.items()})
    assert ours == reference.SerializeToString()
    assert prediction_log_pb2.PredictionLog.FromString(ours) == reference
    # Several inputs (map order is not fixed on the wire): the parsed messages agree.
    two = {
        "a": tf.make_tensor_proto([1.0, 2.0]).SerializeToString(),
        "b": tf.make_tensor_proto([b"x"]).SerializeToString(),
    }
    parsed = prediction_log_pb2.PredictionLog.FromString(warmup.encode_prediction_log("m", "s", two))
    assert {k: v.SerializeToString() for k, v in parsed.predict_log.request.inputs.items()} == two
    # And the reader reads what the reference classes write.
    assert warmup.decode_prediction_log(reference.SerializeToString()) == (
        "mdcns",
        "serve_keys",
        {"item_ids": inputs["item_ids"].SerializeToString()},
    )


def test_an_export_without_tensorflow_serving_api_has_its_warmup(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorflow_serving" or m.startswith("tensorflow_serving.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorflow_serving", None)  # `import tensorflow_serving` now fails
    with pytest.raises(ImportError):
        import tensorflow_serving  # noqa: F401
    path = publish.export_saved_model(make_encoder(), str(tmp_path), "m", MAX_LEN, TOP_K, verify=False)
    requests = warmup.read_warmup(os.path.join(path, signatures.WARMUP_FILE))
    assert {signature for signature, _ in requests} == set(signatures.SIGNATURES)
    assert warmup.replay_warmup(path) == len(requests)


def test_decode_refuses_other_records():
    with pytest.raises(ValueError):
        warmup.decode_prediction_log(b"\x0a\x00")  # a PredictionLog with log_metadata only
    with pytest.raises(ValueError):
        warmup.decode_prediction_log(b"\x32\x05\x0a")  # truncated
