"""Tests for hf_videomoe.data: MovingShapes, video folders (plain, UCF-101, HMDB-51) and batching."""

import warnings

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from transformers import default_data_collator

from hf_videomoe.data import (
    MOVING_SHAPES_CLASSES,
    VideoCollator,
    load_video_folder,
    make_moving_shapes,
    paired_class,
    probe_video,
    read_video,
    sample_frame_indices,
    to_unit_float,
    write_video,
    write_video_folder,
)


def _tiny_clip(seed, num_frames=3, size=8):
    return np.random.default_rng(seed).random((num_frames, 3, size, size), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# MovingShapes
# ---------------------------------------------------------------------------------------------------------------------


def test_class_pairs():
    assert len(MOVING_SHAPES_CLASSES) == 8
    pairs = {(MOVING_SHAPES_CLASSES[c], MOVING_SHAPES_CLASSES[paired_class(c)]) for c in range(0, 8, 2)}
    assert pairs == {
        ("move_left", "move_right"),
        ("move_up", "move_down"),
        ("grow", "shrink"),
        ("rotate_clockwise", "rotate_anticlockwise"),
    }
    assert all(paired_class(paired_class(c)) == c for c in range(8))
    assert paired_class(torch.tensor(4)) == 5 and paired_class(np.int64(7)) == 6
    for bad in (-1, 8, 1.0, True):
        with pytest.raises(ValueError, match=r"`label` must be an integer in \[0, 8\)"):
            paired_class(bad)


def test_moving_shapes_is_deterministic_by_seed():
    kwargs = {"num_frames": 4, "image_size": 16, "difficulty": "hard"}
    first, again, other = (make_moving_shapes(16, seed=s, **kwargs) for s in (3, 3, 4))
    for split in ("train", "test"):
        a, b, c = (d[split].with_format("numpy")[:] for d in (first, again, other))
        assert a["pixel_values"].tobytes() == b["pixel_values"].tobytes()
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert not np.array_equal(a["pixel_values"], c["pixel_values"])


def test_moving_shapes_format_and_balance():
    dataset = make_moving_shapes(64, num_frames=4, image_size=16, difficulty="medium")
    assert isinstance(dataset, DatasetDict) and list(dataset) == ["train", "test"]
    assert (len(dataset["train"]), len(dataset["test"])) == (48, 16)
    for split in dataset.values():
        assert split.column_names == ["pixel_values", "labels"]
        assert isinstance(split.features["labels"], ClassLabel)
        assert split.features["labels"].names == list(MOVING_SHAPES_CLASSES)
        counts = np.bincount(np.asarray(split["labels"]), minlength=8)
        assert (counts == len(split) // 8).all()
        example = split[0]
        assert example["pixel_values"].dtype == torch.float32
        assert example["pixel_values"].shape == (4, 3, 16, 16)
        pixels = split.with_format("numpy")[:]["pixel_values"]
        assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    # The Trainer's default collator batches it as (batch, frames, channels, height, width).
    batch = default_data_collator([dataset["train"][i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 4, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long


def test_moving_shapes_large_pixel_columns_are_chunked(monkeypatch):
    from hf_videomoe.data import moving_shapes

    reference = make_moving_shapes(16, num_frames=2, image_size=8, test_size=0)["train"]
    monkeypatch.setattr(moving_shapes, "_MAX_CHUNK_VALUES", 3 * 2 * 3 * 8 * 8)
    chunked = make_moving_shapes(16, num_frames=2, image_size=8, test_size=0)["train"]
    assert chunked.data.column("pixel_values").num_chunks == 6
    np.testing.assert_array_equal(
        chunked.with_format("numpy")[:]["pixel_values"], reference.with_format("numpy")[:]["pixel_values"]
    )
    assert chunked[15]["pixel_values"].shape == (2, 3, 8, 8)


@pytest.mark.parametrize("num_frames,image_size,difficulty", [(2, 8, "easy"), (5, 13, 0.3), (7, 9, "hard")])
def test_moving_shapes_any_frame_count_and_size(num_frames, image_size, difficulty):
    dataset = make_moving_shapes(10, num_frames=num_frames, image_size=image_size, difficulty=difficulty, test_size=2)
    assert (len(dataset["train"]), len(dataset["test"])) == (8, 2)
    pixels = dataset["train"].with_format("numpy")[:]["pixel_values"]
    assert pixels.shape == (8, num_frames, 3, image_size, image_size) and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    # Every frame shows something: the main shape contrasts with the background.
    assert (pixels.reshape(8, num_frames, -1).std(axis=-1) > 0.05).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 1},
        {"image_size": 7},
        {"difficulty": "extreme"},
        {"difficulty": 1.5},
        {"shapes": ["circle"]},
        {"shapes": ["hexagon"]},
        {"test_size": 1.0},
        {"test_size": 16},
    ],
)
def test_moving_shapes_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=f"`{next(iter(kwargs))}`"):
        make_moving_shapes(16, **kwargs)


def _motion_statistics(clip):
    """Per-clip statistics of the rendered shape on a uniform background.

    Motion (velocity x, velocity y, log area ratio last/first, angular velocity) then start state (x, y, log area).

    The foreground weight is |pixel - background| / max, which equals the shape's coverage because shapes are
    alpha-blended. The orientation comes from second moments (defined for elongated shapes only).
    """
    border = np.concatenate([clip[0, :, 0], clip[0, :, -1], clip[0, :, :, 0], clip[0, :, :, -1]], axis=1)
    weight = np.abs(clip - np.median(border, axis=1)[None, :, None, None]).sum(axis=1)
    weight /= weight.max()
    ys, xs = np.mgrid[: clip.shape[-2], : clip.shape[-1]]
    area = weight.sum(axis=(1, 2))
    cx = (weight * xs).sum(axis=(1, 2)) / area
    cy = (weight * ys).sum(axis=(1, 2)) / area
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    mu20, mu02, mu11 = ((weight * m).sum(axis=(1, 2)) for m in (dx * dx, dy * dy, dx * dy))
    orientation = 0.5 * np.arctan2(2 * mu11, mu20 - mu02)
    turn = (np.diff(orientation) + np.pi / 2) % np.pi - np.pi / 2  # orientation is defined modulo pi
    motion = [np.diff(cx).mean(), np.diff(cy).mean(), np.log(area[-1] / area[0]), turn.mean()]
    # Where and how large the shape starts: reversal turns these into where it ends.
    return np.array(motion + [cx[0], cy[0], np.log(area[0])])


# Which statistic defines each pair, and its sign for the first class of the pair.
_DEFINING = {0: (0, -1), 2: (1, -1), 4: (2, 1), 6: (3, 1)}


@pytest.fixture(scope="module")
def easy_clips():
    dataset = make_moving_shapes(
        192, num_frames=8, image_size=32, difficulty="easy", test_size=0, seed=1, shapes=("rectangle", "ellipse")
    )
    data = dataset["train"].with_format("numpy")[:]
    return data["pixel_values"], data["labels"]


def test_easy_difficulty_has_clean_uniform_background(easy_clips):
    pixels, _ = easy_clips
    corners = pixels[:, :, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # (clips, frames, channels, 4)
    assert np.ptp(corners, axis=(1, 3)).max() < 1e-6


def test_rendered_motion_matches_class(easy_clips):
    pixels, labels = easy_clips
    stats = np.stack([_motion_statistics(clip) for clip in pixels])[:, :4]
    for first, (stat, sign) in _DEFINING.items():
        assert (np.sign(stats[labels == first, stat]) == sign).all(), MOVING_SHAPES_CLASSES[first]
        assert (np.sign(stats[labels == first + 1, stat]) == -sign).all(), MOVING_SHAPES_CLASSES[first + 1]
        # Classes that do not define this statistic leave it near zero (no drift, no growth, no rotation).
        others = ~np.isin(labels, [first, first + 1])
        assert np.abs(stats[others, stat]).mean() < 0.2 * np.abs(stats[labels == first, stat]).mean()


def test_time_reversed_clips_match_paired_class(easy_clips):
    """A reversed clip of class c is distributed like clips of class c ^ 1: compare their motion statistics."""
    pixels, labels = easy_clips
    forward = np.stack([_motion_statistics(clip) for clip in pixels])
    backward = np.stack([_motion_statistics(clip[::-1]) for clip in pixels])
    for label in range(8):
        reversed_stats, paired_stats = backward[labels == label], forward[labels == paired_class(label)]
        stderr = np.sqrt(reversed_stats.var(0) / len(reversed_stats) + paired_stats.var(0) / len(paired_stats))
        gap = np.abs(reversed_stats.mean(0) - paired_stats.mean(0))
        assert (gap <= 4 * stderr + 1e-3).all(), (MOVING_SHAPES_CLASSES[label], gap, stderr)
        assert np.allclose(reversed_stats.std(0), paired_stats.std(0), rtol=0.6, atol=0.02)
        # ... and unlike clips of class c itself on the statistic that defines the pair.
        stat, _ = _DEFINING[label & ~1]
        original = forward[labels == label, stat]
        assert np.sign(reversed_stats[:, stat]).tolist() == [-np.sign(original[0])] * len(reversed_stats)


# ---------------------------------------------------------------------------------------------------------------------
# Video folders
# ---------------------------------------------------------------------------------------------------------------------


def test_write_and_load_round_trip(tmp_path):
    dataset = make_moving_shapes(24, num_frames=5, image_size=17, difficulty="medium", test_size=8, seed=2)
    write_video_folder(dataset, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train"]

    loaded = load_video_folder(tmp_path, num_frames=5, image_size=17, class_names=MOVING_SHAPES_CLASSES)
    assert list(loaded) == ["train", "test"]
    for split in ("train", "test"):
        original, restored = dataset[split], loaded[split]
        assert len(restored) == len(original)
        assert restored.features["labels"].names == list(MOVING_SHAPES_CLASSES)
        videos = restored.with_format(None)[:]["video"]
        errors = []
        for i, video in enumerate(videos):
            row = int(video.rsplit("/", 1)[-1].split(".")[0])
            example = restored[i]
            assert example["pixel_values"].dtype == torch.float32
            assert example["pixel_values"].shape == (5, 3, 17, 17)
            assert example["labels"] == int(original[row]["labels"])
            errors.append((example["pixel_values"] - original[row]["pixel_values"]).abs().mean().item())
        assert max(errors) < 0.08

    # Without class_names, ids index the sorted folder names but every clip keeps its class name.
    plain = load_video_folder(tmp_path / "test", num_frames=5, image_size=17, split="train")
    assert isinstance(plain, Dataset)
    assert plain.features["labels"].names == sorted(set(MOVING_SHAPES_CLASSES))
    names = plain.features["labels"].int2str([plain[i]["labels"] for i in range(len(plain))])
    rows = [int(v.rsplit("/", 1)[-1].split(".")[0]) for v in plain.with_format(None)[:]["video"]]
    assert names == [MOVING_SHAPES_CLASSES[int(dataset["test"][r]["labels"])] for r in rows]


@pytest.fixture
def class_tree(tmp_path):
    """root/a/{0,1}.mp4, root/b/{0,1}.mp4 with random 3-frame 8x8 clips."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for index in range(2):
            write_video(tmp_path / name / f"{index}.mp4", _tiny_clip(10 * ord(name) + index))
    (tmp_path / "a" / "notes.txt").write_text("not a video")
    return tmp_path


def test_load_folders_layout_and_batching(class_tree):
    dataset = load_video_folder(class_tree, num_frames=4, image_size=6)
    assert list(dataset) == ["train"]
    train = dataset["train"]
    assert len(train) == 4 and train.features["labels"].names == ["a", "b"]
    assert [train[i]["labels"] for i in range(4)] == [0, 0, 1, 1]
    batch = VideoCollator(num_frames=4, image_size=6)([train[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 4, 3, 6, 6) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 0, 1, 1]
    loader = torch.utils.data.DataLoader(train, batch_size=2, collate_fn=default_data_collator)
    assert next(iter(loader))["pixel_values"].shape == (2, 4, 3, 6, 6)
    # Trainer(remove_unused_columns=True) would drop the path column: the transform then explains what to do.
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        train.remove_columns("video")[0]


def test_corrupt_video_is_skipped_with_a_warning(class_tree):
    (class_tree / "a" / "bad.mp4").write_bytes(b"\x00garbage" * 64)
    with pytest.warns(UserWarning, match=r"[Ss]kipped 1 of 5 videos .*bad\.mp4"):
        dataset = load_video_folder(class_tree, num_frames=3, image_size=8, split="train")
    assert len(dataset) == 4 and not any("bad" in v for v in dataset.with_format(None)[:]["video"])

    with pytest.raises(ValueError, match=r"bad\.mp4"):
        load_video_folder(class_tree, num_frames=3, image_size=8, strict=True)


def test_corrupt_video_found_while_decoding(class_tree):
    (class_tree / "a" / "bad.mp4").write_bytes(b"\x00garbage" * 64)
    dataset = load_video_folder(class_tree, num_frames=3, image_size=8, split="train", verify=False)
    videos = dataset.with_format(None)[:]["video"]
    bad = next(i for i, v in enumerate(videos) if v.endswith("bad.mp4"))
    with pytest.warns(UserWarning, match=r"bad\.mp4"):
        substitute = dataset[bad]
    # Deterministically the next video in dataset order, with its own label.
    expected = dataset[bad + 1]
    assert substitute["labels"] == expected["labels"]
    torch.testing.assert_close(substitute["pixel_values"], expected["pixel_values"])
    # Once known to be bad, the file is substituted without another decoding attempt.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(dataset[:]["pixel_values"]) == len(videos)

    strict = load_video_folder(class_tree, num_frames=3, image_size=8, split="train", verify=False, strict=True)
    with pytest.raises(ValueError, match=r"bad\.mp4"):
        strict[bad]


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_video_folder(tmp_path / "missing", num_frames=2, image_size=8)
    with pytest.raises(ValueError, match="no class folders"):
        load_video_folder(tmp_path, num_frames=2, image_size=8)
    (tmp_path / "full").mkdir()
    write_video(tmp_path / "full" / "0.mp4", _tiny_clip(0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_video_folder(tmp_path, num_frames=2, image_size=8)
    (tmp_path / "empty").rmdir()
    with pytest.raises(ValueError, match="layout"):
        load_video_folder(tmp_path, num_frames=2, image_size=8, layout="kinetics")
    with pytest.raises(ValueError, match="sampling"):
        load_video_folder(tmp_path, num_frames=2, image_size=8, sampling="dense")
    with pytest.raises(ValueError, match="validation"):
        load_video_folder(tmp_path, num_frames=2, image_size=8, split="validation")
    with pytest.raises(ValueError, match="class_names"):
        load_video_folder(tmp_path, num_frames=2, image_size=8, class_names=["other"])


def _ucf101_tree(root):
    classes = ["ApplyEyeMakeup", "Biking", "YoYo"]
    for name in classes:
        (root / name).mkdir()
        for group in (1, 2, 3):
            write_video(root / name / f"v_{name}_g{group:02d}_c01.avi", _tiny_clip(group, num_frames=2))
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i} {name}\r\n" for i, name in enumerate(classes, start=1)))
    train = [f"{name}/v_{name}_g{g:02d}_c01.avi {i}" for i, name in enumerate(classes, start=1) for g in (1, 2)]
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(f"{name}/v_{name}_g03_c01.avi" for name in classes) + "\n")
    return classes


def test_ucf101_split_files(tmp_path):
    classes = _ucf101_tree(tmp_path)
    dataset = load_video_folder(tmp_path, num_frames=4, image_size=8, layout="ucf101")
    assert list(dataset) == ["train", "test"]
    assert dataset["train"].features["labels"].names == classes
    assert dataset["train"].with_format(None)[:]["labels"] == [0, 0, 1, 1, 2, 2]
    assert dataset["test"].with_format(None)[:]["labels"] == [0, 1, 2]
    assert all("_g03_" in v for v in dataset["test"].with_format(None)[:]["video"])
    test = load_video_folder(tmp_path, num_frames=4, image_size=8, layout="ucf101", split="test")
    assert isinstance(test, Dataset) and test[2]["pixel_values"].shape == (4, 3, 8, 8)

    with pytest.raises(FileNotFoundError, match="trainlist02.txt"):
        load_video_folder(tmp_path, num_frames=4, image_size=8, layout="ucf101", split_id=2)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_video_folder(tmp_path, num_frames=4, image_size=8, layout="ucf101", split_dir=tmp_path / "nowhere")
    with open(tmp_path / "ucfTrainTestlist" / "testlist01.txt", "a") as handle:
        handle.write("Biking/v_Biking_g09_c01.avi\n")
    with pytest.raises(FileNotFoundError, match="v_Biking_g09_c01.avi"):
        load_video_folder(tmp_path, num_frames=4, image_size=8, layout="ucf101")


def test_hmdb51_split_files(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    for name in ("brush_hair", "cartwheel"):
        (tmp_path / name).mkdir()
        for index in range(3):
            write_video(tmp_path / name / f"{name}_{index}.avi", _tiny_clip(index, num_frames=2))
        # Real HMDB-51 split files have trailing spaces.
        (splits / f"{name}_test_split1.txt").write_text(f"{name}_0.avi 1 \n{name}_1.avi 2 \n{name}_2.avi 0 \n")
    dataset = load_video_folder(tmp_path, num_frames=3, image_size=8, layout="hmdb51")
    assert dataset["train"].features["labels"].names == ["brush_hair", "cartwheel"]
    assert [v.rsplit("/", 1)[-1] for v in dataset["train"].with_format(None)[:]["video"]] == [
        "brush_hair_0.avi",
        "cartwheel_0.avi",
    ]
    assert dataset["test"].with_format(None)[:]["labels"] == [0, 1]
    assert dataset["test"][1]["pixel_values"].shape == (3, 3, 8, 8)

    with pytest.raises(FileNotFoundError, match="_test_split3"):
        load_video_folder(tmp_path, num_frames=3, image_size=8, layout="hmdb51", split_id=3)
    (splits / "cartwheel_test_split1.txt").write_text("cartwheel_0.avi 1\nghost.avi 2\n")
    with pytest.raises(FileNotFoundError, match="ghost.avi"):
        load_video_folder(tmp_path, num_frames=3, image_size=8, layout="hmdb51")


def test_short_clips_are_padded_by_repeating_frames(tmp_path):
    levels = np.array([0.1, 0.5, 0.9], dtype=np.float32)
    clip = np.broadcast_to(levels[:, None, None, None], (3, 3, 12, 20)).copy()  # non-square: centre-cropped
    write_video(tmp_path / "short.mp4", clip)
    frames = read_video(tmp_path / "short.mp4", num_frames=6, image_size=8)
    assert frames.shape == (6, 3, 8, 8)
    np.testing.assert_allclose(frames.mean(dim=(1, 2, 3)).numpy(), levels.repeat(2), atol=0.02)


def test_truncated_video_is_sampled_from_the_frames_that_exist(tmp_path):
    # Brightness rises frame by frame; the AVI header still announces 12 frames after the file is cut.
    levels = np.linspace(0.0, 0.5, 12, dtype=np.float32)[:, None, None, None]
    write_video(tmp_path / "full.avi", 0.5 * _tiny_clip(0, num_frames=12, size=32) + levels)
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: int(len(data) * 0.6)])
    assert probe_video(tmp_path / "cut.avi") == 12
    brightness = read_video(tmp_path / "cut.avi", num_frames=8, image_size=8).mean(dim=(1, 2, 3))
    assert brightness.shape == (8,) and (brightness.diff() >= -0.01).all()
    assert brightness[-1] < 0.25 + levels[-1].item() - 0.1  # the last frames are gone


def test_sample_frame_indices():
    np.testing.assert_array_equal(sample_frame_indices(5, 5), np.arange(5))
    np.testing.assert_array_equal(sample_frame_indices(100, 3), [0, 33, 66])
    np.testing.assert_array_equal(sample_frame_indices(3, 6), [0, 0, 1, 1, 2, 2])
    # Uniform sampling picks the frames transformers' video processor picks (its default_sample_indices_fn).
    from transformers.video_utils import VideoMetadata, default_sample_indices_fn

    for available, wanted in ((16, 16), (100, 16), (301, 16), (17, 8), (250, 3)):
        reference = default_sample_indices_fn(VideoMetadata(total_num_frames=available, fps=25.0), num_frames=wanted)
        np.testing.assert_array_equal(sample_frame_indices(available, wanted), reference)
    np.testing.assert_array_equal(sample_frame_indices(12, 4, "segment"), [1, 4, 7, 10])
    for sampling in ("random", "segment"):
        for available, wanted in ((50, 8), (5, 8)):
            first = sample_frame_indices(available, wanted, sampling, np.random.default_rng(0), train=True)
            again = sample_frame_indices(available, wanted, sampling, np.random.default_rng(0), train=True)
            np.testing.assert_array_equal(first, again)
            assert len(first) == wanted and (np.diff(first) >= 0).all()
            assert first.min() >= 0 and first.max() < available
    assert len(set(sample_frame_indices(50, 8, "random", np.random.default_rng(0)).tolist())) == 8
    with pytest.raises(ValueError, match="Cannot sample frames from a video with 0 frames"):
        sample_frame_indices(0, 4)
    with pytest.raises(ValueError, match="`sampling` must be one of"):
        sample_frame_indices(4, 4, "dense")


def test_sampling_is_random_in_train_and_deterministic_in_test(tmp_path):
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            write_video(tmp_path / split / name / "0.mp4", _tiny_clip(ord(name), num_frames=9))
    for sampling in ("random", "segment"):
        first = load_video_folder(tmp_path, 4, 8, sampling=sampling, seed=5)
        again = load_video_folder(tmp_path, 4, 8, sampling=sampling, seed=5)
        torch.testing.assert_close(first["test"][:]["pixel_values"], again["test"][:]["pixel_values"])
        torch.testing.assert_close(first["test"][:]["pixel_values"], first["test"][:]["pixel_values"])
        # Training draws new frames on every access (new epochs see new clips), reproducibly from the seed.
        epochs = [torch.stack(first["train"][:]["pixel_values"]) for _ in range(3)]
        assert not all(torch.equal(epochs[0], epoch) for epoch in epochs[1:])
        torch.testing.assert_close(torch.stack(again["train"][:]["pixel_values"]), epochs[0])


# ---------------------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------------------


def test_collator_shapes_and_dtypes():
    collator = VideoCollator()
    uint8 = [{"pixel_values": torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), "labels": torch.tensor(3)}] * 2
    batch = collator(uint8)
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].max() == 1.0
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [3, 3]
    lists = [{"pixel_values": np.zeros((2, 3, 4, 4)).tolist(), "labels": 1, "video": "x.mp4"}]
    batch = collator(lists)
    assert batch["pixel_values"].shape == (1, 2, 3, 4, 4) and set(batch) == {"pixel_values", "labels"}
    assert "labels" not in collator([{"pixel_values": np.zeros((2, 3, 4, 4), dtype=np.float32)}])


@pytest.mark.parametrize(
    "features,match",
    [
        ([], "empty"),
        ([{"labels": 0}], "no 'pixel_values'"),
        ([{"pixel_values": torch.zeros(3, 4, 4)}], "4 dimensions"),
        ([{"pixel_values": torch.zeros(2, 3, 4, 4)}, {"pixel_values": torch.zeros(3, 3, 4, 4)}], "same shape"),
        ([{"pixel_values": torch.zeros(2, 1, 4, 4)}], "Expected clips of shape"),
        ([{"pixel_values": torch.full((2, 3, 4, 4), 255.0)}], r"\[0, 1\]"),
        ([{"pixel_values": torch.zeros(2, 3, 4, 4), "labels": 0}, {"pixel_values": torch.zeros(2, 3, 4, 4)}], "Some"),
        ([{"pixel_values": torch.zeros(2, 3, 4, 4), "labels": [0, 1]}], "single integer"),
    ],
)
def test_collator_errors(features, match):
    with pytest.raises(ValueError, match=match):
        VideoCollator()(features)


def test_collator_checks_expected_sizes():
    features = [{"pixel_values": torch.zeros(2, 3, 4, 4)}]
    with pytest.raises(ValueError, match=r"\(3, 3, \*, \*\)"):
        VideoCollator(num_frames=3, image_size=None)(features)
    assert VideoCollator(num_frames=2, image_size=4)(features)["pixel_values"].shape == (1, 2, 3, 4, 4)


def test_to_unit_float():
    assert to_unit_float(np.array([0, 255], dtype=np.uint8)).tolist() == [0.0, 1.0]
    assert to_unit_float(torch.tensor([0, 51], dtype=torch.uint8)).tolist() == pytest.approx([0.0, 0.2])
    assert to_unit_float(torch.tensor([0.5], dtype=torch.float64)).dtype == torch.float32


class _MeanColourClassifier(torch.nn.Module):
    """Stand-in for a video model: checks the batch layout and returns a loss."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 8)

    def forward(self, pixel_values, labels=None):
        assert pixel_values.dtype == torch.float32 and pixel_values.ndim == 5 and pixel_values.shape[2] == 3
        logits = self.linear(pixel_values.mean(dim=(1, 3, 4)))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_trainer_batches_both_dataset_kinds(tmp_path):
    from transformers import Trainer, TrainingArguments

    dataset = make_moving_shapes(16, num_frames=3, image_size=8)
    write_video_folder(dataset, tmp_path / "videos")
    folder = load_video_folder(tmp_path / "videos", num_frames=3, image_size=8, split="train")

    def train(train_dataset, data_collator=None, **kwargs):
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=2,
            per_device_train_batch_size=4,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            **kwargs,
        )
        model = _MeanColourClassifier()
        return Trainer(model, args, train_dataset=train_dataset, data_collator=data_collator).train().global_step

    assert train(dataset["train"]) == 2
    assert train(dataset["train"], VideoCollator(num_frames=3, image_size=8)) == 2
    assert train(folder, remove_unused_columns=False) == 2
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        train(folder)
