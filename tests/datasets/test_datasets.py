"""Whole datasets (issue 19): attribute_dataset, AttributionStore, evaluate_dataset and the
dataset commands.

* a ``torchrun --nproc_per_node=2`` run (gloo, CPU) equals a one-process run bit for bit,
  every image exactly once, each rank computing its own shards;
* a run killed mid-way (SIGKILL) or stopped by a failure after k shards resumes to the same
  result without recomputing (or re-reading) finished shards; torn journal lines and stale
  temporary files are handled;
* bad input (unreadable images, non-image files, mixed sizes, a foreign output folder, bad
  arguments) gives clear errors or a logged skip list;
* the stored maps and records equal direct calls of the methods (RAP, LRP, CD with a
  feature mask, Captum's Saliency and IntegratedGradients), the store reads lazily, and the
  dataset evaluation equals ``region_perturbation`` on the whole dataset.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import captum_rap.datasets._shards as S
from _datasets_worker import Crash, Images, tiny_cnn
from captum_rap import CD, LRP, RAP
from captum_rap._compat import GradientAttribution
from captum_rap.datasets import AttributionStore, ImageFiles, attribute_dataset, evaluate_dataset, summary_table
from captum_rap.datasets import cli as dcli
from captum_rap.datasets._common import ProcessGroup, my_shards
from captum_rap.metrics import region_perturbation
from captum_rap.zoo import FMNIST_MEAN, FMNIST_STD, fashion_mnist_test_subset

WORKER = str(Path(__file__).resolve().parents[1] / "_datasets_worker.py")  # tests/_datasets_worker.py
FORMATS = ["npz"] + (["safetensors"] if S.have_safetensors() else [])
N, SHARD, BATCH = 36, 8, 4          # 5 shards: 8, 8, 8, 8, 4 images


def env1():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def run_worker(out, *extra, torchrun=False, timeout=240):
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else [])
    cmd += [WORKER, str(out), "--evaluate", "--images", str(N), "--shard-size", str(SHARD), "--batch-size", str(BATCH),
            *extra]
    p = subprocess.run(cmd, env=env1(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


def everything(out):
    """id -> (map, record) of a finished run."""
    store = AttributionStore(out)
    return {i: store[i] for i in store.ids()}


def assert_same_run(a, b):
    ra, rb = everything(a), everything(b)
    assert list(ra) == list(rb)
    for i in ra:
        assert torch.equal(ra[i][0], rb[i][0]), f"map of image {i} differs"
        assert ra[i][1] == rb[i][1], f"record of image {i} differs"


def journal_entries(out):
    rows = []
    for p in sorted(glob.glob(os.path.join(out, "journal", "*.jsonl"))):
        with open(p) as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    return rows


def small(n=20):
    return Images(n)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    run_worker(out)
    return out


# --------------------------------------------------------------------------- torchrun
def test_torchrun_two_ranks_equal_one_process_bit_for_bit(single_run, tmp_path):
    out = tmp_path / "two"
    run_worker(out, torchrun=True)
    store = AttributionStore(out)
    assert store.ids() == [str(i) for i in range(N)]               # every image, once, in order
    assert_same_run(single_run, out)
    # each rank wrote its own shards (k % 2), once; no shard twice
    by_rank = {}
    for e in journal_entries(out):
        by_rank.setdefault(e["rank"], []).append(e["shard"])
    assert sorted(by_rank[0]) == [0, 2, 4] and sorted(by_rank[1]) == [1, 3]
    # each rank read its own images (plus the first item, for the run's identity)
    info = [json.load(open(out / f"worker-rank{r}.json")) for r in (0, 1)]
    assert [i["reads"] for i in info] == [8 + 8 + 4 + 1, 8 + 8 + 1]
    assert [i["world_size"] for i in info] == [2, 2]
    # the distributed evaluation equals the one-process evaluation
    (ev1,) = glob.glob(str(single_run / "evaluation" / "*" / "results.csv"))
    (ev2,) = glob.glob(str(out / "evaluation" / "*" / "results.csv"))
    assert open(ev1).read() == open(ev2).read()
    assert info[0]["evaluation"] == info[1]["evaluation"]


def test_split_is_distributed_sampler_interleaving_without_padding():
    for world in (1, 2, 3, 5):
        parts = [my_shards(11, ProcessGroup(r, world, True)) for r in range(world)]
        assert sorted(k for p in parts for k in p) == list(range(11))
        assert parts[0] == list(range(0, 11, world))
    assert my_shards(11, ProcessGroup(1, 3, True), done=[4]) == [1, 7, 10]


# --------------------------------------------------------------------------- interruption
def test_killed_run_resumes_to_the_same_result_without_recomputing(single_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, WORKER, str(out), "--images", str(N), "--shard-size", str(SHARD), "--batch-size", str(BATCH),
           "--slow", "0.1"]
    p = subprocess.Popen(cmd, env=env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(journal_entries(out)) < 2 and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = sorted(e["shard"] for e in journal_entries(out))
    assert 2 <= len(done) < 5, done
    assert not (out / "summary.json").exists()
    with pytest.raises(ValueError, match="not finished"):
        AttributionStore(out)
    stats = {k: os.stat(out / S.shard_name(k, json.load(open(out / "run.json"))["identity"]["settings"]["format"]))
             for k in done}
    run_worker(out)
    info = json.load(open(out / "worker-rank0.json"))
    assert info["shards_reused"] == len(done) and info["shards_computed"] == 5 - len(done)
    sizes = [8, 8, 8, 8, 4]
    assert info["reads"] == sum(sizes[k] for k in range(5) if k not in done) + 1
    fmt = AttributionStore(out).format
    for k, st in stats.items():   # finished shard files were not rewritten
        now = os.stat(out / S.shard_name(k, fmt))
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert_same_run(single_run, out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_failure_after_k_shards_resumes_and_counts(tmp_path, fmt):
    model = tiny_cnn()
    kw = dict(batch_size=BATCH, shard_size=SHARD, format=fmt, progress=False)
    ref = attribute_dataset(RAP(model), small(N), tmp_path / "ref", **kw)
    assert ref.shards_computed == 5 and ref.images_computed == N
    out = tmp_path / "out"
    with pytest.raises(Crash):
        attribute_dataset(RAP(model), Images(N, crash_at=2 * SHARD + 1), out, **kw)
    assert sorted(e["shard"] for e in journal_entries(out)) == [0, 1]
    # a torn journal line (a writer killed mid-line) and a stale temporary file
    with open(S.journal_path(str(out), 0, 1), "a") as fh:
        fh.write('{"shard": 2, "file": "shards/shard-000002.npz", "by')
    (out / "shards" / ".shard-000002.npz.tmp-1-dead").write_bytes(b"partial")
    ds = small(N)
    again = attribute_dataset(RAP(model), ds, out, **kw)
    assert (again.shards_reused, again.shards_computed) == (2, 3)
    assert ds.reads == N - 2 * SHARD + 1                      # finished shards' images were not read
    assert not list((out / "shards").glob(".*tmp*"))
    assert_same_run(tmp_path / "ref", out)
    # a finished run called again recomputes nothing
    third = attribute_dataset(RAP(model), small(N), out, **kw)
    assert (third.shards_computed, third.shards_reused, third.images_computed) == (0, 5, 0)
    assert_same_run(tmp_path / "ref", out)


def test_merge_refuses_duplicates_and_gaps(tmp_path):
    model = tiny_cnn()
    out = tmp_path / "out"
    attribute_dataset(RAP(model), small(16), out, batch_size=4, shard_size=8, progress=False)
    entries = journal_entries(out)
    jp = S.journal_path(str(out), 0, 1)
    # a shard that claims an image of another shard: some image twice
    dup = dict(entries[1])
    dup["images"] = dup["images"] + [entries[0]["images"][0]]
    with open(jp, "w") as fh:
        fh.write(json.dumps(entries[0]) + "\n" + json.dumps(dup) + "\n")
    with pytest.raises(RuntimeError, match="exactly once"):
        S.merge_manifest(str(out), 16, 2, {})
    # a missing shard
    with open(jp, "w") as fh:
        fh.write(json.dumps(entries[0]) + "\n")
    with pytest.raises(RuntimeError, match="no finished record"):
        S.merge_manifest(str(out), 16, 2, {})


# --------------------------------------------------------------------------- bad input
def write_pngs(folder, n, size=28, start=0):
    from PIL import Image

    imgs, _ = fashion_mnist_test_subset()
    os.makedirs(folder, exist_ok=True)
    for i in range(start, start + n):
        img = imgs[i].numpy()
        if size != 28:
            img = np.pad(img, ((0, size - 28), (0, size - 28)))
        Image.fromarray(img).save(os.path.join(folder, f"img{i:03d}.png"))


def grey(img):
    """HWC uint8 (grey in RGB) -> (1, H, W) as fmnist_preprocess, any size."""
    return (torch.from_numpy(img[..., 0].copy()).float()[None] / 255.0 - FMNIST_MEAN) / FMNIST_STD


def test_unreadable_and_non_image_files_are_listed_and_logged(tmp_path, caplog):
    src = tmp_path / "imgs"
    write_pngs(src, 10)
    good = (src / "img003.png").read_bytes()
    (src / "img004.png").write_bytes(good[: len(good) // 2])        # truncated
    (src / "notes.txt").write_text("not an image")
    model = tiny_cnn()
    ds = ImageFiles(src, transform=grey)
    with pytest.warns(UserWarning, match="2 of 11 images were skipped"):
        run = attribute_dataset(RAP(model), ds, tmp_path / "out", batch_size=4, shard_size=4, progress=False)
    store = run.store()
    skipped = {r["id"]: r["reason"] for r in store.skipped}
    assert set(skipped) == {"img004.png", "notes.txt"}
    assert "not an image file" in skipped["notes.txt"] and "cannot read image" in skipped["img004.png"]
    assert sorted(store.ids() + list(skipped)) == sorted(ds.ids)      # every file exactly once
    assert run.summary["n_skipped"] == 2 and run.summary["n_attributed"] == 9
    assert "notes.txt" in caplog.text and "img004.png" in caplog.text
    with pytest.raises(ValueError, match="img004.png"):
        attribute_dataset(RAP(model), ds, tmp_path / "raise", batch_size=4, on_error="raise", progress=False)


def test_no_readable_image_is_an_error(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.txt").write_text("x")
    with pytest.raises(ValueError, match="none of the 3 items"):
        attribute_dataset(RAP(tiny_cnn()), ImageFiles(src, transform=grey), tmp_path / "out", progress=False)


@pytest.mark.parametrize("batch_size", [8, 1])
def test_mixed_sizes_without_resize_is_a_clear_error(tmp_path, batch_size):
    src = tmp_path / "imgs"
    write_pngs(src, 3)
    write_pngs(src, 2, size=32, start=3)
    model = tiny_cnn()
    with pytest.raises(ValueError, match=r"different shapes: 'img000.png' is \(1, 28, 28\), 'img003.png' is "
                                         r"\(1, 32, 32\).*resize"):
        attribute_dataset(RAP(model), ImageFiles(src, transform=grey), tmp_path / "o", batch_size=batch_size,
                          progress=False)
    run = attribute_dataset(RAP(model), ImageFiles(src, transform=grey, size=28), tmp_path / "r",
                            batch_size=batch_size, progress=False)
    assert run.summary["n_attributed"] == 5


def test_output_folder_of_another_run_is_an_error(tmp_path):
    model, ds = tiny_cnn(), small(8)
    out = tmp_path / "out"
    kw = dict(batch_size=4, shard_size=4, progress=False)
    attribute_dataset(RAP(model), ds, out, **kw)
    with pytest.raises(ValueError, match=r"belongs to another run \(different method"):
        attribute_dataset(LRP(model, "epsilon_plus"), ds, out, **kw)
    with pytest.raises(ValueError, match=r"different method.*stabilizer"):
        attribute_dataset(RAP(model, stabilizer=1e-3), ds, out, **kw)
    other = tiny_cnn()
    with torch.no_grad():
        other[0].bias.add_(1e-3)
    with pytest.raises(ValueError, match=r"different model"):
        attribute_dataset(RAP(other), ds, out, **kw)
    with pytest.raises(ValueError, match=r"different target"):
        attribute_dataset(RAP(model), ds, out, target="label", **kw)
    with pytest.raises(ValueError, match=r"different settings.*shard_size"):
        attribute_dataset(RAP(model), ds, out, batch_size=4, shard_size=8, progress=False)
    with pytest.raises(ValueError, match=r"different dataset"):
        attribute_dataset(RAP(model), small(9), out, **kw)
    # the foreign run is untouched; overwrite replaces it
    assert AttributionStore(out).identity["method"]["class"].endswith(".RAP")
    attribute_dataset(LRP(model, "epsilon_plus"), ds, out, overwrite=True, **kw)
    assert AttributionStore(out).identity["method"]["class"].endswith(".LRP")
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no attribute_dataset run.*thesis.tex"):
        attribute_dataset(RAP(model), ds, user, **kw)
    with pytest.raises(ValueError, match="names a file"):
        attribute_dataset(RAP(model), ds, user / "thesis.tex", **kw)


def test_arguments_are_validated(tmp_path):
    model, ds = tiny_cnn(), small(4)
    folders = iter(range(1000))

    def fresh():
        return str(tmp_path / f"o{next(folders)}")

    def call(**kw):
        return attribute_dataset(RAP(model), ds, fresh(), progress=False, **kw)

    with pytest.raises(TypeError, match="shard_sise"):
        call(shard_sise=4)
    for kw, name in [({"batch_size": 0}, "batch_size"), ({"shard_size": -1}, "shard_size"),
                     ({"shard_size": 2.5}, "shard_size"), ({"num_workers": -1}, "num_workers"),
                     ({"target": "pred"}, "target"), ({"target": -2}, "target"), ({"target": True}, "target"),
                     ({"save_dtype": "int8"}, "save_dtype"), ({"format": "hdf5"}, "format"),
                     ({"on_error": "ignore"}, "on_error"), ({"overwrite": 1}, "overwrite"),
                     ({"dtype": torch.int32}, "dtype"), ({"device": "meta"}, "device"),
                     ({"attribute_kwargs": {"target": 1}}, "target"), ({"metadata": {"x": object()}}, "metadata"),
                     ({"image_ids": ["a", "a", "b", "c"]}, "'a' occurs more than once"),
                     ({"image_ids": ["a"]}, "image_ids"), ({"distributed": "yes"}, "distributed")]:
        with pytest.raises(ValueError, match=name):
            call(**kw)
    with pytest.raises(TypeError, match="feature_mask"):
        call(attribute_kwargs={"feature_mask": None})
    with pytest.raises(TypeError, match="Captum Attribution"):
        attribute_dataset(model, ds, fresh())
    with pytest.raises(ValueError, match="target 12 of image '0' is out of range"):
        call(target=12)
    with pytest.raises(ValueError, match="has no label"):
        attribute_dataset(RAP(model), torch.utils.data.TensorDataset(ds.x), fresh(), target="label", progress=False)
    with pytest.raises(ValueError, match="empty"):
        attribute_dataset(RAP(model), [], fresh())
    with pytest.raises(TypeError, match="must be tensors"):
        attribute_dataset(RAP(model), ["a", "b"], fresh(), progress=False)
    with pytest.raises(ValueError, match="distributed=True"):
        call(distributed=True)
    train = tiny_cnn().train()
    with pytest.raises(ValueError, match="training mode"):
        attribute_dataset(RAP(train), ds, fresh())
    assert train.training                                  # the model was not changed
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match="in order"):
        attribute_dataset(RAP(model), loader, fresh())
    with pytest.raises(ValueError, match="batch_size=3 but the DataLoader has batch_size=2"):
        attribute_dataset(RAP(model), torch.utils.data.DataLoader(ds, batch_size=2), fresh(), batch_size=3)


# --------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("fmt", FORMATS)
def test_store_equals_direct_calls_and_reads_lazily(tmp_path, fmt, monkeypatch):
    model, ds = tiny_cnn(), small(20)
    run = attribute_dataset(RAP(model), torch.utils.data.DataLoader(ds, batch_size=4), tmp_path / "o",
                            shard_size=8, format=fmt, progress=False)
    assert run.summary["n_attributed"] == 20 and run.summary["map_shape"] == [1, 28, 28]
    calls = {"row": 0, "shard": 0}
    real_row, real_shard = S.read_row, S.read_shard
    monkeypatch.setattr(S, "read_row", lambda *a: (calls.__setitem__("row", calls["row"] + 1), real_row(*a))[1])
    monkeypatch.setattr(S, "read_shard", lambda *a: (calls.__setitem__("shard", calls["shard"] + 1),
                                                     real_shard(*a))[1])
    store = AttributionStore(tmp_path / "o")
    assert len(store) == 20 and store.ids()[:2] == ["0", "1"] and "7" in store and store.record("7")["shard"] == 0
    assert calls == {"row": 0, "shard": 0}                      # opening, len, ids, records: no map read
    store["13"]
    assert calls == {"row": 1, "shard": 0}                      # one row of one shard
    x = ds.x
    for s0 in range(0, 20, 4):                                  # the batches of the run
        xb = x[s0:s0 + 4]
        logits = model(xb)
        t = logits.argmax(1)
        ref, delta = RAP(model).attribute(xb, target=t, return_convergence_delta=True)
        for j in range(4):
            m, rec = store[str(s0 + j)]
            assert torch.equal(m, ref[j])
            assert rec["target"] == int(t[j]) and rec["label"] == int(ds.y[s0 + j])
            assert rec["logit"] == float(logits[j, t[j]].detach()) and rec["delta"] == float(delta[j])
            assert rec["index"] == s0 + j and rec["shard"] == (s0 + j) // 8 and rec["offset"] == (s0 + j) % 8
            # RAP's delta is the target logit minus the sum of the map
            assert abs(rec["logit"] - float(m.double().sum()) - rec["delta"]) < 1e-5
    maps, recs = store.shard(1)
    assert torch.equal(maps[3], store["11"][0]) and recs[3]["id"] == "11"


def test_float16_storage_and_its_range(tmp_path):
    model, ds = tiny_cnn(), small(8)
    attribute_dataset(RAP(model), ds, tmp_path / "f32", batch_size=4, progress=False)
    attribute_dataset(RAP(model), ds, tmp_path / "f16", batch_size=4, save_dtype=torch.float16, progress=False)
    a, b = everything(tmp_path / "f32"), everything(tmp_path / "f16")
    for i in a:
        assert b[i][0].dtype == torch.float16 and torch.equal(b[i][0], a[i][0].half())
        assert a[i][1] == b[i][1]
    big = tiny_cnn()
    with torch.no_grad():
        big[-1].weight.mul_(1e7)
    with pytest.raises(ValueError, match="beyond float16's range"):
        attribute_dataset(RAP(big), ds, tmp_path / "big", batch_size=4, save_dtype="float16", progress=False)


class NaNWhereBright(GradientAttribution):
    """Saliency-like maps, NaN for images whose maximum exceeds 6."""

    def attribute(self, inputs, target=None):
        x = inputs.detach().clone()
        return torch.where(x.amax(dim=(1, 2, 3), keepdim=True) > 6, torch.full_like(x, float("nan")), x)

    def has_convergence_delta(self):
        return False


def test_non_finite_maps_are_skipped_not_stored(tmp_path):
    ds = small(6)
    ds.x = ds.x.clone()
    ds.x[2] = 7.0
    with pytest.warns(UserWarning, match="1 of 6 images were skipped"):
        run = attribute_dataset(NaNWhereBright(tiny_cnn()), ds, tmp_path / "o", batch_size=3, progress=False)
    store = run.store()
    assert store.ids() == ["0", "1", "3", "4", "5"]
    assert store.skipped[0]["id"] == "2" and "NaN" in store.skipped[0]["reason"]
    assert torch.equal(store["3"][0], ds.x[3]) and store["3"][1]["delta"] is None


def test_other_methods_equal_direct_calls(tmp_path):
    from captum.attr import IntegratedGradients, Saliency

    model, ds = tiny_cnn(), small(8)
    mask = (torch.arange(28)[:, None] // 7 * 4 + torch.arange(28)[None, :] // 7).view(1, 1, 28, 28)
    # CD checks the precision of the first call on an input and reuses that forward, so the
    # reference is the first call of a fresh object on the same batch, as in the run
    cases = [("lrp", lambda: LRP(model, "epsilon_plus"), {}, True),
             ("cd", lambda: CD(model), {"feature_mask": mask}, False),
             ("sal", lambda: Saliency(model), {}, False),
             ("ig", lambda: IntegratedGradients(model), {"n_steps": 8}, True)]
    for name, make, kw, has_delta in cases:
        attribute_dataset(make(), ds, tmp_path / name, batch_size=4, target="label", attribute_kwargs=kw or None,
                          progress=False)
        store = AttributionStore(tmp_path / name)
        for s0 in (0, 4):
            xb, yb = ds.x[s0:s0 + 4], ds.y[s0:s0 + 4]
            ref = make().attribute(xb, target=yb, **kw)
            for j in range(4):
                m, rec = store[str(s0 + j)]
                assert torch.equal(m, ref[j]), name
                assert rec["target"] == int(yb[j]) and (rec["delta"] is not None) == has_delta, name
        if name == "cd":   # CD spreads one score over each 7 x 7 block
            m = store["0"][0][0]
            assert torch.equal(m[:7, :7], m[0, 0].expand(7, 7))


def test_callable_target(tmp_path):
    model, ds = tiny_cnn(), small(8)

    def runner_up(logits, labels):
        assert labels is not None and labels.shape == (4,)
        return logits.topk(2, dim=1).indices[:, 1]

    attribute_dataset(RAP(model), ds, tmp_path / "o", batch_size=4, target=runner_up, progress=False)
    store = AttributionStore(tmp_path / "o")
    assert [store.record(str(i))["target"] for i in range(8)] == model(ds.x).topk(2, 1).indices[:, 1].tolist()
    with pytest.raises(ValueError, match="target callable must return an integer tensor"):
        attribute_dataset(RAP(model), ds, tmp_path / "p", batch_size=4, target=lambda lo, la: lo.argmax(1).float(),
                          progress=False)


def test_evaluation_equals_region_perturbation_and_resumes(tmp_path):
    model, ds = tiny_cnn(), small(20)
    out = tmp_path / "o"
    attribute_dataset(RAP(model), ds, out, batch_size=4, shard_size=8, progress=False)
    kw = dict(patch_size=7, steps=8, patches_per_step=2)
    ev = evaluate_dataset(out, model, ds, batch_size=4, progress=False, **kw)
    store = AttributionStore(out)
    maps = torch.stack([store[i][0] for i in store.ids()])
    t = torch.tensor([store.record(i)["target"] for i in store.ids()])
    rows = ev.per_image()
    assert [r["id"] for r in rows] == store.ids()
    for order in ("morf", "lerf"):
        ref = region_perturbation(model, ds.x, maps, target=t, order=order, **kw)
        got = np.array([r[f"aopc_{order}"] for r in rows])
        # float32 model outputs in other batches: agreement to float32 rounding
        np.testing.assert_allclose(got, ref.aopc.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ev.summary[order]["mean_drop_curve"], ref.drops.mean(0).numpy(), rtol=1e-5,
                                   atol=1e-5)
        s = ev.summary[order]
        assert s["n"] == 20
        np.testing.assert_allclose([s["aopc_mean"], s["aopc_std"], s["aopc_sem"]],
                                   [got.mean(), got.std(ddof=1), got.std(ddof=1) / np.sqrt(20)], rtol=1e-9)
    d = np.array([r["aopc_morf"] - r["aopc_lerf"] for r in rows])
    assert abs(ev.summary["morf_minus_lerf"]["aopc_mean"] - d.mean()) < 1e-9
    table = summary_table([ev, ev.folder], labels=["a", "b"])
    assert table.count("| 20 |") == 2 and "MoRF − LeRF" in table
    # resume: one shard's results lost -> only it is recomputed
    os.remove(os.path.join(ev.folder, "shard-000001.npz"))
    again = evaluate_dataset(out, model, ds, batch_size=4, progress=False, **kw)
    assert (again.shards_computed, again.shards_reused) == (1, 2)
    assert again.summary == ev.summary
    # other settings: another folder
    assert evaluate_dataset(out, model, ds, orders=("morf",), progress=False, **kw).folder != ev.folder
    # errors
    other = tiny_cnn()
    with torch.no_grad():
        other[0].weight.mul_(2)
    with pytest.raises(ValueError, match="not the one the maps"):
        evaluate_dataset(out, other, ds, **kw)
    with pytest.raises(ValueError, match="not the one of the run"):
        evaluate_dataset(out, model, small(19), **kw)
    with pytest.raises(ValueError, match="orders"):
        evaluate_dataset(out, model, ds, orders=("morf", "up"), **kw)
    with pytest.raises(TypeError, match="patch_sise"):
        evaluate_dataset(out, model, ds, patch_sise=3)
    with pytest.raises(ValueError, match="holds no attribute_dataset run"):
        evaluate_dataset(tmp_path, model, ds)


# --------------------------------------------------------------------------- command line
def test_command_line(tmp_path, capsys):
    src = tmp_path / "classes"
    imgs, labels = fashion_mnist_test_subset()
    from PIL import Image

    for i in range(10):
        d = src / f"{int(labels[i]):02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i].numpy()).save(d / f"{i}.png")
    (src / "00" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "captum_rap.datasets", "attribute-dataset", str(src), "--model",
                        "fashion-mnist-vit", "--method", "lrp:epsilon_plus", "--out", str(out), "--target", "label",
                        "--shard-size", "4", "--batch-size", "4", "--no-progress"],
                       env=env1(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "10 of 11 images attributed, 1 skipped" in p.stdout
    store = AttributionStore(out)
    assert store.skipped[0]["id"] == "00/broken.png"
    assert store.record("00/3.png")["target"] == 0 and store.record("01/2.png")["label"] == 1
    # the sub-commands plug into another parser (the lead's captum-rap CLI)
    import argparse

    parser = argparse.ArgumentParser(prog="captum-rap")
    dcli.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate-dataset", str(out), "--steps", "4", "--patches-per-step", "4",
                              "--no-progress"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "| lrp:epsilon_plus | 10 |" in text and "wrote" in text
    # user errors: one line, status 2
    cases = [(["attribute-dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "x")], "not a folder"),
             (["attribute-dataset", str(src), "--model", "fashion-mnist-vit", "--method", "gradcam", "--out",
               str(tmp_path / "x")], "unknown method"),
             (["attribute-dataset", str(src), "--model", "torchvision:resnet18", "--out", str(tmp_path / "x")],
              "needs --weights"),
             (["attribute-dataset", str(src), "--model", "fashion-mnist-vit", "--method", "rap", "--out", str(out),
               "--target", "label", "--shard-size", "4", "--batch-size", "4"], "belongs to another run"),
             (["attribute-dataset", str(src), "--model", "fashion-mnist-vit", "--size", "32", "--out",
               str(tmp_path / "x")], "--size 28"),
             (["evaluate-dataset", str(tmp_path)], "no attribute-dataset run")]
    for argv, msg in cases:
        assert dcli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


def test_model_is_left_unchanged(tmp_path):
    model, ds = tiny_cnn(), small(8)
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]

    def check():
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert [p.requires_grad for p in model.parameters()] == flags
        assert not model.training and not any(m.training for m in model.modules())
        for m in model.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks

    attribute_dataset(RAP(model), ds, tmp_path / "ok", batch_size=4, progress=False)
    check()
    with pytest.raises(ValueError, match="out of range"):
        attribute_dataset(RAP(model), ds, tmp_path / "bad", batch_size=4, target=11, progress=False)
    check()
    evaluate_dataset(tmp_path / "ok", model, ds, patch_size=7, steps=2, progress=False)
    check()
