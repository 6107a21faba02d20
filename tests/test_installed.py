"""The package as a user installs it: the wheel built from this checkout, installed (not editable)
into a fresh virtual environment, run from a directory outside the checkout, finding its shipped
configs through importlib.resources.

Two modes. By default the environment sees the already installed dependencies and installs the
wheel alone (seconds, no registry): it is made with --system-site-packages, and a .pth file in it
names every folder on the test interpreter's sys.path outside the checkout: when pytest itself runs
in a virtual or conda environment, the new environment's "system" is the base interpreter, which
lacks that environment's packages. Those folders come after the environment's own site-packages and
the checkout is left out, so the checkout's editable install stays out of the way (the test checks
where mixvlp_ds is imported from). With MIXVLP_WHEEL_TEST=bare
(what .ci/run sets) the environment is bare and installed as the README's "Install from a wheel"
says: the CPU torch first, then the wheel with its dependencies constrained to it (a registry, or
pip's cache, is needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path, timeout: int = 300) -> str:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", DS_BUILD_OPS="0",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_wheel_installs_and_runs_from_any_directory(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources it builds
    src = tmp_path / "src"
    patterns = shutil.ignore_patterns(".git", "build", "dist", "runs", "shards", ".whl", "*.egg-info",
                                      "__pycache__", ".*_cache")

    def ignore(folder, names):   # and the fetched real test data, data/real/
        return set(patterns(folder, names)) | ({"real"} if Path(folder) == REPO / "data" else set())

    shutil.copytree(REPO, src, symlinks=True, ignore=ignore)
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
        str(tmp_path / "dist"), str(src)], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("mixvlp_ds-*.whl"))
    venv = tmp_path / "venv"
    py, bin_ = venv / "bin" / "python", venv / "bin"
    if os.environ.get("MIXVLP_WHEEL_TEST") == "bare":
        sh([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
        sh([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], cwd=tmp_path, timeout=900)
        sh([str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(wheel)],
           cwd=tmp_path, timeout=1800)
    else:
        sh([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
        # the running interpreter's packages too (a venv's python makes a venv of its base interpreter)
        purelib = sh([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=tmp_path).strip().splitlines()[-1]
        outer = [d for d in sys.path if d and Path(d).is_dir() and not Path(d).resolve().is_relative_to(REPO)]
        (Path(purelib) / "zz_test_interpreter.pth").write_text("".join(d + "\n" for d in outer))
        sh([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall",
            str(wheel)], cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = sh([str(py), "-c", "import mixvlp_ds.shipped as s; print(s.__file__); "
                               "print(s.resolve('ds_configs/zero2.json', 'ds_configs'))"], cwd=work)
    assert str(venv) in where.splitlines()[0] and str(REPO) not in where
    assert where.splitlines()[1].endswith("mixvlp_ds/shipped/ds_configs/zero2.json")
    for script in ("shard", "tokenizer", "pretrain", "finetune", "evaluate", "sweep", "quickstart"):
        assert (bin_ / f"mixvlp-{script}").is_file(), script
    # the main job at a tenth of its size, then pre-training through the console script with the
    # shipped run config and the shipped bf16 DeepSpeed config, both named as a user types them
    out = sh([str(py), "-m", "mixvlp_ds", "quickstart", "--scale", "0.05", "--steps", "20", "--out", "qs"],
             cwd=work)
    assert "| img_only |" in out and (work / "qs" / "pretrain" / "model" / "config.json").is_file()
    out = sh([str(bin_ / "mixvlp-pretrain"), "--config", "configs/tiny_cpu.yaml", "--deepspeed_config",
              "ds_configs/zero2.json", "tokenizer=qs/tokenizer", "data.sources.0.uri=shards/mimic-like",
              "data.sources.1.uri=shards/nih-like", "train.steps=4", "train.output_dir=run",
              "train.progress=false"], cwd=work)
    assert "bf16, ZeRO stage 2" in out and (work / "run" / "model" / "model.safetensors").is_file()
    # a failing program exits non-zero with one line
    proc = subprocess.run([str(bin_ / "mixvlp-evaluate"), "--task", "cls", "--model", "nowhere", "--shards",
                           "x", "--out", "ev"], cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: nowhere: no head.json")
