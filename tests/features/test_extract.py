"""``visiontransfer.embed`` on real CIFAR-10 files: chunked output identical to one-shot output (also
with DataLoader workers), unreadable files skipped and counted, labels from class folders, every
backbone source and every image source, settings checked on resume, and a run killed with SIGKILL
in the middle of a chunk resumed to the one-shot result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from visiontransfer.data.shards import write_shards
from visiontransfer.errors import ConfigError
from visiontransfer.export import export_backbone, load_backbone
from visiontransfer.features import store
from visiontransfer.features.extract import FeatureExtractor

REPO = Path(__file__).resolve().parents[2]
RELEASE = REPO / "tests" / "fixtures" / "release_0_1_0"


@pytest.fixture(scope="module")
def one_shot(
    image_tree: Path, rotation_ckpt: tuple[Path, Any], embed_small: Any, tmp_path_factory: Any
) -> Any:
    """The training tree embedded in one chunk with the RotNet checkpoint."""
    return embed_small(
        str(rotation_ckpt[0]), tmp_path_factory.mktemp("one_shot"), root=str(image_tree / "train")
    )


def _same(a: Any, b: Any) -> None:
    np.testing.assert_array_equal(np.asarray(a.vectors), np.asarray(b.vectors))
    assert a.index.tolist() == b.index.tolist() and list(a.paths) == list(b.paths)
    assert a.labels.tolist() == b.labels.tolist() and a.classes == b.classes


def test_chunked_output_is_identical_to_one_shot(
    one_shot: Any, image_tree: Path, rotation_ckpt: tuple[Path, Any], embed_small: Any, tmp_path: Path
) -> None:
    assert one_shot.meta["chunks"] == 1
    # 21 images in chunks of 6 (rounded up to 8: two batches), made by two loader workers.
    chunked = embed_small(str(rotation_ckpt[0]), tmp_path, root=str(image_tree / "train"), chunk_size=6,
                          num_workers=2)  # fmt: skip
    assert chunked.meta["chunks"] == 3 and chunked.meta["plan"]["chunk_size"] == 8
    _same(chunked, one_shot)


def test_unreadable_files_are_skipped_counted_and_listed(one_shot: Any, image_tree: Path) -> None:
    broken = str(image_tree / "train" / "cat" / "broken.jpg")
    assert len(one_shot) == 20 and one_shot.meta["plan"]["images"] == 21 and one_shot.meta["skipped"] == 1
    assert broken not in list(one_shot.paths)
    lines = (one_shot.folder / "skipped_files.txt").read_text().splitlines()
    assert lines == [f"{broken}\tnot an image PIL can identify"]
    # Rows keep their place in the sorted listing: broken.jpg was index 10 (after cat/0009.jpg).
    assert one_shot.index.tolist() == [*range(10), *range(11, 21)]
    assert one_shot.classes == ["cat", "dog"] and one_shot.labels.tolist() == [0] * 10 + [1] * 10


def test_rows_are_the_backbone_features_with_its_own_normalisation(one_shot: Any, rotation_ckpt: Any) -> None:
    """The checkpoint's backbone, loaded as a plain timm model and fed by hand, gives the same rows."""
    from visiontransfer.backbones import normalization
    from visiontransfer.features.figures import thumbnails

    model = load_backbone(str(rotation_ckpt[0])).eval()
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in normalization(model, 3))
    images = thumbnails(list(one_shot.paths)[:4], size=32)  # the same decode and centre crop
    with torch.no_grad():
        expected = model((images.float() / 255.0 - mean) / std)
    np.testing.assert_allclose(np.asarray(one_shot.vectors[:4]), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_every_backbone_source_gives_the_same_rows(
    one_shot: Any, image_tree: Path, rotation_ckpt: tuple[Path, Any], embed_small: Any, tmp_path: Path
) -> None:
    export = export_backbone(rotation_ckpt[0], tmp_path / "export")
    for n, source in enumerate((export, export / "model.safetensors")):
        made = embed_small(str(source), tmp_path / f"rows_{n}", root=str(image_tree / "train"))
        np.testing.assert_array_equal(np.asarray(made.vectors), np.asarray(one_shot.vectors))
        assert made.meta["plan"]["weights"] == one_shot.meta["plan"]["weights"]
    # A transfer checkpoint (its backbone lives under backbone. too), of release 0.1.0.
    classifier = str(RELEASE / "classifier.ckpt")
    made = embed_small(classifier, tmp_path / "classifier", root=str(image_tree / "test"))
    assert made.meta["backbone_spec"]["method"] == "ImageClassifier"
    extractor = FeatureExtractor(backbone=classifier).eval()
    reference = load_backbone(classifier)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(extractor.backbone.state_dict()[name], value)
    # A timm name: a seeded random init (the same seed, the same rows).
    first = embed_small("test_resnet", tmp_path / "timm_a", root=str(image_tree / "test"), seed=3)
    again = embed_small("test_resnet", tmp_path / "timm_b", root=str(image_tree / "test"), seed=3)
    np.testing.assert_array_equal(np.asarray(first.vectors), np.asarray(again.vectors))


def test_manifests_shards_and_the_embedded_set(
    one_shot: Any, image_tree: Path, rotation_ckpt: tuple[Path, Any], embed_small: Any, tmp_path: Path
) -> None:
    ckpt = str(rotation_ckpt[0])
    files = sorted((image_tree / "train" / "dog").glob("*.jpg"))[:3]
    manifest = tmp_path / "files.csv"
    manifest.write_text(
        "path,label\n" + "".join(f"{f},{'dog' if i else 'puppy'}\n" for i, f in enumerate(files))
    )
    made = embed_small(ckpt, tmp_path / "manifest", manifest=str(manifest))
    assert made.classes == ["dog", "puppy"] and made.label_names() == ["puppy", "dog", "dog"]
    rows = [list(one_shot.paths).index(str(f)) for f in files]
    np.testing.assert_array_equal(np.asarray(made.vectors), np.asarray(one_shot.vectors[rows]))
    # Labeled tar shards of the same tree (shard = chunk): the same rows, in the same order.
    write_shards(str(image_tree / "train"), str(tmp_path / "shards"), shard_size=8, labeled=True)
    sharded = embed_small(ckpt, tmp_path / "from_shards", shards=str(tmp_path / "shards"), num_workers=2)
    assert sharded.meta["chunks"] == 3 and sharded.meta["skipped"] == 1
    np.testing.assert_array_equal(np.asarray(sharded.vectors), np.asarray(one_shot.vectors))
    assert sharded.labels.tolist() == one_shot.labels.tolist() and ".tar:" in sharded.paths[0]
    # No source: the embedded procedural set, with its shape labels.
    synthetic = embed_small(ckpt, tmp_path / "embedded", synthetic_size=16, labels="none")
    assert len(synthetic) == 16 and synthetic.paths[3] == "embedded:3" and synthetic.labels is None


def test_float16_normalised_rows_and_settings_checked_on_resume(
    one_shot: Any, image_tree: Path, rotation_ckpt: tuple[Path, Any], embed_small: Any, tmp_path: Path
) -> None:
    ckpt, root = str(rotation_ckpt[0]), str(image_tree / "test")
    made = embed_small(ckpt, tmp_path, root=root, dtype="float16", normalize=True)
    assert np.load(tmp_path / "embeddings.npy").dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(np.asarray(made.vectors, np.float32), axis=1), 1.0, atol=2e-3)
    stamp = (tmp_path / "embeddings.npy").stat().st_mtime_ns
    again = embed_small(ckpt, tmp_path, root=root, dtype="float16", normalize=True)  # complete: nothing to do
    assert len(again) == len(made) and (tmp_path / "embeddings.npy").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match=r"--out=.*other settings \(dtype 'float16' -> 'float32'"):
        embed_small(ckpt, tmp_path, root=root, normalize=True)
    replaced = embed_small(ckpt, tmp_path, root=root, overwrite=True)
    assert replaced.meta["plan"]["dtype"] == "float32" and not replaced.meta["plan"]["normalize"]


