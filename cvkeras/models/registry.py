"""The model registry: every ``keras.applications`` constructor, looked up by snake_case name.

Each row carries the model's data config -- default input size and the normalisation the backbone
expects -- so the classifier built from it takes plain RGB ``0..255`` images (the contract of
``cvkeras.serving.preprocess``) and export metadata and serving reuse the same row. Adding a model is adding
a row. The table is plain data: listing it does not import TensorFlow.

Example:
    >>> spec = get("mobilenet_v2")
    >>> spec.input_size, spec.preprocess
    ((224, 224), 'tf')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cvkeras.serving.errors import CvkerasError, OptionError, quote

#: How a backbone wants its input normalised (added to the model as serialisable layers):
#: ``tf``: x/127.5 - 1; ``torch``: x/255 then ImageNet mean/std; ``caffe``: RGB->BGR, minus ImageNet
#: mean; ``none``: the Keras constructor already includes its own preprocessing.
PREPROCESS_MODES = ("tf", "torch", "caffe", "none")


@dataclass(frozen=True)
class ModelSpec:
    """One registry row."""

    name: str
    constructor: str  # attribute of keras.applications
    input_size: tuple[int, int]
    preprocess: str
    family: str
    alphas: tuple[float, ...] = field(default=())  # width multipliers, when the family has them
    min_size: int = 32
    extra_kwargs: tuple[tuple[str, object], ...] = field(default=())  # passed to the constructor
    cam_layer: str = ""  # Grad-CAM target: the last spatial feature map worth explaining ("" = backbone output)

    @property
    def default_alpha(self) -> float | None:
        return 1.0 if self.alphas else None


def _row(name, ctor, size, pre, family, alphas=(), min_size=32, cam_layer="", **kw) -> ModelSpec:
    return ModelSpec(name, ctor, (size, size), pre, family, tuple(alphas), min_size, tuple(sorted(kw.items())),
                     cam_layer)


_ROWS = [
    _row("convnext_tiny", "ConvNeXtTiny", 224, "none", "convnext", include_preprocessing=True),
    _row("convnext_small", "ConvNeXtSmall", 224, "none", "convnext", include_preprocessing=True),
    _row("convnext_base", "ConvNeXtBase", 224, "none", "convnext", include_preprocessing=True),
    _row("convnext_large", "ConvNeXtLarge", 224, "none", "convnext", include_preprocessing=True),
    _row("convnext_xlarge", "ConvNeXtXLarge", 224, "none", "convnext", include_preprocessing=True),
    _row("densenet121", "DenseNet121", 224, "torch", "densenet"),
    _row("densenet169", "DenseNet169", 224, "torch", "densenet"),
    _row("densenet201", "DenseNet201", 224, "torch", "densenet"),
    _row("efficientnet_b0", "EfficientNetB0", 224, "none", "efficientnet"),
    _row("efficientnet_b1", "EfficientNetB1", 240, "none", "efficientnet"),
    _row("efficientnet_b2", "EfficientNetB2", 260, "none", "efficientnet"),
    _row("efficientnet_b3", "EfficientNetB3", 300, "none", "efficientnet"),
    _row("efficientnet_b4", "EfficientNetB4", 380, "none", "efficientnet"),
    _row("efficientnet_b5", "EfficientNetB5", 456, "none", "efficientnet"),
    _row("efficientnet_b6", "EfficientNetB6", 528, "none", "efficientnet"),
    _row("efficientnet_b7", "EfficientNetB7", 600, "none", "efficientnet"),
    _row("efficientnet_v2_b0", "EfficientNetV2B0", 224, "none", "efficientnet_v2", include_preprocessing=True),
    _row("efficientnet_v2_b1", "EfficientNetV2B1", 240, "none", "efficientnet_v2", include_preprocessing=True),
    _row("efficientnet_v2_b2", "EfficientNetV2B2", 260, "none", "efficientnet_v2", include_preprocessing=True),
    _row("efficientnet_v2_b3", "EfficientNetV2B3", 300, "none", "efficientnet_v2", include_preprocessing=True),
    _row("efficientnet_v2_s", "EfficientNetV2S", 384, "none", "efficientnet_v2", include_preprocessing=True),
    _row("efficientnet_v2_m", "EfficientNetV2M", 480, "none", "efficientnet_v2", include_preprocessing=True),
    _row("efficientnet_v2_l", "EfficientNetV2L", 480, "none", "efficientnet_v2", include_preprocessing=True),
    _row("inception_resnet_v2", "InceptionResNetV2", 299, "tf", "inception", min_size=75),
    _row("inception_v3", "InceptionV3", 299, "tf", "inception", min_size=75),
    _row("mobilenet", "MobileNet", 224, "tf", "mobilenet", alphas=(0.25, 0.5, 0.75, 1.0)),
    _row("mobilenet_v2", "MobileNetV2", 224, "tf", "mobilenet_v2", alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
    _row("mobilenet_v3_large", "MobileNetV3Large", 224, "none", "mobilenet_v3", alphas=(0.75, 1.0),
         include_preprocessing=True),
    _row("mobilenet_v3_small", "MobileNetV3Small", 224, "none", "mobilenet_v3", alphas=(0.75, 1.0),
         include_preprocessing=True),
    _row("nasnet_large", "NASNetLarge", 331, "tf", "nasnet", min_size=331),
    _row("nasnet_mobile", "NASNetMobile", 224, "tf", "nasnet", min_size=224),
    _row("resnet50", "ResNet50", 224, "caffe", "resnet"),
    _row("resnet101", "ResNet101", 224, "caffe", "resnet"),
    _row("resnet152", "ResNet152", 224, "caffe", "resnet"),
    _row("resnet50_v2", "ResNet50V2", 224, "tf", "resnet_v2"),
    _row("resnet101_v2", "ResNet101V2", 224, "tf", "resnet_v2"),
    _row("resnet152_v2", "ResNet152V2", 224, "tf", "resnet_v2"),
    _row("vgg16", "VGG16", 224, "caffe", "vgg", cam_layer="block5_conv3"),  # before the last pooling
    _row("vgg19", "VGG19", 224, "caffe", "vgg", cam_layer="block5_conv4"),
    _row("xception", "Xception", 299, "tf", "xception", min_size=71),
]

REGISTRY: dict[str, ModelSpec] = {row.name: row for row in _ROWS}


class UnknownModelError(CvkerasError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it a plain line
        return str(self.args[0])


def get(name: str) -> ModelSpec:
    """Look a model up by name (case and ``-`` tolerant); unknown names list close matches."""
    key = name.strip().lower().replace("-", "_")
    if key in REGISTRY:
        return REGISTRY[key]
    import difflib

    close = difflib.get_close_matches(key, REGISTRY, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "run `cvkeras models` for the list"
    raise UnknownModelError(f"unknown model {quote(name)}; {hint}")


def resolve_alpha(spec: ModelSpec, alpha: float | None) -> float | None:
    """Validate a width multiplier for a row; ``None`` picks the family default."""
    if alpha is None:
        return spec.default_alpha
    if not spec.alphas:
        raise OptionError(f"{spec.name} has no width multiplier; drop --alpha")
    if float(alpha) not in spec.alphas:
        raise OptionError(f"{spec.name} supports --alpha {', '.join(map(str, spec.alphas))}, not {alpha}")
    return float(alpha)


@dataclass(frozen=True)
class ResolvedModel:
    """What a registry row decides for a model choice: the row, its width and its input size."""

    spec: ModelSpec
    alpha: float | None
    image_size: list[int]  # [height, width]


def resolve_model(model: str | ModelSpec, alpha: float | None = None,
                  image_size: int | Sequence[int] | None = None) -> ResolvedModel:
    """The one rule for a model choice: the row by name, the width checked (None: the family default) and the
    input ``[height, width]`` (None: the row's default size; one side N: N x N). Sizes are range-checked by
    :func:`cvkeras.run.config.validate_config`."""
    spec = get(model) if isinstance(model, str) else model
    if image_size is None:
        size = list(spec.input_size)
    else:
        size = [image_size] if isinstance(image_size, int) else list(image_size)
        if len(size) == 1:
            size = size * 2
    return ResolvedModel(spec, resolve_alpha(spec, alpha), size)
