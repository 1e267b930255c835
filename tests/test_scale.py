"""Ready for real sizes: activation checkpointing and float32 routers under mixed precision (tiny configs)."""

import pytest
import torch

from hf_videomoe import VideoMAEMoeForVideoClassification
from hf_videomoe.attacks import build_attack
from hf_videomoe.moe import SparseMoeBlock


def build(make_moe_model, **overrides):
    """In train mode with dropout off, so a checkpointed recompute sees the activations of the first pass."""
    return make_moe_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides).train()


def clip(batch=2):
    return torch.rand(batch, 4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def grads(model, pixel_values, labels):
    model.zero_grad(set_to_none=True)
    model(pixel_values, labels=labels).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("granularity", ["token", "model"])
def test_checkpointing_gives_the_same_gradients(make_moe_model, granularity, monkeypatch):
    model = build(
        make_moe_model, router_granularity=granularity, router_jitter_noise=0.1
    )  # jitter: the recompute must replay the same random draw
    x, y = clip(), torch.tensor([1, 2])
    torch.manual_seed(5)
    reference = grads(model, x, y)
    calls = []
    forward = SparseMoeBlock.forward  # called from inside each checkpointed layer, so it runs again on recompute
    monkeypatch.setattr(SparseMoeBlock, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    model.gradient_checkpointing_enable()
    assert model.is_activation_checkpointing
    torch.manual_seed(5)
    checkpointed = grads(model, x, y)
    assert set(checkpointed) == set(reference)
    assert any("router" in name for name in checkpointed)
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)
    # Every MoE layer ran once more during backward: checkpointing really happened.
    assert len(calls) == 2 * len(model.config.moe_layers)
    # The training attacks (input gradients, model left in train mode) work with checkpointing on.
    adv = build_attack("pgd", eps=4 / 255, steps=2, seed=0)(model, {"pixel_values": x, "labels": y})["pixel_values"]
    assert model.training and (adv - x).abs().max() <= 4 / 255 + 1e-6


@pytest.mark.parametrize("model_family", ["videomae"])
def test_reentrant_checkpointing_is_refused(make_moe_model):
    model = build(make_moe_model)
    with pytest.raises(ValueError, match="non-reentrant"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})


@pytest.mark.parametrize("model_family", ["videomae"])
def test_trainer_gradient_checkpointing_argument(tmp_path, make_moe_model):
    from hf_videomoe.data import make_moving_shapes
    from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments

    model = build(make_moe_model)
    data = make_moving_shapes(16, num_frames=4, image_size=16, seed=0, test_size=4)
    args = AdversarialTrainingArguments(
        output_dir=str(tmp_path),
        adv_method="pgd-at",
        adv_eps=4 / 255,
        adv_steps=1,
        max_steps=2,
        per_device_train_batch_size=4,
        gradient_checkpointing=True,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    AdversarialTrainer(model=model, args=args, train_dataset=data["train"]).train()
    assert model.is_activation_checkpointing


# ----------------------------------------------------------------------------------------------------------------------
# Processors: every checkpoint carries one consistent with the [0, 1] pixel convention


def dense_checkpoint_with_processor(path, tiny_videomae_config):
    from transformers import VideoMAEForVideoClassification, VideoMAEImageProcessorPil

    torch.manual_seed(0)
    dense = VideoMAEForVideoClassification(tiny_videomae_config(dense=True))
    dense.save_pretrained(path)
    VideoMAEImageProcessorPil(
        size={"shortest_edge": 20},
        crop_size={"height": 16, "width": 16},
        resample=3,
        image_mean=[0.4, 0.5, 0.6],
        image_std=[0.2, 0.3, 0.4],
    ).save_pretrained(path)
    return dense


def test_from_dense_carries_the_processor(tmp_path, tiny_videomae_config):
    from transformers import AutoImageProcessor

    dense = dense_checkpoint_with_processor(tmp_path / "dense", tiny_videomae_config)
    moe = VideoMAEMoeForVideoClassification.from_dense(tmp_path / "dense")
    assert moe.config.image_mean == [0.4, 0.5, 0.6] and moe.config.image_std == [0.2, 0.3, 0.4]
    x = clip()
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(1, 1, 3, 1, 1)
    torch.testing.assert_close(moe.eval()(x).logits, dense.eval()((x - mean) / std).logits, rtol=0, atol=1e-5)
    moe.save_pretrained(tmp_path / "moe")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "moe")
    assert processor.do_normalize is False and processor.do_rescale is True
    assert processor.size == {"shortest_edge": 20} and processor.crop_size == {"height": 16, "width": 16}
    assert processor.resample == 3
    # Reloaded and saved again, the checkpoint keeps that processor.
    VideoMAEMoeForVideoClassification.from_pretrained(tmp_path / "moe").save_pretrained(tmp_path / "again")
    assert AutoImageProcessor.from_pretrained(tmp_path / "again").size == {"shortest_edge": 20}
    # Given explicitly, image_mean / image_std win over the processor's.
    explicit = VideoMAEMoeForVideoClassification.from_dense(
        tmp_path / "dense", image_mean=[0.0] * 3, image_std=[1.0] * 3
    )
    assert explicit.config.image_mean == [0.0] * 3


