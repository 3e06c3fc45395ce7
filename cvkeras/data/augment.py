"""On-graph batch augmentation for the tf.data pipeline (never inside the exported model).

Presets ``none | light | medium | heavy`` combine flip, random resized crop, rotation, zoom and colour
jitter; ``randaugment`` adds Keras' RandAugment; ``mixup``/``cutmix`` mix pairs of images and their
one-hot labels (soft labels). Images stay float32 RGB in ``0..255``.

Flip, crop, jitter, mixup and cutmix use *stateless* random ops driven by a per-batch seed, so they run
in a parallel map and stay deterministic for a given ``--seed``; the flip is folded into the crop boxes
(free). Rotation, zoom and RandAugment are Keras layers with their own seeded state, applied in a
sequential map afterwards (only the medium/heavy presets and ``--randaugment`` use them).

Example:
    >>> aug = Augmenter("medium", seed=1)
    >>> images, labels = aug.stateless(images, onehot_labels, tf.constant([1, 2]))
"""

from __future__ import annotations

from dataclasses import dataclass

from cvkeras.serving.errors import OptionError, quote

PRESETS: dict[str, dict[str, float]] = {
    "none": {},
    "light": {"flip": 1, "crop_scale": 0.6},
    "medium": {"flip": 1, "crop_scale": 0.35, "rotate": 0.05, "jitter": 0.2},
    "heavy": {"flip": 1, "crop_scale": 0.2, "rotate": 0.1, "zoom": 0.2, "jitter": 0.4},
}


@dataclass
class Augmenter:
    """Batch augmentation: ``(images[B,H,W,3] 0..255, onehot[B,C])`` in, the same shapes out."""

    preset: str = "light"
    randaugment: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise OptionError(f"unknown --augment {quote(self.preset)}; choose one of {', '.join(PRESETS)}")
        if self.mixup < 0 or self.cutmix < 0:
            raise OptionError("--mixup and --cutmix take a Beta alpha >= 0")
        self._p = PRESETS[self.preset]
        self._layers: list | None = None

    @property
    def active(self) -> bool:
        return bool(self._p) or self.randaugment or self.mixup > 0 or self.cutmix > 0

    @property
    def has_stateful(self) -> bool:
        return bool(self._p.get("rotate") or self._p.get("zoom") or self.randaugment)

    # --- stateless part (parallel map) ---------------------------------------------------------------
    def stateless(self, images, labels, seed):
        """Flip + random resized crop, colour jitter, mixup/cutmix from one per-batch ``seed`` (shape [2])."""
        import tensorflow as tf

        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
        p = self._p
        if p.get("flip") or p.get("crop_scale"):
            images = self._crop_flip(images, seeds[0], seeds[1])
        if p.get("jitter"):
            images = self._jitter(images, seeds[2])
        if self.mixup > 0 or self.cutmix > 0:
            images, labels = self._mix(images, labels, seeds[3], seeds[4])
        return images, labels

    def _crop_flip(self, images, seed, flip_seed):
        import tensorflow as tf

        b = tf.shape(images)[0]
        h, w = images.shape[1], images.shape[2]
        u = tf.random.stateless_uniform([4, b], seed)
        lo = self._p.get("crop_scale", 1.0)
        scale = lo + (1.0 - lo) * u[0]
        ratio = tf.exp(tf.math.log(3 / 4) + (tf.math.log(4 / 3) - tf.math.log(3 / 4)) * u[1])
        if lo >= 1.0:
            ratio = tf.ones_like(ratio)
        ch = tf.minimum(tf.sqrt(scale / ratio), 1.0)  # crop height/width as fractions
        cw = tf.minimum(tf.sqrt(scale * ratio), 1.0)
        y0 = u[2] * (1.0 - ch)
        x0 = u[3] * (1.0 - cw)
        x1 = x0 + cw
        if self._p.get("flip"):  # crop_and_resize with x1 > x2 mirrors the crop: the flip is free
            flip = tf.random.stateless_uniform([b], flip_seed) < 0.5
            x0, x1 = tf.where(flip, x1, x0), tf.where(flip, x0, x1)
        boxes = tf.stack([y0, x0, y0 + ch, x1], axis=1)
        return tf.image.crop_and_resize(images, boxes, tf.range(b), (h, w), method="bilinear")

    def _jitter(self, images, seed):
        import tensorflow as tf

        s = self._p["jitter"]
        b = tf.shape(images)[0]
        u = tf.random.stateless_uniform([3, b, 1, 1, 1], seed, -s, s)
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        x = (images - mean) * (1 + u[1]) + mean + u[0] * 255.0
        grey = tf.reduce_mean(x, axis=-1, keepdims=True)
        x = (x - grey) * (1 + u[2]) + grey
        return tf.clip_by_value(x, 0.0, 255.0)

    def _mix(self, images, labels, seed, seed2):
        import tensorflow as tf

        b = tf.shape(images)[0]
        s = tf.random.experimental.stateless_split(seed, num=6)
        perm = tf.argsort(tf.random.stateless_uniform([b], s[0]))
        other = tf.gather(images, perm)

        def beta(a):
            g1 = tf.random.stateless_gamma([], s[1], alpha=a)
            g2 = tf.random.stateless_gamma([], s[2], alpha=a)
            return g1 / (g1 + g2)

        def mixup():
            lam = beta(self.mixup)
            return lam * images + (1 - lam) * other, lam

        def cutmix():
            lam = beta(self.cutmix)
            h, w = tf.shape(images)[1], tf.shape(images)[2]
            cut = tf.sqrt(1.0 - lam)
            ch = tf.cast(tf.cast(h, tf.float32) * cut, tf.int32)
            cw = tf.cast(tf.cast(w, tf.float32) * cut, tf.int32)
            cy = tf.random.stateless_uniform([], s[3], 0, h, dtype=tf.int32)
            cx = tf.random.stateless_uniform([], s[4], 0, w, dtype=tf.int32)
            y0, y1 = tf.maximum(cy - ch // 2, 0), tf.minimum(cy + ch // 2, h)
            x0, x1 = tf.maximum(cx - cw // 2, 0), tf.minimum(cx + cw // 2, w)
            yy = tf.range(h)[:, None]
            xx = tf.range(w)[None, :]
            box = tf.cast((yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1), images.dtype)[None, :, :, None]
            area = tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(h * w, tf.float32)
            return images * (1 - box) + other * box, 1.0 - area

        if self.mixup > 0 and self.cutmix > 0:
            mixed, lam = tf.cond(tf.random.stateless_uniform([], seed2) < 0.5, cutmix, mixup)
        elif self.cutmix > 0:
            mixed, lam = cutmix()
        else:
            mixed, lam = mixup()
        return mixed, lam * labels + (1 - lam) * tf.gather(labels, perm)

    # --- stateful part (sequential map) --------------------------------------------------------------
    def stateful(self, images, labels):
        """Rotation, zoom and RandAugment (Keras layers with seeded state; run in order for determinism)."""
        import tensorflow as tf

        if self._layers is None:
            import keras

            p = self._p
            self._layers = []
            if p.get("rotate"):
                self._layers.append(keras.layers.RandomRotation(p["rotate"], fill_mode="reflect", seed=self.seed))
            if p.get("zoom"):
                self._layers.append(keras.layers.RandomZoom(p["zoom"], fill_mode="reflect", seed=self.seed + 1))
            if self.randaugment:
                self._layers.append(keras.layers.RandAugment(value_range=(0, 255), seed=self.seed + 2))
        for layer in self._layers:
            images = tf.cast(layer(images, training=True), tf.float32)
        return images, labels