def test_bad_input_names_the_argument(image_tree: Path, embed_small: Any, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no image files found in --root=.*empty"):
        embed_small("test_resnet", tmp_path / "a", root=str(tmp_path / "empty"))
    (tmp_path / "model.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"^--backbone='[^']*model.ckpt': "):
        embed_small(str(tmp_path / "model.ckpt"), tmp_path / "b", root=str(image_tree / "test"))
    with pytest.raises(ConfigError, match=r"give one of --root, --manifest or --shards, not several"):
        embed_small(
            "test_resnet", tmp_path / "c", root=str(image_tree), manifest=str(tmp_path / "model.ckpt")
        )
    with pytest.raises(ConfigError, match=r"--chunk-size=0 must be >= 1"):
        embed_small("test_resnet", tmp_path / "d", root=str(image_tree / "test"), chunk_size=0)


@pytest.mark.slow
def test_a_run_killed_in_the_middle_of_a_chunk_resumes_to_the_one_shot_result(
    image_tree: Path, embed_small: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGKILL of a ``visiontransfer embed`` process right after its first chunk; the same
    command then writes only the missing chunks, and the result equals an uninterrupted run."""
    from visiontransfer.cli import main

    out = tmp_path / "killed"
    # ResNet-18 at 96 px: batches slow enough (tenths of a second) to be killed inside chunk 1.
    args = ["embed", "--backbone", "resnet18", "--root", str(image_tree / "train"), "--out", str(out)]
    args += [
        "--image-size",
        "96",
        "--batch-size",
        "2",
        "--chunk-size",
        "8",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "killed.log"
    with log.open("w") as handle:  # a file, not a pipe: a full pipe would stall the process
        command = [sys.executable, "-m", "visiontransfer.cli", *args]
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=handle, stderr=handle)
        first = store.chunk_path(out, 0, "json")
        deadline = time.monotonic() + 300
        while not first.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert first.exists(), log.read_text()[-2000:]
    finished = store.finished_chunks(out)
    assert 0 in finished and len(finished) < 3 and not (out / "meta.json").exists()
    written: list[int] = []
    original = store.write_chunk

    def recording(folder: Any, chunk: store.Chunk, *rest: Any) -> None:
        written.append(chunk.number)
        original(folder, chunk, *rest)

    monkeypatch.setattr(store, "write_chunk", recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed process
    try:
        main(args)
    finally:
        torch.set_num_threads(threads)
    assert written == sorted(set(range(3)) - finished)  # finished chunks were kept, not redone
    resumed = store.Embeddings.load(out)
    reference = embed_small("resnet18", tmp_path / "reference", root=str(image_tree / "train"), image_size=96,
                            batch_size=2, chunk_size=8)  # fmt: skip
    assert resumed.meta["plan"]["weights"] == reference.meta["plan"]["weights"]
    assert resumed.index.tolist() == reference.index.tolist() and list(resumed.paths) == list(reference.paths)
    np.testing.assert_allclose(
        np.asarray(resumed.vectors), np.asarray(reference.vectors), rtol=1e-5, atol=1e-6
    )


def test_a_run_stopped_before_the_merge_only_merges_on_resume(
    image_tree: Path, embed_small: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every chunk written, the merge never ran: the next run has no batch to embed and merges."""
    root = str(image_tree / "test")

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed before the merge")

    with monkeypatch.context() as patch:
        patch.setattr(store, "merge_chunks", stopped)
        with pytest.raises(RuntimeError, match="before the merge"):
            embed_small("test_resnet", tmp_path, root=root, chunk_size=4)
    assert store.finished_chunks(tmp_path) == {0, 1, 2} and not (tmp_path / "meta.json").exists()
    written: list[int] = []
    monkeypatch.setattr(store, "write_chunk", lambda *args: written.append(args[1].number))
    resumed = embed_small("test_resnet", tmp_path, root=root, chunk_size=4)
    assert written == [] and len(resumed) == 10 and resumed.index.tolist() == list(range(10))