def test_pipeline_classifies_an_mp4(tmp_path, make_moe_model):
    import numpy as np
    from transformers import AutoImageProcessor, pipeline

    from hf_videomoe.data import write_video

    model = build(make_moe_model).eval()
    model.save_pretrained(tmp_path / "moe")  # a model built from a config: default processor from the config
    frames = np.random.default_rng(0).random((4, 3, 24, 32)).astype("float32")
    write_video(tmp_path / "clip.mp4", torch.from_numpy(frames))
    classifier = pipeline("video-classification", model=str(tmp_path / "moe"))
    predictions = classifier(str(tmp_path / "clip.mp4"), top_k=3)
    assert len(predictions) == 3 and all(set(p) == {"label", "score"} for p in predictions)
    # The pipeline's top label is the model's on the processor's [0, 1] frames.
    import av

    with av.open(str(tmp_path / "clip.mp4")) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    pixels = AutoImageProcessor.from_pretrained(tmp_path / "moe")(decoded, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 4, 3, 16, 16) and 0.0 <= pixels.min() and pixels.max() <= 1.0
    with torch.no_grad():
        expected = model(pixels).logits.argmax(-1).item()
    assert predictions[0]["label"] == model.config.id2label[expected]


@pytest.mark.parametrize("model_family", ["videomae"])
def test_trainer_checkpoints_carry_a_processor(tmp_path, make_moe_model):
    from hf_videomoe.data import make_moving_shapes
    from hf_videomoe.training import AdversarialTrainer, AdversarialTrainingArguments

    model = build(make_moe_model)
    data = make_moving_shapes(16, num_frames=4, image_size=16, seed=0, test_size=4)
    args = AdversarialTrainingArguments(
        output_dir=str(tmp_path),
        adv_method="pgd-at",
        adv_eps=4 / 255,
        adv_steps=1,
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="steps",
        save_steps=1,
    )
    trainer = AdversarialTrainer(model=model, args=args, train_dataset=data["train"])
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    for folder in (tmp_path / "checkpoint-1", tmp_path / "final"):
        assert (folder / "preprocessor_config.json").is_file(), folder


def test_processors_are_made_consistent(tmp_path, tiny_videomae_config):
    from transformers import AutoImageProcessor, VideoMAEForVideoClassification, VideoMAEImageProcessorPil

    torch.manual_seed(0)
    dense = VideoMAEForVideoClassification(tiny_videomae_config(dense=True)).eval()
    dense.save_pretrained(tmp_path / "dense")
    # A dense model trained on raw [0, 1] frames: the MoE must not normalise either (exact upcycling).
    VideoMAEImageProcessorPil(do_normalize=False, size={"shortest_edge": 16}).save_pretrained(tmp_path / "dense")
    moe = VideoMAEMoeForVideoClassification.from_dense(tmp_path / "dense").eval()
    assert moe.config.image_mean == [0.0] * 3 and moe.config.image_std == [1.0] * 3
    torch.testing.assert_close(moe(clip()).logits, dense(clip()).logits, rtol=0, atol=1e-5)
    # A normalising processor next to an MoE checkpoint (e.g. saved by Trainer from processing_class) is replaced on
    # load, and what is saved again rescales to [0, 1] without normalising.
    moe.save_pretrained(tmp_path / "moe")
    VideoMAEImageProcessorPil(do_normalize=True, do_center_crop=False).save_pretrained(tmp_path / "moe")
    VideoMAEMoeForVideoClassification.from_pretrained(tmp_path / "moe").save_pretrained(tmp_path / "again")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "again")
    assert processor.do_normalize is False and processor.do_center_crop is True
    assert processor.crop_size == {"height": 16, "width": 16}


@pytest.mark.parametrize("model_family", ["videomae"])
def test_routing_controls_refuse_checkpointed_training(make_moe_model):
    from hf_videomoe.moe import random_routing, record_routing

    model = build(make_moe_model)
    model.gradient_checkpointing_enable()
    for control in (lambda: random_routing(model, 0), lambda: record_routing(model)):
        with pytest.raises(ValueError, match="activation checkpointing"), control():
            pass
    model.eval()
    with record_routing(model) as passes, torch.no_grad():
        model(clip())
    assert len(passes) == 1
