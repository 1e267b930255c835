"""The processors written into every checkpoint, consistent with the models' pixel convention and with the library's
own decode (`hf_videomoe.data.read_video`).

Our models take frames in ``[0, 1]`` and normalise inside ``forward``, so every processor saved with a checkpoint
resizes the shorter side, centre-crops ``image_size x image_size`` and rescales by 1/255, and does **not** normalise.
Two are written side by side:

* a video processor (``video_preprocessor_config.json``, transformers' ``VideoMAEVideoProcessor``): what
  ``pipeline("video-classification")`` and ``AutoVideoProcessor`` use where torchvision is installed. It samples
  ``arange(n) * T // n`` frames, as `read_video` does.
* an image processor (``preprocessor_config.json``): the pipeline's fallback where torchvision cannot be loaded (the
  CPU torch wheel cannot load torchvision's PyPI build). That path reads ``num_frames`` frames spaced
  ``frame_sampling_rate`` apart from the start of the clip, so its frames equal `read_video`'s only for a clip of
  exactly ``num_frames`` frames (rate 1); the resize, crop and rescale are the same.
"""

from __future__ import annotations

import os

from ..data.video_io import RESAMPLE_CODES as RESAMPLING

_BILINEAR = 2


def frame_size(config) -> int:
    """The model's square frame side (``image_size`` may be an int or a pair)."""
    return config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)[0]


def _image_processor_class():
    # transformers' torchvision-backed image processor cannot run without torchvision; its PIL twin writes the same
    # config and is what the pipeline falls back to.
    try:
        import torchvision  # noqa: F401
        from transformers import VideoMAEImageProcessor as processor_class
    except ImportError:
        from transformers import VideoMAEImageProcessorPil as processor_class
    return processor_class


def _shortest_edge(size) -> int | None:
    # a dict in saved configs, a transformers SizeDict on loaded processors
    return size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)


def processor_settings(config, template=None) -> dict:
    """Resize / crop / rescale settings of the processors saved with a checkpoint of ``config``.

    ``template``: a processor whose resize settings to keep (e.g. the dense checkpoint's: resize the shorter side to
    256, crop 224) where the library's decode implements them (a ``shortest_edge`` resize, bilinear or bicubic);
    otherwise the shorter side is resized to the model's ``image_size``, bilinear. The crop is always the model's
    ``image_size``.
    """
    size = frame_size(config)
    shortest_edge, resample = size, _BILINEAR
    if template is not None:
        template_edge = _shortest_edge(getattr(template, "size", None))
        template_resample = getattr(template, "resample", None)
        if template_edge is not None and template_edge >= size:
            shortest_edge = int(template_edge)
        if template_resample in RESAMPLING:
            resample = int(template_resample)
    return {
        "do_resize": True,
        "size": {"shortest_edge": shortest_edge},
        "resample": resample,
        "do_center_crop": True,  # whatever the resize gives, the model gets image_size x image_size frames
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": False,
        "image_mean": list(config.image_mean) if getattr(config, "image_mean", None) else None,
        "image_std": list(config.image_std) if getattr(config, "image_std", None) else None,
    }


def pixel_image_processor(config, template=None):
    """The image processor saved with every checkpoint (see `processor_settings`)."""
    settings = {k: v for k, v in processor_settings(config, template).items() if v is not None}
    return _image_processor_class()(**settings)


def pixel_video_processor(config, template=None):
    """The video processor saved with every checkpoint: `processor_settings` plus uniform sampling of the model's
    ``num_frames`` (``do_sample_frames=True``), so ``AutoVideoProcessor`` and the pipeline sample as `read_video` does.
    """
    from transformers.models.videomae.video_processing_videomae import VideoMAEVideoProcessor

    settings = {k: v for k, v in processor_settings(config, template).items() if v is not None}
    return VideoMAEVideoProcessor(**settings, do_sample_frames=True, num_frames=int(config.num_frames))


def consistent_image_processor(config, processor):
    """``processor`` if it already hands the model what it expects (frames rescaled to [0, 1], not normalised, cropped
    to the model's size), else the processor of `pixel_image_processor` that keeps its resize settings. A normalising
    processor (a stock VideoMAE one, or one Trainer saved from ``processing_class``) would make ``pipeline`` feed
    values the models' input check rejects."""
    if processor is None:
        return pixel_image_processor(config)
    size = frame_size(config)
    rescales = getattr(processor, "do_rescale", False) and abs(getattr(processor, "rescale_factor", 0) - 1 / 255) < 1e-9
    crops = getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None) == {
        "height": size,
        "width": size,
    }
    resizes = _shortest_edge(getattr(processor, "size", None)) is not None and processor.resample in RESAMPLING
    if rescales and crops and resizes and not getattr(processor, "do_normalize", True):
        return processor
    return pixel_image_processor(config, template=processor)


def save_processors(save_directory, config, image_processor=None, is_main_process: bool = True) -> None:
    """Write the image and video processors of a checkpoint of ``config`` into ``save_directory``.

    Use it for checkpoints that transformers saves without them, e.g. a dense ``VideoMAEForVideoClassification``
    trained on ``[0, 1]`` frames: ``save_processors(path, model.config)``. ``image_processor``: the checkpoint's own,
    whose resize settings are kept when it is consistent (see `consistent_image_processor`).
    """
    if not is_main_process:
        return
    image_processor = consistent_image_processor(config, image_processor)
    image_processor.save_pretrained(save_directory)
    pixel_video_processor(config, template=image_processor).save_pretrained(save_directory)


def load_local_image_processor(path: str):
    """The image processor saved in a local checkpoint directory, or ``None``."""
    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "preprocessor_config.json"))):
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise OSError(f"{path}/preprocessor_config.json could not be read as an image processor: {err}") from err
